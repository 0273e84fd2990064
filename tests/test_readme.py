"""Every command the README shows is run: here, against a real daemon and FakeGoogle,
by the test named for it, or by CI; the few that need what this machine lacks (a
Google account, systemd as PID 1, macOS, a Docker daemon) are listed with the reason.
A command added to the README in none of those places fails this test."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Launched, launch, sa_config, terminate, tokend_env, wait_for
from tokend.testing import FakeGoogle, FakeOpenAI

README = (ROOT / "README.md").read_text()

CURL = (
    'curl -s --unix-socket "$XDG_RUNTIME_DIR/tokend/tokend.sock" '
    "'http://tokend/v1/token?min_valid=300'"
)
DOCKER = (
    'docker run -v "$XDG_RUNTIME_DIR/tokend:/run/tokend:ro" -e TOKEND_RUNTIME_DIR=/run/tokend image'
)
CURL_PROXY = (
    'curl -s "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" '
    '-H \'Content-Type: application/json\' -d \'{"model": "google/gemini-2.5-flash", '
    '"messages": [{"role": "user", "content": "hi"}]}\''
)
OPENAI = '[profiles.default.openai]\nproject = "my-project"\nlocation = "us-central1"\n'

#: Run by another test (file::function) or by CI (a file that runs it).
ELSEWHERE = {
    "scripts/demo": (
        "tests/test_scripts.py::test_demo_shows_rotation_and_an_openai_call_then_stops_by_itself"
    ),
    "scripts/test": ".ci/run",
    "tokend install": "tests/test_service.py::test_systemd_install_and_uninstall",
    "TOKEND_SOCKET=/srv/tokend-alice/tokend.sock tokend token": (
        "tests/test_reliability.py::test_allow_uids_lets_the_allowed_user_in_and_tells_the_other_why"
    ),
    "export GCE_METADATA_HOST=127.0.0.1:8790 GCE_METADATA_IP=127.0.0.1:8790": (
        "tests/test_metadata.py::test_the_readme_metadata_commands"
    ),
    "curl -s -H 'Metadata-Flavor: Google' "
    '"http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/email"': (
        "tests/test_metadata.py::test_the_readme_metadata_commands"
    ),
}
#: What this machine cannot run, and why.
NOT_HERE = {
    "gcloud auth application-default login": "needs a Google account and a browser",
    "systemctl --user status tokend": "no systemd as PID 1 here (the unit is checked offline)",
    "systemctl --user reload tokend": "no systemd as PID 1 here",
    "journalctl --user -u tokend": "no systemd as PID 1 here",
    "launchctl print gui/$UID/dev.tokend": "macOS only",
    "tail -f ~/Library/Logs/tokend/tokend.log": "macOS only",
    DOCKER: "no Docker daemon here",
}
# Containers and Kubernetes: the tokend command is run by tests/test_deploy.py; a
# container engine and a cluster are what this machine lacks.
_DEPLOY = "tokend deploy kubernetes --config ~/.config/tokend/config.toml --proxy > tokend.yaml"
ELSEWHERE[_DEPLOY] = "tests/test_deploy.py::test_readme_deploy_command"
NOT_HERE.update(
    {
        "docker build -t tokend:0.1.0 .": (
            "no Docker daemon here (tests/test_deploy.py builds it where `docker info` works)"
        ),
        'docker run -d --name tokend --user "$(id -u):$(id -g)" --read-only -v '
        '"$XDG_RUNTIME_DIR/tokend:/run/tokend" -v '
        '"$HOME/.config/gcloud:/home/tokend/.config/gcloud:ro" tokend:0.1.0': (
            "no Docker daemon here"
        ),
        "kubectl create secret generic tokend-credentials "
        "--from-file=credentials.json=key.json": "no cluster here",
        "tokend deploy kubernetes --proxy-key-secret | kubectl apply -f -": (
            "no cluster here (tests/test_deploy.py::test_the_proxy_key_secret runs the tokend half)"
        ),
        "kubectl apply -f tokend.yaml": "no cluster here (the manifests are schema-validated)",
    }
)
# ID tokens: tests/test_idtokens.py runs these with the README's words against a daemon.
ID_TOKEN_RUN = "https://hello-abc123-uc.a.run.app"
ID_TOKEN_CLI = f"tokend id-token --audience {ID_TOKEN_RUN}"
ID_TOKEN_CURL = (
    'curl -s --unix-socket "$XDG_RUNTIME_DIR/tokend/tokend.sock" '
    f"'http://tokend/v1/id_token?audience={ID_TOKEN_RUN}'"
)
for _command in (ID_TOKEN_CLI, ID_TOKEN_CURL):
    ELSEWHERE[_command] = "tests/test_idtokens.py::test_the_readme_id_token_commands"
NOT_HERE[f'curl -H "Authorization: Bearer $({ID_TOKEN_CLI})" {ID_TOKEN_RUN}/'] = (
    "needs a Cloud Run service (its token is the one the commands above print)"
)
#: Run below, in a shell, with the README's own words.
HERE = {
    "tokend token",
    "tokend exec -- python my_script.py",
    'eval "$(tokend env)"',
    "TOKEND_SHIM=$(tokend shim --path)",
    '. "$TOKEND_SHIM"',
    CURL,
    "tokend doctor",
    "pip install .",  # test_pip_install_dot (slow: a fresh venv from PyPI)
    "tokend env --proxy",
    'set -a; . "$XDG_RUNTIME_DIR/tokend/proxy.env"; set +a',
    "tokend exec --proxy -- python my_tool.py",
    CURL_PROXY,
}


def readme_commands() -> set[str]:
    """The command lines of the README's ``sh`` blocks, without their comments."""
    commands = set()
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#"):
                commands.add(command)
    return commands


