"""Atomic, durable token files.

A reader (a shell doing ``$(cat token)``, a container with the directory mounted) must
see the old token or the new one, never a mix or an empty file, and a crash at any
point must leave one of those two on disk. Hence, for every write: a temp file in the
same directory (same filesystem, so ``rename`` is atomic), created ``O_EXCL|O_NOFOLLOW``
at the final mode, written, fsync-ed, renamed over the target, and the directory
fsync-ed so the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokend.token import Token

__all__ = ["FileSink", "atomic_write", "remove_file", "staged", "sweep_temp_files"]

log = logging.getLogger(__name__)

_TMP_MARK = ".tokend-tmp-"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``."""
    with staged(path, data, mode) as publish:
        publish()


@contextlib.contextmanager
def staged(path: Path, data: bytes, mode: int = 0o600) -> Iterator[Callable[[], None]]:
    """Write ``data`` to a temp file beside ``path`` and fsync it (the slow part); yield
    ``publish``, which renames it over ``path`` (quick and atomic). A temp file left
    unpublished is deleted; after a publish the directory is fsync-ed.

    The split lets a caller publish under a lock that the slow part does not hold."""
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{secrets.token_hex(4)}")
    published = False

    def publish() -> None:
        nonlocal published
        os.replace(tmp, path)
        published = True

    # O_EXCL: never reuse a file someone planted; O_NOFOLLOW: never write through a link.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
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
                os.unlink(tmp)
    if published:
        _fsync_dir(path.parent)


def remove_file(path: Path) -> bool:
    """Remove ``path`` if present (durably). Returns whether something was removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    _fsync_dir(path.parent)
    return True


def sweep_temp_files(directory: Path) -> int:
    """Delete temp files a killed tokend left behind in ``directory``."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if _TMP_MARK in entry.name and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    n += 1
    return n


@dataclass(frozen=True, slots=True)
class FileSink:
    """One file that holds the current token in one format."""

    path: Path
    format: str = "raw"
    mode: int = 0o600
    base_url: str = ""

    def write(self, token: Token, now: float) -> None:
        with self.stage(token, now) as publish:
            publish()

    def stage(
        self, token: Token, now: float
    ) -> contextlib.AbstractContextManager[Callable[[], None]]:
        """:func:`staged` for this sink: ``with sink.stage(tok, now) as publish: ...``"""
        return staged(self.path, token.render(self.format, now, self.base_url), self.mode)

    def remove(self) -> bool:
        return remove_file(self.path)

    def exists(self) -> bool:
        return self.path.exists()
