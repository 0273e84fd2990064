"""When to refresh (pure policy) and the per-profile refresh task.

Policy functions take time and randomness as arguments so that hypothesis can check
them for every lifetime without sleeping. The task reads time only through
:mod:`tokend.clock`, and measures every lifetime and deadline on its steady clock,
which counts suspend and never steps; asyncio's own timers do neither, so the daemon
tells the refresher when the clocks jumped (:meth:`ProfileRefresher.clock_jumped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tokend import clock
from tokend.errors import CredentialsError, RefreshError
from tokend.sinks import FileSink, SinkSet
from tokend.threads import in_thread, run_in_thread
from tokend.timefmt import format_time
from tokend.token import Token, token_from_dict

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "REFRESH_FLOOR",
    "ProfileRefresher",
    "Snapshot",
    "State",
    "backoff",
    "fetch_within",
    "next_refresh_at",
]

log = logging.getLogger(__name__)

#: Refresh no later than this many seconds before expiry when the lifetime allows.
#: google-auth clients treat a token as stale 225 s before expiry; 300 s keeps every
#: token we hand out looking fresh to them.
REFRESH_FLOOR = 300.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
#: The smallest retry delay: full jitter may draw ~0, which would be a hot loop.
BACKOFF_MIN = 0.1
#: A token is retired (removed from files, no longer served) this fraction of its
#: lifetime before it really expires, at most ``RETIRE_MARGIN_MAX`` seconds: a reader
#: that got it an instant before retirement must still be able to use it, and the
#: loop may wake a little late under load.
RETIRE_MARGIN = 0.1
RETIRE_MARGIN_MAX = 1.0
#: While a sink cannot be written (disk full, read-only), retry the write this often.
SINK_RETRY = 1.0


def next_refresh_at(issued_at: float, expires_at: float, rng: random.Random) -> float:
    """When to refresh a token received at ``issued_at`` that expires at ``expires_at``
    (both on one clock: the steady one, in the daemon).

    At a jittered 75-85 % of its lifetime, so a fleet of daemons does not hit Google in
    step. Where the lifetime allows (at least ``2 * REFRESH_FLOOR``), also no later than
    ``REFRESH_FLOOR`` before expiry, so that clients never hold a token google-auth
    would call stale; the floor never pulls the refresh before half the lifetime. Below
    that, short lifetimes (tests use seconds) follow the same 75-85 % proportionally.
    The result is always inside the lifetime and at least half of it after issue, so
    the schedule can neither pass expiry nor hot-loop.
    """
    lifetime = max(0.0, expires_at - issued_at)
    at = issued_at + lifetime * rng.uniform(0.75, 0.85)
    if lifetime >= 2 * REFRESH_FLOOR:
        at = min(at, expires_at - REFRESH_FLOOR)
    return at


def retire_at(token: Token) -> float:
    """When a token stops being served and its files are removed (steady clock):
    shortly before its real expiry, which is also the instant its files state."""
    return token.deadline - min(RETIRE_MARGIN_MAX, RETIRE_MARGIN * token.lifetime)


def backoff(attempt: int, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based): full jitter over an exponential
    ceiling, 1 s doubling to 60 s (AWS's "full jitter"; spreads a fleet's retries)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 32))
    return max(BACKOFF_MIN, rng.uniform(0.0, ceiling))


class State(enum.Enum):
    STARTING = "starting"  # no attempt has finished yet
    FRESH = "fresh"  # holding a valid token; next refresh scheduled
    REFRESHING = "refreshing"  # a fetch is in flight
    RETRYING = "retrying"  # the last fetch failed retryably; backing off
    REAUTH_REQUIRED = "reauth_required"  # a person must act (login again, fix the file)
    EXPIRED = "expired"  # the token expired with no successor (still retrying)


class TokenSource(Protocol):
    """What the refresher needs of :class:`tokend.source.Source`."""

    @property
    def credential_type(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def watched_paths(self) -> tuple[Path, ...]: ...
    @property
    def timeout(self) -> float: ...

    def fetch(self) -> Token: ...
    def invalidate(self) -> None: ...
    def abandon(self) -> None: ...
    def credentials_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A profile's state for status output: no token value in here. Instants are on the
    wall clock (what people read), converted when the snapshot is taken."""

    profile: str
    state: State
    account: str
    credential_type: str
    expires_at: float | None
    last_refresh: float | None
    next_refresh: float | None
    consecutive_failures: int
    last_error: str
    last_error_reason: str
    fingerprint: str

    expires_in: int | None  #: whole seconds left, on the steady clock

    def as_dict(self) -> dict[str, Any]:
        def t(v: float | None) -> str | None:
            return None if v is None or math.isinf(v) else format_time(v)

        return {
            "profile": self.profile,
            "state": self.state.value,
            "account": self.account,
            "credential_type": self.credential_type,
            "expires_at": t(self.expires_at),
            "expires_in": self.expires_in,
            "last_refresh": t(self.last_refresh),
            "next_refresh": t(self.next_refresh),
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_error_reason": self.last_error_reason,
            "token_fingerprint": self.fingerprint,
        }


