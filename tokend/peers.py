"""Who is at the other end of a loopback TCP connection: SO_PEERCRED for TCP.

A Unix socket tells its server the peer's uid (:func:`tokend.server.peer_uid`); a TCP
socket does not, even when both ends are on this host. :func:`tcp_peer_uid` finds the
*peer's own socket* in the kernel's table (the one whose local end is the peer's address
and port and whose remote end is ours) and reads the uid the kernel recorded when that
socket was created. A local HTTP proxy calls it right after ``accept`` and refuses every
connection whose answer is not an allowed uid, or is None: it fails closed.

Linux, two ways of asking, the first that answers wins:

- sock_diag (:func:`_by_sock_diag`): one ``SOCK_DIAG_BY_FAMILY`` request on a
  ``NETLINK_SOCK_DIAG`` socket, an exact lookup of that one socket by its 4-tuple (not a
  dump). The kernel answers inside the ``sendto``, so it costs a few system calls
  whatever the number of sockets on the host; the netlink socket still has a 1 s timeout.
  Needs no privilege, but a sandbox may refuse the socket: systemd's
  ``RestrictAddressFamilies=`` without ``AF_NETLINK``, seccomp, a container without it.
- ``/proc/net/tcp`` and ``/proc/net/tcp6`` (:func:`_by_proc`) when netlink cannot answer:
  a scan of every TCP socket in the network namespace, so it costs in proportion to
  their number; bounded to :data:`PROC_LIMIT` bytes (more: no answer).

Only a live socket counts. A peer that has closed leaves a TIME_WAIT (or orphaned
FIN_WAIT2) entry that both interfaces show with uid 0 and inode 0, which is *not* root
connecting: an entry without an inode, or in a state no connected client can be in
(SYN_SENT: another process that took the port since), answers None. Nothing is guessed:
no entry, two entries, an entry for another 4-tuple, a peer that is not a loopback
address, a socket that is no longer connected all answer None.

The uid is the one the kernel stores in the socket at ``socket()`` (the creator's fsuid);
like SO_PEERCRED's, it stays with the socket when the process changes uid or passes the
descriptor on. Inside a user namespace (systemd's ``PrivateUsers=yes``) a uid that is not
mapped comes back as the overflow uid, 65534, again as with SO_PEERCRED: never allow it.
The lookup runs in the caller's network namespace, which must be the connection's.

Other platforms answer None. macOS has no cheap per-connection owner lookup for TCP
(``proc_pidfdinfo`` over every process is neither cheap nor race-free), so there the
proxy relies on its key and its loopback-only bind instead.

:class:`PeerGuard` is that check in front of a loopback HTTP listener, shared by the local
proxy and the metadata endpoint: one asyncio protocol per connection that asks once,
before a byte is read, and either hands the connection to the server's own protocol or
answers 403 and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from tokend.errors import ConfigError
from tokend.threads import in_thread

__all__ = [
    "NETLINK_TIMEOUT",
    "PROC_LIMIT",
    "PeerGuard",
    "forbidden",
    "listen_loopback",
    "loopback_hosts",
    "quick_peer_uid",
    "stop_serving",
    "tcp_peer_uid",
]

log = logging.getLogger(__name__)

#: Largest /proc/net/tcp{,6} read, in bytes (~150 a socket): past it, no answer.
PROC_LIMIT = 32 << 20

#: How long a netlink request may take (the kernel answers inside the send).
NETLINK_TIMEOUT = 1.0

# <linux/netlink.h>, <linux/sock_diag.h>, <linux/inet_diag.h>
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ_HEAD = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
_SOCKID_PORTS_ADDRS = struct.Struct("!HH16s16s")  # sport, dport (be16), src, dst
_SOCKID_REST = struct.Struct("=III")  # if, cookie[2]
_MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_SOCKID_SIZE = _SOCKID_PORTS_ADDRS.size + _SOCKID_REST.size  # 48
_MSG_SIZE = _MSG_HEAD.size + _SOCKID_SIZE + _MSG_TAIL.size  # 72

#: Datagrams read for one answer before giving up (others may write to our port).
_MAX_DATAGRAMS = 8

# <net/tcp_states.h>: the states a connected client's socket can be in while the
# connection we accepted exists. Not SYN_SENT/SYN_RECV (not connected), TIME_WAIT or
# CLOSE (gone), LISTEN, NEW_SYN_RECV.
_CONNECTED_STATES = frozenset(
    {
        1,  # ESTABLISHED
        4,  # FIN_WAIT1
        5,  # FIN_WAIT2
        8,  # CLOSE_WAIT
        9,  # LAST_ACK
        11,  # CLOSING
    }
)

_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_V6_LOOPBACK = b"\0" * 15 + b"\x01"


class _Conn(NamedTuple):
    """One accepted connection, as the peer's socket sees it.

    ``family`` is the family to look the peer up in: AF_INET for an IPv4 peer, also one
    that reached an AF_INET6 socket as ``::ffff:a.b.c.d`` (the kernel keeps both kinds
    in one table); the addresses are 4 or 16 bytes in network order.
    """

    family: int
    peer: bytes
    peer_port: int
    local: bytes
    local_port: int


def tcp_peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the other end of the accepted, connected loopback TCP socket `sock`
    (AF_INET or AF_INET6), or None when it cannot be told (the caller then refuses: fail
    closed).

    A blocking call. With sock_diag it takes tens of microseconds whatever the number of
    sockets, and waits on nothing but the kernel (:data:`NETLINK_TIMEOUT` at most); the
    /proc fallback takes milliseconds, more with every TCP socket in the namespace
    (TIME_WAIT ones included): off the event loop (:mod:`tokend.threads`) if that
    matters. Never raises for a socket that is closed, not connected, not TCP or not
    loopback: those answer None.
    """
    if not sys.platform.startswith("linux"):
        return None
    conn = _conn(sock)
    if conn is None:
        return None
    try:
        return _by_sock_diag(conn)
    except OSError:
        pass  # netlink refused or could not tell: ask /proc
    try:
        return _by_proc(conn)
    except OSError:
        return None


