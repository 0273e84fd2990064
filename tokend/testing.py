"""Local stand-ins for Google's token endpoints and for an OpenAI-compatible API.

:class:`FakeGoogle` is a real HTTP server on ``127.0.0.1`` that speaks just enough of

- the OAuth token endpoint (``refresh_token`` and JWT-bearer grants),
- the GCE metadata server (``Metadata-Flavor: Google``),
- IAM Credentials ``generateAccessToken`` (impersonation) and
- STS token exchange (workload identity federation, ``external_account``)

for the real google-auth library to talk to it, with knobs to make it fail, hang, answer
garbage or revoke grants. :class:`FakeOpenAI` accepts a request only when it carries a
token the fake Google issued and that has not expired: it proves a token reached the SDK.

Only the stdlib (and ``cryptography``, imported lazily to mint and check service account
keys) is used, so the module is importable anywhere. ``python -m tokend.testing`` runs a
fake Google for demos: it writes throw-away credential files and prints how to point
tokend at them.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import math
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["FakeGoogle", "FakeOpenAI", "main"]

_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
_ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
_METADATA_SA = "/computeMetadata/v1/instance/service-accounts/"
_IAM_PREFIX = "/v1/projects/-/serviceAccounts/"
_IAM_SUFFIX = ":generateAccessToken"
_GARBAGE = b"<html><body>502 Bad Gateway (fake)</body></html>"


class _Trickle:
    """A body the handler sends one byte every ``interval`` seconds."""

    def __init__(self, data: bytes, interval: float) -> None:
        self.data = data
        self.interval = interval


Body = dict[str, Any] | str | bytes | _Trickle
Reply = tuple[int, Body]

# -- service account keys ------------------------------------------------------------

# RSA key generation takes ~50-100 ms; one key per process is plenty for throw-away files.
_KEY_LOCK = threading.Lock()
_KEY: tuple[str, str, Any] | None = None  # (key id, PEM private key, public key)


def _service_account_key() -> tuple[str, str, Any]:
    global _KEY
    with _KEY_LOCK:
        if _KEY is None:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            _KEY = (secrets.token_hex(20), pem, key.public_key())
        return _KEY


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _verify_jwt(assertion: str, public_keys: dict[str, Any]) -> dict[str, Any] | None:
    """Claims of an RS256 JWT signed by one of ``public_keys`` (by ``kid``), else None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        head_b64, claims_b64, sig_b64 = assertion.split(".")
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        signature = _b64url_decode(sig_b64)
    except ValueError:
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    if header.get("alg") != "RS256" or header.get("kid") not in public_keys:
        return None
    try:
        public_keys[header["kid"]].verify(
            signature,
            f"{head_b64}.{claims_b64}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        return None
    return claims


def _write_secret_file(path: str | os.PathLike[str], data: dict[str, Any] | str) -> Path:
    """Write a throw-away credential file at mode 0600 (also when it already existed)."""
    target = Path(path)
    text = data if isinstance(data, str) else json.dumps(data, indent=2) + "\n"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return target


# -- HTTP plumbing shared by both fakes ------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is a normal event in fault tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 (one request per connection, so no idle keep-alive threads linger)."""

    server: _Server
    server_version = "fake"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests capture stderr and the daemon's logs are scanned for secrets

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload, headers = self.server.owner._route(
            method, self.path, dict(self.headers.items()), body
        )
        self._reply(status, payload, headers)

    def _reply(self, status: int, payload: Body, headers: dict[str, str]) -> None:
        if isinstance(payload, _Trickle):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload.data)))
            self.end_headers()
            self.wfile.flush()
            stopping = self.server.owner._stopping
            for i in range(len(payload.data)):
                if stopping.wait(payload.interval):
                    return
                self.wfile.write(payload.data[i : i + 1])
                self.wfile.flush()
            return
        if isinstance(payload, dict):
            data = json.dumps(payload).encode()
            ctype = "application/json"
        elif isinstance(payload, str):
            data = payload.encode()
            ctype = "application/text"
        else:
            data = payload
            ctype = "text/html"
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", ctype))
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class _Base:
    """Start/stop/context-manager plumbing for a server on 127.0.0.1:0."""

    def __init__(self) -> None:
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = 0

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._listen(0)
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in hang()
        self._close()

    def refuse(self) -> None:
        """Close the listening socket but keep the port: connections are refused
        (``ECONNREFUSED``) until :meth:`accept`. Requests in flight finish normally."""
        self._close()

    def accept(self) -> None:
        """Listen again on the same port after :meth:`refuse`."""
        if self._httpd is None and self.port:
            self._listen(self.port)

    def _listen(self, port: int) -> None:
        httpd = _Server(("127.0.0.1", port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self.port = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def _close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Body, dict[str, str]]:
        raise NotImplementedError


# -- FakeGoogle ----------------------------------------------------------------------


class _Fault:
    def __init__(
        self,
        kind: str,
        count: int | None,
        status: int = 0,
        seconds: float = 0.0,
        value: Any = None,
    ):
        # "fail" | "hang" | "garbage" | "invalid_grant" | "trickle" | "token" | "expires_in"
        self.kind = kind
        self.remaining = count  # None = until clear_faults()
        self.status = status
        self.seconds = seconds
        self.value = value


class FakeGoogle(_Base):
    """Google's token endpoints on 127.0.0.1, for google-auth to refresh against.

    Args:
        lifetime: seconds a token issued from now on lives (settable at any time;
            fractional values are fine, ``expires_in`` is sent rounded up).

    Every token-issuing request (OAuth token endpoint, metadata token, IAM
    ``generateAccessToken``, STS) is counted in :attr:`calls`, :attr:`arrivals` and
    :attr:`call_log` and is subject to the fault knobs (:meth:`fail`, :meth:`hang`,
    :meth:`garbage`, :meth:`invalid_grant`, :meth:`trickle`, :meth:`bad_token`,
    :meth:`bad_expires_in`). :meth:`refuse` and :meth:`accept` close
    and reopen the listening port (connection refused). Thread-safe.
    """

    def __init__(self, lifetime: float = 3600.0) -> None:
        super().__init__()
        self.lifetime = lifetime
        self.metadata_account = "vm@fake-project.iam.gserviceaccount.com"
        self.calls: collections.Counter[str] = collections.Counter()
        self.call_log: list[tuple[float, str, int]] = []
        #: (time, kind) of every token request when it arrived (before any hang).
        self.arrivals: list[tuple[float, str]] = []
        self.issued: list[str] = []
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (identity, expires_at)
        self._refresh_tokens: dict[str, tuple[str, str, str]] = {}  # -> (who, id, secret)
        self._subject_tokens: dict[str, str] = {}  # external subject token -> identity
        self._public_keys: dict[str, Any] = {}  # key id -> RSA public key

    # -- addresses --------------------------------------------------------------------

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def metadata_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def iam_endpoint(self) -> str:
        return f"{self.url}/iam"

    @property
    def sts_uri(self) -> str:
        return f"{self.url}/sts"

    def impersonation_url(self, email: str) -> str:
        """The full ``generateAccessToken`` URL for ``email`` (as in credential files)."""
        return f"{self.iam_endpoint}{_IAM_PREFIX}{email}{_IAM_SUFFIX}"

    def env(self) -> dict[str, str]:
        """Environment that points google-auth's metadata lookups at this fake.

        google-auth reads ``GCE_METADATA_HOST`` once, when ``google.auth.compute_engine``
        is first imported; ``GCE_METADATA_IP`` (used by its ping) at call time.
        """
        no_proxy = "127.0.0.1,localhost"
        return {
            "GCE_METADATA_HOST": self.metadata_host,
            "GCE_METADATA_IP": self.metadata_host,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    # -- fault knobs ------------------------------------------------------------------

    def fail(self, status: int = 500, count: int | None = None) -> None:
        """Answer the next ``count`` token requests (None: all until cleared) with ``status``."""
        with self._lock:
            self._fault = _Fault("fail", count, status=status)

    def hang(self, seconds: float, count: int | None = None) -> None:
        """Sleep ``seconds`` before answering the next ``count`` token requests."""
        with self._lock:
            self._fault = _Fault("hang", count, seconds=seconds)

    def garbage(self, count: int | None = None) -> None:
        """Answer 200 with a body that is not JSON."""
        with self._lock:
            self._fault = _Fault("garbage", count)

    def invalid_grant(self, count: int | None = None) -> None:
        """Answer 400 ``invalid_grant`` (what Google says to a revoked refresh token)."""
        with self._lock:
            self._fault = _Fault("invalid_grant", count)

    def trickle(self, interval: float = 1.0, count: int | None = None) -> None:
        """Answer correctly, but send the body one byte every ``interval`` seconds: each
        read is quick, the whole answer takes minutes (a per-read timeout never fires)."""
        with self._lock:
            self._fault = _Fault("trickle", count, seconds=interval)

    def bad_token(self, value: str, count: int | None = None) -> None:
        """Answer 200 with ``value`` as the access token (a hostile or broken endpoint:
        ``$(...)``, newlines, megabytes). The token is recorded as issued, so a scan for
        secrets also looks for it."""
        with self._lock:
            self._fault = _Fault("token", count, value=value)

    def bad_expires_in(self, seconds: float, count: int | None = None) -> None:
        """Answer 200 with a new token whose ``expires_in`` is ``seconds`` (0, negative,
        a century)."""
        with self._lock:
            self._fault = _Fault("expires_in", count, value=seconds)

    def clear_faults(self) -> None:
        with self._lock:
            self._fault = None

    # -- inspection -------------------------------------------------------------------

    def who(self, token: str) -> str | None:
        """The identity a token was issued to (None if this fake never issued it)."""
        with self._lock:
            entry = self._tokens.get(token)
        return entry[0] if entry else None

    def expires_at(self, token: str) -> float | None:
        """When a token this fake issued expires (epoch seconds), else None."""
        with self._lock:
            entry = self._tokens.get(token)
        return entry[1] if entry else None

    def is_valid(self, token: str) -> bool:
        """True if this fake issued ``token`` and it has not expired."""
        with self._lock:
            entry = self._tokens.get(token)
        return entry is not None and time.time() < entry[1]

    def secrets(self) -> list[str]:
        """Every secret this fake handed out: access, refresh and subject tokens, client
        secrets and the private key's base64 lines. For scanning logs and messages."""
        with self._lock:
            found = list(self.issued)
            for refresh_token, (_, _, client_secret) in self._refresh_tokens.items():
                found += [refresh_token, client_secret]
            found += list(self._subject_tokens)
            has_key = bool(self._public_keys)
        if has_key:
            pem = _service_account_key()[1]
            found += [line for line in pem.splitlines() if len(line) >= 40]
        return found

    # -- credential files -------------------------------------------------------------

    def write_service_account(
        self,
        path: str | os.PathLike[str],
        email: str = "sa@fake-project.iam.gserviceaccount.com",
    ) -> Path:
        """A service account key file (real RSA key) whose ``token_uri`` is this fake."""
        kid, pem, public = _service_account_key()
        with self._lock:
            self._public_keys[kid] = public
        return _write_secret_file(
            path,
            {
                "type": "service_account",
                "project_id": "fake-project",
                "private_key_id": kid,
                "private_key": pem,
                "client_email": email,
                "client_id": "100000000000000000001",
                "auth_uri": f"{self.url}/auth",
                "token_uri": self.token_uri,
                "universe_domain": "googleapis.com",
            },
        )

    def write_authorized_user(
        self,
        path: str | os.PathLike[str],
        account: str = "user@example.com",
        *,
        client_id: str = "",
    ) -> Path:
        """A gcloud-style ``authorized_user`` ADC file with a fresh refresh token.

        google-auth ignores ``token_uri`` in this file type (it always uses Google's):
        point it here with the profile's ``token_uri`` override. ``client_id`` defaults to
        a random one (pass gcloud's to provoke google-auth's quota-project warning).
        """
        refresh_token = "1//fake-" + secrets.token_urlsafe(48)
        client_id = client_id or f"{secrets.randbelow(10**12)}-fake.apps.googleusercontent.com"
        client_secret = "fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[refresh_token] = (account, client_id, client_secret)
        return _write_secret_file(
            path,
            {
                "type": "authorized_user",
                "client_id": client_id,
                "client_secret": client_secret,
                "refresh_token": refresh_token,
                "token_uri": self.token_uri,
                "universe_domain": "googleapis.com",
            },
        )

    def write_external_account(
        self,
        path: str | os.PathLike[str],
        subject_token_file: str | os.PathLike[str],
        account: str = "principal://fake-pool/subject/workload",
        *,
        impersonate: str = "",
    ) -> Path:
        """A file-sourced ``external_account`` (workload identity federation) config.

        ``subject_token_file`` keeps its content if it has some (else gets a fresh random
        subject token); STS exchanges that subject token for a token issued to
        ``account``. With ``impersonate`` (a service account email) the file also names an
        impersonation URL on this fake's IAM endpoint, and the final token is issued to
        that service account.
        """
        existing = Path(subject_token_file)
        subject = existing.read_text().strip() if existing.is_file() else ""
        if not subject:
            subject = "fake-subject-" + secrets.token_urlsafe(32)
            _write_secret_file(subject_token_file, subject)
        with self._lock:
            self._subject_tokens[subject] = account
        info: dict[str, Any] = {
            "type": "external_account",
            "audience": (
                "//iam.googleapis.com/projects/123456789/locations/global/"
                "workloadIdentityPools/fake-pool/providers/fake-provider"
            ),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": self.sts_uri,
            "credential_source": {"file": str(subject_token_file)},
            "universe_domain": "googleapis.com",
        }
        if impersonate:
            info["service_account_impersonation_url"] = self.impersonation_url(impersonate)
        return _write_secret_file(path, info)

    # -- request handling -------------------------------------------------------------

    def _issue(self, identity: str) -> tuple[str, int, float]:
        """A new token for ``identity``: (value, expires_in sent, expires_at)."""
        value = "ya29.fake-" + secrets.token_urlsafe(33)
        expires_in = max(1, math.ceil(self.lifetime))
        expires_at = time.time() + expires_in
        with self._lock:
            self._tokens[value] = (identity, expires_at)
            self.issued.append(value)
        return value, expires_in, expires_at

    def _oauth_token(self, identity: str, scope: str = "") -> dict[str, Any]:
        value, expires_in, _ = self._issue(identity)
        reply: dict[str, Any] = {
            "access_token": value,
            "expires_in": expires_in,
            "token_type": "Bearer",
        }
        if scope:
            reply["scope"] = scope
        return reply

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            fault = self._fault
            if fault is None:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._fault = None
            return fault

    def _token_request(self, kind: str, handler: Callable[[], Reply]) -> Reply:
        """Count, apply the active fault, else run ``handler``. ``calls`` counts on
        arrival; ``call_log`` gets the entry when the answer is decided (after a hang)."""
        with self._lock:
            self.calls[kind] += 1  # on arrival, so a test sees a hanging request
            self.arrivals.append((time.time(), kind))
        fault = self._take_fault()
        if fault is not None and fault.kind == "hang":
            self._stopping.wait(fault.seconds)
            fault = None
        if fault is None:
            status, body = handler()
        elif fault.kind == "fail":
            status = fault.status
            body = {
                "error": "fake_failure",
                "error_description": f"injected HTTP {fault.status}",
            }
        elif fault.kind == "garbage":
            status, body = 200, _GARBAGE
        elif fault.kind == "trickle":
            status, reply = handler()
            data = json.dumps(reply).encode() if isinstance(reply, dict) else b""
            body = _Trickle(data, fault.seconds)
        elif fault.kind == "token":
            with self._lock:
                self.issued.append(str(fault.value))
            status = 200
            body = {"access_token": fault.value, "expires_in": 3600, "token_type": "Bearer"}
        elif fault.kind == "expires_in":
            status, reply = handler()
            body = {**reply, "expires_in": fault.value} if isinstance(reply, dict) else reply
        else:
            status = 400
            body = {
                "error": "invalid_grant",
                "error_description": "Token has been expired or revoked.",
            }
        with self._lock:
            self.call_log.append((time.time(), kind, status))
        return status, body

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Body, dict[str, str]]:
        url = urllib.parse.urlsplit(path)
        lower = {k.lower(): v for k, v in headers.items()}
        if url.path == "/" or url.path.startswith("/computeMetadata/"):
            return self._metadata(method, url, lower)
        if method != "POST":
            return 405, {"error": "method_not_allowed"}, {}
        if url.path == "/token":
            form = _form(body)
            return (*self._token_request("token", lambda: self._token_grant(form)), {})
        if url.path == "/sts":
            form = _form(body)
            return (*self._token_request("sts", lambda: self._sts(form)), {})
        if url.path.startswith("/iam" + _IAM_PREFIX) and url.path.endswith(_IAM_SUFFIX):
            email = urllib.parse.unquote(url.path[len("/iam" + _IAM_PREFIX) : -len(_IAM_SUFFIX)])
            auth = lower.get("authorization", "")
            return (*self._token_request("iam", lambda: self._iam(email, auth)), {})
        return 404, {"error": "not_found"}, {}

    def _token_grant(self, form: dict[str, str]) -> Reply:
        grant = form.get("grant_type", "")
        if grant == "refresh_token":
            with self._lock:
                entry = self._refresh_tokens.get(form.get("refresh_token", ""))
            if entry is None:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                }
            identity, client_id, client_secret = entry
            if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
                return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
            return 200, self._oauth_token(identity, form.get("scope", ""))
        if grant == _JWT_BEARER:
            with self._lock:
                keys = dict(self._public_keys)
            claims = _verify_jwt(form.get("assertion", ""), keys)
            if claims is None or not isinstance(claims.get("iss"), str):
                return 400, {"error": "invalid_grant", "error_description": "Bad JWT signature."}
            if float(claims.get("exp", 0)) < time.time():
                return 400, {"error": "invalid_grant", "error_description": "Expired JWT."}
            return 200, self._oauth_token(claims["iss"], str(claims.get("scope", "")))
        return 400, {"error": "unsupported_grant_type", "error_description": f"{grant!r}"}

    def _sts(self, form: dict[str, str]) -> Reply:
        if form.get("grant_type") != _TOKEN_EXCHANGE:
            return 400, {"error": "unsupported_grant_type"}
        with self._lock:
            identity = self._subject_tokens.get(form.get("subject_token", ""))
        if identity is None:
            return 400, {"error": "invalid_grant", "error_description": "Invalid subject token."}
        value, expires_in, _ = self._issue(identity)
        return 200, {
            "access_token": value,
            "issued_token_type": _ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }

    def _iam(self, email: str, authorization: str) -> Reply:
        caller = authorization.removeprefix("Bearer ").strip()
        if not authorization.startswith("Bearer ") or not self.is_valid(caller):
            return 401, {
                "error": {
                    "code": 401,
                    "message": "Request had invalid authentication credentials.",
                    "status": "UNAUTHENTICATED",
                }
            }
        value, _, expires_at = self._issue(email)
        # expireTime has whole seconds (google-auth parses exactly "%Y-%m-%dT%H:%M:%SZ"):
        # round the recorded expiry down to what the client will believe.
        whole = math.floor(expires_at)
        with self._lock:
            self._tokens[value] = (email, float(whole))
        expire_time = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, {"accessToken": value, "expireTime": expire_time}

    def _metadata(
        self, method: str, url: urllib.parse.SplitResult, headers: dict[str, str]
    ) -> tuple[int, Body, dict[str, str]]:
        flavor = {"Metadata-Flavor": "Google"}
        if headers.get("metadata-flavor") != "Google":
            return 403, b"Missing Metadata-Flavor:Google header.", {}
        if method != "GET":
            return 405, b"Method not allowed", flavor
        path = url.path
        if path == "/" or path == "/computeMetadata/v1/" or path == "/computeMetadata/":
            return 200, "computeMetadata/", {**flavor, "Content-Type": "application/text"}
        if path == "/computeMetadata/v1/project/project-id":
            return 200, "fake-project", {**flavor, "Content-Type": "application/text"}
        if path == "/computeMetadata/v1/universe/universe-domain":
            return 200, "googleapis.com", {**flavor, "Content-Type": "application/text"}
        if path.startswith(_METADATA_SA):
            rest = path[len(_METADATA_SA) :]
            account, _, leaf = rest.partition("/")
            if account not in ("default", self.metadata_account):
                return 404, b"Not Found", flavor
            if leaf == "token":
                reply = self._token_request(
                    "metadata", lambda: (200, self._oauth_token(self.metadata_account))
                )
                return (*reply, dict(flavor))
            if leaf == "email":
                return 200, self.metadata_account, {**flavor, "Content-Type": "application/text"}
            if leaf == "":
                return (
                    200,
                    {
                        "aliases": ["default"],
                        "email": self.metadata_account,
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                    },
                    flavor,
                )
        return 404, b"Not Found", flavor


