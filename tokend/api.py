"""The socket API's full HTTP handling, on aiohttp's low-level server.

:class:`tokend.server.SocketServer` answers the common requests itself (its fast
path) and hands a connection here on the first request it does not answer: other
endpoints (``/v1/status``, ``/metrics``), every error, ``wait`` and ``min_valid``
requests that need a refresh, and anything malformed, which aiohttp's parser rejects.
The daemon imports this module (and aiohttp: the bench's "after one /v1/status" row
says what it costs) on the first such request, so a daemon that only ever serves
tokens never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import generate_latest

from tokend import __version__, clock
from tokend.errors import ADVICE
from tokend.refresher import ProfileRefresher, State
from tokend.server import (
    IDLE_TIMEOUT,
    MAX_FIELD,
    MAX_HEADERS,
    MAX_LINE,
    MAX_MIN_VALID,
    MAX_WAIT,
    READ_SIZE,
    parse_seconds,
)

if TYPE_CHECKING:
    from tokend.server import SocketServer

__all__ = ["Api"]

#: After a client-forced refresh failed, further clients do not force another for this
#: long: polling clients must not turn into a retry storm against Google while the
#: refresher is backing off.
FORCED_RETRY_INTERVAL = 5.0
#: A token fetched less than this long ago is as fresh as Google makes them: a client
#: asking for more ``min_valid`` than a new token has must not force fetch after fetch.
MIN_TOKEN_AGE = 1.0


class _QuietClientErrors(logging.Filter):
    """Drops aiohttp's log record for a request its parser rejected (the client gets
    its 400). aiohttp logs each at ERROR with a traceback that quotes the client's
    bytes: a client sending garbage in a loop would flood the journal, whose rate limit
    would then drop tokend's own lines. Handler errors (5xx) are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500)


_QUIET = _QuietClientErrors()


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json"
    )


def _error(status: int, error: str, detail: str) -> web.Response:
    return _json(status, {"error": error, "detail": detail})


def _seconds(request: web.BaseRequest, name: str, upper: float) -> float:
    try:
        return parse_seconds(name, request.query.get(name), upper)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None


