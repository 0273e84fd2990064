"""The client-side commands (`tokend token|env|exec|status`) and the POSIX shell shim,
run as a user would, against a real daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_for
from tokend.testing import FakeGoogle

SHIM = ROOT / "tokend" / "tokend-env.sh"
BASE_URL = (
    "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project"
    "/locations/europe-west4/endpoints/openapi"
)


@pytest.fixture
def d(daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path) -> Iterator[Any]:
    """A daemon whose default profile has an [openai] table (so OPENAI_BASE_URL is known)."""
    sa = fake.write_service_account(short_tmp / "sa.json")
    config = (
        f'[profiles.default]\ncredentials = "{sa}"\n'
        '[profiles.default.openai]\nproject = "my-project"\nlocation = "europe-west4"\n'
    )
    with daemon_factory(config) as daemon:
        yield daemon


def client_env(d: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TOKEND_"))}
    env["TOKEND_RUNTIME_DIR"] = str(d.runtime_dir)
    env["TOKEND_CONFIG"] = str(d.config_path)
    return env


def tokend(d: Any, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokend", *args],
        capture_output=True,
        text=True,
        env=kw.pop("env", None) or client_env(d),
        timeout=kw.pop("timeout", 20),
        **kw,
    )


def file_token(d: Any) -> str:
    return str(json.loads(d.read("token.json") or b"{}")["access_token"])


# -- token ------------------------------------------------------------------------------


def test_token_formats(d: Any, fake: FakeGoogle) -> None:
    raw = tokend(d, "token")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == file_token(d) + "\n"
    assert fake.is_valid(raw.stdout.strip())
    obj = json.loads(tokend(d, "token", "--format", "json").stdout)
    assert obj["access_token"] == raw.stdout.strip() and obj["token_type"] == "Bearer"
    assert obj["profile"] == "default" and obj["expires_in"] > 0
    header = tokend(d, "token", "--format", "header").stdout
    assert header == f"Authorization: Bearer {raw.stdout.strip()}\n"


def test_token_without_daemon_exits_1_with_one_line(short_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env.update(TOKEND_RUNTIME_DIR=str(short_tmp), TOKEND_CONFIG=str(short_tmp / "none.toml"))
    out = subprocess.run(
        [sys.executable, "-m", "tokend", "token"],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokend: ")
    assert "systemctl --user start tokend" in lines[0]


@pytest.mark.parametrize("shell", ["sh", "fish"])
def test_eval_of_a_failed_env_fails(short_tmp: Path, shell: str) -> None:
    """`eval "$(tokend env)"` with no token to be had fails, so a `set -e` script stops
    instead of going on without a key."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env.update(TOKEND_RUNTIME_DIR=str(short_tmp), TOKEND_CONFIG=str(short_tmp / "none.toml"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    script = (
        'set -e; eval "$(tokend env)"; echo reached'
        if shell == "sh"
        else "eval (tokend env --format fish); or exit 1; echo reached"
    )
    out = subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env, timeout=20)
    assert out.returncode != 0 and "reached" not in out.stdout, out
    assert "tokend: no token for profile 'default'" in out.stderr


