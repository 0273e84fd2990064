"""The Unix-socket HTTP/1.1 API: ``/v1/token``, ``/v1/status``, ``/healthz``, ``/metrics``.

The socket is the fallback for clients whose token file is missing or too close to
expiry, and the way to ask for a refresh (``min_valid``). Access control is layered:
the socket file is 0600 inside the 0700 runtime dir, *and* every connection's peer uid
(SO_PEERCRED / LOCAL_PEERCRED) is checked before a byte is read, so a socket that
someone chmod-ed 666 (or a runtime dir bind-mounted elsewhere) still refuses other users.
A refused peer is told so (a 403 with its uid and the fix) and nothing it sent is read.

With ``socket.allow_uids`` the socket lives outside the runtime dir (the config
requires an absolute ``socket.path`` then), in a directory of ours with mode 0711, and
is itself 0666, re-applied whenever it is bound again: other users can then reach it,
and the peer uid check is the gate.

This module owns the socket, the connections and their fast path: a pure parser that
recognises a plain GET of ``/v1/token`` or ``/healthz`` (:func:`parse_plain_get`) and
an answer that needs no waiting (:meth:`SocketServer.fast_answer`); :mod:`tokend.api`
does the full HTTP handling on aiohttp for everything else and is imported on first
use. What either answers comes from :mod:`tokend.endpoints`.

Nothing this module logs or returns outside ``/v1/token`` carries a token value.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import importlib
import json
import logging
import os
import re
import socket
import stat
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend import clock
from tokend.endpoints import (
    IDLE_TIMEOUT,
    MAX_HEADERS,
    PATHS,
    READ_SIZE,
    Answer,
    BadRequest,
    Endpoints,
    TokenQuery,
)
from tokend.errors import ConfigError
from tokend.paths import SUN_PATH_MAX, ensure_shared_dir, is_within

if TYPE_CHECKING:
    from tokend.api import Api

__all__ = ["PlainGet", "SocketServer", "parse_plain_get", "peer_uid", "refuse_if_served"]

log = logging.getLogger(__name__)

#: Listen backlog: a burst of clients connecting at once (every process of a parallel
#: build starting together) must queue, not fail with EAGAIN. asyncio clients cannot
#: wait for room as :mod:`tokend.client` does: their ``sock_connect`` takes EAGAIN from
#: a full queue for "in progress" and hands back a socket that never connected. The
#: kernel caps it at net.core.somaxconn (4096 by default since Linux 5.4).
BACKLOG = 4096
#: The kernel's buffer for answers a client has not read yet (SO_SNDBUF; Linux doubles
#: it for its bookkeeping). Its default, ~208 KiB, let a client that never reads make
#: us render some 400 answers before anything pushed back.
SEND_BUFFER = 16 * 1024
#: Answers queued for a client beyond what its socket buffer took; reading from it
#: stops above this (asyncio's default is 64 KiB) and resumes below a quarter of it.
WRITE_BUFFER = 4 * 1024
#: How long requests in progress (``wait=N``) may take to finish when the daemon stops.
SHUTDOWN_TIMEOUT = 1.0

#: The requests the fast path answers itself (see :class:`_Connection`): GET of one of
#: its two paths, a query of plain characters, HTTP/1.1, header fields of printable
#: ASCII with token names. Anything else goes to aiohttp.
_FAST_HEAD = re.compile(
    rb"GET (/v1/token|/healthz)(?:\?([A-Za-z0-9_.=&-]*))? HTTP/1\.1"
    rb"((?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e]*)*)"
)
#: Longest request head the fast path looks at (well under MAX_LINE and MAX_FIELD).
_FAST_HEAD_MAX = 2048
#: Distinct request heads whose meaning the fast path keeps (at most 2 KiB each).
HEADS_KEPT = 64
#: Header fields that mean more than a plain GET: left to aiohttp.
_NOT_FAST_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})


@dataclass(frozen=True, slots=True)
class PlainGet:
    """A request the fast path may answer: a GET of ``path`` with ``params`` (each a
    parameter the path knows, given once), and whether the client asked to close."""

    path: str
    params: dict[str, str]
    close: bool


def parse_plain_get(head: bytes) -> PlainGet | None:
    """The request in ``head`` (its bytes up to, without, the blank line) when it is a
    plain ``GET /v1/token`` or ``GET /healthz``, else None (aiohttp takes it).

    Only a strict subset of HTTP/1.1 qualifies, so that whatever qualifies means the
    same to aiohttp's parser (a test checks that with hypothesis): HTTP/1.1, one ``Host``
    field, header fields of token names and printable values, none repeated, ``Connection`` only
    ``close`` or ``keep-alive``, nothing that announces a body or an upgrade, a query
    of plain characters without percent-escapes, naming each of the path's own
    parameters at most once.
    """
    match = _FAST_HEAD.fullmatch(head)
    if match is None:
        return None
    path, query, fields = match.groups()
    close = host = False
    lines = fields.split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1:
        return None
    seen: set[bytes] = set()
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in seen:
            # A repeated field is left to aiohttp, which refuses a second Host,
            # Content-Type, User-Agent, ... (hypothesis found them one by one).
            return None
        seen.add(name)
        if name == b"host":
            host = True  # HTTP/1.1 requires one; aiohttp answers 400 without
        elif name == b"connection":
            options = {v.strip().lower() for v in value.split(b",")} - {b""}
            if not options <= {b"close", b"keep-alive"}:
                return None
            close = b"close" in options
        elif name in _NOT_FAST_FIELDS:
            return None
    if not host:
        return None
    known = PATHS[path.decode()]
    params: dict[str, str] = {}
    for pair in query.split(b"&") if query else ():
        key, _, value = pair.decode().partition("=")
        if key not in known or key in params:
            return None
        params[key] = value
    return PlainGet(path.decode(), params, close)


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a connected AF_UNIX socket, or None
    when the platform cannot tell (then the caller refuses: fail closed)."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        # LOCAL_PEERCRED (SOL_LOCAL=0, option 1) fills a struct xucred:
        # u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16].
        sol_local = 0
        local_peercred = getattr(socket, "LOCAL_PEERCRED", 1)
        creds = sock.getsockopt(sol_local, local_peercred, 76)
        _version, uid = struct.unpack_from("2I", creds)
        return int(uid)
    return None


def refuse_if_served(path: Path) -> bool:
    """Refuse to start when another tokend serves ``path``.

    The daemon calls this before it touches any file, so a second ``tokend run``
    changes nothing.

    Returns:
        True when a stale socket file (nothing listens: a run that did not shut down
        cleanly) is there, False when the path is free or cannot be looked at yet (the
        runtime dir checks that follow report that with the fix).

    Raises:
        ConfigError: someone listens on ``path``, or it is not a socket.
    """
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(
            f"socket.path: {path} exists and is not a socket; move it away "
            "or choose another socket.path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError as err:
        raise ConfigError(f"socket.path: {path}: cannot probe: {err.strerror}") from None
    finally:
        probe.close()
    raise ConfigError(
        f"socket.path: {path}: another tokend is already serving it; stop that one "
        "first (`systemctl --user stop tokend`) or set a different runtime_dir / socket.path"
    )


def _ensure_shared_dir(path: Path) -> None:
    """The directory of a shared socket: created 0711 (others may reach the socket in
    it, not list it) or checked, ancestors included (:func:`tokend.paths.ensure_shared_dir`);
    a warning when the allowed users could not reach the socket in it."""
    ensure_shared_dir(path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o011:
        log.warning(
            "socket.path: %s has mode %04o: the users in socket.allow_uids cannot reach "
            "the socket in it; fix: chmod 711 %s",
            path,
            mode,
            path,
        )


class _Connection(asyncio.BufferedProtocol):
    """One client connection.

    ``connection_made`` checks the peer uid before a byte is read; a refused peer gets
    a short 403 saying why, then the close, and nothing of what it sent is read. After
    that the connection is in one of two modes:

    * fast (the start): complete request heads that :meth:`SocketServer.fast_answer`
      recognises (a plain ``GET /v1/token`` or ``/healthz`` that can be answered at
      once) are answered here, from a response rendered once per token and second.
      That is nearly every request a client makes, at a fraction of a general HTTP
      server's cost per request.
    * aiohttp: on the first request the fast path declines (anything else, anything
      malformed, a head split across reads, a token that must be waited for), the
      connection and every byte not yet answered go to aiohttp's protocol for good.
      Responses keep their order: fast answers are written before the handover.

    What a client that sends and does not read can make us hold is bounded in both
    modes: reads are at most READ_SIZE bytes (into one buffer shared by every
    connection: the loop runs one read at a time), answers wait in a transport buffer
    of WRITE_BUFFER bytes, and once that is full reading stops (aiohttp's protocol is
    handed a transport through which its own read pauses are combined with this one,
    see :class:`_ApiTransport`), so the rest waits in the kernel and the client's
    ``send`` blocks. Answers left unsent for IDLE_TIMEOUT (the client stopped reading;
    or the connection closed with answers still queued) get the connection aborted.
    """

    __slots__ = (
        "_api_reads",
        "_carry",
        "_inner",
        "_last",
        "_paused",
        "_server",
        "_stash",
        "_stuck",
        "_timer",
        "_transport",
        "_waiting",
    )

    def __init__(self, server: SocketServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stuck: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._paused = False  # the transport's buffer is full: reading stops
        self._waiting = False  # for aiohttp to load
        self._api_reads = True  # aiohttp's own wish (it pauses while its queue is full)
        self._stash = b""  # received, not answered yet (reading stopped meanwhile)
        self._carry = b""  # a head the last read cut short (see buffer_updated)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        refusal = self._server.refusal(sock)
        if refusal is not None:
            # The answer fits the socket's empty send buffer, so it leaves at once and
            # the close follows; the peer's request is never read (the close with it
            # unread makes the peer's recv after the answer fail with ECONNRESET).
            transport.write(refusal)
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        transport.set_write_buffer_limits(WRITE_BUFFER)
        self._transport = transport
        self._server.connections.add(self)
        self._last = asyncio.get_running_loop().time()
        self._timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._idle_check)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        # Copied out at once: the buffer is the next connection's as soon as we return.
        data = self._server.read_buffer[:nbytes].tobytes()
        if self._carry:
            data, self._carry = self._carry + data, b""
        if nbytes == READ_SIZE and self._inner is None:
            # The read filled the buffer, so its last head is probably cut short with
            # the rest still in the kernel: keep that for the next read rather than
            # hand the connection to aiohttp for a split the client did not make.
            end = data.rfind(b"\r\n\r\n") + 4
            if end >= 4 and len(data) - end < _FAST_HEAD_MAX:
                data, self._carry = data[:end], data[end:]
        self._received(data)

    def _received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        if self._waiting:
            self._stash += data
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        start = 0
        while start < len(data):
            if self._paused:
                # The client is not reading its answers: keep the rest of this read
                # until it does (reading from it has stopped, see pause_writing).
                self._stash = data[start:]
                return
            end = data.find(b"\r\n\r\n", start, start + _FAST_HEAD_MAX)
            if end < 0:
                break
            answer = self._server.fast_answer(data[start:end])
            if answer is None:
                break
            response, close = answer
            transport.write(response)
            if close:
                self.close_when_sent()
                return
            start = end + 4
        self._last = asyncio.get_running_loop().time()
        if start < len(data):
            self._hand_over(data[start:] if start else data)

    def _hand_over(self, pending: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()  # aiohttp keeps its own keep-alive and idle timers
            self._timer = None
        self._stash = pending
        if self._server.api is None:
            # aiohttp is loading (in a thread, so the loop keeps answering others).
            assert self._transport is not None
            self._waiting = True
            self._transport.pause_reading()
            self._server.when_api_loaded(self._attach)
        else:
            self._attach()

    def _attach(self) -> None:
        """Give the connection and the bytes not yet answered to aiohttp."""
        self._waiting = False
        transport, api = self._transport, self._server.api
        if transport is None or transport.is_closing():
            return  # the client left (or the daemon stops) while aiohttp loaded
        if api is None:
            transport.abort()  # aiohttp failed to load; logged once by the server
            return
        pending, self._stash = self._stash, b""
        self._inner = api.web()
        self._inner.connection_made(_ApiTransport(self, transport))
        if self._paused:
            self._inner.pause_writing()  # aiohttp waits for the drain itself
        self._sync_reading()
        if pending:
            self._inner.data_received(pending)

    def api_reads(self, wanted: bool) -> None:
        """aiohttp pauses (False) or resumes (True) reading."""
        self._api_reads = wanted
        self._sync_reading()

    def _sync_reading(self) -> None:
        """In aiohttp mode: read while aiohttp wants to and the answers are leaving."""
        if self._transport is None:
            return
        if self._api_reads and not self._paused:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()

    def _idle_check(self) -> None:
        """Close a fast-mode connection that has been idle for IDLE_TIMEOUT; the timer
        is re-armed for the rest of the time rather than reset per request."""
        self._timer = None
        if self._inner is not None or self._transport is None:
            return
        loop = asyncio.get_running_loop()
        left = self._last + IDLE_TIMEOUT - loop.time()
        if left > 0:
            self._timer = loop.call_later(left, self._idle_check)
        elif self._transport.get_write_buffer_size():
            self._transport.abort()  # answers unsent since its last request, at least
        else:
            self._transport.close()

    def close(self) -> None:
        """Close a fast-mode connection (daemon shutdown); aiohttp closes its own."""
        if self._inner is None and self._transport is not None:
            self._transport.close()

    def close_when_sent(self) -> None:
        """Close once what was answered is sent, or abort if it stays unsent for
        IDLE_TIMEOUT (``transport.close()`` alone would wait for it forever)."""
        if self._transport is not None:
            self._transport.close()
            self._if_unsent_abort()

    def _if_unsent_abort(self) -> None:
        if self._transport is not None and self._transport.get_write_buffer_size():
            self._arm_stuck()

    def _arm_stuck(self) -> None:
        if self._stuck is None:
            self._stuck = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self._stuck = None
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool | None:
        # Unless aiohttp keeps it open, the transport closes once the answers are sent.
        keep_open = self._inner.eof_received() if self._inner is not None else None
        if not keep_open:
            self._if_unsent_abort()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._stuck):
            if timer is not None:
                timer.cancel()
        self._timer = self._stuck = None
        self._server.connections.discard(self)
        self._transport = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        # A client that sends requests without reading the answers: stop reading (and
        # answering) until it catches up, so answers cannot pile up in memory; and
        # give up on it if it does not catch up within IDLE_TIMEOUT.
        self._paused = True
        self._arm_stuck()
        if self._transport is not None:
            self._transport.pause_reading()
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self._stuck is not None:
            self._stuck.cancel()
            self._stuck = None
        transport = self._transport
        if transport is None:
            return
        if transport.is_closing():
            self._if_unsent_abort()  # a new deadline for the rest
        if self._inner is not None:
            self._inner.resume_writing()
            self._sync_reading()
            return
        if self._waiting:
            return  # reading resumes when aiohttp takes over
        transport.resume_reading()
        stash, self._stash = self._stash, b""
        if stash:
            self._received(stash)


class _ApiTransport(asyncio.Transport):
    """The transport aiohttp's protocol is handed: the connection's own, except that
    aiohttp's read pauses and its closes go through :class:`_Connection`. Reading then
    stops while answers back up, whatever aiohttp's own queue of parsed requests
    holds (aiohttp bounds that at 32 only since its 3.14 series, aio-libs/aiohttp#12830;
    the older releases pyproject.toml allows do not bound it at all), and a close with
    answers still queued gets the same IDLE_TIMEOUT deadline as on the fast path."""

    __slots__ = ("_conn", "_real")

    def __init__(self, conn: _Connection, real: asyncio.Transport) -> None:
        super().__init__()
        self._conn = conn
        self._real = real

    def pause_reading(self) -> None:
        self._conn.api_reads(False)

    def resume_reading(self) -> None:
        self._conn.api_reads(True)

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def close(self) -> None:
        self._conn.close_when_sent()

    def abort(self) -> None:
        self._real.abort()

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def write(self, data: Any) -> None:
        self._real.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._real.writelines(list_of_data)

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def write_eof(self) -> None:
        self._real.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)


_NO_STORE = b"Cache-Control: no-store\r\n"
#: The metrics key of a fast /v1/token answer.
_TOKEN_OK = ("/v1/token", "200")


def _response(status: bytes, body: bytes, date: bytes, *, close: bool, extra: bytes = b"") -> bytes:
    """A whole JSON response as the fast path sends it (``extra``: more header lines)."""
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\nDate: %s\r\n%s\r\n%s"
        % (
            status,
            extra,
            len(body),
            date,
            b"Connection: close\r\n" if close else b"",
            body,
        )
    )


class SocketServer:
    """The daemon's HTTP API on a Unix socket.

    Args:
        endpoints: what the answers are; its refreshers are looked up per request, so
            profiles added or replaced by a reload are served at once.
        path: where to create the socket.
        allow_uids: uids allowed besides our own and root.
    """

    def __init__(self, endpoints: Endpoints, path: Path, allow_uids: tuple[int, ...] = ()) -> None:
        self.endpoints = endpoints
        self.path = path
        self.allowed_uids = frozenset({os.getuid(), 0, *allow_uids})
        # Shared only where others can reach it: the runtime dir is 0700 whatever we do.
        runtime = endpoints.served.runtime_dir
        self.shared = bool(allow_uids) and not is_within(path, runtime)
        if allow_uids and not self.shared:
            log.warning(
                "socket.allow_uids is set but the socket %s is inside the runtime dir "
                "(mode 0700), where other users cannot reach it; set socket.path to an "
                "absolute path outside it, e.g. /run/tokend/tokend.sock",
                path,
            )
        #: Open client connections (for shutdown).
        self.connections: set[_Connection] = set()
        self._listener: asyncio.Server | None = None
        #: The aiohttp side, once loaded (see when_api_loaded).
        self.api: Api | None = None
        self._api_loading: asyncio.Task[None] | None = None
        self._api_waiters: list[Callable[[], None]] = []
        self._inode: tuple[int, int] | None = None
        self._refused_logged: set[int | None] = set()
        #: Every connection reads into this (see _Connection.get_buffer).
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self._fast: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._heads: dict[bytes, tuple[PlainGet | None, TokenQuery | None]] = {}
        self._date = (0, b"")
        self._requests = endpoints.metrics.requests

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket and serve.

        Raises:
            ConfigError: another tokend is listening on the path, or the path is taken
                by something that is not a socket.
        """
        self._listener = await self._listen()
        log.info("listening on %s", self.path)

    async def stop(self) -> None:
        """Stop serving and remove the socket file (if it is still the one we made).
        Requests in progress get SHUTDOWN_TIMEOUT to finish."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._remove_socket_file()
        listener.close()
        for conn in list(self.connections):
            conn.close()
        if self._api_loading is not None:
            self._api_loading.cancel()
        if self.api is not None:
            await self.api.shutdown(SHUTDOWN_TIMEOUT)

    async def restore(self) -> None:
        """Bind again if the socket file vanished (someone deleted it, or the runtime
        dir, or the directory of a socket outside it): the old listener serves an
        unreachable inode, so replace it. Connections already open carry on."""
        if self._listener is None or os.path.lexists(self.path):
            return
        try:
            listener = await self._listen()
        except OSError as err:  # UnsafePathError too; the next change of the dir retries
            log.error("socket %s was deleted and cannot be made again: %s", self.path, err)
            return
        self._listener.close()
        self._listener = listener
        log.info("socket %s was deleted; listening again", self.path)

    async def _listen(self) -> asyncio.Server:
        sock = self._bind()
        try:
            # backlog= too: asyncio calls listen() again when it starts serving, with
            # its own default of 100 unless told otherwise.
            return await asyncio.get_running_loop().create_unix_server(
                lambda: _Connection(self), sock=sock, backlog=BACKLOG
            )
        except BaseException:
            sock.close()
            raise

    def _bind(self) -> socket.socket:
        if self.shared:
            _ensure_shared_dir(self.path.parent)
        self._clear_stale()
        # Bound and listening under a private name first, then linked into place: a
        # client (or a second tokend's probe) that finds the path always finds a socket
        # that accepts, never one that is bound but not listening yet (ECONNREFUSED).
        # link(), unlike rename(), fails if another tokend took the path meanwhile.
        staged = self.path.with_name(f".{os.getpid()}.{self.path.name}")
        if len(os.fsencode(staged)) > SUN_PATH_MAX:
            staged = self.path  # no room for the private name: bind in place
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # The umask gives the socket its mode from its creation: 0600 with no window
            # where it is wider, or a shared one's 0666 with no window where an allowed
            # user would get EACCES. The chmod is for a caller that changed the umask
            # in between.
            mode = 0o666 if self.shared else 0o600
            if staged != self.path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged)  # left by a run of ours killed right here
            old = os.umask(0o777 & ~mode)
            try:
                sock.bind(os.fspath(staged))
            finally:
                os.umask(old)
            try:
                os.chmod(staged, mode)
                st = os.lstat(staged)
                sock.listen(BACKLOG)
                if staged != self.path:
                    try:
                        os.link(staged, self.path)
                    except FileExistsError:
                        refuse_if_served(self.path)  # another tokend's: say so
                        raise
            finally:
                if staged != self.path:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(staged)
            self._inode = (st.st_dev, st.st_ino)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _clear_stale(self) -> None:
        """Remove a socket file left by a crashed run; refuse if someone listens on it."""
        if not refuse_if_served(self.path):
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        log.info("removed stale socket %s left by an earlier run", self.path)

    def _remove_socket_file(self) -> None:
        # Only ours: a newer tokend may have replaced a socket we still think we own.
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    # -- access control ---------------------------------------------------------------

    def refusal(self, sock: Any) -> bytes | None:
        """None when the peer of a new connection may use the API (our uid, root or
        ``socket.allow_uids``; unknown means no), else the whole response it gets: a
        403 that says why and what to do."""
        try:
            uid = peer_uid(sock) if sock is not None else None
        except OSError:
            uid = None
        if uid is not None and uid in self.allowed_uids:
            return None
        # Once per uid: a refused client retrying in a loop must not flood the journal.
        if uid not in self._refused_logged:
            self._refused_logged.add(uid)
            log.warning(
                "refused a connection on %s from uid %s (allowed: %s; add it to "
                "socket.allow_uids to let it in)",
                self.path,
                "unknown" if uid is None else uid,
                ", ".join(str(u) for u in sorted(self.allowed_uids)),
            )
        if uid is None:
            detail = "tokend cannot tell which uid is connecting, so it refuses the connection"
        else:
            detail = (
                f"uid {uid} is not allowed on this socket; its owner (uid {os.getuid()}) "
                "can add it to socket.allow_uids"
            )
        body = json.dumps({"error": "forbidden", "detail": detail}).encode()
        return _response(b"403 Forbidden", body, self._http_date(), close=True)

    # -- plumbing ---------------------------------------------------------------------

    def when_api_loaded(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once :attr:`api` is loaded (or failed to load: then it
        stays None). The first call starts loading :mod:`tokend.api`, and with it
        aiohttp, in a thread: the import takes a noticeable while, which the event loop spends
        answering other clients instead of waiting."""
        self._api_waiters.append(callback)
        if self._api_loading is None:
            self._api_loading = asyncio.get_running_loop().create_task(self._load_api())

    async def _load_api(self) -> None:
        try:
            await asyncio.to_thread(importlib.import_module, "tokend.api")
            from tokend.api import Api

            self.api = Api(self.endpoints)
            gc.freeze()  # aiohttp's objects too: see Daemon._settle_heap
        except Exception as exc:
            self._api_loading = None  # the next request tries again
            log.error(
                "cannot load the HTTP API (%s: %s); reinstall tokend", type(exc).__name__, exc
            )
        waiters, self._api_waiters = self._api_waiters, []
        for callback in waiters:
            callback()

    def fast_answer(self, head: bytes) -> tuple[bytes, bool] | None:
        """The whole response to a request head (without its final blank line), and
        whether to close after it, when it is a plain GET (:func:`parse_plain_get`)
        that can be answered at once (:meth:`Endpoints.at_once`: a token, or why there
        is none); None leaves the request to aiohttp, which answers everything else,
        bad queries and every wait included."""
        known = self._heads.get(head)
        if known is None:
            known = self._read_head(head)
        req, query = known
        if req is None:
            return None
        if query is None:  # /healthz
            health = self.endpoints.health()
            self.endpoints.count(req.path, health.status)
            return self._render(health, req.close), req.close
        body = self.endpoints.ready(query)
        if body is None:
            answer = self.endpoints.at_once(query)
            if answer is None:
                return None  # a wait or a refresh: aiohttp's side awaits it
            self.endpoints.count(req.path, answer.status)
            return self._render(answer, req.close), req.close
        self._requests[_TOKEN_OK] += 1
        date = self._http_date()
        if req.close:
            return _response(b"200 OK", body, date, close=True, extra=_NO_STORE), True
        # The bytes of the whole response, once per token body and second.
        cached = self._fast.get(query.profile)
        if cached is None or cached[0] is not body or cached[1] != date:
            response = _response(b"200 OK", body, date, close=False, extra=_NO_STORE)
            cached = (body, date, response)
            self._fast[query.profile] = cached
        return cached[2], False

    def _read_head(self, head: bytes) -> tuple[PlainGet | None, TokenQuery | None]:
        """What a head means to the fast path: the request (None: aiohttp's) and, for
        ``/v1/token``, its query. Clients send the same bytes request after request, so
        the meaning is kept, for up to HEADS_KEPT distinct heads (then forgotten
        all at once: a client sending ever-new heads only makes itself slower)."""
        req = parse_plain_get(head)
        query = None
        if req is not None and req.path == "/v1/token":
            try:
                query = TokenQuery.parse(req.params.get)
            except BadRequest:
                req = None  # aiohttp's side answers the 400
        if len(self._heads) >= HEADS_KEPT:
            self._heads.clear()
        self._heads[head] = (req, query)
        return req, query

    def _render(self, answer: Answer, close: bool) -> bytes:
        status = b"%d %s" % (answer.status, HTTPStatus(answer.status).phrase.encode())
        extra = _NO_STORE if answer.no_store else b""
        return _response(status, answer.body, self._http_date(), close=close, extra=extra)

    def _http_date(self) -> bytes:
        second = int(clock.now())
        if self._date[0] != second:
            self._date = (second, email.utils.formatdate(second, usegmt=True).encode())
        return self._date[1]
