"""The metadata endpoint, end to end: the real ``tokend run`` against FakeGoogle with
``[metadata]`` on. Plain HTTP where the rules are the point (headers, Host, paths);
Google's own libraries where the point is that they work: google-auth in a separate
Python process, and Node's google-auth-library from npm, each configured only by the
variables the README gives, across token rotations (those are ``slow``)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Daemon, as_user, run_daemon, sa_config, wait_for

from tests.reliability_util import assert_no_secrets
from tokend import config as config_mod
from tokend.endpoints import Answer, Endpoints, Served, error
from tokend.errors import ConfigError
from tokend.metadata import Metadata, MetadataSettings
from tokend.metrics import Metrics
from tokend.testing import FakeGoogle, FakeOpenAI

PROJECT = "fake-project"
NUMBER = "123456789012"
SA = "sa@fake-project.iam.gserviceaccount.com"
CLOUD = "https://www.googleapis.com/auth/cloud-platform"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
FLAVOR = {"Metadata-Flavor": "Google"}


def metadata_config(
    fake: FakeGoogle, directory: Path, metadata: str = "", profile: str = ""
) -> str:
    """A service-account profile with a project, and the endpoint on a free port."""
    return sa_config(
        fake,
        directory,
        textwrap.dedent(
            f"""\
            {profile}
            [profiles.default.openai]
            project = "{PROJECT}"
            location = "us-central1"
            [metadata]
            listen = "127.0.0.1:0"
            numeric_project_id = "{NUMBER}"
            {metadata}
            """
        ),
    )


def metadata_host(d: Daemon) -> str:
    """``host:port`` the endpoint of this run listens on (what GCE_METADATA_HOST says)."""

    def listening() -> bool:
        log = d.log()
        return 0 < log.count("tokend started") <= log.count("metadata endpoint listening")

    wait_for(listening)
    return re.findall(r"GCE_METADATA_HOST=(\S+)\)", d.log())[-1]


@pytest.fixture
def served(fake: FakeGoogle, short_tmp: Path) -> Callable[..., Any]:
    """``with served(metadata="...", profile="...") as (daemon, host):`` — tokend with
    the endpoint on; ``host`` is its ``host:port``."""

    @contextlib.contextmanager
    def start(metadata: str = "", profile: str = "", **kw: Any) -> Iterator[tuple[Daemon, str]]:
        cfg = metadata_config(fake, short_tmp, metadata, profile)
        with run_daemon(fake, short_tmp, cfg, **kw) as d:
            yield d, metadata_host(d)

    return start


def get(
    host: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    host_header: str | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], str]:
    """One request with exactly these headers (and ``Host: host`` unless told)."""
    address, _, port = host.rpartition(":")
    conn = http.client.HTTPConnection(address.strip("[]"), int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host_header is None else host_header)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def token_file(d: Daemon) -> dict[str, Any]:
    return json.loads(wait_for(lambda: d.read("token.json")))


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"listen": "0.0.0.0:8790"}, "metadata.listen: 0.0.0.0 is not a loopback address: "),
        (
            {"listen": "8790"},
            'metadata.listen: must be host:port on loopback, e.g. "127.0.0.1:8790"',
        ),
        ({"listen": "127.0.0.1:0", "profile": "nope"}, "metadata.profile: no profile 'nope'"),
        ({"numeric_project_id": "12a"}, "metadata.numeric_project_id: must be the project number"),
        ({"project_id": "Bad"}, "metadata.project_id: must be a Google Cloud project ID"),
        ({"allow_uids": [-1]}, "metadata.allow_uids: uids are whole numbers"),
        ({"listen": "127.0.0.1:0", "scopes": []}, "metadata.scopes: unknown key"),
    ],
)
def test_configuration_errors_are_one_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.parse({"metadata": table}, "config.toml")
    assert str(err.value).startswith("config.toml: " + message), err.value
    assert "\n" not in str(err.value)


def test_configuration_defaults_and_the_project() -> None:
    off = config_mod.parse({}, "c.toml")
    assert not off.metadata.enabled and off.metadata.listen == ""
    openai = {"project": "vertex-project", "location": "us-central1"}
    for profile, metadata, expect in [
        ({}, {}, ""),
        ({"quota_project": "quota-project"}, {}, "quota-project"),
        ({"quota_project": "quota-project", "openai": openai}, {}, "vertex-project"),
        ({"openai": openai}, {"project_id": "own-project"}, "own-project"),
    ]:
        cfg = config_mod.parse(
            {"profiles": {"default": profile}, "metadata": {"listen": "localhost:0", **metadata}},
            "c.toml",
        )
        assert cfg.metadata_project_id == expect
        assert cfg.metadata.address == ("127.0.0.1", 0)
    number = config_mod.parse({"metadata": {"numeric_project_id": 42}}, "c.toml")
    assert number.metadata.numeric_project_id == "42"  # a TOML integer is taken too
    clash = {
        "proxy": {"listen": "127.0.0.1:8790"},
        "metadata": {"listen": "localhost:8790"},
        "profiles": {"default": {"openai": openai}},
    }
    with pytest.raises(ConfigError, match=r"metadata\.listen: localhost:8790 is proxy\.listen"):
        config_mod.parse(clash, "c.toml")


# -- the rules, over plain HTTP -----------------------------------------------------------


def test_paths_headers_and_hosts(served: Callable[..., Any], fake: FakeGoogle) -> None:
    """What GCE answers, as GCE answers it, and nothing else: every response carries
    ``Metadata-Flavor: Google``; only ``/`` needs no such request header."""
    with served() as (d, host):
        port = host.rsplit(":", 1)[1]
        texts: dict[str, str] = {}

        # 1. The ping: no header needed, the header in the answer.
        status, headers, body = get(host, "/")
        assert (status, headers["metadata-flavor"], body) == (200, "Google", "computeMetadata/\n")

        # 2. The token: the one tokend serves, in GCE's shape.
        status, headers, body = get(host, TOKEN_PATH, FLAVOR)
        assert status == 200, body
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        served_token = json.loads(body)
        assert set(served_token) == {"access_token", "expires_in", "token_type"}
        assert served_token["token_type"] == "Bearer"
        on_disk = token_file(d)
        assert served_token["access_token"] == on_disk["access_token"]
        assert fake.is_valid(served_token["access_token"])
        expires_at = fake.expires_at(served_token["access_token"])
        assert expires_at is not None
        assert abs(time.time() + served_token["expires_in"] - expires_at) < 3
        for scopes in (CLOUD, f"{CLOUD},{CLOUD}"):
            status, _, body = get(host, f"{TOKEN_PATH}?scopes={scopes}", FLAVOR)
            assert status == 200 and json.loads(body)["access_token"] == on_disk["access_token"]
        drive = "https://www.googleapis.com/auth/drive"
        status, headers, body = get(host, f"{TOKEN_PATH}?scopes={CLOUD},{drive}", FLAVOR)
        assert status == 400 and headers["metadata-flavor"] == "Google"
        assert drive in body and "[profiles.default]" in body
        texts["scopes 400"] = body

        # 3. The service account, each way the libraries ask.
        sa_root = "/computeMetadata/v1/instance/service-accounts"
        info = {"aliases": ["default"], "email": SA, "scopes": [CLOUD]}
        expected = {
            f"{sa_root}/default/?recursive=true": json.dumps(info),
            f"{sa_root}/{SA}/?recursive=true": json.dumps(info),
            f"{sa_root}/?recursive=true": json.dumps({"default": info, SA: info}),
            f"{sa_root}/": f"default/\n{SA}/\n",
            sa_root: f"default/\n{SA}/\n",
            f"{sa_root}/default/": "aliases\nemail\nidentity\nscopes\ntoken\n",
            f"{sa_root}/default/email": SA,
            f"{sa_root}/{SA}/email": SA,
            f"{sa_root}/default/scopes": f"{CLOUD}\n",
            f"{sa_root}/default/aliases": "default\n",
            "/computeMetadata/v1/instance": "service-accounts/\n",
            "/computeMetadata/v1/instance/": "service-accounts/\n",
            "/computeMetadata/v1/": "instance/\nproject/\n",
            "/computeMetadata/v1/project/project-id": PROJECT,
            "/computeMetadata/v1/project/numeric-project-id": NUMBER,
            "/computeMetadata/v1/project/?recursive=true": json.dumps(
                {"numericProjectId": int(NUMBER), "projectId": PROJECT}
            ),
        }
        for path, want in expected.items():
            status, headers, body = get(host, path, FLAVOR)
            assert (status, body) == (200, want), path
            assert headers["metadata-flavor"] == "Google", path
            kind = "application/json" if "recursive" in path else "application/text"
            assert headers["content-type"] == kind, path

        # 4. ID tokens: an audience is required (what then answers is the ID-token
        # source's: tests below, in-process).
        status, _, body = get(host, f"{sa_root}/default/identity?format=full", FLAVOR)
        assert status == 400 and "audience" in body

        # 5. Refusals, each with the header, none with a token.
        xff = {**FLAVOR, "X-Forwarded-For": "10.0.0.1"}
        refused: dict[str, tuple[str, dict[str, str], str | None, int, str]] = {
            "no flavor": (TOKEN_PATH, {}, None, 403, "Missing Metadata-Flavor:Google header."),
            "wrong flavor": (TOKEN_PATH, {"Metadata-Flavor": "google"}, None, 403, "Missing"),
            "X-Forwarded-For": (TOKEN_PATH, xff, None, 403, "X-Forwarded-For"),
            "Forwarded": (TOKEN_PATH, {**FLAVOR, "Forwarded": "for=1.2.3.4"}, None, 403, "Forw"),
            "XFF on the ping": ("/", {"X-Forwarded-For": "127.0.0.1"}, None, 403, "Forwarded"),
            "foreign Host": (TOKEN_PATH, FLAVOR, f"evil.example:{port}", 403, "is not this"),
            "Host, wrong port": (TOKEN_PATH, FLAVOR, "127.0.0.1:1", 403, "GCE_METADATA_HOST="),
            "bare loopback Host": ("/", {}, "127.0.0.1", 403, "is not this"),
            "no Host": ("/", {}, "", 403, "is not this"),
            "wait_for_change": (
                f"{sa_root}/default/email?wait_for_change=true",
                FLAVOR,
                None,
                400,
                "not supported",
            ),
        }
        for path in (
            "/computeMetadata/v1beta1/instance/service-accounts/default/token",
            "/computeMetadata/v1/instance/zone",
            "/computeMetadata/v1/universe/universe-domain",
            f"{sa_root}/other@x.iam.gserviceaccount.com/token",
            "/computeMetadata/v1/instance//service-accounts/",
            f"{sa_root}/default%2Ftoken",
            f"{TOKEN_PATH}/x",
            "/v1/token",
            f"http://evil.example{TOKEN_PATH}",  # absolute form
        ):
            refused[path] = (path, FLAVOR, None, 404, "Not Found")
        for name, (path, headers_in, host_header, want, says) in refused.items():
            status, headers, body = get(host, path, headers_in, host_header=host_header)
            assert (status, headers.get("metadata-flavor")) == (want, "Google"), name
            assert says in body, (name, body)
            assert "ya29." not in body, name
            texts[name] = body
        status, headers, body = get(host, TOKEN_PATH, FLAVOR, method="POST")
        assert (status, headers["allow"]) == (405, "GET")

        # 6. Every loopback name with the port, and the metadata server's own name.
        loopback = (f"localhost:{port}", f"[::1]:{port}")
        for name in (*loopback, "metadata.google.internal", f"METADATA.google.internal:{port}"):
            status, _, body = get(host, TOKEN_PATH, FLAVOR, host_header=name)
            assert status == 200, (name, body)

        # 7. One log line per request, no query string, no token; counted; status says.
        d.wait_log(f"metadata GET {TOKEN_PATH} 200 ")
        assert f"metadata GET {TOKEN_PATH} 400 " in d.log()
        assert "metadata GET / 403 " in d.log()
        assert "scopes=" not in d.log() and "wait_for_change" not in d.log()
        from tests.reliability_util import get as socket_get

        metrics = socket_get(d.file("tokend.sock"), "/metrics")[1].decode()
        assert 'tokend_metadata_requests_total{route="token",status="200"} 7.0' in metrics
        assert 'tokend_metadata_requests_total{route="ping",status="200"} 1.0' in metrics
        texts["metrics"] = metrics
        status_text = subprocess.run(
            [sys.executable, "-m", "tokend", "status"],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert f"metadata endpoint: http://{host} (GCE_METADATA_HOST={host})" in status_text
        status_json = json.loads(socket_get(d.file("tokend.sock"), "/v1/status")[1])
        assert status_json["metadata"] == host
        doctor = subprocess.run(
            [sys.executable, "-m", "tokend", "doctor", "--config", str(d.config_path)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert re.search(rf"^OK +metadata +{re.escape(host)} answers", doctor, re.M), doctor
        texts["log"] = d.log()
        assert assert_no_secrets(fake, texts) == len(texts)


def test_no_token_is_503_with_the_fix(fake: FakeGoogle, short_tmp: Path) -> None:
    """A user whose login was revoked: the libraries get 503 and the command to run
    (google-auth shows the body in its error)."""
    creds = fake.write_authorized_user(short_tmp / "adc.json")
    fake.invalid_grant()
    cfg = (
        f'[profiles.default]\ncredentials = "{creds}"\ntoken_uri = "{fake.token_uri}"\n'
        '[metadata]\nlisten = "127.0.0.1:0"\n'
    )
    with run_daemon(fake, short_tmp, cfg, wait_ready=False) as d:
        host = metadata_host(d)
        d.wait_log("reauth")
        status, headers, body = get(host, TOKEN_PATH, FLAVOR)
        assert (status, headers["metadata-flavor"]) == (503, "Google")
        assert (
            body.startswith("reauth_required: ") and "gcloud auth application-default login" in body
        )
        # The account is still named (as the credentials say), and no project is made up.
        email = get(host, "/computeMetadata/v1/instance/service-accounts/default/email", FLAVOR)
        assert email[0] == 200
        project = get(host, "/computeMetadata/v1/project/project-id", FLAVOR)
        assert project[0] == 404 and "project_id under [metadata]" in project[2]
        assert get(host, "/computeMetadata/v1/project/numeric-project-id", FLAVOR)[0] == 404


def test_a_reload_turns_it_on_changes_it_and_turns_it_off(
    fake: FakeGoogle, short_tmp: Path
) -> None:
    with run_daemon(fake, short_tmp, sa_config(fake, short_tmp)) as d:
        assert "metadata endpoint" not in d.log()
        d.config_path.write_text(sa_config(fake, short_tmp, '[metadata]\nlisten = "127.0.0.1:0"\n'))
        d.signal(signal.SIGHUP)
        host = wait_for(lambda: re.findall(r"GCE_METADATA_HOST=(\S+)\)", d.log()))[-1]
        assert get(host, "/computeMetadata/v1/project/numeric-project-id", FLAVOR)[0] == 404
        d.config_path.write_text(
            sa_config(
                fake, short_tmp, '[metadata]\nlisten = "127.0.0.1:0"\nnumeric_project_id = "7"\n'
            )
        )
        d.signal(signal.SIGHUP)
        wait_for(
            lambda: get(host, "/computeMetadata/v1/project/numeric-project-id", FLAVOR)[0] == 200
        )
        assert d.log().count("metadata endpoint listening") == 1  # same address, same listener
        d.config_path.write_text(sa_config(fake, short_tmp))
        d.signal(signal.SIGHUP)
        d.wait_log("metadata endpoint stopped")
        with pytest.raises(ConnectionRefusedError):
            get(host, "/")


def test_a_taken_port_is_one_line_and_exit_2(fake: FakeGoogle, short_tmp: Path) -> None:
    import socket

    from conftest import tokend_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = metadata_config(fake, short_tmp).replace("127.0.0.1:0", f"127.0.0.1:{port}")
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
    assert len(errors) == 1 and f"metadata.listen: cannot listen on 127.0.0.1:{port}" in errors[0]


# -- another user ---------------------------------------------------------------------------


CALLER = r"""
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
conn.request("GET", sys.argv[2], headers={"Metadata-Flavor": "Google"})
r = conn.getresponse()
print(r.status, r.read().decode())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peer check is Linux's")
def test_another_uid_is_refused_unless_allowed(
    served: Callable[..., Any], other_user: tuple[str, int, str]
) -> None:
    """Over TCP, with every header right, another local user gets a 403 saying why and
    how to let it in, before a byte of its request is read; metadata.allow_uids lets it
    in."""
    name, uid, python = other_user

    def call(host: str) -> tuple[str, str]:
        proc = subprocess.run(
            [*as_user(name), python, "-I", "-c", CALLER, host.rsplit(":", 1)[1], TOKEN_PATH],
            env={"PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        assert proc.returncode == 0, proc.stderr
        status, _, body = proc.stdout.partition(" ")
        return status, body

    with served() as (d, host):
        status, body = call(host)
        assert status == "403", body
        assert f"uid {uid} may not use this metadata endpoint" in body
        assert "metadata.allow_uids" in body and "ya29." not in body
        d.wait_log(f"metadata refused a connection from uid {uid}")
        assert get(host, TOKEN_PATH, FLAVOR)[0] == 200  # ours, on the same endpoint
    d.log_path.unlink()
    with served(metadata=f"allow_uids = [{uid}]") as (d, host):
        status, body = call(host)
        assert status == "200", body
        assert json.loads(body)["access_token"] == token_file(d)["access_token"]


# -- ID tokens: the hook the daemon supplies ------------------------------------------------


def run_endpoint(
    hook: Callable[[str, str], Awaitable[str | Answer]] | None,
    paths: list[str],
) -> list[tuple[int, str]]:
    """An endpoint in this process (no profile, no daemon) with ``hook`` as its ID-token
    source; the answers to GETs of ``paths``."""

    async def scenario() -> list[tuple[int, str]]:
        served = Served({}, "<test>", Path("/nonexistent"))
        metrics = Metrics({})
        settings = MetadataSettings(
            "127.0.0.1", 0, "default", (CLOUD,), "", "", frozenset({os.getuid(), 0})
        )
        endpoint = Metadata(Endpoints(served, metrics), settings, metrics, id_token=hook)
        await endpoint.start()
        try:
            answers = []
            for path in paths:
                status, _, body = await asyncio.to_thread(get, endpoint.host, path, FLAVOR)
                answers.append((status, body))
            return answers
        finally:
            await endpoint.stop()

    return asyncio.run(scenario())


IDENTITY = "/computeMetadata/v1/instance/service-accounts/default/identity"


def test_identity_asks_the_id_token_source() -> None:
    asked: list[tuple[str, str]] = []

    async def hook(profile: str, audience: str) -> str | Answer:
        asked.append((profile, audience))
        if audience == "https://refused.example":
            return error(400, "user_credentials", "profile default: user credentials cannot")
        return "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"

    answers = run_endpoint(
        hook,
        [
            f"{IDENTITY}?audience=https://run.example&format=full",
            f"{IDENTITY}?audience=https://refused.example",
            f"{IDENTITY}?format=full",
        ],
    )
    assert answers == [
        (200, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        (400, "user_credentials: profile default: user credentials cannot\n"),
        (400, "non-empty audience parameter required\n"),
    ]
    assert asked == [("default", "https://run.example"), ("default", "https://refused.example")]


def test_identity_without_a_source_is_a_clear_404() -> None:
    [(status, body)] = run_endpoint(None, [f"{IDENTITY}?audience=https://run.example"])
    assert status == 404 and "does not serve ID tokens" in body


def test_metadata_module_is_not_on_the_client_path() -> None:
    code = (
        "import sys, tokend.client, tokend.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'tokend.metadata'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


# -- Google's libraries ----------------------------------------------------------------------


def sdk_env(host: str, home: Path, **extra: str) -> dict[str, str]:
    """What a program started from a shell set up as the README says has: the metadata
    variables, an empty home (no ADC file, no gcloud configuration), nothing else of
    Google's (no GOOGLE_APPLICATION_CREDENTIALS, no project)."""
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GCE_METADATA_HOST": host,
        "GCE_METADATA_IP": host,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        **extra,
    }


PYTHON_SDK = r"""
import datetime, json, sys, time
import google.auth
from google.auth import compute_engine
from google.auth.transport.requests import AuthorizedSession, Request

seconds, want, url = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
found, project = google.auth.default()  # ADC finds "GCE" through the endpoint
print(json.dumps({"found": type(found).__module__ + "." + type(found).__name__,
                  "project": project}), flush=True)
creds = compute_engine.Credentials()
session = AuthorizedSession(creds)
deadline = time.monotonic() + seconds
seen = set()
while time.monotonic() < deadline and len(seen) < want:
    if url:  # a call the way a client library makes one: it refreshes when it must
        r = session.post(url + "/chat/completions",
                         json={"model": "google/gemini-2.5-flash", "messages": []})
        assert r.status_code == 200, r.text
    else:
        creds.refresh(Request())
    seen.add(creds.token)
    expiry = creds.expiry.replace(tzinfo=datetime.timezone.utc).timestamp()
    print(json.dumps({"token": creds.token, "at": time.time(), "expiry": expiry,
                      "email": creds.service_account_email}), flush=True)
    time.sleep(1)
"""


def run_python_sdk(
    host: str, home: Path, seconds: float, want: int, url: str = ""
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    proc = subprocess.run(
        [sys.executable, "-c", PYTHON_SDK, str(seconds), str(want), url],
        env=sdk_env(host, home),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        cwd=home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    head, *lines = (json.loads(line) for line in proc.stdout.splitlines())
    return head, lines


def test_google_auth_finds_it_and_gets_the_token_tokend_serves(
    served: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """google-auth in its own process, pointed here by GCE_METADATA_HOST and
    GCE_METADATA_IP alone: ``google.auth.default()`` takes it for GCE (ping, project)
    and ``compute_engine.Credentials`` gets tokend's token and account."""
    with served() as (d, host):
        head, [seen] = run_python_sdk(host, short_tmp / "home", 0.1, 1)
        assert head == {
            "found": "google.auth.compute_engine.credentials.Credentials",
            "project": PROJECT,
        }
        assert seen["token"] == token_file(d)["access_token"]
        assert seen["email"] == SA
        assert abs(seen["expiry"] - (fake.expires_at(seen["token"]) or 0)) < 3
        d.wait_log("metadata GET / 200")  # the ping went to GCE_METADATA_IP


def check_rotations(fake: FakeGoogle, seen: list[dict[str, Any]], want: int) -> None:
    """Every token a library got is one tokend was issued (nobody else asks FakeGoogle),
    was live when it got it, with the expiry tokend knows; they come in the order tokend
    got them, and at least ``want`` of them."""
    tokens = list(dict.fromkeys(s["token"] for s in seen))
    assert len(tokens) >= want, f"{len(tokens)} tokens in {len(seen)} calls"
    order = [fake.issued.index(t) for t in tokens]
    assert order == sorted(order)
    for s in seen:
        assert fake.who(s["token"]) == SA
        expires_at = fake.expires_at(s["token"])
        assert expires_at is not None and s["at"] < expires_at
        assert -3 < s["expiry"] - expires_at < 1, (s["expiry"], expires_at)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_google_auth_keeps_getting_fresh_tokens_across_rotations(
    served: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """One long-running process, an AuthorizedSession calling the Vertex-like stand-in
    once a second with ``compute_engine.Credentials``, across 3 rotations of 15 s
    tokens: every call succeeds, none with a dead token."""
    fake.lifetime = 15.0
    with FakeOpenAI(fake, project=PROJECT) as api, served() as (_d, host):
        _, seen = run_python_sdk(host, short_tmp / "home", 75, 4, api.vertex_base_url)
        check_rotations(fake, seen, 4)
        assert api.rejected == 0 and len(api.requests) == len(seen)


# -- Node's google-auth-library ----------------------------------------------------------------

#: What npm installs for the Node test (a major version: its API is what the README's
#: variables are checked against).
NODE_PACKAGE = "google-auth-library@10"

NODE_SDK = r"""
const {GoogleAuth} = require('google-auth-library');
const [seconds, want] = [Number(process.argv[2]), Number(process.argv[3])];
(async () => {
  const auth = new GoogleAuth({scopes: ['https://www.googleapis.com/auth/cloud-platform']});
  const client = await auth.getClient();
  const project = await auth.getProjectId();
  const {client_email} = await auth.getCredentials();
  console.log(JSON.stringify({found: client.constructor.name, project, email: client_email}));
  const deadline = Date.now() + seconds * 1000;
  const seen = new Set();
  while (Date.now() < deadline && seen.size < want) {
    const {token} = await client.getAccessToken();
    seen.add(token);
    console.log(JSON.stringify({token, at: Date.now() / 1000,
                                expiry: client.credentials.expiry_date / 1000}));
    await new Promise(done => setTimeout(done, 1000));
  }
})().catch(err => { console.error(String((err && err.stack) || err)); process.exit(1); });
"""


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``node_modules`` holding google-auth-library, installed with npm once per machine
    into ``$XDG_CACHE_HOME/tokend-tests`` (later runs reuse it). Skipped when Node.js
    is absent; when npm cannot install it, skipped, except under CI=true, where the
    registry is reachable and a skip would hide the test: it fails there."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs Node.js and npm for google-auth-library (not installed)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokend-tests"
    target = cache / ("node-" + NODE_PACKAGE.replace("@", "-").replace("/", "-"))
    if (target / "node_modules" / "google-auth-library" / "package.json").exists():
        return target / "node_modules"
    staging = cache / f"{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "package.json").write_text('{"private": true}\n')
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", NODE_PACKAGE],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=300,
        )
        failed = "" if done.returncode == 0 else done.stderr.strip()[-1000:]
    except subprocess.TimeoutExpired:
        failed = "npm install took over 300 s"
    if failed:
        shutil.rmtree(staging, ignore_errors=True)
        message = f"npm install {NODE_PACKAGE} failed: {failed}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with contextlib.suppress(OSError):  # another worker's copy got there first: fine
        staging.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


def run_node_sdk(
    node_modules: Path, host: str, home: Path, seconds: float, want: int, **env: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    script = home.parent / "sdk.js"
    script.write_text(NODE_SDK)
    proc = subprocess.run(
        ["node", str(script), str(seconds), str(want)],
        env=sdk_env(host, home, NODE_PATH=str(node_modules), **env),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        cwd=home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    head, *lines = (json.loads(line) for line in proc.stdout.splitlines())
    return head, lines


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_node_google_auth_library_across_rotations(
    served: Callable[..., Any], fake: FakeGoogle, short_tmp: Path, node_modules: Path
) -> None:
    """google-auth-library from npm, in Node: 1. with GCE_METADATA_HOST alone it finds
    the endpoint by pinging it (``/computeMetadata/v1/instance``), names the project and
    the account and gets tokend's token; 2. with METADATA_SERVER_DETECTION=assume-present
    too (as the README advises), one process keeps getting fresh tokens across 3
    rotations of 15 s tokens."""
    with served() as (d, host):
        head, [seen] = run_node_sdk(node_modules, host, short_tmp / "home", 0.1, 1)
        assert head == {"found": "Compute", "project": PROJECT, "email": SA}
        assert seen["token"] == token_file(d)["access_token"]
        d.wait_log("metadata GET /computeMetadata/v1/instance 200")
    fake.lifetime = 15.0
    d.log_path.unlink()
    with served() as (d, host):
        head, seen_all = run_node_sdk(
            node_modules,
            host,
            short_tmp / "home",
            75,
            4,
            METADATA_SERVER_DETECTION="assume-present",
        )
        assert head["found"] == "Compute"
        check_rotations(fake, seen_all, 4)
        assert "metadata GET /computeMetadata/v1/instance 200" not in d.log()  # no ping


# -- the README -----------------------------------------------------------------------------

#: The README's lines, with its port (8790) to be replaced by the test's.
README_EXPORT = "export GCE_METADATA_HOST=127.0.0.1:8790 GCE_METADATA_IP=127.0.0.1:8790"
README_CURL = (
    "curl -s -H 'Metadata-Flavor: Google' "
    '"http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/email"'
)


def test_the_readme_metadata_commands(served: Callable[..., Any], short_tmp: Path) -> None:
    """The README's two lines, in a shell, as written (but for the port): the variables
    they export are what the library tests above use, and the curl prints the account."""
    readme = (ROOT / "README.md").read_text()
    assert README_EXPORT in readme and README_CURL in readme
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    with served() as (_d, host):
        port = host.rsplit(":", 1)[1]
        script = f"{README_EXPORT.replace('8790', port)}\n{README_CURL}\n"
        out = subprocess.run(
            ["sh", "-c", script],
            env={"PATH": os.environ["PATH"], "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout == SA, out.stderr
