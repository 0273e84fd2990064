"""Shared fixtures: a FakeGoogle per test, short temp dirs, and ``run_daemon()``,
which runs the real ``tokend run`` process and checks its log for leaked secrets."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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


def sa_config(fake: FakeGoogle, directory: Path, extra: str = "") -> str:
    """A config whose default profile uses a throw-away service-account key (written to
    ``directory/sa.json``), then ``extra`` TOML."""
    creds = fake.write_service_account(directory / "sa.json")
    return f'[profiles.default]\ncredentials = "{creds}"\n{extra}'


def tokend_env(
    fake: FakeGoogle,
    runtime: Path,
    extra: Mapping[str, str] | None = None,
    unset: tuple[str, ...] = (),
) -> dict[str, str]:
    """The environment every ``tokend`` process of the tests gets: pointed at ``fake``
    and at ``runtime`` (its state dir beside it), a 2 s fetch timeout, no journald;
    then ``extra``, less ``unset``."""
    env = {
        **os.environ,
        **fake.env(),
        "TOKEND_RUNTIME_DIR": str(runtime),
        "TOKEND_STATE_DIR": str(runtime.parent / "state"),
        "TOKEND_TIMEOUT": "2",
    }
    env.pop("JOURNAL_STREAM", None)
    env.update(extra or {})
    for name in unset:
        env.pop(name, None)
    return env


@dataclass
class Launched:
    """A ``tokend run`` process (:func:`launch`); its log is its own file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM and the exit code; None if it had to be killed after ``timeout``."""
        return terminate(self.proc, timeout)


def launch(
    config_path: Path,
    log_path: Path,
    env: dict[str, str],
    *,
    args: tuple[str, ...] = (),
    prefix: tuple[str, ...] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> Launched:
    """Start ``tokend run --config config_path`` (the one way the tests start it), its
    output appended to ``log_path``; ``prefix`` runs it under another command
    (``setpriv …``), ``preexec_fn`` in the child before exec (resource limits)."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tokend", "run", "--config", str(config_path), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=config_path.parent,
            preexec_fn=preexec_fn,
        )
    return Launched(proc, log_path, env)


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
        for key in local_keys(self.dir / "state"):
            assert key not in text, "a local proxy key reached the daemon log"


def local_keys(state_dir: Path) -> list[str]:
    """The proxy's local keys kept in ``state_dir`` (none when it has no keys file)."""
    import json

    try:
        doc = json.loads((state_dir / "proxy-keys.json").read_text())
    except (OSError, ValueError):
        return []
    return [k["key"] for k in doc.get("keys", []) if isinstance(k, dict) and "key" in k]


@contextlib.contextmanager
def run_daemon(
    fake: FakeGoogle,
    directory: Path,
    config: str = "",
    *,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    args: tuple[str, ...] = (),
    unset: tuple[str, ...] = (),
    prefix: tuple[str, ...] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Daemon]:
    """Run the real ``tokend run`` with ``config`` (TOML text) against ``fake``; wait for
    its first token (unless ``wait_ready=False``); stop it with SIGTERM on exit, then
    scan its log for secrets.

    ``directory`` holds config.toml, daemon.log and the runtime dir ``rt/``.
    """
    runtime = directory / "rt"
    cfg_path = directory / "config.toml"
    cfg_path.write_text(config)
    log_path = directory / "daemon.log"
    full_env = tokend_env(fake, runtime, env, unset)
    launched = launch(cfg_path, log_path, full_env, args=args, prefix=prefix, preexec_fn=preexec_fn)
    d = Daemon(launched.proc, directory, runtime, cfg_path, log_path, fake, full_env)
    try:
        if wait_ready:
            wait_for(lambda: "token refreshed" in d.log() or d.proc.poll() is not None, 20)
            assert d.proc.poll() is None, f"tokend exited early:\n{d.log()}"
        yield d
    finally:
        terminate(d.proc, 5.0)  # tests that care about the exit call d.stop() themselves
        d.assert_no_secrets()


@pytest.fixture
def daemon_factory(fake: FakeGoogle, short_tmp: Path) -> Callable[..., Any]:
    """``with daemon_factory(config) as d:`` — run_daemon bound to this test's fake."""

    def factory(config: str = "", **kw: Any) -> Any:
        return run_daemon(fake, short_tmp, config, **kw)

    return factory


# -- another user ---------------------------------------------------------------------


@pytest.fixture
def other_user() -> Iterator[tuple[str, int, str]]:
    """(name, uid, python) of a throw-away user that exists for this test only; run a
    command as it with :func:`as_user`. Skips without root, ``useradd`` or ``setpriv``."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create and become another user")
    for tool in ("useradd", "userdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    name = f"tkp{secrets.token_hex(4)}"
    made = subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    try:
        python = runnable_python(name)
        yield name, pwd.getpwnam(name).pw_uid, python
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


def runnable_python(user: str) -> str:
    """sys.executable, or a system one: the venv's may live in a private home."""
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            subprocess.run(
                [*as_user(user), python, "-I", "-c", "pass"],
                check=True,
                capture_output=True,
                timeout=10,
                cwd="/",
            )
        except (OSError, subprocess.SubprocessError):
            continue
        return python
    pytest.skip(f"no Python interpreter that {user} may run")


def as_user(user: str) -> list[str]:
    """The prefix that runs a command as ``user`` (no supplementary groups)."""
    return ["setpriv", "--reuid", user, "--regid", user, "--clear-groups"]
