"""Configuration: defaults, every key, and one clear line for every kind of mistake."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tokend import config
from tokend.config import CLOUD_PLATFORM, ConfigError, parse


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Config:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return config.load(p, env=env or {})


def test_no_file_means_defaults(tmp_path: Path) -> None:
    cfg = config.load(None, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert list(cfg.profiles) == ["default"]
    prof = cfg.profiles["default"]
    assert prof.credentials == "adc"
    assert prof.scopes == (CLOUD_PLATFORM,)
    assert [(s.path, s.format, s.mode) for s in prof.effective_sinks("default")] == [
        ("token", "raw", 0o600),
        ("token.json", "json", 0o600),
        ("openai.env", "env", 0o600),
    ]
    assert cfg.socket.path == "tokend.sock"


def test_every_key(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
runtime_dir = "/tmp/x/tokend"
[socket]
path = "/tmp/tokend-x/s.sock"
allow_uids = [1001, 1002]
[profiles.work]
credentials = "/etc/creds.json"
scopes = ["a", "b"]
impersonate = "bot@p.iam.gserviceaccount.com"
token_uri = "http://127.0.0.1:9/token"
iam_endpoint = "http://127.0.0.1:9"
quota_project = "billing-project"
[profiles.work.openai]
project = "my-project"
location = "europe-west4"
[[profiles.work.sinks]]
path = "/tmp/x/abs-token"
format = "env"
mode = "0640"
""",
    )
    assert cfg.runtime_path == Path("/tmp/x/tokend")
    assert cfg.socket_path == Path("/tmp/tokend-x/s.sock")
    assert cfg.socket.allow_uids == (1001, 1002)
    work = cfg.profiles["work"]
    assert work.scopes == ("a", "b")
    assert work.effective_sinks("work")[0].mode == 0o640
    assert cfg.sink_path(work.effective_sinks("work")[0]) == Path("/tmp/x/abs-token")
    assert work.base_url == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project"
        "/locations/europe-west4/endpoints/openapi"
    )


def test_global_location_uses_the_bare_host(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        '[profiles.default.openai]\nproject = "my-project"\nlocation = "global"\nendpoint = "123"',
    )
    assert cfg.profiles["default"].base_url == (
        "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global/endpoints/123"
    )


def test_profiles_get_their_own_default_files(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[profiles.default]\n[profiles.ci]\n")
    assert [s.path for s in cfg.profiles["ci"].effective_sinks("ci")] == [
        "ci.token",
        "ci.token.json",
        "ci.openai.env",
    ]


def test_env_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('runtime_dir = "/nope"\n')
    cfg = config.load(None, env={"TOKEND_CONFIG": str(p), "TOKEND_RUNTIME_DIR": "/tmp/rt"})
    assert cfg.runtime_path == Path("/tmp/rt")
    assert cfg.source == str(p)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[profiles.default.sinks]]\npath = "t"\nformat = "yaml"',
            "profiles.default.sinks[0].format: must be raw, json or env",
        ),
        (
            '[[profiles.default.sinks]]\npath = "t"\nmode = 600',
            'profiles.default.sinks[0].mode: must be an octal string such as "0600"',
        ),
        (
            '[[profiles.default.sinks]]\npath = "t"\nmode = "0900"',
            "profiles.default.sinks[0].mode: must be an octal string",
        ),
        (
            '[[profiles.default.sinks]]\npath = "t"\nmode = "4600"',
            "profiles.default.sinks[0].mode: must not set setuid",
        ),
        ("[profiles.default]\ncredentail = 'adc'", "profiles.default.credentail: unknown key"),
        ("runtimedir = '/x'", "runtimedir: unknown key"),
        ("[socket]\nallow_uids = ['me']", "socket.allow_uids[0]: must be a whole number"),
        (
            "[profiles.default.openai]\nproject = 'p'\nlocation = 'us-central1'",
            "profiles.default.openai.project: must be a Google Cloud project ID such as",
        ),
        (
            "[profiles.default.openai]\nproject = 'my-project'\nlocation = 'US Central'",
            "profiles.default.openai.location: must be a Vertex AI location such as",
        ),
        ("[profiles.default]\ncredentials = 1", "profiles.default.credentials: must be a string"),
        ("[socket]\nallow_uids = [-1]", "socket.allow_uids: uids are whole numbers, 0 or more"),
        ("[profiles.default]\nscopes = []", "profiles.default.scopes: must list at least one"),
        ("[profiles.default]\nimpersonate = 'bob'", "profiles.default.impersonate: must be a"),
        (
            "[profiles.default]\ntoken_uri = 'ftp://x'",
            "profiles.default.token_uri: must be an http",
        ),
        (
            "[profiles.default.openai]\nproject = 'my-project'",
            "profiles.default.openai.location: is missing; add it",
        ),
        ("[profiles.'bad name']", "profiles: profile name 'bad name'"),
        (
            '[[profiles.a.sinks]]\npath = "t"\n[[profiles.b.sinks]]\npath = "t"',
            "profiles.b.sinks[0].path",
        ),
        ("runtime_dir = ", "invalid TOML"),
        # Where a list, a table or a non-empty string belongs: TOML's words, an example.
        (
            "[profiles.default]\nscopes = 'https://x'",
            'profiles.default.scopes: must be a list in square brackets, e.g. ["a", "b"]',
        ),
        ("socket = 'x'", "socket: must be a table: a [section] of its own"),
        ("profiles = 'x'", "profiles: must be a table"),
        ("[profiles]\ndefault = 'x'", "profiles.default: must be a table"),
        ("[proxy]\naliases = 'x'", "proxy.aliases: must be a table"),
        ("[proxy]\nmodels = 'm'", "proxy.models: must be a list in square brackets"),
        ("[profiles.default]\ncredentials = ''", "profiles.default.credentials: must not be empty"),
        ("[[profiles.default.sinks]]\npath = ''", "profiles.default.sinks[0].path: must not be"),
        ("[proxy]\nlisten = '0.0.0.0:1'", "proxy.listen: 0.0.0.0 is not a loopback address"),
        ("[proxy]\nidle_timeout = 0", "proxy.idle_timeout: must be more than 0"),
    ],
)
def test_errors_name_file_key_and_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text)
    line = str(exc.value)
    assert "\n" not in line
    assert line.startswith(str(tmp_path / "config.toml") + ": ")
    assert message in line
    # No pydantic words.
    assert not re.search(r"Input should|String should|instance of|pattern|\^\[", line)


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "missing.toml", env={})


