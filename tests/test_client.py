"""tokend.client without a daemon: the file path, the socket fallback (against a
stand-in socket server), the messages of TokenUnavailable, path discovery, and the
proof that the client and the client-side CLI stay light."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tokend
from tokend import client
from tokend.token import Token

SECRET = "ya29.unit-test-secret-value"


def write_token(path: Path, value: str = SECRET, *, expires_in: float = 600, **kw: str) -> None:
    """Write a json sink the way the daemon does: a new file renamed over the old."""
    now = time.time()
    tok = Token.received(value, expires_in, wall=now, steady=0.0, **kw)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(tok.render("json", 0.0))
    os.replace(tmp, path)


@pytest.fixture
def rt(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated client environment: a runtime dir, no config file, no socket env."""
    runtime = short_tmp / "rt"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("TOKEND_CONFIG", str(short_tmp / "none.toml"))
    monkeypatch.delenv("TOKEND_SOCKET", raising=False)
    return runtime


class StandIn:
    """A one-thread Unix-socket server answering every request with one canned reply."""

    def __init__(self, path: Path, status: int, body: object, *, close_silently: bool = False):
        self.path = path
        self.requests: list[str] = []
        payload = json.dumps(body).encode()
        self.reply = (
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode() + payload
        self.close_silently = close_silently
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data.decode())
                if not self.close_silently:
                    conn.sendall(self.reply)

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def stand_in(rt: Path) -> Iterator[type[StandIn]]:
    made: list[StandIn] = []

    def make(*args: object, **kw: object) -> StandIn:
        s = StandIn(rt / "tokend.sock", *args, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in made:
        s.close()


# -- the file ---------------------------------------------------------------------------


def test_token_read_from_the_file(rt: Path) -> None:
    write_token(rt / "token.json", account="me@example.com")
    assert client.token() == SECRET
    info = client.token_info()
    assert info.account == "me@example.com"
    assert 590 < info.expires_in <= 600
    assert SECRET not in repr(info) and SECRET not in str(info)
    assert info.as_dict()["access_token"] == SECRET


def test_new_file_seen_on_the_next_call(rt: Path) -> None:
    """The stat-keyed cache must never serve the previous token after a rotation."""
    write_token(rt / "token.json", "ya29.first")
    assert client.token() == "ya29.first"
    write_token(rt / "token.json", "ya29.second")
    assert client.token() == "ya29.second"


def test_the_config_is_looked_at_again_once_the_file_changes(
    rt: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the file read last stays as it was, a call is one stat of it; a config that
    moves the sink is followed as soon as that file changes or goes (the daemon removes
    a moved sink's file), and a changed TOKEND_RUNTIME_DIR at once."""
    write_token(rt / "token.json", "ya29.first")
    assert client.token() == "ya29.first"
    moved = short_tmp / "moved"
    moved.mkdir(mode=0o700)
    write_token(moved / "tok.json", "ya29.moved")
    config = short_tmp / "none.toml"  # the path TOKEND_CONFIG names, absent until now
    config.write_text(
        f'[[profiles.default.sinks]]\npath = "{moved}/tok.json"\nformat = "json"\n'
    )
    assert client.token() == "ya29.first"  # the same file, still valid: one stat
    (rt / "token.json").unlink()
    assert client.token() == "ya29.moved"
    config.unlink()
    other = short_tmp / "other"
    other.mkdir(mode=0o700)
    write_token(other / "token.json", "ya29.other")
    monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(other))
    assert client.token() == "ya29.other"


def test_other_profiles_read_their_own_file(rt: Path) -> None:
    write_token(rt / "token.json", "ya29.default")
    write_token(rt / "work.token.json", "ya29.work", profile="work")
    assert client.token("work") == "ya29.work"
    assert client.token() == "ya29.default"


def test_async_twins(rt: Path) -> None:
    write_token(rt / "token.json")
    assert asyncio.run(client.token_async()) == SECRET
    assert asyncio.run(client.token_info_async()).value == SECRET


def test_public_face() -> None:
    assert tokend.__all__ == sorted(tokend.__all__, key=lambda n: (n[0].islower(), n))
    assert set(tokend.__all__) == {
        "TokenInfo",
        "TokenUnavailable",
        "__version__",
        "openai_base_url",
        "token",
        "token_async",
        "token_info",
        "token_info_async",
    }
    assert issubclass(tokend.TokenUnavailable, LookupError)


# -- TokenUnavailable -------------------------------------------------------------------


def test_no_file_no_daemon_says_how_to_start_it(rt: Path) -> None:
    with pytest.raises(client.TokenUnavailable) as exc:
        client.token()
    msg = str(exc.value)
    assert "systemctl --user start tokend" in msg
    assert "gcloud auth application-default login" in msg
    assert str(rt / "token.json") in msg


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("garbage", "does not hold a token object"),
        ("directory", "cannot read the token file"),
        ("unreadable", "cannot read the token file"),
    ],
)
def test_a_token_file_that_cannot_be_used_says_why(rt: Path, kind: str, said: str) -> None:
    """Not "no token file": the file is there, and the message says what is wrong."""
    path = rt / "token.json"
    if kind == "garbage":
        path.write_text("{not json")
    elif kind == "directory":
        path.mkdir()
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        write_token(path, expires_in=600)
        path.chmod(0)
    with pytest.raises(client.TokenUnavailable) as exc:
        client.token()
    assert said in str(exc.value) and str(path) in str(exc.value)
    assert "no token file" not in str(exc.value)


