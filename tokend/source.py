"""Turn one profile into google-auth credentials and a blocking ``fetch() -> Token``.

This is the only module in tokend that imports google-auth. It owns three things the
rest of the daemon must not have to know about google-auth:

- **Loading.** ``"adc"`` follows google.auth.default()'s file lookup
  (``$GOOGLE_APPLICATION_CREDENTIALS``, then gcloud's well-known file, then the metadata
  server) without its side effects: default() shells out to ``gcloud`` for a project id,
  calls Resource Manager for external accounts and pings 169.254.169.254 three times
  with 3 s timeouts on a laptop. We only need the credentials. Files are read here, so
  errors can name the file and the fix.
- **One attempt per fetch.** Every HTTP request goes through :class:`_OneShotTransport`,
  which bounds each request with ``(connect, read)`` timeouts and turns transport errors,
  5xx, 429 and "temporarily unavailable" answers into an exception google-auth does not
  catch. google-auth would otherwise retry them itself with sleeps (``_client`` up to 3
  times on 5xx/429, the metadata client up to 5 times, also on connection errors), which
  hides failures from tokend's refresher and stretches a fetch to tens of seconds; the
  refresher owns backoff.
- **Classification and redaction.** Failures become :class:`tokend.errors.RefreshError`
  (``retryable``) or :class:`tokend.errors.CredentialsError` (a person must act). google-auth's
  exception text can carry response bodies, so messages are built from the HTTP status,
  the OAuth ``error`` code and the exception type only, never copied.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import google.auth
import google.auth._cloud_sdk
import google.auth.compute_engine
import google.auth.compute_engine._metadata
import google.auth.credentials
import google.auth.environment_vars
import google.auth.exceptions
import google.auth.impersonated_credentials
import google.auth.transport
import google.auth.transport.requests
import requests

from tokend import clock, wire
from tokend.config import ProfileConfig
from tokend.errors import LOGIN, CredentialsError, RefreshError
from tokend.paths import read_regular
from tokend.token import Token

# google-auth ships py.typed but leaves most functions unannotated; each call to one
# carries a `type: ignore[no-untyped-call]`.

__all__ = ["CREDENTIAL_TYPES", "Source", "describe_credentials", "read_jwt_claims"]

_T = TypeVar("_T")

#: Credential file types tokend can refresh (``metadata`` is not a file type).
CREDENTIAL_TYPES = (
    "authorized_user",
    "service_account",
    "external_account",
    "external_account_authorized_user",
    "impersonated_service_account",
)

_CONNECT_TIMEOUT = 5.0  # cap on the TCP/TLS connect part of the timeout
# Statuses a later attempt can outlast. google-auth's own list is 500, 502, 503, 504,
# 408 and 429 (transport.DEFAULT_RETRYABLE_STATUS_CODES); every 5xx is transient to us.
_RETRYABLE_STATUSES = frozenset({408, 429})
# OAuth error codes google-auth's _client retries even on a 4xx (RFC 6749 4.1.2.1).
_RETRYABLE_OAUTH_ERRORS = frozenset({"internal_failure", "server_error", "temporarily_unavailable"})
_SAFE_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
# warnings.catch_warnings() swaps process-global state; serialise our uses of it.
_WARNINGS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class _Response:
    """What tokend remembers of one HTTP exchange: never a body."""

    host: str
    status: int
    error: str  #: OAuth ``error`` / Google API ``error.status``, "" if none or unsafe
    iam: bool = False  #: an IAM generateAccessToken or generateIdToken call (impersonation)


class _Abort(Exception):
    """Raised by the transport to stop google-auth from retrying. google-auth catches
    ``TransportError`` (and only that) in its retry loops, so this is deliberately not one."""

    def __init__(
        self, why: str, response: _Response | None, host: str = "", *, timed_out: bool = False
    ) -> None:
        super().__init__(why)
        self.why = why
        self.response = response
        self.host = response.host if response else host
        #: A socket timeout: the same fault as the whole fetch's deadline passing.
        self.timed_out = timed_out


def _error_code(data: bytes) -> str:
    """The OAuth ``error`` (or Google API ``error.status``) of a JSON error body, if safe."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("status")
    if isinstance(error, str) and _SAFE_CODE.fullmatch(error):
        return error
    return ""


