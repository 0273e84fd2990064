"""Get a fresh token from tokend: stdlib only, microseconds on the common path.

File first: the profile's ``json`` token file, which the daemon replaces atomically, is
read and parsed (cached by inode and mtime, so a call costs one ``stat``). When it is
missing or too close to expiry, the Unix socket is asked with ``min_valid``, which makes
the daemon refresh first. :class:`TokenUnavailable` says what to do when neither works.

Paths come from ``TOKEND_RUNTIME_DIR`` / ``TOKEND_SOCKET``, the config file
(``TOKEND_CONFIG`` or the platform default, read with :mod:`tomllib`) and the
defaults the daemon uses, from the same functions (:mod:`tokend.paths`, stdlib only).

Use with the OpenAI SDK, which calls the key provider before every request::

    client = openai.OpenAI(api_key=tokend.client.token, base_url=tokend.client.openai_base_url())
    aclient = openai.AsyncOpenAI(api_key=tokend.client.token_async, base_url=...)

This module must never import pydantic, google-auth, watchdog or aiohttp (a test checks).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tokend import wire
from tokend.errors import LOGIN, START_DAEMON, TokenUnavailable
from tokend.paths import default_config_path, default_runtime_dir, read_regular

# What `tokend token` imports is most of what it costs (scripts/bench.py): typing,
# dataclasses (which pulls in inspect, ast, dis, tokenize) and hashlib (OpenSSL) are
# kept off this module's import path, and socket is imported where it is used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = [
    "TokenInfo",
    "TokenUnavailable",
    "daemon_status",
    "id_token",
    "id_token_async",
    "id_token_object",
    "openai_base_url",
    "proxy_env",
    "socket_path",
    "token",
    "token_async",
    "token_file_path",
    "token_info",
    "token_info_async",
]

#: Seconds to wait for the daemon's answer (it may be refreshing, bounded by its own
#: fetch timeout of at most 10 s by default).
SOCKET_TIMEOUT = 15.0
#: When the daemon has just started and holds no token yet, let it finish its first
#: fetch instead of failing at once.
SOCKET_WAIT = 5.0
_MAX_RESPONSE = 1 << 20

_LOGIN_HINT = f"if it cannot refresh, {LOGIN}"


class TokenInfo:
    """A token and what is known about it. ``repr`` never shows the value.

    Immutable, and compared and hashed by its fields, like a frozen dataclass; written
    out by hand to keep :mod:`dataclasses` (inspect, ast, dis, tokenize) off the import
    path of ``tokend token`` (``python -X importtime`` shows what it would cost).
    """

    __slots__ = (
        "account",
        "credentials_id",
        "expires_at",
        "lifetime",
        "profile",
        "scopes",
        "value",
    )
    __match_args__ = (
        "value",
        "expires_at",
        "account",
        "scopes",
        "profile",
        "credentials_id",
        "lifetime",
    )

    value: str
    expires_at: float  #: epoch seconds
    account: str
    scopes: tuple[str, ...]
    profile: str
    credentials_id: str  #: which credentials minted it (see token.json)
    lifetime: float  #: seconds it was issued for (0: unknown)

    def __init__(
        self,
        value: str,
        expires_at: float,
        account: str,
        scopes: tuple[str, ...],
        profile: str,
        credentials_id: str = "",
        lifetime: float = 0.0,
    ) -> None:
        setter = object.__setattr__
        setter(self, "value", value)
        setter(self, "expires_at", expires_at)
        setter(self, "account", account)
        setter(self, "scopes", scopes)
        setter(self, "profile", profile)
        setter(self, "credentials_id", credentials_id)
        setter(self, "lifetime", lifetime)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"cannot delete field {name!r}")

    def _fields(self) -> tuple[str, float, str, tuple[str, ...], str, str, float]:
        return (
            self.value,
            self.expires_at,
            self.account,
            self.scopes,
            self.profile,
            self.credentials_id,
            self.lifetime,
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TokenInfo) and other.__class__ is self.__class__:
            return self._fields() == other._fields()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"TokenInfo(profile={self.profile!r}, account={self.account!r}, "
            f"expires_in={int(self.expires_in)}s)"
        )

    __str__ = __repr__

    @property
    def expires_in(self) -> float:
        """Seconds until expiry (negative once expired)."""
        return self.expires_at - time.time()

    def as_dict(self) -> dict[str, Any]:
        """The ``/v1/token`` object (what ``tokend token --format json`` prints)."""
        return wire.token_object(
            self.value,
            expires_at=self.expires_at,
            expires_in=self.expires_in,
            profile=self.profile,
            account=self.account,
            scopes=self.scopes,
            credentials_id=self.credentials_id,
            lifetime=self.lifetime,
        )


def _info_from(data: Any) -> TokenInfo:
    value, expires_at, profile, account, scopes, credentials_id = wire.read_token_object(data)
    lifetime = wire.stated_lifetime(data)
    return TokenInfo(value, expires_at, account, scopes, profile, credentials_id, lifetime)


# -- paths ------------------------------------------------------------------------------


def _config_path(config: str | os.PathLike[str] | None = None) -> Path:
    if config:
        return Path(config).expanduser()
    if os.environ.get("TOKEND_CONFIG"):
        return Path(os.environ["TOKEND_CONFIG"]).expanduser()
    return default_config_path()


_config_cache: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _config(config: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The parsed config file (``config``, else ``TOKEND_CONFIG``, else the platform
    default), ``{}`` when there is none. Cached by inode and mtime."""
    path = _config_path(config)
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _config_cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    import tomllib  # here: without a config file (the common case) it is never needed

    try:
        data = tomllib.loads(read_regular(path).decode("utf-8"))
    except OSError as err:
        raise TokenUnavailable(
            f"{path}: cannot read the tokend config: {err.strerror or err}"
        ) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise TokenUnavailable(f"{path}: cannot read the tokend config: {err}") from None
    _config_cache[path] = (key, data)
    return data


