"""The local Vertex AI proxy: OpenAI-compatible, on loopback, behind a key that never expires.

Most tools read ``OPENAI_API_KEY`` once, at start, so a Google token handed to them dies
with the hour. This proxy is what they talk to instead: ``OPENAI_BASE_URL`` is
``http://127.0.0.1:PORT/v1`` and ``OPENAI_API_KEY`` a *local key* (:mod:`tokend.proxykeys`)
that only this proxy accepts. Each request goes to the profile's Vertex endpoint with the
current Google token put in; the tool never sees that token.

Routes:

- ``/v1/<rest>`` → ``{Vertex OpenAI base URL}/<rest>`` (chat/completions, embeddings...);
  ``GET /v1/models`` answers from ``[proxy] models`` (Vertex has no such route), model
  aliases apply and a bare ``gemini-…`` gets its ``google/`` prefix.
- ``/vertex/<rest>`` → ``{Vertex origin}/<rest>``, only under ``v1/projects/{project}/``
  or ``v1beta1/projects/{project}/`` of the configured project: Vertex's own API for
  gateways (Claude Code's ``ANTHROPIC_VERTEX_BASE_URL``, google-genai's base URL).

The proxy spends the user's Google identity, so it is guarded like the socket: loopback
only (the configuration refuses other addresses), the local key on every request
(compared in constant time), the peer's uid on every connection on Linux
(:mod:`tokend.peers`), ``Host`` limited to loopback names (DNS rebinding), no CORS and no
request from a foreign ``Origin``, no absolute-form targets and no ``CONNECT`` (never an
open proxy). The incoming credentials headers are always dropped before forwarding.

Streams pass through as they arrive (no buffering of responses); a client that goes
away cancels the upstream request; a stream ends when its upstream is silent for
``idle_timeout``. Request bodies are buffered (up to ``max_request_mib``) so that a
request the upstream refused with 401 (a token Google revoked early) can be replayed once,
after one refresh shared by every request that met the same 401.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import ClientError, ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, web
from multidict import CIMultiDict
from yarl import URL

from tokend import clock
from tokend.config import PROXY_ENV, Config
from tokend.endpoints import Answer, Endpoints, TokenQuery
from tokend.logs import printable_path
from tokend.metrics import Metrics
from tokend.peers import PeerGuard, forbidden, listen_loopback, loopback_hosts, stop_serving
from tokend.proxykeys import DEFAULT, KeyRing
from tokend.refresher import ProfileRefresher
from tokend.sinks import atomic_write
from tokend.threads import run_in_thread
from tokend.token import Token

__all__ = ["Proxy", "ProxySettings", "render_env"]

log = logging.getLogger(__name__)

#: Seconds the Google token must still be valid when a request leaves: enough for it to
#: reach Vertex, which checks it once, at the start (a stream may outlive it).
MIN_VALID = 5.0
#: After a 401 forced a refresh, another 401 forces the next one only after this long:
#: an upstream that refuses every token must not turn into a storm against Google.
FORCE_INTERVAL = 5.0
#: Request bodies larger than this are parsed (for their model) in a thread.
BIG_BODY = 256 << 10
#: Idle keep-alive connections from tools are closed after this long.
KEEPALIVE = 75.0
#: Request headers never forwarded: hop-by-hop (RFC 9110 section 7.6.1), the client's
#: credentials (the local key in any of its spellings), and what aiohttp sets itself.
_DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "x-goog-user-project",
        "cookie",
        "origin",
        "referer",
    }
)
#: Response headers never passed back: hop-by-hop, cookies and CORS (the proxy answers
#: no browser), and the length aiohttp sets from what it sends.
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "set-cookie",
        "alt-svc",
        "server",
        "date",
    }
)
_KEY_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")


def render_env(base_url: str, key: str) -> bytes:
    """``proxy.env``: valid for systemd's ``EnvironmentFile=``, ``docker --env-file`` and
    ``set -a; . proxy.env`` alike (no quotes needed: URL and key are plain characters)."""
    return f"OPENAI_BASE_URL={base_url}\nOPENAI_API_KEY={key}\n".encode()


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the proxy needs of the configuration (rebuilt at every reload)."""

    bind: str
    port: int
    profile: str
    project: str
    location: str
    base_url: str  #: the profile's Vertex OpenAI base URL
    api_endpoint: str  #: "" = Google's regional origins
    quota_project: str
    models: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    max_body: int = 32 << 20
    idle_timeout: float = 300.0
    connect_timeout: float = 10.0
    allowed_uids: frozenset[int] = frozenset()
    env_path: Path = Path(PROXY_ENV)

    @classmethod
    def of(cls, config: Config) -> ProxySettings:
        p = config.proxy
        profile = config.profiles[p.profile]
        openai = profile.openai
        assert openai is not None  # Config.validate_proxy
        bind, port = p.address
        return cls(
            bind=bind,
            port=port,
            profile=p.profile,
            project=openai.project,
            location=openai.location,
            base_url=openai.base_url,
            api_endpoint=openai.api_endpoint,
            quota_project=profile.quota_project,
            models=p.models,
            aliases=dict(p.aliases),
            max_body=p.max_request_mib << 20,
            idle_timeout=p.idle_timeout,
            connect_timeout=p.connect_timeout,
            allowed_uids=frozenset({os.getuid(), 0, *p.allow_uids}),
            env_path=config.runtime_path / PROXY_ENV,
        )


