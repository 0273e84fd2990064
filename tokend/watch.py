"""Filesystem watching: turns watchdog events into calls on the event loop.

We watch *directories*, never files: ``gcloud auth application-default login`` and our
own sinks replace files by rename, which a watch on the old inode would never see.
A path that does not exist yet (no ADC file before the first login) is watched
through its nearest existing ancestor, and the set of watched directories is
recomputed after every event, so creating ``~/.config/gcloud`` later is noticed too.

Kubernetes updates a mounted Secret or ConfigMap without touching the file's own path:
``NAME`` is a symlink to ``..data/NAME``, and kubelet swaps the ``..data`` symlink to a
new directory by a rename. So an event on ``..data`` counts as a change of every target
in its directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Iterator
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

__all__ = ["KUBELET_DATA", "Watcher"]

#: The symlink kubelet swaps when a mounted Secret or ConfigMap changes.
KUBELET_DATA = "..data"

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
        self.watcher._post(paths, event.is_directory)


def _ancestors(path: str) -> Iterator[str]:
    """``/a/b/c`` → ``/a/b``, ``/a``, ``/``: string work only (paths are absolute and
    normalised: the watcher's targets are, and inotify reports paths under them)."""
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return
        yield parent
        path = parent


class Watcher:
    """Calls ``on_change(path)`` on the loop for each changed path among ``targets``,
    below a target directory, or above a target (a directory on the way to it).

    An event finds its targets by string lookups in sets made once per
    :meth:`set_targets`, so its cost does not grow with the number of targets (100
    profiles have some 400); the watched directories are recomputed (a stat per
    target) only after events on directories, the only ones that can change them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[Path], None]) -> None:
        self._loop = loop
        self._on_change = on_change
        self._targets: frozenset[Path] = frozenset()
        self._names: frozenset[str] = frozenset()  # the targets, as strings
        self._above: frozenset[str] = frozenset()  # every ancestor of a target
        #: ``DIR/..data`` -> the targets in DIR (kubelet's atomic writer swaps it).
        self._data_links: dict[str, list[Path]] = {}
        self._dirs: dict[Path, object] = {}
        self._observer = Observer()
        self._observer.daemon = True
        self._handler = _Handler(self)
        self._started = False

    def set_targets(self, targets: Iterable[Path]) -> None:
        """Watch these files/directories (absolute paths). Safe to call repeatedly."""
        self._targets = frozenset(Path(os.path.abspath(t)) for t in targets)
        self._names = frozenset(str(t) for t in self._targets)
        self._above = frozenset(a for t in self._names for a in _ancestors(t))
        links: dict[str, list[Path]] = {}
        for t in sorted(self._targets):
            links.setdefault(os.path.join(t.parent, KUBELET_DATA), []).append(t)
        self._data_links = links
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

    def _post(self, paths: list[str], is_directory: bool) -> None:
        try:
            self._loop.call_soon_threadsafe(self._dispatch, paths, is_directory)
        except RuntimeError:
            pass  # loop closed during shutdown

    def _relevant(self, path: str) -> bool:
        names = self._names
        return path in names or path in self._above or any(a in names for a in _ancestors(path))

    def _dispatch(self, paths: list[str], is_directory: bool = False) -> None:
        rearm = False
        for p in paths:
            for target in self._data_links.get(p, ()):
                self._on_change(target)
            if self._relevant(p):
                self._on_change(Path(p))
                # Only a directory coming or going (or a target's ancestor, whatever
                # inotify called it) changes which directories must be watched.
                rearm = rearm or is_directory or p in self._above
        if not rearm:
            return
        added = self._rearm()
        # A file created right after its directory (`mkdir -p ~/.config/gcloud` then
        # the login writes the ADC file) lands before the new directory is watched:
        # report every target that now exists under a newly watched directory.
        for t in self._targets:
            if t.parent in added and t.exists():
                self._on_change(t)