def _form(body: bytes) -> dict[str, str]:
    parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


# -- FakeOpenAI ----------------------------------------------------------------------


class FakeOpenAI(_Base):
    """An OpenAI-compatible API that accepts only live tokens from ``google``.

    ``POST …/chat/completions`` and ``POST …/responses`` answer a minimal valid body
    when ``Authorization: Bearer T`` carries a token for which ``google.is_valid(T)``;
    anything else gets 401 with an OpenAI-style error. :attr:`url` is the ``base_url``.
    """

    def __init__(self, google: FakeGoogle) -> None:
        super().__init__()
        self.google = google
        self.seen_tokens: list[str] = []
        self.rejected = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Body, dict[str, str]]:
        route = urllib.parse.urlsplit(path).path.rstrip("/")
        kind = (
            "chat"
            if route.endswith("/chat/completions")
            else "responses"
            if route.endswith("/responses")
            else ""
        )
        if method != "POST" or not kind:
            return 404, _openai_error("Unknown path.", "invalid_request_error", None), {}
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not token or not self.google.is_valid(token):
            with self._lock:
                self.rejected += 1
            return (
                401,
                _openai_error(
                    "Request had invalid authentication credentials.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
                {},
            )
        with self._lock:
            self.seen_tokens.append(token)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        model = str(request.get("model", "fake-model")) if isinstance(request, dict) else "?"
        now = int(time.time())
        if kind == "chat":
            return 200, _chat_completion(model, now), {}
        return 200, _response(model, now), {}


def _openai_error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _chat_completion(model: str, now: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": now,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _response(model: str, now: int) -> dict[str, Any]:
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": now,
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_fake",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "usage": {
            "input_tokens": 1,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 2,
        },
    }