class _Resumed(Exception):
    """The machine was suspended while a fetch was in flight (see fetch_within)."""


async def fetch_within(
    source: TokenSource, timeout: float, abandon: asyncio.Future[None] | None = None
) -> Token:
    """``source.fetch()`` in a thread, bounded as a whole by ``timeout`` seconds.

    google-auth's own timeouts bound each socket operation, not the call: an endpoint
    trickling its answer a byte a second keeps a fetch going for as long as it likes.
    Past the deadline the fetch is abandoned (its thread ends with its socket timeout;
    its result is dropped) and counted as a retryable failure. ``abandon`` settling
    gives up early too, raising :class:`_Resumed`.

    Raises:
        RefreshError: the fetch failed, or did not finish in time (``timeout``).
        CredentialsError: see :meth:`tokend.source.Source.fetch`.
    """
    fetch = in_thread(source.fetch, "tokend-fetch")
    waiters: set[asyncio.Future[Any]] = {fetch} if abandon is None else {fetch, abandon}
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if fetch.done():
        return fetch.result()
    fetch.cancel()
    source.abandon()
    if abandon is not None and abandon.done():
        raise _Resumed
    raise RefreshError(
        f"no answer within {timeout:g} s (TOKEND_TIMEOUT); gave up on it",
        retryable=True,
        reason="timeout",
    )


