"""Atomic, durable token files, written only into directories checked at that moment.

A reader (a shell doing ``$(cat token)``, a container with the directory mounted) must
see the old token or the new one, never a mix or an empty file, and a crash at any
point must leave one of those two on disk. Hence, for every write: a temp file in the
same directory (same filesystem, so ``rename`` is atomic), created ``O_EXCL|O_NOFOLLOW``
at the final mode, written, fsync-ed, renamed over the target, and the directory
fsync-ed so the rename itself survives a power loss.

Every one of those steps goes through a descriptor of the directory that
:func:`tokend.paths.open_dir` checked (ancestors included) for this very write, never
through the path: if another user swapped the directory or one of its ancestors since
start-up, the write is refused (:class:`~tokend.errors.UnsafePathError`, an
``OSError``) instead of landing in her directory. The walk costs a few system calls
per component, once per file per refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokend import clock
from tokend.paths import MAX_FILE_SIZE, RUNTIME_ELSEWHERE, SINK_ELSEWHERE, open_dir, read_regular
from tokend.threads import in_thread
from tokend.token import Token

__all__ = ["FileSink", "SinkSet", "atomic_write", "remove_file", "staged", "sweep_temp_files"]

log = logging.getLogger(__name__)

_TMP_MARK = ".tokend-tmp-"


def _open_parent(directory: Path, private: bool) -> int:
    """The checked descriptor of a sink's directory: ``private`` for the runtime dir and
    the directories inside it, ``protected`` (ours or root's, writable by nobody else)
    for the directory of an absolute sink elsewhere."""
    if private:
        return open_dir(directory, "private", elsewhere=RUNTIME_ELSEWHERE)
    return open_dir(directory, "protected", elsewhere=SINK_ELSEWHERE)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, private: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``."""
    with staged(path, data, mode, private=private) as publish:
        publish()


@contextlib.contextmanager
def staged(
    path: Path, data: bytes, mode: int = 0o600, *, private: bool = False
) -> Iterator[Callable[[], None]]:
    """Write ``data`` to a temp file beside ``path`` and fsync it (the slow part); yield
    ``publish``, which renames it over ``path`` (quick and atomic). A temp file left
    unpublished is deleted; after a publish the directory is fsync-ed.

    The split lets a caller publish under a lock that the slow part does not hold. The
    directory is checked once, at the start, and both parts use its descriptor: the
    rename lands in the directory that was checked, wherever its path points by then.

    Args:
        private: the directory must be private (the runtime dir); else it must be ours
            or root's and writable by nobody else.

    Raises:
        UnsafePathError: the directory, or the way to it, failed the checks.
        OSError: the write failed (full disk, read-only filesystem, ...).
    """
    dir_fd = _open_parent(path.parent, private)
    try:
        tmp = f".{path.name}{_TMP_MARK}{secrets.token_hex(4)}"
        published = False

        def publish() -> None:
            nonlocal published
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            published = True

        # O_EXCL: never reuse a file someone planted; O_NOFOLLOW: never write through a link.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
        try:
            try:
                os.fchmod(fd, mode)  # the umask may have narrowed it; a sink asks for exactly mode
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            yield publish
        finally:
            if not published:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
        if published:
            os.fsync(dir_fd)  # the rename itself must survive a power loss
    finally:
        os.close(dir_fd)


def remove_file(path: Path, *, private: bool = False) -> bool:
    """Remove ``path`` if present (durably). Returns whether something was removed.

    Raises:
        UnsafePathError: the directory, or the way to it, failed the checks.
    """
    try:
        dir_fd = _open_parent(path.parent, private)
    except FileNotFoundError:
        return False
    try:
        try:
            os.unlink(path.name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        os.fsync(dir_fd)
        return True
    finally:
        os.close(dir_fd)


def sweep_temp_files(directory: Path, *, private: bool = False) -> int:
    """Delete temp files a killed tokend left behind in ``directory``.

    Raises:
        UnsafePathError: the directory, or the way to it, failed the checks.
    """
    try:
        dir_fd = _open_parent(directory, private)
    except FileNotFoundError:
        return 0
    n = 0
    try:
        with os.scandir(dir_fd) as entries:
            names = [
                e.name for e in entries if _TMP_MARK in e.name and e.is_file(follow_symlinks=False)
            ]
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
                n += 1
    finally:
        os.close(dir_fd)
    return n


@dataclass(frozen=True, slots=True)
class FileSink:
    """One file that holds the current token in one format.

    Every operation checks the file's directory again (see the module docstring) and
    works through its descriptor.
    """

    path: Path
    format: str = "raw"
    mode: int = 0o600
    base_url: str = ""
    #: The directory is the runtime dir or one inside it, so it must be private (ours,
    #: no group/other bits). False for an absolute sink elsewhere: ours or root's, and
    #: writable by nobody else.
    private: bool = True

    def write(self, token: Token, now: float) -> None:
        with self.stage(token, now) as publish:
            publish()

    def stage(
        self, token: Token, now: float
    ) -> contextlib.AbstractContextManager[Callable[[], None]]:
        """:func:`staged` for this sink: ``with sink.stage(tok, now) as publish: ...``"""
        data = token.render(self.format, now, self.base_url)
        return staged(self.path, data, self.mode, private=self.private)

    def remove(self) -> bool:
        return remove_file(self.path, private=self.private)

    def exists(self) -> bool:
        """Whether the file is there. A directory that fails the checks counts as
        holding nothing: the next write then says why it is refused."""
        try:
            dir_fd = _open_parent(self.path.parent, self.private)
        except OSError:
            return False
        try:
            os.stat(self.path.name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        finally:
            os.close(dir_fd)
        return True

    def read(self, limit: int = MAX_FILE_SIZE) -> bytes:
        """The file's bytes, read through the checked directory: a regular file of at
        most ``limit`` bytes, not a symlink (see :func:`tokend.paths.read_regular`).

        Raises:
            OSError: missing, refused by the checks, or not such a file.
        """
        dir_fd = _open_parent(self.path.parent, self.private)
        try:
            return read_regular(self.path.name, limit, dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(dir_fd)


class SinkSet:
    """One profile's files: which token each holds, and writing, repairing and retiring
    them. The refresher decides which token the files should hold and when a token
    retires; this class keeps the files in step.

    What each file holds is tracked per file: after a failed write (disk full) a file
    still holds an older token than the refresher's, and must go when *that* token
    retires. Writes run in a thread, one at a time; their slow part (write, fsync)
    holds no lock, the rename does, and is skipped once the token has retired or the
    set is closed: so the loop can remove a retiring token's files on time while a write
    is stuck on a slow disk, and a profile being dropped gets no file back.

    Args:
        profile: the profile's name, for log lines.
        sinks: its files.
        retire_at: when a token stops being served (steady clock); its files must be
            gone by then.
    """

    def __init__(
        self, profile: str, sinks: Sequence[FileSink], retire_at: Callable[[Token], float]
    ) -> None:
        self.profile = profile
        self.sinks = tuple(sinks)
        self._retire_at = retire_at
        #: Why the last write failed, per file ("" when every file holds the token).
        self.error = ""
        self._on_disk: dict[Path, Token] = {}
        #: Held by whoever renames a file into place or removes one, and for _on_disk:
        #: the writing thread and the loop both do.
        self._lock = threading.Lock()
        self._closed = False
        self._writer: asyncio.Future[None] | None = None

    # -- what the refresher asks --------------------------------------------------------

    @property
    def writing(self) -> bool:
        """A write is in flight (its end wakes whoever awaits it)."""
        return self._writer is not None

    def deadlines(self) -> list[float]:
        """When the tokens the files hold retire: each file must be gone by then."""
        with self._lock:
            return [self._retire_at(tok) for tok in self._on_disk.values()]

    def incomplete(self) -> bool:
        """A file is missing or the last write failed: a repair is due."""
        return bool(self.error) or not all(s.exists() for s in self.sinks)

    def adopt(self, token: Token) -> None:
        """The files that exist hold ``token`` (left by an earlier run)."""
        with self._lock:
            self._on_disk = {s.path: token for s in self.sinks if s.exists()}

    def close(self) -> None:
        """Publish nothing from now on: the profile is going away (reload, shutdown),
        and whoever drops it may remove its files next."""
        with self._lock:
            self._closed = True

    def previous(self) -> list[tuple[FileSink, bytes]]:
        """The json files an earlier run left, read through their checked directories
        (missing and unreadable ones are skipped). Blocking: call in a thread."""
        found = []
        for sink in self.sinks:
            if sink.format != "json":
                continue
            with contextlib.suppress(OSError):
                found.append((sink, sink.read()))
        return found

    # -- writing --------------------------------------------------------------------------

    async def write(self, token: Token) -> None:
        """Write ``token`` to every file, in a thread, after any write in flight."""
        while self._writer is not None:
            with contextlib.suppress(Exception):  # that write's own caller sees its error
                await asyncio.shield(self._writer)
        await self._start(token, only_missing=False)

    def repair(self, token: Token, *, rewrite: bool = False) -> asyncio.Future[None] | None:
        """Start rewriting the missing or failed files (all of them with ``rewrite``)
        unless a write is in flight; returns the write, or None when nothing started."""
        if self._writer is not None or not (rewrite or self.incomplete()):
            return None
        fut = self._start(token, only_missing=not rewrite)
        fut.add_done_callback(_log_failure)
        return fut

    def _start(self, token: Token, *, only_missing: bool) -> asyncio.Future[None]:
        fut = in_thread(lambda: self._write(token, only_missing=only_missing))
        self._writer = fut

        def done(_: asyncio.Future[None]) -> None:
            if self._writer is fut:
                self._writer = None

        fut.add_done_callback(done)
        return fut

    def _write(self, token: Token, *, only_missing: bool) -> None:
        now = clock.steady()
        errors = []
        for sink in self.sinks:
            if only_missing and not self.error and sink.exists():
                continue
            try:
                with sink.stage(token, now) as publish, self._lock:
                    if not self._closed and clock.steady() < self._retire_at(token):
                        publish()
                        self._on_disk[sink.path] = token
            except OSError as err:
                errors.append(f"cannot write {sink.path}: {err.strerror or err}")
        error = "; ".join(errors)
        if error and error != self.error:
            log.error(
                "profile %s: %s (the previous file is left intact; retrying)", self.profile, error
            )
        elif self.error and not error:
            log.info("profile %s: sink files written again", self.profile)
        self.error = error

    # -- retiring -------------------------------------------------------------------------

    def remove_all(self) -> list[str]:
        """Remove every file (its token retired with no successor on disk); the paths
        removed. Removal works on a full disk; a failure is logged."""
        with self._lock:
            self._on_disk.clear()
            return [str(s.path) for s in self.sinks if self._remove(s)]

    def remove_stale(self, now: float) -> None:
        """Remove each file whose token has retired while a newer one could not be
        written to it (disk full, write stuck): no file may hold an expired token."""
        for sink in self.sinks:
            with self._lock:
                tok = self._on_disk.get(sink.path)
                if tok is None or now < self._retire_at(tok):
                    continue
                del self._on_disk[sink.path]
                removed = self._remove(sink)
            if removed:
                log.warning(
                    "profile %s: removed %s: the token it held (%s) expired and its "
                    "successor was not written in time (%s)",
                    self.profile,
                    sink.path,
                    tok.fingerprint,
                    self.error or "the write is still in progress",
                )

    def _remove(self, sink: FileSink) -> bool:
        try:
            return sink.remove()
        except OSError as err:
            log.error(
                "profile %s: cannot remove %s: %s", self.profile, sink.path, err.strerror or err
            )
            return False


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        log.error("writing token files failed", exc_info=exc)
