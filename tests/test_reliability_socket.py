"""Reliability scenarios for the socket and the service manager (issue 9, sections 3 and
6): the real ``tokend run`` against FakeGoogle, faults injected at the OS boundary. To
be folded into tests/test_reliability.py; the helpers come from there.

- a stuck service manager (a ``NOTIFY_SOCKET`` nobody reads) never blocks the loop;
- clients that pipeline requests and never read are bounded in memory and closed;
- ``socket.allow_uids`` lets an allowed user in and tells a refused one why;
- an absolute ``socket.path`` outside the runtime dir comes back after a delete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.reliability_util import get, profile_status, report
from tests.test_reliability import current_token, sa_config, sizes
from tokend.testing import FakeGoogle


def _timed_get(sock: str, target: str, timeout: float) -> tuple[int | str, float]:
    """(status or the error's name, seconds) of one GET."""
    t0 = time.monotonic()
    try:
        code: int | str = get(sock, target, timeout)[0]
    except OSError as err:
        code = type(err).__name__
    return code, time.monotonic() - t0


# -- 3. sd_notify never blocks the loop ---------------------------------------------------


@contextlib.contextmanager
def _stuck_manager(address: str) -> Iterator[socket.socket]:
    """A datagram socket at ``address`` that is never read (until the test drains it):
    a service manager that stopped reading its notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    try:
        yield sock
    finally:
        sock.close()


def _drain(sock: socket.socket) -> list[str]:
    fields: list[str] = []
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            fields += sock.recv(65536).decode().split("\n")
    return fields


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seconds", sizes("TOKEND_NOTIFY_SECONDS", 6, 30))
def test_unread_notify_socket_blocks_nothing(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, seconds: float
) -> None:
    """1. NOTIFY_SOCKET names a datagram socket nobody reads, with a 200 ms watchdog
       (a ping every 100 ms): its queue (net.unix.max_dgram_qlen, 10) is full within
       a second.
    2. For ``seconds``, SIGUSR1 every 0.3 s makes a refresh, and so two status
       changes; a client asks /healthz and /v1/token every 20 ms.
    3. Every answer is 200 within 0.5 s; the refreshes happened (FakeGoogle counted
       them, the token file changed).
    4. The signals stop and the manager reads its queue: within 2 s the last STATUS=
       it has seen is the current state (fresh), so what was dropped did not matter."""
    address = str(short_tmp / "notify")
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    with (
        _stuck_manager(address) as manager,
        daemon_factory(sa_config(fake, short_tmp), env=env, wait_ready=False) as d,
    ):
        sock = str(d.file("tokend.sock"))
        wait_for(lambda: os.path.exists(sock), 10)
        worst = 0.0
        bad: dict[str, int] = {}
        answers = 0
        t_start = time.monotonic()
        next_signal = t_start
        first_token = None
        while time.monotonic() - t_start < seconds:
            if time.monotonic() >= next_signal:
                d.signal(signal.SIGUSR1)
                next_signal += 0.3
            for target in ("/healthz", "/v1/token"):
                code, took = _timed_get(sock, target, 2.0)
                answers += 1
                worst = max(worst, took)
                if code != 200 and not (code == 503 and first_token is None):
                    bad[str(code)] = bad.get(str(code), 0) + 1
            if first_token is None:
                first_token = current_token(d)
            time.sleep(0.02)
        figures: dict[str, Any] = {
            "seconds": seconds,
            "answers": answers,
            "worst_answer_s": round(worst, 3),
            "bad_answers": bad,
            "token_fetches": fake.calls["token"],
        }
        report(f"notify_unread[{seconds:g}]", **figures)
        assert not bad and worst < 0.5, figures
        assert figures["token_fetches"] >= seconds / 0.3 / 2, figures  # every other SIGUSR1
        assert first_token and current_token(d) != first_token, figures

        wait_for(lambda: profile_status(sock)["state"] == "fresh", 5)
        seen = _drain(manager)
        figures["notify_fields_queued_unread"] = len(seen)
        t_drained = time.monotonic()

        def manager_view() -> str:
            seen.extend(_drain(manager))
            return [f for f in seen if f.startswith("STATUS=")][-1]

        wait_for(lambda: manager_view().startswith("STATUS=default: fresh"), 2)
        figures["manager_view_after_drain_s"] = round(time.monotonic() - t_drained, 3)
        figures["manager_view_after_drain"] = manager_view()
        assert d.proc.poll() is None
    report(f"notify_unread[{seconds:g}]", **figures)


# -- 3. clients that send and never read --------------------------------------------------

#: A client process asking /v1/token over and over (a new connection each time) until a
#: stop file appears; prints the latencies and any failure as JSON. It imports nothing
#: of tokend.
GOOD_CLIENT = r"""
import json, os, socket, sys, time
path, stop = sys.argv[1:3]
latencies, failures = [], []
while not os.path.exists(stop):
    t0 = time.perf_counter()
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"GET /v1/token HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 200"):
            failures.append(data[:40].decode(errors="replace"))
    except OSError as err:
        failures.append(repr(err))
    latencies.append(time.perf_counter() - t0)
    time.sleep(0.01)
