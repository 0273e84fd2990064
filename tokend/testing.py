"""Local stand-ins for Google's token endpoints and for Vertex AI's model APIs.

:class:`FakeGoogle` is a real HTTP server on ``127.0.0.1`` that speaks just enough of

- the OAuth token endpoint (``refresh_token`` and JWT-bearer grants),
- the GCE metadata server (``Metadata-Flavor: Google``),
- IAM Credentials ``generateAccessToken`` and ``generateIdToken`` (impersonation),
- STS token exchange (workload identity federation, ``external_account``) and
- ID tokens: RS256-signed JWTs for the JWT-bearer grant with ``target_audience``, for
  ``generateIdToken`` and for the metadata server's ``identity``, with the certificates
  to verify them at :attr:`FakeGoogle.certs_url`

for the real google-auth library to talk to it, with knobs to make it fail, hang, answer
garbage or revoke grants and tokens.

:class:`FakeOpenAI` is the Vertex-like upstream: Vertex's OpenAI-compatible endpoint
(chat completions, streamed or not, responses, embeddings) and Anthropic's Messages API
as Vertex publishes it (``:rawPredict``, ``:streamRawPredict``), and Gemini's
``:generateContent`` and ``:streamGenerateContent``. It accepts a request only
when it carries a token the fake Google issued, has not revoked and that has not expired:
it proves a fresh token reached the upstream. It records every request it saw, the time
each streamed chunk was written, and can be told to fail the next requests.

Only the stdlib (and ``cryptography``, imported lazily to mint and check service account
keys) is used, so the module is importable anywhere. ``python -m tokend.testing`` runs a
fake Google for demos: it writes throw-away credential files and prints how to point
tokend at them.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import json
import math
import os
import re
import secrets
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["FakeGoogle", "FakeOpenAI", "Seen", "main"]

_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
_ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
_METADATA_SA = "/computeMetadata/v1/instance/service-accounts/"
_IAM_PREFIX = "/v1/projects/-/serviceAccounts/"
_IAM_SUFFIX = ":generateAccessToken"
_IAM_ID_SUFFIX = ":generateIdToken"
_CERTS_PATH = "/oauth2/v1/certs"
#: Token requests that answer with an ID token (see FakeGoogle.calls).
_ID_KINDS = frozenset({"id_token", "iam_id", "identity"})
_GARBAGE = b"<html><body>502 Bad Gateway (fake)</body></html>"


class _Trickle:
    """A body the handler sends one byte every ``interval`` seconds."""

    def __init__(self, data: bytes, interval: float) -> None:
        self.data = data
        self.interval = interval


class _Stream:
    """A ``text/event-stream`` body: the handler writes and flushes ``events`` one at a
    time, sleeping ``delay`` seconds before each, then ``tail``, then closes.

    ``on_sent(i, at)`` is called once event ``i`` is out (``at``: ``time.monotonic()``
    just before its write); ``on_abort()`` when a write found the client gone.
    """

    def __init__(self, events: list[bytes], delay: float, tail: bytes = b"") -> None:
        self.events = events
        self.delay = delay
        self.tail = tail
        self.on_sent: Callable[[int, float], None] | None = None
        self.on_abort: Callable[[], None] | None = None


Body = dict[str, Any] | str | bytes | _Trickle | _Stream
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


# The key FakeGoogle signs ID tokens with (Google's own, in real life), and the
# self-signed certificate it serves for it, as Google serves its certs for verify_token().
_ID_KEY: tuple[str, Any, str] | None = None  # (key id, private key, certificate PEM)


def _id_token_key() -> tuple[str, Any, str]:
    global _ID_KEY
    with _KEY_LOCK:
        if _ID_KEY is None:
            import datetime as dt

            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
            from cryptography.x509.oid import NameOID

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-google-id-tokens")])
            now = datetime.now(UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .sign(key, hashes.SHA256())
            )
            pem = cert.public_bytes(serialization.Encoding.PEM).decode()
            _ID_KEY = (secrets.token_hex(20), key, pem)
        return _ID_KEY


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign_jwt(claims: dict[str, Any]) -> str:
    """An RS256 JWT of ``claims``, signed with the fake's ID-token key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    kid, key, _ = _id_token_key()
    head = _b64url(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{_b64url(signature)}"


def _jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified ({} if it is not one)."""
    try:
        claims = json.loads(_b64url_decode(token.split(".")[1]))
    except (ValueError, IndexError):
        return {}
    return claims if isinstance(claims, dict) else {}


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
    # listen() backlog: a burst of ~1000 simultaneous connections is queued, not dropped
    # (the kernel caps it at net.core.somaxconn).
    request_queue_size = 1024
    owner: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is a normal event in fault tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 (one request per connection, so no idle keep-alive threads linger), or
    HTTP/1.1 with keep-alive when the owner's ``keep_alive`` is set (as Vertex keeps a
    connection open: a benchmark's upstream)."""

    server: _Server
    server_version = "fake"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        if getattr(self.server.owner, "keep_alive", False):
            self.protocol_version = "HTTP/1.1"
            # Headers and body are separate writes: with Nagle's algorithm and delayed
            # ACKs, every answer after the first on a connection would wait ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)

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
        body = self._read_body()
        status, payload, headers = self.server.owner._route(
            method, self.path, dict(self.headers.items()), body
        )
        self._reply(status, payload, headers)

    def _read_body(self) -> bytes:
        """The request body, by ``Content-Length`` or chunked (as a proxy that streams
        its upload sends it)."""
        if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65536).strip():
                    pass  # trailers, up to the blank line
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _stream(self, status: int, stream: _Stream, headers: dict[str, str]) -> None:
        """Send ``stream`` without a Content-Length (HTTP/1.0: the body ends when the
        connection closes). :meth:`_Base.stop` cuts the sleeps short."""
        stopping = self.server.owner._stopping
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", headers.pop("Content-Type", "text/event-stream"))
            self.send_header("Cache-Control", "no-cache")
            if self.protocol_version != "HTTP/1.0":
                self.send_header("Connection", "close")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.flush()
            for i, event in enumerate(stream.events):
                if stopping.wait(stream.delay) if stream.delay > 0 else stopping.is_set():
                    return
                at = time.monotonic()
                self.wfile.write(event)
                self.wfile.flush()
                if stream.on_sent is not None:
                    stream.on_sent(i, at)
            if stream.tail:
                self.wfile.write(stream.tail)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            if stream.on_abort is not None:
                stream.on_abort()

    def _reply(self, status: int, payload: Body, headers: dict[str, str]) -> None:
        if isinstance(payload, _Stream):
            self._stream(status, payload, headers)
            return
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
    ``generateAccessToken``, STS; ID tokens as ``id_token``, ``iam_id`` and
    ``identity``) is counted in :attr:`calls`, :attr:`arrivals` and
    :attr:`call_log` and is subject to the fault knobs (:meth:`fail`, :meth:`hang`,
    :meth:`garbage`, :meth:`invalid_grant`, :meth:`trickle`, :meth:`bad_token`,
    :meth:`bad_expires_in`). :meth:`refuse` and :meth:`accept` close
    and reopen the listening port (connection refused). :meth:`revoke` ends a token
    early; :meth:`mint` issues one without a request. Thread-safe.
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
        self._revoked: set[str] = set()
        self._refresh_tokens: dict[str, tuple[str, str, str]] = {}  # -> (who, id, secret)
        self._subject_tokens: dict[str, str] = {}  # external subject token -> identity
        self._public_keys: dict[str, Any] = {}  # key id -> RSA public key
        #: Every ID token issued (also in :meth:`secrets`), in order.
        self.id_tokens_issued: list[str] = []
        self._id_tokens: dict[str, tuple[str, str]] = {}  # ID token -> (identity, audience)

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

    @property
    def certs_url(self) -> str:
        """Where the certificates of the ID tokens' signing key are served (the
        ``certs_url`` of ``google.oauth2.id_token.verify_token``)."""
        return f"{self.url}{_CERTS_PATH}"

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

    def revoke(self, token: str) -> None:
        """Revoke ``token`` before it expires (a user removed the grant, an admin
        disabled the account): :meth:`is_valid` is False for it from now on, so
        :class:`FakeOpenAI` and the IAM endpoint answer 401. :meth:`who` and
        :meth:`expires_at` still know it."""
        with self._lock:
            self._revoked.add(token)

    def mint(self, account: str = "user@example.com") -> str:
        """A fresh access token for ``account`` (living :attr:`lifetime` seconds), issued
        without a request: not counted in :attr:`calls`, no fault applies; it is in
        :attr:`issued` and :meth:`secrets` like any other."""
        return self._issue(account)[0]

    def mint_id_token(
        self,
        audience: str,
        account: str = "sa@fake-project.iam.gserviceaccount.com",
        *,
        lifetime: float | None = None,
    ) -> str:
        """An ID token for ``audience`` issued to ``account`` without a request (as
        :meth:`mint`), living ``lifetime`` seconds (default :attr:`lifetime`; negative:
        already expired), signed like every other."""
        return self._issue_id_token(account, audience, lifetime)

    # -- inspection -------------------------------------------------------------------

    def who(self, token: str) -> str | None:
        """The identity a token was issued to (None if this fake never issued it)."""
        with self._lock:
            entry = self._tokens.get(token)
        return entry[0] if entry else None

    def id_token_of(self, token: str) -> tuple[str, str] | None:
        """``(identity, audience)`` of an ID token this fake issued, else None."""
        with self._lock:
            return self._id_tokens.get(token)

    def expires_at(self, token: str) -> float | None:
        """When a token this fake issued expires (epoch seconds), else None."""
        with self._lock:
            entry = self._tokens.get(token)
        return entry[1] if entry else None

    def is_valid(self, token: str) -> bool:
        """True if this fake issued ``token``, it has not expired nor been revoked."""
        with self._lock:
            entry = self._tokens.get(token)
            revoked = token in self._revoked
        return entry is not None and not revoked and time.time() < entry[1]

    def secrets(self) -> list[str]:
        """Every secret this fake handed out: access, refresh and subject tokens, client
        secrets and the private key's base64 lines. For scanning logs and messages."""
        with self._lock:
            found = list(self.issued)
            for refresh_token, (_, _, client_secret) in self._refresh_tokens.items():
                found += [refresh_token, client_secret]
            found += list(self._subject_tokens)
            found += list(self.id_tokens_issued)
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

    def _issue_id_token(self, identity: str, audience: str, lifetime: float | None = None) -> str:
        """A new RS256 ID token for ``identity`` with ``aud`` = ``audience``, living
        :attr:`lifetime` seconds (``lifetime``, when given, may be anything: a knob)."""
        iat = int(time.time())
        life = max(1, math.ceil(self.lifetime)) if lifetime is None else lifetime
        claims = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": identity,
            "sub": str(int(hashlib.sha256(identity.encode()).hexdigest()[:15], 16)),
            "email": identity,
            "email_verified": True,
            "iat": iat,
            "exp": iat + life,
        }
        value = _sign_jwt(claims)
        with self._lock:
            self._id_tokens[value] = (identity, audience)
            self.id_tokens_issued.append(value)
        return value

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
            if isinstance(reply, dict):
                data = json.dumps(reply).encode()
            else:
                data = reply.encode() if isinstance(reply, str) else b""
            body = _Trickle(data, fault.seconds)
        elif fault.kind == "token":
            with self._lock:
                self.issued.append(str(fault.value))
            status = 200
            body = _bad_token_reply(kind, str(fault.value))
        elif fault.kind == "expires_in":
            status, reply = handler()
            if kind in _ID_KINDS:
                body = self._id_reply_expiring(kind, reply, fault.value)
            else:
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

    def _id_reply_expiring(self, kind: str, reply: Body, seconds: float) -> Body:
        """``reply`` (an ID token answer) with its ID token re-issued to expire in
        ``seconds`` (the ``bad_expires_in`` knob for ID tokens)."""
        token = reply if isinstance(reply, str) else ""
        if isinstance(reply, dict):
            token = str(reply.get("id_token") or reply.get("token") or "")
        known = self.id_token_of(token)
        if known is None:
            return reply
        value = self._issue_id_token(*known, lifetime=seconds)
        if kind == "identity":
            return value
        return {"id_token": value} if kind == "id_token" else {"token": value}

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Body, dict[str, str]]:
        url = urllib.parse.urlsplit(path)
        lower = {k.lower(): v for k, v in headers.items()}
        if url.path == "/" or url.path.startswith("/computeMetadata/"):
            return self._metadata(method, url, lower)
        if url.path == _CERTS_PATH and method == "GET":
            kid, _, pem = _id_token_key()
            return 200, {kid: pem}, {}
        if method != "POST":
            return 405, {"error": "method_not_allowed"}, {}
        if url.path == "/token":
            form = _form(body)
            # Google's one token endpoint answers an ID token for a JWT-bearer grant
            # whose assertion names a target_audience; counted as "id_token".
            kind = (
                "id_token"
                if "target_audience" in _jwt_claims(form.get("assertion", ""))
                else "token"
            )
            return (*self._token_request(kind, lambda: self._token_grant(form)), {})
        if url.path.startswith("/iam" + _IAM_PREFIX) and url.path.endswith(_IAM_ID_SUFFIX):
            email = urllib.parse.unquote(url.path[len("/iam" + _IAM_PREFIX) : -len(_IAM_ID_SUFFIX)])
            auth = lower.get("authorization", "")
            return (*self._token_request("iam_id", lambda: self._iam_id(email, auth, body)), {})
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
            audience = claims.get("target_audience")
            if audience is not None:
                if not isinstance(audience, str) or not audience:
                    return 400, {"error": "invalid_request", "error_description": "audience"}
                return 200, {"id_token": self._issue_id_token(claims["iss"], audience)}
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

    def _iam_id(self, email: str, authorization: str, body: bytes) -> Reply:
        """IAM ``generateIdToken``: an ID token for ``email``, for a caller holding a
        live access token (as google-auth and tokend send it: JSON with ``audience``)."""
        caller = authorization.removeprefix("Bearer ").strip()
        if not authorization.startswith("Bearer ") or not self.is_valid(caller):
            return 401, {
                "error": {
                    "code": 401,
                    "message": "Request had invalid authentication credentials.",
                    "status": "UNAUTHENTICATED",
                }
            }
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        audience = request.get("audience") if isinstance(request, dict) else None
        if not isinstance(audience, str) or not audience:
            return 400, {
                "error": {
                    "code": 400,
                    "message": "audience is required",
                    "status": "INVALID_ARGUMENT",
                }
            }
        return 200, {"token": self._issue_id_token(email, audience)}

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
            if leaf == "identity":
                query = urllib.parse.parse_qs(url.query)
                audience = (query.get("audience") or [""])[-1]
                if not audience:
                    return 400, b"non-empty audience parameter required", flavor
                reply = self._token_request(
                    "identity",
                    lambda: (200, self._issue_id_token(self.metadata_account, audience)),
                )
                return (*reply, {**flavor, "Content-Type": "text/html"})
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


