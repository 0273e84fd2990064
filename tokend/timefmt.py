"""The one timestamp format tokend writes and reads (``2026-11-25T18:00:00Z``).

A module of its own, so that :mod:`tokend.client` can share it without loading
:mod:`tokend.token`'s dataclasses and hashlib; :mod:`datetime` is imported by the
functions that use it, so that importing this module (``tokend token`` does, through
:mod:`tokend.wire`) costs nothing until a time is formatted or parsed.
"""

from __future__ import annotations

__all__ = ["format_duration", "format_time", "parse_time"]


def format_time(ts: float) -> str:
    """Whole seconds, rounded *down* so a reader never believes a token lives longer
    than it does."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """Inverse of :func:`format_time` (accepts any ISO 8601 instant with an offset)."""
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def format_duration(seconds: float) -> str:
    """A duration for people, to the second: ``42s``, ``5m03s``, ``1h05m`` (negative: 0s)."""
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
