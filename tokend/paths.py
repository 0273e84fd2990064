"""Where tokend keeps things, and the trust checks on every directory it writes into.

Defaults: :func:`default_runtime_dir` and :func:`default_config_path` (computed in
:mod:`tokend.places`, stdlib only), for the daemon and the client alike (the client
imports this module, so it stays light: no platformdirs, whose import alone costs a
client's whole start-up budget).

Trust: a directory is only as safe as its ancestors. If another user can rename an
ancestor (it is writable by others and not sticky, or simply theirs), she can swap what
lies below it, for example put a symlink to her own directory where the runtime dir was,
at any moment while tokend runs. So :func:`open_dir` walks from ``/`` one component at a
time, ``openat(parent, name, O_DIRECTORY|O_NOFOLLOW)`` and ``fstat`` on what was actually
opened (OpenSSH ``safe_path()``, systemd ``chase(CHASE_SAFE)``), and hands back a
descriptor of the checked directory. Writers use that descriptor (``dir_fd=``), never
the path again, and walk again at every write: a swap after start-up finds them refusing,
not writing into someone else's directory. Rules, for every ancestor:

- owned by root or by us;
- writable by group or others only with the sticky bit (``/tmp``), and then the next
  component must be ours or root's (a sticky dir stops others renaming *our* entries);
- a symlink is followed only if root or we own it (it sits in a directory that passed
  these checks), at most 40 of them: ``/var -> private/var`` on macOS, a symlinked home.

And for the directory itself, by :data:`DirPolicy`: ``private`` (the runtime dir and the
directories inside it: ours, no group/other bits, never a symlink), ``shared`` (a
socket's directory that allowed uids traverse: ours, writable by nobody else, never a
symlink), ``protected`` (the directory of an absolute sink elsewhere: ours or root's,
writable by nobody else).

Missing directories are created ``mkdir(name, mode, dir_fd=parent)`` during the same
walk: the mode is part of the creating system call, so there is no moment at which a
runtime dir exists with the umask's looser bits (a ``chmod`` afterwards would leave that
window). An existing directory is never "fixed" silently: if it is not ours or is open to
others, someone else may already hold a handle in it, so we refuse, in one line that
names the path and the fix; for a directory that is not the user's own the fix is to use
another location, never to change it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from tokend import places
from tokend.errors import ConfigError, UnsafePathError
from tokend.places import APP, MAX_FILE_SIZE, read_regular

# Kept off the client's import path (typing is imported by nothing else it loads).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Literal

    #: What the directory itself must be (the module docstring says each rule).
    DirPolicy = Literal["private", "shared", "protected"]

__all__ = [
    "MAX_FILE_SIZE",
    "RUNTIME_ELSEWHERE",
    "SINK_ELSEWHERE",
    "SOCKET_ELSEWHERE",
    "SUN_PATH_MAX",
    "check_sink_parent",
    "check_socket_dir",
    "check_socket_path",
    "default_config_path",
    "default_runtime_dir",
    "default_state_dir",
    "ensure_private_dir",
    "ensure_shared_dir",
    "is_within",
    "open_dir",
    "read_regular",
]

#: sizeof(sockaddr_un.sun_path) minus the terminating NUL.
SUN_PATH_MAX = 103 if sys.platform == "darwin" else 107

#: The fix when a location is not the user's to change, per kind of path.
RUNTIME_ELSEWHERE = "use a directory of your own (runtime_dir / TOKEND_RUNTIME_DIR)"
SINK_ELSEWHERE = "write sinks into a directory of your own, or use a path inside runtime_dir"
SOCKET_ELSEWHERE = "put socket.path in a directory of your own"

#: Symlinks followed in one walk before giving up (Linux's MAXSYMLINKS).
MAX_SYMLINKS = 40

# Ancestors need only be searched; O_PATH opens a directory we may not read (0711) and
# gives a descriptor good for *at() calls and fstat. Elsewhere O_RDONLY does the job.
_O_SEARCH = getattr(os, "O_PATH", os.O_RDONLY)
_O_DIR = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# -- defaults ---------------------------------------------------------------------------


def default_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """The runtime dir when none is configured (:func:`tokend.places.runtime_dir`)."""
    return Path(places.runtime_dir(env))


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config file when neither ``--config`` nor ``$TOKEND_CONFIG`` names one
    (:func:`tokend.places.config_path`)."""
    return Path(places.config_path(env))


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where what must outlive a reboot is kept (the proxy's local keys):
    ``$XDG_STATE_HOME`` (when absolute) else ``~/.local/state``, then ``tokend``:
    platformdirs' ``user_state_dir``. macOS: ``~/Library/Application Support/tokend/state``
    (platformdirs says ``…/tokend``, which is also the config dir, and that one need not
    be private)."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_STATE_HOME", "")
    if sys.platform == "darwin":
        return Path(os.path.expanduser("~/Library/Application Support"), APP, "state")
    base = xdg if xdg.startswith("/") else os.path.expanduser("~/.local/state")
    return Path(base, APP)


