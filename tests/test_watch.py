"""tokend.watch: a real watchdog observer on a temporary tree, its reports on a real loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokend.watch import Watcher


class Seen:
    """A Watcher on its own loop (run in steps), and every path it reported."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.paths: list[Path] = []
        self.watcher = Watcher(self.loop, self.paths.append)

    def settle(self, until: Callable[[], bool] = lambda: False, timeout: float = 3.0) -> None:
        """Run the loop until ``until()`` holds, or for ``timeout`` seconds."""

        async def wait() -> None:
            deadline = self.loop.time() + timeout
            while not until() and self.loop.time() < deadline:
                await asyncio.sleep(0.02)

        self.loop.run_until_complete(wait())

    def take(self) -> set[Path]:
        got, self.paths[:] = set(self.paths), []
        return got


@pytest.fixture
def seen() -> Iterator[Seen]:
    s = Seen()
    s.watcher.start()
    yield s
    s.watcher.stop()
    s.loop.close()


def test_a_target_file_among_hundreds_is_reported_and_others_are_not(
    seen: Seen, tmp_path: Path
) -> None:
    """1. 400 file targets in one directory, as 100 profiles' sinks are.
    2. Writing one by rename (as the sinks do) reports it; a stray file in the same
       directory is not reported."""
    targets = [tmp_path / f"p{i}.token.json" for i in range(400)]
    seen.watcher.set_targets(targets)
    staged = tmp_path / ".p7.tmp"
    staged.write_text("x")
    os.replace(staged, targets[7])
    seen.settle(lambda: targets[7] in seen.paths)
    (tmp_path / "stray").write_text("x")
    seen.settle(timeout=0.5)
    got = seen.take()
    assert targets[7] in got
    assert got <= {targets[7], staged}, got  # the rename's source is in the same event
    assert tmp_path / "stray" not in got


def test_a_file_whose_directories_appear_later_is_reported(seen: Seen, tmp_path: Path) -> None:
    """``mkdir -p a/b`` then writing ``a/b/creds.json`` (gcloud's first login): the new
    directories are watched as they appear, and the file is reported."""
    target = tmp_path / "a" / "b" / "creds.json"
    seen.watcher.set_targets([target])
    (tmp_path / "a").mkdir()
    seen.settle(lambda: tmp_path / "a" in seen.paths)
    (tmp_path / "a" / "b").mkdir()
    seen.settle(lambda: tmp_path / "a" / "b" in seen.paths)
    target.write_text("{}")
    seen.settle(lambda: target in seen.paths)
    assert target in seen.take()


def test_below_a_target_directory_and_its_deletion(seen: Seen, tmp_path: Path) -> None:
    """A directory target (the runtime dir): a file below it is reported, and so is the
    directory's own deletion; recreated, it is watched again."""
    runtime = tmp_path / "rt"
    runtime.mkdir()
    seen.watcher.set_targets([runtime])
    (runtime / "token").write_text("x")
    seen.settle(lambda: runtime / "token" in seen.paths)
    (runtime / "token").unlink()
    runtime.rmdir()
    seen.settle(lambda: runtime in seen.paths)
    assert {runtime / "token", runtime} <= seen.take()
    runtime.mkdir()
    seen.settle(lambda: runtime in seen.paths)
    seen.take()
    (runtime / "again").write_text("x")
    seen.settle(lambda: runtime / "again" in seen.paths)
    assert runtime / "again" in seen.take()


def test_kubelets_data_swap_reports_every_target_behind_it(seen: Seen, tmp_path: Path) -> None:
    """A mounted Secret as kubelet writes it (``NAME -> ..data/NAME``, ``..data -> ..TS``):
    an update renames a new ``..data`` into place and the files' own paths never change.
    The swap reports each target in that directory, and nothing elsewhere."""
    secret, other = tmp_path / "secret", tmp_path / "other"
    secret.mkdir()
    other.mkdir()
    (secret / "..2026_1").mkdir()
    (secret / "..2026_1" / "credentials.json").write_text("{}")
    os.symlink("..2026_1", secret / "..data")
    for name in ("credentials.json", "config.toml"):
        os.symlink(f"..data/{name}", secret / name)
    targets = [secret / "credentials.json", secret / "config.toml", other / "token"]
    seen.watcher.set_targets(targets)
    (secret / "..2026_2").mkdir()
    (secret / "..2026_2" / "credentials.json").write_text('{"new": 1}')
    os.symlink("..2026_2", secret / "..data_tmp")
    os.rename(secret / "..data_tmp", secret / "..data")
    seen.settle(lambda: set(targets[:2]) <= set(seen.paths))
    assert seen.take() == set(targets[:2])
