"""The two clocks and the jump detector, with the clocks replaced (tokend.clock is the
one place time is read)."""

from __future__ import annotations

import sys
import time

import pytest

from tokend import clock


class Fake:
    """Three clocks a test moves by hand: wall, steady (counts suspend), monotonic."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall, self.steady, self.mono = 1_800_000_000.0, 500.0, 100.0
        monkeypatch.setattr(clock, "now", lambda: self.wall)
        monkeypatch.setattr(clock, "steady", lambda: self.steady)
        monkeypatch.setattr(clock, "monotonic", lambda: self.mono)

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.steady += seconds
        self.mono += seconds

    def sleep(self, seconds: float) -> None:  # suspend: asyncio's clock stands still
        self.wall += seconds
        self.steady += seconds


def test_nothing_happens_while_the_clocks_run_together(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Fake(monkeypatch)
    jumps = clock.Jumps()
    for _ in range(100):
        c.run(1.0)
        assert not jumps.check()


def test_a_suspend_is_seen_once_with_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Fake(monkeypatch)
    jumps = clock.Jumps()
    c.run(0.3)
    c.sleep(7200.0)
    c.run(0.7)
    jump = jumps.check()
    assert jump.suspended == pytest.approx(7200.0) and jump.stepped == 0.0
    c.run(1.0)
    assert not jumps.check()


@pytest.mark.parametrize("step", [-60.0, 60.0, -0.6])
def test_a_wall_clock_step_is_seen_once_either_way(
    monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    c = Fake(monkeypatch)
    jumps = clock.Jumps()
    c.run(1.0)
    c.wall += step
    jump = jumps.check()
    assert jump.stepped == pytest.approx(step) and jump.suspended == 0.0
    c.run(1.0)
    assert not jumps.check()


def test_slow_drift_is_reported_once_it_adds_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """NTP slewing moves the wall clock by at most 500 ppm: no single tick is a jump,
    but once the expiry times the files state would be half a second off, it is."""
    c = Fake(monkeypatch)
    jumps = clock.Jumps()
    seen = []
    for tick in range(2000):
        c.run(1.0)
        c.wall += 0.0005
        if jump := jumps.check():
            seen.append((tick, jump.stepped))
    assert [t for t, _ in seen] == [1000] and seen[0][1] == pytest.approx(0.5005, abs=1e-3)


def test_to_wall_converts_a_steady_instant(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Fake(monkeypatch)
    assert clock.to_wall(c.steady + 30) == c.wall + 30


def test_the_wall_offset_ignores_a_preempted_pair_and_a_bad_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five pairs: one preempted between its reads (5 ms pass), one whose wall clock
    read is off by a minute (libfaketime does that to threads now and then), three
    good ones. The offset is the good ones', not skewed by either (the first cost a
    rebased token a whole second on a loaded CI machine, the second a whole step)."""
    steady = iter([100.0, 100.005, 101.0, 101.000005, 102.0, 102.00001, 103.0, 103.00001,
                   104.0, 104.00001])  # fmt: skip
    walls = iter([1000.0, 1061.0, 1002.0, 1003.0, 1004.0])
    monkeypatch.setattr(clock, "steady", lambda: next(steady))
    monkeypatch.setattr(clock, "now", lambda: next(walls))
    assert clock.wall_offset() == pytest.approx(900.0, abs=1e-4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CLOCK_BOOTTIME is Linux's")
def test_the_steady_clock_is_the_boot_clock() -> None:
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    value = clock.steady()
    assert before <= value <= time.clock_gettime(time.CLOCK_BOOTTIME)
