"""Blocking calls off the event loop, on daemon threads.

Not the loop's default executor: its threads are joined at interpreter exit, so a fetch
stuck on a slow network (or a write stuck on a slow disk) would hold up shutdown. A
daemon thread is simply abandoned; its own timeouts end it soon after.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_thread", "run_in_thread"]

T = TypeVar("T")


def in_thread(fn: Callable[[], T], name: str = "tokend-io") -> asyncio.Future[T]:
    """Start ``fn()`` on a daemon thread; the future settles on the running loop.
    Cancelling the future abandons the call (its result is dropped)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def target() -> None:
        ok: bool
        value: Any
        try:
            ok, value = True, fn()
        except BaseException as exc:  # delivered to the awaiting task
            ok, value = False, exc
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:
            pass  # the loop closed while we were working: nobody waits any more

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut


async def run_in_thread(fn: Callable[[], T], name: str = "tokend-io") -> T:
    """Run ``fn()`` on a daemon thread and wait for it."""
    return await in_thread(fn, name)