class _OneShotTransport(google.auth.transport.Request):
    """A google-auth ``Request`` that makes exactly one bounded attempt per request.

    Transport errors, 5xx, 408/429 and retryable OAuth errors raise :class:`_Abort`
    instead of reaching google-auth, whose retry loops would otherwise sleep and try
    again (see the module docstring). The last response seen is kept for classification.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = (min(timeout, _CONNECT_TIMEOUT), timeout)
        self._session = requests.Session()
        self._inner = google.auth.transport.requests.Request(self._session)
        self.last: _Response | None = None
        self.requests = 0

    def reset(self) -> None:
        self.last = None
        self.requests = 0

    def close(self) -> None:
        self._session.close()

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        host = urllib.parse.urlsplit(url).netloc
        self.requests += 1
        try:
            # Our timeout wins over google-auth's (120 s default, 3 s for metadata).
            response = self._inner(
                url, method=method, body=body, headers=headers, timeout=self._timeout, **kwargs
            )
        except google.auth.exceptions.TransportError as exc:
            why = _describe_transport_error(exc, self._timeout[1])
            timed_out = isinstance(exc.__cause__, requests.exceptions.Timeout)
            raise _Abort(why, None, host, timed_out=timed_out) from None
        status = int(response.status)
        error = _error_code(response.data) if status != 200 else ""
        iam = ":generateAccessToken" in url or ":generateIdToken" in url
        self.last = _Response(host, status, error, iam=iam)
        if status >= 500 or status in _RETRYABLE_STATUSES:
            raise _Abort(f"HTTP {status}", self.last)
        if status != 200 and error in _RETRYABLE_OAUTH_ERRORS:
            raise _Abort(f"HTTP {status} {error}", self.last)
        return response


def _describe_transport_error(exc: BaseException, read_timeout: float) -> str:
    cause = exc.__cause__
    if isinstance(cause, requests.exceptions.Timeout):
        return f"timed out after {read_timeout:g} s"
    if isinstance(cause, requests.exceptions.ConnectionError):
        return "connection failed"
    return f"transport error ({type(cause or exc).__name__})"


def _service_account(info: dict[str, Any]) -> Any:
    """service_account credentials as google-auth builds them, less the 50 ms per key
    that OpenSSL's RSA key check spends proving p and q prime (100 profiles: 5 s of
    start-up, under the GIL). The cheap part of that check, the one that matters for
    signing with a key one holds (a key whose CRT values disagree can leak its factors
    through a faulty signature), is done here; a key that is wrong otherwise signs
    JWTs Google refuses, which is reported like any refusal. None without the
    ``cryptography`` package: google-auth then loads the key its own way."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        return None
    import google.auth.crypt
    from google.oauth2 import service_account

    for field in ("private_key", "client_email", "token_uri"):
        if not isinstance(info.get(field), str):
            raise ValueError(f"{field} is missing")
    key = serialization.load_pem_private_key(
        info["private_key"].encode(), password=None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(key, rsa.RSAPrivateKey) or not _consistent(key.private_numbers()):
        raise ValueError("the private key is not a consistent RSA key")
    signer = google.auth.crypt.RSASigner(key, info.get("private_key_id"))  # type: ignore[no-untyped-call]
    return service_account.Credentials(  # type: ignore[no-untyped-call]
        signer,
        service_account_email=info["client_email"],
        token_uri=info["token_uri"],
        project_id=info.get("project_id"),
        universe_domain=info.get(
            "universe_domain", google.auth.credentials.DEFAULT_UNIVERSE_DOMAIN
        ),
        trust_boundary=info.get("trust_boundary"),
    )


def _consistent(k: Any) -> bool:
    """An RSA private key's numbers agree: n = pq, e·d ≡ 1 (mod λ(n)), and the CRT
    values are the ones d, p and q give."""
    import math

    n, e = k.public_numbers.n, k.public_numbers.e
    p, q, d = k.p, k.q, k.d
    if p < 3 or q < 3 or p * q != n:
        return False
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    return bool(
        e * d % lam == 1 and k.dmp1 == d % (p - 1) and k.dmq1 == d % (q - 1) and k.iqmp * q % p == 1
    )


class Source:
    """Turns one profile into google-auth credentials and a blocking :meth:`fetch`.

    Args:
        name: the profile name (goes into every :class:`Token`; messages leave it to the caller).
        profile: the profile's configuration.
        timeout: seconds each HTTP request may take (connect is capped at 5 s).

    Construction does no I/O. Credentials load on the first :meth:`fetch` and again after
    :meth:`invalidate`. ``fetch`` is thread-safe (calls are serialised).
    """

    def __init__(self, name: str, profile: ProfileConfig, *, timeout: float = 10.0) -> None:
        self.name = name
        self.profile = profile
        self.timeout = timeout
        self.credential_type = ""
        self.account = ""
        #: Digest of what the loaded credentials were made from (see credentials_id()).
        self._credentials_id = ""
        self._credentials: Any = None
        self._stale = False
        self._lock = threading.Lock()
        self._transport = _OneShotTransport(timeout)
        #: Bumped by abandon(): a fetch that started under an older generation was given
        #: up by its caller, and its late result must change nothing here.
        self._generation = 0
        #: An external_account's subject token file, which google-auth reads at every
        #: refresh: checked first, so a FIFO there cannot block the fetch.
        self._subject_file: Path | None = None
        self._file: Path | None = None  # the credentials file (None: metadata server)
        self._adc = profile.credentials == "adc"
        self._adc_explicit = False
        if profile.credentials == "metadata":
            self._file = None
        elif self._adc:
            explicit = os.environ.get(google.auth.environment_vars.CREDENTIALS, "")
            self._file = Path(
                explicit or google.auth._cloud_sdk.get_application_default_credentials_path()  # type: ignore[no-untyped-call]
            ).expanduser()
            self._adc_explicit = bool(explicit)
        else:
            self._file = Path(profile.credentials).expanduser().absolute()

    def __repr__(self) -> str:
        return (
            f"Source(name={self.name!r}, type={self.credential_type or '?'}, "
            f"account={self.account!r}, credentials={self.profile.credentials!r})"
        )

    @property
    def watched_paths(self) -> tuple[Path, ...]:
        """Files whose change must reload the credentials (may not exist yet)."""
        return () if self._file is None else (self._file,)

    def invalidate(self) -> None:
        """Forget the loaded credentials: the next :meth:`fetch` reads the file again.

        Never blocks (a watcher thread calls it while a fetch may be waiting on the
        network); a change that lands while a fetch is loading still counts."""
        self._stale = True

    def abandon(self) -> None:
        """The caller gave up on the fetch in flight (past its deadline, or started
        before a suspend): the next :meth:`fetch` starts afresh, with newly loaded
        credentials and a new HTTP session, instead of waiting for the stuck one.

        Never blocks: the stuck call holds no lock while it waits on the network."""
        with self._lock:
            self._generation += 1
            self._credentials = None
            self._transport = _OneShotTransport(self.timeout)

    def credentials_id(self) -> str:
        """A digest of what the credentials are made from now: the credentials file's
        bytes (or the metadata server's address) and the profile settings that shape a
        token. Tokens carry the one they were minted with, so a restart adopts a token
        from disk only for the same credentials. Reads the file (bounded, never
        blocking); a digest of secret material reveals none of it.

        Raises:
            CredentialsError: the file is missing or unreadable.
        """
        path = self._file if self._uses_file() else None
        return self._digest(b"" if path is None else self._read_file(path))

    def _uses_file(self) -> bool:
        if self._file is None:
            return False
        return not (self._adc and not self._adc_explicit and not self._file.exists() and _on_gce())

    def _digest(self, file_bytes: bytes) -> str:
        p = self.profile
        settings = [
            p.credentials,
            str(self._file or ""),
            *p.scopes,
            p.impersonate,
            p.token_uri,
            p.iam_endpoint,
            p.quota_project,
        ]
        if not self._uses_file():
            env = google.auth.environment_vars
            settings.append(
                os.environ.get(env.GCE_METADATA_HOST) or os.environ.get(env.GCE_METADATA_ROOT) or ""
            )
        h = hashlib.sha256(b"tokend credentials v1\0")
        h.update("\0".join(settings).encode())
        h.update(b"\0")
        h.update(file_bytes)
        return h.hexdigest()[:16]

    def fetch(self) -> Token:
        """Load the credentials if needed and get a fresh token: one attempt, no retries.

        Returns:
            A new :class:`Token`.

        Raises:
            RefreshError: the attempt failed; ``retryable`` says whether trying again later
                can help (transport errors, timeouts, 5xx, 429, garbage answers).
            CredentialsError: a person must act (``reauth_required``,
                ``credentials_missing``, ``credentials_invalid``).
        """
        with self._lock:
            credentials, transport, generation, credentials_id = self._loaded()
        if self._subject_file is not None:
            self._check_subject_file(self._subject_file)
        _, took = self._attempt(transport, credentials.refresh)
        with self._lock:
            self._check_current(generation)
            self.account = _account_of(credentials)
            return self._token(credentials, took, credentials_id)

    def fetch_id_token(self, audience: str) -> Token:
        """Mint an ID token whose ``aud`` is ``audience``: one attempt, no retries.

        Through the profile's credentials: a service-account key signs a JWT-bearer
        grant with ``target_audience`` at its token endpoint; impersonation (the
        ``impersonate`` setting or an ``impersonated_service_account`` file) calls IAM
        ``generateIdToken`` with the source credentials' access token, at the profile's
        ``iam_endpoint`` when set; the metadata server answers its ``identity`` path.
        User and external-account credentials cannot mint one: a ``CredentialsError``
        (``id_token_unsupported``) names the ``impersonate`` fix, before any request.

        The answer is a JWT: checked for its shape, size and characters, ``aud`` and
        ``exp`` read from it (bounded), before it becomes a :class:`Token` with
        ``audience`` set.

        Raises:
            RefreshError, CredentialsError: as :meth:`fetch`.
        """
        with self._lock:
            credentials, transport, generation, credentials_id = self._loaded()
        value, took = self._attempt(transport, self._id_minter(credentials, audience))
        with self._lock:
            self._check_current(generation)
            return self._id_token(value, audience, took, credentials_id, _account_of(credentials))

    def _attempt(self, transport: _OneShotTransport, call: Callable[[Any], _T]) -> tuple[_T, float]:
        """``call(transport)``, the one network attempt of a fetch: its result and how
        long it took, or its failure classified. No lock is held, so abandon() never
        waits for it."""
        transport.reset()
        started = time.monotonic()
        try:
            result = call(transport)
        except _Abort as abort:
            raise self._retryable(abort) from None
        except Exception as exc:  # every failure is classified; none escapes raw
            raise self._classify(exc, transport) from None
        return result, time.monotonic() - started

    def _check_current(self, generation: int) -> None:
        """Refuse the answer of an attempt that abandon() gave up. Call with ``_lock``."""
        if generation != self._generation:
            raise RefreshError(
                "the fetch was abandoned by its caller", retryable=True, reason="abandoned"
            )

    # -- loading ----------------------------------------------------------------------

    def _loaded(self) -> tuple[Any, _OneShotTransport, int, str]:
        """``(credentials, transport, generation, credentials_id)``, loading the
        credentials first if needed. Call with ``_lock`` held."""
        if self._stale or self._credentials is None:
            self._stale = False
            self._credentials = None
            self._credentials = self._load()
        return self._credentials, self._transport, self._generation, self._credentials_id

    def _load(self) -> Any:
        if self._file is None or not self._uses_file():
            # (ADC's last resort, as in google.auth.default(), is the metadata server.)
            self.credential_type = "metadata"
            self._credentials_id = self._digest(b"")
            credentials = self._metadata_credentials()
        else:
            credentials = self._file_credentials(self._file)
        credentials = google.auth.credentials.with_scopes_if_required(  # type: ignore[no-untyped-call]
            credentials, list(self.profile.scopes)
        )
        if self.profile.impersonate:
            credentials = google.auth.impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
                source_credentials=credentials,
                target_principal=self.profile.impersonate,
                target_scopes=list(self.profile.scopes),
                iam_endpoint_override=self._iam_url(self.profile.impersonate),
            )
            self.credential_type = "impersonated_service_account"
        if self.profile.quota_project:
            if not hasattr(credentials, "with_quota_project"):
                raise self._invalid("quota_project is not supported for these credentials")
            credentials = credentials.with_quota_project(self.profile.quota_project)
        self.account = _account_of(credentials)
        return credentials

    def _metadata_credentials(self) -> Any:
        if self.profile.token_uri:
            raise self._invalid(
                "token_uri does not apply to metadata server credentials; remove it"
            )
        # google-auth reads GCE_METADATA_HOST once, when compute_engine is imported; read
        # it again so the environment in effect when the profile loads is the one used.
        env = google.auth.environment_vars
        host = os.environ.get(env.GCE_METADATA_HOST) or os.environ.get(env.GCE_METADATA_ROOT)
        google.auth.compute_engine._metadata._GCE_METADATA_HOST = (
            host or google.auth.compute_engine._metadata._GCE_DEFAULT_HOST
        )
        return google.auth.compute_engine.Credentials()  # type: ignore[no-untyped-call]

    def _file_credentials(self, path: Path) -> Any:
        data = self._read_file(path)
        info = self._parse_json(path, data)
        self._credentials_id = self._digest(data)
        source = info.get("credential_source")
        subject = source.get("file") if isinstance(source, dict) else None
        self._subject_file = Path(subject) if isinstance(subject, str) and subject else None
        kind = info.get("type")
        if kind not in CREDENTIAL_TYPES:
            shown = repr(kind)[:40] if isinstance(kind, str) else "missing"
            raise self._invalid(
                f"{path}: credential type {shown} is not supported "
                f"(expected one of {', '.join(CREDENTIAL_TYPES)})"
            )
        self.credential_type = str(kind)
        try:
            with _WARNINGS_LOCK, warnings.catch_warnings():
                # DeprecationWarning: "use a type-specific loader" (we check the type above);
                # UserWarning: "end user credentials without a quota project", noise for a
                # daemon whose users set quota_project when they need it.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                # No scopes here (as in google.auth.default()): with scopes, an
                # external_account would refresh and call Resource Manager while loading.
                credentials = _service_account(info) if kind == "service_account" else None
                if credentials is None:
                    credentials, _ = google.auth.load_credentials_from_dict(  # type: ignore[no-untyped-call]
                        info, request=self._transport
                    )
        except _Abort as abort:
            raise self._retryable(abort) from None
        except (
            google.auth.exceptions.GoogleAuthError,
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
        ) as exc:
            raise self._invalid(
                f"{path}: not a usable {kind} credentials file ({type(exc).__name__}); "
                f"{self._fix()}"
            ) from None
        if self.profile.token_uri:
            credentials = self._with_token_uri(credentials, path)
        return credentials

    def _read_json(self, path: Path) -> dict[str, Any]:
        return self._parse_json(path, self._read_file(path))

    def _read_file(self, path: Path) -> bytes:
        """The credentials file's bytes: a regular file of at most 1 MiB, read without
        blocking (a FIFO or a link to a device there is refused, not waited on)."""
        try:
            return read_regular(path)
        except FileNotFoundError:
            raise CredentialsError(
                f"{path}: no such file; {self._fix()}",
                reason="credentials_missing",
            ) from None
        except PermissionError:
            raise self._invalid(
                f"{path}: permission denied; make it readable by tokend's user (chmod 600 {path})"
            ) from None
        except OSError as err:
            if os.path.isdir(path):
                raise self._invalid(
                    f"{path} is a directory; profiles.{self.name}.credentials names the "
                    "credentials JSON file itself, e.g. "
                    "~/.config/gcloud/application_default_credentials.json"
                ) from None
            raise self._invalid(f"{path}: cannot read: {err.strerror}; {self._fix()}") from None

    def _check_subject_file(self, path: Path) -> None:
        """google-auth reads an external account's subject token file itself, at every
        refresh, with a plain ``open``: check first that it is a regular file of sane
        size, so a FIFO or a device there is an error instead of a fetch stuck forever."""
        try:
            read_regular(path)
        except OSError as err:
            raise self._invalid(
                f"{path} (the subject token file the credentials name): "
                f"{err.strerror or err}; {self._fix()}"
            ) from None

    def _parse_json(self, path: Path, text: bytes) -> dict[str, Any]:
        try:
            info = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise self._invalid(f"{path}: not valid JSON; {self._fix()}") from None
        if not isinstance(info, dict):
            raise self._invalid(f"{path}: not a JSON object; {self._fix()}")
        return info

    def _with_token_uri(self, credentials: Any, path: Path) -> Any:
        uri = self.profile.token_uri
        # An impersonated_service_account file: the token endpoint is its source's.
        if isinstance(credentials, google.auth.impersonated_credentials.Credentials):
            source = credentials._source_credentials
            if hasattr(source, "with_token_uri"):
                credentials._source_credentials = source.with_token_uri(uri)
                return credentials
        elif hasattr(credentials, "with_token_uri"):
            # from_authorized_user_info() always uses Google's endpoint, whatever the file
            # says; with_token_uri() is the supported way around that.
            return credentials.with_token_uri(uri)
        raise self._invalid(f"{path}: token_uri cannot be overridden for this credential type")

    def _iam_url(self, target: str) -> str | None:
        base = self.profile.iam_endpoint
        if not base:
            return None
        if ":generateAccessToken" in base:
            return base  # already the full URL
        # google-auth's override is the full URL (iam._IAM_ENDPOINT with the principal).
        quoted = urllib.parse.quote(target, safe="@")
        return f"{base.rstrip('/')}/v1/projects/-/serviceAccounts/{quoted}:generateAccessToken"

    # -- ID tokens --------------------------------------------------------------------

    def _id_minter(self, credentials: Any, audience: str) -> Callable[[Any], str]:
        """How these credentials mint an ID token: a call taking the transport and
        returning the token. No I/O here.

        Raises:
            CredentialsError: these credentials cannot mint one (``id_token_unsupported``).
        """
        from google.oauth2 import service_account

        if isinstance(credentials, google.auth.impersonated_credentials.Credentials):
            return lambda transport: self._generate_id_token(credentials, audience, transport)
        id_credentials: Any
        if isinstance(credentials, service_account.Credentials):
            id_credentials = service_account.IDTokenCredentials(  # type: ignore[no-untyped-call]
                credentials.signer,
                service_account_email=credentials.service_account_email,
                token_uri=credentials._token_uri,  # the profile's token_uri, when set
                target_audience=audience,
                quota_project_id=credentials.quota_project_id,
                universe_domain=credentials.universe_domain,
            )
        elif isinstance(credentials, google.auth.compute_engine.Credentials):
            id_credentials = google.auth.compute_engine.IDTokenCredentials(  # type: ignore[no-untyped-call]
                None, audience, use_metadata_identity_endpoint=True
            )
        else:
            raise self._no_id_tokens()

        def mint(transport: Any) -> str:
            id_credentials.refresh(transport)
            return str(id_credentials.token)

        return mint

    def _generate_id_token(self, credentials: Any, audience: str, transport: Any) -> str:
        """IAM ``generateIdToken`` for the impersonated account, through our transport.

        google-auth's ``impersonated_credentials.IDTokenCredentials`` is not used: it
        always calls ``iam._IAM_IDTOKEN_ENDPOINT`` (Google's, with the account's
        universe domain), so the profile's ``iam_endpoint`` could not be honoured, and
        it posts through an ``AuthorizedSession`` of its own, past this transport's
        timeouts and its one-attempt rule. The URL here is ``iam_endpoint``'s (a base,
        or a full ``:generateAccessToken`` URL whose verb is swapped), else Google's."""
        import google.auth.iam

        source = credentials._source_credentials
        if not source.valid:
            source.refresh(transport)
        target = credentials._target_principal
        base = self.profile.iam_endpoint
        override = credentials._iam_endpoint_override or ""
        if base and ":generateAccessToken" not in base:
            quoted = urllib.parse.quote(target, safe="@")
            url = f"{base.rstrip('/')}/v1/projects/-/serviceAccounts/{quoted}:generateIdToken"
        elif base or override:
            url = (base or override).replace(":generateAccessToken", ":generateIdToken")
        else:
            url = google.auth.iam._IAM_IDTOKEN_ENDPOINT.replace(
                google.auth.credentials.DEFAULT_UNIVERSE_DOMAIN, credentials.universe_domain
            ).format(urllib.parse.quote(target, safe="@"))
        body: dict[str, Any] = {"audience": audience, "includeEmail": True}
        if credentials._delegates:
            body["delegates"] = list(credentials._delegates)
        response = transport(
            url,
            method="POST",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {source.token}"},
        )
        if int(response.status) != 200:
            # Classified from the transport's record of this answer (an IAM refusal
            # names roles/iam.serviceAccountTokenCreator).
            raise google.auth.exceptions.RefreshError("generateIdToken was refused")  # type: ignore[no-untyped-call]
        answer = json.loads(response.data)
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise ValueError("no token in the answer")
        return token

    def _no_id_tokens(self) -> CredentialsError:
        kind = self.credential_type or "these"
        who = "user credentials" if kind.endswith("authorized_user") else f"{kind} credentials"
        return CredentialsError(
            f"{who} ({kind}) cannot mint ID tokens for an audience; set impersonate = "
            f'"SA@PROJECT.iam.gserviceaccount.com" in [profiles.{self.name}] to mint them as '
            "that service account (your account needs roles/iam.serviceAccountTokenCreator "
            "on it)",
            reason="id_token_unsupported",
        )

    def _id_token(
        self, value: str, audience: str, took: float, credentials_id: str, account: str
    ) -> Token:
        """The minted ID token as a :class:`Token`, after checking it: a JWT (three
        base64url parts, at most ``MAX_TOKEN_LENGTH`` characters in all) whose claims
        are a JSON object with ``aud`` = ``audience`` and a plausible ``exp``; the email
        it names becomes the account when it looks like one."""
        try:
            claims = read_jwt_claims(value)
        except ValueError as err:
            raise self._bad_response(f"with an unusable ID token ({err})") from None
        aud = claims.get("aud")
        if aud != audience and not (isinstance(aud, list) and audience in aud):
            raise self._bad_response("with an ID token for another audience")
        exp, iat = claims.get("exp"), claims.get("iat")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise self._bad_response("with an ID token without a numeric exp")
        wall, steady = clock.now(), clock.steady()
        expires_in = exp - wall
        if isinstance(iat, int | float) and not isinstance(iat, bool) and iat <= exp:
            # Never believe it lives longer than it was issued for: our clock may be
            # behind the issuer's. (Short of that, exp - now is what is left.)
            expires_in = min(expires_in, exp - iat - max(0.0, took))
        try:
            wire.check_lifetime(expires_in)
        except ValueError as err:
            raise self._bad_response(f"with an implausible expiry ({err})") from None
        email = claims.get("email")
        if isinstance(email, str) and _EMAIL.fullmatch(email):
            account = email
        self.account = account
        return Token.received(
            value,
            expires_in,
            wall=wall,
            steady=steady,
            profile=self.name,
            account=account,
            scopes=(),
            credentials_id=credentials_id,
            audience=audience,
        )

    # -- results and errors -----------------------------------------------------------

    def _token(self, credentials: Any, took: float, credentials_id: str) -> Token:
        """The answer as a :class:`Token`, after checking it: a token must be token68
        (it ends up in files that shells source) and its lifetime plausible (an
        ``expires_in`` of 0 would make a loop of refreshes, one of years a token that is
        never replaced). A bad answer is a retryable ``bad_response``: never written."""
        token = credentials.token
        expiry = credentials.expiry
        if not isinstance(token, str) or not token or not isinstance(expiry, datetime):
            raise self._bad_response("without a token or expiry")
        try:
            wire.check_token(token)
        except ValueError as err:
            raise self._bad_response(f"with an unusable token ({err})") from None
        wall, steady = clock.now(), clock.steady()
        # google-auth keeps expiry as a naive datetime in UTC, computed by adding
        # expires_in to the time the answer *arrived*; the server counted from when it
        # issued the token, up to `took` seconds earlier. Err on the early side so
        # tokend never calls a token valid that Google already considers expired.
        expires_in = expiry.replace(tzinfo=UTC).timestamp() - wall - max(0.0, took)
        try:
            wire.check_lifetime(expires_in)
        except ValueError as err:
            raise self._bad_response(f"with an implausible expiry ({err})") from None
        return Token.received(
            token,
            expires_in,
            wall=wall,
            steady=steady,
            profile=self.name,
            account=self.account,
            scopes=tuple(self.profile.scopes),
            credentials_id=credentials_id,
        )

    def _bad_response(self, what: str) -> RefreshError:
        host = self._transport.last.host if self._transport.last else "the token endpoint"
        return RefreshError(
            f"{host} answered {what}",
            retryable=True,
            reason="bad_response",
        )

    def _fix(self) -> str:
        if self.credential_type == "metadata":
            return "check the VM's service account"
        if self._adc:
            return LOGIN
        return f"fix or replace the file named by profiles.{self.name}.credentials"

    def _invalid(self, what: str) -> CredentialsError:
        return CredentialsError(what, reason="credentials_invalid")

    def _retryable(self, abort: _Abort) -> RefreshError:
        response = abort.response
        detail = f" ({response.error})" if response and response.error else ""
        hint = ""
        if self.credential_type == "metadata" and response is None:
            hint = (
                '; credentials = "metadata" works only on Google Cloud (Compute Engine, GKE, '
                'Cloud Run): elsewhere use "adc" or a credentials file'
            )
        return RefreshError(
            f"token request to {abort.host or 'the token endpoint'} "
            f"failed: {abort.why}{detail}{hint}",
            retryable=True,
            reason="timeout"
            if abort.timed_out
            else ("unavailable" if response else "transport_error"),
        )

    def _classify(
        self, exc: Exception, transport: _OneShotTransport
    ) -> RefreshError | CredentialsError:
        last = transport.last
        if isinstance(exc, google.auth.exceptions.ReauthFailError):
            return CredentialsError(
                f"reauthentication failed; {self._fix_reauth()}",
                reason="reauth_required",
            )
        if getattr(exc, "retryable", False):
            host = last.host if last else ""
            return self._retryable(_Abort(f"retryable error ({type(exc).__name__})", last, host))
        if last is not None and last.status >= 400:
            return self._rejected(last)
        if last is not None and last.status == 200:
            # A 200 whose body google-auth could not use (not JSON, fields missing): a
            # proxy's error page or a glitch that a later attempt can outlast.
            return RefreshError(
                f"{last.host} answered 200 with an unusable body",
                retryable=True,
                reason="bad_response",
            )
        if isinstance(exc, google.auth.exceptions.RefreshError):
            # Refused before any request: e.g. the external subject token file is gone,
            # or the file lacks fields needed to refresh.
            return self._invalid(
                f"cannot refresh ({type(exc).__name__} before any request); {self._fix()}"
            )
        return RefreshError(
            f"refresh failed ({type(exc).__name__})",
            retryable=True,
            reason="refresh_failed",
        )

    def _rejected(self, last: _Response) -> CredentialsError:
        code = last.error or f"HTTP {last.status}"
        what = f"{last.host} refused the token request: {code}"
        if last.iam and last.status in (401, 403, 404):
            target = self.profile.impersonate or "the target service account"
            return CredentialsError(
                f"{what}; grant the caller roles/iam.serviceAccountTokenCreator on "
                f"{target} and check that the account exists",
                reason="credentials_invalid",
            )
        if last.status in (400, 401, 403):
            return CredentialsError(f"{what}; {self._fix_reauth()}", reason="reauth_required")
        return CredentialsError(f"{what}; {self._fix()}", reason="credentials_invalid")

    def _fix_reauth(self) -> str:
        if self.credential_type == "metadata":
            return "check the VM's service account and its access scopes"
        if self._adc:
            return LOGIN
        if self.credential_type in ("authorized_user", "external_account_authorized_user"):
            return f"log in again or replace {self._file} ({LOGIN} and copy the new file there)"
        return f"replace {self._file} (profiles.{self.name}.credentials) with valid credentials"


