"""What the socket API's answers mean, for every front end.

Two front ends speak HTTP on the socket: the fast path (:mod:`tokend.server`, which
recognises plain GETs byte by byte and answers from cached bytes) and aiohttp
(:mod:`tokend.api`, everything else). Both ask this module, and only this module, what
to answer: which token, which error with which advice, what healthy is, the status
payload, the limits and the query parsing. The other front ends (the local proxy, the
metadata endpoint) get their tokens and errors here too.

They see :class:`Served`, a narrow handle: the daemon's live map of refreshers and the
two settings answers need (like uvicorn's ``ServerState``, which its protocols see
instead of the ``Server``), never the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend import __version__, clock, wire
from tokend.errors import ADVICE
from tokend.idtokens import Busy
from tokend.metrics import CONTENT_TYPE, Metrics
from tokend.refresher import ProfileRefresher, State
from tokend.token import Token

if TYPE_CHECKING:
    from tokend.idtokens import IdTokens

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_FIELD",
    "MAX_HEADERS",
    "MAX_LINE",
    "MAX_MIN_VALID",
    "MAX_WAIT",
    "PATHS",
    "READ_SIZE",
    "Answer",
    "BadRequest",
    "Endpoints",
    "Served",
    "TokenQuery",
    "parse_seconds",
]

# -- limits -----------------------------------------------------------------------------

#: An idle connection (no request yet, or between keep-alive requests, or a request
#: whose head never completes) is closed after this many seconds, so half-open
#: connections cannot pile up and exhaust file descriptors.
IDLE_TIMEOUT = 5.0
#: Requests are GETs with a short query: these limits are generous for them and keep a
#: misbehaving client from making us buffer megabytes.
MAX_LINE = 4096
MAX_FIELD = 4096
MAX_HEADERS = 32
#: The most read from one client at once, and so the most a client that does not read
#: its answers leaves with us besides them (reading stops once they back up).
READ_SIZE = 4 * 1024
#: Upper bounds for the query parameters (seconds).
MAX_WAIT = 120.0
MAX_MIN_VALID = 24 * 3600.0
#: After a client-forced refresh failed, further clients do not force another for this
#: long: polling clients must not turn into a retry storm against Google while the
#: refresher is backing off.
FORCED_RETRY_INTERVAL = 5.0
#: A token fetched less than this long ago is as fresh as Google makes them: a client
#: asking for more ``min_valid`` than a new token has must not force fetch after fetch.
MIN_TOKEN_AGE = 1.0

#: Every path the API answers, and the query parameters each knows.
PATHS: dict[str, frozenset[str]] = {
    "/v1/token": frozenset({"profile", "min_valid", "wait"}),
    "/v1/status": frozenset(),
    "/healthz": frozenset(),
    "/metrics": frozenset(),
    "/v1/id_token": frozenset({"profile", "audience", "min_valid", "wait"}),
}


# -- what the front ends hand in and get back -----------------------------------------


class Served:
    """What the front ends may see of the daemon: the live map of its refreshers (a
    reload adds and replaces entries in place) and the two settings answers name. The
    daemon updates the settings when a reload changes them."""

    __slots__ = (
        "config_source",
        "metadata_host",
        "proxy_url",
        "refreshers",
        "runtime_dir",
        "state_dir",
    )

    def __init__(
        self, refreshers: Mapping[str, ProfileRefresher], config_source: str, runtime_dir: Path
    ) -> None:
        self.refreshers = refreshers
        self.config_source = config_source
        self.runtime_dir = runtime_dir
        #: The local proxy's base URL once it listens, and where its keys are ("" when
        #: it is off): `tokend proxy-key` edits the keys this daemon reads.
        self.proxy_url = ""
        self.state_dir = ""
        #: ``host:port`` of the metadata endpoint once it listens ("" when it is off):
        #: what GCE_METADATA_HOST should say.
        self.metadata_host = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished answer: status, body and its type, and whether it may be cached (a
    token never may). ``allow`` fills the ``Allow`` header of a 405."""

    status: int
    body: bytes
    content_type: str = "application/json"
    no_store: bool = False
    allow: str = ""


