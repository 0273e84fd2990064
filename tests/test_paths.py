"""The checked walk (tokend.paths.open_dir) and the writes that go through it, and the
one default runtime dir that daemon and clients share."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend import paths
from tokend.errors import UnsafePathError
from tokend.sinks import FileSink, staged, sweep_temp_files
from tokend.token import Token

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to chown to another uid")
OTHER = 65534  # nobody: an owner that is neither us nor root
OTHER_NAME = f"uid {OTHER} ({pwd.getpwuid(OTHER).pw_name})" if ROOT else ""


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def mkdir(p: Path, m: int) -> Path:
    p.mkdir()
    p.chmod(m)  # mkdir's mode passes through the umask; chmod says exactly m
    return p


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A private directory reached through safe ancestors (pytest's are 0700, ours)."""
    return tmp_path


def same_dir(fd: int, path: Path) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@pytest.fixture
def opened() -> Iterator[list[int]]:
    """Descriptors a test got from open_dir, closed at the end."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


# -- the walk's rules -----------------------------------------------------------------


def test_sticky_world_writable_ancestor_is_accepted(base: Path, opened: list[int]) -> None:
    """/tmp: anyone may create entries, nobody may rename ours."""
    shared = mkdir(base / "tmp", 0o1777)
    rt = mkdir(shared / "rt", 0o700)
    fd = paths.open_dir(rt, "private")
    opened.append(fd)
    assert same_dir(fd, rt)


def test_group_writable_ancestor_without_sticky_bit_is_refused(base: Path) -> None:
    loose = mkdir(base / "g", 0o775)
    rt = mkdir(loose / "rt", 0o700)
    with pytest.raises(UnsafePathError) as exc:
        paths.open_dir(rt, "private")
    assert str(exc.value) == (
        f"{loose}: mode 0775 is group/world writable without the sticky bit, so others "
        f"could swap {rt} for their own; fix: chmod go-w {loose}, or use a directory of "
        "your own (runtime_dir / TOKEND_RUNTIME_DIR)"
    )


@needs_root
def test_ancestor_owned_by_another_user_is_refused(base: Path) -> None:
    theirs = mkdir(base / "theirs", 0o755)
    rt = mkdir(theirs / "rt", 0o700)
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(UnsafePathError) as exc:
        paths.open_dir(rt, "private")
    assert str(exc.value) == (
        f"{theirs}: owned by {OTHER_NAME}, who could swap what is below it ({rt}); "
        "use a directory of your own (runtime_dir / TOKEND_RUNTIME_DIR)"
    )


@needs_root
def test_other_users_entry_in_a_sticky_directory_is_refused(base: Path) -> None:
    """/tmp/runtime-$UID made beforehand by someone else: named, with its owner."""
    shared = mkdir(base / "tmp", 0o1777)
    planted = mkdir(shared / "runtime-0", 0o777)
    os.chown(planted, OTHER, OTHER)
    with pytest.raises(UnsafePathError) as exc:
        paths.ensure_private_dir(planted / "tokend")
    assert str(exc.value) == (
        f"{planted}: owned by {OTHER_NAME}, not by us (uid 0), in the shared directory "
        f"{shared}; use a directory of your own (runtime_dir / TOKEND_RUNTIME_DIR)"
    )
    assert not (planted / "tokend").exists()


@pytest.mark.parametrize("target", ["relative", "absolute"])
def test_trusted_symlinked_ancestor_is_followed(base: Path, opened: list[int], target: str) -> None:
    """macOS /var -> private/var, a symlinked home: ours or root's link in a checked
    directory is followed, and the walk goes on checking where it leads."""
    real = mkdir(base / "private", 0o755)
    rt = mkdir(real / "rt", 0o700)
    (base / "var").symlink_to("private" if target == "relative" else real)
    fd = paths.open_dir(base / "var" / "rt", "private")
    opened.append(fd)
    assert same_dir(fd, rt)
    # A link to somewhere unsafe is followed into the refusal.
    loose = mkdir(base / "loose", 0o777)
    mkdir(loose / "rt", 0o700)
    (base / "bad").symlink_to(loose)
    with pytest.raises(UnsafePathError, match=f"^{loose}: mode 0777 is group/world writable"):
        paths.open_dir(base / "bad" / "rt", "private")


@needs_root
def test_symlink_owned_by_another_user_is_not_followed(base: Path) -> None:
    shared = mkdir(base / "tmp", 0o1777)
    mkdir(base / "real", 0o700)
    link = shared / "link"
    link.symlink_to(base)
    os.lchown(link, OTHER, OTHER)
    with pytest.raises(UnsafePathError) as exc:
        paths.open_dir(link / "real", "private")
    assert str(exc.value) == (
        f"{link}: a symlink owned by {OTHER_NAME}; tokend follows only links owned by you "
        "or root; use a directory of your own (runtime_dir / TOKEND_RUNTIME_DIR)"
    )


def test_symlinked_final_component_is_refused(base: Path, opened: list[int]) -> None:
    """The runtime dir itself must be a real directory; the directory of an absolute
    sink elsewhere may be a trusted link (/var/run -> /run)."""
    real = mkdir(base / "real", 0o700)
    (base / "link").symlink_to(real)
    with pytest.raises(UnsafePathError) as exc:
        paths.open_dir(base / "link", "private")
    assert str(exc.value) == (
        f"{base / 'link'}: is a symlink; tokend needs a real directory there: rm {base / 'link'}"
    )
    with pytest.raises(UnsafePathError, match="is a symlink"):
        paths.ensure_shared_dir(base / "link")
    fd = paths.open_dir(base / "link", "protected")
    opened.append(fd)
    assert same_dir(fd, real)


def test_symlink_loops_end(base: Path) -> None:
    (base / "a").symlink_to("b")
    (base / "b").symlink_to("a")
    with pytest.raises(UnsafePathError, match="more than 40 symlinks on the way"):
        paths.open_dir(base / "a" / "rt", "private")


def test_file_on_the_way_and_missing_directories(base: Path) -> None:
    (base / "f").write_text("x")
    with pytest.raises(UnsafePathError) as exc:
        paths.open_dir(base / "f" / "rt", "private")
    assert str(exc.value) == f"{base / 'f'}: exists and is not a directory; move it away"
    with pytest.raises(FileNotFoundError):
        paths.open_dir(base / "missing" / "rt", "private")
    with pytest.raises(UnsafePathError) as exc:
        paths.check_sink_parent(base / "missing" / "token")
    assert str(exc.value) == (
        f"{base / 'missing'}: does not exist; create it (mkdir -m 700 {base / 'missing'})"
    )


def test_dotdot_in_the_runtime_path_goes_up_from_where_the_walk_is(
    base: Path, opened: list[int]
) -> None:
    real = mkdir(base / "real", 0o755)
    rt = mkdir(base / "rt", 0o700)
    (base / "link").symlink_to(real)
    fd = paths.open_dir(f"{base}/real/../rt", "private")
    opened.append(fd)
    assert same_dir(fd, rt)


def test_protected_policy_is_the_sink_parent_rule(base: Path, opened: list[int]) -> None:
    """Ours or root's, writable by nobody else; others may read."""
    pub = mkdir(base / "pub", 0o755)
    opened.append(paths.open_dir(pub, "protected"))
    pub.chmod(0o775)
    with pytest.raises(UnsafePathError) as exc:
        paths.check_sink_parent(pub / "token")
    assert str(exc.value) == (
        f"{pub}: mode 0775 is group/world writable, so others could replace the files in "
        f"it; fix: chmod go-w {pub}, or write sinks into a directory of your own, or use a "
        "path inside runtime_dir"
    )


