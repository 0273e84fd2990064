"""Service integration: the systemd unit, sd_notify, install/uninstall, doctor.

The unit file is checked by systemd's own tools; sd_notify with a real datagram socket
standing in for systemd while the real ``tokend run`` starts, refreshes and stops;
install/uninstall against a temporary HOME with ``systemctl``/``launchctl`` replaced by
stubs that record their arguments.
"""

from __future__ import annotations

import contextlib
import json
import os
import plistlib
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_for
from tokend.service import notify as sd
from tokend.service import systemd as sd_unit
from tokend.testing import FakeGoogle

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
UNIT = ROOT / "systemd" / "tokend.service"


# -- the unit file ---------------------------------------------------------------------


def test_committed_unit_is_the_one_install_writes() -> None:
    """systemd/tokend.service is render_unit() with the packagers' ExecStart, so the
    installer (which cannot read the repo's file from a wheel) writes the same unit."""
    assert UNIT.read_text() == sd_unit.render_unit()
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/env tokend run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=30s",
        "RuntimeDirectory=tokend",
        "RuntimeDirectoryMode=0700",
        "ProtectHome=read-only",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "StateDirectory=tokend",
        "Environment=TOKEND_STATE_DIR=%S/tokend",
    ):
        assert line in text.splitlines(), line


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ANALYZE or "systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_analyze
def test_unit_passes_systemd_analyze_verify_without_warnings(short_tmp: Path) -> None:
    """1. The committed unit verifies with no output at all.
    2. So does an installed one whose paths need escaping (space, %, $)."""
    result = _verify(UNIT)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result
    odd = short_tmp / "my dir%$x"
    odd.mkdir()
    exe = odd / "tokend"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = short_tmp / "tokend.service"
    unit.write_text(sd_unit.render_unit([str(exe)], odd / "config.toml"))
    text = unit.read_text()
    assert 'ExecStart="' + str(exe).replace("%", "%%") + '" run --config "' in text
    assert str(odd).replace("%", "%%").replace("$", "$$") + '/config.toml"' in text
    result = _verify(unit)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result


