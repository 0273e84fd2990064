"""Filesystem watching: turns watchdog events into calls on the event loop.

We watch *directories*, never files: ``gcloud auth application-default login`` and our
own sinks replace files by rename, which a watch on the old inode would never see.
A path that does not exist yet (no ADC file before the first login) is watched
through its nearest existing ancestor, and the set of watched directories is
recomputed after every event, so creating ``~/.config/gcloud`` later is noticed too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

try:  # watchdog >= 5 reports chmod/chown as its own event; older ones as a modification
    from watchdog.events import FileAttribEvent
except ImportError:  # pragma: no cover - watchdog 4
    FileAttribEvent = FileModifiedEvent  # type: ignore[misc,assignment]

__all__ = ["Watcher"]

log = logging.getLogger(__name__)

#: The events that can mean "a file we care about changed". Passed to the kernel as the
#: inotify mask: clients reading token files in a tight loop generate open/close
#: events by the million, which would overflow the inotify queue and keep the
#: observer thread (and so the GIL) busy, delaying refreshes. Attribute changes count:
#: the fix for an unreadable credentials file is a ``chmod``, which must wake us.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]


def _nearest_dir(path: Path) -> Path:
    p = path.parent
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [os.fsdecode(event.src_path)]
        if getattr(event, "dest_path", ""):
            paths.append(os.fsdecode(event.dest_path))
        self.watcher._post([Path(p) for p in paths])


class Watcher:
    """Calls ``on_change(path)`` on the loop for each changed path among ``targets``
    (or below a target directory)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[Path], None]) -> None:
        self._loop = loop
        self._on_change = on_change
        self._targets: frozenset[Path] = frozenset()
        self._dirs: dict[Path, object] = {}
        self._observer = Observer()
        self._observer.daemon = True
        self._handler = _Handler(self)
        self._started = False

    def set_targets(self, targets: Iterable[Path]) -> None:
        """Watch these files/directories (absolute paths). Safe to call repeatedly."""
        self._targets = frozenset(Path(os.path.abspath(t)) for t in targets)
        self._rearm()

    def start(self) -> None:
        self._observer.start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._started = False

    # -- internals (the observer thread calls _post) ------------------------------

    def _wanted_dirs(self) -> set[Path]:
        dirs = set()
        for t in self._targets:
            dirs.add(_nearest_dir(t))
            if t.is_dir():
                dirs.add(t)
        return dirs

    def _rearm(self) -> set[Path]:
        """Watch exactly the directories needed now; returns the newly watched ones."""
        wanted = self._wanted_dirs()
        for d in set(self._dirs) - wanted:
            watch = self._dirs.pop(d)
            try:
                self._observer.unschedule(watch)  # type: ignore[arg-type]
            except (KeyError, OSError):
                pass  # the directory vanished and took its watch with it
        added = wanted - set(self._dirs)
        for d in added:
            try:
                self._dirs[d] = self._observer.schedule(
                    self._handler, str(d), recursive=False, event_filter=_EVENTS
                )
            except OSError as err:
                log.debug("cannot watch %s: %s", d, err)
        return added

    def _post(self, paths: list[Path]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._dispatch, paths)
        except RuntimeError:
            pass  # loop closed during shutdown

    def _dispatch(self, paths: list[Path]) -> None:
        relevant = False
        for p in paths:
            for t in self._targets:
                if p == t or t in p.parents or p in t.parents:
                    self._on_change(p)
                    relevant = True
                    break
        if not relevant:
            return
        added = self._rearm()
        # A file created right after its directory (`mkdir -p ~/.config/gcloud` then
        # the login writes the ADC file) lands before the new directory is watched:
        # report every target that now exists under a newly watched directory.
        for t in self._targets:
            if t.parent in added and t.exists():
                self._on_change(t)