#: Whether sock_diag answered before; once the sandbox refused netlink, it is not asked
#: again (every later connection would pay for the refusal).
_netlink_refused = False
_REFUSED = frozenset({errno.EPERM, errno.EACCES, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})


def quick_peer_uid(sock: socket.socket) -> tuple[bool, int | None]:
    """``(True, uid or None)`` when the answer came quickly (sock_diag, or a socket that
    needs no lookup); ``(False, None)`` when only the slow /proc scan can tell: an event
    loop then calls :func:`tcp_peer_uid` in a thread. Never raises."""
    global _netlink_refused
    if not sys.platform.startswith("linux"):
        return True, None
    conn = _conn(sock)
    if conn is None:
        return True, None
    if not _netlink_refused:
        try:
            return True, _by_sock_diag(conn)
        except OSError as err:
            _netlink_refused = err.errno in _REFUSED
    return False, None


def netlink_refused() -> bool:
    """Whether this process found sock_diag refused (a sandbox without AF_NETLINK)."""
    return _netlink_refused


def _conn(sock: socket.socket) -> _Conn | None:
    """``sock``'s connection from the peer's side, or None when it is not a connected
    TCP socket with a loopback peer."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    if sock.type != socket.SOCK_STREAM:
        return None
    try:
        peer_host, peer_port = sock.getpeername()[:2]
        local_host, local_port = sock.getsockname()[:2]
    except OSError:  # not connected (any more: a reset), or closed
        return None
    peer = _packed(peer_host)
    local = _packed(local_host)
    if peer is None or local is None or len(peer) != len(local) or not _loopback(peer):
        return None
    family = socket.AF_INET if len(peer) == 4 else socket.AF_INET6
    return _Conn(family, peer, int(peer_port), local, int(local_port))


def _packed(host: str) -> bytes | None:
    """``host`` as getpeername() gives it, in network order: 4 bytes for IPv4, also for
    ``::ffff:a.b.c.d``; 16 for IPv6; None for anything else."""
    try:
        if ":" not in host:
            return socket.inet_pton(socket.AF_INET, host)
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return None
    return packed[12:] if packed[:12] == _V4_MAPPED else packed


def _loopback(address: bytes) -> bool:
    """127.0.0.0/8 or ::1."""
    if len(address) == 4:
        return address[0] == 127
    return address == _V6_LOOPBACK


def _normal(family: int, address: bytes) -> bytes:
    """An address from a reply, 4 bytes for IPv4 (also when the socket is AF_INET6 and
    the address ``::ffff:a.b.c.d``), 16 for IPv6; ``b""`` for an unknown family."""
    if family == socket.AF_INET:
        return address[:4]
    if family == socket.AF_INET6:
        return address[12:16] if address[:12] == _V4_MAPPED else address[:16]
    return b""


# -- sock_diag --------------------------------------------------------------------------


def _sock_diag_request(conn: _Conn, seq: int) -> bytes:
    """The netlink message asking for the one socket whose local end is the peer's."""
    sockid = _SOCKID_PORTS_ADDRS.pack(
        conn.peer_port, conn.local_port, conn.peer, conn.local
    ) + _SOCKID_REST.pack(0, _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE)
    body = _REQ_HEAD.pack(conn.family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, seq, 0
    )
    return header + body


