"""The local proxy, end to end: the real ``tokend run`` in front of the Vertex-like
stand-in (:class:`tokend.testing.FakeOpenAI`), which accepts only tokens FakeGoogle
issued and that are still valid. Clients are the real ``openai`` SDK, configured from
``proxy.env`` alone, and raw HTTP where the point is what goes over the wire."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import ROOT, Daemon, run_daemon, tokend_env, wait_for

from tokend import config as config_mod
from tokend.errors import ConfigError
from tokend.testing import FakeGoogle, FakeOpenAI

PROJECT = "fake-project"


@pytest.fixture
def api(fake: FakeGoogle) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(fake, project=PROJECT) as server:
        yield server


def proxy_config(
    fake: FakeGoogle, directory: Path, api_endpoint: str, proxy: str = "", profile: str = ""
) -> str:
    creds = fake.write_service_account(directory / "sa.json")
    return textwrap.dedent(
        f"""\
        [proxy]
        listen = "127.0.0.1:0"
        {proxy}
        [profiles.default]
        credentials = "{creds}"
        {profile}
        [profiles.default.openai]
        project = "{PROJECT}"
        location = "us-central1"
        api_endpoint = "{api_endpoint}"
        """
    )


def proxy_env(d: Daemon, timeout: float = 10.0) -> dict[str, str]:
    """What the daemon's proxy.env says, once this run wrote it (a restarted daemon's
    log holds the earlier runs too)."""
    wait_for(lambda: d.log().count("proxy listening on") == d.log().count("tokend started"))
    text = wait_for(lambda: d.read("proxy.env"), timeout).decode()
    return dict(line.split("=", 1) for line in text.splitlines())


@pytest.fixture
def proxied(fake: FakeGoogle, api: FakeOpenAI, short_tmp: Path) -> Callable[..., Any]:
    """``with proxied(proxy="...", profile="...") as (daemon, env):`` — tokend with the
    proxy on, in front of ``api``; ``env`` is its proxy.env."""

    import contextlib

    @contextlib.contextmanager
    def start(
        proxy: str = "", profile: str = "", **kw: Any
    ) -> Iterator[tuple[Daemon, dict[str, str]]]:
        cfg = proxy_config(fake, short_tmp, api.origin, proxy, profile)
        with run_daemon(fake, short_tmp, cfg, **kw) as d:
            yield d, proxy_env(d)

    return start


def client(env: dict[str, str], **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0, **kw
    )


def port_of(env: dict[str, str]) -> int:
    return int(env["OPENAI_BASE_URL"].rsplit(":", 1)[1].split("/")[0])


def raw(
    env: dict[str, str],
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    host: str | None = None,
    key: str | None = "env",
) -> tuple[int, bytes]:
    """One request with exactly these headers (``key="env"``: the local key as Bearer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(env), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or f"127.0.0.1:{port_of(env)}")
        if key == "env":
            conn.putheader("Authorization", f"Bearer {env['OPENAI_API_KEY']}")
        elif key is not None:
            conn.putheader("Authorization", f"Bearer {key}")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def error_of(body: bytes) -> dict[str, Any]:
    """The OpenAI-shaped error object (asserting the shape)."""
    doc = json.loads(body)
    err = doc["error"]
    assert set(err) >= {"message", "type", "code"}, doc
    return err


CHAT = json.dumps(
    {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}
).encode()


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("0.0.0.0:8789", "not a loopback address"),
        ("192.168.1.5:8789", "not a loopback address"),
        ("example.com:8789", "not a loopback address"),
        ("8789", "must be host:port"),
        ("127.0.0.1:99999", "must be host:port"),
        ("::1:8789", "not a loopback address"),  # an IPv6 address needs its brackets
    ],
)
def test_listen_off_loopback_is_refused(listen: str, why: str) -> None:
    data = {
        "proxy": {"listen": listen},
        "profiles": {"default": {"openai": {"project": PROJECT, "location": "us-central1"}}},
    }
    with pytest.raises(ConfigError, match=why) as err:
        config_mod.parse(data, "config.toml")
    assert str(err.value).startswith("config.toml: proxy.listen: ")


