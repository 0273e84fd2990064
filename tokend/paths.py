"""Secure creation and checking of the directories tokend writes into.

The runtime dir holds live tokens, so it is created with ``mkdir(mode=0o700)``: the
mode is part of the creating system call, so there is no moment at which the directory
exists with the umask's looser bits (a ``chmod`` afterwards would leave that window).
An existing directory is never "fixed" silently: if it is not ours or is open to others,
someone else may already hold a handle in it, so we refuse and say how to repair it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from tokend.errors import ConfigError, UnsafePathError

__all__ = [
    "MAX_FILE_SIZE",
    "SUN_PATH_MAX",
    "check_sink_parent",
    "check_socket_path",
    "ensure_private_dir",
    "read_regular",
]

#: sizeof(sockaddr_un.sun_path) minus the terminating NUL.
SUN_PATH_MAX = 103 if sys.platform == "darwin" else 107


#: Largest configuration, credentials or token file tokend reads: real ones are a few KiB.
MAX_FILE_SIZE = 1 << 20


def read_regular(path: str | os.PathLike[str], limit: int = MAX_FILE_SIZE) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, read without blocking.

    The path may come from another program (gcloud, an editor, a sync tool) or an
    attacker on the same uid: a FIFO there would block a plain ``open`` forever, and a
    symlink to ``/dev/zero`` would be read until memory runs out. So the file is opened
    ``O_NONBLOCK`` (a FIFO opens at once, and is then refused), checked with ``fstat``
    on the descriptor actually opened, and read up to one byte past ``limit``.

    Raises:
        OSError: cannot be opened, or (``strerror`` says which) is not a regular file or
            is larger than ``limit``. ``FileNotFoundError`` and ``PermissionError``
            stay what they are, so callers can give their own advice.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or directory)")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit // 1024} KiB")
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grew after the fstat
            raise OSError(errno.EFBIG, f"larger than {limit // 1024} KiB")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700, or check an existing one.

    Raises:
        UnsafePathError: it exists but is not a directory, is a symlink, is owned by
            another user, or has group/other permission bits. The message has the fix.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        missing: list[Path] = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass  # a concurrent creator: checked below like any existing dir
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"{path}: is a symlink; tokend needs a real directory there: rm {path}"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path}: exists and is not a directory; move it away")
    if st.st_uid != os.getuid():
        raise UnsafePathError(
            f"{path}: owned by uid {st.st_uid}, not by us (uid {os.getuid()}); "
            f"use a directory of your own (runtime_dir / TOKEND_RUNTIME_DIR)"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise UnsafePathError(f"{path}: mode {_mode(st)} lets others in; fix: chmod 700 {path}")


def check_sink_parent(path: Path) -> None:
    """An absolute sink path outside the runtime dir must sit in a directory that only
    its owner (us or root) can write to, or another user could swap files under us."""
    parent = path.parent
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise UnsafePathError(
            f"{parent}: does not exist; create it (mkdir -m 700 {parent})"
        ) from None
    if st.st_uid not in (os.getuid(), 0):
        raise UnsafePathError(
            f"{parent}: owned by uid {st.st_uid}; write sinks into your own directory"
        )
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise UnsafePathError(
            f"{parent}: mode {_mode(st)} is group/world writable, so others could replace "
            f"{path.name}; fix: chmod go-w {parent}, or use a path inside runtime_dir"
        )


def check_socket_path(path: Path) -> None:
    """AF_UNIX paths are limited to ~107 bytes; fail with the length instead of EINVAL."""
    n = len(os.fsencode(path))
    if n > SUN_PATH_MAX:
        raise ConfigError(
            f"socket.path: {path} is {n} bytes, over the AF_UNIX limit of {SUN_PATH_MAX}; "
            "use a shorter runtime_dir or socket.path"
        )
