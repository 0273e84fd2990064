"""The socket API's two front ends, in process, against a transport stand-in.

One test body per behaviour, parametrized over both front ends (as uvicorn's
tests/protocols/test_http.py does over h11 and httptools): the fast path
(:class:`tokend.server._Connection`, which hands over to aiohttp what it does not
answer) and aiohttp's protocol (:class:`tokend.api.Api`). Both ask
:mod:`tokend.endpoints` what to answer, so they must answer alike.

The tokens are real: a :class:`ProfileRefresher` with the real :class:`Source` against
FakeGoogle. Only the transport is a stand-in, so that every byte, every pause and every
close can be seen; the bytes cross a real socket in tests/test_server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import http_parser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokend.api import Api
from tokend.config import ProfileConfig
from tokend.endpoints import MAX_FIELD, MAX_HEADERS, MAX_LINE, READ_SIZE, Endpoints, Served
from tokend.metrics import Metrics
from tokend.refresher import ProfileRefresher
from tokend.server import SocketServer, _Connection, parse_plain_get
from tokend.source import Source
from tokend.testing import FakeGoogle

# -- the transport stand-in -------------------------------------------------------------


class StandIn(asyncio.Transport):
    """One connection's transport. What the protocol writes waits in :attr:`sent` until
    the client :meth:`read` s it; past ``high`` unread bytes the protocol is told to
    pause writing, and to resume once the client reads. What the client sends while
    the protocol has paused reading waits here, as in the kernel, and arrives when it
    resumes."""

    def __init__(self, feed: Callable[[bytes], None], sock: socket.socket, high: int) -> None:
        super().__init__()
        self._feed = feed
        self._sock = sock
        self.high = high
        self.sent = bytearray()
        self.kernel = bytearray()  # the client sent it; the protocol has not read it
        self.reading = True
        self.closing = False
        self.aborted = False
        self.paused = False
        self.protocol: Any = None
        self.lost = False

    # the client's side
    def send(self, data: bytes) -> None:
        self.kernel += data
        self._deliver()

    def read(self) -> bytes:
        data, self.sent = bytes(self.sent), bytearray()
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()
        self._maybe_lost()
        return data

    def _deliver(self) -> None:
        while self.kernel and self.reading and not self.closing:
            chunk = bytes(self.kernel[:READ_SIZE])
            del self.kernel[:READ_SIZE]
            self._feed(chunk)

    def _maybe_lost(self) -> None:
        if self.closing and not self.sent and not self.lost:
            self.lost = True
            self.protocol.connection_lost(None)

    # the protocol's side
    def write(self, data: Any) -> None:
        if self.closing:
            return
        self.sent += bytes(data)
        if len(self.sent) > self.high and not self.paused:
            self.paused = True
            self.protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return len(self.sent)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.high = high

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.high // 4, self.high)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        asyncio.get_running_loop().call_soon(self._deliver)

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closing = True
        self._maybe_lost()

    def abort(self) -> None:
        self.closing = self.aborted = True
        self.sent = bytearray()
        self._maybe_lost()

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"socket": self._sock, "peername": "", "sockname": ""}.get(name, default)


# -- the two front ends -------------------------------------------------------------------


class FrontEnd:
    """A connection to one front end: ``send`` bytes, ``read`` what came back."""

    def __init__(self, kind: str, server: SocketServer, api: Api, high: int) -> None:
        self.kind = kind
        self._a, self._b = socket.socketpair()  # a real peer for the uid check
        if kind == "fast":
            proto: Any = _Connection(server)

            def feed(data: bytes) -> None:
                buf = proto.get_buffer(len(data))
                buf[: len(data)] = data
                proto.buffer_updated(len(data))

        else:
            proto = api.web()
            feed = proto.data_received
        self.transport = StandIn(feed, self._a, high)
        self.transport.protocol = proto
        proto.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.transport.send(data)

    async def answers(
        self, n: int, timeout: float = 5.0
    ) -> list[tuple[int, dict[str, str], bytes]]:
        """Read until ``n`` whole responses came back (reading frees the protocol to
        write more)."""
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            data += self.transport.read()
            parsed = responses(data)
            if len(parsed) >= n:
                return parsed
            assert loop.time() < deadline, f"only {len(parsed)} of {n} answers: {data[-300:]!r}"
            await asyncio.sleep(0.005)

    def close(self) -> None:
        self._a.close()
        self._b.close()


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The whole HTTP/1.1 responses at the start of ``data``."""
    out = []
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return out
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return out
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]