class _Refused(Exception):
    """A request the proxy answers itself, with an error in OpenAI's shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


def _error_body(status: int, code: str, message: str) -> bytes:
    kind = _TYPES.get(status, "api_error")
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status, body=_error_body(status, code, message), content_type="application/json"
    )


def _safe_rest(raw: str) -> str:
    """``raw`` (a percent-encoded path tail) if no segment could climb out of the
    prefix it is appended to: no ``.``/``..`` (in any encoding), no encoded ``/`` or
    ``\\``, no empty segment but a trailing one."""
    parts = raw.split("/")
    for i, part in enumerate(parts):
        plain = unquote(part)
        if plain in (".", "..") or "/" in plain or "\\" in plain or "\0" in plain:
            raise _Refused(400, "bad_path", "the path has . or .. segments or encoded slashes")
        if not part and i != len(parts) - 1:
            raise _Refused(400, "bad_path", "the path has an empty segment (//)")
    return raw


@dataclass
class _Call:
    """One request's facts for its log line and metrics."""

    started: float
    method: str
    path: str
    key: str = "-"
    model: str = ""


class Proxy:
    """The proxy's server and its upstream client.

    Args:
        endpoints: where tokens (and the errors when there is none) come from.
        settings: what the configuration says (:meth:`configure` replaces it).
        keys: the local keys accepted (:meth:`set_keys` replaces them).
        metrics: where requests are counted, per key name and status.
    """

    def __init__(
        self, endpoints: Endpoints, settings: ProxySettings, keys: KeyRing, metrics: Metrics
    ) -> None:
        self.endpoints = endpoints
        self.settings = settings
        self.keys = keys
        self.metrics = metrics
        self.port = settings.port
        self._server: asyncio.Server | None = None
        self._web: web.Server | None = None
        self._session: ClientSession | None = None
        self._hosts: frozenset[str] = frozenset()
        self._origins: frozenset[str] = frozenset()
        self._forced_at: dict[str, float] = {}
        self.guard = PeerGuard(
            "proxy", "proxy.allow_uids", lambda: self.settings.allowed_uids, self._refused
        )

    # -- lifecycle --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.settings.bind}]" if ":" in self.settings.bind else self.settings.bind
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        """Listen, then write ``proxy.env``.

        Raises:
            ConfigError: the address is taken or cannot be bound.
        """
        s = self.settings
        sock = listen_loopback(s.bind, s.port, "proxy")
        self.port = int(sock.getsockname()[1])
        self._hosts = loopback_hosts(s.bind, self.port)
        self._web = web.Server(
            self.handle,
            handler_cancellation=True,  # a client gone cancels its upstream request
            access_log=None,  # one line per request of our own, without query strings
            keepalive_timeout=KEEPALIVE,
        )
        self._server = await self.guard.serve(sock, self._web)
        self._session = self._new_session()
        await self.write_env()
        log.info(
            "proxy listening on %s for profile %s (upstream %s)",
            self.base_url,
            s.profile,
            s.api_endpoint or "Vertex AI",
        )

    def _new_session(self) -> ClientSession:
        return ClientSession(
            connector=TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=False,  # bodies pass through as the upstream encoded them
            # Not trust_env: it would also read ~/.netrc, whose credentials clash with the
            # Authorization header (every request a 500). HTTPS_PROXY is honoured below.
            trust_env=False,
            cookie_jar=DummyCookieJar(),  # tools must not share an upstream's cookies
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def stop(self, timeout: float = 1.0) -> None:
        server, self._server = self._server, None
        await stop_serving(server, self._web, timeout)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def configure(self, settings: ProxySettings) -> None:
        """A reload: new routes, models, aliases and limits at once; a new address only
        at the next start (tools already hold this one)."""
        old = self.settings
        if (settings.bind, settings.port) != (old.bind, old.port):
            log.warning(
                "proxy.listen changed: it takes effect when tokend restarts (still on %s)",
                self.base_url,
            )
            settings = _replace_address(settings, old)
        self.settings = settings

    async def set_keys(self, keys: KeyRing) -> None:
        """New local keys (the keys file changed): used from the next request on."""
        old = self.keys.get(DEFAULT)
        self.keys = keys
        log.info("proxy keys: %s", ", ".join(keys.names) or "none")
        new = keys.get(DEFAULT)
        if new is not None and (old is None or old.value != new.value):
            await self.write_env()

    async def write_env(self) -> None:
        """Write ``proxy.env`` (the runtime dir, 0600, atomically), in a thread."""
        key = self.keys.get(DEFAULT)
        if key is None:
            return
        data = render_env(self.base_url, key.value)
        path = self.settings.env_path
        await run_in_thread(lambda: atomic_write(path, data, 0o600, private=True))

    def env_missing(self) -> bool:
        return not os.path.lexists(self.settings.env_path)

    # -- access control -----------------------------------------------------------------

    def _refused(self, uid: int | None) -> bytes:
        """The 403 a connection from a uid the proxy does not serve gets (see
        :class:`tokend.peers.PeerGuard`), in OpenAI's shape, counted."""
        self._count("-", 403)
        who = "an unknown uid" if uid is None else f"uid {uid}"
        body = _error_body(
            403,
            "forbidden_uid",
            f"{who} may not use this proxy; its owner (uid {os.getuid()}) can add it to "
            "proxy.allow_uids",
        )
        return forbidden(body, "application/json")

    def _check_request(self, request: web.BaseRequest, call: _Call) -> None:
        if request.method == "CONNECT" or not request.raw_path.startswith("/"):
            raise _Refused(
                400,
                "not_a_forward_proxy",
                "this proxy forwards only to Vertex AI; send requests to its /v1 base URL",
            )
        host = request.headers.get("Host", "")
        if host.lower() not in self._hosts:
            raise _Refused(
                403,
                "forbidden_host",
                f"Host {host[:100]!r} is not this proxy; use {self.base_url}",
            )
        origin = request.headers.get("Origin")
        if origin is not None and not _local_origin(origin):
            raise _Refused(
                403, "forbidden_origin", "requests from web pages on other sites are refused"
            )
        name = self.keys.match_any(_presented_keys(request.headers))
        if name is None:
            raise _Refused(
                401,
                "invalid_api_key",
                "missing or wrong local key: set OPENAI_API_KEY from proxy.env "
                "(`tokend env --proxy`)",
            )
        call.key = name

    # -- requests -----------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's entry point: check, route, forward; one log line, one count."""
        call = _Call(clock.monotonic(), request.method, printable_path(request.raw_path))
        status = 500
        try:
            response = await self._handle(request, call)
            status = response.status
            return response
        except _Refused as refused:
            status = refused.status
            return _error(refused.status, refused.code, str(refused))
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it)
            raise
        except Exception:
            log.exception("proxy: %s %s failed", call.method, call.path)
            status = 500
            return _error(500, "internal_error", "tokend's proxy failed; see its log")
        finally:
            log.info(
                "proxy %s %s %d %.3fs model=%s key=%s",
                call.method,
                call.path,
                status,
                clock.monotonic() - call.started,
                call.model or "-",
                call.key,
            )
            self._count(call.key, status)

    def _count(self, key: str, status: int) -> None:
        self.metrics.proxy_requests[key, str(status)] += 1

    async def _handle(self, request: web.BaseRequest, call: _Call) -> web.StreamResponse:
        self._check_request(request, call)
        s = self.settings
        raw = request.raw_path
        path, _, query = raw.partition("?")
        if path.startswith("/v1/"):
            if (
                request.method == "GET"
                and (s.models or s.aliases)
                and path.startswith("/v1/models")
            ):
                answer = self._models(path[len("/v1/models") :].strip("/"))
                if answer is not None:
                    return answer
            target = s.base_url + "/" + _safe_rest(path[len("/v1/") :])
            rewrite = True
        elif path.startswith("/vertex/"):
            target = self._vertex_target(_safe_rest(path[len("/vertex/") :]), call)
            rewrite = False
        else:
            raise _Refused(
                404, "not_found", f"no route {request.path[:100]!r}; use {self.base_url}"
            )
        if query:
            target += "?" + query
        body = await self._read_body(request)
        if rewrite and body and request.content_type == "application/json":
            if len(body) > BIG_BODY:  # a multimodal request: parsing takes milliseconds
                body = await run_in_thread(lambda: self._rewrite_model(body, call))
            else:
                body = self._rewrite_model(body, call)
        return await self._forward(request, URL(target, encoded=True), body)

    def _models(self, wanted: str) -> web.Response | None:
        """``GET /v1/models`` (the list) and ``/v1/models/{id}`` from ``[proxy] models``
        and the aliases; None for any other path under it."""
        s = self.settings
        ids = list(dict.fromkeys([*s.models, *s.aliases]))
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "google"} for m in ids]
        if not wanted:
            return web.json_response({"object": "list", "data": data})
        model = unquote(wanted)
        for entry in data:
            if entry["id"] == model:
                return web.json_response(entry)
        raise _Refused(404, "model_not_found", f"no model {model[:100]!r} in proxy.models")

    def _vertex_target(self, rest: str, call: _Call) -> str:
        """``/vertex/<rest>``: only Vertex's API for the configured project, sent to the
        origin of the location the path names (Claude on Vertex lives in ``us-east5``
        or ``global`` whatever the profile's location)."""
        s = self.settings
        parts = rest.split("/")
        if (
            len(parts) < 4
            or parts[0] not in ("v1", "v1beta1")
            or parts[1] != "projects"
            or parts[2] != s.project
        ):
            raise _Refused(
                403,
                "forbidden_path",
                f"/vertex/ serves only v1/projects/{s.project}/... and "
                f"v1beta1/projects/{s.project}/... (the configured project)",
            )
        location = s.location
        if len(parts) > 4 and parts[3] == "locations" and _plain_name(parts[4]):
            location = parts[4]
        if "models" in parts[:-1]:  # .../models/{model}:streamRawPredict
            model = unquote(parts[parts.index("models") + 1]).partition(":")[0]
            call.model = printable_path(model[:100])
        from tokend.wire import vertex_origin

        return vertex_origin(location, s.api_endpoint) + "/" + rest

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.settings.max_body
        too_big = _Refused(
            413,
            "request_too_large",
            f"the request body is over {limit >> 20} MiB (proxy.max_request_mib)",
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        if request.headers.get("Expect", "").lower() == "100-continue":
            # Checked and within the limit: let the client send its body (curl waits
            # a second for this before bodies over 1 MiB).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _rewrite_model(self, body: bytes, call: _Call) -> bytes:
        """Apply ``[proxy.aliases]`` and the ``google/`` prefix to a JSON body's model."""
        try:
            doc = json.loads(body)
        except ValueError:
            return body  # the upstream says what is wrong with it
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            return body
        original: str = doc["model"]
        model = self.settings.aliases.get(original) or original
        if model.startswith("gemini-"):
            model = "google/" + model
        call.model = printable_path(model[:100])
        if model == original:
            return body
        doc["model"] = model
        return json.dumps(doc).encode()

    async def _token(self) -> Token:
        got = await self.endpoints.fresh_token(
            TokenQuery(self.settings.profile, min_valid=MIN_VALID, wait=10.0)
        )
        if isinstance(got, Answer):
            raise _from_answer(got)
        return got

    async def _after_401(self, used: Token) -> Token | None:
        """A token to replay with after the upstream refused ``used`` with 401: the
        current one if a refresh replaced ``used`` meanwhile, else the result of one
        refresh (shared with every request that met the same 401); None when there is
        nothing new to try."""
        r: ProfileRefresher | None = self.endpoints.served.refreshers.get(self.settings.profile)
        if r is None:
            return None
        current = r.valid_token(MIN_VALID)
        if current is not None and current is not used:
            return current
        now = clock.monotonic()
        if r.refreshing or now - self._forced_at.get(r.name, -FORCE_INTERVAL) >= FORCE_INTERVAL:
            self._forced_at[r.name] = now
            log.info("profile %s: the upstream refused the token; refreshing", r.name)
            await r.refresh()
        current = r.valid_token(MIN_VALID)
        return current if current is not None and current is not used else None

    def _upstream_headers(self, request: web.BaseRequest, tok: Token) -> CIMultiDict[str]:
        named = {
            t.strip().lower()
            for v in request.headers.getall("Connection", ())
            for t in v.split(",")
        }
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in _DROP_REQUEST and k.lower() not in named
        )
        headers["Authorization"] = f"Bearer {tok.value}"
        if self.settings.quota_project:
            headers["x-goog-user-project"] = self.settings.quota_project
        return headers

    async def _forward(
        self, request: web.BaseRequest, target: URL, body: bytes
    ) -> web.StreamResponse:
        assert self._session is not None
        tok = await self._token()
        for attempt in (1, 2):
            try:
                upstream = await self._session.request(
                    request.method,
                    target,
                    data=body or None,
                    headers=self._upstream_headers(request, tok),
                    allow_redirects=False,
                    proxy=_env_proxy(target),
                    timeout=ClientTimeout(
                        total=None,
                        connect=self.settings.connect_timeout,
                        sock_read=self.settings.idle_timeout,
                    ),
                )
            except TimeoutError:
                raise _Refused(
                    504,
                    "upstream_timeout",
                    f"{target.origin()} did not answer within proxy.idle_timeout "
                    f"({self.settings.idle_timeout:g} s), or could not be reached within "
                    f"proxy.connect_timeout ({self.settings.connect_timeout:g} s)",
                ) from None
            except (ClientError, OSError) as err:
                raise _Refused(
                    502,
                    "upstream_unreachable",
                    f"tokend cannot reach {target.origin()}: {_why(err)}",
                ) from None
            if upstream.status == 401 and attempt == 1:
                upstream.release()
                replacement = await self._after_401(tok)
                if replacement is not None:
                    tok = replacement
                    continue
                # Nothing new to try: hand the 401 on (it was released: say it ourselves).
                raise _Refused(
                    401,
                    "upstream_unauthorized",
                    f"Vertex AI refused the token of profile {self.settings.profile} even "
                    "after a refresh; check the account's access to the project",
                )
            break
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _relay(self, request: web.BaseRequest, upstream: Any) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            lower = name.lower()
            if lower not in _DROP_RESPONSE and not lower.startswith("access-control-"):
                response.headers.add(name, value)
        if upstream.content_length is not None and request.method != "HEAD":
            response.content_length = upstream.content_length
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream.content.readany()
            except (TimeoutError, ClientError) as err:
                # Headers are sent: the only way left to say "incomplete" is to cut it.
                log.warning("proxy: upstream stream ended early: %s", _why(err))
                transport = request.transport
                if transport is not None:
                    transport.abort()
                return response
            if not chunk:
                break
            await response.write(chunk)  # a client gone raises here: aiohttp's to handle
        await response.write_eof()
        return response


