"""tokend.peers: the uid at the other end of a loopback TCP connection, on real sockets.

Both strategies are run on their own (sock_diag, /proc/net/tcp{,6}) and through
``tcp_peer_uid``. The other-uid tests need root (a throw-away user, ``setpriv``); the
rest run as anyone. Sockets bind only to 127.0.0.1 (also as ::ffff:127.0.0.1) and ::1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import as_user, wait_for
from tokend import peers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

Strategy = Callable[[peers._Conn], "int | None"]


def _sock_diag_available() -> bool:
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4).close()
    except (OSError, AttributeError):
        return False
    return True


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_SOCK_DIAG = _sock_diag_available()
HAS_IPV6 = _ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback (::1) here")

STRATEGIES = [
    pytest.param(
        peers._by_sock_diag,
        id="sock_diag",
        marks=pytest.mark.skipif(not HAS_SOCK_DIAG, reason="no NETLINK_SOCK_DIAG here"),
    ),
    pytest.param(peers._by_proc, id="proc"),
]


def _listener(family: int, host: str) -> socket.socket:
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        # Dual stack: ::ffff:127.0.0.1 reaches it too (bound to that address only).
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind((host, 0))
    listener.listen(8)
    listener.settimeout(10)
    return listener


@contextlib.contextmanager
def connection(
    listen: tuple[int, str] = (socket.AF_INET, "127.0.0.1"),
    client: tuple[int, str] | None = None,
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(accepted, client) for a connection from this process; ``client`` is the
    client's (family, address to connect to), by default the listener's."""
    family, host = listen
    cfamily, chost = client or listen
    with _listener(family, host) as listener, socket.socket(cfamily) as c:
        c.settimeout(10)
        c.connect((chost, listener.getsockname()[1]))
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getpeername()[1] == c.getsockname()[1]
            yield accepted, c


def lookup(strategy: Strategy, sock: socket.socket) -> int | None:
    conn = peers._conn(sock)
    assert conn is not None, sock
    return strategy(conn)


def answers(sock: socket.socket, strategy: Strategy) -> int | None:
    """What ``strategy`` says, None for "could not tell" (an OSError: sock_diag's ENOENT
    for a socket that is gone)."""
    try:
        return lookup(strategy, sock)
    except OSError:
        return None


# -- this process's own connections -------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_own_ipv4_client_is_our_uid(strategy: Strategy) -> None:
    with connection() as (accepted, _):
        assert lookup(strategy, accepted) == os.getuid()
        assert peers.tcp_peer_uid(accepted) == os.getuid()


@needs_ipv6
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_own_ipv6_client_is_our_uid(strategy: Strategy) -> None:
    with connection((socket.AF_INET6, "::1")) as (accepted, _):
        conn = peers._conn(accepted)
        assert conn is not None and conn.family == socket.AF_INET6
        assert lookup(strategy, accepted) == os.getuid()
        assert peers.tcp_peer_uid(accepted) == os.getuid()


@needs_ipv6
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("listen", "client"),
    [
        # An IPv4 client on a dual-stack socket: the peer is ::ffff:127.0.0.1.
        ((socket.AF_INET6, "::ffff:127.0.0.1"), (socket.AF_INET, "127.0.0.1")),
        # An AF_INET6 client connecting to a mapped address: its socket is listed in
        # tcp6 with mapped addresses, and sock_diag answers with AF_INET6.
        ((socket.AF_INET6, "::ffff:127.0.0.1"), (socket.AF_INET6, "::ffff:127.0.0.1")),
        ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::ffff:127.0.0.1")),
    ],
    ids=["v4-client-dual-stack", "mapped-client-dual-stack", "mapped-client-v4-server"],
)
def test_v4_mapped_peers(
    strategy: Strategy, listen: tuple[int, str], client: tuple[int, str]
) -> None:
    with connection(listen, client) as (accepted, _):
        conn = peers._conn(accepted)
        assert conn is not None
        assert conn.family == socket.AF_INET and conn.peer == b"\x7f\0\0\x01"
        assert lookup(strategy, accepted) == os.getuid()
        assert peers.tcp_peer_uid(accepted) == os.getuid()