def _by_sock_diag(conn: _Conn) -> int | None:
    """The peer's uid by one exact sock_diag lookup.

    Returns:
        The uid; None when the kernel's entry does not count (not a live connected
        socket, or not the 4-tuple asked for).

    Raises:
        OSError: no answer: netlink is not available (EAFNOSUPPORT, EPROTONOSUPPORT,
            EPERM), the kernel returned an error (ENOENT: no such socket, or no TCP
            handler for sock_diag, which the caller cannot tell apart, so it asks /proc),
            or nothing came within :data:`NETLINK_TIMEOUT`.
    """
    seq = int.from_bytes(os.urandom(4), "little") or 1
    nl = socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG
    )
    try:
        nl.settimeout(NETLINK_TIMEOUT)
        deadline = time.monotonic() + NETLINK_TIMEOUT
        nl.sendto(_sock_diag_request(conn, seq), (0, 0))
        for _ in range(_MAX_DATAGRAMS):
            nl.settimeout(max(deadline - time.monotonic(), 0.001))
            data, (sender, _groups) = nl.recvfrom(65536)
            if sender != 0:  # another process writing to our port, not the kernel
                continue
            answer = _sock_diag_answer(data, seq, conn)
            if not isinstance(answer, _NotOurs):
                return answer
        raise OSError(errno.EPROTO, "no sock_diag answer to our request")
    finally:
        nl.close()


class _NotOurs:
    """A datagram without the answer to our request (an earlier sequence number)."""


_NOT_OURS = _NotOurs()


def _sock_diag_answer(data: bytes, seq: int, conn: _Conn) -> int | _NotOurs | None:
    """The uid in a kernel datagram answering request ``seq``; None when the entry does
    not count; :data:`_NOT_OURS` when the datagram holds no answer to ``seq``.

    Raises:
        OSError: the kernel answered with an error (its errno).
    """
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return None  # malformed: fail closed
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3
        if msg_seq != seq:
            continue
        if kind == _NLMSG_ERROR:
            if len(body) < 4:
                return None
            (error,) = struct.unpack_from("=i", body)
            if error == 0:  # an acknowledgement (not asked for) is no answer
                continue
            raise OSError(-error, os.strerror(-error))
        if kind == _NLMSG_DONE:
            return None
        if kind != _SOCK_DIAG_BY_FAMILY or len(body) < _MSG_SIZE:
            return None
        return _diag_msg_uid(body, conn)
    return _NOT_OURS


def _diag_msg_uid(body: bytes, conn: _Conn) -> int | None:
    """The uid in one ``inet_diag_msg`` when it is the live socket we asked about."""
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(body)
    sport, dport, src, dst = _SOCKID_PORTS_ADDRS.unpack_from(body, _MSG_HEAD.size)
    _expires, _rqueue, _wqueue, uid, inode = _MSG_TAIL.unpack_from(
        body, _MSG_HEAD.size + _SOCKID_SIZE
    )
    # The reply's family is the peer socket's own: AF_INET6 for an IPv6 socket that
    # connected to ::ffff:127.0.0.1, with mapped addresses.
    same = (
        sport == conn.peer_port
        and dport == conn.local_port
        and _normal(family, src) == conn.peer
        and _normal(family, dst) == conn.local
    )
    if not same or state not in _CONNECTED_STATES or inode == 0:
        return None
    return int(uid)


# -- /proc/net/tcp ----------------------------------------------------------------------


def _proc_hex(address: bytes) -> str:
    """``address`` as /proc/net/tcp{,6} prints it: each 32-bit word of the network-order
    address read as a host-order integer, ``%08X`` (127.0.0.1 is ``0100007F`` on a
    little-endian machine)."""
    words = struct.unpack(f"={len(address) // 4}I", address)
    return "".join(f"{word:08X}" for word in words)