def test_a_short_lived_token_is_judged_by_its_lifetime(rt: Path) -> None:
    """20 s tokens (tests, demos): 20 s left is plenty by default (a quarter: 5 s), so a
    client with no daemon to ask still gets it, and one with a daemon does not make it
    refresh at every call."""
    write_token(rt / "token.json", expires_in=20)
    assert json.loads((rt / "token.json").read_text())["lifetime"] in (19, 20)  # whole s
    assert client.token() == SECRET
    with pytest.raises(client.TokenUnavailable, match=r"wanted at least 60s"):
        client.token(min_valid=60)  # asked for explicitly: still refused


def test_file_too_close_to_expiry_and_no_daemon(rt: Path) -> None:
    write_token(rt / "token.json", expires_in=30)
    with pytest.raises(client.TokenUnavailable) as exc:
        client.token(min_valid=60)
    assert "expires in" in str(exc.value)
    assert SECRET not in str(exc.value)
    # ... but a smaller min_valid accepts it.
    assert client.token(min_valid=10) == SECRET


def test_expired_file_is_never_returned(rt: Path) -> None:
    write_token(rt / "token.json", expires_in=-5)
    with pytest.raises(client.TokenUnavailable, match="expired"):
        client.token(min_valid=0)


# -- the socket -------------------------------------------------------------------------


def _body(value: str, expires_in: float = 900, profile: str = "default") -> dict[str, object]:
    now = time.time()
    return Token.received(value, expires_in, wall=now, steady=0.0, profile=profile).as_dict(0.0)


def test_falls_back_to_the_socket_with_min_valid(rt: Path, stand_in: type[StandIn]) -> None:
    server = stand_in(200, _body("ya29.from-socket"))
    write_token(rt / "token.json", expires_in=30)  # too short for min_valid=60
    assert client.token(min_valid=60) == "ya29.from-socket"
    request = server.requests[0]
    assert request.startswith("GET /v1/token?profile=default&min_valid=60&wait=")
    assert "Host: tokend" in request


def test_tokend_token_as_a_key_helper_wants_ten_minutes(
    rt: Path, stand_in: type[StandIn]
) -> None:
    """Claude Code keeps a helper's key 5 minutes, Codex for its refresh interval: plain
    `tokend token` asks for 600 s (a quarter of the lifetime when shorter), so a 1-hour
    token with 500 s left makes the daemon refresh; `tokend env` still takes it."""
    server = stand_in(200, _body("ya29.from-socket"))
    tok = Token.received(SECRET, 3600, wall=time.time() - 3100, steady=0.0)
    (rt / "token.json").write_bytes(tok.render("json", 0.0))
    env = {**os.environ, "XDG_CONFIG_HOME": str(rt / "no-config")}

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "tokend", *args], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert cli("env", "--format", "dotenv").startswith(f"OPENAI_API_KEY={SECRET}\n")
    assert server.requests == []
    assert cli("token") == "ya29.from-socket\n"
    assert server.requests[0].startswith("GET /v1/token?profile=default&min_valid=600&wait=")
    assert cli("token", "--min-valid", "60") == f"{SECRET}\n"
    assert len(server.requests) == 1


def test_socket_503_detail_reaches_the_message(rt: Path, stand_in: type[StandIn]) -> None:
    detail = "profile default: reauth needed; run `gcloud auth application-default login`"
    stand_in(503, {"error": "reauth_required", "detail": detail})
    with pytest.raises(client.TokenUnavailable) as exc:
        client.token()
    assert detail in str(exc.value)


def test_socket_403_says_who_was_refused_and_the_fix(rt: Path, stand_in: type[StandIn]) -> None:
    detail = "uid 1234 is not allowed on this socket; its owner can add it to socket.allow_uids"
    stand_in(403, {"error": "forbidden", "detail": detail})
    with pytest.raises(client.TokenUnavailable) as exc:
        client.token()
    assert "refused the connection: " + detail in str(exc.value)
    assert "gcloud" not in str(exc.value)  # logging in again would not help


