"""Where tokend's files are by default, and how an untrusted file is read: the part of
:mod:`tokend.paths` that needs nothing but :mod:`os`, so that ``tokend token`` and
``tokend env`` can find and read the token on their quick path without importing
:mod:`pathlib` (which brings :mod:`re` and :mod:`urllib`: more than the rest of the
command costs). :mod:`tokend.paths` builds its :class:`~pathlib.Path` answers on these.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["APP", "MAX_FILE_SIZE", "config_path", "read_regular", "runtime_dir"]

APP = "tokend"

#: Largest configuration, credentials or token file tokend reads: real ones are a few KiB.
MAX_FILE_SIZE = 1 << 20


def runtime_dir(env: Mapping[str, str] | None = None) -> str:
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
        return os.path.join(os.path.expanduser("~/Library/Caches/TemporaryItems"), APP)
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/"):
        return os.path.join(xdg, APP)
    uid = os.geteuid()
    run_user = f"/run/user/{uid}"
    try:
        st = os.stat(run_user)
    except OSError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            return os.path.join(run_user, APP)
    tmp = env.get("TMPDIR", "")
    # The predictable name in a shared /tmp is safe because the walk checks it: a
    # runtime-$UID someone else made there is refused with its owner's name.
    base = tmp if tmp.startswith("/") else "/tmp"  # noqa: S108
    return os.path.join(base, f"runtime-{uid}", APP)


def config_path(env: Mapping[str, str] | None = None) -> str:
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
    return os.path.join(base, APP, "config.toml")


def read_regular(
    path: str | os.PathLike[str],
    limit: int = MAX_FILE_SIZE,
    *,
    dir_fd: int | None = None,
    follow_symlinks: bool = True,
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, read without blocking.

    The path may come from another program (gcloud, an editor, a sync tool) or an
    attacker on the same uid: a FIFO there would block a plain ``open`` forever, and a
    symlink to ``/dev/zero`` would be read until memory runs out. So the file is opened
    ``O_NONBLOCK`` (a FIFO opens at once, and is then refused), checked with ``fstat``
    on the descriptor actually opened, and read up to one byte past ``limit``.

    Args:
        dir_fd: open ``path`` relative to this directory descriptor (see :func:`open_dir`).
        follow_symlinks: False opens with ``O_NOFOLLOW``: a symlink is an error (ELOOP).

    Raises:
        OSError: cannot be opened, or (``strerror`` says which) is not a regular file or
            is larger than ``limit``. ``FileNotFoundError`` and ``PermissionError``
            stay what they are, so callers can give their own advice.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags, dir_fd=dir_fd)
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