def _by_proc(conn: _Conn) -> int | None:
    """The peer's uid from the line of ``/proc/net/tcp`` or ``tcp6`` whose local end is
    the peer's and whose remote end is ours.

    An IPv4 peer's socket may be AF_INET (``tcp``) or an AF_INET6 socket that connected
    to ``::ffff:127.0.0.1`` (``tcp6``, mapped addresses): both are looked at.

    Returns:
        The uid; None when no line is the peer's, or the line does not count (no inode,
        a state no connected client is in).

    Raises:
        OSError: a file cannot be read, or is larger than :data:`PROC_LIMIT`.
    """
    wanted = [("/proc/net/tcp6", conn.peer, conn.local)]
    if conn.family == socket.AF_INET:
        wanted = [
            ("/proc/net/tcp", conn.peer, conn.local),
            ("/proc/net/tcp6", _V4_MAPPED + conn.peer, _V4_MAPPED + conn.local),
        ]
    for path, peer, local in wanted:
        local_field = f"{_proc_hex(peer)}:{conn.peer_port:04X}".encode()
        remote_field = f"{_proc_hex(local)}:{conn.local_port:04X}".encode()
        try:
            table = _read_proc(path)
        except FileNotFoundError:
            if path.endswith("6") and conn.family == socket.AF_INET:
                continue  # no IPv6 in this kernel: no mapped sockets either
            raise
        found = _proc_line(table, local_field, remote_field)
        if found is not None:
            state, uid, inode = found
            if state not in _CONNECTED_STATES or inode == 0:
                return None
            return uid
    return None


def _proc_line(table: bytes, local: bytes, remote: bytes) -> tuple[int, int, int] | None:
    """(state, uid, inode) of the line of ``table`` with exactly these local and remote
    fields; None when there is none or more than one."""
    needle = b" " + local + b" " + remote + b" "
    found: list[tuple[int, int, int]] = []
    start = table.find(needle)
    while start >= 0:
        line_start = table.rfind(b"\n", 0, start) + 1
        line_end = table.find(b"\n", start)
        line = table[line_start : line_end if line_end >= 0 else len(table)]
        # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
        # timeout inode ...
        fields = line.split()
        if len(fields) >= 10 and fields[1] == local and fields[2] == remote:
            try:
                found.append((int(fields[3], 16), int(fields[7]), int(fields[9])))
            except ValueError:
                return None
        start = table.find(needle, start + len(needle))
    return found[0] if len(found) == 1 else None


def _read_proc(path: str) -> bytes:
    """The whole of a /proc table, read without blocking, at most :data:`PROC_LIMIT`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        chunks = []
        size = 0
        while size <= PROC_LIMIT:
            chunk = os.read(fd, min(1 << 20, PROC_LIMIT + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > PROC_LIMIT:
            raise OSError(errno.EFBIG, f"{path}: larger than {PROC_LIMIT >> 20} MiB")
        return b"".join(chunks)
    finally:
        os.close(fd)


# -- the guard in front of a loopback listener ------------------------------------------


def listen_loopback(bind: str, port: int, key: str) -> socket.socket:
    """A non-blocking listening TCP socket on ``bind``:``port`` (0: any free port), for
    the listener configured as ``key.listen`` (``proxy``, ``metadata``).

    Raises:
        ConfigError: the address is taken or cannot be bound, in one line naming the key.
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"{key}.listen: cannot listen on {bind}:{port}: {err.strerror}; "
            "another program (or another tokend) may be using it: choose another port"
        ) from None
    return sock


def loopback_hosts(bind: str, port: int, *names: str) -> frozenset[str]:
    """The ``Host`` values a loopback listener accepts (DNS rebinding: a page at
    evil.example resolving to 127.0.0.1 sends its own): the loopback names and the bound
    address, and ``names``, each with the port."""
    bound = f"[{bind}]" if ":" in bind else bind
    return frozenset(f"{n}:{port}" for n in {"127.0.0.1", "localhost", "[::1]", bound, *names})


async def stop_serving(server: asyncio.Server | None, web_server: Any, timeout: float) -> None:
    """Stop a listener :meth:`PeerGuard.serve` started: no new connections, then
    aiohttp's own shutdown of the open ones (``web_server``: its ``web.Server``), each
    step bounded by ``timeout``."""
    if server is not None:
        server.close()
    if web_server is not None:
        web_server.pre_shutdown()
        await web_server.shutdown(timeout)
    if server is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout)


