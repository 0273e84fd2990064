"""ID tokens, one cache entry per (profile, audience), each kept fresh like a profile's
access token.

An entry is a :class:`~tokend.refresher.ProfileRefresher` whose source mints ID tokens
for one audience (:class:`AudienceSource`): the same refresh policy, backoff, retirement,
suspend and clock-step handling, and, for audiences configured with files
(``[[profiles.NAME.id_tokens]]``), the same file lifecycle as access tokens. There is no
second scheduler.

Two kinds of entries:

- **configured** (a file names the audience): started with the daemon, refreshed for as
  long as it runs, never evicted;
- **asked for** (``/v1/id_token``, ``tokend id-token``, the metadata endpoint): made on
  the first request, which waits for the first token. At most ``max_audiences`` of these
  are kept across all profiles; the least recently used is dropped to make room, so a
  client cycling through audiences cannot grow the daemon or its calls to Google. One
  that nobody has asked for during its token's lifetime is dropped instead of being
  refreshed again: its next request mints anew.

Entries are named ``PROFILE (ID token for AUDIENCE)`` in logs and errors; the audience
is checked (:func:`tokend.wire.check_audience`) before an entry is made, so the name
holds no control characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tokend import clock
from tokend.refresher import ProfileRefresher, TokenSource
from tokend.sinks import FileSink
from tokend.token import Token

__all__ = [
    "DEFAULT_MAX_AUDIENCES",
    "AudienceSource",
    "Busy",
    "IdTokenSource",
    "IdTokens",
    "entry_name",
]

log = logging.getLogger(__name__)

#: Audiences asked for (not configured) kept at most, across profiles, unless configured.
DEFAULT_MAX_AUDIENCES = 16
#: An asked-for audience is dropped when nobody asked for it for its token's lifetime,
#: but never sooner than this (a token of a few seconds, in tests, must not make every
#: entry vanish between two requests).
MIN_IDLE = 10.0


class IdTokenSource(TokenSource, Protocol):
    """What an entry needs of :class:`tokend.source.Source`: a profile's token source
    that also mints ID tokens."""

    def fetch_id_token(self, audience: str) -> Token: ...


class AudienceSource:
    """A profile's source seen as a refresher's token source for one audience: its
    ``fetch`` mints an ID token for ``audience``; the rest is the profile's."""

    def __init__(self, source: IdTokenSource, audience: str) -> None:
        self.source = source
        self.audience = audience

    def __repr__(self) -> str:
        return f"AudienceSource({self.source!r}, audience={self.audience!r})"

    @property
    def credential_type(self) -> str:
        return self.source.credential_type

    @property
    def account(self) -> str:
        return self.source.account

    @property
    def watched_paths(self) -> tuple[Path, ...]:
        return self.source.watched_paths

    @property
    def timeout(self) -> float:
        return self.source.timeout

    def fetch(self) -> Token:
        return self.source.fetch_id_token(self.audience)

    def invalidate(self) -> None:
        self.source.invalidate()

    def abandon(self) -> None:
        self.source.abandon()

    def credentials_id(self) -> str:
        return self.source.credentials_id()


class Busy(Exception):
    """Every asked-for entry is minting right now: a new audience would evict one whose
    fetch is in flight, and its abandoned fetch would keep running meanwhile, so a
    client flooding audiences could start fetches without bound. Refused instead."""


def entry_name(profile: str, audience: str) -> str:
    """How an entry is named in logs, status and errors."""
    return f"{profile} (ID token for {audience})"


@dataclass(eq=False)
class _Entry:
    profile: str
    audience: str
    refresher: ProfileRefresher
    task: asyncio.Task[None]
    configured: bool
    last_used: float  #: clock.steady() of the last request
    changed: asyncio.Event = field(default_factory=asyncio.Event)


Key = tuple[str, str]


