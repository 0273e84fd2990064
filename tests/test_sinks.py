"""Atomic file writes and the runtime-dir checks."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from tokend import paths, sinks
from tokend.errors import ConfigError, UnsafePathError
from tokend.sinks import FileSink, atomic_write, staged, sweep_temp_files
from tokend.token import Token


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_write_sets_mode_even_over_an_existing_looser_file(tmp_path: Path) -> None:
    target = tmp_path / "token"
    target.write_text("old")
    target.chmod(0o644)
    atomic_write(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    atomic_write(target, b"newer", 0o640)
    assert mode(target) == 0o640
    assert os.listdir(tmp_path) == ["token"]  # no temp file left behind


def test_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "token"
    link.symlink_to(victim)
    atomic_write(link, b"tok", 0o600)
    assert victim.read_text() == "precious"
    assert not link.is_symlink()
    assert link.read_bytes() == b"tok"


def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "token"
    atomic_write(target, b"old", 0o600)

    class Boom(Exception):
        pass

    def exploding(*_a: object) -> int:
        raise Boom

    # Injected at the OS boundary (as a full disk would fail), not in our code.
    monkeypatch.setattr(os, "write", exploding)
    with pytest.raises(Boom):
        atomic_write(target, b"new", 0o600)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["token"]


def test_staged_write_lands_only_when_published(tmp_path: Path) -> None:
    """The data is complete in a temp file before ``publish``; unpublished, it is
    deleted and the old file is untouched."""
    target = tmp_path / "token"
    atomic_write(target, b"old", 0o600)
    with staged(target, b"new", 0o600) as publish:
        (tmp,) = set(os.listdir(tmp_path)) - {"token"}
        assert (tmp_path / tmp).read_bytes() == b"new" and mode(tmp_path / tmp) == 0o600
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["token"]
    with staged(target, b"new", 0o600) as publish:
        publish()
        assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["token"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "token"
    a, b = b"a" * 50_000, b"b" * 70_000
    atomic_write(target, a)
    stop = threading.Event()
    bad: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if data not in (a, b):
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(300):
        atomic_write(target, a if i % 2 else b)
    stop.set()
    t.join()
    assert bad == []


def test_sweep_removes_only_our_temp_files(tmp_path: Path) -> None:
    (tmp_path / ".token.tokend-tmp-abcd").write_text("x")
    (tmp_path / "token").write_text("keep")
    (tmp_path / "notes.tmp").write_text("keep")
    assert sweep_temp_files(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["notes.tmp", "token"]


def test_file_sink_renders_its_format(tmp_path: Path) -> None:
    tok = Token.received("v", 3600, wall=1e9, steady=0.0)
    FileSink(tmp_path / "e", "env", 0o600, "https://x").write(tok, 0.0)
    assert (tmp_path / "e").read_text().startswith("OPENAI_API_KEY=v\nOPENAI_BASE_URL=https://x\n")
    assert FileSink(tmp_path / "e").remove()
    assert not FileSink(tmp_path / "e").remove()
    assert sinks.remove_file(tmp_path / "nothing") is False


# -- runtime dir --------------------------------------------------------------------------


def test_runtime_dir_created_0700_with_parents(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask must not matter
    try:
        d = tmp_path / "a" / "b" / "tokend"
        paths.ensure_private_dir(d)
    finally:
        os.umask(old)
    assert mode(d) == 0o700
    assert mode(d.parent) == 0o700
    paths.ensure_private_dir(d)  # idempotent


def test_open_runtime_dir_is_refused_with_the_fix(tmp_path: Path) -> None:
    d = tmp_path / "rt"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(UnsafePathError) as exc:
        paths.ensure_private_dir(d)
    assert str(exc.value) == f"{d}: mode 0755 lets others in; fix: chmod 700 {d}"


def test_runtime_dir_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    d = tmp_path / "rt"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        paths.ensure_private_dir(d)


def test_runtime_dir_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafePathError, match="symlink"):
        paths.ensure_private_dir(tmp_path / "link")


def test_sink_parent_must_not_be_world_writable(tmp_path: Path) -> None:
    open_dir = tmp_path / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(UnsafePathError, match=r"mode 0777 is group/world writable.*chmod go-w"):
        paths.check_sink_parent(open_dir / "token")
    open_dir.chmod(0o755)
    paths.check_sink_parent(open_dir / "token")


def test_socket_path_length_is_checked() -> None:
    paths.check_socket_path(Path("/tmp/x.sock"))
    with pytest.raises(ConfigError, match="over the AF_UNIX limit"):
        paths.check_socket_path(Path("/tmp/" + "x" * 120))
