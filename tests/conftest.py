"""Shared fixtures: a FakeGoogle per test, short temp dirs, and ``run_daemon()``,
which runs the real ``tokend run`` process and checks its log for leaked secrets."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tokend.testing import FakeGoogle

os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: AF_UNIX socket paths must stay under ~107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="tk", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    with FakeGoogle() as g:
        yield g


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """A test must not leave its threads running (servers, observers)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3
    while True:
        leaked = [
            t
            for t in set(threading.enumerate()) - before
            if t.is_alive() and not t.name.startswith(("tokend-", "asyncio_"))
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"leaked threads: {leaked}"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM ``proc`` and return its exit code; SIGKILL it and return None if it does
    not exit within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@dataclass
class Daemon:
    """A running ``tokend run`` process (see :func:`run_daemon`)."""

    proc: subprocess.Popen[bytes]
    dir: Path
    runtime_dir: Path
    config_path: Path
    log_path: Path
    fake: FakeGoogle
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def file(self, name: str) -> Path:
        return self.runtime_dir / name

    def read(self, name: str) -> bytes | None:
        try:
            return self.file(name).read_bytes()
        except FileNotFoundError:
            return None

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: text in self.log(), timeout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int:
        code = terminate(self.proc, timeout)
        assert code is not None, f"tokend did not stop within {timeout}s of SIGTERM (killed)"
        return code

    def assert_no_secrets(self) -> None:
        text = self.log()
        for secret in self.fake.secrets():
            assert secret not in text, "a secret reached the daemon log"


@contextlib.contextmanager
def run_daemon(
    fake: FakeGoogle,
    directory: Path,
    config: str = "",
    *,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    args: tuple[str, ...] = (),
    unset: tuple[str, ...] = (),
) -> Iterator[Daemon]:
    """Run the real ``tokend run`` with ``config`` (TOML text)
    against ``fake``; stop it with SIGTERM on exit, then scan its log for secrets.

    ``directory`` holds config.toml, daemon.log and the runtime dir ``rt/``.
    """
    runtime = directory / "rt"
    cfg_path = directory / "config.toml"
    cfg_path.write_text(config)
    log_path = directory / "daemon.log"
    full_env = {**os.environ, **fake.env(), "TOKEND_RUNTIME_DIR": str(runtime)}
    full_env.setdefault("TOKEND_TIMEOUT", "2")
    full_env.pop("JOURNAL_STREAM", None)
    full_env.update(env or {})
    for name in unset:
        full_env.pop(name, None)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokend", "run", "--config", str(cfg_path), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=directory,
        )
    d = Daemon(proc, directory, runtime, cfg_path, log_path, fake, full_env)
    try:
        if wait_ready:
            wait_for(lambda: d.log().count("token refreshed") or proc.poll() is not None, 20)
            assert proc.poll() is None, f"tokend exited early:\n{d.log()}"
        yield d
    finally:
        terminate(proc, 5.0)  # tests that care about the exit call d.stop() themselves
        d.assert_no_secrets()


@pytest.fixture
def daemon_factory(fake: FakeGoogle, short_tmp: Path) -> Callable[..., Any]:
    """``with daemon_factory(config) as d:`` — run_daemon bound to this test's fake."""

    def factory(config: str = "", **kw: Any) -> Any:
        return run_daemon(fake, short_tmp, config, **kw)

    return factory