def test_a_sink_in_the_shared_tmp_never_advises_changing_tmp() -> None:
    """/tmp is sticky and world-writable by design: the fix is another directory, never
    chmod (even for root, who owns /tmp)."""
    with pytest.raises(UnsafePathError) as exc:
        paths.check_sink_parent(Path("/tmp/tok"))
    assert "chmod" not in str(exc.value)
    assert str(exc.value).endswith(
        "write sinks into a directory of your own, or use a path inside runtime_dir"
    )


def test_sink_one_level_deeper_under_a_world_writable_directory(base: Path) -> None:
    """/tmp/tkX/pub/sub/token with pub 0777 and not sticky: pub's users can swap sub."""
    pub = mkdir(base / "pub", 0o777)
    sub = mkdir(pub / "sub", 0o755)
    with pytest.raises(UnsafePathError) as exc:
        paths.check_sink_parent(sub / "token")
    assert str(exc.value).startswith(
        f"{pub}: mode 0777 is group/world writable without the sticky bit, so others could "
        f"swap {sub} for their own; fix: chmod go-w {pub}"
    )


# -- creating -----------------------------------------------------------------------------


def test_private_and_shared_dirs_are_created_at_their_mode(base: Path) -> None:
    old = os.umask(0o077)  # the daemon's umask: it must not eat the shared dir's x bits
    try:
        paths.ensure_private_dir(base / "a" / "rt")
        paths.ensure_shared_dir(base / "s" / "sock")
    finally:
        os.umask(old)
    assert mode(base / "a") == mode(base / "a" / "rt") == 0o700
    assert mode(base / "s") == mode(base / "s" / "sock") == 0o711
    paths.ensure_shared_dir(base / "s" / "sock")  # idempotent
    (base / "s" / "sock").chmod(0o755)  # readable by others is fine: nobody else writes
    paths.ensure_shared_dir(base / "s" / "sock")
    (base / "s" / "sock").chmod(0o773)
    with pytest.raises(UnsafePathError) as exc:
        paths.ensure_shared_dir(base / "s" / "sock")
    sock_dir = base / "s" / "sock"
    assert (
        str(exc.value)
        == f"{sock_dir}: mode 0773 lets others write in it; fix: chmod 711 {sock_dir}"
    )