# -- python -m tokend.testing --------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run a FakeGoogle until SIGINT/SIGTERM; print where it is and how to use it."""
    parser = argparse.ArgumentParser(
        prog="python -m tokend.testing",
        description="Run a fake Google token service on 127.0.0.1 for demos and tests.",
    )
    parser.add_argument("--lifetime", type=float, default=3600.0, help="token lifetime (s)")
    parser.add_argument("--dir", default="", help="where to write throw-away credential files")
    args = parser.parse_args(argv)
    if args.lifetime <= 0:
        parser.error("--lifetime must be positive")
    directory = Path(args.dir or tempfile.mkdtemp(prefix="tokend-fake-"))
    directory.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    with FakeGoogle(lifetime=args.lifetime) as fake:
        user = fake.write_authorized_user(directory / "authorized_user.json")
        sa = fake.write_service_account(directory / "service_account.json")
        external = fake.write_external_account(
            directory / "external_account.json", directory / "subject_token"
        )
        lines = [
            f"fake Google listening on {fake.url} (token lifetime {args.lifetime:g} s)",
            f"  token_uri     {fake.token_uri}",
            f"  metadata      {fake.metadata_host}",
            f"  iam_endpoint  {fake.iam_endpoint}",
            f"  sts_uri       {fake.sts_uri}",
            "credential files:",
            f"  authorized_user   {user}",
            f"  service_account   {sa}",
            f"  external_account  {external}",
            "environment:",
            *(f"  export {k}={v}" for k, v in fake.env().items()),
            "tokend config (config.toml):",
            "  [profiles.default]",
            f'  credentials = "{user}"',
            f'  token_uri = "{fake.token_uri}"',
            "Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