@needs_analyze
def test_unit_security_exposure_is_at_most_2() -> None:
    """`systemd-analyze security --offline=true` rates the unit 2.0 or better."""
    result = subprocess.run(
        [ANALYZE or "", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for tokend\.service: (\d+\.\d+)", result.stdout)
    assert m, result.stdout + result.stderr
    assert float(m.group(1)) <= 2.0, result.stdout


# -- sd_notify, in process -------------------------------------------------------------


class Listener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records
    ``(time.time(), fields)`` for every message."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notify-listener")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append((time.time(), data.decode().split("\n")))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def fields(self) -> list[tuple[float, str]]:
        return [(t, f) for t, fs in list(self.messages) for f in fs]

    def first(self, field: str) -> float | None:
        return next((t for t, f in self.fields() if f == field), None)

    def statuses(self) -> list[str]:
        return [f.removeprefix("STATUS=") for _, f in self.fields() if f.startswith("STATUS=")]


@contextlib.contextmanager
def listening(address: str) -> Iterator[Listener]:
    listener = Listener(address)
    try:
        yield listener
    finally:
        listener.close()


def test_notify_without_notify_socket_does_nothing() -> None:
    assert sd.notify("READY=1", env={}) is False
    assert sd.watchdog_interval({}) is None


def test_notify_to_an_abstract_socket(short_tmp: Path) -> None:
    """A leading @ in NOTIFY_SOCKET means Linux's abstract namespace."""
    name = f"tokend-test-{os.getpid()}-{time.monotonic_ns()}"
    with listening("\0" + name) as listener:
        assert sd.notify("READY=1", "STATUS=two\nlines", env={"NOTIFY_SOCKET": "@" + name})
        wait_for(lambda: listener.messages, 2)
    assert listener.messages[0][1] == ["READY=1", "STATUS=two lines"]


def test_notify_failure_is_quiet(short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nobody listening, or an address we cannot use: False, debug log only."""
    with caplog.at_level("DEBUG", logger="tokend.service.notify"):
        assert not sd.notify("READY=1", env={"NOTIFY_SOCKET": str(short_tmp / "none")})
        assert not sd.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1"})
    assert all(r.levelname == "DEBUG" for r in caplog.records)


def _unread(address: str) -> socket.socket:
    """A datagram socket at ``address`` that nobody reads: a stuck service manager."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


def _fill(address: str) -> int:
    """Send to ``address`` until its queue is full (EAGAIN); how many datagrams it took."""
    n = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as s:
        s.connect(address)
        with contextlib.suppress(BlockingIOError):
            while True:
                s.send(b"STATUS=filler")
                n += 1
    return n


def _drain(sock: socket.socket) -> list[list[str]]:
    """Read every datagram queued on ``sock``: the manager catching up."""
    out = []
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(65536).decode().split("\n"))
    return out


def test_notify_drops_instead_of_blocking_on_a_full_queue(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. NOTIFY_SOCKET names a datagram socket nobody reads.
    2. 100 notifications: the first ones fill its queue (net.unix.max_dgram_qlen), the
       rest are dropped (False) at once instead of waiting for the reader.
    3. The drops are debug-logged only."""
    address = str(short_tmp / "notify")
    env = {"NOTIFY_SOCKET": address}
    with _unread(address), caplog.at_level("DEBUG", logger="tokend.service.notify"):
        t0 = time.monotonic()
        sent = [sd.notify(f"STATUS=update {i}", env=env) for i in range(100)]
        took = time.monotonic() - t0
    assert took < 1.0, f"100 notifications took {took:.2f}s"
    assert sent[0] and not sent[-1], sent
    assert sent == sorted(sent, reverse=True)  # sent until full, then dropped
    assert caplog.records and all(r.levelname == "DEBUG" for r in caplog.records)
    assert "queue is full" in caplog.records[-1].getMessage()


def test_ready_is_retried_until_the_manager_reads(short_tmp: Path) -> None:
    """1. The manager's queue is full when the first attempts finish: READY=1 is
       dropped, and STATUS= updates meanwhile too.
    2. The event loop never waits for the manager (a 10 ms ticker keeps ticking).
    3. Once the manager reads its queue, READY=1 arrives within a retry interval,
       carrying the current status; a later STATUS= is sent though its text had been
       dropped before."""
    import asyncio

    address = str(short_tmp / "notify")
    status = ["default: starting"]
    with _unread(address) as manager:
        assert _fill(address) > 0

        async def scenario() -> tuple[float, list[list[str]], list[list[str]]]:
            link = sd.ServiceLink(lambda: status[0], env={"NOTIFY_SOCKET": address})
            ready = asyncio.Event()
            link.start(lambda: ready.wait())
            ready.set()
            lag = 0.0
            for _ in range(30):  # 0.3 s of retries against the full queue
                t0 = time.monotonic()
                await asyncio.sleep(0.01)
                lag = max(lag, time.monotonic() - t0 - 0.01)
            status[0] = "default: fresh, expires in 59m"
            link.status_changed()  # dropped: the queue is still full
            backlog = _drain(manager)
            await asyncio.sleep(sd.READY_RETRY_MAX + 0.2)
            caught_up = _drain(manager)
            link.status_changed()  # same text as READY=1 carried: nothing new to send
            status[0] = "default: refreshing"
            link.status_changed()
            await asyncio.sleep(0.05)
            caught_up += _drain(manager)
            link.stopping()
            return lag, backlog, caught_up

        lag, backlog, caught_up = asyncio.run(scenario())
    assert lag < 0.05, f"the loop waited {lag:.3f}s"
    assert all(m == ["STATUS=filler"] for m in backlog), backlog  # READY=1 was dropped
    assert caught_up[0] == ["READY=1", "STATUS=default: fresh, expires in 59m"], caught_up
    assert caught_up[1:] == [["STATUS=default: refreshing"]], caught_up


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert sd.watchdog_interval({"WATCHDOG_USEC": "400000"}) == 0.2
    own = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert sd.watchdog_interval(own) == 15.0
    assert sd.watchdog_interval({**own, "WATCHDOG_PID": "1"}) is None  # meant for another
    assert sd.watchdog_interval({"WATCHDOG_USEC": "garbage"}) is None


# -- sd_notify, end to end ---------------------------------------------------------------


def test_daemon_speaks_sd_notify(fake: FakeGoogle, short_tmp: Path, daemon_factory: Any) -> None:
    """1. The first token request hangs 1 s; tokend runs with NOTIFY_SOCKET and a
       400 ms watchdog.
    2. WATCHDOG=1 pings start before readiness; READY=1 comes only after the first
       token was issued, with a STATUS saying the profile is fresh.
    3. SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again.
    4. SIGTERM: STOPPING=1, and no watchdog ping after it."""
    creds = fake.write_service_account(short_tmp / "sa.json")
    fake.hang(1.0, count=1)
    address = str(short_tmp / "notify")
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    with (
        listening(address) as listener,
        daemon_factory(
            f'[profiles.default]\ncredentials = "{creds}"\n', env=env, wait_ready=False
        ) as d,
    ):
        ready = wait_for(lambda: listener.first("READY=1"), 15)
        issued = fake.call_log[0][0]
        assert ready >= issued, "READY=1 before the first attempt finished"
        pings = [t for t, f in listener.fields() if f == "WATCHDOG=1"]
        assert len([t for t in pings if t < ready]) >= 2, "no watchdog pings while starting"
        ready_msg = next(fs for _, fs in listener.messages if "READY=1" in fs)
        status = next(f for f in ready_msg if f.startswith("STATUS="))
        expected = r"STATUS=default: fresh, expires in (59m[0-5][0-9]s|1h00m)"
        assert re.fullmatch(expected, status), status

        time.sleep(1.0)
        later = [t for t, f in listener.fields() if f == "WATCHDOG=1" and t > ready]
        assert len(later) >= 3, later

        d.signal(signal.SIGHUP)
        wait_for(lambda: listener.first("RELOADING=1"), 5)
        reload_msg = next(fs for _, fs in listener.messages if "RELOADING=1" in fs)
        assert any(re.fullmatch(r"MONOTONIC_USEC=\d+", f) for f in reload_msg)
        wait_for(lambda: [f for _, f in listener.fields() if f == "READY=1"][1:], 5)

        assert d.stop() == 0
        stopping = wait_for(lambda: listener.first("STOPPING=1"), 5)
        time.sleep(0.5)
        assert not [t for t, f in listener.fields() if f == "WATCHDOG=1" and t > stopping]
        assert "STATUS=stopping" in [f for _, f in listener.fields()]


def test_ready_even_when_the_first_attempt_fails(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. ADC points at a file that does not exist (a laptop before its first login).
    2. tokend still reports READY=1 (its start must not fail), and STATUS says what
       to do: reauth_required with the `gcloud auth application-default login` fix."""
    address = str(short_tmp / "notify")
    env = {
        "NOTIFY_SOCKET": address,
        "GOOGLE_APPLICATION_CREDENTIALS": str(short_tmp / "missing.json"),
    }
    with listening(address) as listener, daemon_factory("", env=env, wait_ready=False):
        wait_for(lambda: listener.first("READY=1"), 15)
        status = listener.statuses()[-1]
    assert status.startswith("default: reauth_required (credentials_missing) — "), status
    assert status.endswith("run `gcloud auth application-default login`"), status
    assert listener.first("WATCHDOG=1") is None  # no WATCHDOG_USEC: no pings


# -- install / uninstall -------------------------------------------------------------------

STUB = """#!/bin/sh
echo "${0##*/} $*" >> "$STUB_LOG"
PATH=/usr/bin:/bin
if [ -n "$STUB_BUS_DOWN" ]; then
  echo "Failed to connect to bus: No medium found" >&2; exit 1
fi
case "$*" in
  "--user is-active tokend.service") echo active ;;
  "bootstrap "*) touch "$STUB_LOG.loaded" ;;
  "bootout "*) rm -f "$STUB_LOG.loaded" ;;
  "print "*) [ -e "$STUB_LOG.loaded" ] || exit 113; echo "state = running" ;;
esac
exit 0
"""


class Home:
    """A temporary HOME with stub service managers (and a stub tokend) on PATH."""

    def __init__(self, root: Path, stubs: tuple[str, ...]) -> None:
        self.home = root / "home"
        self.bin = root / "bin"
        self.log = root / "calls.log"
        self.home.mkdir()
        self.bin.mkdir()
        for name in (*stubs, "tokend"):
            path = self.bin / name
            path.write_text(STUB)
            path.chmod(0o755)
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"},
            "HOME": str(self.home),
            "PATH": str(self.bin),  # only the stubs: python is run by absolute path
            "STUB_LOG": str(self.log),
        }

    def tokend(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tokend", *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=ROOT,
            timeout=60,
        )

    def calls(self) -> list[str]:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        self.log.unlink()
        return lines

    @property
    def unit(self) -> Path:
        return self.home / ".config" / "systemd" / "user" / "tokend.service"

    @property
    def plist(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / "dev.tokend.plist"


@pytest.fixture
def home(short_tmp: Path) -> Home:
    return Home(short_tmp, ("systemctl", "launchctl"))


def test_install_dry_run_systemd_touches_nothing(home: Home) -> None:
    r = home.tokend("install", "--systemd", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"# would write {home.unit}:" in out
    assert f"ExecStart={home.bin}/tokend run\n" in out
    assert "Type=notify" in out
    assert out.rstrip().endswith(
        "# would run: systemctl --user daemon-reload\n"
        "# would run: systemctl --user enable --now tokend.service"
    )
    assert home.calls() == [] and not any(home.home.iterdir())


def test_install_dry_run_launchd_plist_round_trips(home: Home, short_tmp: Path) -> None:
    config = short_tmp / "my config.toml"
    config.write_text("")
    r = home.tokend("install", "--launchd", "--dry-run", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert f"# would write {home.plist}:" in r.stdout
    xml = r.stdout[r.stdout.index("<?xml") : r.stdout.index("</plist>") + len("</plist>")]
    agent = plistlib.loads(xml.encode())
    logs = str(home.home / "Library" / "Logs" / "tokend" / "tokend.log")
    assert agent == {
        "Label": "dev.tokend",
        "ProgramArguments": [f"{home.bin}/tokend", "run"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Background",
        "StandardOutPath": logs,
        "StandardErrorPath": logs,
        "EnvironmentVariables": {"TOKEND_CONFIG": str(config)},
    }
    uid = os.getuid()
    assert r.stdout.rstrip().endswith(
        f"# would run: launchctl bootout gui/{uid}/dev.tokend  # only when loaded\n"
        f"# would run: launchctl enable gui/{uid}/dev.tokend\n"
        f"# would run: launchctl bootstrap gui/{uid} {home.plist}"
    )
    assert home.calls() == [] and not any(home.home.iterdir())


def test_systemd_install_and_uninstall(home: Home, short_tmp: Path) -> None:
    """1. install: the unit is written (0644) and exactly reload + enable --now run.
    2. install again: unchanged, same two commands (idempotent).
    3. install --config: the unit changes, so a running service is restarted.
    4. uninstall: disable --now, file removed, reload; again: nothing to do."""
    r = home.tokend("install", "--systemd")
    assert r.returncode == 0, r.stderr
    assert home.calls() == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now tokend.service",
    ]
    assert f"ExecStart={home.bin}/tokend run\n" in home.unit.read_text()
    assert stat.S_IMODE(home.unit.stat().st_mode) == 0o644
    assert r.stdout.startswith(f"wrote {home.unit} (ExecStart={home.bin}/tokend run)")

    r = home.tokend("install")  # systemd is the default off macOS
    assert r.returncode == 0 and r.stdout.startswith(f"unchanged: {home.unit}"), r
    assert home.calls() == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now tokend.service",
    ]

    config = short_tmp / "config.toml"
    config.write_text("")
    r = home.tokend("install", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert f"run --config {config}\n" in home.unit.read_text()
    assert home.calls() == [
        "systemctl --user daemon-reload",
        "systemctl --user try-restart tokend.service",
        "systemctl --user enable --now tokend.service",
    ]

    r = home.tokend("uninstall")
    assert r.returncode == 0, r.stderr
    assert not home.unit.exists()
    assert home.calls() == [
        "systemctl --user disable --now tokend.service",
        "systemctl --user daemon-reload",
    ]
    r = home.tokend("uninstall")
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert home.calls() == []


def test_install_honours_xdg_config_home(home: Home, short_tmp: Path) -> None:
    xdg = short_tmp / "xdg"
    r = home.tokend("install", "--systemd", XDG_CONFIG_HOME=str(xdg))
    assert r.returncode == 0, r.stderr
    assert (xdg / "systemd" / "user" / "tokend.service").is_file()
    assert not home.unit.exists()


def test_launchd_install_and_uninstall(home: Home) -> None:
    """1. install: plist written, log dir created, enable + bootstrap (not loaded yet).
    2. install again: loaded, so bootout first, then the same (idempotent).
    3. uninstall: bootout, plist removed; again: nothing to do."""
    uid = os.getuid()
    r = home.tokend("install", "--launchd")
    assert r.returncode == 0, r.stderr
    assert home.calls() == [
        f"launchctl print gui/{uid}/dev.tokend",
        f"launchctl enable gui/{uid}/dev.tokend",
        f"launchctl bootstrap gui/{uid} {home.plist}",
    ]
    agent = plistlib.loads(home.plist.read_bytes())
    assert agent["ProgramArguments"] == [f"{home.bin}/tokend", "run"]
    assert (home.home / "Library" / "Logs" / "tokend").is_dir()

    r = home.tokend("install", "--launchd")
    assert r.returncode == 0 and r.stdout.startswith(f"unchanged: {home.plist}"), r
    assert home.calls() == [
        f"launchctl print gui/{uid}/dev.tokend",
        f"launchctl bootout gui/{uid}/dev.tokend",
        f"launchctl enable gui/{uid}/dev.tokend",
        f"launchctl bootstrap gui/{uid} {home.plist}",
    ]

    r = home.tokend("uninstall", "--launchd")
    assert r.returncode == 0, r.stderr
    assert home.calls() == [
        f"launchctl print gui/{uid}/dev.tokend",
        f"launchctl bootout gui/{uid}/dev.tokend",
    ]
    assert not home.plist.exists()
    assert r.stdout.splitlines() == [f"unloaded dev.tokend from gui/{uid}", f"removed {home.plist}"]
    r = home.tokend("uninstall", "--launchd")
    assert r.returncode == 0 and "nothing to do" in r.stdout and home.calls() == []


def test_missing_service_manager_says_what_to_do(short_tmp: Path) -> None:
    """No systemctl / launchctl on PATH: exit 1, one line with the alternative, and
    nothing written."""
    home = Home(short_tmp, ())
    r = home.tokend("install", "--systemd")
    assert r.returncode == 1
    assert r.stderr.startswith("tokend: install: systemctl not found")
    assert "`tokend run` under your own supervisor" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    r = home.tokend("install", "--launchd")
    assert r.returncode == 1 and "launchctl not found" in r.stderr
    assert not any(home.home.iterdir())


def test_no_user_manager_install_writes_nothing_and_uninstall_cleans_up(home: Home) -> None:
    """systemctl --user cannot reach a user manager (no systemd as PID 1, or su, cron, no
    linger).
    1. install: exit 1, one line, no traceback, and no unit file left behind. Without
       systemd as PID 1 (sd_booted: /run/systemd/system), the line says so and names what
       to do instead, never loginctl; with it, the line gives the loginctl fix.
    2. An older install's unit file: without systemd, uninstall removes it (exit 0);
       with it, uninstall keeps it (a manager we cannot reach may run it) and says why.
    3. Once the manager answers, install just works.
    This machine takes one branch of each; which one is printed."""
    booted = Path("/run/systemd/system").is_dir()
    print(f"systemd is PID 1 here: {booted}")
    r = home.tokend("install", "--systemd", STUB_BUS_DOWN="1")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not any(home.home.iterdir()), "install left the unit (or its directory) behind"
    if booted:
        assert "Failed to connect to bus" in r.stderr
        assert "loginctl enable-linger $USER" in r.stderr and "Nothing was written" in r.stderr
    else:
        assert "this machine does not run systemd (PID 1 is " in r.stderr
        assert "nothing was written" in r.stderr and "`tokend run` from" in r.stderr
        assert "loginctl" not in r.stderr

    home.unit.parent.mkdir(parents=True)
    home.unit.write_text("[Unit]\nDescription=from an older install\n")
    r = home.tokend("uninstall", "--systemd", STUB_BUS_DOWN="1")
    if booted:
        assert r.returncode == 1 and "loginctl enable-linger" in r.stderr
        assert home.unit.exists()
        home.unit.unlink()
    else:
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"removed {home.unit} (this machine does not run systemd")
        assert not home.unit.exists()

    home.calls()
    r = home.tokend("install", "--systemd")
    assert r.returncode == 0, r.stderr
    assert home.unit.exists()


def test_a_failing_launchctl_says_what_was_done_and_what_failed(home: Home) -> None:
    """launchctl refuses (the stub fails every command): exit 1, one line naming what
    was already done and the command that failed, no traceback."""
    uid = os.getuid()
    r = home.tokend("install", "--launchd", STUB_BUS_DOWN="1")
    assert r.returncode == 1
    assert r.stderr.startswith(
        f"tokend: install: wrote {home.plist}; `launchctl enable gui/{uid}/dev.tokend` failed: "
        "Failed to connect to bus"
    ), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1


# -- doctor ------------------------------------------------------------------------------


def _lines(out: str) -> dict[str, str]:
    """check name -> status, from doctor's text output."""
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def test_doctor_on_a_healthy_setup(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, home: Home
) -> None:
    """1. ADC (authorized_user) via GOOGLE_APPLICATION_CREDENTIALS, a running tokend,
       the unit installed and reported active, an [openai] table.
    2. doctor: every check OK, exit 0, and no secret in its output."""
    user = fake.write_authorized_user(short_tmp / "adc.json", account="alice@example.com")
    config = (
        f'[profiles.default]\ntoken_uri = "{fake.token_uri}"\n'
        '[profiles.default.openai]\nproject = "my-project"\nlocation = "us-central1"\n'
    )
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(user)}
    assert home.tokend("install", "--systemd").returncode == 0
    fake.lifetime = 50  # under a minute left: said in seconds, not "0m"
    with daemon_factory(config, env=env) as d:
        doctor_env = {**env, "TOKEND_RUNTIME_DIR": str(d.runtime_dir)}
        r = home.tokend("doctor", "--config", str(d.config_path), **doctor_env)
        secrets = fake.secrets()
    assert r.returncode == 0, r.stdout + r.stderr
    assert _lines(r.stdout) == {
        name: "OK"
        for name in (
            "config",
            "adc",
            "runtime",
            "socket",
            "service",
            "token:default",
            "clock",
            "openai:default",
        )
    }, r.stdout
    assert f"authorized_user at {user}" in r.stdout
    assert re.search(r"token:default +valid for [1-4]\ds\b", r.stdout), r.stdout
    assert "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project" in r.stdout
    assert not [s for s in secrets if s in r.stdout + r.stderr]


def test_doctor_on_a_broken_setup(short_tmp: Path, home: Home) -> None:
    """1. No ADC file, a runtime dir open to others, no daemon, no unit installed.
    2. doctor: FAIL lines with the fixes, WARN for what is optional, exit 1; --json
       says the same."""
    runtime = short_tmp / "rt"
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)
    env = {
        "GOOGLE_APPLICATION_CREDENTIALS": str(short_tmp / "nope.json"),
        "TOKEND_RUNTIME_DIR": str(runtime),
    }
    r = home.tokend("doctor", **env)
    assert r.returncode == 1, r.stdout + r.stderr
    status = _lines(r.stdout)
    assert status["adc"] == "FAIL"
    assert status["runtime"] == "FAIL"
    assert status["socket"] == "FAIL"
    assert status["token:default"] == "FAIL"
    assert status["service"] == "WARN"
    assert status["openai:default"] == "WARN"
    assert f"— chmod 700 {runtime}" in r.stdout
    assert "— run `gcloud auth application-default login`" in r.stdout
    socket_line = next(line for line in r.stdout.splitlines() if line.split()[1] == "socket")
    assert socket_line.count("systemctl --user start tokend") == 1, socket_line
    assert "tokend is not running" in socket_line and "tokend install" in socket_line

    r = home.tokend("doctor", "--json", **env)
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False
    assert {c["name"]: c["status"] for c in report["checks"]} == status


def test_doctor_names_an_unsafe_ancestor_of_the_runtime_dir(short_tmp: Path) -> None:
    """The runtime dir is fine (0700, ours) but its parent is world writable without the
    sticky bit: doctor fails it as tokend run would, with the daemon's fix."""
    from tokend import doctor

    parent = short_tmp / "pub"
    parent.mkdir()
    parent.chmod(0o777)
    runtime = parent / "rt"
    runtime.mkdir(mode=0o700)
    check = doctor._runtime_dir(runtime)
    assert (check.status, check.detail) == (
        "FAIL",
        f"{parent}: mode 0777 is group/world writable without the sticky bit, so others "
        f"could swap {runtime} for their own",
    )
    assert check.fix.startswith(f"chmod go-w {parent}, or use a directory of your own")


def test_doctor_says_when_the_installed_unit_is_older_than_tokend(home: Home) -> None:
    """A unit from before the proxy lacks its state dir: the proxy could not keep its
    key. doctor says to install again."""
    assert home.tokend("install", "--systemd").returncode == 0
    unit = home.home / ".config" / "systemd" / "user" / "tokend.service"
    old = "".join(
        line for line in unit.read_text().splitlines(keepends=True) if "StateDirectory" not in line
    )
    unit.write_text(old)
    r = home.tokend("doctor")
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[1:2] == ["service"])
    assert line.startswith("WARN") and "written by an older tokend" in line, r.stdout
    assert "tokend install (again)" in r.stdout
    assert home.tokend("install", "--systemd").returncode == 0
    line = next(ln for ln in home.tokend("doctor").stdout.splitlines() if " service " in ln)
    assert "older tokend" not in line
