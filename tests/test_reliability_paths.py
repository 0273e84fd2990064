"""Reliability battery, issue 9 §4 and the runtime-dir bullet of §6: trust in
directories is checked where the write happens, and daemon and clients agree on where
that is. (To be folded into tests/test_reliability.py.)

The real ``tokend run`` against FakeGoogle; faults come from another uid (a throw-away
user made for this module and deleted after it) acting on the filesystem, or from the
configuration. Nothing of tokend is mocked.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, sa_config, terminate, tokend_env, wait_for
from tests.reliability_util import assert_no_secrets, get, profile_status, report
from tokend.testing import FakeGoogle

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create and act as another user",
)


@dataclass
class User:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str) -> None:
        """Run ``argv`` as this user (no supplementary groups), failing loudly."""
        subprocess.run(argv, check=True, user=self.uid, group=self.gid, extra_groups=[], timeout=10)


@pytest.fixture(scope="module")
def mallory() -> Iterator[User]:
    """A throw-away local user, deleted at the end of the module."""
    name = f"tkp{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        pw = pwd.getpwnam(name)
        yield User(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def her_dir(mallory: User) -> Iterator[Path]:
    """Her own directory in /tmp, which she wants our tokens in."""
    d = Path(tempfile.mkdtemp(prefix="tkh", dir="/tmp"))
    os.chown(d, mallory.uid, mallory.gid)
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


#: A refusal comes at once (well under a second); a tokend still running after this
#: has started instead.
REFUSE_WITHIN = 8.0


def start_refused(
    fake: FakeGoogle,
    directory: Path,
    config: str,
    runtime: Path | None,
    env: dict[str, str] | None = None,
) -> tuple[int | None, list[str], float]:
    """``tokend run`` that must refuse to start: (exit code, stderr lines, seconds).
    ``runtime`` is TOKEND_RUNTIME_DIR, or None to unset it and XDG_RUNTIME_DIR, so that
    the default applies. Exit code None: it was still running after REFUSE_WITHIN s."""
    cfg = directory / "config.toml"
    cfg.write_text(config)
    full = tokend_env(fake, runtime or directory / "rt", env)
    if runtime is None:
        full.pop("TOKEND_RUNTIME_DIR")
        full.pop("XDG_RUNTIME_DIR", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokend", "run", "--config", str(cfg)],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=REFUSE_WITHIN)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:  # it started: that is the failure being shown
        terminate(proc, 5.0)
        _, err = proc.communicate()
        code = None
    return code, err.strip().splitlines(), time.monotonic() - t0


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def token_served(sock: Path) -> str | None:
    code, body = get(sock, "/v1/token")
    return json.loads(body)["access_token"] if code == 200 else None


# -- a. the runtime dir (or a sink's dir) swapped for her symlink while tokend runs -------


def _swap_layout(fake: FakeGoogle, top: Path, target: str) -> tuple[str, dict[str, str], Path]:
    """(config, env, the directory she will swap). ``top`` is traversable by her; the
    swapped directory's parent is safe (0755, root's) at start."""
    top.chmod(0o755)
    parent = top / "par"
    parent.mkdir(mode=0o755)
    parent.chmod(0o755)
    sock = f'[socket]\npath = "{top}/tokend.sock"\n'
    if target == "runtime_dir":
        return (
            sock + sa_config(fake, top),
            {"TOKEND_RUNTIME_DIR": str(parent / "rt")},
            parent / "rt",
        )
    sub = parent / "sub"
    sub.mkdir(mode=0o755)
    sinks = (
        f'[[profiles.default.sinks]]\npath = "{sub}/token"\n'
        f'[[profiles.default.sinks]]\npath = "{sub}/token.json"\nformat = "json"\n'
    )
    return sock + sa_config(fake, top, sinks), {}, sub


@needs_root
@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["runtime_dir", "absolute_sink"])
def test_swapped_directory_receives_nothing(
    fake: FakeGoogle,
    short_tmp: Path,
    daemon_factory: Any,
    mallory: User,
    her_dir: Path,
    target: str,
) -> None:
    """1. tokend runs; the runtime dir (or the directory of an absolute sink,
       ``par/sub/token``) sits in ``par``, root's and 0755: safe at start.
    2. ``par`` is loosened to 0777 (no sticky bit). She renames the directory away and
       puts a symlink to her own directory in its place.
    3. SIGUSR1 forces a refresh and so a write, then the sink retries run for a while.
    4. Nothing is ever written into her directory; the new token is served on the
       socket; status names the refusal; the process lives on and stops cleanly."""
    config, env, swapped = _swap_layout(fake, short_tmp, target)
    sock = short_tmp / "tokend.sock"
    with daemon_factory(config, env=env) as d:
        first = token_served(sock)
        assert first is not None and (swapped / "token").exists()
        issued = len(fake.issued)
        # -- the attack
        swapped.parent.chmod(0o777)
        mallory.run("mv", str(swapped), f"{swapped}.old")
        mallory.run("ln", "-s", str(her_dir), str(swapped))
        t0 = time.time()
        d.signal(signal.SIGUSR1)
        wait_for(lambda: len(fake.issued) > issued, timeout=10)
        wait_for(
            lambda: (
                os.listdir(her_dir)
                or profile_status(sock)["last_error_reason"] == "sink_write_failed"
            ),
            timeout=5,
        )
        time.sleep(2.5)  # a few sink retries (one a second) and repair attempts
        found = sorted(os.listdir(her_dir))
        served = token_served(sock)
        snap = profile_status(sock)
        alive = d.proc.poll() is None
        log = d.log()
        code = d.stop()
    refusal = f"{swapped.parent}: mode 0777 is group/world writable without the sticky bit"
    figures = {
        "target": target,
        "files_in_her_dir": found,
        "socket_served_new_token": served not in (None, first),
        "status_reason": snap["last_error_reason"],
        "refusal_in_status": refusal in snap["last_error"],
        "error_lines_logged": log.count("the previous file is left intact"),
        "alive_after_s": round(time.time() - t0, 1),
        "exit_code": code,
        "secrets_scanned_texts": assert_no_secrets(fake, {"log": log, "status": str(snap)}),
    }
    report(f"paths[swap {target}]", **figures)
    assert found == [], figures
    assert alive and code == 0, figures
    assert served not in (None, first) and fake.is_valid(served or ""), figures
    assert snap["last_error_reason"] == "sink_write_failed" and refusal in snap["last_error"]
    assert figures["error_lines_logged"] == 1, figures  # logged once, not once per retry


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["runtime_dir", "absolute_sink"])
def test_swappable_directory_is_refused_at_start(
    fake: FakeGoogle, short_tmp: Path, target: str
) -> None:
    """1. The runtime dir's parent (or, for ``pub/sub/token``, the sink directory's
       parent ``pub``) is world writable without the sticky bit from the start.
    2. ``tokend run`` exits 2 at once with one line naming that directory and the fix.
    3. Nothing is written: no runtime dir, no token file."""
    loose = short_tmp / "pub"
    loose.mkdir()
    loose.chmod(0o777)
    if target == "runtime_dir":
        runtime = loose / "rt"
        config = sa_config(fake, short_tmp)
        written = runtime
    else:
        runtime = short_tmp / "rt"
        (loose / "sub").mkdir(mode=0o755)
        written = loose / "sub" / "token"
        config = sa_config(fake, short_tmp, f'[[profiles.default.sinks]]\npath = "{written}"\n')
    code, lines, seconds = start_refused(fake, short_tmp, config, runtime)
    figures = {
        "target": target,
        "exit_code": code,
        "stderr_lines": len(lines),
        "seconds": round(seconds, 2),
        "written": written.exists(),
    }
    report(f"paths[refused at start {target}]", **figures)
    assert code == 2 and len(lines) == 1, (figures, lines)
    assert f"{loose}: mode 0777 is group/world writable without the sticky bit" in lines[0]
    assert f"fix: chmod go-w {loose}" in lines[0]
    assert not written.exists(), figures


# -- c. sink paths that leave the runtime dir or alias the socket ------------------------

BAD_SINKS = {
    "dotdot": ("../x", '../x: ".." is not allowed in a sink path'),
    "socket_relative": ("./tokend.sock", "{rt}/tokend.sock is the socket (socket.path)"),
    "socket_absolute": ("{rt}/tokend.sock", "{rt}/tokend.sock is the socket (socket.path)"),
    "runtime_dir": (".", "{rt} is the runtime dir itself"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(BAD_SINKS))
def test_sink_leaving_or_aliasing_is_refused(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, kind: str
) -> None:
    """1. A sink path with ``..``, or naming the socket or the runtime dir.
    2. At start: exit 2, one line with the key, nothing written (no runtime dir).
    3. As a reload (SIGHUP) of a running tokend: refused with the same line, the running
       configuration kept, the socket still a socket that serves the token, nothing
       written outside the runtime dir."""
    rt = short_tmp / "rt"
    raw, expected = (s.replace("{rt}", str(rt)) for s in BAD_SINKS[kind])
    bad = sa_config(fake, short_tmp, f'[[profiles.default.sinks]]\npath = "{raw}"\n')
    key = "profiles.default.sinks[0].path: "
    code, lines, seconds = start_refused(fake, short_tmp, bad, rt)
    at_start = {
        "kind": kind,
        "exit_code": code,
        "stderr_lines": len(lines),
        "seconds": round(seconds, 2),
        "runtime_dir_created": rt.exists(),
        "outside": sorted(p.name for p in short_tmp.iterdir()),
    }
    report(f"paths[bad sink {kind} at start]", **at_start)
    assert code == 2 and len(lines) == 1 and f"{key}{expected}" in lines[0], (at_start, lines)
    assert not rt.exists() and "x" not in at_start["outside"], at_start
    # -- the same as a reload
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        assert token_served(sock)
        d.config_path.write_text(bad)
        d.signal(signal.SIGHUP)
        d.wait_log("reloaded")  # "configuration not reloaded: ..." or "... reloaded: N"
        time.sleep(1.5)  # a sink retry / repair would have written by now
        refusals = [ln for ln in d.log().splitlines() if "not reloaded" in ln]
        still_socket = is_socket(sock)
        served = token_served(sock) if still_socket else None
        outside = sorted(p.name for p in short_tmp.iterdir())
    on_reload = {
        "kind": kind,
        "refusals_logged": len(refusals),
        "socket_intact": still_socket,
        "served_after_reload": served is not None,
        "outside": outside,
    }
    report(f"paths[bad sink {kind} on reload]", **on_reload)
    assert len(refusals) == 1 and f"{key}{expected}" in refusals[0], on_reload
    assert still_socket and served is not None and "x" not in outside, on_reload


# -- d. a fallback runtime dir made beforehand by another user ---------------------------


@needs_root
@pytest.mark.timeout(60)
@pytest.mark.skipif(
    os.path.isdir(f"/run/user/{os.geteuid()}"), reason="/run/user/$UID exists: no fallback"
)
@pytest.mark.parametrize("mode", [0o700, 0o777], ids=["0700", "0777"])
def test_fallback_runtime_dir_of_another_user(
    fake: FakeGoogle, short_tmp: Path, mallory: User, mode: int
) -> None:
    """1. No XDG_RUNTIME_DIR, no TOKEND_RUNTIME_DIR: the default is
       ``$TMPDIR/runtime-$UID/tokend``. ``$TMPDIR`` is a fresh sticky dir like /tmp.
    2. She made ``$TMPDIR/runtime-0`` first (0700: we could not even enter it as
       anyone but root; or 0777).
    3. ``tokend run`` exits 2 with one line naming that directory and her, no traceback
       (which ``Restart=on-failure`` would turn into a restart loop); nothing is
       created in her directory."""
    tmp = short_tmp / "t"
    tmp.mkdir()
    tmp.chmod(0o1777)
    short_tmp.chmod(0o755)
    planted = tmp / f"runtime-{os.geteuid()}"
    mallory.run("mkdir", "-m", f"{mode:o}", str(planted))
    code, lines, seconds = start_refused(
        fake, short_tmp, sa_config(fake, short_tmp), None, {"TMPDIR": str(tmp)}
    )
    figures = {
        "mode": f"{mode:04o}",
        "exit_code": code,
        "stderr_lines": len(lines),
        "traceback": any("Traceback" in ln for ln in lines),
        "seconds": round(seconds, 2),
        "created_inside": os.listdir(planted),
    }
    report(f"paths[fallback of another user {mode:04o}]", **figures)
    assert code == 2 and len(lines) == 1, (figures, lines)
    assert f"{planted}: owned by uid {mallory.uid} ({mallory.name})" in lines[0], lines
    assert "runtime_dir / TOKEND_RUNTIME_DIR" in lines[0], lines
    assert os.listdir(planted) == [], figures


# -- e. clients and daemon name the same runtime dir -------------------------------------

WHERE = """
from tokend import client
print(client.socket_path()); print(client.token_file_path())
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    os.path.isdir(f"/run/user/{os.geteuid()}"), reason="/run/user/$UID exists: no fallback"
)
def test_client_and_daemon_agree_without_xdg_runtime_dir(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. XDG_RUNTIME_DIR and TOKEND_RUNTIME_DIR unset; TMPDIR points to a fresh dir.
    2. Before the daemon starts, a client process names the socket and token file.
    3. The daemon starts and says which runtime dir it uses; the client's names are
       in it, and ``tokend token`` and ``. scripts/tokend-env.sh`` get the token.
    4. After the daemon stops, ``tokend status`` names the same socket."""
    tmp = short_tmp / "t"
    tmp.mkdir(mode=0o700)
    env = {"TMPDIR": str(tmp), "HOME": str(short_tmp)}
    unset = ("XDG_RUNTIME_DIR", "TOKEND_RUNTIME_DIR", "XDG_CONFIG_HOME")
    client_env = {k: v for k, v in os.environ.items() if k not in unset}
    client_env.update(env, TOKEND_CONFIG=str(short_tmp / "config.toml"))

    def client_names() -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", WHERE], env=client_env, capture_output=True, text=True
        )
        return out.stdout.split()

    before = client_names()
    with daemon_factory(sa_config(fake, short_tmp), env=env, unset=unset) as d:
        line = next(ln for ln in d.log().splitlines() if "runtime dir" in ln)
        runtime = Path(line.rsplit("runtime dir ", 1)[1])
        during = client_names()
        got = subprocess.run(
            [sys.executable, "-m", "tokend", "token"],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        shim = subprocess.run(
            ["sh", "-c", f'. "{ROOT}/scripts/tokend-env.sh" && printf %s "$OPENAI_API_KEY"'],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        d.stop()
    status = subprocess.run(
        [sys.executable, "-m", "tokend", "status"],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    expected = [str(runtime / "tokend.sock"), str(runtime / "token.json")]
    figures = {
        "daemon_runtime_dir": str(runtime),
        "client_before_start": before,
        "client_while_running": during,
        "token_exit_code": got.returncode,
        "tokend_env_sh": [shim.returncode, shim.stderr.strip()],
        "status_names_daemon_socket": expected[0] in status.stderr + status.stdout,
    }
    report("paths[client and daemon agree]", **figures)
    assert runtime == tmp / f"runtime-{os.geteuid()}" / "tokend", figures
    assert before == during == expected, figures
    assert got.returncode == 0 and fake.is_valid(got.stdout.strip()), figures
    assert shim.returncode == 0 and shim.stdout == got.stdout.strip(), figures
    assert figures["status_names_daemon_socket"], (status.stdout, status.stderr)
