"""The refresh schedule and the backoff, checked for every lifetime from 2 s to 12 h."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tokend.refresher import (
    BACKOFF_CAP,
    BACKOFF_MIN,
    REFRESH_FLOOR,
    backoff,
    next_refresh_at,
    retire_at,
)
from tokend.token import Token

lifetimes = st.floats(min_value=2.0, max_value=12 * 3600.0, allow_nan=False)
instants = st.floats(min_value=0.0, max_value=4e9, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**32)


@given(lifetimes, instants, seeds)
def test_refresh_is_inside_the_lifetime_and_not_a_hot_loop(
    lifetime: float, issued: float, seed: int
) -> None:
    at = next_refresh_at(issued, issued + lifetime, random.Random(seed))
    # Never past expiry, never before half the lifetime (so at most 2 refreshes per
    # lifetime, even for a 2-second token).
    assert issued + lifetime / 2 - 1e-6 <= at < issued + lifetime


@given(lifetimes, instants, seeds)
def test_jitter_stays_in_75_to_85_percent_unless_the_floor_pulls_it_earlier(
    lifetime: float, issued: float, seed: int
) -> None:
    at = next_refresh_at(issued, issued + lifetime, random.Random(seed))
    fraction = (at - issued) / lifetime
    assert fraction <= 0.85 + 1e-9
    if lifetime * 0.25 >= REFRESH_FLOOR or lifetime < 2 * REFRESH_FLOOR:
        # The floor is not in the way: pure jitter window.
        assert fraction >= 0.75 - 1e-9


@given(st.floats(min_value=2 * REFRESH_FLOOR, max_value=12 * 3600.0), instants, seeds)
def test_at_least_five_minutes_left_where_the_lifetime_allows(
    lifetime: float, issued: float, seed: int
) -> None:
    at = next_refresh_at(issued, issued + lifetime, random.Random(seed))
    assert issued + lifetime - at >= REFRESH_FLOOR - 1e-6


def test_one_hour_token_refreshes_between_45_and_51_minutes() -> None:
    rng = random.Random(1)
    ats = [next_refresh_at(0.0, 3600.0, rng) for _ in range(2000)]
    assert 2700 <= min(ats) < 2720
    assert 3040 < max(ats) <= 3060
    assert len({round(a) for a in ats}) > 100  # jitter really spreads


@given(st.integers(min_value=0, max_value=10_000), seeds)
def test_backoff_bounds(attempt: int, seed: int) -> None:
    delay = backoff(attempt, random.Random(seed))
    assert BACKOFF_MIN <= delay <= BACKOFF_CAP
    assert delay <= max(BACKOFF_MIN, 2.0 ** min(attempt, 64))


def test_backoff_grows_to_the_cap() -> None:
    rng = random.Random(7)
    means = [sum(backoff(a, rng) for _ in range(4000)) / 4000 for a in range(9)]
    # Full jitter: mean is half the ceiling (1, 2, 4, ... 60).
    for attempt, mean in enumerate(means):
        ceiling = min(BACKOFF_CAP, 2.0**attempt)
        assert abs(mean - ceiling / 2) < ceiling * 0.06 + BACKOFF_MIN


@given(lifetimes, instants, instants)
def test_tokens_retire_shortly_before_expiry(lifetime: float, issued: float, wall: float) -> None:
    tok = Token.received("v", lifetime, wall=wall, steady=issued)
    at = retire_at(tok)
    assert tok.deadline - 1.0 - 1e-6 <= at < tok.deadline
    # ...which is never after the instant the files state (whole seconds, rounded down).
    assert at - issued < tok.expires_at - wall
    # Retirement always comes after the scheduled refresh, so a healthy endpoint
    # replaces every token before it is retired.
    assert at > next_refresh_at(tok.issued, tok.deadline, random.Random(0))