def test_nothing_is_created_below_a_refused_ancestor(base: Path) -> None:
    loose = mkdir(base / "g", 0o777)
    with pytest.raises(UnsafePathError):
        paths.ensure_private_dir(loose / "a" / "rt")
    assert os.listdir(loose) == []


# -- writes through the checked descriptor --------------------------------------------


def tok() -> Token:
    return Token.received("ya29.v", 3600, wall=1e9, steady=0.0)


def test_write_is_refused_once_an_ancestor_is_loosened(base: Path) -> None:
    """Checked at every write, not only at start: the write raises (an OSError, which
    the refresher reports as a sink error and retries), nothing lands anywhere, and a
    refused directory holds nothing as far as ``exists`` says."""
    parent = mkdir(base / "p", 0o755)
    rt = mkdir(parent / "rt", 0o700)
    sink = FileSink(rt / "token")
    sink.write(tok(), 0.0)
    assert sink.exists() and (rt / "token").read_bytes() == b"ya29.v"
    parent.chmod(0o777)
    with pytest.raises(UnsafePathError) as exc:
        sink.write(tok(), 0.0)
    assert isinstance(exc.value, PermissionError) and exc.value.strerror == str(exc.value)
    assert not sink.exists()
    with pytest.raises(UnsafePathError):
        sink.remove()
    assert os.listdir(rt) == ["token"]


def test_swapped_directory_gets_nothing(base: Path) -> None:
    """The runtime dir is renamed away and a symlink to someone else's directory put
    in its place: a write staged before the swap lands in the directory that was checked
    (it moved), the next one is refused, and her directory stays empty."""
    rt = mkdir(base / "rt", 0o700)
    hers = mkdir(base / "hers", 0o777)
    sink = FileSink(rt / "token")
    with sink.stage(tok(), 0.0) as publish:
        os.rename(rt, base / "moved")
        (base / "rt").symlink_to(hers)
        publish()
    assert (base / "moved" / "token").read_bytes() == b"ya29.v"
    with pytest.raises(UnsafePathError, match="is a symlink"):
        sink.write(tok(), 0.0)
    assert not sink.exists()
    assert os.listdir(hers) == []


def test_absolute_sink_elsewhere_uses_the_protected_rule(base: Path) -> None:
    shared = mkdir(base / "srv", 0o755)
    sink = FileSink(shared / "token", private=False)
    sink.write(tok(), 0.0)
    assert sink.read() == b"ya29.v"
    assert FileSink(shared / "token").exists() is False  # 0755 is not private
    assert sink.remove() and not sink.remove()


def test_read_refuses_a_symlink_in_place_of_the_file(base: Path) -> None:
    rt = mkdir(base / "rt", 0o700)
    (base / "secret").write_text("not a token")
    (rt / "token.json").symlink_to(base / "secret")
    with pytest.raises(OSError):
        FileSink(rt / "token.json", "json").read()