def test_models_are_frozen() -> None:
    cfg = config.parse({}, env={})
    with pytest.raises(Exception, match="frozen"):
        cfg.profiles["default"].credentials = "x"  # type: ignore[misc]


def test_bad_config_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[[profiles.default.sinks]]\npath = "t"\nformat = "yaml"\n')
    runtime = tmp_path / "rt"
    proc = subprocess.run(
        [sys.executable, "-m", "tokend", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TOKEND_RUNTIME_DIR": str(runtime)},
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        f"{cfg}: profiles.default.sinks[0].format: must be raw, json or env"
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not runtime.exists()


def test_relative_credentials_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[profiles.a]\ncredentials = "keys/sa.json"\n[profiles.b]\n')
    assert cfg.profile("a").credentials == str(tmp_path / "keys" / "sa.json")
    assert cfg.profiles["a"].credentials == "keys/sa.json"  # the model itself is untouched
    assert cfg.profile("b").credentials == "adc"


# -- sink and socket paths, judged by their names ----------------------------------------


def _sinks(*paths: str) -> str:
    return "".join(f'[[profiles.default.sinks]]\npath = "{p}"\n' for p in paths)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _sinks("../x"),
            'profiles.default.sinks[0].path: ../x: ".." is not allowed in a sink path; '
            'name a file inside runtime_dir, or give an absolute path without ".."',
        ),
        (
            _sinks("token", "/tmp/../etc/t"),
            'profiles.default.sinks[1].path: /tmp/../etc/t: ".." is not allowed in a sink '
            'path; name a file inside runtime_dir, or give an absolute path without ".."',
        ),
        (
            _sinks("token", "./token"),
            "profiles.default.sinks[1].path: {rt}/token is also written by "
            "profiles.default.sinks[0]; give each sink its own file",
        ),
        (
            _sinks("a/b", "{rt}/a//b"),
            "profiles.default.sinks[1].path: {rt}/a/b is also written by "
            "profiles.default.sinks[0]; give each sink its own file",
        ),
        (
            _sinks("token.json", "tokend.sock"),
            "profiles.default.sinks[1].path: {rt}/tokend.sock is the socket (socket.path); "
            "give the sink another file name",
        ),
        (
            '[socket]\npath = "{rt}/s"\n' + _sinks("./s"),
            "profiles.default.sinks[0].path: {rt}/s is the socket (socket.path); "
            "give the sink another file name",
        ),
        (
            _sinks("."),
            "profiles.default.sinks[0].path: {rt} is the runtime dir itself; name a file "
            'inside runtime_dir, such as "token"',
        ),
        (
            _sinks("{rt}/"),
            "profiles.default.sinks[0].path: {rt} is the runtime dir itself; name a file "
            'inside runtime_dir, such as "token"',
        ),
        (
            _sinks("sub/token", "sub"),
            "profiles.default.sinks[1].path: {rt}/sub and profiles.default.sinks[0] "
            "({rt}/sub/token) would need one of them to be a directory; give each its own file",
        ),
    ],
)
def test_sink_paths_that_leave_or_alias_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    """`..` would write outside the runtime dir; an alias of the socket or of another
    sink would replace the listening socket, or make two sinks fight over one file."""
    rt = tmp_path / "rt"
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text.replace("{rt}", str(rt)), env={"TOKEND_RUNTIME_DIR": str(rt)})
    assert str(exc.value) == f"{tmp_path / 'config.toml'}: " + message.replace("{rt}", str(rt))