@contextlib.asynccontextmanager
async def serving(fake: FakeGoogle, tmp: Path) -> AsyncIterator[tuple[SocketServer, Api]]:
    """A real refresher holding a real token, behind both front ends."""
    creds = fake.write_service_account(tmp / "sa.json")
    refresher = ProfileRefresher(
        "default", Source("default", ProfileConfig(credentials=str(creds)), timeout=5.0), []
    )
    task = asyncio.create_task(refresher.run())
    while refresher.token is None:
        await asyncio.sleep(0.01)
    refreshers = {"default": refresher}
    endpoints = Endpoints(Served(refreshers, "config.toml", tmp), Metrics(refreshers))
    try:
        yield SocketServer(endpoints, tmp / "unused.sock"), Api(endpoints)
    finally:
        refresher.stop()
        await asyncio.wait_for(task, 5)


def run(fake: FakeGoogle, tmp: Path, body: Callable[[SocketServer, Api], Any]) -> None:
    """Run ``body(server, api)`` on a new event loop, with :func:`serving` around it."""

    async def main() -> None:
        async with serving(fake, tmp) as (server, api):
            await body(server, api)

    asyncio.run(main())


FRONT_ENDS = ["fast", "aiohttp"]
GET = b"GET %s HTTP/1.1\r\nHost: tokend\r\n\r\n"