_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]{1,128}@[A-Za-z0-9.\-]{1,190}")
_JWT = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


def read_jwt_claims(value: object) -> dict[str, Any]:
    """The claims of a JWT, unverified (the signature is the audience's business; we
    only hand the token on), after checking that it is one: a string of at most
    ``wire.MAX_TOKEN_LENGTH`` characters, three non-empty base64url parts, a JSON
    object in the middle one.

    Raises:
        ValueError: not such a JWT (the message never holds the token).
    """
    value = wire.check_token(value)
    if not _JWT.fullmatch(value):
        raise ValueError("not a JWT (three base64url parts)")
    part = value.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):  # [[[[… nested past the limit
        raise ValueError("its claims are not base64url JSON") from None
    if not isinstance(claims, dict):
        raise ValueError("its claims are not a JSON object")
    return claims


_IMPERSONATION_TARGET = re.compile(r"serviceAccounts/([^/:]+@[^/:]+):generateAccessToken")


def describe_credentials(name: str, profile: ProfileConfig) -> tuple[str, str]:
    """What a profile's credentials are, for ``tokend doctor``: ``(type, account)``.

    Reads the file without refreshing anything, and returns no secret: only the
    ``type`` and an identity field (``client_email``, ``account``, or the service
    account an impersonation URL names); ``account`` is "" when the file names none.
    ``("metadata", "")`` for the metadata server (also ADC's fallback on a GCE VM).

    Raises:
        CredentialsError: the file is missing, unreadable, not JSON or of an
            unsupported type; the message names the file and the fix.
    """
    source = Source(name, profile)
    path = source._file
    if path is None or (
        source._adc and not source._adc_explicit and not path.exists() and _on_gce()
    ):
        return "metadata", ""
    info = source._read_json(path)
    kind = info.get("type")
    if kind not in CREDENTIAL_TYPES:
        shown = repr(kind)[:40] if isinstance(kind, str) else "missing"
        raise source._invalid(f"{path}: credential type {shown} is not supported; {source._fix()}")
    account = ""
    for key in ("client_email", "account"):
        value = info.get(key)
        if isinstance(value, str) and "@" in value:
            account = value
            break
    url = info.get("service_account_impersonation_url")
    if isinstance(url, str) and (m := _IMPERSONATION_TARGET.search(url)):
        account = urllib.parse.unquote(m.group(1))
    return str(kind), account


def _account_of(credentials: Any) -> str:
    """The email google-auth knows for these credentials, else ""."""
    for attr in ("service_account_email", "signer_email", "account"):
        value = None
        with contextlib.suppress(Exception):  # some properties compute and may raise
            value = getattr(credentials, attr, None)
        if isinstance(value, str) and "@" in value:
            return value
    return ""


def _on_gce() -> bool:
    """Whether ADC should fall back to the metadata server (without pinging it)."""
    env = google.auth.environment_vars
    if os.environ.get(env.GCE_METADATA_HOST) or os.environ.get(env.GCE_METADATA_ROOT):
        return True
    return bool(google.auth.compute_engine._metadata.detect_gce_residency_linux())  # type: ignore[no-untyped-call]