print(json.dumps({"latencies": latencies, "failures": failures[:10]}))
"""

#: What the daemon may hold for one client that sends and never reads: a read
#: (server.READ_SIZE, 4 KiB) and a head cut short by it (< 2 KiB), answers beyond what
#: its socket buffer took (server.WRITE_BUFFER, 4 KiB, plus the one answer that crossed
#: it), the connection's own objects (~3 KiB), and the allocator's slack.
PER_GREEDY_CLIENT = 24 * 1024
#: Plus, once: aiohttp's import (~10 MB) should some request of theirs need it.
GREEDY_FIXED = 16 * 1024 * 1024


def _greedy_wave(sock: str, n: int, payload: bytes) -> tuple[list[socket.socket], float]:
    """``n`` clients connect and push ``payload`` (pipelined requests) each, reading
    nothing, until the daemon stops reading from all of them (no send makes progress
    for 0.5 s). Returns the clients and how long the push lasted."""
    clients = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.setblocking(False)
        clients.append(s)
    left = [memoryview(payload) for _ in clients]
    t0 = last_progress = time.monotonic()
    while time.monotonic() - last_progress < 0.5 and time.monotonic() - t0 < 30:
        for i, s in enumerate(clients):
            if not left[i]:
                continue
            try:
                sent = s.send(left[i])
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                continue
            left[i] = left[i][sent:]
            last_progress = time.monotonic()
        time.sleep(0.005)
    return clients, last_progress - t0


def _ends(clients: list[socket.socket]) -> dict[str, int]:
    """How each client's connection ended, from the client's side: ``closed`` (EOF or
    ECONNRESET after whatever answers reached it) or ``open``."""
    out = {"closed": 0, "open": 0}
    for s in clients:
        state = "open"
        try:
            while chunk := s.recv(1 << 16):
                del chunk
            state = "closed"
        except ConnectionResetError:
            state = "closed"
        except BlockingIOError:
            pass
        out[state] += 1
        s.close()
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("n", sizes("TOKEND_GREEDY_CLIENTS", 500, 2000))
def test_clients_that_never_read_are_bounded_and_closed(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, n: float
) -> None:
    """1. ``n`` same-uid clients connect and pipeline ``GET /v1/token`` (1 MiB each)
       without ever reading; a separate good client asks for the token every 10 ms
       throughout.
    2. While the daemon stopped reading from them, its RSS grew by at most
       :data:`PER_GREEDY_CLIENT` a client plus :data:`GREEDY_FIXED` (on main: ~280 KiB
       a client, 282 MB for 1,000).
    3. Within the idle timeout (5 s) and a margin of 2 s, the daemon closed every one
       of them (its fds are back to the baseline; on main they stayed open forever).
    4. The good client got 200 every time, 99 % within 100 ms, each within
       0.5 s + 0.5 ms a greedy client: while they all become readable at once it
       waits for one pass of the loop over them, and each costs the loop one read and
       the ~40 answers its socket buffer takes before it pushes back.
    5. After they are gone the RSS stays where it was (freed memory is reused, it does
       not grow); the slow size sends a second wave, whose peak may not exceed the
       first one's by more than 4 MiB."""
    import subprocess
    import sys

    from tests.reliability_util import proc_figures
    from tests.test_reliability import _raise_nofile

    n = int(n)
    _raise_nofile(n + 200)
    waves = 2 if n > 1000 else 1
    one = b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\n\r\n"
    payload = one * ((1 << 20) // len(one))
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = str(d.file("tokend.sock"))
        assert get(sock, "/v1/token")[0] == 200
        base = proc_figures(d.proc.pid)
        stop = short_tmp / "stop"
        good = subprocess.Popen(
            [sys.executable, "-I", "-c", GOOD_CLIENT, sock, str(stop)], stdout=subprocess.PIPE
        )
        rows = []
        try:
            for _ in range(waves):
                clients, pushed = _greedy_wave(sock, n, payload)
                t_stall = time.monotonic()
                peak = proc_figures(d.proc.pid)
                closed_after = None
                while time.monotonic() - t_stall < 12:
                    now = proc_figures(d.proc.pid)
                    peak["rss_kib"] = max(peak["rss_kib"], now["rss_kib"])
                    if now["fds"] <= base["fds"] + 2:
                        closed_after = time.monotonic() - t_stall
                        break
                    time.sleep(0.05)
                ends = _ends(clients)
                time.sleep(0.5)
                rows.append(
                    {
                        "push_s": round(pushed, 2),
                        "rss_kib_peak": peak["rss_kib"],
                        "fds_peak": peak["fds"],
                        "closed_after_stall_s": closed_after and round(closed_after, 2),
                        "client_ends": ends,
                        "rss_kib_after": proc_figures(d.proc.pid)["rss_kib"],
                    }
                )
        finally:
            stop.touch()
            out, _ = good.communicate(timeout=10)
        assert d.proc.poll() is None
    import json

    seen = json.loads(out) if out else {"latencies": [], "failures": ["killed"]}
    lat = sorted(seen["latencies"])
    growth = [r["rss_kib_peak"] - base["rss_kib"] for r in rows]
    latency_bound = 0.5 + n * 0.0005
    figures = {
        "clients": n,
        "rss_kib_base": base["rss_kib"],
        "waves": rows,
        "rss_growth_kib_per_client": [round(g / n, 1) for g in growth],
        "rss_bound_kib": (n * PER_GREEDY_CLIENT + GREEDY_FIXED) // 1024,
        "good_latency_bound_s": latency_bound,
        "good_requests": len(lat),
        "good_failures": seen["failures"],
        "good_latency_ms_p50_p99_max": [
            round(1000 * lat[len(lat) // 2], 2),
            round(1000 * lat[int(len(lat) * 0.99)], 2),
            round(1000 * lat[-1], 2),
        ]
        if lat
        else None,
    }
    report(f"greedy_clients[{n}]", **figures)
    for g, r in zip(growth, rows, strict=True):
        assert g * 1024 <= n * PER_GREEDY_CLIENT + GREEDY_FIXED, figures
        assert r["closed_after_stall_s"] is not None and r["closed_after_stall_s"] <= 7, figures
        assert r["client_ends"] == {"closed": n, "open": 0}, figures
        assert r["rss_kib_after"] <= r["rss_kib_peak"] + 1024, figures
    assert not seen["failures"] and lat, figures
    assert lat[int(len(lat) * 0.99)] < 0.1 and lat[-1] < latency_bound, figures
    if waves > 1:
        assert rows[1]["rss_kib_peak"] <= rows[0]["rss_kib_peak"] + 4096, figures


# -- 6. socket.allow_uids lets the allowed in, and tells the others why -----------------------

#: Run as another user with the system interpreter: tokend.client (stdlib only) from this
#: checkout, asked through the socket only (no runtime dir, no config); prints the token
#: or the error, then what a raw request gets: the status line and the body.
AS_USER = r"""
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
import tokend.client as c
try:
    print("token", c.token(min_valid=0))
except c.TokenUnavailable as err:
    print("error", err)
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(os.environ["TOKEND_SOCKET"])
try:
    s.sendall(b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\n\r\n")
except (BrokenPipeError, ConnectionResetError):
    pass
data, end = b"", "eof"
try:
    while chunk := s.recv(65536):
        data += chunk
        if data.count(b"\r\n\r\n") and b"Connection: close" not in data:
            break  # keep-alive answer: one is enough
except ConnectionResetError:
    end = "reset"
head, _, body = data.partition(b"\r\n\r\n")
print("raw", json.dumps({"status": head.split(b"\r\n")[0].decode(), "body": body.decode(),
                         "end": end}))
"""


@contextlib.contextmanager
def _throwaway_users(*names: str) -> Iterator[dict[str, int]]:
    """Create users (no home, no shell) for the test; delete them afterwards."""
    import pwd
    import subprocess

    made = []
    try:
        for name in names:
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
            )
            made.append(name)
        yield {name: pwd.getpwnam(name).pw_uid for name in names}
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)


def _as_user(user: str, sock: Path) -> dict[str, Any]:
    import json
    import subprocess

    from tests.conftest import ROOT
    from tests.test_server import PYTHON

    env = {
        "PATH": "/usr/bin:/bin",
        "TOKEND_SOCKET": str(sock),
        "TOKEND_RUNTIME_DIR": "/nonexistent/tokend",
        "TOKEND_CONFIG": "/nonexistent/config.toml",
    }
    out = subprocess.run(
        [PYTHON, "-I", "-c", AS_USER, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=20,
        user=user,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    raw = json.loads(lines["raw"])
    return {"token": lines.get("token"), "error": lines.get("error"), **raw}


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def _answers(sock: Path) -> bool:
    """Whether the socket is there and answers /healthz."""
    try:
        return get(str(sock), "/healthz", 2.0)[0] == 200
    except OSError:
        return False


@pytest.mark.timeout(90)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create and become other users")
@pytest.mark.skipif(not Path("/usr/sbin/useradd").exists(), reason="needs useradd")
def test_allow_uids_lets_the_allowed_user_in_and_tells_the_other_why(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. Two throw-away users; ``socket.allow_uids`` names one. The socket is at an
       absolute path outside the runtime dir, in a 0711 directory as an administrator
       would make it (``pub/``; the temp dir above it is made 0711 too).
    2. The allowed user gets the daemon's token through the socket with tokend.client
       (on main: EACCES, the socket was 0600).
    3. The other one gets a 403 whose JSON names its uid and socket.allow_uids, read
       after the connection was refused, not a broken pipe; tokend.client's error says
       so; the refusal is logged once.
    4. The socket is 0666; deleted, it is back within 2 s and 0666 again; its directory
       deleted with it, both are back (0711, 0666) and the allowed user gets in."""
    tag = str(os.getpid())[-6:]
    allowed, denied = f"tkok{tag}", f"tkno{tag}"
    short_tmp.chmod(0o711)
    pub = short_tmp / "pub"
    pub.mkdir(mode=0o711)
    pub.chmod(0o711)
    sock = pub / "tokend.sock"
    with _throwaway_users(allowed, denied) as uids:
        config = sa_config(
            fake, short_tmp, f'[socket]\npath = "{sock}"\nallow_uids = [{uids[allowed]}]\n'
        )
        with daemon_factory(config) as d:
            token = current_token(d)
            mode_at_start = _mode(sock)
            ok = _as_user(allowed, sock)
            no = _as_user(denied, sock)
            refusals = d.log().count(f"from uid {uids[denied]}")

            t0 = time.monotonic()
            sock.unlink()
            wait_for(lambda: _answers(sock), 5)
            back_after = time.monotonic() - t0
            mode_after_delete = _mode(sock)

            import shutil

            t0 = time.monotonic()
            shutil.rmtree(pub)
            wait_for(lambda: _answers(sock), 5)
            dir_back_after = time.monotonic() - t0
            modes_after_rmtree = (_mode(pub), _mode(sock))
            again = _as_user(allowed, sock)
    figures = {
        "allowed": {k: ok[k] for k in ("status", "end")} | {"got_token": ok["token"] == token},
        "refused": {k: no[k] for k in ("status", "body", "end", "error")},
        "refusals_logged": refusals,
        "socket_mode_at_start": mode_at_start,
        "socket_back_after_s": round(back_after, 2),
        "socket_mode_after_delete": mode_after_delete,
        "dir_and_socket_back_after_s": round(dir_back_after, 2),
        "dir_and_socket_modes_after_rmtree": modes_after_rmtree,
        "allowed_after_rmtree": again["token"] == token,
    }
    report("allow_uids", **figures)
    assert ok["token"] == token and ok["status"] == "HTTP/1.1 200 OK", figures
    assert no["token"] is None and no["status"] == "HTTP/1.1 403 Forbidden", figures
    import json

    detail = json.loads(no["body"])["detail"]
    assert f"uid {uids[denied]} is not allowed" in detail and "socket.allow_uids" in detail
    assert "refused the connection" in no["error"] and "socket.allow_uids" in no["error"]
    assert token not in no["body"] and token not in no["error"]
    assert refusals == 1, figures
    assert mode_at_start == mode_after_delete == "0o666", figures
    assert back_after < 2 and dir_back_after < 2, figures
    assert modes_after_rmtree == ("0o711", "0o666"), figures
    assert again["token"] == token, figures


# -- 6. an absolute socket.path outside the runtime dir comes back --------------------------


@pytest.mark.timeout(60)
def test_socket_outside_the_runtime_dir_comes_back_after_a_delete(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. ``socket.path`` is absolute, in a directory of ours outside the runtime dir.
    2. The socket file is deleted, three times: each time it is back (the watcher sees
       the delete, the daemon binds again) within 2 s and answers /v1/token; inside the
       runtime dir this took ~1 s already, outside it never happened (main).
    3. It is 0600 (no allow_uids) and the daemon still removes it when it stops."""
    pub = short_tmp / "pub"
    pub.mkdir(mode=0o700)
    sock = pub / "tokend.sock"
    with daemon_factory(sa_config(fake, short_tmp, f'[socket]\npath = "{sock}"\n')) as d:
        token = current_token(d)
        assert get(str(sock), "/v1/token")[0] == 200
        # Past the repair that writing the first token's files schedules (0.2 s after
        # them): it would restore a socket deleted right now, watched or not.
        time.sleep(0.5)
        back: list[float | None] = []
        for _ in range(3):
            sock.unlink()
            t0 = time.monotonic()
            while not _answers(sock) and time.monotonic() - t0 < 5:
                time.sleep(0.02)
            back.append(round(time.monotonic() - t0, 2) if _answers(sock) else None)
            if back[-1] is None:
                break
            code, body = get(str(sock), "/v1/token")
            assert code == 200 and token and token.encode() in body
        mode = _mode(sock) if sock.exists() else None
        assert d.stop() == 0
    figures = {"back_after_s": back, "mode": mode, "removed_at_stop": not sock.exists()}
    report("socket_outside_runtime_dir", **figures)
    assert len(back) == 3 and all(b is not None and b < 2 for b in back), figures
    assert mode == "0o600" and figures["removed_at_stop"], figures
