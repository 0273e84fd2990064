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

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokend.paths import MAX_FILE_SIZE, RUNTIME_ELSEWHERE, SINK_ELSEWHERE, open_dir, read_regular
from tokend.token import Token

__all__ = ["FileSink", "atomic_write", "remove_file", "staged", "sweep_temp_files"]

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