def test_reauth_required_is_explained(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. An ADC (authorized_user) profile whose refresh token Google revoked.
    2. `tokend token` exits 1 and tells the user to log in again."""
    adc = fake.write_authorized_user(short_tmp / "adc.json")
    fake.invalid_grant()
    config = f'[profiles.default]\ncredentials = "adc"\ntoken_uri = "{fake.token_uri}"\n'
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(adc)}
    with daemon_factory(config, env=env, wait_ready=False) as daemon:
        wait_for(lambda: "reauth" in daemon.log() or "gcloud" in daemon.log())
        out = tokend(daemon, "token")
        assert out.returncode == 1
        assert "gcloud auth application-default login" in out.stderr
        assert len(out.stderr.splitlines()) == 1


# -- env --------------------------------------------------------------------------------


def test_env_formats(d: Any) -> None:
    token = file_token(d)
    expires_at = str(int(time.time()) + 1)

    sh = tokend(d, "env").stdout
    for shell in filter(shutil.which, ("sh", "dash", "bash")):
        out = subprocess.run(
            [
                shell,
                "-c",
                'eval "$1"; printf "%s|%s|%s" '
                '"$OPENAI_API_KEY" "$OPENAI_BASE_URL" "$TOKEND_EXPIRES_AT"',
                "_",
                sh,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        key, url, exp = out.stdout.split("|")
        assert (key, url) == (token, BASE_URL), shell
        assert int(exp) > int(expires_at) - 2

    fish = tokend(d, "env", "--format", "fish").stdout.splitlines()
    assert [line.split()[2] for line in fish] == [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "TOKEND_EXPIRES_AT",
    ]
    assert all(re.fullmatch(r"set -gx [A-Z_]+ '[^'\\]*';", line) for line in fish), fish
    assert fish[0] == f"set -gx OPENAI_API_KEY '{token}';"

    dotenv = dict(
        line.split("=", 1) for line in tokend(d, "env", "--format", "dotenv").stdout.splitlines()
    )
    assert dotenv["OPENAI_API_KEY"] == token and dotenv["OPENAI_BASE_URL"] == BASE_URL
    as_json = json.loads(tokend(d, "env", "--format", "json").stdout)
    assert as_json == dotenv


# -- exec -------------------------------------------------------------------------------


def test_exec_sets_env_and_propagates_exit_codes(d: Any) -> None:
    code = (
        "import os, sys; e = os.environ; "
        "print(e['OPENAI_API_KEY'], e['OPENAI_BASE_URL'], e['TOKEND_EXPIRES_AT']); sys.exit(7)"
    )
    out = tokend(d, "exec", "--", sys.executable, "-c", code)
    assert out.returncode == 7
    key, url, exp = out.stdout.split()
    assert key == file_token(d) and url == BASE_URL and int(exp) > time.time()
    # The argv is passed as is: no shell, no word splitting.
    out = tokend(
        d, "exec", "--", sys.executable, "-c", "import sys; print(sys.argv[1:])", "a b", "$HOME"
    )
    assert out.stdout.strip() == "['a b', '$HOME']"
    assert tokend(d, "exec", "--", "/nonexistent/cmd").returncode == 127
    assert tokend(d, "exec").returncode == 2


TRAP = """
import signal, sys, time
def on(sig, frame):
    print("got", signal.Signals(sig).name, flush=True)
    if sig == signal.SIGTERM:
        sys.exit(42)
for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
    signal.signal(s, on)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_exec_forwards_signals(d: Any) -> None:
    """1. A child that traps USR1, HUP and TERM; the signals go to `tokend exec`.
    2. The child sees each; its exit code on TERM (42) comes back.
    3. A child that dies of a signal gives 128+N."""
    with subprocess.Popen(
        [sys.executable, "-m", "tokend", "exec", "--", sys.executable, "-u", "-c", TRAP],
        stdout=subprocess.PIPE,
        text=True,
        env=client_env(d),
        start_new_session=True,  # no controlling terminal, even when pytest has one
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM):
            proc.send_signal(sig)
            assert proc.stdout.readline().strip() == f"got {sig.name}"
        assert proc.wait(10) == 42

    with subprocess.Popen(
        [sys.executable, "-m", "tokend", "exec", "--", "sh", "-c", "echo ready; exec sleep 30"],
        stdout=subprocess.PIPE,
        text=True,
        env=client_env(d),
        start_new_session=True,  # no controlling terminal, even when pytest has one
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)  # no terminal here: forwarded like any other
        assert proc.wait(10) == 128 + signal.SIGINT


def test_exec_warns_when_the_child_outlives_its_token(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    fake.lifetime = 2
    sa = fake.write_service_account(short_tmp / "sa.json")
    with daemon_factory(f'[profiles.default]\ncredentials = "{sa}"\n') as daemon:
        out = tokend(daemon, "exec", "--min-valid", "0", "--", "sleep", "2.5")
        assert out.returncode == 0
        assert "warning: the token given to sleep expired" in out.stderr
        quick = tokend(daemon, "exec", "--min-valid", "0", "--", "true")
        assert "warning" not in quick.stderr


# -- status -----------------------------------------------------------------------------


def test_status_table_and_json(d: Any, fake: FakeGoogle) -> None:
    token = file_token(d)
    table = tokend(d, "status")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["PROFILE", "ACCOUNT", "STATE"]
    assert row.split()[:3] == ["default", fake.who(token), "fresh"]
    assert re.search(r"\bin \d+[hms]", row)  # next refresh
    as_json = tokend(d, "status", "--json")
    assert json.loads(as_json.stdout)["profiles"]["default"]["state"] == "fresh"
    assert token not in table.stdout + as_json.stdout


# -- the shell shim ---------------------------------------------------------------------


def test_shim_command_prints_the_packaged_snippet(d: Any) -> None:
    """``tokend shim`` prints tokend-env.sh; ``--path`` names the file it printed, so
    ``. "$(tokend shim --path)"`` sources the installed copy."""
    path = tokend(d, "shim", "--path")
    assert path.returncode == 0 and Path(path.stdout.strip()) == SHIM, path
    text = tokend(d, "shim")
    assert text.returncode == 0 and text.stdout == SHIM.read_text()


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_shell_shim(d: Any, shell: str, short_tmp: Path) -> None:
    """1. Sourced in dash and bash, it exports the file's token and base URL.
    2. A missing or expiring file: status 1, a message, the environment untouched,
       and the sourcing shell keeps running (return, not exit)."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    script = (
        f'. "{SHIM}"; rc=$?; '
        'printf "%s|%s|%s" "$rc" "${OPENAI_API_KEY:-unset}" "${OPENAI_BASE_URL:-unset}"'
    )
    env = client_env(d)
    out = subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout == f"0|{file_token(d)}|{BASE_URL}"
    assert out.stderr == ""

    stale = short_tmp / "stale"
    stale.mkdir()
    (stale / "openai.env").write_text(
        f"OPENAI_API_KEY=ya29.stale-secret\nTOKEND_EXPIRES_AT={int(time.time()) + 30}\n"
    )
    for runtime in (stale, short_tmp / "missing"):
        env = {**client_env(d), "TOKEND_RUNTIME_DIR": str(runtime), "OPENAI_API_KEY": "before"}
        out = subprocess.run(
            [shell, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        assert out.stdout == "1|before|unset"
        assert out.stderr.startswith("tokend-env.sh: ")
        assert "ya29.stale-secret" not in out.stderr

    # Not a regular file (a FIFO would block the read forever): refused at once.
    fifo_dir = short_tmp / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "openai.env")
    env = {**client_env(d), "TOKEND_RUNTIME_DIR": str(fifo_dir)}
    out = subprocess.run(
        [shell, "-c", script], capture_output=True, text=True, env=env, check=True, timeout=10
    )
    assert out.stdout == "1|unset|unset"
    assert "is not a regular file" in out.stderr, out.stderr

    # A short-lived token (here 40 s) with 30 s left is fine: a quarter of its lifetime.
    (stale / "openai.env").write_text(
        f"OPENAI_API_KEY=ya29.short-lived\nTOKEND_EXPIRES_AT={int(time.time()) + 30}\n"
        "TOKEND_LIFETIME=40\n"
    )
    env = {**client_env(d), "TOKEND_RUNTIME_DIR": str(stale)}
    out = subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout == "0|ya29.short-lived|unset", out.stderr


# -- the quick path: token and env parsed without argparse ------------------------------

QUICK_ARGV = [
    ["token"],
    ["token", "-p", "work"],
    ["token", "--profile=work", "--min-valid", "600"],
    ["token", "--min-valid=12.5", "--format", "json"],
    ["token", "--format=header", "-p", "x", "--min-valid", "1"],
    ["env"],
    ["env", "--proxy"],
    ["env", "--format", "fish", "-p", "work", "--min-valid", "30"],
    ["env", "--format=dotenv", "--proxy"],
]
#: What the quick path leaves to argparse (which parses or rejects it).
ARGPARSE_ARGV = [
    ["token", "--format", "yaml"],
    ["token", "--min-valid", "soon"],
    ["token", "-p"],
    ["token", "-pwork"],
    ["token", "--prof", "work"],
    ["token", "--proxy"],
    ["token", "extra"],
    ["env", "--proxy=yes"],
    ["env", "--help"],
    ["status"],
    [],
]


@pytest.mark.parametrize("argv", QUICK_ARGV, ids=" ".join)
def test_quick_path_parses_as_argparse_does(argv: list[str]) -> None:
    from tokend import cli

    quick = cli._quick_args(argv)
    assert quick is not None
    assert vars(quick) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", ARGPARSE_ARGV, ids=lambda a: " ".join(a) or "(none)")
def test_quick_path_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    from tokend import cli

    assert cli._quick_args(argv) is None


def test_quick_path_does_not_import_argparse(d: Any) -> None:
    """``tokend token`` (the key-helper call) prints the token from the daemon's env file
    without loading argparse, json, pathlib or socket (each costs more than the rest of
    the command); a usage error still gets argparse's message and exit 2."""
    probe = (
        "import sys, runpy; sys.argv = ['tokend', 'token']\n"
        "try:\n    runpy.run_module('tokend', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('argparse', 'json', 'pathlib', 'socket', 're') if m in sys.modules]\n"
        "print(heavy, code, file=sys.stderr)\n"
    )
    env = {**client_env(d), "XDG_CONFIG_HOME": f"{d.runtime_dir}-no-config"}
    env.pop("TOKEND_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert out.stderr.strip().splitlines()[-1] == "[] 0", out.stderr
    assert out.stdout.strip() == file_token(d)
    bad = tokend(d, "token", "--format", "yaml")
    assert bad.returncode == 2 and "invalid choice: 'yaml'" in bad.stderr


# -- the quick answer: the env file, byte for byte what the full commands print ---------

QUICK_ANSWERS = [
    ["token"],
    ["token", "--format", "header"],
    ["token", "-p", "work"],
    ["env"],
    ["env", "--format", "fish"],
    ["env", "--format=dotenv", "-p", "work"],
    ["token", "--min-valid", "30"],
]


@pytest.mark.parametrize("value", ["ya29.plain-token_1/2+3=", "ya29.with~tilde"])
@pytest.mark.parametrize("argv", QUICK_ANSWERS, ids=" ".join)
def test_quick_answer_is_what_the_full_command_prints(
    argv: list[str],
    value: str,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import time as time_mod

    from tokend import cli
    from tokend.token import Token

    runtime = short_tmp / "rt"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("TOKEND_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(short_tmp / "cfg"))  # no config file
    monkeypatch.delenv("TOKEND_SOCKET", raising=False)
    for profile, prefix in (("default", ""), ("work", "work.")):
        tok = Token.received(value, 600, wall=time_mod.time(), steady=0.0, profile=profile)
        (runtime / f"{prefix}token.json").write_bytes(tok.render("json", 0.0))
        (runtime / f"{prefix}openai.env").write_bytes(tok.render("env", 0.0))
    quick = cli._quick_output(cli._quick_args(argv))
    assert quick is not None
    args = cli.build_parser().parse_args(argv)
    assert args.func(args) == 0
    assert quick == capsys.readouterr().out


def test_quick_answer_steps_aside(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config file, an env file too close to expiry or malformed, json output or the
    proxy's variables: the full command runs (and says what is wrong)."""
    import time as time_mod

    from tokend import cli

    runtime = short_tmp / "rt"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("TOKEND_CONFIG", raising=False)
    cfg = short_tmp / "cfg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cfg))
    env_file = runtime / "openai.env"
    later = int(time_mod.time()) + 600

    def quick(*argv: str) -> str | None:
        return cli._quick_output(cli._quick_args(list(argv)))

    env_file.write_text(f"OPENAI_API_KEY=ya29.ok\nTOKEND_EXPIRES_AT={later}\n")
    assert quick("token") is None  # 600 s left: not more than a key helper's default
    assert quick("env") == f"export OPENAI_API_KEY=ya29.ok\nexport TOKEND_EXPIRES_AT={later}\n"
    assert quick("token", "--min-valid", "500") == "ya29.ok\n"
    later += 3000
    env_file.write_text(f"OPENAI_API_KEY=ya29.ok\nTOKEND_EXPIRES_AT={later}\n")
    assert quick("token") == "ya29.ok\n"
    assert quick("token", "--format", "json") is None
    assert quick("env", "--proxy") is None
    assert quick("token", "--min-valid", "3700") is None  # 3,600 s left
    (cfg / "tokend").mkdir(parents=True)
    (cfg / "tokend" / "config.toml").write_text("")
    assert quick("token") is None  # a config file may move the sinks
    (cfg / "tokend" / "config.toml").unlink()
    for bad in (
        f"OPENAI_API_KEY=ya29.$(rm -rf ~)\nTOKEND_EXPIRES_AT={later}\n",
        "OPENAI_API_KEY=ya29.ok\nTOKEND_EXPIRES_AT=soon\n",
        f"OPENAI_API_KEY=ya29.ok\nTOKEND_EXPIRES_AT={later - 3590}\nTOKEND_LIFETIME=3600\n",
        "OPENAI_API_KEY=ya29.ok\n",
    ):
        env_file.write_text(bad)
        assert quick("token") is None, bad
    env_file.unlink()
    assert quick("token") is None


def test_shell_shim_says_when_the_file_is_not_readable(
    other_user: tuple[str, int, str], short_tmp: Path
) -> None:
    """Another user sourcing it (or a file of the wrong mode) is told it cannot read the
    file, not that tokend is not running."""
    from tests.conftest import as_user

    name, _uid, _python = other_user
    runtime = short_tmp / "rt"
    runtime.mkdir(mode=0o755)
    short_tmp.chmod(0o755)
    (runtime / "openai.env").write_text(
        f"OPENAI_API_KEY=ya29.private\nTOKEND_EXPIRES_AT={int(time.time()) + 600}\n"
    )
    (runtime / "openai.env").chmod(0o600)
    shim = short_tmp / "tokend-env.sh"
    shim.write_text(SHIM.read_text())
    shim.chmod(0o644)
    out = subprocess.run(
        [*as_user(name), "sh", "-c", f'. "{shim}"; echo "rc=$? ${{OPENAI_API_KEY:-unset}}"'],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "TOKEND_RUNTIME_DIR": str(runtime)},
        cwd="/",
        timeout=10,
    )
    assert out.stdout.strip() == "rc=1 unset", out
    assert "cannot read" in out.stderr and "permission denied" in out.stderr, out.stderr