class BadRequest(ValueError):
    """A query the API refuses (400); the message is for the client."""


def parse_seconds(name: str, raw: str | bytes | None, upper: float) -> float:
    """A query parameter in seconds (absent or empty: 0).

    Raises:
        BadRequest: not a number, or outside 0..upper.
    """
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds") from None
    if not 0 <= value <= upper:  # also rejects nan
        raise BadRequest(f"{name} must be between 0 and {int(upper)} seconds")
    return value


@dataclass(frozen=True, slots=True)
class TokenQuery:
    """A ``/v1/token`` request: whose token, how long it must last, how long to wait."""

    profile: str = "default"
    min_valid: float = 0.0
    wait: float = 0.0

    @classmethod
    def parse(cls, get: Callable[[str], str | None]) -> TokenQuery:
        """From a query's parameters (``get(name)``: the value or None).

        Raises:
            BadRequest: a value out of range.
        """
        return cls(
            profile=get("profile") or "default",
            min_valid=parse_seconds("min_valid", get("min_valid"), MAX_MIN_VALID),
            wait=parse_seconds("wait", get("wait"), MAX_WAIT),
        )


#: How long a ``/v1/id_token`` request waits unless it says: an audience asked for the
#: first time has no token yet, and its first minting takes one round trip to Google.
ID_TOKEN_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class IdTokenQuery:
    """A ``/v1/id_token`` request: whose credentials mint it, for which audience, how
    long it must last, how long to wait for it."""

    audience: str
    profile: str = "default"
    min_valid: float = 0.0
    wait: float = ID_TOKEN_WAIT

    @classmethod
    def parse(cls, get: Callable[[str], str | None]) -> IdTokenQuery:
        """From a query's parameters (``get(name)``: the value or None).

        Raises:
            BadRequest: a bad audience or a value out of range.
        """
        try:
            audience = wire.check_audience(get("audience") or "")
        except ValueError as err:
            raise BadRequest(str(err)) from None
        wait = get("wait")
        return cls(
            audience=audience,
            profile=get("profile") or "default",
            min_valid=parse_seconds("min_valid", get("min_valid"), MAX_MIN_VALID),
            wait=ID_TOKEN_WAIT if wait is None else parse_seconds("wait", wait, MAX_WAIT),
        )


def _json(status: int, payload: Any, *, no_store: bool = False) -> Answer:
    return Answer(status, json.dumps(payload).encode(), no_store=no_store)


def error(status: int, code: str, detail: str) -> Answer:
    """An error in the API's shape: ``{"error": code, "detail": what to do}``."""
    return _json(status, {"error": code, "detail": detail})


# -- the answers --------------------------------------------------------------------------