class ProfileRefresher:
    """Keeps one profile's token fresh, and its files (a :class:`~tokend.sinks.SinkSet`)
    in step with it.

    One task (:meth:`run`) first restores a verifiable token an earlier run left on
    disk, then sleeps until the next deadline (refresh, retry, expiry or a file repair)
    or until woken. Every fetch goes through :meth:`refresh`, which shares one
    in-flight fetch among all callers, so concurrent demands never stampede Google.
    All instants here are on :func:`tokend.clock.steady`.
    """

    def __init__(
        self,
        name: str,
        source: TokenSource,
        sinks: Sequence[FileSink],
        *,
        rng: random.Random | None = None,
        on_change: Callable[[ProfileRefresher], None] | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.files = SinkSet(name, sinks, retire_at)
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self.on_change = on_change
        self.token: Token | None = None
        self.state = State.STARTING
        self.consecutive_failures = 0
        self.last_error = ""
        self.last_error_reason = ""
        self.last_refresh: float | None = None
        self.next_attempt: float = -math.inf  # fetch at once
        self.attempted = asyncio.Event()  # set once the first attempt has finished
        self._wake = asyncio.Event()
        self._inflight: asyncio.Future[Token | None] | None = None
        #: Settled to give up on the fetch in flight (the machine was suspended).
        self._abandon: asyncio.Future[None] | None = None
        #: Rewrite every file (the wall clock stepped: they state the wrong time).
        self._rewrite = False
        #: refresh_soon() was called while a fetch was in flight.
        self._again = False
        self._stopping = False

    # -- public ---------------------------------------------------------------------

    @property
    def sinks(self) -> tuple[FileSink, ...]:
        return self.files.sinks

    def snapshot(self) -> Snapshot:
        tok = self.token
        steady = clock.steady()

        def wall(instant: float | None) -> float | None:
            if instant is None or math.isinf(instant):
                return None
            return clock.to_wall(instant)

        return Snapshot(
            profile=self.name,
            state=self.state,
            account=(tok.account if tok else "") or self.source.account,
            credential_type=self.source.credential_type,
            expires_at=tok.expires_at if tok else None,
            expires_in=max(0, int(tok.expires_in(steady))) if tok else None,
            last_refresh=wall(self.last_refresh),
            next_refresh=wall(self.next_attempt),
            consecutive_failures=self.consecutive_failures,
            last_error=self.files.error or self.last_error,
            last_error_reason="sink_write_failed" if self.files.error else self.last_error_reason,
            fingerprint=tok.fingerprint if tok else "",
        )

    def valid_token(self, min_valid: float = 0.0) -> Token | None:
        """The current token if it is not retired and has more than ``min_valid``
        seconds left."""
        tok = self.token
        if tok is None:
            return None
        now = clock.steady()
        if now < retire_at(tok) and tok.is_valid(now, min_valid):
            return tok
        return None

    def refresh_soon(self, *, reload_credentials: bool = False) -> None:
        """Refresh at once (SIGUSR1, the credentials file changed). Thread-unsafe: call
        on the loop."""
        if reload_credentials:
            self.source.invalidate()
        self.next_attempt = -math.inf
        # A fetch in flight may have started before this request (with the old
        # credentials): its end would schedule the next refresh ~45 min away. Fetch
        # once more right after it instead.
        self._again = self.refreshing
        self._wake.set()

    def clock_jumped(self, jump: clock.Jump) -> None:
        """The daemon saw the clocks jump (:class:`tokend.clock.Jumps`).

        After a suspend every deadline is re-checked at once (asyncio's timers slept
        through it): a token that died meanwhile is retired, its files removed, and the
        overdue refresh starts; a fetch in flight since before the suspend is given up
        and started again (its connection is most likely dead). After a wall-clock step
        the token's stated ``expires_at`` is moved to match and every file rewritten."""
        if jump.stepped and self.token is not None:
            tok = self.token = self.token.rebased(clock.wall_offset())
            self._rewrite = True
            if self.state is State.FRESH:  # the rounding may have moved retirement earlier
                soonest = next_refresh_at(tok.issued, tok.deadline, self.rng)
                self.next_attempt = min(self.next_attempt, soonest)
        if jump.suspended and self._abandon is not None and not self._abandon.done():
            self._abandon.set_result(None)
        self._wake.set()

    def poke(self) -> None:
        """Re-check sinks now (a file or the directory was deleted)."""
        self._wake.set()

    def stop(self) -> None:
        """End :meth:`run`. A write still in flight publishes nothing after this: the
        daemon may be about to remove this profile's files (reload, profile dropped)."""
        self.files.close()
        self._stopping = True
        self._wake.set()

    async def refresh(self) -> Token | None:
        """Fetch now, or join the fetch already in flight. Returns the new token, or
        None when the fetch failed (the reason is in ``last_error``)."""
        return await asyncio.shield(self._start_refresh())

    @property
    def refreshing(self) -> bool:
        """Whether a fetch (or the writing of its token) is in flight."""
        return self._inflight is not None

    async def ensure(self, min_valid: float) -> Token | None:
        """A token with more than ``min_valid`` seconds left, refreshing if needed."""
        tok = self.valid_token(min_valid)
        if tok is not None:
            return tok
        await self.refresh()
        return self.valid_token(min_valid) or self.valid_token()

    async def run(self) -> None:
        """Restore what an earlier run left, then start fetches when due and keep every
        other deadline meanwhile: a fetch may hang for its whole timeout, or its write
        on a slow disk, and the token it replaces must still be retired (its files
        removed) on time."""
        await self._restore()
        while not self._stopping:
            now = clock.steady()
            if now >= self.next_attempt:
                self._start_refresh()
            self._expire_if_due(now)
            self.files.remove_stale(now)
            self._repair_files()
            deadline = math.inf if self.refreshing else self.next_attempt
            if self.token is not None:
                deadline = min(deadline, retire_at(self.token))
            deadline = min(deadline, *self.files.deadlines(), math.inf)
            if self.files.error and not self.files.writing:
                deadline = min(deadline, now + SINK_RETRY)
            timeout = None if math.isinf(deadline) else max(0.0, deadline - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # -- restart ----------------------------------------------------------------------

    async def _restore(self) -> None:
        """Serve a token an earlier run left in the json sink until the first fetch
        replaces it, so a restart during an outage loses nothing, but only a token this
        run can vouch for: well-formed, with a plausible remaining life (at most the
        12 h Google issues), and minted from the credentials configured now (a login
        as someone else while tokend was stopped must not serve the old identity).
        Anything else a previous run left is removed: it may be expired, or another
        identity's. The files and credentials are read in a thread."""
        tok, why = await run_in_thread(self._previous_token)
        if tok is not None:
            self.token = tok
            self.files.adopt(tok)
            log.info(
                "profile %s: serving token %s from the previous run until the first refresh",
                self.name,
                tok.fingerprint,
            )
            return
        removed = await run_in_thread(self.files.remove_all)
        if removed:
            log.info(
                "profile %s: removed files an earlier run left (%s): %s",
                self.name,
                why,
                ", ".join(removed),
            )

    def _previous_token(self) -> tuple[Token | None, str]:
        """The earlier run's token and "", or None and why not (runs in a thread)."""
        why = "no token file to check them against"
        for sink, data in self.files.previous():
            try:
                tok = token_from_dict(json.loads(data), wall=clock.now(), steady=clock.steady())
            except (ValueError, UnicodeDecodeError) as err:
                why = f"{sink.path}: {err}"
                continue
            if tok.profile != self.name:
                why = f"{sink.path} holds profile {tok.profile!r}"
                continue
            try:
                current = self.source.credentials_id()
            except (CredentialsError, OSError):
                return None, "the credentials cannot be read to vouch for it"
            if not tok.credentials_id or tok.credentials_id != current:
                return None, "its token was minted from other credentials than the current ones"
            return tok, ""
        return None, why

    # -- internals ------------------------------------------------------------------

    def _start_refresh(self) -> asyncio.Future[Token | None]:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh_once())
            self._inflight.add_done_callback(self._refresh_done)
        return self._inflight

    def _refresh_done(self, fut: asyncio.Future[Token | None]) -> None:
        self._inflight = None
        if self._again:
            self._again = False
            self.next_attempt = -math.inf
        self._wake.set()  # the run loop's deadlines changed
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            # Fetch errors are handled in _refresh_once; this is a bug. Back off rather
            # than retry in a hot loop, and keep running.
            log.error("profile %s: refresh crashed", self.name, exc_info=exc)
            self.next_attempt = clock.steady() + backoff(self.consecutive_failures, self.rng)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    async def _refresh_once(self) -> Token | None:
        previous = self.state
        if previous not in (State.RETRYING, State.REAUTH_REQUIRED, State.EXPIRED):
            self.state = State.REFRESHING
            self._changed()
        self._abandon = asyncio.get_running_loop().create_future()
        try:
            tok = await fetch_within(self.source, self.source.timeout, self._abandon)
        except _Resumed:
            # Not a failure of the endpoint: the machine slept. Start over at once.
            log.info("profile %s: resumed from suspend during a fetch; fetching again", self.name)
            self.next_attempt = -math.inf
            return None
        except RefreshError as err:
            self._failed(err.reason, str(err), retryable=err.retryable)
            return None
        except CredentialsError as err:
            self._failed(err.reason, str(err), retryable=False)
            return None
        except Exception as err:  # a bug or an unforeseen library error: back off, do not die
            log.exception("profile %s: unexpected error during refresh", self.name)
            self._failed("internal_error", f"unexpected {type(err).__name__}", retryable=True)
            return None
        finally:
            self._abandon = None
            self.attempted.set()
        now = clock.steady()
        old = self.token
        self.token = tok
        self._rewrite = False  # the new token's files state the current offset
        self.consecutive_failures = 0
        self.last_error = self.last_error_reason = ""
        self.last_refresh = now
        self.next_attempt = next_refresh_at(tok.issued, tok.deadline, self.rng)
        self.state = State.FRESH
        if old is not None and old.account != tok.account:
            log.info(
                "profile %s: identity changed from %s to %s",
                self.name,
                old.account or "?",
                tok.account or "?",
            )
        await self.files.write(tok)
        log.info(
            "profile %s: token refreshed (%s, account %s, expires in %ds, next refresh in %ds)",
            self.name,
            tok.fingerprint,
            tok.account or "unknown",
            tok.expires_in(now),
            self.next_attempt - now,
        )
        self._changed()
        return tok

    def _failed(self, reason: str, message: str, *, retryable: bool) -> None:
        now = clock.steady()
        self.consecutive_failures += 1
        self.last_error, self.last_error_reason = message, reason
        if retryable:
            delay = backoff(self.consecutive_failures - 1, self.rng)
            self.next_attempt = now + delay
            # "expired" only once a token we served is gone; before the first success
            # there was nothing to expire.
            had_one = self.last_refresh is not None
            self.state = State.EXPIRED if had_one and not self.valid_token() else State.RETRYING
            log.warning(
                "profile %s: refresh failed (%s), retry %d in %.1fs; %s",
                self.name,
                message,
                self.consecutive_failures,
                delay,
                self._keeping(now),
            )
        else:
            # Retrying on a timer cannot fix revoked or missing credentials; the watcher
            # wakes us when the file changes, and SIGUSR1 or a client asking does too.
            self.next_attempt = math.inf
            self.state = State.REAUTH_REQUIRED
            log.error("profile %s: %s (%s); %s", self.name, message, reason, self._keeping(now))
        self._changed()

    def _keeping(self, now: float) -> str:
        tok = self.valid_token()
        if tok is None:
            return "no valid token to serve"
        return f"serving the previous token until it expires in {int(tok.expires_in(now))}s"

    def _expire_if_due(self, now: float) -> None:
        tok = self.token
        if tok is None or now < retire_at(tok):
            return
        self.token = None
        removed = self.files.remove_all()
        if self.state is not State.REAUTH_REQUIRED:
            self.state = State.EXPIRED
        log.warning(
            "profile %s: token %s expired with no successor (%s); removed %s",
            self.name,
            tok.fingerprint,
            self.last_error or "no refresh succeeded",
            ", ".join(removed) or "no files",
        )
        self._changed()

    def _repair_files(self) -> None:
        """Rewrite files that were deleted or failed to write while the token is
        valid, or all of them after a wall-clock step (in a thread: a slow disk must
        not stall the loop); the loop is woken when the write is done."""
        tok = self.valid_token()
        if tok is None:
            return
        started = self.files.repair(tok, rewrite=self._rewrite)
        if started is not None:
            self._rewrite = False
            started.add_done_callback(lambda _: self._wake.set())