def test_every_readme_command_is_run_somewhere() -> None:
    """Each command is in exactly one of HERE, ELSEWHERE and NOT_HERE, and each
    ELSEWHERE names a test (or file) that exists."""
    commands = readme_commands()
    known = HERE | set(ELSEWHERE) | set(NOT_HERE)
    assert commands - known == set(), "README commands nobody runs"
    assert known - commands == set(), "listed here, no longer in the README"
    for where in ELSEWHERE.values():
        path, _, function = where.partition("::")
        text = (ROOT / path).read_text()
        assert (f"def {function}(" in text) if function else "scripts/test" in text, where


def test_every_readme_config_block_loads(tmp_path: Path) -> None:
    """Each ``toml`` block is a configuration tokend accepts (the socket one with the
    runtime dir it is meant for)."""
    from tokend.config import load

    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    # Other tools' files (Codex's config.toml) say so on their first line.
    blocks = [b for b in blocks if "not tokend's" not in b.splitlines()[0]]
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        tomllib.loads(block)
        path = tmp_path / f"{i}.toml"
        path.write_text(block)
        load(path, {"TOKEND_RUNTIME_DIR": str(tmp_path / "rt")})


@contextlib.contextmanager
def user_shell(
    fake: FakeGoogle, short_tmp: Path, extra: str = OPENAI, ready_file: str = "token.json"
) -> Iterator[dict[str, str]]:
    """A daemon as the README sets one up (runtime dir ``$XDG_RUNTIME_DIR/tokend``, a
    profile with ``[profiles.default.openai]``, then ``extra``), and the environment a
    user's shell has: ``tokend`` on PATH, XDG_RUNTIME_DIR and TOKEND_CONFIG set, nothing
    else of tokend's."""
    xdg = short_tmp / "xdg"
    xdg.mkdir(mode=0o700)
    config = short_tmp / "config.toml"
    config.write_text(sa_config(fake, short_tmp, extra))
    env = tokend_env(fake, xdg / "tokend")
    daemon: Launched = launch(config, short_tmp / "daemon.log", env)
    try:
        ready = (xdg / "tokend" / ready_file).exists
        wait_for(lambda: ready() or daemon.proc.poll() is not None, 20)
        assert ready(), daemon.log()
        shell = {k: v for k, v in env.items() if not k.startswith("TOKEND_")}
        shell["XDG_RUNTIME_DIR"] = str(xdg)
        shell["TOKEND_CONFIG"] = str(config)
        shell["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{shell['PATH']}"
        yield shell
    finally:
        terminate(daemon.proc, 5.0)


@pytest.fixture
def readme_shell(fake: FakeGoogle, short_tmp: Path) -> Iterator[dict[str, str]]:
    with user_shell(fake, short_tmp) as shell:
        yield shell


def sh(command: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )


def test_the_readme_commands_that_read_the_token(
    readme_shell: dict[str, str], fake: FakeGoogle, short_tmp: Path
) -> None:
    """Each way the README gives prints or sets a token FakeGoogle accepts, with
    OPENAI_BASE_URL where it says so."""
    env = readme_shell
    assert fake.is_valid(sh("tokend token", env).stdout.rstrip("\n"))
    (short_tmp / "my_script.py").write_text(
        "import os; print(os.environ['OPENAI_API_KEY'], os.environ['OPENAI_BASE_URL'])\n"
    )
    key, base_url = sh("tokend exec -- python my_script.py", env, cwd=short_tmp).stdout.split()
    assert fake.is_valid(key) and base_url.startswith(
        "https://us-central1-aiplatform.googleapis.com/"
    )
    for setup in ('eval "$(tokend env)"', 'TOKEND_SHIM=$(tokend shim --path)\n. "$TOKEND_SHIM"'):
        done = sh(f'{setup} && printf %s "$OPENAI_API_KEY"', env)
        assert done.returncode == 0 and fake.is_valid(done.stdout), (setup, done.stderr)
    if shutil.which("curl"):
        assert fake.is_valid(json.loads(sh(CURL, env).stdout)["access_token"])
    doctor = sh("tokend doctor", env)
    lines = doctor.stdout.splitlines()
    assert lines and all(re.match(r"(OK|WARN|FAIL) ", line) for line in lines), doctor.stdout
    assert any(line.startswith("OK") and "token" in line for line in lines), doctor.stdout
    assert doctor.returncode == (1 if any(ln.startswith("FAIL") for ln in lines) else 0)


MY_TOOL = """\
import openai  # the default client: OPENAI_BASE_URL and OPENAI_API_KEY, read once
r = openai.OpenAI(max_retries=0).chat.completions.create(
    model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
print(r.choices[0].message.content)
"""


def test_the_readme_proxy_commands(fake: FakeGoogle, short_tmp: Path) -> None:
    """The local proxy's commands, as the README gives them, against the Vertex-like
    stand-in: the variables they set reach it with a live Google token."""
    with FakeOpenAI(fake, project="my-project") as api:
        extra = OPENAI + f'api_endpoint = "{api.origin}"\n[proxy]\nlisten = "127.0.0.1:0"\n'
        with user_shell(fake, short_tmp, extra, ready_file="proxy.env") as env:
            printed = sh("tokend env --proxy", env).stdout.splitlines()
            assert printed[0].startswith("export OPENAI_BASE_URL=http://127.0.0.1:")
            assert printed[1].startswith("export OPENAI_API_KEY=tokend-")
            sourced = sh(
                'set -a; . "$XDG_RUNTIME_DIR/tokend/proxy.env"; set +a\n'
                'printf "export OPENAI_BASE_URL=%s\\nexport OPENAI_API_KEY=%s\\n" '
                '"$OPENAI_BASE_URL" "$OPENAI_API_KEY"',
                env,
            )
            assert sourced.stdout.splitlines() == printed, sourced.stderr
            (short_tmp / "my_tool.py").write_text(MY_TOOL)
            ran = sh("tokend exec --proxy -- python my_tool.py", env, cwd=short_tmp)
            assert ran.stdout == "ok\n", ran.stderr
            if shutil.which("curl"):
                source = 'set -a; . "$XDG_RUNTIME_DIR/tokend/proxy.env"; set +a\n'
                answer = json.loads(sh(source + CURL_PROXY, env).stdout)
                assert answer["choices"][0]["message"]["content"] == "ok"
        assert api.requests and all(fake.is_valid(s.token) for s in api.requests)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pip_install_dot(short_tmp: Path) -> None:
    """``pip install .`` into a new virtualenv (dependencies from PyPI) gives a working
    ``tokend``: a built package, not this checkout's editable one."""
    target = short_tmp / "venv"
    venv.create(target, with_pip=True)
    pip = subprocess.run(
        [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {**os.environ, "TOKEND_RUNTIME_DIR": str(short_tmp / "rt")}
    out = subprocess.run(
        [str(target / "bin" / "tokend"), "token"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 1 and "tokend run" in out.stderr  # no daemon: says how to start one
    where = subprocess.run(
        [str(target / "bin" / "python"), "-c", "import tokend; print(tokend.__file__)"],
        cwd=short_tmp,
        capture_output=True,
        text=True,
    )
    assert str(target) in where.stdout, where.stdout
    # The sh snippet is in the package, and `tokend shim` finds and prints it.
    shim = subprocess.run(
        [str(target / "bin" / "tokend"), "shim", "--path"], capture_output=True, text=True
    )
    path = Path(shim.stdout.strip())
    assert path.is_relative_to(target) and path.name == "tokend-env.sh", shim
    text = subprocess.run([str(target / "bin" / "tokend"), "shim"], capture_output=True, text=True)
    assert text.stdout == path.read_text() == (ROOT / "tokend" / "tokend-env.sh").read_text()
