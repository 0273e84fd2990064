"""End to end: the real ``tokend run`` process against FakeGoogle, lifetimes of seconds.

Each test is a scenario; the steps are numbered in its docstring.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Daemon, sa_config, wait_for
from tokend.testing import FakeGoogle

SA_EMAIL = "sa@fake-project.iam.gserviceaccount.com"


def current(d: Daemon) -> dict[str, object] | None:
    raw = d.read("token.json")
    return None if raw is None else json.loads(raw)


def current_token(d: Daemon) -> str | None:
    data = current(d)
    return None if data is None else str(data["access_token"])


def rotations(d: Daemon, n: int, timeout: float) -> list[tuple[str, float]]:
    """Collect ``n`` distinct tokens from token.json, each with when it was first seen."""
    seen: list[tuple[str, float]] = []

    def more() -> bool:
        tok = current_token(d)
        if tok and (not seen or seen[-1][0] != tok):
            seen.append((tok, time.time()))
        return len(seen) >= n

    wait_for(more, timeout, interval=0.02)
    return seen


# -- every credential kind ----------------------------------------------------------------


def _kinds(fake: FakeGoogle, d: Path) -> dict[str, tuple[str, dict[str, str], str]]:
    """kind -> (config, extra env, identity FakeGoogle records for its tokens)."""
    sa = fake.write_service_account(d / "sa.json")
    user = fake.write_authorized_user(d / "user.json", account="alice@example.com")
    subject = d / "subject.txt"
    subject.write_text("subject-token-from-an-external-idp")
    ext = fake.write_external_account(d / "ext.json", subject, account="wif@example.com")
    return {
        "service_account": (f'[profiles.default]\ncredentials = "{sa}"\n', {}, SA_EMAIL),
        "authorized_user": (
            f'[profiles.default]\ncredentials = "{user}"\ntoken_uri = "{fake.token_uri}"\n',
            {},
            "alice@example.com",
        ),
        "adc_authorized_user": (
            f'[profiles.default]\ntoken_uri = "{fake.token_uri}"\n',
            {"GOOGLE_APPLICATION_CREDENTIALS": str(user)},
            "alice@example.com",
        ),
        "metadata": (
            '[profiles.default]\ncredentials = "metadata"\n',
            {},
            "vm@fake-project.iam.gserviceaccount.com",
        ),
        "impersonation": (
            f'[profiles.default]\ncredentials = "{sa}"\n'
            f'impersonate = "target@fake-project.iam.gserviceaccount.com"\n'
            f'iam_endpoint = "{fake.iam_endpoint}"\n',
            {},
            "target@fake-project.iam.gserviceaccount.com",
        ),
        "external_account": (
            f'[profiles.default]\ncredentials = "{ext}"\n',
            {},
            "wif@example.com",
        ),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "service_account",
        "authorized_user",
        "adc_authorized_user",
        "metadata",
        "impersonation",
        "external_account",
    ],
)
def test_files_rotate_before_expiry_for_every_credential_kind(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: object, kind: str
) -> None:
    """1. Start tokend with 4-second tokens for one credential kind.
    2. The three default files appear, 0600, in a 0700 runtime dir, holding the token.
    3. token.json rotates, the new token in place while the one it replaced was still
       valid (unless the refresh came late on a loaded machine: then the daemon says
       so, having removed the old files in time), and every token belongs to the
       expected identity."""
    config, env, identity = _kinds(fake, short_tmp)[kind]
    fake.lifetime = 4.0  # a shorter one leaves a refresh a fraction of a second to land
    with daemon_factory(config, env=env) as d:  # type: ignore[operator]
        assert oct(d.runtime_dir.stat().st_mode & 0o777) == "0o700"
        files = {name: d.read(name) for name in ("token", "token.json", "openai.env")}
        for name in files:
            assert oct(d.file(name).stat().st_mode & 0o777) == "0o600", name
        first = current_token(d)
        assert files["token"] == (first or "").encode()
        assert (files["openai.env"] or b"").startswith(b"OPENAI_API_KEY=ya29.")
        if kind in ("service_account", "impersonation"):
            assert (current(d) or {})["account"] == identity
        seen = rotations(d, 2, timeout=12)
        late = "expired with no successor" in d.log()
        for (old, _), (_, replaced_at) in itertools.pairwise(seen):
            assert late or replaced_at < (fake.expires_at(old) or 0.0), "replaced after expiry"
        for tok, _ in seen:
            assert fake.who(tok) == identity
        assert "token refreshed" in d.log()


def test_invalid_grant_needs_reauth_and_recovers_when_the_file_changes(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: object
) -> None:
    """1. A user login (authorized_user) with 30-second tokens.
    2. The grant is revoked and a refresh is forced: state reauth_required, a log line
       with the gcloud fix, no retry on a timer, the old token still served.
    3. `gcloud auth application-default login` rewrites the file: a new token at once."""
    fake.lifetime = 30.0
    user = fake.write_authorized_user(short_tmp / "adc.json", account="alice@example.com")
    config = f'[profiles.default]\ncredentials = "{user}"\ntoken_uri = "{fake.token_uri}"\n'
    with daemon_factory(config) as d:  # type: ignore[operator]
        first = current_token(d)
        fake.invalid_grant()
        d.signal(signal.SIGUSR1)
        d.wait_log("reauth_required")
        assert f"log in again or replace {user}" in d.log()
        calls = fake.calls["token"]
        time.sleep(2)
        assert fake.calls["token"] == calls  # not retried on a timer
        assert current_token(d) == first
        fake.clear_faults()
        t0 = time.monotonic()
        fake.write_authorized_user(user, account="alice@example.com")  # a fresh login
        wait_for(lambda: current_token(d) != first, timeout=5)
        assert time.monotonic() - t0 < 3
        assert fake.who(current_token(d)) == "alice@example.com"


def test_first_login_after_start_is_picked_up(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: object
) -> None:
    """1. No ADC anywhere (a fresh laptop): tokend starts, says what to run, serves nothing.
    2. `gcloud auth application-default login` creates ~/.config/gcloud and the ADC
       file: tokend notices (the directory did not exist when it started) and the
       token files appear within a few seconds."""
    home = short_tmp / "home"
    home.mkdir()
    config = f'[profiles.default]\ntoken_uri = "{fake.token_uri}"\n'
    unset = (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "CLOUDSDK_CONFIG",
        "GCE_METADATA_HOST",
        "GCE_METADATA_IP",
    )
    with daemon_factory(  # type: ignore[operator]
        config, env={"HOME": str(home)}, unset=unset, wait_ready=False
    ) as d:
        d.wait_log("gcloud auth application-default login")
        assert "credentials_missing" in d.log()
        assert d.read("token") is None
        gcloud = home / ".config" / "gcloud"
        gcloud.mkdir(parents=True)
        fake.write_authorized_user(
            gcloud / "application_default_credentials.json", account="me@x.com"
        )
        wait_for(lambda: d.read("token.json") is not None, timeout=5)
        assert fake.who(current_token(d)) == "me@x.com"


def test_deleted_files_and_runtime_dir_are_rewritten(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: object
) -> None:
    """1. A sink file is deleted: rewritten within a second.
    2. The whole runtime dir is deleted: recreated 0700 with all files within a second,
       and the socket answers again."""
    with daemon_factory(sa_config(fake, short_tmp)) as d:  # type: ignore[operator]
        tok = current_token(d)
        d.file("token").unlink()
        wait_for(lambda: d.read("token") == tok.encode(), timeout=1.5)
        # Move it away first: a plain rmtree races with the daemon's repair (it can
        # recreate a file between rmtree's unlinks and its rmdir).
        gone = d.runtime_dir.with_name("rt-gone")
        d.runtime_dir.rename(gone)
        shutil.rmtree(gone)
        wait_for(lambda: d.read("openai.env") is not None and d.read("token") is not None, 1.5)
        assert oct(d.runtime_dir.stat().st_mode & 0o777) == "0o700"
        assert current_token(d) == tok
        sock = d.file("tokend.sock")
        wait_for(sock.exists, timeout=1.5)
        status = subprocess.run(
            [sys.executable, "-m", "tokend", "status", "--json"],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert '"fresh"' in status.stdout


def test_sighup_and_config_edits_reload_and_bad_config_is_ignored(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: object
) -> None:
    """1. Running with the default sinks.
    2. The config gains an env sink elsewhere (file edited): it appears.
    3. The socket path changes: a warning that it needs a restart; still served.
    4. A broken config (SIGHUP): logged, the daemon keeps running on the old one."""
    config = sa_config(fake, short_tmp)
    with daemon_factory(config) as d:  # type: ignore[operator]
        d.config_path.write_text(
            config + '[[profiles.default.sinks]]\npath = "only.env"\nformat = "env"\n'
        )
        wait_for(lambda: d.read("only.env") is not None, timeout=5)
        assert d.read("token.json") is None  # default sinks replaced by the configured one
        d.config_path.write_text(
            '[socket]\npath = "moved.sock"\n'
            + config
            + '[[profiles.default.sinks]]\npath = "only.env"\nformat = "env"\n'
        )
        d.wait_log("socket settings changed: they take effect when tokend restarts")
        assert d.file("tokend.sock").exists()
        d.config_path.write_text(config + "bogus = 1\n")
        d.signal(signal.SIGHUP)
        d.wait_log("configuration not reloaded, keeping the running one")
        assert "bogus: unknown key" in d.log()
        assert d.proc.poll() is None
        assert d.read("only.env") is not None


def test_sigterm_exits_0_within_a_second_and_keeps_valid_files(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: object
) -> None:
    """1. SIGTERM while a refresh hangs on the network: exit 0 in under a second.
    2. The still-valid token files stay; a restart serves them until its own refresh."""
    with daemon_factory(sa_config(fake, short_tmp)) as d:  # type: ignore[operator]
        tok = current_token(d)
        fake.hang(30)
        d.signal(signal.SIGUSR1)
        time.sleep(0.3)
        t0 = time.monotonic()
        assert d.stop(timeout=5) == 0
        assert time.monotonic() - t0 < 1.0
        fake.clear_faults()
        assert current_token(d) == tok


def test_run_once(fake: FakeGoogle, short_tmp: Path) -> None:
    """``tokend run --once``: writes the files and exits 0; revoked credentials exit 3
    with one line naming the fix."""
    config = short_tmp / "config.toml"
    user = fake.write_authorized_user(short_tmp / "user.json")
    config.write_text(
        f'[profiles.default]\ncredentials = "{user}"\ntoken_uri = "{fake.token_uri}"\n'
    )
    env = {**os.environ, **fake.env(), "TOKEND_RUNTIME_DIR": str(short_tmp / "rt")}
    cmd = [sys.executable, "-m", "tokend", "run", "--once", "--config", str(config)]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert fake.is_valid((short_tmp / "rt" / "token").read_text())
    fake.invalid_grant()
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 3
    assert f"invalid_grant; log in again or replace {user}" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    for secret in fake.secrets():
        assert secret not in ok.stderr + bad.stderr


def test_run_once_opens_no_socket_so_its_path_length_does_not_matter(
    fake: FakeGoogle, short_tmp: Path
) -> None:
    """A runtime dir too deep for an AF_UNIX path: the daemon refuses it (exit 2), but
    `--once` serves no socket, so it writes its files."""
    deep = short_tmp / ("d" * 60) / ("e" * 60)
    config = short_tmp / "config.toml"
    config.write_text(sa_config(fake, short_tmp))
    env = {**os.environ, **fake.env(), "TOKEND_RUNTIME_DIR": str(deep)}
    cmd = [sys.executable, "-m", "tokend", "run", "--config", str(config)]
    daemon = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert daemon.returncode == 2 and "socket" in daemon.stderr
    once = subprocess.run([*cmd, "--once"], env=env, capture_output=True, text=True, timeout=30)
    assert once.returncode == 0, once.stderr
    assert fake.is_valid((deep / "token").read_text())


def test_unsafe_runtime_dir_is_refused(fake: FakeGoogle, short_tmp: Path) -> None:
    rt = short_tmp / "rt"
    rt.mkdir(mode=0o755)
    rt.chmod(0o755)
    config = short_tmp / "config.toml"
    config.write_text(sa_config(fake, short_tmp))
    proc = subprocess.run(
        [sys.executable, "-m", "tokend", "run", "--config", str(config)],
        env={**os.environ, **fake.env(), "TOKEND_RUNTIME_DIR": str(rt)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert f"chmod 700 {rt}" in proc.stderr
    assert os.listdir(rt) == []


def test_a_socket_directory_that_does_not_exist_is_one_line(
    fake: FakeGoogle, short_tmp: Path
) -> None:
    """An absolute socket.path in a directory that does not exist: exit 2 with one line
    saying what to create (before: a traceback and exit 1, a restart loop under
    systemd's Restart=on-failure), and nothing written."""
    rt = short_tmp / "rt"
    config = short_tmp / "config.toml"
    config.write_text(
        sa_config(fake, short_tmp) + f'[socket]\npath = "{short_tmp}/nodir/tokend.sock"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tokend", "run", "--config", str(config)],
        env={**os.environ, **fake.env(), "TOKEND_RUNTIME_DIR": str(rt)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{short_tmp}/nodir does not exist; create it" in proc.stderr
    assert not rt.exists() or os.listdir(rt) == []