def _bad_token_reply(kind: str, value: str) -> Body:
    """The answer of the ``bad_token`` knob, in the shape of ``kind``'s endpoint."""
    if kind == "identity":
        return value
    if kind == "id_token":
        return {"id_token": value}
    if kind == "iam_id":
        return {"token": value}
    return {"access_token": value, "expires_in": 3600, "token_type": "Bearer"}


def _form(body: bytes) -> dict[str, str]:
    parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


# -- FakeOpenAI ----------------------------------------------------------------------

_VERTEX_LAYOUT = re.compile(r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/")
_ANTHROPIC_PATH = re.compile(
    r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/anthropic/models/(?P<model>[^/:]+):(?P<verb>rawPredict|streamRawPredict)"
)
_GEMINI_PATH = re.compile(
    r"/(?:v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<verb>generateContent|streamGenerateContent)"
)
_OPENAI_ROUTES = {"chat/completions": "chat", "responses": "responses", "embeddings": "embeddings"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, repr=False)
class Seen:
    """One request :class:`FakeOpenAI` received, with the status it answered.

    ``path`` includes the query string; ``headers`` has lower-case keys (the last value
    of a repeated header); ``token`` is the bearer token, or ``""``. The repr shows only
    the method, the path without its query and the status: header values and the body
    carry tokens and keys. Hashable: ``headers`` takes no part in ``==`` and ``hash``.
    """

    method: str
    path: str
    headers: dict[str, str] = field(compare=False)
    body: bytes
    token: str
    status: int

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not)."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        path, query, _ = self.path.partition("?")
        shown = path + ("?…" if query else "")
        return f"Seen(method={self.method!r}, path={shown!r}, status={self.status})"