def test_staged_and_sweep_go_through_the_descriptor(base: Path) -> None:
    rt = mkdir(base / "rt", 0o700)
    with staged(rt / "token", b"new", 0o600, private=True) as publish:
        (tmp,) = os.listdir(rt)
        assert ".tokend-tmp-" in tmp
        publish()
    (rt / ".token.tokend-tmp-dead").write_text("x")
    (rt / "keep").write_text("x")
    assert sweep_temp_files(rt, private=True) == 1
    assert sorted(os.listdir(rt)) == ["keep", "token"]
    assert sweep_temp_files(base / "missing") == 0
    loose = mkdir(base / "g", 0o777)
    (loose / ".token.tokend-tmp-x").write_text("x")
    with pytest.raises(UnsafePathError):
        sweep_temp_files(loose)
    assert os.listdir(loose) == [".token.tokend-tmp-x"]


# -- the default runtime dir, one answer for daemon and client ---------------------------

COMPARE = r"""
import json, sys, warnings
import platformdirs
from tokend import paths
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    theirs = [platformdirs.user_runtime_dir("tokend"), platformdirs.user_config_dir("tokend")]
ours = [str(paths.default_runtime_dir()), str(paths.default_config_path().parent)]
print(json.dumps({"theirs": theirs, "ours": ours, "light": "platformdirs" not in sys.modules}))
"""


def compare(env: dict[str, str]) -> dict[str, list[str]]:
    """Both answers from a fresh process (platformdirs and tempfile cache nothing yet)."""
    out = subprocess.run(
        [sys.executable, "-c", COMPARE],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(json.loads(out.stdout))


@pytest.mark.skipif(sys.platform == "darwin", reason="the Linux rules")
def test_default_runtime_dir_is_platformdirs_answer(short_tmp: Path) -> None:
    """The ordinary cases: XDG_RUNTIME_DIR set to a valid dir; unset, with
    /run/user/$UID absent (then $TMPDIR/runtime-$UID). Config dir likewise."""
    xdg = mkdir(short_tmp / "xdg", 0o700)
    home = mkdir(short_tmp / "home", 0o700)
    tmp = mkdir(short_tmp / "tmp", 0o1777)
    seen = compare({"XDG_RUNTIME_DIR": str(xdg), "HOME": str(home)})
    assert seen["ours"] == seen["theirs"] == [f"{xdg}/tokend", f"{home}/.config/tokend"]
    seen = compare({"XDG_CONFIG_HOME": str(xdg), "HOME": str(home)})
    assert seen["ours"][1] == seen["theirs"][1] == f"{xdg}/tokend"
    if os.path.isdir(f"/run/user/{os.geteuid()}"):
        pytest.skip("/run/user/$UID exists here; the fallback case cannot be seen")
    seen = compare({"TMPDIR": str(tmp), "HOME": str(home)})
    assert seen["ours"][0] == seen["theirs"][0] == f"{tmp}/runtime-{os.geteuid()}/tokend"
    seen = compare({"HOME": str(home)})
    assert seen["ours"][0] == seen["theirs"][0]


def test_default_runtime_dir_rules(short_tmp: Path) -> None:
    uid = os.geteuid()
    assert paths.default_runtime_dir({"XDG_RUNTIME_DIR": "/x/y"}) == Path("/x/y/tokend")
    fallback = paths.default_runtime_dir({"XDG_RUNTIME_DIR": "rel", "TMPDIR": str(short_tmp)})
    if not os.path.isdir(f"/run/user/{uid}"):
        assert fallback == short_tmp / f"runtime-{uid}" / "tokend"
        assert paths.default_runtime_dir({"TMPDIR": "rel"}) == Path(f"/tmp/runtime-{uid}/tokend")
    assert paths.default_config_path({"XDG_CONFIG_HOME": "/c"}) == Path("/c/tokend/config.toml")


def test_is_within_judges_names() -> None:
    assert paths.is_within("/a/b/c", "/a/b") and paths.is_within("/a/b", "/a/b/")
    assert paths.is_within("/a/b/./c/../d", "/a/b")
    assert not paths.is_within("/a/bc", "/a/b") and not paths.is_within("/a/../x", "/a")