def is_within(path: str | os.PathLike[str], directory: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``directory`` or below it, judged on the names alone
    (absolute, ``.`` and ``..`` folded; symlinks are not looked at)."""
    p, d = os.path.abspath(path), os.path.abspath(directory)
    return p == d or p.startswith(d.rstrip("/") + "/")


# -- reading ----------------------------------------------------------------------------


# -- the checked walk -------------------------------------------------------------------


def _unsafe(message: str) -> UnsafePathError:
    err = UnsafePathError(message)
    # Callers that report an OSError by its ``strerror`` (sink writes) show the whole
    # reason. (No ``errno``: ``str()`` would grow an "[Errno 13]" prefix.)
    err.strerror = message
    return err


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _who(uid: int) -> str:
    import pwd  # only on the way to an error message

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


def _others_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


class _Walk:
    """One walk from ``/`` to ``path``; :meth:`run` returns the checked directory fd."""

    def __init__(
        self, path: str, policy: DirPolicy, create_mode: int | None, elsewhere: str
    ) -> None:
        self.path = path
        self.policy = policy
        self.create_mode = create_mode
        self.elsewhere = elsewhere
        self.uid = os.geteuid()
        self.trusted = {0, self.uid}
        #: (fd, path, stat) of the directories walked so far; ``..`` pops one.
        self.stack: list[tuple[int, str, os.stat_result]] = []
        self.links = 0

    def run(self) -> int:
        try:
            return self._walk()
        finally:
            for fd, _, _ in self.stack:
                os.close(fd)

    def _walk(self) -> int:
        fd = os.open("/", _O_SEARCH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self.stack.append((fd, "/", st))
        if st.st_uid not in self.trusted:
            raise _unsafe(f"/: owned by {_who(st.st_uid)}, not by root; {self.elsewhere}")
        pending = _split(self.path)
        races = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(self.stack) > 1:
                    os.close(self.stack.pop()[0])
                continue
            parent_fd, parent, parent_st = self.stack[-1]
            here = os.path.join(parent, name)
            last = not pending
            # Before anything is created or opened in it: could others swap ``here``?
            self._check_parent_mode(parent, parent_st, here)
            try:
                fd = os.open(name, _O_SEARCH | _O_DIR, dir_fd=parent_fd)
            except FileNotFoundError:
                if self.create_mode is None or races > 3:
                    raise FileNotFoundError(errno.ENOENT, "No such directory", here) from None
                fd = self._create(name, parent_fd, self.create_mode)
                if fd < 0:  # someone else created it first: check theirs like any other
                    races += 1
                    pending.insert(0, name)
                    continue
            except OSError as err:
                if err.errno not in (errno.ENOTDIR, errno.ELOOP, errno.EACCES):
                    raise
                try:
                    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                except PermissionError:  # we may not search the parent itself
                    raise self._cannot_enter(parent, parent_st) from None
                if err.errno == errno.EACCES:
                    self._check_step(parent, parent_st, here, st, last=True)
                    raise self._cannot_enter(here, st) from None
                if not stat.S_ISLNK(st.st_mode):
                    fix = "move it away" if st.st_uid == self.uid else self.elsewhere
                    raise _unsafe(f"{here}: exists and is not a directory; {fix}") from None
                pending[:0] = self._follow(name, here, last, st)
                continue
            st = os.fstat(fd)
            self.stack.append((fd, here, st))
            self._check_step(parent, parent_st, here, st, last)
        return self._finish()

    def _create(self, name: str, parent_fd: int, mode: int) -> int:
        """mkdir ``name`` at ``mode``; its fd, or -1 if it appeared meanwhile."""
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
        except FileExistsError:
            return -1
        fd = os.open(name, os.O_RDONLY | _O_DIR, dir_fd=parent_fd)
        # The umask may have taken bits the mode asks for (0711 under umask 077): give
        # them back. It only ever narrowed the mode, so nothing was open meanwhile.
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
        return fd

    def _cannot_enter(self, where: str, st: os.stat_result) -> UnsafePathError:
        owner = "" if st.st_uid == self.uid else f", owned by {_who(st.st_uid)}"
        fix = f"fix: chmod u+rwx {where}" if st.st_uid == self.uid else self.elsewhere
        return _unsafe(f"{where}: cannot enter it (mode {_mode(st)}{owner}); {fix}")

    def _follow(self, name: str, here: str, last: bool, st: os.stat_result) -> list[str]:
        """The components symlink ``here`` stands for, once it is safe to follow: it
        sits in the directory on top of the stack, checked already."""
        parent_fd = self.stack[-1][0]
        if last and self.policy != "protected":
            fix = f"rm {here}" if st.st_uid == self.uid else self.elsewhere
            raise _unsafe(f"{here}: is a symlink; tokend needs a real directory there: {fix}")
        if st.st_uid not in self.trusted:
            raise _unsafe(
                f"{here}: a symlink owned by {_who(st.st_uid)}; tokend follows only "
                f"links owned by you or root; {self.elsewhere}"
            )
        self.links += 1
        if self.links > MAX_SYMLINKS:
            raise _unsafe(f"{self.path}: more than {MAX_SYMLINKS} symlinks on the way")
        target = os.readlink(name, dir_fd=parent_fd)
        if target.startswith("/"):
            while len(self.stack) > 1:
                os.close(self.stack.pop()[0])
        return _split(target)

    def _check_parent_mode(self, parent: str, parent_st: os.stat_result, here: str) -> None:
        if _others_write(parent_st) and not parent_st.st_mode & stat.S_ISVTX:
            fix = f"fix: chmod go-w {parent}, or {self.elsewhere}"
            if parent_st.st_uid != self.uid:
                fix = self.elsewhere
            raise _unsafe(
                f"{parent}: mode {_mode(parent_st)} is group/world writable without the "
                f"sticky bit, so others could swap {here} for their own; {fix}"
            )

    def _check_step(
        self, parent: str, parent_st: os.stat_result, here: str, st: os.stat_result, last: bool
    ) -> None:
        """The move from ``parent`` into ``here``: safe if nobody else could have put
        ``here`` there or swap it later (the parent's mode is checked already)."""
        if st.st_uid in self.trusted:
            return
        if _others_write(parent_st):
            raise _unsafe(
                f"{here}: owned by {_who(st.st_uid)}, not by us (uid {self.uid}), in the "
                f"shared directory {parent}; {self.elsewhere}"
            )
        if not last:
            raise _unsafe(
                f"{here}: owned by {_who(st.st_uid)}, who could swap what is below it "
                f"({self.path}); {self.elsewhere}"
            )

    def _finish(self) -> int:
        fd, where, st = self.stack[-1]
        mine = st.st_uid == self.uid
        if self.policy == "protected":
            if st.st_uid not in self.trusted:
                raise _unsafe(f"{where}: owned by {_who(st.st_uid)}; {self.elsewhere}")
            if _others_write(st):
                # A sticky shared directory (/tmp) is open by design: never advise
                # changing it, whoever owns it.
                ours = mine and not st.st_mode & stat.S_ISVTX
                fix = f"fix: chmod go-w {where}, or {self.elsewhere}" if ours else self.elsewhere
                raise _unsafe(
                    f"{where}: mode {_mode(st)} is group/world writable, so others could "
                    f"replace the files in it; {fix}"
                )
        else:
            if not mine:
                raise _unsafe(
                    f"{where}: owned by {_who(st.st_uid)}, not by us (uid {self.uid}); "
                    f"{self.elsewhere}"
                )
            if self.policy == "private" and stat.S_IMODE(st.st_mode) & 0o077:
                raise _unsafe(f"{where}: mode {_mode(st)} lets others in; fix: chmod 700 {where}")
            if self.policy == "shared" and _others_write(st):
                raise _unsafe(
                    f"{where}: mode {_mode(st)} lets others write in it; fix: chmod 711 {where}"
                )
        if _O_SEARCH == os.O_RDONLY:
            self.stack.pop()
            return fd
        # An O_PATH descriptor cannot be fsync-ed; the same directory, opened for reading.
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)


def open_dir(
    path: str | os.PathLike[str],
    policy: DirPolicy = "private",
    *,
    create_mode: int | None = None,
    elsewhere: str = RUNTIME_ELSEWHERE,
) -> int:
    """Walk to directory ``path`` checking every step (see the module docstring) and
    return a descriptor of it (``O_RDONLY``, close-on-exec; the caller closes it).

    Args:
        path: the directory; a relative one is taken from the working directory.
        policy: what the directory itself must be: ``private``, ``shared``, ``protected``.
        create_mode: create missing components with this mode (``None``: do not).
        elsewhere: the fix to give when a location is not the user's to change.

    Raises:
        UnsafePathError: a step or the directory fails a check; one line with the fix.
        FileNotFoundError: a component is missing (and ``create_mode`` is None).
        OSError: anything else the system says.
    """
    return _Walk(os.path.abspath(path), policy, create_mode, elsewhere).run()


def ensure_private_dir(path: Path, *, elsewhere: str = RUNTIME_ELSEWHERE) -> None:
    """Create ``path`` (and missing parents) with mode 0700, or check an existing one,
    ancestors included.

    Raises:
        UnsafePathError: it, or the way to it, is not safe (see the module docstring):
            it is a symlink or not a directory, is not ours, has group/other bits, or an
            ancestor could be swapped by another user. The message has the fix.
    """
    os.close(open_dir(path, "private", create_mode=0o700, elsewhere=elsewhere))


def ensure_shared_dir(path: Path, *, elsewhere: str = SOCKET_ELSEWHERE) -> None:
    """Create ``path`` (and missing parents) with mode 0711, or check an existing one:
    ours, not a symlink, writable by nobody else; others may traverse it (the directory
    of a socket that ``socket.allow_uids`` may use). Ancestors are checked as for
    :func:`ensure_private_dir`.

    Raises:
        UnsafePathError: as :func:`ensure_private_dir`, with ``chmod 711`` as the fix.
    """
    os.close(open_dir(path, "shared", create_mode=0o711, elsewhere=elsewhere))


def check_sink_parent(path: Path) -> None:
    """An absolute sink path outside the runtime dir must sit in a directory that only
    its owner (us or root) can write to, reached through ancestors nobody else can swap,
    or another user could replace files under us. Nothing is created.

    Raises:
        UnsafePathError: it is missing or not safe; the message has the fix.
    """
    parent = path.parent
    try:
        fd = open_dir(parent, "protected", elsewhere=SINK_ELSEWHERE)
    except FileNotFoundError:
        raise _unsafe(f"{parent}: does not exist; create it (mkdir -m 700 {parent})") from None
    os.close(fd)


def check_socket_dir(directory: Path) -> None:
    """The directory of a socket outside the runtime dir (without ``allow_uids``): it
    must exist and be ours or root's, writable by nobody else, reached through
    ancestors nobody else can swap. Nothing is created.

    Raises:
        UnsafePathError: it is missing or not safe; the message has the fix.
    """
    try:
        fd = open_dir(directory, "protected", elsewhere=SOCKET_ELSEWHERE)
    except FileNotFoundError:
        raise _unsafe(
            f"socket.path: {directory} does not exist; create it (mkdir -m 700 {directory})"
        ) from None
    os.close(fd)


def check_socket_path(path: Path) -> None:
    """AF_UNIX paths are limited to ~107 bytes; fail with the length instead of EINVAL."""
    n = len(os.fsencode(path))
    if n > SUN_PATH_MAX:
        raise ConfigError(
            f"socket.path: {path} is {n} bytes, over the AF_UNIX limit of {SUN_PATH_MAX}; "
            "use a shorter runtime_dir or socket.path"
        )
