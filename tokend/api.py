"""The socket API's full HTTP handling, on aiohttp's low-level server.

The fast path (:mod:`tokend.server`) answers the common requests itself and hands a
connection here on the first request it does not answer: other endpoints
(``/v1/status``, ``/metrics``), a bad query, ``wait`` and ``min_valid`` requests that
must await a token, and anything malformed, which aiohttp's parser rejects. What to answer
comes from :mod:`tokend.endpoints`, as for the fast path; this module only speaks HTTP.

The daemon imports this module (and aiohttp: the bench's "after one /v1/status" row
says what it costs) on the first such request, so a daemon that only ever serves
tokens never loads it.
"""

from __future__ import annotations

import logging

# Not used here: imported with this module, which the daemon loads in a thread, so that
# the first /metrics scrape (tokend.metrics imports it then) never imports on the loop.
import prometheus_client  # noqa: F401
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tokend.endpoints import (
    IDLE_TIMEOUT,
    MAX_FIELD,
    MAX_HEADERS,
    MAX_LINE,
    PATHS,
    READ_SIZE,
    Answer,
    BadRequest,
    Endpoints,
    IdTokenQuery,
    TokenQuery,
)

__all__ = ["Api"]


class _QuietClientErrors(logging.Filter):
    """Drops aiohttp's log record for a request its parser rejected (the client gets
    its 400). aiohttp logs each at ERROR with a traceback that quotes the client's
    bytes: a client sending garbage in a loop would flood the journal, whose rate limit
    would then drop tokend's own lines. Handler errors (5xx) are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500)


_QUIET = _QuietClientErrors()


def _response(answer: Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body)
    response.headers["Content-Type"] = answer.content_type
    if answer.no_store:
        response.headers["Cache-Control"] = "no-store"
    if answer.allow:
        response.headers["Allow"] = answer.allow
    return response


class Api:
    """aiohttp's side of the socket. :attr:`web` makes the protocol for a connection
    the fast path hands over.

    Args:
        endpoints: what the answers are.
    """

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
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
        """aiohttp's entry point: route to the endpoint, answer, count."""
        answer = await self._answer(request)
        self.endpoints.count(request.path, answer.status)
        return _response(answer)

    async def _answer(self, request: web.BaseRequest) -> Answer:
        e = self.endpoints
        if request.path not in PATHS:
            return e.not_found(request.path)
        if request.method not in ("GET", "HEAD"):
            return e.method_not_allowed(request.method)
        if request.path == "/v1/token":
            try:
                query = TokenQuery.parse(request.query.get)
            except BadRequest as err:
                return e.bad_request(str(err))
            return await e.token(query)
        if request.path == "/v1/id_token":
            try:
                id_query = IdTokenQuery.parse(request.query.get)
            except BadRequest as err:
                return e.bad_request(str(err))
            return await e.id_token(id_query)
        if request.path == "/v1/status":
            return e.status()
        if request.path == "/healthz":
            return e.health()
        return e.metrics_text()