def forbidden(body: bytes, content_type: str) -> bytes:
    """A whole ``403 Forbidden`` response that closes the connection (written before
    the server's own protocol ever sees it)."""
    return (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (content_type.encode(), len(body), body)
    )


class PeerGuard:
    """Who may connect to a loopback TCP listener: on Linux, a connection whose peer uid
    (:func:`tcp_peer_uid`) is not in ``allowed()`` is answered ``refused(uid)`` and
    closed; an unknown uid is refused too (fail closed). Elsewhere nobody is refused:
    there is no such lookup, and the listener's other checks must do.

    Args:
        what: the listener, as log lines name it ("proxy", "metadata").
        setting: the key that lets another uid in ("proxy.allow_uids"), for the log.
        allowed: the uids allowed now (read at every connection: a reload may change it).
        refused: the whole response a refused uid (None: unknown) gets; it may count it.
    """

    def __init__(
        self,
        what: str,
        setting: str,
        allowed: Callable[[], frozenset[int]],
        refused: Callable[[int | None], bytes],
    ) -> None:
        self.what = what
        self.setting = setting
        self.allowed = allowed
        self.refused = refused
        self.checks = sys.platform.startswith("linux")
        self._refused_logged: set[int | None] = set()
        self._slow_logged = False

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        """``inner`` (the server's protocol for one connection) behind the check."""
        return _Guarded(self, inner)

    async def serve(
        self, sock: socket.socket, make_protocol: Callable[[], asyncio.Protocol]
    ) -> asyncio.Server:
        """Serve ``sock`` (from :func:`listen_loopback`): every connection's protocol,
        from ``make_protocol`` (an aiohttp ``web.Server``), behind this check."""

        def protocol() -> asyncio.Protocol:
            return self.protocol(make_protocol())

        return await asyncio.get_running_loop().create_server(protocol, sock=sock)

    def quick_uid(self, sock: socket.socket) -> tuple[bool, int | None]:
        """The peer's uid if it can be had at once (:func:`quick_peer_uid`); ``(True,
        None)`` where no check is made."""
        if not self.checks:
            return True, None
        done, uid = quick_peer_uid(sock)
        if not done and not self._slow_logged:
            self._slow_logged = True
            log.warning(
                "%s: the kernel's sock_diag is not available here (a sandbox without "
                "AF_NETLINK?); each new connection's uid is looked up in /proc/net/tcp "
                "instead, which costs milliseconds",
                self.what,
            )
        return done, uid

    def refusal(self, uid: int | None) -> bytes | None:
        """None when a connection from ``uid`` may go on, else the response it gets."""
        if not self.checks:
            return None
        allowed = self.allowed()
        if uid is not None and uid in allowed:
            return None
        if uid not in self._refused_logged:  # once per uid: a retrying client must not flood
            self._refused_logged.add(uid)
            log.warning(
                "%s refused a connection from uid %s (allowed: %s; %s lets others in)",
                self.what,
                "unknown" if uid is None else uid,
                ", ".join(str(u) for u in sorted(allowed)),
                self.setting,
            )
        return self.refused(uid)


class _Guarded(asyncio.Protocol):
    """In front of the server's protocol for one connection: the peer's uid is checked
    when it connects, before a byte is read (once per connection, not per request). A
    refused peer gets its 403 and the connection is closed."""

    def __init__(self, guard: PeerGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = inner
        self.connected = False  # the inner protocol has the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        done, uid = self.guard.quick_uid(sock)
        if done:
            self._decide(transport, uid)
            return
        # Only the /proc scan can tell (a sandbox without netlink): milliseconds, so in a
        # thread, with the connection's reading paused meanwhile.
        transport.pause_reading()
        lookup = in_thread(lambda: tcp_peer_uid(sock), "tokend-peer")

        def looked_up(fut: asyncio.Future[int | None]) -> None:
            if transport.is_closing():
                return
            transport.resume_reading()
            self._decide(transport, None if fut.cancelled() or fut.exception() else fut.result())

        lookup.add_done_callback(looked_up)

    def _decide(self, transport: asyncio.Transport, uid: int | None) -> None:
        refusal = self.guard.refusal(uid)
        if refusal is not None:
            self.inner = None
            transport.write(refusal)
            transport.close()
            return
        assert self.inner is not None
        self.connected = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.connected and self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.connected and self.inner is not None:
            return self.inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connected and self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.connected and self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.connected and self.inner is not None:
            self.inner.resume_writing()