def test_absolute_sinks_outside_and_distinct_paths_are_fine(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    cfg = load_text(
        tmp_path,
        _sinks("token", "sub/token", "/srv/x/token", "tokend.sock.txt"),
        env={"TOKEND_RUNTIME_DIR": str(rt)},
    )
    assert [cfg.sink_path(s) for s in cfg.profiles["default"].effective_sinks("default")] == [
        rt / "token",
        rt / "sub" / "token",
        Path("/srv/x/token"),
        rt / "tokend.sock.txt",
    ]


@pytest.mark.parametrize(
    "socket_path", ["tokend.sock", "{rt}/tokend.sock", "{xdg}/tokend.sock", ""]
)
def test_allow_uids_needs_a_socket_others_can_reach(tmp_path: Path, socket_path: str) -> None:
    """Other users can never enter the 0700 runtime dir (nor $XDG_RUNTIME_DIR), so an
    allowed uid could never connect to a socket there."""
    import os
    import pwd

    rt, xdg = tmp_path / "rt", tmp_path / "xdg"
    path = socket_path.replace("{rt}", str(rt)).replace("{xdg}", str(xdg))
    text = f'[socket]\npath = "{path}"\nallow_uids = [1001]\n'
    env = {"TOKEND_RUNTIME_DIR": str(rt), "XDG_RUNTIME_DIR": str(xdg)}
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text, env=env)
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert str(exc.value) == (
        f"{tmp_path / 'config.toml'}: socket.allow_uids: other users cannot enter runtime_dir "
        "(mode 0700) nor $XDG_RUNTIME_DIR, so they could never reach the socket; set "
        "socket.path to an absolute path outside them, for example "
        f'"/srv/tokend-{me}/tokend.sock" (README.md, "Socket API")'
    )
    ok = load_text(
        tmp_path, '[socket]\npath = "/tmp/tokend-x/s.sock"\nallow_uids = [1001]\n', env=env
    )
    assert ok.socket_path == Path("/tmp/tokend-x/s.sock")


def test_bad_sink_path_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(_sinks("../escaped"))
    runtime = tmp_path / "rt"
    proc = subprocess.run(
        [sys.executable, "-m", "tokend", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TOKEND_RUNTIME_DIR": str(runtime)},
        timeout=30,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert f'{cfg}: profiles.default.sinks[0].path: ../escaped: ".." is not allowed' in proc.stderr
    assert not runtime.exists() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        ({"timeout": 500}, {}, "c.toml: timeout: must be more than 0 and at most 120 seconds"),
        ({"timeout": "10"}, {}, "c.toml: timeout: must be a number of seconds, e.g. 10"),
        ({}, {"TOKEND_TIMEOUT": "ten"}, "TOKEND_TIMEOUT: must be a number of seconds, e.g. 10"),
        (
            {},
            {"TOKEND_TIMEOUT": "0"},
            "TOKEND_TIMEOUT: must be more than 0 and at most 120 seconds",
        ),
    ],
)
def test_timeout_is_checked_where_it_was_set(
    data: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(data, "c.toml", env=env)
    assert str(info.value) == message


def test_timeout_from_the_file_or_the_environment() -> None:
    assert parse({}, "c.toml", env={}).timeout == 10.0
    assert parse({"timeout": 3}, "c.toml", env={}).timeout == 3.0
    assert parse({"timeout": 3}, "c.toml", env={"TOKEND_TIMEOUT": "2.5"}).timeout == 2.5