class IdTokens:
    """The daemon's ID tokens, by (profile, audience).

    Args:
        make_source: a new source for a profile (each entry has its own: its own
            credentials object and HTTP session, so entries never share a fetch's state).
        max_audiences: asked-for audiences kept at most (configured ones do not count).
        on_change: called with an entry's refresher at each of its state changes.
    """

    def __init__(
        self,
        make_source: Callable[[str], IdTokenSource],
        *,
        max_audiences: int = DEFAULT_MAX_AUDIENCES,
        on_change: Callable[[ProfileRefresher], None] | None = None,
    ) -> None:
        self.make_source = make_source
        self._max_audiences = max_audiences
        self.on_change = on_change
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()  # least recently used first
        self._by_refresher: dict[int, _Entry] = {}
        self._wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def max_audiences(self) -> int:
        """Asked-for audiences kept at most; lowering it (a reload) drops the least
        recently used at once."""
        return self._max_audiences

    @max_audiences.setter
    def max_audiences(self, value: int) -> None:
        self._max_audiences = value
        self._evict()

    # -- what front ends use ------------------------------------------------------------

    def get(self, profile: str, audience: str) -> ProfileRefresher:
        """The entry for ``audience`` (already checked) of ``profile`` (known to exist),
        made and started if there is none, and marked used now. Making one may drop
        the least recently used asked-for entry that is not minting.

        Raises:
            Busy: the cache is full of asked-for entries that are all minting."""
        key = (profile, audience)
        entry = self._entries.get(key)
        now = clock.steady()
        if entry is None:
            if self.asked >= self.max_audiences and not any(
                not e.configured and not e.refresher.refreshing for e in self._entries.values()
            ):
                raise Busy
            entry = self._start(profile, audience, (), configured=False)
            self._evict()
        self._entries.move_to_end(key)
        entry.last_used = now
        return entry.refresher

    def current(self, profile: str, audience: str) -> ProfileRefresher | None:
        entry = self._entries.get((profile, audience))
        return entry.refresher if entry is not None else None

    def change_event(self, r: ProfileRefresher) -> asyncio.Event:
        """Set at the entry's next state change, or when it is dropped."""
        entry = self._by_refresher.get(id(r))
        return entry.changed if entry is not None else _SET

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[tuple[str, str, ProfileRefresher]]:
        """``(profile, audience, refresher)``, least recently used first."""
        for (profile, audience), entry in list(self._entries.items()):
            yield profile, audience, entry.refresher

    @property
    def asked(self) -> int:
        """How many asked-for (not configured) entries there are."""
        return sum(1 for e in self._entries.values() if not e.configured)

    # -- lifecycle (the daemon) -------------------------------------------------------

    def configure(self, wanted: Mapping[str, Sequence[tuple[str, Sequence[FileSink]]]]) -> None:
        """Start the configured audiences ``wanted`` lists (profile -> (audience, its
        files)) that are not running. Call after :meth:`drop_profiles` for profiles
        whose configuration changed."""
        for profile, audiences in wanted.items():
            for audience, sinks in audiences:
                key = (profile, audience)
                old = self._entries.get(key)
                if old is not None and old.configured:
                    continue
                if old is not None:  # asked for before; now it has files
                    self._drop(old, "it is configured now")
                self._start(profile, audience, sinks, configured=True)

    def drop_profiles(self, names: Iterable[str]) -> list[FileSink]:
        """Stop every entry of these profiles (removed, or their configuration
        changed: their credentials may be another identity's). Returns the files of
        configured entries, for the daemon to remove those the new configuration no
        longer names."""
        names = set(names)
        files: list[FileSink] = []
        for entry in list(self._entries.values()):
            if entry.profile in names:
                files.extend(entry.refresher.sinks)
                self._drop(entry, "its profile was removed or changed")
        return files

    def sinks(self) -> list[FileSink]:
        """Every configured entry's files."""
        return [s for e in self._entries.values() for s in e.refresher.sinks]

    def refreshers(self) -> list[ProfileRefresher]:
        return [e.refresher for e in self._entries.values()]

    def credentials_changed(self, profile: str) -> None:
        """The profile's credentials file changed: reload and refresh its entries now."""
        for entry in self._entries.values():
            if entry.profile == profile:
                entry.refresher.refresh_soon(reload_credentials=True)

    def clock_jumped(self, jump: clock.Jump) -> None:
        for entry in self._entries.values():
            entry.refresher.clock_jumped(jump)
        self._wake.set()  # the sweeper's timer slept through a suspend too

    def refresh_all(self) -> None:
        for entry in self._entries.values():
            entry.refresher.refresh_soon()

    def poke(self) -> None:
        """Re-check files (one was deleted)."""
        for entry in self._entries.values():
            entry.refresher.poke()

    async def run(self) -> None:
        """Drop asked-for entries nobody asked for during their token's lifetime
        (asleep while there are none)."""
        while not self._stopping:
            now = clock.steady()
            deadline = math.inf
            for entry in list(self._entries.values()):
                if entry.configured:
                    continue
                due = entry.last_used + self._idle(entry.refresher)
                if now >= due:
                    self._drop(entry, "nobody asked for it during its token's lifetime")
                else:
                    deadline = min(deadline, due)
            self._wake.clear()
            timeout = None if math.isinf(deadline) else max(0.0, deadline - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        """Stop every entry (files still valid are kept, as for access tokens)."""
        self._stopping = True
        self._wake.set()
        tasks = [e.task for e in self._entries.values()]
        for entry in list(self._entries.values()):
            self._drop(entry, "")
        if self._sweeper is not None:
            self._sweeper.cancel()
            tasks.append(self._sweeper)
            self._sweeper = None
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    # -- internals --------------------------------------------------------------------

    @staticmethod
    def _idle(r: ProfileRefresher) -> float:
        tok = r.token
        lifetime = tok.lifetime if tok is not None else 0.0
        return max(MIN_IDLE, lifetime)

    def _start(
        self, profile: str, audience: str, sinks: Sequence[FileSink], *, configured: bool
    ) -> _Entry:
        source = AudienceSource(self.make_source(profile), audience)
        refresher = ProfileRefresher(
            entry_name(profile, audience), source, sinks, on_change=self._changed
        )
        entry = _Entry(
            profile,
            audience,
            refresher,
            asyncio.ensure_future(refresher.run()),
            configured,
            clock.steady(),
        )
        self._entries[(profile, audience)] = entry
        self._by_refresher[id(refresher)] = entry
        self._wake.set()  # the sweeper's deadlines changed
        return entry

    def _evict(self) -> None:
        """Drop the least recently used asked-for entries that are not minting (the new
        one is minting) until the bound holds."""
        while self.asked > self._max_audiences:
            idle = [e for e in self._entries.values() if not e.configured]
            oldest = next((e for e in idle if not e.refresher.refreshing), idle[0])
            self._drop(oldest, f"more than {self._max_audiences} audiences were asked for")

    def _drop(self, entry: _Entry, why: str) -> None:
        if self._entries.get((entry.profile, entry.audience)) is entry:
            del self._entries[(entry.profile, entry.audience)]
        self._by_refresher.pop(id(entry.refresher), None)
        entry.refresher.stop()
        entry.task.cancel()
        entry.changed.set()  # a request waiting on it answers now
        if why:
            log.info("profile %s: dropped (%s)", entry.refresher.name, why)

    def _changed(self, r: ProfileRefresher) -> None:
        entry = self._by_refresher.get(id(r))
        if entry is not None:
            entry.changed.set()
            entry.changed = asyncio.Event()
            self._wake.set()  # a new token: a new lifetime to be idle for
        if self.on_change is not None:
            self.on_change(r)


class _AlwaysSet(asyncio.Event):
    """The event of an entry that is gone: waiting on it returns at once."""

    def __init__(self) -> None:
        super().__init__()
        self.set()


_SET = _AlwaysSet()
