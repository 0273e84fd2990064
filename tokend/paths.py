"""Where tokend keeps things, and secure creation and checking of those directories.

Defaults: :func:`default_runtime_dir` and :func:`default_config_path` are computed here,
stdlib only, for the daemon and the client alike (the client imports this module, so it
stays light: no platformdirs, whose import alone costs a client's whole start-up budget).

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

# Kept off the client's import path (typing is imported by nothing else it loads).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MAX_FILE_SIZE",
    "SUN_PATH_MAX",
    "check_sink_parent",
    "check_socket_path",
    "default_config_path",
    "default_runtime_dir",
    "ensure_private_dir",
    "read_regular",
]

APP = "tokend"

#: sizeof(sockaddr_un.sun_path) minus the terminating NUL.
SUN_PATH_MAX = 103 if sys.platform == "darwin" else 107


#: Largest configuration, credentials or token file tokend reads: real ones are a few KiB.
MAX_FILE_SIZE = 1 << 20


# -- defaults ---------------------------------------------------------------------------


def default_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """The runtime dir when none is configured: the one answer daemon and clients share.

    Linux: ``$XDG_RUNTIME_DIR`` when it is an absolute path; else ``/run/user/$UID``
    when that is an existing directory of ours; else ``$TMPDIR`` (or ``/tmp``)
    ``/runtime-$UID``. macOS: ``~/Library/Caches/TemporaryItems``. Then ``tokend``.
    That is platformdirs' ``user_runtime_dir`` for every ordinary setup (a test pins
    it) without importing it; where platformdirs would silently move elsewhere (an
    ``XDG_RUNTIME_DIR`` it dislikes, a fallback someone else created) the daemon's
    checks refuse with the reason instead. Nothing is created here.
    """
    env = os.environ if env is None else env
    if sys.platform == "darwin":
        return Path(os.path.expanduser("~/Library/Caches/TemporaryItems"), APP)
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/"):
        return Path(xdg, APP)
    uid = os.geteuid()
    run_user = f"/run/user/{uid}"
    try:
        st = os.stat(run_user)
    except OSError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            return Path(run_user, APP)
    tmp = env.get("TMPDIR", "")
    # A predictable name in a shared /tmp: the daemon checks it before any use.
    base = tmp if tmp.startswith("/") else "/tmp"  # noqa: S108
    return Path(base, f"runtime-{uid}", APP)


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME`` (when absolute) else ``~/.config`` (macOS ``~/Library/
    Application Support``), then ``tokend/config.toml``. ``$TOKEND_CONFIG`` and
    ``--config`` come first; their callers handle them."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg.startswith("/"):
        base = xdg
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        base = os.path.expanduser("~/.config")
    return Path(base, APP, "config.toml")


# -- reading and checking ---------------------------------------------------------------


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
