"""The socket API end to end: a real ``tokend run`` against FakeGoogle, asked over its
Unix socket with curl, raw sockets and tokend.client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import sa_config, wait_for
from tests.reliability_util import request
from tokend import server as server_mod
from tokend.endpoints import Endpoints, Served
from tokend.metrics import Metrics
from tokend.server import SocketServer
from tokend.testing import FakeGoogle

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def get(sock: Path, target: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET over a Unix socket: (status, headers, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def get_json(sock: Path, target: str) -> tuple[int, Any]:
    status, _, body = get(sock, target)
    return status, json.loads(body)


def curl(
    sock: Path, target: str, *extra: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--unix-socket",
            str(sock),
            *extra,
            f"http://tokend{target}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        user=user,
    )


def test_curl_client_and_file_agree(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. The socket, the json file and tokend.client hand out the same token.
    2. It is one FakeGoogle issued and considers valid; the socket is 0600."""
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        out = curl(sock, "/v1/token")
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        on_disk = json.loads(d.read("token.json") or b"{}")
        assert answer["access_token"] == on_disk["access_token"] == d.read("token").decode()
        assert fake.is_valid(answer["access_token"])
        assert answer["token_type"] == "Bearer" and answer["profile"] == "default"
        assert answer["account"] == fake.who(answer["access_token"])
        assert 0 < answer["expires_in"] <= fake.lifetime
        code = (
            "import tokend.client as c; "
            "print(c.token(min_valid=0)); print(c.token(min_valid=10**4))"
        )
        env = {
            **os.environ,
            "TOKEND_RUNTIME_DIR": str(d.runtime_dir),
            "TOKEND_CONFIG": "/nonexistent",
        }
        out2 = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=20
        )
        file_token, socket_token = out2.stdout.split()
        assert file_token == answer["access_token"]
        # min_valid beyond any lifetime: asked the socket, got the daemon's best.
        assert fake.is_valid(socket_token)