def test_falls_back_to_proc_when_netlink_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandbox without AF_NETLINK (systemd RestrictAddressFamilies=, seccomp)."""
    real_socket = socket.socket

    def no_netlink(family: int = -1, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_NETLINK:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *args, **kwargs)

    proc_calls: list[peers._Conn] = []
    real_by_proc = peers._by_proc

    def by_proc(conn: peers._Conn) -> int | None:
        proc_calls.append(conn)
        return real_by_proc(conn)

    with connection() as (accepted, _):
        monkeypatch.setattr(socket, "socket", no_netlink)
        monkeypatch.setattr(peers, "_by_proc", by_proc)
        assert peers.tcp_peer_uid(accepted) == os.getuid()
        assert len(proc_calls) == 1


def test_no_answer_from_either_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(conn: peers._Conn) -> int | None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(peers, "_by_sock_diag", refused)
    monkeypatch.setattr(peers, "_by_proc", refused)
    with connection() as (accepted, _):
        assert peers.tcp_peer_uid(accepted) is None


# -- peers that are gone, and sockets that are not loopback TCP ---------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_closed_peer_is_none_not_root(strategy: Strategy) -> None:
    """A client that has closed leaves an orphaned FIN_WAIT1, or a FIN_WAIT2/TIME_WAIT
    entry that the kernel shows with uid 0, whoever it was (and no inode): that must
    not read as root connecting (the other-uid test below shows the uid 0)."""
    with connection() as (accepted, c):
        conn = peers._conn(accepted)
        assert conn is not None
        c.close()
        assert accepted.recv(1) == b""  # its FIN is here: it is closed, not half-open
        # What is left of it: no inode, and not ESTABLISHED.
        state, _uid, inode = wait_for(lambda: _proc_entry(conn))
        assert inode == 0 and state in (4, 5, 6), (state, inode)
        assert answers(accepted, strategy) is None
        assert peers.tcp_peer_uid(accepted) is None


def _proc_entry(conn: peers._Conn) -> tuple[int, int, int] | None:
    with open("/proc/net/tcp", "rb") as f:
        table = f.read()
    local = f"{peers._proc_hex(conn.peer)}:{conn.peer_port:04X}".encode()
    remote = f"{peers._proc_hex(conn.local)}:{conn.local_port:04X}".encode()
    return peers._proc_line(table, local, remote)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_half_closed_peer_is_still_its_uid(strategy: Strategy) -> None:
    """shutdown(SHUT_WR): the peer is still there (FIN_WAIT2, with its inode)."""
    with connection() as (accepted, c):
        c.shutdown(socket.SHUT_WR)
        assert accepted.recv(1) == b""
        assert lookup(strategy, accepted) == os.getuid()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reset_peer(strategy: Strategy) -> None:
    """A reset leaves no peer socket at all: nothing to look up, nothing answered."""
    with connection() as (accepted, c):
        conn = peers._conn(accepted)
        assert conn is not None
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        with pytest.raises(ConnectionResetError):
            accepted.recv(1)
        assert peers._conn(accepted) is None  # getpeername: not connected
        assert peers.tcp_peer_uid(accepted) is None
        # Asked anyway with the old 4-tuple: no entry.
        if strategy is peers._by_sock_diag:
            with pytest.raises(FileNotFoundError):
                strategy(conn)
        else:
            assert strategy(conn) is None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_4_tuple_nobody_has(strategy: Strategy) -> None:
    with connection() as (accepted, _):
        conn = peers._conn(accepted)
        assert conn is not None
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            free_port = unused.getsockname()[1]
        nobody = conn._replace(peer_port=free_port)
        if strategy is peers._by_sock_diag:
            with pytest.raises(FileNotFoundError):
                strategy(nobody)
        else:
            assert strategy(nobody) is None


def test_not_tcp_or_not_connected_is_none() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peers.tcp_peer_uid(a) is None  # AF_UNIX: server.peer_uid's job
    with socket.socket() as s:
        assert peers.tcp_peer_uid(s) is None  # not connected
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.connect(("127.0.0.1", 9))
        assert peers.tcp_peer_uid(u) is None  # UDP
    with connection() as (accepted, _):
        pass
    assert peers.tcp_peer_uid(accepted) is None  # closed: fileno -1


class FakeSock:
    """Just what tcp_peer_uid looks at, for addresses this host cannot bind."""

    def __init__(self, family: int, peer: tuple[Any, ...], local: tuple[Any, ...]) -> None:
        self.family, self.type = family, socket.SOCK_STREAM
        self._peer, self._local = peer, local

    def getpeername(self) -> tuple[Any, ...]:
        return self._peer

    def getsockname(self) -> tuple[Any, ...]:
        return self._local


@pytest.mark.parametrize(
    "sock",
    [
        FakeSock(socket.AF_INET, ("192.0.2.7", 40000), ("127.0.0.1", 8080)),
        FakeSock(socket.AF_INET6, ("2001:db8::7", 40000, 0, 0), ("::1", 8080, 0, 0)),
        FakeSock(socket.AF_INET6, ("fe80::1%lo", 40000, 0, 1), ("::1", 8080, 0, 0)),
        FakeSock(socket.AF_INET6, ("::ffff:192.0.2.7", 40000, 0, 0), ("::1", 8080, 0, 0)),
        FakeSock(socket.AF_INET6, ("::ffff:127.0.0.1", 40000, 0, 0), ("::1", 8080, 0, 0)),
    ],
    ids=["v4", "v6", "link-local", "mapped", "mixed-families"],
)
def test_non_loopback_peer_is_none(sock: FakeSock, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(conn: peers._Conn) -> int:
        raise AssertionError(f"looked up {conn}")

    monkeypatch.setattr(peers, "_by_sock_diag", never)
    monkeypatch.setattr(peers, "_by_proc", never)
    assert peers.tcp_peer_uid(sock) is None  # type: ignore[arg-type]


def test_other_platforms_say_none(monkeypatch: pytest.MonkeyPatch) -> None:
    with connection() as (accepted, _):
        monkeypatch.setattr(sys, "platform", "darwin")
        assert peers.tcp_peer_uid(accepted) is None


# -- the parsers, on crafted input ---------------------------------------------------------


def test_proc_hex_is_host_order_words() -> None:
    little = sys.byteorder == "little"
    assert peers._proc_hex(b"\x7f\0\0\x01") == ("0100007F" if little else "7F000001")
    one = socket.inet_pton(socket.AF_INET6, "::1")
    assert peers._proc_hex(one) == "0" * 24 + ("01000000" if little else "00000001")


TCP_HEADER = (
    b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    b"   uid  timeout inode\n"
)


def _proc_row(sl: int, local: str, remote: str, state: int, uid: int, inode: int) -> bytes:
    return (
        f"{sl:4d}: {local} {remote} {state:02X} 00000000:00000000 00:00000000 00000000 "
        f"{uid:5d}        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
    ).encode()


def test_proc_line_matches_exactly() -> None:
    local, remote = b"0100007F:9C40", b"0100007F:1F90"
    rows = [
        _proc_row(0, "0100007F:1F90", "00000000:0000", 0x0A, 0, 100),  # the listener
        _proc_row(1, "0100007F:1F90", "0100007F:9C40", 1, 0, 101),  # our accepted end
        _proc_row(2, "0100007F:9C40", "0100007F:1F91", 1, 7, 102),  # other remote port
        _proc_row(3, "0100007F:9C40", "0100007F:1F90", 1, 1000, 103),  # the peer
        _proc_row(4, "0200007F:9C40", "0100007F:1F90", 1, 8, 104),  # other address
    ]
    table = TCP_HEADER + b"".join(rows)
    assert peers._proc_line(table, local, remote) == (1, 1000, 103)
    # Not at all, or twice: no answer.
    assert peers._proc_line(TCP_HEADER + b"".join(rows[:3]), local, remote) is None
    assert peers._proc_line(table + rows[3], local, remote) is None
    # The last line without its newline still counts.
    assert peers._proc_line(table.rstrip(b"\n"), local, remote) == (1, 1000, 103)


def _diag_msg(conn: peers._Conn, *, family: int, state: int, uid: int, inode: int) -> bytes:
    width = 4 if family == socket.AF_INET else 16
    prefix = b"" if width == 4 or len(conn.peer) == 16 else b"\0" * 10 + b"\xff\xff"
    src = (prefix + conn.peer).ljust(16, b"\0")[:16]
    dst = (prefix + conn.local).ljust(16, b"\0")[:16]
    return (
        struct.pack("=BBBB", family, state, 0, 0)
        + struct.pack("!HH16s16s", conn.peer_port, conn.local_port, src, dst)
        + struct.pack("=III", 0, 1, 2)
        + struct.pack("=IIIII", 0, 0, 0, uid, inode)
    )


def _nlmsg(kind: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_sock_diag_answer_checks_what_it_was_asked() -> None:
    conn = peers._Conn(socket.AF_INET, b"\x7f\0\0\x01", 40000, b"\x7f\0\0\x01", 8080)
    ok = _diag_msg(conn, family=socket.AF_INET, state=1, uid=1000, inode=5)
    assert peers._sock_diag_answer(_nlmsg(20, 9, ok), 9, conn) == 1000
    # The same socket as an AF_INET6 socket connected to ::ffff:127.0.0.1.
    mapped = _diag_msg(conn, family=socket.AF_INET6, state=1, uid=1000, inode=5)
    assert peers._sock_diag_answer(_nlmsg(20, 9, mapped), 9, conn) == 1000
    # Another port, another address, a timewait entry, an orphan, SYN_SENT: none count.
    for other in (
        _diag_msg(conn._replace(peer_port=40001), family=2, state=1, uid=1000, inode=5),
        _diag_msg(conn._replace(local=b"\x7f\0\0\x02"), family=2, state=1, uid=1000, inode=5),
        _diag_msg(conn, family=socket.AF_INET, state=6, uid=0, inode=0),
        _diag_msg(conn, family=socket.AF_INET, state=5, uid=0, inode=0),
        _diag_msg(conn, family=socket.AF_INET, state=2, uid=1000, inode=5),
        ok[:40],  # short
    ):
        assert peers._sock_diag_answer(_nlmsg(20, 9, other), 9, conn) is None
    # Another request's answer is not ours; an error is the kernel's errno.
    assert peers._sock_diag_answer(_nlmsg(20, 8, ok), 9, conn) is peers._NOT_OURS
    error = _nlmsg(2, 9, struct.pack("=i", -errno.ENOENT) + b"\0" * 16)
    with pytest.raises(FileNotFoundError):
        peers._sock_diag_answer(error, 9, conn)
    assert peers._sock_diag_answer(b"\xff" * 16, 9, conn) is None  # nlmsg_len past the end


def test_sock_diag_request_layout() -> None:
    conn = peers._Conn(socket.AF_INET, b"\x7f\0\0\x01", 0x9C40, b"\x7f\0\0\x02", 0x1F90)
    msg = peers._sock_diag_request(conn, 0x01020304)
    assert len(msg) == 16 + 56
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (72, 20, 1, 0x01020304, 0)  # not NLM_F_DUMP
    family, protocol, ext, _pad, states = struct.unpack_from("=BBBBI", msg, 16)
    assert (family, protocol, ext, states) == (2, 6, 0, 0xFFFFFFFF)
    assert msg[24:28] == b"\x9c\x40\x1f\x90"  # sport = the peer's, big-endian
    assert msg[28:44] == b"\x7f\0\0\x01" + b"\0" * 12  # src = the peer's address
    assert msg[44:60] == b"\x7f\0\0\x02" + b"\0" * 12  # dst = ours
    assert struct.unpack_from("=III", msg, 60) == (0, 0xFFFFFFFF, 0xFFFFFFFF)


def test_read_proc_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "PROC_LIMIT", 100)
    with pytest.raises(OSError, match="larger than"):
        peers._read_proc("/proc/self/maps")
    monkeypatch.undo()  # the real limit: a busy host's table can pass 1 MiB
    assert peers._read_proc("/proc/net/tcp").startswith(b"  sl")


# -- another uid ---------------------------------------------------------------------------

CLIENT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.settimeout(10)
s.connect((host, port))
print("connected", s.getsockname()[1], flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6), "::ffff:127.0.0.1"]
)
def test_other_users_client_is_its_uid_then_none(
    other_user: tuple[str, int, str], host: str
) -> None:
    """Another uid's connection is that uid, by both strategies; once it has closed,
    its leftover entry (uid 0) is not taken for root."""
    name, uid, python = other_user
    assert uid != os.getuid()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listen_host = "::ffff:127.0.0.1" if host.startswith("::ffff:") else host
    with _listener(family, listen_host) as listener:
        port = listener.getsockname()[1]
        child = subprocess.Popen(
            [*as_user(name), python, "-I", "-c", CLIENT, host, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        try:
            assert child.stdin is not None and child.stdout is not None
            said = child.stdout.readline()
            assert said.startswith("connected "), said
            client_port = said.split()[1]
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getpeername()[1] == int(client_port)
                for strategy in (peers._by_sock_diag, peers._by_proc):
                    if strategy is peers._by_sock_diag and not HAS_SOCK_DIAG:
                        continue
                    assert lookup(strategy, accepted) == uid, strategy.__name__
                assert peers.tcp_peer_uid(accepted) == uid

                child.stdin.write("\n")
                child.stdin.flush()
                assert child.stdout.readline() == "closed\n"
                accepted.settimeout(10)
                assert accepted.recv(1) == b""
                # Its leftover entry, if still there, claims root: the trap.
                conn = peers._conn(accepted)
                assert conn is not None
                entry = _proc_entry(conn) if conn.family == socket.AF_INET else None
                assert entry is None or entry[1:] in ((0, 0), (uid, 0)), entry
                for strategy in (peers._by_sock_diag, peers._by_proc):
                    assert answers(accepted, strategy) in (None, uid), strategy.__name__
                assert peers.tcp_peer_uid(accepted) in (None, uid)
            child.stdin.close()
            assert child.wait(10) == 0
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
