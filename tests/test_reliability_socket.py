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
