"""Talking to the service manager: the sd_notify protocol, stdlib only.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``NOTIFY_SOCKET``; the service sends newline-separated ``KEY=VALUE`` fields to it
(``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``). Without that variable
(``tokend run`` in a terminal, under launchd) every call here is a silent no-op, and
a failure to send is only debug-logged: the manager being unreachable must never
disturb the daemon. A leading ``@`` names a socket in Linux's abstract namespace.

Sending never blocks: the manager's queue of unread datagrams is short
(``net.unix.max_dgram_qlen``, 10 by default), and a blocking send to a full one waits
until the manager reads, which froze the whole event loop (``/healthz``, refreshes)
when nobody did. A message that finds the queue full is dropped instead; ``STATUS=``
is sent again by the next update or keepalive, and ``READY=1`` is retried (see
:class:`ServiceLink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from tokend.timefmt import format_duration

if TYPE_CHECKING:
    from tokend.refresher import Snapshot

__all__ = ["ServiceLink", "describe", "notify", "watchdog_interval"]

log = logging.getLogger(__name__)

#: Without a watchdog, STATUS= ("expires in 52m10s") is still refreshed this often.
STATUS_REFRESH = 30.0
#: A READY=1 the manager's full queue refused is sent again after this many seconds,
#: doubling up to READY_RETRY_MAX.
READY_RETRY_FIRST = 0.05
READY_RETRY_MAX = 1.0


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) to the service manager.

    Args:
        fields: ``KEY=VALUE`` strings; newlines inside a value are replaced by spaces,
            since a newline separates fields in the protocol.
        env: where to read ``NOTIFY_SOCKET`` (default: the process environment).

    Returns:
        True when the datagram was sent; False without ``NOTIFY_SOCKET`` or on failure,
        including a full queue at the manager (the datagram is dropped, never waited
        for: this runs on the event loop).
    """
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET %r: unsupported address, not notifying", address)
        return False
    payload = "\n".join(f.replace("\n", " ") for f in fields).encode()
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    try:
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.send(payload)  # one datagram: sent whole or not at all
    except BlockingIOError:
        log.debug("sd_notify to %r dropped: the service manager's queue is full", address)
        return False
    except OSError as err:
        log.debug("sd_notify to %r failed: %s", address, err)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as systemd
    recommends, so one late ping does not get us killed. None when no watchdog is
    armed, or when ``WATCHDOG_PID`` names another process (the variable leaked to a
    child, which must not ping on its parent's behalf)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6 / 2


def _fix(message: str) -> str:
    """The advice part of an error: tokend's messages end in ``…; what to do``."""
    return message.rsplit("; ", 1)[-1].strip()


def describe(snapshots: Iterable[Snapshot], now: float) -> str:
    """One ``STATUS=`` line in words for every profile, e.g. ``default: fresh, expires
    in 52m`` or ``default: reauth_required — run `gcloud auth application-default
    login```. Built from snapshots, which hold no token value."""
    parts = []
    for s in snapshots:
        state = s.state.value
        text = f"{s.profile}: {state}"
        if state in ("fresh", "refreshing") and s.expires_at is not None:
            text += f", expires in {format_duration(s.expires_at - now)}"
        elif state == "retrying":
            text += f" after {s.consecutive_failures} failure(s)"
            if s.expires_at is not None:
                text += f", serving the last token for {format_duration(s.expires_at - now)}"
        elif state == "expired":
            text += f", no valid token; retrying ({s.last_error_reason or 'refresh failed'})"
        elif state == "reauth_required" and s.last_error:
            reason = s.last_error_reason
            text += f" ({reason})" if reason and reason != state else ""
            text += f" — {_fix(s.last_error)}"
        parts.append(text)
    return "; ".join(parts) or "no profiles"


class ServiceLink:
    """The daemon's side of the conversation with systemd; inert without
    ``NOTIFY_SOCKET``.

    A message the manager's full queue refuses is dropped (see :func:`notify`), which
    is harmless for all but one: ``STATUS=`` counts as sent only once it was, so the
    next state change or keepalive sends the current text; ``WATCHDOG=1`` comes again
    within half the watchdog interval. A lost ``READY=1`` would leave the unit
    "activating" (or "reloading") until ``TimeoutStartSec`` fails it, so it is retried
    from a timer, READY_RETRY_FIRST doubling to READY_RETRY_MAX seconds apart, until
    the manager takes it or the daemon stops: each try is one non-blocking send.

    Args:
        status: returns the current ``STATUS=`` text (called on the loop).
        env: the environment to read (default: the process environment).
    """

    def __init__(self, status: Callable[[], str], env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self.enabled = bool(self._env.get("NOTIFY_SOCKET"))
        self.watchdog = watchdog_interval(self._env) if self.enabled else None
        self._status = status
        self._last_status = ""
        self._ready = False  # READY=1 is due: reloads may announce themselves
        self._ready_retry: asyncio.TimerHandle | None = None  # a READY=1 not yet taken
        self._ready_delay = READY_RETRY_FIRST
        self._task: asyncio.Task[None] | None = None

    def send(self, *fields: str) -> bool:
        return self.enabled and notify(*fields, env=self._env)

    def status_changed(self) -> None:
        """Send ``STATUS=`` if its text changed (state changes call this)."""
        if not self.enabled:
            return
        text = self._status()
        if text != self._last_status and self.send(f"STATUS={text}"):
            self._last_status = text

    def start(self, first_attempts: Callable[[], Awaitable[None]]) -> None:
        """Start pinging the watchdog now, and send ``READY=1`` once
        ``first_attempts()`` finishes (call this once the socket listens)."""
        if self.enabled and self._task is None:
            self._task = asyncio.ensure_future(self._run(first_attempts))

    def reloading(self) -> None:
        """``RELOADING=1`` before a configuration reload (after readiness only: the
        ``READY=1`` that ends a reload must not announce an unfinished start, and
        while the start's ``READY=1`` is still being retried the manager has not seen
        the start finish)."""
        if self._ready and self._ready_retry is None:
            # systemd >= 253 wants the monotonic time of the reload's start with it.
            self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def reloaded(self) -> None:
        if self._ready:
            self._cancel_ready_retry()
            self._send_ready()

    def stopping(self) -> None:
        """``STOPPING=1``; the watchdog stops too (a stopping daemon is not hung)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._cancel_ready_retry()
        self.send("STOPPING=1", "STATUS=stopping")

    def _send_ready(self) -> None:
        """``READY=1`` with the current status, retried from a timer until taken."""
        self._ready_retry = None
        text = self._status()
        if self.send("READY=1", f"STATUS={text}"):
            self._last_status = text
            self._ready_delay = READY_RETRY_FIRST
            log.debug("told the service manager we are ready")
            return
        loop = asyncio.get_running_loop()
        self._ready_retry = loop.call_later(self._ready_delay, self._send_ready)
        self._ready_delay = min(2 * self._ready_delay, READY_RETRY_MAX)

    def _cancel_ready_retry(self) -> None:
        if self._ready_retry is not None:
            self._ready_retry.cancel()
            self._ready_retry = None
        self._ready_delay = READY_RETRY_FIRST

    async def _run(self, first_attempts: Callable[[], Awaitable[None]]) -> None:
        pinger = asyncio.ensure_future(self._keepalive())
        try:
            # A failed first attempt counts as finished: a laptop booting offline must
            # not fail its start; the status line says what is wrong instead.
            await first_attempts()
            self._ready = True
            self._send_ready()
            await pinger
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _keepalive(self) -> None:
        # Pinging from a task on the daemon's own loop is the point: if the loop is
        # stuck, the pings stop and systemd restarts us (WatchdogSec=). Cancellation
        # ends the sleep at once, so shutdown is not delayed.
        interval = self.watchdog or STATUS_REFRESH
        while True:
            if self.watchdog is not None:
                self.send("WATCHDOG=1")
            self.status_changed()  # keeps "expires in …" current
            await asyncio.sleep(min(interval, STATUS_REFRESH))
