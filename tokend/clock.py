"""The one place tokend reads the time: two clocks, named for what they are for.

- :func:`now`, the wall clock: instants shown to people and written to files
  (``expires_at``). It can step (NTP, a user setting the time) in either direction.
- :func:`steady`, a clock that never steps and keeps counting while the machine is
  suspended (Linux ``CLOCK_BOOTTIME``; on macOS ``CLOCK_MONOTONIC``, which counts sleep
  there). A token's real life is measured on it: a token that Google says lives an hour
  dies an hour of real time after it arrived, whatever the wall clock says meanwhile
  and however long the lid was closed.

:func:`monotonic` is the clock asyncio's timers run on. It does not count suspend on
Linux, so a timer set for "in 45 minutes" before a two-hour suspend fires 45 minutes
*after* the resume; :class:`Jumps` notices such gaps (and wall-clock steps) by
comparing the three clocks, so the daemon can act within a tick of the resume.

Tests replace these functions (``monkeypatch.setattr(tokend.clock, "steady", ...)``)
instead of patching the code under test; end-to-end tests move the real clocks of a
``tokend run`` process with libfaketime or an ``LD_PRELOAD`` shim.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Jump", "Jumps", "monotonic", "now", "steady", "to_wall", "wall_offset"]

if sys.platform.startswith("linux"):
    _STEADY = time.CLOCK_BOOTTIME
elif hasattr(time, "CLOCK_MONOTONIC"):
    _STEADY = time.CLOCK_MONOTONIC  # macOS: counts time asleep
else:  # pragma: no cover - no POSIX clocks (Windows is not supported anyway)
    _STEADY = -1

#: A gap between the steady clock and asyncio's clock, or a change of the wall clock's
#: offset to the steady one, smaller than this is noise (NTP slewing, scheduling).
JUMP_THRESHOLD = 0.5


def now() -> float:
    """Wall-clock seconds since the epoch: for instants people read."""
    return time.time()


def steady() -> float:
    """Seconds on a clock that neither steps nor stops during suspend: for lifetimes and
    deadlines. Its zero point means nothing; compare only its differences."""
    if _STEADY < 0:  # pragma: no cover
        return time.monotonic()
    return time.clock_gettime(_STEADY)


def monotonic() -> float:
    """asyncio's clock (``loop.time()``): may stop while the machine is suspended."""
    return time.monotonic()


def wall_offset() -> float:
    """The wall clock minus the steady one, measured so that one bad read cannot skew
    it: five pairs, each with the steady clock read on both sides of the wall clock;
    of the three tightest (a thread preempted between two reads, as on a loaded
    machine, makes a wide pair), the median. Called after a jump, not per request."""
    pairs = []
    for _ in range(5):
        before = steady()
        wall = now()
        after = steady()
        pairs.append((after - before, wall - (before + after) / 2))
    tightest = sorted(offset for _, offset in sorted(pairs)[:3])
    return tightest[1]


def to_wall(instant: float) -> float:
    """The wall-clock time of a :func:`steady` instant, by today's offset."""
    return now() + (instant - steady())


class Jump:
    """What :meth:`Jumps.check` found since the previous check (zero: nothing).

    ``suspended``: seconds the machine was asleep (steady advanced, asyncio's clock did
    not). ``stepped``: how far the wall clock was moved against the steady one."""

    __slots__ = ("stepped", "suspended")

    def __init__(self, suspended: float = 0.0, stepped: float = 0.0) -> None:
        self.suspended = suspended
        self.stepped = stepped

    def __bool__(self) -> bool:
        return bool(self.suspended or self.stepped)

    def __repr__(self) -> str:
        return f"Jump(suspended={self.suspended:.3f}, stepped={self.stepped:+.3f})"


class Jumps:
    """Detects suspends and wall-clock steps between successive :meth:`check` calls.

    A suspend shows as the steady clock running ahead of asyncio's; a step as the wall
    clock's offset to the steady clock changing. The reference offset moves only when
    a step is reported, so slow drift (NTP slewing) is reported once it adds up to
    :data:`JUMP_THRESHOLD`, and rebasing wall-clock instants then is right too."""

    def __init__(self, threshold: float = JUMP_THRESHOLD) -> None:
        self.threshold = threshold
        self._mono = monotonic()
        self._steady = steady()
        self._offset = now() - self._steady

    def check(self) -> Jump:
        mono, stead, wall = monotonic(), steady(), now()
        suspended = (stead - self._steady) - (mono - self._mono)
        self._mono, self._steady = mono, stead
        stepped = (wall - stead) - self._offset
        jump = Jump()
        if suspended > self.threshold:
            jump.suspended = suspended
        if abs(stepped) > self.threshold:
            jump.stepped = stepped
            self._offset = wall - stead
        return jump