@pytest.fixture(params=FRONT_ENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_plain_token_request(fake: FakeGoogle, tmp_path: Path, kind: str) -> None:
    """Both front ends answer ``GET /v1/token`` with the token object, not to be
    stored, and keep the connection open."""

    async def body(server: SocketServer, api: Api) -> None:
        conn = FrontEnd(kind, server, api, high=1 << 20)
        conn.send(GET % b"/v1/token?profile=default&min_valid=60")
        ((status, headers, payload),) = await conn.answers(1)
        token = json.loads(payload)
        assert status == 200 and fake.is_valid(token["access_token"])
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert "connection" not in headers and not conn.transport.closing
        counted = server.endpoints.metrics.text().decode()
        assert 'tokend_requests_total{path="/v1/token",status="200"} 1.0' in counted
        conn.close()

    run(fake, tmp_path, body)


def test_a_head_split_across_two_writes(fake: FakeGoogle, tmp_path: Path, kind: str) -> None:
    """Half a request head, a pause, the rest: answered once it is whole (the fast path
    hands such a connection to aiohttp, which waits for the rest)."""

    async def body(server: SocketServer, api: Api) -> None:
        conn = FrontEnd(kind, server, api, high=1 << 20)
        conn.send(b"GET /v1/token HTTP/1.1\r\nHo")
        await asyncio.sleep(0.05)
        assert not conn.transport.sent
        conn.send(b"st: t\r\n\r\n")
        ((status, _, payload),) = await conn.answers(1)
        assert status == 200 and fake.is_valid(json.loads(payload)["access_token"])
        conn.close()

    run(fake, tmp_path, body)


def test_health_and_errors_are_alike(fake: FakeGoogle, tmp_path: Path, kind: str) -> None:
    """/healthz, an unknown profile (404) and a bad query (400) in the API's shape: the
    fast path answers the first two and hands the third to aiohttp, on the same
    connection and in order."""

    async def body(server: SocketServer, api: Api) -> None:
        conn = FrontEnd(kind, server, api, high=1 << 20)
        conn.send(GET % b"/healthz" + GET % b"/v1/token?profile=nope" + GET % b"/v1/token?wait=x")
        got = await conn.answers(3)
        assert [status for status, _, _ in got] == [200, 404, 400]
        assert json.loads(got[0][2]) == {"status": "ok"}
        assert json.loads(got[1][2])["error"] == "unknown_profile"
        assert "config.toml" in json.loads(got[1][2])["detail"]
        assert json.loads(got[2][2])["error"] == "bad_request"
        conn.close()

    run(fake, tmp_path, body)


def test_no_token_yet_is_answered_at_once(fake: FakeGoogle, tmp_path: Path, kind: str) -> None:
    """A profile whose first fetch is still on its way: a 503 that says so, at once and
    without aiohttp on the fast path (a client asking at start-up does not wait for
    aiohttp to load); with ``wait`` the fast path hands the request over."""

    async def body(server: SocketServer, api: Api) -> None:
        creds = fake.write_service_account(tmp_path / "late.json")
        late = ProfileRefresher(
            "late", Source("late", ProfileConfig(credentials=str(creds)), timeout=5.0), []
        )
        server.endpoints.served.refreshers["late"] = late  # never started: no token
        conn = FrontEnd(kind, server, api, high=1 << 20)
        conn.send(GET % b"/v1/token?profile=late")
        ((status, headers, payload),) = await conn.answers(1)
        assert status == 503 and json.loads(payload)["error"] == "starting"
        assert headers["content-type"] == "application/json"
        if kind == "fast":
            assert conn.transport.protocol._inner is None and server.api is None
            conn.send(GET % b"/v1/token?profile=late&wait=0.1")
            ((status, _, _),) = await conn.answers(1)
            assert status == 503 and conn.transport.protocol._inner is not None
        conn.close()

    run(fake, tmp_path, body)


def test_heads_are_read_once_and_kept_bounded(fake: FakeGoogle, tmp_path: Path) -> None:
    """The fast path keeps what a head means (clients repeat theirs), not the answer:
    the same head gets 200 while the profile holds a token, 503 once it does not; and
    a client sending ever-new heads leaves at most HEADS_KEPT of them kept."""
    from tokend.server import HEADS_KEPT

    async def body(server: SocketServer, api: Api) -> None:
        head = b"GET /v1/token HTTP/1.1\r\nHost: tokend"
        answer = server.fast_answer(head)
        assert answer is not None and answer[0].startswith(b"HTTP/1.1 200 ")
        refresher = server.endpoints.served.refreshers["default"]
        token, refresher.token = refresher.token, None
        answer = server.fast_answer(head)
        assert answer is not None and answer[0].startswith(b"HTTP/1.1 503 ")
        refresher.token = token
        for i in range(HEADS_KEPT * 3):
            server.fast_answer(b"GET /v1/token HTTP/1.1\r\nHost: t%d" % i)
        assert len(server._heads) <= HEADS_KEPT

    run(fake, tmp_path, body)


def test_pipelined_requests_keep_their_order_and_close_is_honoured(
    fake: FakeGoogle, tmp_path: Path, kind: str
) -> None:
    """Ten pipelined requests of two kinds come back in order; ``Connection: close``
    on the last one closes the connection once the answers are out."""

    async def body(server: SocketServer, api: Api) -> None:
        conn = FrontEnd(kind, server, api, high=1 << 20)
        reqs = [GET % (b"/healthz" if i % 2 else b"/v1/token") for i in range(9)]
        last = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        conn.send(b"".join(reqs) + last)
        got = await conn.answers(10)
        kinds = ["token" if b"access_token" in p else "health" for _, _, p in got]
        assert kinds == ["token", "health"] * 5
        assert got[-1][1].get("connection") == "close"
        for _ in range(100):
            if conn.transport.closing:
                break
            await asyncio.sleep(0.01)
        assert conn.transport.closing and not conn.transport.aborted
        conn.close()

    run(fake, tmp_path, body)


def test_back_pressure_stops_reading_until_the_client_reads(
    fake: FakeGoogle, tmp_path: Path, kind: str
) -> None:
    """1. A client pipelines 2,000 requests and reads nothing.
    2. Once 4 KiB of answers wait unread, the front end stops reading: most requests
       stay in the "kernel", unanswered.
    3. The client reads: every answer comes, in order, and nothing was lost."""

    async def body(server: SocketServer, api: Api) -> None:
        conn = FrontEnd(kind, server, api, high=4096)
        n = 2000
        conn.send(GET % b"/healthz" * n)
        await asyncio.sleep(0.2)
        assert not conn.transport.reading
        assert len(conn.transport.kernel) > len(GET % b"/healthz") * n // 2
        assert len(conn.transport.sent) < 64 * 1024
        got = await conn.answers(n, timeout=20)
        assert len(got) == n and all(s == 200 for s, _, _ in got)
        assert not conn.transport.kernel
        conn.close()

    run(fake, tmp_path, body)


def test_the_fast_path_hands_over_the_bytes_it_did_not_answer(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """Fast answers, then a request the fast path declines (a body, so aiohttp's), then
    more plain ones, in one write: aiohttp takes the connection and what was not
    answered yet, and the answers keep their order."""

    async def body(server: SocketServer, api: Api) -> None:
        conn = FrontEnd("fast", server, api, high=1 << 20)
        slow = b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
        conn.send(GET % b"/v1/token" + slow + GET % b"/v1/status" + GET % b"/v1/token")
        got = await conn.answers(4)
        assert [s for s, _, _ in got] == [200, 200, 200, 200]
        assert b"access_token" in got[0][2] and b"access_token" in got[3][2]
        assert json.loads(got[2][2])["profiles"]["default"]["state"] == "fresh"
        assert "server" not in got[0][1] and "server" in got[1][1]  # aiohttp names itself
        conn.close()

    run(fake, tmp_path, body)


# -- the fast path's head parser ----------------------------------------------------------

ACCEPTED = [
    (b"GET /v1/token HTTP/1.1\r\nHost: t", "/v1/token", {}, False),
    (b"GET /healthz HTTP/1.1\r\nhost: t\r\nConnection: close", "/healthz", {}, True),
    (
        b"GET /v1/token?profile=w&min_valid=60&wait=1 HTTP/1.1\r\nHost: t\r\nAccept: */*",
        "/v1/token",
        {"profile": "w", "min_valid": "60", "wait": "1"},
        False,
    ),
    (b"GET /v1/token HTTP/1.1\r\nHost: t\r\nConnection: keep-alive", "/v1/token", {}, False),
]

DECLINED = [
    b"POST /v1/token HTTP/1.1\r\nHost: t",
    b"GET /v1/token HTTP/1.0\r\nHost: t",
    b"GET /v1/token HTTP/1.1",  # no Host
    b"GET /v1/status HTTP/1.1\r\nHost: t",
    b"GET /v1/token?profile=%41 HTTP/1.1\r\nHost: t",
    b"GET /v1/token?nope=1 HTTP/1.1\r\nHost: t",
    b"GET /v1/token?wait=1&wait=2 HTTP/1.1\r\nHost: t",
    b"GET /healthz?x=1 HTTP/1.1\r\nHost: t",
    b"GET /v1/token HTTP/1.1\r\nHost: t\r\nContent-Length: 0",
    b"GET /v1/token HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked",
    b"GET /v1/token HTTP/1.1\r\nHost: t\r\nConnection: upgrade",
    b"GET /v1/token HTTP/1.1\r\nHost: t\r\nBad Name: x",
    b"GET /v1/token HTTP/1.1\r\nHost: t\r\nX: \x00",
    b"GET /v1/token HTTP/1.1\r\n" + b"X: y\r\n" * MAX_HEADERS + b"Host: t",
    b"GET  /v1/token HTTP/1.1\r\nHost: t",
    b"GET /v1/token HTTP/1.1\r\nHost: t\r\nHost: t",  # aiohttp refuses it: found by hypothesis
]


@pytest.mark.parametrize(("head", "path", "params", "close"), ACCEPTED)
def test_plain_gets_are_recognised(
    head: bytes, path: str, params: dict[str, str], close: bool
) -> None:
    req = parse_plain_get(head)
    assert req is not None and (req.path, req.params, req.close) == (path, params, close)


@pytest.mark.parametrize("head", DECLINED)
def test_everything_else_is_left_to_aiohttp(head: bytes) -> None:
    assert parse_plain_get(head) is None


class _Proto:
    """The least aiohttp's parser needs of a protocol."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


_TOKEN_CHARS = "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"
_names = st.sampled_from(
    ["Host", "Connection", "Content-Length", "Transfer-Encoding", "Upgrade", "Content-Type"]
) | st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12)
_values = st.sampled_from(["close", "keep-alive", "close, keep-alive", "Upgrade", "0"]) | st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=15
)
_queries = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_=&.-%0123456789", max_size=30).map(
    lambda q: "?" + q if q else ""
) | st.sampled_from(["?profile=a&wait=1&min_valid=60", "?wait=1&wait=2", "?profile="])
_heads = st.builds(
    lambda method, path, query, version, host, fields: (
        f"{method} {path}{query} {version}".encode()
        + (b"\r\nHost: t" if host else b"")
        + b"".join(f"\r\n{n}:{v}".encode() for n, v in fields)
    ),
    st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "get"]),
    st.sampled_from(["/v1/token", "/v1/token", "/healthz", "/v1/status", "//v1/token"]),
    _queries,
    st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
    st.booleans(),
    st.lists(st.tuples(_names, _values), max_size=6),
)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_heads)
def test_what_the_fast_path_accepts_means_the_same_to_aiohttp(head: bytes) -> None:
    """Whenever the fast path takes a request, aiohttp's own parser reads the same
    bytes as the same request: a GET of that path and query, HTTP/1.1, no body, and
    closing exactly when the fast path will."""
    req = parse_plain_get(head)
    if req is None:
        return

    async def parse() -> Any:
        parser = http_parser.HttpRequestParser(
            _Proto(),  # type: ignore[arg-type]
            asyncio.get_running_loop(),
            2**16,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )
        messages, _, _ = parser.feed_data(head + b"\r\n\r\n")
        return messages

    ((message, payload),) = asyncio.run(parse())
    assert message.method == "GET" and message.version == (1, 1)
    assert message.url.path == req.path
    assert dict(message.url.query) == req.params
    assert message.should_close == req.close
    assert not message.chunked and payload.is_eof()