def test_socket_that_hangs_up_means_uid_not_allowed(rt: Path, stand_in: type[StandIn]) -> None:
    stand_in(200, {}, close_silently=True)
    with pytest.raises(client.TokenUnavailable, match="allow_uids"):
        client.token()


def test_tokend_socket_env_wins(rt: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = short_tmp / "other.sock"
    server = StandIn(elsewhere, 200, _body("ya29.elsewhere"))
    try:
        monkeypatch.setenv("TOKEND_SOCKET", str(elsewhere))
        assert client.token() == "ya29.elsewhere"
    finally:
        server.close()


# -- configuration discovery ------------------------------------------------------------


def test_config_file_names_runtime_dir_sinks_and_socket(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = short_tmp / "configured"
    cfg = short_tmp / "config.toml"
    cfg.write_text(
        f"""
runtime_dir = "{runtime}"
[socket]
path = "s.sock"
[profiles.work]
credentials = "adc"
[[profiles.work.sinks]]
path = "sub/work-token.json"
format = "json"
[profiles.work.openai]
project = "my-project"
location = "global"
[profiles.eu.openai]
project = "my-project"
location = "europe-west4"
endpoint = "1234"
"""
    )
    monkeypatch.setenv("TOKEND_CONFIG", str(cfg))
    monkeypatch.delenv("TOKEND_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("TOKEND_SOCKET", raising=False)
    write_token(runtime / "sub" / "work-token.json", "ya29.work", profile="work")
    assert client.token_file_path("work") == runtime / "sub" / "work-token.json"
    assert client.token("work") == "ya29.work"
    assert client.socket_path() == runtime / "s.sock"
    assert client.openai_base_url("work") == (
        "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global"
        "/endpoints/openapi"
    )
    assert client.openai_base_url("eu") == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project"
        "/locations/europe-west4/endpoints/1234"
    )
    assert client.openai_base_url("default") is None
    # TOKEND_RUNTIME_DIR overrides the file, as it does for the daemon.
    monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(short_tmp / "env"))
    assert client.socket_path() == short_tmp / "env" / "s.sock"


def test_socket_turned_off_in_config(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = short_tmp / "config.toml"
    cfg.write_text('[socket]\npath = ""\n')
    monkeypatch.setenv("TOKEND_CONFIG", str(cfg))
    monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(short_tmp))
    assert client.socket_path() is None
    with pytest.raises(client.TokenUnavailable, match="turned off"):
        client.token()


def test_broken_config_is_reported(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = short_tmp / "config.toml"
    cfg.write_text("runtime_dir = [")
    monkeypatch.setenv("TOKEND_CONFIG", str(cfg))
    with pytest.raises(client.TokenUnavailable, match=r"config\.toml"):
        client.token()


# -- staying light ----------------------------------------------------------------------

HEAVY = ("pydantic", "google.auth", "watchdog", "aiohttp")


def test_client_and_cli_client_paths_stay_light(rt: Path) -> None:
    """`import tokend.client` and `tokend token|env|status` load none of the daemon's
    dependencies (measured in a fresh interpreter)."""
    code = f"""
import sys, contextlib, io
import tokend.client
from tokend.cli import main
for argv in (["token"], ["env"], ["env", "--proxy"], ["status"], ["token", "--format", "json"]):
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 1, argv
heavy = [m for m in {HEAVY!r} if m in sys.modules]
assert not heavy, heavy
print("light")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=30
    )
    # (A failed `env` prints "false" for the eval around it.)
    assert out.stdout.splitlines()[-1:] == ["light"], out.stderr


def test_a_full_listen_queue_is_waited_out_not_an_error(short_tmp: Path) -> None:
    """A burst of clients can fill the daemon's listen queue; a connect with a timeout
    then fails with EAGAIN at once instead of waiting. The client waits (until its
    deadline) for room, as a blocking connect would."""
    path = short_tmp / "s"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    queued = []
    while True:  # fill the queue
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(str(path))
        except BlockingIOError:
            c.close()
            break
        queued.append(c)

    def serve_later() -> None:
        time.sleep(0.3)
        for c in queued:
            c.close()
        for _ in range(len(queued) + 1):
            conn, _ = srv.accept()
            if conn.recv(1024):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            conn.close()

    server = threading.Thread(target=serve_later)
    server.start()
    try:
        t0 = time.monotonic()
        assert client._get(path, "/v1/status", 5.0) == (200, {})
        assert 0.25 < time.monotonic() - t0 < 3
    finally:
        server.join(5)
        srv.close()
