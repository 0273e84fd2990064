"""The daemon's log: one line per event on stderr, in the form journald reads best.

Under journald (``JOURNAL_STREAM`` set) lines carry no timestamp, which journald adds
itself, and a ``<N>`` syslog priority prefix it understands; elsewhere a timestamp and
the level. Libraries below tokend log request details at DEBUG: they are kept at
WARNING, so nothing they would print (URLs, bodies) reaches the output.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["printable_path", "setup_logging"]

#: syslog priorities for the ``<N>`` prefix journald understands.
_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _formatter(journal: bool) -> logging.Formatter:
    """One line per event. Under journald (``JOURNAL_STREAM`` set) no timestamp, which
    journald adds itself, and a ``<N>`` syslog priority prefix it understands."""

    class Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = super().format(record).replace("\n", " | ")
            if journal:
                return f"<{_PRIORITY.get(record.levelname, 6)}>{text}"
            return text

    return Formatter("%(message)s" if journal else "%(asctime)s tokend %(levelname)s: %(message)s")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr, one line per event (DEBUG with ``verbose``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Libraries below us log request details at DEBUG; never let them near the output.
    for noisy in ("google", "urllib3", "requests", "watchdog", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def printable_path(raw_path: str) -> str:
    """A request's path for a log line: no query (it may hold anything), no control
    characters (a terminal reading the journal must not be steered by a client),
    bounded."""
    path = raw_path.partition("?")[0][:200]
    return "".join(c if c.isprintable() else "?" for c in path)