def _table(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _runtime_dir(cfg: dict[str, Any]) -> Path:
    """The daemon's runtime dir: ``TOKEND_RUNTIME_DIR``, ``runtime_dir`` from the config
    file, else the default the daemon computes with the very same function."""
    if os.environ.get("TOKEND_RUNTIME_DIR"):
        return Path(os.environ["TOKEND_RUNTIME_DIR"]).expanduser()
    configured = cfg.get("runtime_dir")
    if isinstance(configured, str) and configured:
        return Path(configured).expanduser()
    return default_runtime_dir()


def token_file_path(
    profile: str = "default", *, config: str | os.PathLike[str] | None = None
) -> Path | None:
    """The profile's ``json`` token file, or None when its sinks include none.

    Args:
        profile: the profile name.
        config: the tokend config file (default: ``TOKEND_CONFIG``, else the platform's).

    Returns:
        The path (which may not exist yet), or None.
    """
    cfg = _config(config)
    sinks = _table(cfg, "profiles", profile).get("sinks")
    if isinstance(sinks, list):
        for sink in sinks:
            if isinstance(sink, dict) and sink.get("format") == "json" and sink.get("path"):
                path = Path(str(sink["path"])).expanduser()
                return path if path.is_absolute() else _runtime_dir(cfg) / path
        return None
    name = "token.json" if profile == "default" else f"{profile}.token.json"
    return _runtime_dir(cfg) / name


def socket_path(*, config: str | os.PathLike[str] | None = None) -> Path | None:
    """The daemon's socket: ``TOKEND_SOCKET``, else ``socket.path`` from the config
    file (``""`` turns it off: None), else ``tokend.sock`` in the runtime dir."""
    if os.environ.get("TOKEND_SOCKET"):
        return Path(os.environ["TOKEND_SOCKET"]).expanduser()
    cfg = _config(config)
    configured = _table(cfg, "socket").get("path", "tokend.sock")
    if not isinstance(configured, str) or not configured:
        return None
    path = Path(configured).expanduser()
    return path if path.is_absolute() else _runtime_dir(cfg) / path


def openai_base_url(profile: str = "default") -> str | None:
    """The Vertex AI OpenAI-compatible base URL from the profile's ``[openai]`` table.

    Args:
        profile: the profile name.

    Returns:
        ``https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/
        {location}/endpoints/{endpoint}`` (host ``aiplatform.googleapis.com`` for
        location ``global``), or None when the profile has no ``[openai]`` table.
    """
    section = _table(_config(), "profiles", profile, "openai")
    project, location = section.get("project"), section.get("location")
    if not (isinstance(project, str) and project and isinstance(location, str) and location):
        return None
    return wire.vertex_base_url(
        project,
        location,
        str(section.get("endpoint") or "openapi"),
        str(section.get("api_endpoint") or ""),
    )


#: The variables ``proxy.env`` holds, in its order.
PROXY_VARIABLES = ("OPENAI_BASE_URL", "OPENAI_API_KEY")


def proxy_env(*, config: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` of the local proxy, from the daemon's
    ``proxy.env`` in the runtime dir: the base URL and a local key that do not expire.

    Raises:
        TokenUnavailable: there is no such file (the proxy is off, or tokend is not
            running), or it is not one tokend wrote.
    """
    cfg = _config(config)
    path = _runtime_dir(cfg) / "proxy.env"
    try:
        text = read_regular(path, 1 << 14).decode("ascii")
    except FileNotFoundError:
        if not _table(cfg, "proxy").get("listen"):
            raise TokenUnavailable(
                f"the local proxy is off: set listen under [proxy] in {_config_path(config)} "
                '(e.g. listen = "127.0.0.1:8789") and restart tokend'
            ) from None
        raise TokenUnavailable(f"no {path}: {START_DAEMON}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TokenUnavailable(f"{path}: cannot read it: {err}") from None
    env = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in PROXY_VARIABLES and value and value.isprintable() and " " not in value:
            env[name] = value
    if tuple(env) != PROXY_VARIABLES:
        raise TokenUnavailable(f"{path}: not a proxy.env tokend wrote; restart tokend")
    return env


# -- the file ---------------------------------------------------------------------------

_file_cache: dict[Path, tuple[tuple[int, int, int], TokenInfo]] = {}


def _read_file(path: Path) -> TokenInfo | str:
    """The token in a json sink, else why there is none. The daemon replaces the file by
    rename, so (inode, mtime, size) changes with every new token."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"no token file at {path}"
    except OSError as err:
        return f"cannot look at the token file {path}: {err.strerror or err}"
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _file_cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        data = read_regular(path, _MAX_RESPONSE)
    except FileNotFoundError:
        return f"no token file at {path}"
    except OSError as err:
        return f"cannot read the token file {path}: {err.strerror or err}"
    try:
        info = _info_from(json.loads(data))
    except (ValueError, KeyError, TypeError):
        return f"{path} does not hold a token object (not written by tokend?)"
    _file_cache[path] = (key, info)
    return info


#: What a profile's token file path depends on besides the profile and ``config`` (and
#: what a process may change between calls: HOME or XDG_CONFIG_HOME changing under a
#: running program is not followed until its token file changes; each lookup costs 0.4 µs).
_PATH_ENV = ("TOKEND_CONFIG", "TOKEND_RUNTIME_DIR", "XDG_RUNTIME_DIR")
#: The file each (profile, config, _PATH_ENV values) was last read from, with the
#: (inode, mtime, size) it had then and the token it held.
_last_read: dict[tuple[Any, ...], tuple[Path, tuple[int, int, int], TokenInfo]] = {}


def _file_token(
    profile: str, config: str | os.PathLike[str] | None
) -> tuple[Path | None, TokenInfo | str]:
    """(the profile's json token file, its token or why there is none), in one ``stat``
    while the file is the one read last time: the daemon replaces it (a new inode) with
    every token and removes it when the config moves the sink, so the config file is
    looked at again only then, not on every call."""
    ident = (profile, config, *map(os.environ.get, _PATH_ENV))
    last = _last_read.get(ident)
    if last is not None:
        path, key, cached = last
        try:
            st = os.stat(path)
        except OSError:
            pass
        else:
            if (st.st_ino, st.st_mtime_ns, st.st_size) == key:
                return path, cached
    found = token_file_path(profile, config=config)
    if found is None:
        return None, f"profile {profile!r} has no json token file"
    info = _read_file(found)
    if not isinstance(info, str):
        _last_read[ident] = (found, _file_cache[found][0], info)
    return found, info


def _from_file(
    profile: str,
    min_valid: float | None,
    config: str | os.PathLike[str] | None = None,
    most: float = wire.DEFAULT_MIN_VALID,
) -> tuple[TokenInfo | None, str, float]:
    """(token, why not, the min_valid applied) from the profile's file (``min_valid``
    None: the default for the token's lifetime, :func:`tokend.wire.default_min_valid`,
    at most ``most``)."""
    wanted = most if min_valid is None else min_valid
    path, info = _file_token(profile, config)
    if isinstance(info, str):
        return None, info, wanted
    if info.profile != profile:
        return None, f"{path} holds profile {info.profile!r}, not {profile!r}", wanted
    left = info.expires_in
    if min_valid is None:
        wanted = wire.default_min_valid(info.lifetime, most)
    if left <= wanted:
        state = "expired" if left <= 0 else f"expires in {int(left)}s"
        return None, f"the token in {path} {state} (wanted at least {wanted:g}s)", wanted
    return info, "", wanted


# -- the socket -------------------------------------------------------------------------


class _SocketError(Exception):
    """The daemon could not be asked, or said no (``answered``); the message says why
    and what to do."""

    def __init__(self, message: str, *, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


def _connect(sock: Any, address: str, deadline: float) -> None:
    """``connect``, waiting while the daemon's listen queue is full (a burst of clients:
    a socket with a timeout gets EAGAIN then, not a wait) until ``deadline``."""
    while True:
        try:
            sock.connect(address)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(0.005)


def _get(path: Path, target: str, timeout: float) -> tuple[int, Any]:
    """One ``GET`` over the Unix socket: (status, parsed JSON body).

    Hand-written HTTP/1.1 (``Connection: close``, read to EOF): http.client would cost
    more to import than the whole request takes.
    """
    import socket  # only here: the file path never needs it

    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            _connect(sock, os.fspath(path), deadline)
        except (FileNotFoundError, ConnectionRefusedError):
            raise _SocketError(
                f"tokend is not running (no daemon on {path}); {START_DAEMON}"
            ) from None
        except PermissionError:
            raise _SocketError(
                f"no permission to connect to {path}; is it another user's tokend? "
                "set TOKEND_RUNTIME_DIR or TOKEND_SOCKET to your own"
            ) from None
        try:
            sock.sendall(
                f"GET {target} HTTP/1.1\r\nHost: tokend\r\nAccept: application/json\r\n"
                "Connection: close\r\n\r\n".encode()
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # a refused peer's request is not read: its 403 is there to read
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break  # a refused peer is reset; handled as "no response" below
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_RESPONSE:
                raise _SocketError(f"tokend on {path} sent an oversized answer")
    except TimeoutError:
        raise _SocketError(
            f"tokend on {path} did not answer within {timeout:g}s; "
            "check `tokend status` or `journalctl --user -u tokend`"
        ) from None
    except OSError as err:
        raise _SocketError(f"cannot talk to tokend on {path}: {err.strerror or err}") from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    if not raw:
        raise _SocketError(
            f"tokend on {path} closed the connection without answering: uid {os.getuid()} "
            "is not allowed (the daemon's socket.allow_uids lists who is)"
        )
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b"\r\n", 1)[0].split()[1])
        answer = json.loads(body)
    except (IndexError, ValueError):
        raise _SocketError(f"tokend on {path} sent a malformed answer") from None
    if status == 403:  # the peer uid check: the detail names the uid and the fix
        detail = answer.get("detail") if isinstance(answer, dict) else None
        if not detail:
            detail = f"uid {os.getuid()} is not allowed; its owner can add it to socket.allow_uids"
        raise _SocketError(f"tokend on {path} refused the connection: {detail}", answered=True)
    return status, answer


def _from_socket(
    profile: str, min_valid: float, timeout: float, config: str | os.PathLike[str] | None = None
) -> TokenInfo:
    path = socket_path(config=config)
    if path is None:
        raise _SocketError('the socket is turned off (socket.path = "")')
    from urllib.parse import urlencode  # only on the slow path

    query = urlencode({"profile": profile, "min_valid": f"{min_valid:g}", "wait": SOCKET_WAIT})
    status, body = _get(path, f"/v1/token?{query}", timeout)
    if status == 200:
        try:
            info = _info_from(body)
        except (ValueError, KeyError, TypeError):
            raise _SocketError(f"tokend on {path} sent a malformed token object") from None
        if info.expires_in > 0:
            # Below min_valid only when the daemon could not refresh: its last good token
            # is still the best there is, and it stays usable until it expires.
            return info
        raise _SocketError("tokend answered with an expired token")
    detail = body.get("detail") if isinstance(body, dict) else None
    raise _SocketError(f"tokend cannot provide one: {detail or f'HTTP {status}'}", answered=True)


# -- public API -------------------------------------------------------------------------


def token_info(
    profile: str = "default",
    min_valid: float | None = None,
    *,
    timeout: float = SOCKET_TIMEOUT,
    config: str | os.PathLike[str] | None = None,
    default_min_valid: float = wire.DEFAULT_MIN_VALID,
) -> TokenInfo:
    """The current token of ``profile`` and what is known about it.

    Args:
        profile: the tokend profile.
        min_valid: seconds the token must stay valid (default: ``default_min_valid``, or
            a quarter of the token's lifetime when that is shorter); a token file closer
            to expiry makes the daemon refresh first (over the socket).
        timeout: seconds to wait for the daemon when the file does not do.
        config: the tokend config file (default: ``TOKEND_CONFIG``, else the platform's).
        default_min_valid: what ``min_valid=None`` asks for at most (60 s; ``tokend
            token`` asks for :data:`tokend.wire.HELPER_MIN_VALID`).

    Returns:
        A :class:`TokenInfo`.

    Raises:
        TokenUnavailable: no valid token could be had; the message says what to do.
    """
    info, why, wanted = _from_file(profile, min_valid, config, default_min_valid)
    if info is not None:
        return info
    try:
        return _from_socket(profile, wanted, timeout, config)
    except _SocketError as err:
        # When the daemon answered, its detail already carries the fix.
        hint = "" if err.answered else f"; {_LOGIN_HINT}"
        raise TokenUnavailable(f"no token for profile {profile!r}: {why}; {err}{hint}") from None


def token(profile: str = "default", min_valid: float | None = None) -> str:
    """The current access token of ``profile``: a callable for
    ``openai.OpenAI(api_key=tokend.client.token)`` and
    ``openai.providers.vertex(token_provider=tokend.client.token)``.

    Args:
        profile: the tokend profile.
        min_valid: seconds the token must stay valid (default: 60, or a quarter of
            the token's lifetime when that is shorter).

    Returns:
        The bearer token.

    Raises:
        TokenUnavailable: no valid token could be had; the message says what to do.
    """
    return token_info(profile, min_valid).value


async def token_info_async(profile: str = "default", min_valid: float | None = None) -> TokenInfo:
    """:func:`token_info` for asyncio code: the file is read inline (microseconds), the
    socket, which may wait for a refresh, in a worker thread.

    Args:
        profile: the tokend profile.
        min_valid: seconds the token must stay valid (default: 60, or a quarter of
            the token's lifetime when that is shorter).

    Returns:
        A :class:`TokenInfo`.

    Raises:
        TokenUnavailable: no valid token could be had; the message says what to do.
    """
    info, _why, _wanted = _from_file(profile, min_valid)
    if info is not None:
        return info
    import asyncio  # loaded already in any program that awaits this

    return await asyncio.to_thread(token_info, profile, min_valid)


async def token_async(profile: str = "default", min_valid: float | None = None) -> str:
    """:func:`token` for ``openai.AsyncOpenAI(api_key=tokend.client.token_async)``.

    Args:
        profile: the tokend profile.
        min_valid: seconds the token must stay valid (default: 60, or a quarter of
            the token's lifetime when that is shorter).

    Returns:
        The bearer token.

    Raises:
        TokenUnavailable: no valid token could be had; the message says what to do.
    """
    return (await token_info_async(profile, min_valid)).value


def daemon_status(
    timeout: float = 5.0, *, config: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The daemon's ``/v1/status`` object (no token values in it).

    Args:
        timeout: seconds to wait for the answer.
        config: the tokend config file (default: ``TOKEND_CONFIG``, else the platform's).

    Raises:
        TokenUnavailable: the daemon could not be asked.
    """
    path = socket_path(config=config)
    if path is None:
        raise TokenUnavailable('the socket is turned off (socket.path = ""); no status to ask')
    try:
        status, body = _get(path, "/v1/status", timeout)
    except _SocketError as err:
        raise TokenUnavailable(str(err)) from None
    if status != 200 or not isinstance(body, dict):
        raise TokenUnavailable(f"tokend on {path} answered /v1/status with HTTP {status}")
    return body


# -- ID tokens ----------------------------------------------------------------------------

#: How long the daemon may take to mint an audience's first ID token (one request to
#: Google, bounded by its fetch timeout).
ID_TOKEN_WAIT = 10.0
#: The last ID token object per (socket, profile, audience), reused while it has
#: ``min_valid`` left: a service called in a loop costs one dict lookup, not a request.
#: The daemon keeps at most max_id_token_audiences of them fresh; this holds what it
#: answered.
_ID_TOKENS: dict[tuple[str, str, str], tuple[dict[str, Any], float, float]] = {}
_MAX_ID_TOKENS = 64


def id_token_object(
    audience: str,
    profile: str = "default",
    min_valid: float | None = None,
    *,
    timeout: float = SOCKET_TIMEOUT,
    config: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The ``/v1/id_token`` object (``id_token``, ``expires_at``, ``expires_in``,
    ``audience``, ``account``, ...) for ``audience``, from the daemon over the socket:
    it mints one through the profile's credentials on the first request and keeps it
    fresh. Arguments and errors as :func:`id_token`."""
    try:
        wire.check_audience(audience)
    except ValueError as err:
        raise ValueError(f"tokend: {err}") from None
    path = socket_path(config=config)
    if path is None:
        raise TokenUnavailable(
            f"no ID token for {audience}: the socket is turned off (socket.path = \"\"), "
            "and ID tokens are served only there"
        )
    key = (os.fspath(path), profile, audience)
    cached = _ID_TOKENS.get(key)
    if cached is not None:
        obj, expires_at, lifetime = cached
        wanted = wire.default_min_valid(lifetime) if min_valid is None else min_valid
        if expires_at - time.time() > wanted:
            return {**obj, "expires_in": max(0, int(expires_at - time.time()))}
    from urllib.parse import urlencode  # only on the slow path

    query = {"profile": profile, "audience": audience, "wait": f"{ID_TOKEN_WAIT:g}"}
    if min_valid:
        query["min_valid"] = f"{min_valid:g}"
    try:
        status, body = _get(path, f"/v1/id_token?{urlencode(query)}", timeout)
    except _SocketError as err:  # its message says what to do (start tokend, ...)
        raise TokenUnavailable(f"no ID token for {audience}: {err}") from None
    if status != 200:
        detail = body.get("detail") if isinstance(body, dict) else None
        raise TokenUnavailable(
            f"no ID token for {audience}: tokend cannot provide one: {detail or f'HTTP {status}'}"
        )
    try:
        _value, expires_at, _profile, _account, got = wire.read_id_token_object(body)
    except ValueError:
        raise TokenUnavailable(f"tokend on {path} sent a malformed ID token object") from None
    if got != audience or expires_at <= time.time():
        raise TokenUnavailable(f"tokend on {path} sent an ID token for another audience")
    if len(_ID_TOKENS) >= _MAX_ID_TOKENS:
        del _ID_TOKENS[next(iter(_ID_TOKENS))]  # the oldest: a bound, not an LRU
    _ID_TOKENS[key] = (body, expires_at, float(wire.stated_lifetime(body)))
    return dict(body)


def id_token(
    audience: str, profile: str = "default", min_valid: float | None = None
) -> str:
    """An ID token (a JWT) whose ``aud`` is ``audience``: for calling Cloud Run, Cloud
    Functions or an IAP-protected app (``Authorization: Bearer …``).

    Args:
        audience: the service's URL (``https://…``) or OAuth client id.
        profile: the tokend profile whose credentials mint it (a service-account key,
            ``impersonate``, or the metadata server; not user credentials).
        min_valid: seconds it must stay valid (default: 60, or a quarter of its lifetime
            when that is shorter).

    Returns:
        The ID token.

    Raises:
        ValueError: ``audience`` is not an https URL or client id.
        TokenUnavailable: none could be had; the message says what to do.
    """
    return str(id_token_object(audience, profile, min_valid)["id_token"])


async def id_token_async(
    audience: str, profile: str = "default", min_valid: float | None = None
) -> str:
    """:func:`id_token` for asyncio code (the socket is asked in a worker thread)."""
    import asyncio

    return await asyncio.to_thread(id_token, audience, profile, min_valid)