class Api:
    """The aiohttp side of one :class:`~tokend.server.SocketServer`.

    Calling :attr:`web` makes the protocol for a connection the fast path hands over.
    """

    def __init__(self, server: SocketServer) -> None:
        self.server = server
        self.daemon = server.daemon
        self.metrics = server.metrics
        self._forced_failed_at: dict[str, float] = {}
        self._endpoints: dict[str, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] = {
            "/v1/token": self._token,
            "/v1/status": self._status,
            "/healthz": self._healthz,
            "/metrics": self._metrics,
        }
        self.web = web.Server(
            self.dispatch,
            access_log=None,  # the access log would carry query strings nobody needs
            keepalive_timeout=IDLE_TIMEOUT,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            lingering_time=1.0,
            # Bounds what a request body (none is expected) may buffer before aiohttp
            # pauses reading, through the connection (tokend.server._ApiTransport).
            read_bufsize=READ_SIZE,
        )
        server_log = logging.getLogger("aiohttp.server")
        if _QUIET not in server_log.filters:
            server_log.addFilter(_QUIET)

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections; give requests in progress ``timeout`` to finish."""
        self.web.pre_shutdown()
        await self.web.shutdown(timeout)

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's entry point: route, answer HTTP errors as JSON errors, count."""
        endpoint = self._endpoints.get(request.path)
        response: web.StreamResponse
        try:
            if endpoint is None:
                response = _error(
                    404,
                    "not_found",
                    f"no such endpoint {request.path!r}; try {', '.join(self._endpoints)}",
                )
            elif request.method not in ("GET", "HEAD"):
                response = _error(
                    405, "method_not_allowed", f"{request.method} is not allowed here; use GET"
                )
                response.headers["Allow"] = "GET, HEAD"
            else:
                response = await endpoint(request)
        except web.HTTPException as exc:
            error = "bad_request" if exc.status == 400 else "http_error"
            response = _error(exc.status, error, exc.reason)
        path = request.path if endpoint is not None else "other"
        self.metrics.requests.labels(path, str(response.status)).inc()
        return response

    def _refresher(self, profile: str) -> ProfileRefresher:
        r = self.daemon.refreshers.get(profile)
        if r is None:
            names = ", ".join(sorted(self.daemon.refreshers)) or "none"
            raise _Answer(
                _error(
                    404,
                    "unknown_profile",
                    f"no profile {profile!r} in {self.daemon.config.source} (configured: {names})",
                )
            )
        return r

    async def _token(self, request: web.BaseRequest) -> web.StreamResponse:
        profile = request.query.get("profile") or "default"
        min_valid = _seconds(request, "min_valid", MAX_MIN_VALID)
        wait = _seconds(request, "wait", MAX_WAIT)
        try:
            r = self._refresher(profile)
            if wait > 0:
                r = await self._wait_for_token(profile, r, time.monotonic() + wait)
        except _Answer as answer:
            return answer.response
        tok = r.valid_token(min_valid)
        # Only min_valid makes a request fetch (and wait for the fetch); without it the
        # answer comes from the current state at once, and `wait` waits for the daemon.
        if tok is None and min_valid > 0 and self._may_force(profile, r):
            # Concurrent requests share the refresher's one in-flight fetch.
            tok = await r.ensure(min_valid)
            if tok is None or r.consecutive_failures:
                self._forced_failed_at[profile] = time.monotonic()
        if tok is None:
            tok = r.valid_token()
        if tok is None:
            return self._unavailable(r)
        return web.Response(
            body=self.server.token_body(profile, tok),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    def _may_force(self, profile: str, r: ProfileRefresher) -> bool:
        if (
            r.valid_token() is not None
            and r.last_refresh is not None
            and clock.steady() - r.last_refresh < MIN_TOKEN_AGE
        ):
            return False
        failed_at = self._forced_failed_at.get(profile)
        if r.consecutive_failures and failed_at is not None:
            return time.monotonic() - failed_at >= FORCED_RETRY_INTERVAL
        return True

    async def _wait_for_token(
        self, profile: str, r: ProfileRefresher, deadline: float
    ) -> ProfileRefresher:
        """Wait until the profile holds a valid token, a person must act, or the deadline."""
        while r.valid_token() is None:
            if r.state is State.REAUTH_REQUIRED and r.attempted.is_set():
                break  # waiting cannot help; answer with the fix now
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.change_event(profile).wait(), remaining)
            r = self._refresher(profile)  # a reload may have replaced it
        return r

    def _unavailable(self, r: ProfileRefresher) -> web.Response:
        snap = r.snapshot()
        reason = snap.last_error_reason
        if snap.state is State.STARTING or (not reason and not r.attempted.is_set()):
            return _error(
                503,
                "starting",
                f"profile {r.name}: tokend is fetching the first token; retry in a moment "
                "or ask with wait=N",
            )
        what = snap.last_error or f"profile {r.name}: state {snap.state.value}"
        if not what.startswith(f"profile {r.name}"):
            what = f"profile {r.name}: {what}"
        if snap.state is State.REAUTH_REQUIRED:
            error = reason or "reauth_required"
            # The source's messages carry their own fix; add ours only when there is none.
            detail = (
                what
                if snap.last_error
                else f"{what}; {ADVICE.get(error, ADVICE['reauth_required'])}"
            )
        else:
            error = reason or snap.state.value
            detail = f"{what}; no valid token until a refresh succeeds"
            if r.refreshing:
                detail += " (one is in flight; ask with wait=N to wait for it)"
            elif snap.next_refresh is not None:
                detail += f" (next attempt in {max(0, int(snap.next_refresh - clock.now()))}s)"
        return _error(503, error, detail)

    async def _status(self, request: web.BaseRequest) -> web.StreamResponse:
        profiles = {
            name: r.snapshot().as_dict() for name, r in sorted(self.daemon.refreshers.items())
        }
        return _json(
            200,
            {
                "version": __version__,
                "pid": os.getpid(),
                "runtime_dir": str(self.daemon.config.runtime_path),
                "healthy": all(r.valid_token() for r in self.daemon.refreshers.values()),
                "profiles": profiles,
            },
        )

    async def _healthz(self, request: web.BaseRequest) -> web.StreamResponse:
        return _json(*self.server.health())

    async def _metrics(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


class _Answer(Exception):
    """Carries a finished response out of a helper (an unknown profile)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response