class FakeOpenAI(_Base):
    """A Vertex-like model API that accepts only live tokens from ``google``.

    Args:
        google: the :class:`FakeGoogle` whose :meth:`~FakeGoogle.is_valid` decides.
        project, location: what the Vertex-layout paths must name.

    Routes (a request must carry ``Authorization: Bearer T`` with ``google.is_valid(T)``,
    else 401 with an OpenAI-style error, counted in :attr:`rejected`):

    - ``POST …/chat/completions``: a chat completion; with ``"stream": true`` an SSE
      stream of :attr:`stream_chunks` ``chat.completion.chunk`` events (plus a usage
      chunk if ``stream_options.include_usage``) and ``data: [DONE]``.
    - ``POST …/responses``: a Responses API body (not streamed: ``"stream": true`` is 400).
    - ``POST …/embeddings``: an embeddings list, one deterministic vector per input
      (``dimensions`` long, default 8; base64 float32 when ``encoding_format`` asks).
    - ``POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:rawPredict``:
      an Anthropic Messages response; ``:streamRawPredict`` (or ``"stream": true``) its
      SSE events. The body must have ``anthropic_version``, as on Vertex, else 400.
    - ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent``
      (or ``/v1beta1/…``, as google-genai calls it): a Gemini ``GenerateContentResponse``;
      ``:streamGenerateContent`` (``?alt=sse``) :attr:`stream_chunks` of them as SSE. The
      body must have a non-empty ``contents`` list, else 400 in Google's error shape.

    Anything else is 404, e.g. ``GET …/models`` (Vertex's ``openapi`` endpoint has
    none). The ``…`` is any prefix (:attr:`url`, ``/v1``, is the old OpenAI-style base),
    except that a path in Vertex's layout (``/v1/projects/…``) must name :attr:`project`
    and :attr:`location` and, for the OpenAI routes, go through ``endpoints/openapi``
    (:attr:`vertex_base_url`).

    Streams are written an event at a time, flushed, after sleeping :attr:`stream_delay`
    seconds each; :meth:`stop` cuts the sleeps short. :attr:`stream_log` records when
    each was written; :attr:`disconnects` counts streams the client abandoned.
    :meth:`fail_next` makes the next requests on a known route fail. Every request is in
    :attr:`requests`. Thread-safe.
    """

    def __init__(
        self,
        google: FakeGoogle,
        *,
        project: str = "fake-project",
        location: str = "us-central1",
        keep_alive: bool = False,
    ) -> None:
        super().__init__()
        self.google = google
        self.project = project
        self.location = location
        #: HTTP/1.1 keep-alive (streams still end with the connection). Off by default:
        #: each kept connection holds a thread until its client closes it.
        self.keep_alive = keep_alive
        #: Events (chunks) per stream, and the seconds slept before each (settable).
        self.stream_chunks = 3
        self.stream_delay = 0.0
        #: Every token accepted, in order (one entry per accepted request).
        self.seen_tokens: list[str] = []
        #: Requests turned away for a missing, unknown, expired or revoked token.
        self.rejected = 0
        #: Every request received, in order, with the status it was answered.
        self.requests: list[Seen] = []
        #: (index in :attr:`requests`, event index, ``time.monotonic()`` just before the
        #: write) for every stream event written; not the ``[DONE]`` line.
        self.stream_log: list[tuple[int, int, float]] = []
        #: Streams cut short because a write found the client gone.
        self.disconnects = 0
        self._failures: collections.deque[tuple[int, dict[str, Any] | str | bytes | None]] = (
            collections.deque()
        )
        self._lock = threading.Lock()

    # -- addresses --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The OpenAI-style ``base_url``: ``{origin}/v1``."""
        return f"{self.origin}/v1"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def vertex_base_url(self) -> str:
        """The ``base_url`` of Vertex's OpenAI-compatible endpoint for this project."""
        return (
            f"{self.origin}/v1/projects/{self.project}/locations/{self.location}/endpoints/openapi"
        )

    def anthropic_url(self, model: str, *, stream: bool = False) -> str:
        """The ``:rawPredict`` (``:streamRawPredict`` with ``stream``) URL for ``model``."""
        verb = "streamRawPredict" if stream else "rawPredict"
        return (
            f"{self.origin}/v1/projects/{self.project}/locations/{self.location}"
            f"/publishers/anthropic/models/{model}:{verb}"
        )

    def gemini_url(self, model: str, *, stream: bool = False, version: str = "v1beta1") -> str:
        """The ``:generateContent`` (``:streamGenerateContent?alt=sse`` with ``stream``)
        URL for ``model``, under ``version`` (google-genai calls ``v1beta1``)."""
        verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return (
            f"{self.origin}/{version}/projects/{self.project}/locations/{self.location}"
            f"/publishers/google/models/{model}:{verb}"
        )

    # -- fault knobs ------------------------------------------------------------------

    def fail_next(
        self, status: int, count: int = 1, body: dict[str, Any] | str | bytes | None = None
    ) -> None:
        """Answer the next ``count`` requests on a known route with ``status`` and
        ``body`` (default: an OpenAI error body), before the token is looked at. Calls
        queue up: ``fail_next(500); fail_next(429)`` fails a 500, then a 429."""
        with self._lock:
            self._failures.extend([(status, body)] * count)

    def clear_faults(self) -> None:
        """Forget the failures :meth:`fail_next` queued."""
        with self._lock:
            self._failures.clear()

    # -- request handling -------------------------------------------------------------

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Body, dict[str, str]]:
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        route = urllib.parse.urlsplit(path).path.rstrip("/")
        status, payload, extra = self._answer(method, route, token, body)
        with self._lock:
            index = len(self.requests)
            self.requests.append(Seen(method, path, lower, body, token, status))
        if isinstance(payload, _Stream):
            payload.on_sent = lambda event, at: self._sent(index, event, at)
            payload.on_abort = self._abandoned
        return status, payload, extra

    def _classify(self, method: str, route: str) -> tuple[str, str, str]:
        """(kind, model named in the path, why not) for a request line."""
        unknown = ("", "", "Unknown path.")
        if method != "POST":
            return unknown
        ours = (self.project, self.location)
        anthropic = _ANTHROPIC_PATH.fullmatch(route)
        if anthropic is not None:
            if (anthropic["project"], anthropic["location"]) != ours:
                return "", "", f"Unknown path (this stand-in serves {'/'.join(ours)})."
            kind = "anthropic-stream" if anthropic["verb"] == "streamRawPredict" else "anthropic"
            return kind, anthropic["model"], ""
        gemini = _GEMINI_PATH.fullmatch(route)
        if gemini is not None:
            if (gemini["project"], gemini["location"]) != ours:
                return "", "", f"Unknown path (this stand-in serves {'/'.join(ours)})."
            kind = "gemini-stream" if gemini["verb"] == "streamGenerateContent" else "gemini"
            return kind, gemini["model"], ""
        vertex = _VERTEX_LAYOUT.match(route)
        if vertex is not None:
            base = f"/v1/projects/{self.project}/locations/{self.location}/endpoints/openapi/"
            kind = (
                _OPENAI_ROUTES.get(route.removeprefix(base), "") if route.startswith(base) else ""
            )
            if not kind:
                return "", "", f"Unknown path (this stand-in serves {'/'.join(ours)})."
            return kind, "", ""
        for suffix, kind in _OPENAI_ROUTES.items():
            if route.endswith("/" + suffix):
                return kind, "", ""
        return unknown

    def _answer(
        self, method: str, route: str, token: str, body: bytes
    ) -> tuple[int, Body, dict[str, str]]:
        kind, path_model, why = self._classify(method, route)
        if not kind:
            return 404, _openai_error(why, "invalid_request_error", None), {}
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            status, fail_body = failure
            if fail_body is None:
                fail_body = _openai_error(
                    f"Injected HTTP {status}.",
                    _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error"),
                    None,
                )
            return status, fail_body, {}
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
        if not isinstance(request, dict):
            request = {"model": "?"}
        model = str(request.get("model", "fake-model"))
        stream = request.get("stream") is True
        now = int(time.time())
        if kind == "chat":
            if stream:
                return 200, self._chat_stream(model, now, request), {}
            return 200, _chat_completion(model, now), {}
        if kind == "responses":
            if stream:
                return (
                    400,
                    _openai_error(
                        "This stand-in does not stream /responses.", "invalid_request_error", None
                    ),
                    {},
                )
            return 200, _response(model, now), {}
        if kind == "embeddings":
            return (*_embeddings(model, request), {})
        if kind in ("gemini", "gemini-stream"):
            contents = request.get("contents")
            if not isinstance(contents, list) or not contents:
                return 400, _google_error(400, "INVALID_ARGUMENT", "contents is required."), {}
            if kind == "gemini-stream":
                return 200, self._gemini_stream(path_model), {}
            return 200, _gemini_response(path_model, "ok"), {}
        if "anthropic_version" not in request:
            return 400, _anthropic_error("anthropic_version: Field required"), {}
        if kind == "anthropic-stream" or stream:
            return 200, self._anthropic_stream(path_model), {}
        return 200, _anthropic_message(path_model), {}

    def _chat_stream(self, model: str, now: int, request: dict[str, Any]) -> _Stream:
        chunks = self.stream_chunks
        events = []
        for i in range(chunks):
            delta = {"role": "assistant", "content": "ok"} if i == 0 else {"content": " ok"}
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": "stop" if i == chunks - 1 else None,
            }
            events.append(_sse(_chunk(model, now, [choice])))
        options = request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            usage = {"prompt_tokens": 1, "completion_tokens": chunks, "total_tokens": 1 + chunks}
            events.append(_sse({**_chunk(model, now, []), "usage": usage}))
        return _Stream(events, self.stream_delay, tail=b"data: [DONE]\n\n")

    def _anthropic_stream(self, model: str) -> _Stream:
        chunks = self.stream_chunks
        start = {**_anthropic_message(model), "content": [], "stop_reason": None}
        payloads: list[dict[str, Any]] = [
            {"type": "message_start", "message": start},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            *(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "ok" if i == 0 else " ok"},
                }
                for i in range(chunks)
            ),
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": chunks},
            },
            {"type": "message_stop"},
        ]
        events = [_sse(p, event=str(p["type"])) for p in payloads]
        return _Stream(events, self.stream_delay)

    def _gemini_stream(self, model: str) -> _Stream:
        chunks = self.stream_chunks
        events = []
        for i in range(chunks):
            answer = _gemini_response(model, "ok" if i == 0 else " ok")
            if i < chunks - 1:
                del answer["candidates"][0]["finishReason"]
            events.append(_sse(answer))
        return _Stream(events, self.stream_delay)

    def _sent(self, request: int, event: int, at: float) -> None:
        with self._lock:
            self.stream_log.append((request, event, at))

    def _abandoned(self) -> None:
        with self._lock:
            self.disconnects += 1