def _replace_address(settings: ProxySettings, old: ProxySettings) -> ProxySettings:
    from dataclasses import replace

    return replace(settings, bind=old.bind, port=old.port)


def _env_proxy(target: URL) -> str | None:
    """The ``HTTPS_PROXY``/``HTTP_PROXY`` to reach ``target`` by, per ``NO_PROXY``, as
    google-auth's requests honours them; never one for a loopback upstream."""
    import urllib.request

    host = target.host or ""
    if host in ("127.0.0.1", "localhost", "::1") or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(target.scheme)


def _presented_keys(headers: Any) -> list[str]:
    """Every credential the request carries: a client of Vertex's own API (genai) sends
    its own Bearer token besides the local key in ``x-api-key``."""
    found = [
        str(v[7:].strip())
        for v in headers.getall("Authorization", ())
        if v[:7].lower() == "bearer "
    ]
    for name in _KEY_HEADERS:
        found.extend(str(v.strip()) for v in headers.getall(name, ()))
    return found


def _local_origin(origin: str) -> bool:
    from urllib.parse import urlsplit

    try:
        host = urlsplit(origin).hostname or ""
    except ValueError:
        return False
    return host in ("127.0.0.1", "localhost", "::1")


def _plain_name(part: str) -> bool:
    return 0 < len(part) <= 63 and all(c.islower() or c.isdigit() or c == "-" for c in part)


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "no answer in time"
    text = str(err) or type(err).__name__
    return text[:200]


def _from_answer(answer: Answer) -> _Refused:
    """The socket API's error answer (no token: why, what to do) in OpenAI's shape."""
    try:
        doc = json.loads(answer.body)
        code, detail = str(doc.get("error")), str(doc.get("detail"))
    except (ValueError, AttributeError):
        code, detail = "unavailable", "tokend has no token"
    return _Refused(answer.status, code, detail)
