"""The daemon's Prometheus metrics: what ``/metrics`` says.

Per-profile numbers are read from the refreshers at scrape time; refresh and failure
counts are accumulated from state changes (:meth:`Metrics.observe`); requests are counted
by the front ends, per path and status, in plain dictionaries (an increment is one dict
update). prometheus_client renders the text at the first scrape and is imported only
then: it is not on the daemon's start-up path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from tokend import clock
from tokend.refresher import ProfileRefresher

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The Prometheus text format's media type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The numbers behind ``/metrics``.

    Args:
        refreshers: the daemon's live map of profiles (read at every scrape).
    """

    def __init__(self, refreshers: Mapping[str, ProfileRefresher]) -> None:
        self.refreshers = refreshers
        #: Socket API requests: (path, status) -> count.
        self.requests: Counter[tuple[str, str]] = Counter()
        #: Local proxy requests: (key name, status) -> count.
        self.proxy_requests: Counter[tuple[str, str]] = Counter()
        #: Metadata endpoint requests: (route, status) -> count.
        self.metadata_requests: Counter[tuple[str, str]] = Counter()
        self.refreshes: dict[str, int] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self._last: dict[str, tuple[float | None, int]] = {}
        self._registry: Any = None

    def text(self) -> bytes:
        """The whole exposition, as ``/metrics`` answers it."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        return bytes(generate_latest(self._registry))

    def observe(self, r: ProfileRefresher) -> None:
        """Called on every state change of a profile: count what changed since the
        last call (a new ``last_refresh`` is a success; a higher failure count is a
        failure)."""
        last_refresh, failures = self._last.get(r.name, (None, 0))
        if r.last_refresh is not None and r.last_refresh != last_refresh:
            self.refreshes[r.name] = self.refreshes.get(r.name, 0) + 1
        if r.consecutive_failures > failures:
            key = (r.name, r.last_error_reason or "unknown")
            self.failures[key] = self.failures.get(key, 0) + r.consecutive_failures - failures
        self._last[r.name] = (r.last_refresh, r.consecutive_failures)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = clock.steady()
        for name, doc, labels, counts in (
            (
                "tokend_requests",
                "Socket API requests by path and HTTP status.",
                ["path", "status"],
                self.requests,
            ),
            (
                "tokend_proxy_requests",
                "Local proxy requests by local key name and HTTP status.",
                ["key", "status"],
                self.proxy_requests,
            ),
            (
                "tokend_metadata_requests",
                "Metadata endpoint requests by route and HTTP status.",
                ["route", "status"],
                self.metadata_requests,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=labels)
            for values, n in sorted(counts.items()):
                family.add_metric(list(values), n)
            yield family
        refreshes = CounterMetricFamily(
            "tokend_refreshes", "Successful token refreshes.", labels=["profile"]
        )
        for name, n in sorted(self.refreshes.items()):
            refreshes.add_metric([name], n)
        yield refreshes
        failures = CounterMetricFamily(
            "tokend_refresh_failures", "Failed token refreshes.", labels=["profile", "reason"]
        )
        for (name, reason), n in sorted(self.failures.items()):
            failures.add_metric([name, reason], n)
        yield failures
        expiry = GaugeMetricFamily(
            "tokend_token_expiry_seconds",
            "Seconds until the served token expires (0 when there is none).",
            labels=["profile"],
        )
        valid = GaugeMetricFamily(
            "tokend_token_valid", "1 when the profile holds a valid token.", labels=["profile"]
        )
        consecutive = GaugeMetricFamily(
            "tokend_consecutive_failures",
            "Refresh failures since the last success.",
            labels=["profile"],
        )
        for name, r in sorted(self.refreshers.items()):
            tok = r.valid_token()
            expiry.add_metric([name], max(0.0, tok.expires_in(now)) if tok else 0.0)
            valid.add_metric([name], 1.0 if tok else 0.0)
            consecutive.add_metric([name], r.consecutive_failures)
        yield expiry
        yield valid
        yield consecutive
