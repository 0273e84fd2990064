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
