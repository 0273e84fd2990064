"""The one place tokend reads the time.

Everything that compares against a token's expiry calls :func:`now`, so a test can
replace this single function (``monkeypatch.setattr(tokend.clock, "now", ...)``)
instead of patching the code under test. Wall-clock time, because expiry times come
from Google as wall-clock instants.
"""

from __future__ import annotations

import time

__all__ = ["now"]


def now() -> float:
    """Seconds since the epoch, as a float."""
    return time.time()