@pytest.mark.parametrize("listen", ["127.0.0.1:8789", "localhost:0", "[::1]:8789", "127.0.0.2:1"])
def test_listen_on_loopback_is_taken(listen: str) -> None:
    data = {
        "proxy": {"listen": listen},
        "profiles": {"default": {"openai": {"project": PROJECT, "location": "us-central1"}}},
    }
    cfg = config_mod.parse(data, "config.toml")
    assert cfg.proxy.address[0] in ("127.0.0.1", "::1", "127.0.0.2")


def test_proxy_profile_needs_an_openai_table() -> None:
    with pytest.raises(ConfigError, match=r"profile default has no \[profiles.default.openai\]"):
        config_mod.parse({"proxy": {"listen": "127.0.0.1:0"}}, "config.toml")
    with pytest.raises(ConfigError, match=r"proxy\.profile: no profile 'other'"):
        config_mod.parse({"proxy": {"listen": "127.0.0.1:0", "profile": "other"}}, "c.toml")


@pytest.mark.parametrize(
    ("endpoint", "ok"),
    [
        ("https://us-central1-aiplatform.googleapis.com", True),
        ("https://psc.example.internal:8443/", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://example.com", False),  # the token would travel in clear text
        ("https://example.com/v1", False),  # an origin, no path
        ("ftp://example.com", False),
        ("https://user:pw@example.com", False),
    ],
)
def test_api_endpoint_is_an_origin(endpoint: str, ok: bool) -> None:
    data = {
        "profiles": {
            "default": {"openai": {"project": PROJECT, "location": "l1", "api_endpoint": endpoint}}
        }
    }
    if ok:
        cfg = config_mod.parse(data)
        assert cfg.profiles["default"].base_url.startswith(endpoint.rstrip("/") + "/v1/projects/")
    else:
        with pytest.raises(ConfigError, match=r"profiles\.default\.openai\.api_endpoint: "):
            config_mod.parse(data)


def test_a_taken_port_is_one_line_and_exit_2(
    fake: FakeGoogle, api: FakeOpenAI, short_tmp: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = proxy_config(fake, short_tmp, api.origin).replace("127.0.0.1:0", f"127.0.0.1:{port}")
        (short_tmp / "config.toml").write_text(cfg)
        proc = subprocess.run(
            [sys.executable, "-m", "tokend", "run", "--config", str(short_tmp / "config.toml")],
            env=tokend_env(fake, short_tmp / "rt"),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and f"proxy.listen: cannot listen on 127.0.0.1:{port}" in errors[0]


# -- files and keys ---------------------------------------------------------------------------


def test_proxy_env_and_the_key_file(proxied: Callable[..., Any], short_tmp: Path) -> None:
    with proxied() as (d, env):
        assert list(env) == ["OPENAI_BASE_URL", "OPENAI_API_KEY"]
        assert env["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
        assert env["OPENAI_BASE_URL"].endswith("/v1")
        st = d.file("proxy.env").stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        keys_file = short_tmp / "state" / "proxy-keys.json"
        assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(keys_file.parent.stat().st_mode) == 0o700
        keys = json.loads(keys_file.read_text())["keys"]
        assert [k["name"] for k in keys] == ["default"]
        assert keys[0]["key"] == env["OPENAI_API_KEY"]
        # The same file works for `set -a; . proxy.env`, as for EnvironmentFile=.
        out = subprocess.run(
            [
                "sh",
                "-c",
                'set -a; . "$1"; printf "%s %s" "$OPENAI_BASE_URL" "$OPENAI_API_KEY"',
                "sh",
                str(d.file("proxy.env")),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out == f"{env['OPENAI_BASE_URL']} {env['OPENAI_API_KEY']}"
        # `tokend env --proxy` prints the same, in each format.
        for fmt, expect in [
            ("sh", f"export OPENAI_API_KEY={env['OPENAI_API_KEY']}"),
            ("dotenv", f"OPENAI_BASE_URL={env['OPENAI_BASE_URL']}"),
            ("fish", f"set -gx OPENAI_API_KEY '{env['OPENAI_API_KEY']}';"),
        ]:
            printed = subprocess.run(
                [sys.executable, "-m", "tokend", "env", "--proxy", "--format", fmt],
                env=d.env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert expect in printed.splitlines()
        printed = subprocess.run(
            [sys.executable, "-m", "tokend", "env", "--proxy", "--format", "json"],
            env=d.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(printed) == env
        status = subprocess.run(
            [sys.executable, "-m", "tokend", "status"], env=d.env, capture_output=True, text=True
        ).stdout
        assert f"local proxy: {env['OPENAI_BASE_URL']} (`tokend env --proxy` for its key)" in status
        assert env["OPENAI_API_KEY"] not in status
        doctor = subprocess.run(
            [sys.executable, "-m", "tokend", "doctor", "--config", str(d.config_path)],
            env=d.env,
            capture_output=True,
            text=True,
        ).stdout
        assert re.search(
            rf"^OK +proxy +{re.escape(env['OPENAI_BASE_URL'])} answers", doctor, re.M
        ), doctor
        # The runtime dir deleted: proxy.env comes back with the same key.
        shutil.rmtree(d.runtime_dir)
        assert proxy_env(d) == env
    # Restarted, the proxy keeps its key: configured tools keep working.
    d.log_path.unlink()  # (run_daemon's readiness check reads the log)
    with proxied() as (d, again):
        assert again["OPENAI_API_KEY"] == env["OPENAI_API_KEY"]
        assert (
            raw(
                again,
                "POST",
                "/v1/chat/completions",
                body=CHAT,
                headers={"Content-Type": "application/json"},
            )[0]
            == 200
        )


def test_env_proxy_when_the_proxy_is_off(fake: FakeGoogle, short_tmp: Path) -> None:
    cfg = short_tmp / "config.toml"
    cfg.write_text("")
    env = {**tokend_env(fake, short_tmp / "rt"), "TOKEND_CONFIG": str(cfg)}
    proc = subprocess.run(
        [sys.executable, "-m", "tokend", "env", "--proxy"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"tokend: the local proxy is off: set listen under [proxy] in {cfg} "
        '(e.g. listen = "127.0.0.1:8789") and restart tokend'
    ]


def test_keys_rotate_add_revoke_take_effect_at_once(
    proxied: Callable[..., Any], api: FakeOpenAI
) -> None:
    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tokend", "proxy-key", *args, "--config", str(d.config_path)],
            env={**d.env, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def status(key: str) -> int:
        return raw(
            env,
            "POST",
            "/v1/chat/completions",
            body=CHAT,
            key=key,
            headers={"Content-Type": "application/json"},
        )[0]

    with proxied() as (d, env):
        old = env["OPENAI_API_KEY"]
        added = cli("add", "ci")
        assert added.returncode == 0, added.stderr
        ci_key = added.stdout.strip()
        assert ci_key.startswith("tokend-") and ci_key != old
        wait_for(lambda: status(ci_key) == 200)
        listed = cli("list")
        assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["default", "ci"]
        assert old not in listed.stdout and ci_key not in listed.stdout
        assert cli("add", "ci").returncode == 2  # exists: rotate replaces it
        assert cli("revoke", "default").returncode == 2  # proxy.env holds it: rotate instead

        rotated = cli("rotate")
        assert rotated.returncode == 0 and rotated.stdout == "", rotated
        new = wait_for(lambda: (e := proxy_env(d))["OPENAI_API_KEY"] != old and e["OPENAI_API_KEY"])
        wait_for(lambda: status(new) == 200)
        assert status(old) == 401
        assert status(ci_key) == 200  # the other keys are untouched

        assert cli("revoke", "ci").returncode == 0
        wait_for(lambda: status(ci_key) == 401)
        # The keys the running daemon reads, wherever this shell's state dir would be
        # (a systemd unit sets TOKEND_STATE_DIR to its StateDirectory).
        other = cli("add", "elsewhere", TOKEND_STATE_DIR=str(d.dir / "not-the-daemons"))
        assert other.returncode == 0, other.stderr
        wait_for(lambda: status(other.stdout.strip()) == 200)
        assert not (d.dir / "not-the-daemons").exists()
        # A malformed keys file is refused and the running keys kept.
        keys_file = d.dir / "state" / "proxy-keys.json"
        keys_file.write_text("{not json")
        d.wait_log("proxy keys not reloaded, keeping the running ones")
        assert status(new) == 200
        assert "key=ci" in d.log()
        for secret in (old, new, ci_key):
            assert secret not in d.log()


# -- the main job: tools that read OPENAI_API_KEY once ----------------------------------------


SDK_LOOP = r"""
import json, os, sys, time
import openai

# Configured only from proxy.env (the environment), like any tool: the default client.
client = openai.OpenAI(max_retries=0)
deadline = time.monotonic() + float(sys.argv[1])
done = 0
while time.monotonic() < deadline and done < int(sys.argv[2]):
    ask = dict(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    r = client.chat.completions.create(**ask)
    assert r.choices[0].message.content == "ok", r
    chunks = client.chat.completions.create(**ask, stream=True)
    parts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(parts), parts
    e = client.embeddings.create(model="text-embedding-005", input=["a", "b"])
    assert len(e.data) == 2
    done += 1
    time.sleep(0.2)
print(json.dumps({"rounds": done}))
"""


def test_default_openai_client_survives_rotations(
    fake: FakeGoogle, api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    """One long-running process with the SDK's default client, configured once from
    proxy.env, keeps succeeding (plain, streamed, embeddings) across at least 5 token
    rotations: what every tool reading OPENAI_API_KEY once at start needs."""
    fake.lifetime = 7.0
    with proxied() as (d, env):
        child_env = {k: v for k, v in d.env.items() if not k.startswith("OPENAI_")}
        child_env.update(env)
        proc = subprocess.Popen(
            [sys.executable, "-c", SDK_LOOP, "60", "10000"],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: len(set(api.seen_tokens)) >= 6 or proc.poll() is not None, 60)
        finally:
            proc.terminate()
            _out, err = proc.communicate(timeout=10)
        assert proc.returncode in (0, -15), err
        assert len(set(api.seen_tokens)) >= 6, "fewer than 5 rotations seen"
        assert api.rejected == 0  # not one request reached Vertex with a dead token
        assert not [s for s in api.requests if s.status != 200]
        # The model got its google/ prefix; the local key never left the machine's proxy.
        bodies = [s.json() for s in api.requests if s.path.endswith("/chat/completions")]
        assert {b["model"] for b in bodies} == {"google/gemini-2.5-flash"}
        for seen in api.requests:
            assert env["OPENAI_API_KEY"] not in json.dumps(seen.headers)
            assert fake.who(seen.token) is not None
        assert "key=default" in d.log() and "model=google/gemini-2.5-flash" in d.log()
        assert env["OPENAI_API_KEY"] not in d.log()


def test_streamed_chunks_arrive_as_the_upstream_sends_them(
    api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    api.stream_chunks = 5
    api.stream_delay = 0.3
    with proxied() as (_d, env):
        arrivals = []
        stream = client(env).chat.completions.create(
            model="google/gemini-2.5-flash",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices:
                arrivals.append(time.monotonic())
        sent = [at for _req, _event, at in api.stream_log]
        assert len(arrivals) == len(sent) >= 5
        assert arrivals[0] < sent[-1], "the first chunk waited for the last one"
        # Each chunk is through the proxy long before the next one is sent (0.3 s apart).
        for got, left in zip(arrivals, sent, strict=True):
            assert 0 <= got - left < 0.15


def test_a_client_that_leaves_cancels_the_upstream_stream(
    api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    api.stream_chunks = 20
    api.stream_delay = 0.5
    with proxied() as (d, env):
        stream = client(env).chat.completions.create(
            model="google/gemini-2.5-flash",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        next(iter(stream))
        stream.close()
        wait_for(lambda: api.disconnects == 1, 5)
        d.wait_log(" 499 ")
        assert len(api.stream_log) < 10


def test_an_early_revoked_token_costs_one_refresh_and_one_replay(
    fake: FakeGoogle, api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    """Google revokes the served token before its expiry: the next requests meet a 401
    upstream; they share one forced refresh and are each replayed once, with the new
    token. The tool sees only successes."""
    with proxied() as (d, env):
        assert client_status(env)[0] == 200
        revoked = api.requests[-1].token
        fake.revoke(revoked)
        token_calls = fake.calls["token"]
        results: list[int] = []

        def call() -> None:
            results.append(client_status(env)[0])

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert results == [200] * 8
        assert fake.calls["token"] == token_calls + 1, "the forced refresh was not shared"
        refused = [s for s in api.requests if s.status == 401]
        assert refused and {s.token for s in refused} == {revoked}
        replayed = [s for s in api.requests if s.status == 200 and s.token != revoked]
        assert len(replayed) == 8 and all(s.body == CHAT for s in replayed)
        d.wait_log("the upstream refused the token; refreshing")


# -- routes and headers -----------------------------------------------------------------------


def test_what_goes_upstream(fake: FakeGoogle, api: FakeOpenAI, proxied: Callable[..., Any]) -> None:
    with proxied(
        proxy='models = ["google/gemini-2.5-pro"]\n'
        'aliases = { "gpt-4o" = "google/gemini-2.5-pro" }',
        profile='quota_project = "billing-project"',
    ) as (_d, env):
        status, body = raw(
            env,
            "POST",
            "/v1/chat/completions?trace=1",
            body=json.dumps({"model": "gpt-4o", "messages": []}).encode(),
            headers={
                "Content-Type": "application/json",
                "X-Api-Key": env["OPENAI_API_KEY"],
                "Cookie": "session=1",
                "X-Custom": "kept",
                "Origin": "http://localhost:3000",
            },
        )
        assert status == 200, body
        seen = api.requests[-1]
        assert (
            seen.path == f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/openapi"
            "/chat/completions?trace=1"
        )
        assert seen.json()["model"] == "google/gemini-2.5-pro"
        assert fake.is_valid(seen.token)
        assert seen.headers["x-goog-user-project"] == "billing-project"
        assert seen.headers["x-custom"] == "kept"
        for gone in ("x-api-key", "cookie", "origin"):
            assert gone not in seen.headers
        assert env["OPENAI_API_KEY"] not in json.dumps(seen.headers)

        models = client(env).models.list()
        assert [m.id for m in models.data] == ["google/gemini-2.5-pro", "gpt-4o"]

        # Vertex's own API, for the configured project: Claude on Vertex, streamed.
        anthropic = json.dumps(
            {
                "anthropic_version": "vertex-2023-10-16",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            }
        ).encode()
        path = (
            f"/vertex/v1/projects/{PROJECT}/locations/us-central1"
            "/publishers/anthropic/models/claude-x:streamRawPredict"
        )
        status, body = raw(
            env,
            "POST",
            path,
            body=anthropic,
            key=None,
            headers={"Content-Type": "application/json", "x-api-key": env["OPENAI_API_KEY"]},
        )
        assert status == 200 and b"message_stop" in body
        assert api.requests[-1].path == path[len("/vertex") :]


@pytest.mark.parametrize(
    ("method", "path", "headers", "key", "status", "code"),
    [
        ("POST", "/v1/chat/completions", {}, None, 401, "invalid_api_key"),
        ("POST", "/v1/chat/completions", {}, "tokend-" + "x" * 43, 401, "invalid_api_key"),
        (
            "POST",
            "/v1/chat/completions",
            {"Origin": "https://evil.example"},
            "env",
            403,
            "forbidden_origin",
        ),
        ("GET", "/v1/../../v1/projects/other/x", {}, "env", 400, "bad_path"),
        ("GET", "/v1/%2e%2e/%2e%2e/projects/other", {}, "env", 400, "bad_path"),
        ("GET", "/v1/a%2Fb", {}, "env", 400, "bad_path"),
        (
            "POST",
            "/vertex/v1/projects/other-project/locations/us-central1/x",
            {},
            "env",
            403,
            "forbidden_path",
        ),
        ("GET", "/vertex/v1/locations", {}, "env", 403, "forbidden_path"),
        ("GET", "/healthz", {}, "env", 404, "not_found"),
        ("GET", "http://example.com/v1/models", {}, "env", 400, "not_a_forward_proxy"),
        ("CONNECT", "example.com:443", {}, "env", 400, "not_a_forward_proxy"),
    ],
)
def test_refused_requests_never_reach_the_upstream(
    fake: FakeGoogle,
    api: FakeOpenAI,
    proxied: Callable[..., Any],
    method: str,
    path: str,
    headers: dict[str, str],
    key: str | None,
    status: int,
    code: str,
) -> None:
    with proxied() as (_d, env):
        got, body = raw(
            env, method, path, headers=headers, key=key, body=b"" if method == "POST" else None
        )
        assert got == status, body
        err = error_of(body)
        assert err["code"] == code
        assert env["OPENAI_API_KEY"] not in body.decode()
        assert fake.secrets() and not [t for t in fake.secrets() if t in body.decode()]
        assert api.requests == []


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1:1", "localhost", ""])
def test_a_foreign_host_is_refused(api: FakeOpenAI, proxied: Callable[..., Any], host: str) -> None:
    """DNS rebinding: a web page at evil.example resolving to 127.0.0.1 sends its own Host."""
    with proxied() as (_d, env):
        got, body = raw(env, "GET", "/v1/models", host=host.format(port=port_of(env)) or " ")
        assert got in (400, 403), body
        assert api.requests == []


def test_accepted_hosts_and_no_cors(api: FakeOpenAI, proxied: Callable[..., Any]) -> None:
    with proxied() as (_d, env):
        port = port_of(env)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            got, _ = raw(
                env,
                "POST",
                "/v1/chat/completions",
                host=host,
                body=CHAT,
                headers={"Content-Type": "application/json"},
            )
            assert got == 200, host
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "OPTIONS",
            "/v1/chat/completions",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 403
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        conn.close()


def test_a_body_over_the_limit_is_413(api: FakeOpenAI, proxied: Callable[..., Any]) -> None:
    with proxied(proxy="max_request_mib = 1") as (_d, env):
        got, body = raw(
            env,
            "POST",
            "/v1/embeddings",
            body=b"x" * ((1 << 20) + 1),
            headers={"Content-Type": "application/json"},
        )
        assert got == 413 and error_of(body)["code"] == "request_too_large"
        assert api.requests == []


def test_upstream_unreachable_is_502(fake: FakeGoogle, short_tmp: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: refused
        cfg = proxy_config(fake, short_tmp, dead, proxy="connect_timeout = 2")
        with run_daemon(fake, short_tmp, cfg) as d:
            env = proxy_env(d)
            got, body = client_status(env)
    assert got == 502
    err = error_of(body)
    assert err["code"] == "upstream_unreachable" and dead in err["message"]


def test_no_token_is_503_with_the_fix(fake: FakeGoogle, api: FakeOpenAI, short_tmp: Path) -> None:
    creds = fake.write_authorized_user(short_tmp / "adc.json")
    fake.invalid_grant()
    cfg = textwrap.dedent(
        f"""\
        [proxy]
        listen = "127.0.0.1:0"
        [profiles.default]
        credentials = "{creds}"
        token_uri = "{fake.token_uri}"
        [profiles.default.openai]
        project = "{PROJECT}"
        location = "us-central1"
        api_endpoint = "{api.origin}"
        """
    )
    with run_daemon(fake, short_tmp, cfg, wait_ready=False) as d:
        env = proxy_env(d)
        d.wait_log("reauth")
        got, body = client_status(env)
    assert got == 503
    err = error_of(body)
    assert err["code"] == "reauth_required"
    assert "gcloud auth application-default login" in err["message"]
    assert api.requests == []


def client_status(env: dict[str, str]) -> tuple[int, bytes]:
    """One plain chat completion through the proxy with the local key."""
    return raw(
        env, "POST", "/v1/chat/completions", body=CHAT, headers={"Content-Type": "application/json"}
    )


def test_metrics_count_requests_per_key_and_status(proxied: Callable[..., Any]) -> None:
    import socket

    with proxied() as (d, env):
        assert client_status(env)[0] == 200
        assert raw(env, "GET", "/v1/models", key=None)[0] == 401
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(d.runtime_dir / "tokend.sock"))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        body = data.decode()
        assert body.startswith("HTTP/1.1 200")
        assert 'tokend_proxy_requests_total{key="default",status="200"} 1.0' in body
        assert 'tokend_proxy_requests_total{key="-",status="401"} 1.0' in body


# -- another user -------------------------------------------------------------------------------


CALLER = r"""
import http.client, os, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
conn.request("POST", "/v1/chat/completions", body=b"{}", headers={
    "Authorization": "Bearer " + os.environ["KEY"], "Content-Type": "application/json"})
r = conn.getresponse()
print(r.status, r.read().decode())
"""


@pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("useradd") is None
    or shutil.which("setpriv") is None
    or not sys.platform.startswith("linux"),
    reason="needs root, useradd and setpriv (Linux) to act as another user",
)
def test_another_uid_with_the_right_key_is_refused_unless_allowed(
    api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    name = f"tkx{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
    )
    as_user = ["setpriv", "--reuid", name, "--regid", name, "--clear-groups"]
    try:
        with proxied() as (d, env):
            proc = subprocess.run(
                [*as_user, sys.executable, "-I", "-c", CALLER, str(port_of(env))],
                env={"KEY": env["OPENAI_API_KEY"], "PATH": os.environ["PATH"]},
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
            )
            assert proc.returncode == 0, proc.stderr
            status, _, body = proc.stdout.partition(" ")
            assert status == "403"
            assert "may not use this proxy" in body and '"forbidden_uid"' in body
            assert api.requests == []
            d.wait_log("proxy refused a connection from uid")
            # Our own uid, same key: served.
            assert client_status(env)[0] == 200
        # proxy.allow_uids lets that user in (and only through the proxy: no socket
        # or file of ours opens to it).
        import pwd

        uid = pwd.getpwnam(name).pw_uid
        d.log_path.unlink()
        with proxied(proxy=f"allow_uids = [{uid}]") as (d, env):
            proc = subprocess.run(
                [*as_user, sys.executable, "-I", "-c", CALLER, str(port_of(env))],
                env={"KEY": env["OPENAI_API_KEY"], "PATH": os.environ["PATH"]},
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
            )
            assert proc.stdout.startswith("200 "), proc.stdout + proc.stderr
    finally:
        subprocess.run(["userdel", name], check=False)


def test_proxy_module_is_not_on_the_client_path() -> None:
    """The CLI's env --proxy path must stay light: it reads proxy.env, nothing more."""
    code = (
        "import sys, tokend.client, tokend.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'tokend.proxy'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_a_silent_stream_is_cut_after_idle_timeout(
    api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    """No total timeout on a stream, an idle one instead: the upstream sends its headers,
    then nothing; the proxy cuts the stream after idle_timeout, and says so."""
    api.stream_chunks = 2
    api.stream_delay = 4.0
    with proxied(proxy="idle_timeout = 1") as (d, env):
        body = json.dumps({**json.loads(CHAT), "stream": True}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port_of(env), timeout=10)
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={
                "Authorization": f"Bearer {env['OPENAI_API_KEY']}",
                "Content-Type": "application/json",
            },
        )
        started = time.monotonic()
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        assert time.monotonic() - started < 3.0  # cut at ~1 s, not at the 4 s chunk
        conn.close()
        d.wait_log("upstream stream ended early: no answer in time")


def test_a_reload_changes_aliases_and_models_at_once(
    api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    import signal

    with proxied(proxy='aliases = { "gpt-4o" = "google/gemini-2.5-pro" }') as (d, env):
        ask = json.dumps({"model": "gpt-4o", "messages": []}).encode()
        headers = {"Content-Type": "application/json"}
        assert raw(env, "POST", "/v1/chat/completions", body=ask, headers=headers)[0] == 200
        assert api.requests[-1].json()["model"] == "google/gemini-2.5-pro"
        text = d.config_path.read_text().replace("gemini-2.5-pro", "gemini-2.5-flash")
        d.config_path.write_text(text.replace("[proxy]", '[proxy]\nmodels = ["m1"]'))
        d.signal(signal.SIGHUP)
        d.wait_log("configuration reloaded")
        assert raw(env, "POST", "/v1/chat/completions", body=ask, headers=headers)[0] == 200
        assert api.requests[-1].json()["model"] == "google/gemini-2.5-flash"
        models = json.loads(raw(env, "GET", "/v1/models")[1])
        assert [m["id"] for m in models["data"]] == ["m1", "gpt-4o"]
        assert proxy_env(d) == env  # same address, same key


# -- what the review found ------------------------------------------------------------------


def test_a_netrc_for_the_upstream_changes_nothing(
    api: FakeOpenAI, proxied: Callable[..., Any], short_tmp: Path
) -> None:
    """aiohttp's trust_env would read ~/.netrc and clash with the Authorization header."""
    netrc = short_tmp / "netrc"
    netrc.write_text("default login someone password hunter2\n")
    netrc.chmod(0o600)
    with proxied(env={"NETRC": str(netrc)}) as (_d, env):
        assert client_status(env)[0] == 200
        assert "hunter2" not in json.dumps(api.requests[-1].headers)


def test_the_key_is_found_among_the_credentials_a_client_sends(
    api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    """google-genai sends its own Bearer token; the local key rides in x-api-key."""
    with proxied() as (_d, env):
        got, _ = raw(
            env,
            "POST",
            "/v1/chat/completions",
            body=CHAT,
            key="ya29.someone-elses",
            headers={"Content-Type": "application/json", "x-api-key": env["OPENAI_API_KEY"]},
        )
        assert got == 200
        assert "someone-elses" not in json.dumps(api.requests[-1].headers)
        # Bytes no key can hold are a plain 401, not a failure.
        import socket

        with socket.create_connection(("127.0.0.1", port_of(env)), timeout=5) as sock:
            sock.sendall(
                b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n" % port_of(env)
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), head
        assert error_of(body)["code"] == "invalid_api_key"


def test_a_non_default_loopback_address_is_its_own_host(
    fake: FakeGoogle, api: FakeOpenAI, short_tmp: Path
) -> None:
    cfg = proxy_config(fake, short_tmp, api.origin).replace("127.0.0.1:0", "127.0.0.2:0")
    with run_daemon(fake, short_tmp, cfg) as d:
        env = proxy_env(d)
        assert env["OPENAI_BASE_URL"].startswith("http://127.0.0.2:")
        reply = client(env).chat.completions.create(model="gemini-2.5-flash", messages=[])
        assert reply.choices[0].message.content == "ok"


def test_models_are_listed_without_configuring_any(
    api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    """Tools that list models when they start get Gemini's current two, answered by the
    proxy (Vertex's OpenAI endpoint has no such route), until `models` names others."""
    from tokend.config import DEFAULT_MODELS

    with proxied() as (_d, env):
        assert [m.id for m in client(env).models.list().data] == list(DEFAULT_MODELS)
        assert client(env).models.retrieve("google/gemini-2.5-flash").object == "model"
        assert not [seen for seen in api.requests if "models" in seen.path]


def test_models_by_id_expect_continue_and_a_clean_log(
    api: FakeOpenAI, proxied: Callable[..., Any]
) -> None:
    with proxied(proxy='aliases = { "gpt-4o" = "google/gemini-2.5-pro" }') as (d, env):
        assert client(env).models.retrieve("gpt-4o").id == "gpt-4o"
        got, body = raw(env, "GET", "/v1/models/nope")
        assert got == 404 and error_of(body)["code"] == "model_not_found"
        # Expect: 100-continue is answered before the body is sent (curl waits for it).
        conn = http.client.HTTPConnection("127.0.0.1", port_of(env), timeout=5)
        conn.putrequest("POST", "/v1/chat/completions")
        for name, value in {
            "Authorization": f"Bearer {env['OPENAI_API_KEY']}",
            "Content-Type": "application/json",
            "Content-Length": str(len(CHAT)),
            "Expect": "100-continue",
        }.items():
            conn.putheader(name, value)
        conn.endheaders()
        assert conn.sock is not None
        assert conn.sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        conn.send(CHAT)
        assert conn.getresponse().status == 200
        conn.close()
        # A model name cannot steer a terminal reading the log.
        evil = json.dumps({"model": "x\x1b[31mred", "messages": []}).encode()
        raw(
            env,
            "POST",
            "/v1/chat/completions",
            body=evil,
            headers={"Content-Type": "application/json"},
        )
        d.wait_log("model=x?[31mred")
        assert "\x1b" not in d.log()