def test_min_valid_refreshes_once_for_fifty_concurrent_requests(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. A 60 s token; after a second, 50 clients at once want 59.5 s of validity.
    2. The fetch is slowed so all 50 arrive while it is in flight.
    3. Exactly one more call reached the token endpoint; all 50 got the new token."""
    fake.lifetime = 60
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        old = json.loads(d.read("token.json") or b"{}")["access_token"]
        time.sleep(1.1)
        before = fake.calls["token"]
        fake.hang(0.5, count=1)
        barrier = threading.Barrier(50)
        results: list[tuple[int, str]] = []
        lock = threading.Lock()

        def ask() -> None:
            barrier.wait()
            status, body = get_json(sock, "/v1/token?min_valid=59.5")
            with lock:
                results.append((status, body.get("access_token", "")))

        threads = [threading.Thread(target=ask) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert len(results) == 50
        assert {s for s, _ in results} == {200}
        tokens = {t for _, t in results}
        assert len(tokens) == 1 and old not in tokens
        assert fake.calls["token"] == before + 1
        # The file follows the socket.
        wait_for(lambda: json.loads(d.read("token.json") or b"{}").get("access_token") in tokens)


def test_status_health_metrics_and_errors(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. /v1/status describes both profiles and holds no token.
    2. /healthz is 503 while one profile has no token, with its name.
    3. The broken profile answers 503 with an error code and the fix.
    4. /metrics speaks Prometheus; unknown paths/profiles are 404, bad params 400."""
    extra = f'[profiles.broken]\ncredentials = "{short_tmp}/missing.json"\n'
    with daemon_factory(sa_config(fake, short_tmp, extra)) as d:
        sock = d.file("tokend.sock")
        token = json.loads(d.read("token.json") or b"{}")["access_token"]
        status, body = get_json(sock, "/v1/status")
        assert status == 200
        assert set(body["profiles"]) == {"default", "broken"}
        assert body["profiles"]["default"]["state"] == "fresh"
        wait_for(
            lambda: (
                get_json(sock, "/v1/status")[1]["profiles"]["broken"]["state"] == "reauth_required"
            )
        )
        raw_status = get(sock, "/v1/status")[2].decode()
        assert token not in raw_status

        status, body = get_json(sock, "/healthz")
        assert status == 503 and body["profiles_without_token"] == ["broken"]

        status, body = get_json(sock, "/v1/token?profile=broken&wait=2")
        assert status == 503
        assert body["error"] == "credentials_missing"
        print(body["detail"])
        assert "missing.json" in body["detail"] and "credentials" in body["detail"]

        status, headers, text = get(sock, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        metrics = text.decode()
        assert 'tokend_refreshes_total{profile="default"} 1.0' in metrics
        assert 'tokend_token_valid{profile="broken"} 0.0' in metrics
        assert "tokend_token_expiry_seconds" in metrics
        assert 'tokend_requests_total{path="/v1/status",status="200"}' in metrics
        assert token not in metrics

        assert get_json(sock, "/nope")[0] == 404
        status, body = get_json(sock, "/v1/token?profile=nope")
        assert status == 404 and body["error"] == "unknown_profile" and "default" in body["detail"]
        for bad in ("min_valid=abc", "min_valid=-1", "wait=1e9", "min_valid=nan"):
            status, body = get_json(sock, f"/v1/token?{bad}")
            assert status == 400 and body["error"] == "bad_request", bad


def test_healthz_ok_and_wait_for_first_token(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. The first fetch is slow; a client asking with wait=10 gets the token when it lands.
    2. /healthz turns 200."""
    fake.hang(1.5, count=1)
    with daemon_factory(sa_config(fake, short_tmp), wait_ready=False) as d:
        sock = d.file("tokend.sock")
        wait_for(sock.exists)
        assert get_json(sock, "/v1/token")[0] == 503  # nothing yet, and no waiting asked
        t0 = time.monotonic()
        status, body = get_json(sock, "/v1/token?wait=10")
        assert status == 200 and fake.is_valid(body["access_token"])
        assert time.monotonic() - t0 < 5
        assert get_json(sock, "/healthz") == (200, {"status": "ok"})


def test_bad_clients_do_not_disturb_others(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. Half-open connections (nothing sent, or half a request line), garbage and a
       1 MiB request line hit the socket.
    2. Meanwhile a well-behaved client keeps getting answers, quickly.
    3. The bad requests get a 4xx or are closed; idle ones time out."""
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = str(d.file("tokend.sock"))
        latencies: list[float] = []
        failures: list[str] = []
        stop = threading.Event()

        def good_client() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    status, _, _ = get(Path(sock), "/v1/token")
                    if status != 200:
                        failures.append(str(status))
                except OSError as err:
                    failures.append(repr(err))
                latencies.append(time.monotonic() - t0)

        worker = threading.Thread(target=good_client)
        worker.start()
        try:
            idle = []
            for i in range(20):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sock)
                if i % 2:
                    s.sendall(b"GET /v1/tok")  # a request line that never ends
                idle.append(s)

            def bad(payload: bytes) -> bytes:
                return request(sock, payload, timeout=10)

            assert bad(b"\x00\xff garbage \r\n\r\n").split()[1] == b"400"
            big = bad(b"GET /v1/token?" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n")
            assert big == b"" or big.split()[1].startswith(b"4"), big[:100]
            huge_header = bad(b"GET /healthz HTTP/1.1\r\nX: " + b"b" * 100_000 + b"\r\n\r\n")
            assert huge_header == b"" or huge_header.split()[1].startswith(b"4")
            many = "".join(f"X-{i}: y\r\n" for i in range(200)).encode()
            assert bad(b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n").split()[1].startswith(b"4")

            # Idle and half-sent connections are closed by the server (idle timeout 5 s).
            for s in idle:
                s.settimeout(10)
                try:
                    assert s.recv(100) == b""
                except ConnectionResetError:
                    pass
                s.close()
        finally:
            stop.set()
            worker.join(10)
        assert not failures, failures[:5]
        assert len(latencies) > 20
        assert max(latencies) < 1.0, max(latencies)


def _responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split the bytes of pipelined responses: [(status, headers, body)]."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, head[:200]
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, data[:length]))
        data = data[length:]
    return out


def test_aiohttp_loads_on_the_first_request_the_fast_path_declines(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. A daemon serving tokens and health over the socket has not loaded aiohttp
       (its parser's shared object is not mapped): the memory figure in the README.
    2. The first /v1/status loads it, and answers."""

    def aiohttp_mapped(pid: int) -> bool:
        return "/aiohttp/" in Path(f"/proc/{pid}/maps").read_text()

    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        for target in ("/v1/token", "/v1/token?min_valid=60", "/healthz"):
            assert get(sock, target)[0] == 200
        assert not aiohttp_mapped(d.proc.pid)
        status, body = get_json(sock, "/v1/status")
        assert status == 200 and body["profiles"]["default"]["state"] == "fresh"
        assert aiohttp_mapped(d.proc.pid)


def test_tokens_still_served_when_aiohttp_cannot_load(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """A broken aiohttp (here: a package shadowing it that fails to import) costs the
    requests that need it, with one log line saying so, and nothing else: tokens and
    health are still served, and the daemon keeps running."""
    broken = short_tmp / "broken" / "aiohttp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("simulated broken install")\n')
    env = {"PYTHONPATH": os.pathsep.join([str(broken.parent), os.environ.get("PYTHONPATH", "")])}
    with daemon_factory(sa_config(fake, short_tmp), env=env) as d:
        sock = d.file("tokend.sock")
        assert get(sock, "/v1/token")[0] == 200
        for _ in range(2):  # each attempt fails cleanly: the connection is closed
            assert request(sock, b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n") == b""
        assert get(sock, "/v1/token")[0] == 200
        assert get_json(sock, "/healthz") == (200, {"status": "ok"})
        assert d.proc.poll() is None
        assert "cannot load the HTTP API (ImportError: simulated broken install)" in d.log()


def test_stale_socket_replaced_and_live_socket_refused(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. A socket file from a crashed run is replaced.
    2. A second tokend on the same socket exits 2 with a clear line and writes nothing."""
    runtime = short_tmp / "rt"
    runtime.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime / "tokend.sock"))
    stale.close()  # the file stays, nobody listens: what a SIGKILL-ed daemon leaves
    config = sa_config(fake, short_tmp)
    with daemon_factory(config) as d:
        assert "removed stale socket" in d.log()
        sock = d.file("tokend.sock")
        assert get(sock, "/healthz")[0] == 200
        calls = fake.calls["token"]
        token_file = d.read("token.json")
        second = subprocess.run(
            [sys.executable, "-m", "tokend", "run", "--config", str(d.config_path)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert second.returncode == 2
        assert "another tokend is already serving" in second.stderr
        assert fake.calls["token"] == calls and d.read("token.json") == token_file
        assert get(sock, "/healthz")[0] == 200  # the first one is unharmed
    assert not (runtime / "tokend.sock").exists()  # removed on a clean stop


TEST_USER = "tokendtest"
#: An interpreter the throw-away user can run: the venv's may live in a private home.
PYTHON = next(
    (
        p
        for p in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable)
        if os.path.exists(p)
    ),
    sys.executable,
)
PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
print("connected", flush=True)
try:
    s.sendall(b"GET /v1/token HTTP/1.1\\r\\nHost: tokend\\r\\n\\r\\n")
except (ConnectionResetError, BrokenPipeError):
    pass  # refused before the request went out: the answer is there to read
data = b""
try:
    while chunk := s.recv(4096):
        data += chunk
except ConnectionResetError:
    pass  # the server closed with the request unread
head, _, body = data.partition(b"\\r\\n\\r\\n")
print(head.split(b"\\r\\n")[0].decode() or "no answer")
print(body.decode())
"""


def _throwaway_user() -> str:
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
            capture_output=True,
        )
    return TEST_USER


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create and become another user")
@pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd")
def test_other_uid_refused_even_with_socket_chmod_666(
    daemon_factory: Callable[..., Any], fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. The socket is made reachable for everyone: chmod 666 and a hard link in a
       world-readable directory (the runtime dir itself stays 0700).
    2. Root gets a token through the link; another user gets a 403 that names its uid
       and the fix, and nothing else.
    3. The refusal is logged once, with the uid and no secret."""
    user = _throwaway_user()
    uid = pwd.getpwnam(user).pw_uid
    try:
        subprocess.run([PYTHON, "-I", "-c", "pass"], check=True, user=user, timeout=10)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"no Python interpreter that {user} may run")
    public = Path(tempfile.mkdtemp(prefix="tkp", dir="/tmp"))
    try:
        public.chmod(0o755)
        with daemon_factory(sa_config(fake, short_tmp)) as d:
            sock = d.file("tokend.sock")
            sock.chmod(0o666)
            link = public / "s"
            os.link(sock, link)
            assert curl(link, "/healthz").returncode == 0
            for _ in range(3):
                out = subprocess.run(
                    [PYTHON, "-I", "-c", PROBE, str(link)],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    user=user,
                )
                # It could connect (the file allows it), and got only the refusal.
                connected, status, body = out.stdout.splitlines()
                assert connected == "connected", out.stderr
                assert status == "HTTP/1.1 403 Forbidden", out.stdout
                answer = json.loads(body)
                assert answer["error"] == "forbidden", answer
                assert f"uid {uid} is not allowed" in answer["detail"], answer
                assert "access_token" not in body
            d.wait_log(f"from uid {uid}")
            assert d.log().count(f"from uid {uid}") == 1
    finally:
        shutil.rmtree(public, ignore_errors=True)


# -- in process: one SocketServer on a real Unix socket, driven byte by byte --------------


@contextlib.asynccontextmanager
async def serving(
    path: Path, allow_uids: tuple[int, ...] = (), runtime: Path | None = None
) -> AsyncIterator[SocketServer]:
    """A :class:`SocketServer` on ``path`` for a handle with no profiles (so
    /healthz is 200 and every token request a 404) and the runtime dir
    ``runtime`` (default: the socket's directory)."""
    served = Served({}, "<test>", runtime or path.parent)
    server = SocketServer(Endpoints(served, Metrics({})), path, allow_uids)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, str(path))
    return s


def _read_all(s: socket.socket) -> tuple[bytes, str]:
    """What the server sent on ``s``, and how the connection ended: ``eof``,
    ``reset`` or ``open`` (nothing more, and no end yet)."""
    data = b""
    while True:
        try:
            chunk = s.recv(1 << 16)
        except BlockingIOError:
            return data, "open"
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


#: One request per front end: the fast path answers /healthz itself; the same request
#: with an empty body goes to aiohttp.
FRONT_ENDS = {
    "fast": b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    "aiohttp": b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_a_client_that_does_not_read_is_bounded_then_aborted(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, front_end: str
) -> None:
    """1. 50 clients each push 1 MiB of pipelined requests and read nothing.
    2. The server stops reading from each once its answers back up: what it holds for
       them (traced Python allocations) stays under 16 KiB a connection on the fast
       path, 64 KiB once aiohttp has it (its parser queues up to 32 parsed requests).
    3. Answers unsent for the idle timeout (0.5 s here) get the connection aborted:
       the client can still read the answers that reached it, then the end."""
    import tokend.api

    monkeypatch.setattr(server_mod, "IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(tokend.api, "IDLE_TIMEOUT", 0.5)
    n = 50
    payload = FRONT_ENDS[front_end] * ((1 << 20) // len(FRONT_ENDS[front_end]))
    path = short_tmp / "s.sock"

    async def scenario() -> dict[str, Any]:
        async with serving(path) as server:
            if front_end == "aiohttp":  # load it before measuring
                warm = await _connect(path)
                warm.send(FRONT_ENDS["aiohttp"])
                await asyncio.sleep(0.5)
                warm.close()
            clients = [await _connect(path) for _ in range(n)]
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            left = [memoryview(payload) for _ in clients]
            t0 = time.monotonic()
            stalled_since = t0
            while time.monotonic() - stalled_since < 0.2:  # until the server reads no more
                for i, s in enumerate(clients):
                    with contextlib.suppress(BlockingIOError):
                        sent = s.send(left[i])
                        left[i] = left[i][sent:]
                        stalled_since = time.monotonic()
                await asyncio.sleep(0.01)
            held = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            open_when_stalled = len(server.connections)
            await asyncio.sleep(0.5 + 0.3)
            ends = [_read_all(s) for s in clients]
            for s in clients:
                s.close()
            return {
                "per_connection_bytes": held // n,
                "sent_each": len(payload) - len(left[0]),
                "open_when_stalled": open_when_stalled,
                "open_after_timeout": len(server.connections),
                "ends": sorted({end for _, end in ends}),
                "answered": min(data.count(b"HTTP/1.1 200") for data, _ in ends),
            }

    figures = asyncio.run(scenario())
    print(figures)
    bound = 16 * 1024 if front_end == "fast" else 64 * 1024
    assert figures["per_connection_bytes"] < bound, figures
    assert figures["open_when_stalled"] == n and figures["open_after_timeout"] == 0, figures
    assert figures["ends"] in (["eof"], ["reset"], ["eof", "reset"]), figures
    assert figures["answered"] > 0, figures


def test_a_refused_peer_is_told_why_and_nothing_it_sent_is_read(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A server that allows no uid at all (so we are refused; another uid would be
       the same), three connections that each send a request.
    2. Each gets a 403 whose JSON body names the uid and the fix, then the close; the
       next recv fails with ECONNRESET on Linux, which is the kernel saying that the
       request was still unread when the server closed.
    3. One log line for the three; tokend.client's error says what to do."""
    path = short_tmp / "s.sock"
    monkeypatch.setenv("TOKEND_SOCKET", str(path))
    monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(short_tmp / "none"))
    monkeypatch.setenv("TOKEND_CONFIG", str(short_tmp / "none.toml"))

    async def scenario() -> tuple[list[tuple[bytes, str]], str]:
        async with serving(path) as server:
            server.allowed_uids = frozenset()
            results = []
            for _ in range(3):
                s = await _connect(path)
                s.send(FRONT_ENDS["fast"])
                await asyncio.sleep(0.1)
                results.append(_read_all(s))
                s.close()

            def ask() -> str:
                try:
                    tokend.client.token(min_valid=0)
                except tokend.client.TokenUnavailable as err:
                    return str(err)
                return "a token"

            return results, await asyncio.to_thread(ask)

    import tokend.client

    with caplog.at_level("WARNING", logger="tokend.server"):
        results, client_error = asyncio.run(scenario())
    uid = os.getuid()
    for data, end in results:
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n"), data
        assert b"Connection: close" in head and b"Content-Type: application/json" in head
        answer = json.loads(body)
        assert answer["error"] == "forbidden"
        assert f"uid {uid} is not allowed" in answer["detail"]
        assert "socket.allow_uids" in answer["detail"]
        assert end == ("reset" if sys.platform.startswith("linux") else "eof"), end
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert "refused the connection" in client_error and "socket.allow_uids" in client_error, (
        client_error
    )


def test_a_shared_socket_is_0666_in_a_0711_dir_every_time_it_is_bound(short_tmp: Path) -> None:
    """1. With allow_uids and a socket outside the runtime dir, the server creates the
       socket's directory 0711 and the socket 0666 (the peer uid check is the gate).
    2. The socket deleted, then its directory too: restore() brings both back, with
       the same modes.
    3. A directory others can write is refused with the fix; without allow_uids the
       socket stays 0600."""
    from tokend.errors import UnsafePathError

    runtime = short_tmp / "rt"
    runtime.mkdir(mode=0o700)
    shared = short_tmp / "pub"
    path = shared / "s.sock"

    def modes() -> tuple[str, str]:
        return oct(shared.stat().st_mode & 0o777), oct(path.stat().st_mode & 0o777)

    async def scenario() -> list[tuple[str, str]]:
        seen = []
        async with serving(path, allow_uids=(12345,), runtime=runtime) as server:
            seen.append(modes())
            path.unlink()
            await server.restore()
            seen.append(modes())
            path.unlink()
            shared.rmdir()
            await server.restore()
            seen.append(modes())
        shared.chmod(0o777)
        with pytest.raises(UnsafePathError, match="chmod 711"):
            async with serving(path, allow_uids=(12345,), runtime=runtime):
                pass
        shared.chmod(0o755)
        async with serving(path, runtime=runtime):
            seen.append(modes())
        return seen

    seen = asyncio.run(scenario())
    assert seen[:3] == [("0o711", "0o666")] * 3, seen
    assert seen[3] == ("0o755", "0o600"), seen


def test_the_socket_appears_only_once_it_accepts(short_tmp: Path) -> None:
    """The socket is bound and listening under a private name, then linked into place,
    so whoever finds the path can connect (no ECONNREFUSED from a socket bound but not
    yet listening): nothing but the socket is left in its directory. A path with no
    room for the private name (at the AF_UNIX limit) is bound in place, and serves."""
    from tokend.paths import SUN_PATH_MAX

    normal = short_tmp / "a" / "tokend.sock"
    normal.parent.mkdir(mode=0o700)
    longest = short_tmp / "b" / ("s" * (SUN_PATH_MAX - len(os.fsencode(short_tmp / "b")) - 1))
    longest.parent.mkdir(mode=0o700)
    assert len(os.fsencode(longest)) == SUN_PATH_MAX

    def first_connect(path: Path, outcome: list[str]) -> None:
        """Connect the moment the path exists: what a client polling for it does."""
        deadline = time.monotonic() + 5
        while not os.path.lexists(path):
            if time.monotonic() > deadline:
                outcome.append("never appeared")
                return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            try:
                s.connect(str(path))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                outcome.append(s.recv(12).decode())
            except OSError as err:
                outcome.append(type(err).__name__)

    async def scenario() -> list[str]:
        outcomes: list[str] = []
        for _ in range(20):
            poller = threading.Thread(target=first_connect, args=(normal, outcomes))
            poller.start()
            async with serving(normal):
                await asyncio.to_thread(poller.join, 5)
                assert os.listdir(normal.parent) == [normal.name]
                assert stat.S_IMODE(normal.lstat().st_mode) == 0o600
            assert os.listdir(normal.parent) == []
        async with serving(longest):
            s = await _connect(longest)
            s.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes == ["HTTP/1.1 200"] * 20, outcomes
