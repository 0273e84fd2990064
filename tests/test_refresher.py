"""The refresher's deadlines hold while the next token is slow to arrive or to land.

A real :class:`ProfileRefresher` with the real :class:`Source` against FakeGoogle and
real file sinks; the only fault is injected at the OS boundary (``os.fsync``)."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokend.config import ProfileConfig
from tokend.refresher import ProfileRefresher, retire_at
from tokend.sinks import FileSink
from tokend.source import Source
from tokend.testing import FakeGoogle

TOKEN_RE = re.compile(r"ya29\.fake-[A-Za-z0-9_-]{44}")


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def watch_files(paths: list[Path], fake: FakeGoogle) -> tuple[Callable[[], dict[str, Any]], Any]:
    """Poll ``paths`` every 5 ms in a thread; returns (stop-and-report, the thread)."""
    seen: dict[str, Any] = {"expired_reads": [], "missing_since": None, "reads": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for path in paths:
                try:
                    text = path.read_text()
                except FileNotFoundError:
                    if seen["missing_since"] is None:
                        seen["missing_since"] = time.time()
                    continue
                seen["reads"] += 1
                for tok in TOKEN_RE.findall(text):
                    if time.time() >= (fake.expires_at(tok) or 0.0):
                        seen["expired_reads"].append(path.name)
            done.wait(0.005)

    thread = threading.Thread(target=poll, name="file-poller")
    thread.start()

    def stop() -> dict[str, Any]:
        done.set()
        thread.join()
        return seen

    return stop, thread


@pytest.mark.timeout(60)
def test_old_files_retire_on_time_while_the_new_token_is_stuck_on_a_slow_disk(
    fake: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. 4-second tokens in two file sinks.
    2. When the refresh writes the second token, the first file's fsync takes 2.5 s
       (a slow disk), so the new token cannot land before the old one retires.
    3. The old token's files are removed at its retirement, before it expires; no read
       ever returns an expired token; the new token lands once the disk answers."""
    fake.lifetime = 4.0
    creds = fake.write_service_account(tmp_path / "sa.json")
    source = Source("p", ProfileConfig(credentials=str(creds)), timeout=2.0)
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    sinks = [FileSink(rt / "token", "raw"), FileSink(rt / "token.json", "json")]
    real_fsync = os.fsync
    slow = threading.Event()

    def fsync(fd: int) -> None:
        if slow.is_set() and not stat.S_ISDIR(os.fstat(fd).st_mode):
            slow.clear()  # the next file write stalls once
            time.sleep(2.5)
        real_fsync(fd)

    async def scenario() -> dict[str, Any]:
        r = ProfileRefresher("p", source, sinks)
        task = asyncio.create_task(r.run())
        while r.token is None or not all(s.exists() for s in sinks):
            await asyncio.sleep(0.01)
        first = r.token
        monkeypatch.setattr(os, "fsync", fsync)
        slow.set()
        stop, _ = watch_files([s.path for s in sinks], fake)

        def landed() -> bool:
            tok = r.token
            return tok not in (None, first) and all(tok.value in read(s.path) for s in sinks)

        try:
            while not landed():
                await asyncio.sleep(0.01)
                assert time.time() < first.expires_at + 10, "the second token never landed"
        finally:
            seen = stop()
            r.stop()
            await asyncio.wait_for(task, 5)
        seen.update(
            first_retire_at=retire_at(first),
            first_real_expiry=fake.expires_at(first.value),
            second=r.token,
        )
        return seen

    seen = asyncio.run(scenario())
    assert not slow.is_set(), "the slow fsync never happened"
    assert seen["expired_reads"] == [], seen
    missing = seen["missing_since"]
    assert missing is not None and missing < seen["first_real_expiry"], seen
    assert fake.is_valid(seen["second"].value)
    assert seen["reads"] > 100, seen


@pytest.mark.timeout(30)
def test_a_write_in_flight_when_the_profile_stops_publishes_nothing(
    fake: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A refresh's write is stuck in a slow fsync (1 s) when the profile is stopped
       and its files are removed (what the daemon does when a reload drops a profile).
    2. When the fsync returns, the write publishes nothing: no file comes back that no
       refresher would ever retire."""
    creds = fake.write_service_account(tmp_path / "sa.json")
    source = Source("p", ProfileConfig(credentials=str(creds)), timeout=2.0)
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    sink = FileSink(rt / "token", "raw")
    real_fsync = os.fsync
    stuck = threading.Event()

    def fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode) and not stuck.is_set():
            stuck.set()
            time.sleep(1.0)
        real_fsync(fd)

    async def scenario() -> None:
        r = ProfileRefresher("p", source, [sink])
        task = asyncio.create_task(r.run())
        while not sink.exists():
            await asyncio.sleep(0.01)
        monkeypatch.setattr(os, "fsync", fsync)
        r.refresh_soon()
        while not stuck.is_set():
            await asyncio.sleep(0.01)
        r.stop()
        sink.remove()
        await asyncio.wait_for(task, 5)
        while r.refreshing:  # the fetch task ends when the write thread returns
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert stuck.is_set()
    assert not sink.exists(), "a stopped profile's write brought its file back"
    assert [p.name for p in rt.iterdir()] == [], "temp file left behind"


@pytest.mark.timeout(30)
def test_credentials_changed_during_a_fetch_are_fetched_with_right_after_it(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """1. A fetch with the old service account hangs 1 s at the endpoint.
    2. Meanwhile the credentials file is replaced by another identity and the refresher
       told so (what the watcher does).
    3. The hanging fetch lands the old identity's token; the refresher fetches again at
       once, and the new identity's token replaces it (not ~45 min later, at the next
       scheduled refresh)."""
    creds = tmp_path / "sa.json"
    fake.write_service_account(creds, email="old@p.iam.gserviceaccount.com")
    source = Source("p", ProfileConfig(credentials=str(creds)), timeout=5.0)
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    sink = FileSink(rt / "token.json", "json")

    async def scenario() -> tuple[str, int]:
        r = ProfileRefresher("p", source, [sink])
        task = asyncio.create_task(r.run())
        while r.token is None:
            await asyncio.sleep(0.01)
        fake.hang(1.0, count=1)
        r.refresh_soon()
        while not r.refreshing or fake.calls["token"] < 2:
            await asyncio.sleep(0.01)
        fake.write_service_account(creds, email="new@p.iam.gserviceaccount.com")
        r.refresh_soon(reload_credentials=True)
        deadline = time.monotonic() + 10
        while (r.token is None or r.token.account != "new@p.iam.gserviceaccount.com") and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        account = r.token.account if r.token else ""
        r.stop()
        await asyncio.wait_for(task, 5)
        return account, fake.calls["token"]

    account, calls = asyncio.run(scenario())
    assert account == "new@p.iam.gserviceaccount.com", (account, calls)
    assert calls == 3, calls  # the first token, the hanging fetch, the one right after it