def _sse(data: dict[str, Any], event: str = "") -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _chunk(model: str, now: int, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": now,
        "model": model,
        "choices": choices,
    }


def _anthropic_error(message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def _google_error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _gemini_response(model: str, text: str) -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
        "modelVersion": model,
        "responseId": "fake-response",
    }


def _anthropic_message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


def _embeddings(model: str, request: dict[str, Any]) -> Reply:
    raw = request.get("input")
    one = isinstance(raw, str) or (
        isinstance(raw, list) and all(isinstance(x, int) for x in raw)  # one tokenized input
    )
    items: list[Any] = [raw] if one else raw if isinstance(raw, list) else []
    if not raw or not items or any(item in ("", []) for item in items):
        return 400, _openai_error(
            "'input' must be a non-empty string or list.", "invalid_request_error", None
        )
    dims = request.get("dimensions")
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 4096:
        dims = 8
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _vector(item, dims)
        embedding: list[float] | str = (
            base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
    return 200, {"object": "list", "data": data, "model": model, "usage": usage}


def _vector(item: Any, dims: int) -> list[float]:
    """``dims`` values in [-1, 1) derived from ``item``: the same input, the same vector;
    multiples of 1/128, so float32 (base64) and JSON carry the same numbers."""
    seed = json.dumps(item, sort_keys=True).encode()
    raw = b"".join(
        hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(-(-dims // 32))
    )
    return [(b - 128) / 128 for b in raw[:dims]]


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
        description="Run a fake Google token service and a Vertex-like model API on "
        "127.0.0.1, for demos, tests and trying tools offline.",
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

    with (
        FakeGoogle(lifetime=args.lifetime) as fake,
        FakeOpenAI(fake, project="fake-project", location="us-central1") as api,
    ):
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
            f"  certs_url     {fake.certs_url}  (ID tokens' signing certificates)",
            f"Vertex-like model API on {api.origin} (accepts only live tokens from it)",
            f"  OpenAI base   {api.vertex_base_url}",
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
            "  [profiles.default.openai]",
            '  project = "fake-project"',
            '  location = "us-central1"',
            f'  api_endpoint = "{api.origin}"',
            "  [proxy]",
            '  listen = "127.0.0.1:8789"',
            "then: tokend run --config config.toml; tokend env --proxy; point any tool at it",
            "Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