class Endpoints:
    """The answers, built from the :class:`Served` handle.

    Args:
        served: the live refreshers and the settings answers name.
        metrics: where requests and state changes are counted.
    """

    def __init__(self, served: Served, metrics: Metrics) -> None:
        self.served = served
        self.metrics = metrics
        self._changed: dict[str, asyncio.Event] = {}
        self._bodies: dict[str, tuple[Token, int, bytes]] = {}
        self._forced_failed_at: dict[str, float] = {}
        #: The daemon's ID tokens (None: this daemon serves none); see "/v1/id_token".
        self.id_tokens: IdTokens | None = None

    # -- counting and change events ---------------------------------------------------

    def count(self, path: str, status: int) -> None:
        """One request answered (``path``: one of :data:`PATHS`, else ``other``)."""
        self.metrics.requests[path if path in PATHS else "other", str(status)] += 1

    def state_changed(self, r: ProfileRefresher) -> None:
        """A profile's state changed (the daemon calls this): count it, and wake every
        request waiting for that profile (the next waiter gets a new event)."""
        self.metrics.observe(r)
        event = self._changed.pop(r.name, None)
        if event is not None:
            event.set()

    def change_event(self, profile: str) -> asyncio.Event:
        """Set at the profile's next state change."""
        return self._changed.setdefault(profile, asyncio.Event())

    # -- /v1/token --------------------------------------------------------------------

    def ready(self, query: TokenQuery) -> bytes | None:
        """The body of the token answer when it can be given at once (a known profile
        holding a token with more than ``min_valid`` left), else None: the request
        needs a refresh, a wait or an error, which :meth:`token` gives."""
        r = self.served.refreshers.get(query.profile)
        tok = r.valid_token(query.min_valid) if r is not None else None
        return None if tok is None else self.token_body(query.profile, tok)

    def at_once(self, query: TokenQuery) -> Answer | None:
        """The whole ``/v1/token`` answer when nothing needs awaiting (:meth:`token`
        gives the same), else None: the request waits, or makes a refresh.

        The fast path answers these itself, so that a client asking while the first
        token is on its way, or while the profile fails, gets its 503 (and the fix) at
        once rather than after aiohttp loads."""
        body = self.ready(query)
        if body is not None:
            return Answer(200, body, no_store=True)
        r = self.served.refreshers.get(query.profile)
        if r is None:
            return self._unknown_profile(query.profile)
        if query.wait > 0 or (query.min_valid > 0 and self._may_force(query.profile, r)):
            return None
        tok = r.valid_token()  # less than min_valid left, and no refresh may be forced
        if tok is None:
            return self.unavailable(r)
        return Answer(200, self.token_body(query.profile, tok), no_store=True)

    async def token(self, query: TokenQuery) -> Answer:
        """The whole ``/v1/token`` answer: a token with more than ``min_valid`` left
        (refreshing first if needed; concurrent requests share one refresh), after
        waiting up to ``wait`` for one if there is none yet; else the error and what to
        do about it."""
        answer = self.at_once(query)
        if answer is not None:
            return answer
        got = await self.fresh_token(query)
        if isinstance(got, Answer):
            return got
        return Answer(200, self.token_body(query.profile, got), no_store=True)

    async def fresh_token(self, query: TokenQuery) -> Token | Answer:
        """The token :meth:`token` answers with, or the error :class:`Answer` it gives
        instead: for front ends that use the token rather than hand it out (the
        proxy)."""
        r = self.served.refreshers.get(query.profile)
        if r is None:
            return self._unknown_profile(query.profile)
        tok = r.valid_token(query.min_valid)
        if tok is not None:
            return tok
        if query.wait > 0:
            waited = await self._wait_for_token(query.profile, r, clock.monotonic() + query.wait)
            if waited is None:
                return self._unknown_profile(query.profile)  # a reload removed it meanwhile
            r = waited
        tok = r.valid_token(query.min_valid)
        # Only min_valid makes a request fetch (and wait for the fetch); without it the
        # answer comes from the current state at once, and `wait` waits for the daemon.
        if tok is None and query.min_valid > 0 and self._may_force(query.profile, r):
            tok = await r.ensure(query.min_valid)
            if tok is None or r.consecutive_failures:
                self._forced_failed_at[query.profile] = clock.monotonic()
        if tok is None:
            tok = r.valid_token()
        if tok is None:
            return self.unavailable(r)
        return tok

    def token_body(self, profile: str, tok: Token) -> bytes:
        """The token object's bytes. It changes only with the token or the whole-second
        ``expires_in``, so it is serialized at most once per second per profile."""
        now = clock.steady()
        expires_in = max(0, int(tok.expires_in(now)))
        cached = self._bodies.get(profile)
        if cached is None or cached[0] is not tok or cached[1] != expires_in:
            cached = (tok, expires_in, json.dumps(tok.as_dict(now)).encode())
            self._bodies[profile] = cached
        return cached[2]

    def _may_force(self, profile: str, r: ProfileRefresher) -> bool:
        if (
            r.valid_token() is not None
            and r.last_refresh is not None
            and clock.steady() - r.last_refresh < MIN_TOKEN_AGE
        ):
            return False
        failed_at = self._forced_failed_at.get(profile)
        if r.consecutive_failures and failed_at is not None:
            return clock.monotonic() - failed_at >= FORCED_RETRY_INTERVAL
        return True

    async def _wait_for_token(
        self, profile: str, r: ProfileRefresher, deadline: float
    ) -> ProfileRefresher | None:
        """Wait until the profile holds a valid token, a person must act, or the
        deadline; the profile's refresher then (None: a reload removed it)."""
        while r.valid_token() is None:
            if r.state is State.REAUTH_REQUIRED and r.attempted.is_set():
                break  # waiting cannot help; answer with the fix now
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.change_event(profile).wait(), remaining)
            again = self.served.refreshers.get(profile)  # a reload may have replaced it
            if again is None:
                return None
            r = again
        return r

    # -- /v1/id_token -----------------------------------------------------------------

    async def fresh_id_token(self, query: IdTokenQuery) -> Token | Answer:
        """An ID token for ``query.audience`` minted through the profile's credentials,
        or the error :class:`Answer` to give instead, with the same codes and advice as
        access tokens (503 ``starting``, ``reauth_required``, ``id_token_unsupported``
        for user credentials, ...; 404 ``unknown_profile``): the one entry point for
        every front end (the socket, the metadata endpoint's ``identity``).

        An audience asked for the first time is minted now: the request waits up to
        ``wait`` for it. Later requests are answered from the cache, which refreshes each
        audience like an access token; ``min_valid`` forces a refresh as for
        ``/v1/token``. The audience must have passed :func:`tokend.wire.check_audience`
        (:meth:`IdTokenQuery.parse` does that).
        """
        ids = self.id_tokens
        if ids is None:
            return error(404, "not_found", "this tokend serves no ID tokens")
        if query.profile not in self.served.refreshers:
            return self._unknown_profile(query.profile)
        try:
            r = ids.get(query.profile, query.audience)
        except Busy:
            return error(
                429,
                "too_many_audiences",
                f"{ids.max_audiences} audiences are being minted at once "
                "(max_id_token_audiences); retry in a moment",
            )
        tok = r.valid_token(query.min_valid)
        if tok is not None:
            return tok
        deadline = clock.monotonic() + query.wait
        while r.valid_token() is None:
            if r.state is State.REAUTH_REQUIRED and r.attempted.is_set():
                break  # waiting cannot help; answer with the fix now
            remaining = deadline - clock.monotonic()
            if remaining <= 0 or ids.current(query.profile, query.audience) is not r:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ids.change_event(r).wait(), remaining)
        tok = r.valid_token(query.min_valid)
        key = f"{query.profile}\0{query.audience}"
        if tok is None and query.min_valid > 0 and self._may_force(key, r):
            tok = await r.ensure(query.min_valid)
            if tok is None or r.consecutive_failures:
                self._forced_failed_at[key] = clock.monotonic()
        if tok is None:
            tok = r.valid_token()
        if tok is None:
            return self.unavailable(r)
        return tok

    async def id_token(self, query: IdTokenQuery) -> Answer:
        """The whole ``/v1/id_token`` answer: the ID token object, or the error."""
        got = await self.fresh_id_token(query)
        if isinstance(got, Answer):
            return got
        return _json(200, got.as_dict(clock.steady()), no_store=True)

    async def id_token_value(self, profile: str, audience: str, wait: float) -> str | Answer:
        """The ID token itself (the JWT), or the error :class:`Answer`: for front ends
        that hand out the bare token (the metadata endpoint's ``identity``). A bad
        audience is a 400 saying what is allowed."""
        try:
            audience = wire.check_audience(audience)
        except ValueError as err:
            return self.bad_request(str(err))
        got = await self.fresh_id_token(IdTokenQuery(audience, profile, wait=wait))
        return got if isinstance(got, Answer) else got.value

    # -- errors -----------------------------------------------------------------------

    def unavailable(self, r: ProfileRefresher) -> Answer:
        """503: the profile has no valid token; why, and what to do."""
        snap = r.snapshot()
        reason = snap.last_error_reason
        if snap.state is State.STARTING or (not reason and not r.attempted.is_set()):
            return error(
                503,
                "starting",
                f"profile {r.name}: tokend is fetching the first token; retry in a moment "
                "or ask with wait=N",
            )
        what = snap.last_error or f"profile {r.name}: state {snap.state.value}"
        if not what.startswith(f"profile {r.name}"):
            what = f"profile {r.name}: {what}"
        if snap.state is State.REAUTH_REQUIRED:
            code = reason or "reauth_required"
            # The source's messages carry their own fix; add ours only when there is none.
            detail = (
                what
                if snap.last_error
                else f"{what}; {ADVICE.get(code, ADVICE['reauth_required'])}"
            )
        else:
            code = reason or snap.state.value
            detail = f"{what}; no valid token until a refresh succeeds"
            if r.refreshing:
                detail += " (one is in flight; ask with wait=N to wait for it)"
            elif snap.next_refresh is not None:
                detail += f" (next attempt in {max(0, int(snap.next_refresh - clock.now()))}s)"
        return error(503, code, detail)

    def _unknown_profile(self, profile: str) -> Answer:
        names = ", ".join(sorted(self.served.refreshers)) or "none"
        return error(
            404,
            "unknown_profile",
            f"no profile {profile!r} in {self.served.config_source} (configured: {names})",
        )

    def not_found(self, path: str) -> Answer:
        return error(404, "not_found", f"no such endpoint {path!r}; try {', '.join(PATHS)}")

    def method_not_allowed(self, method: str) -> Answer:
        answer = error(405, "method_not_allowed", f"{method} is not allowed here; use GET")
        return Answer(answer.status, answer.body, allow="GET, HEAD")

    def bad_request(self, message: str) -> Answer:
        return error(400, "bad_request", message)

    # -- health, status, metrics ------------------------------------------------------

    def health(self) -> Answer:
        """200 when every profile holds a valid token, else 503 naming those that do not."""
        refreshers = self.served.refreshers
        missing = sorted(n for n, r in refreshers.items() if r.valid_token() is None)
        if missing:
            return _json(503, {"status": "unhealthy", "profiles_without_token": missing})
        return _json(200, {"status": "ok"})

    def status(self) -> Answer:
        """Every profile's state, never a token."""
        refreshers = self.served.refreshers
        return _json(
            200,
            {
                "version": __version__,
                "pid": os.getpid(),
                "runtime_dir": str(self.served.runtime_dir),
                "proxy": self.served.proxy_url or None,
                "metadata": self.served.metadata_host or None,
                "state_dir": self.served.state_dir or None,
                "healthy": all(r.valid_token() for r in refreshers.values()),
                "profiles": {
                    name: r.snapshot().as_dict() for name, r in sorted(refreshers.items())
                },
                "id_tokens": self._id_token_status(),
            },
        )

    def _id_token_status(self) -> list[dict[str, Any]]:
        """Each cached ID token's state (as a profile's, with its audience), never a
        token; least recently asked for first."""
        if self.id_tokens is None:
            return []
        return [
            {**r.snapshot().as_dict(), "profile": profile, "audience": audience}
            for profile, audience, r in self.id_tokens.entries()
        ]

    def metrics_text(self) -> Answer:
        return Answer(200, self.metrics.text(), content_type=CONTENT_TYPE)
