"""The real OpenAI SDK, built once, keeps working across token rotations.

FakeOpenAI accepts only tokens FakeGoogle considers valid right now, so a client that
froze its key would start failing within one (3-second) lifetime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import tokend.client
from tokend.testing import FakeGoogle, FakeOpenAI

LIFETIME = 2
#: Keep calling until the client has used this many different tokens (3 rotations) and
#: at least one token expired while it was in use; give up after CAP seconds.
TOKENS = 4
CAP = 20.0


@pytest.fixture
def fake_openai(fake: FakeGoogle) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(fake).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def daemon(
    daemon_factory: Callable[..., Any],
    fake: FakeGoogle,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """A daemon with 3-second tokens, and this process's tokend.client pointed at it."""
    fake.lifetime = LIFETIME
    sa = fake.write_service_account(short_tmp / "sa.json")
    with daemon_factory(f'[profiles.default]\ncredentials = "{sa}"\n') as d:
        monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(d.runtime_dir))
        monkeypatch.setenv("TOKEND_CONFIG", str(short_tmp / "no-such-config.toml"))
        monkeypatch.delenv("TOKEND_SOCKET", raising=False)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        yield d


def more(fake_openai: FakeOpenAI, started: float) -> bool:
    """Whether to keep calling."""
    elapsed = time.monotonic() - started
    if elapsed > CAP:
        return False
    return len(set(fake_openai.seen_tokens)) < TOKENS or elapsed < 1.5 * LIFETIME


def check(fake_openai: FakeOpenAI, fake: FakeGoogle, calls: int) -> None:
    seen = set(fake_openai.seen_tokens)
    assert fake_openai.rejected == 0
    assert len(fake_openai.seen_tokens) == calls
    assert len(seen) >= TOKENS, f"only {len(seen)} distinct tokens across {calls} calls"
    assert seen <= set(fake.issued)


def test_openai_client_with_callable_key(
    daemon: Any, fake: FakeGoogle, fake_openai: FakeOpenAI
) -> None:
    """1. OpenAI(api_key=tokend.client.token) is built once.
    2. It calls chat.completions every 0.2 s across three rotations (2-second tokens).
    3. Every call succeeds; FakeOpenAI saw each new token."""
    calls = 0
    with openai.OpenAI(api_key=tokend.client.token, base_url=fake_openai.url, max_retries=0) as c:
        started = time.monotonic()
        while more(fake_openai, started):
            reply = c.chat.completions.create(
                model="google/gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices
            calls += 1
            time.sleep(0.2)
    check(fake_openai, fake, calls)


def test_async_openai_client_with_async_key(
    daemon: Any, fake: FakeGoogle, fake_openai: FakeOpenAI
) -> None:
    """The same with AsyncOpenAI(api_key=tokend.client.token_async)."""

    async def main() -> int:
        calls = 0
        async with openai.AsyncOpenAI(
            api_key=tokend.client.token_async, base_url=fake_openai.url, max_retries=0
        ) as c:
            started = time.monotonic()
            while more(fake_openai, started):
                reply = await c.chat.completions.create(
                    model="google/gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
                )
                assert reply.choices
                calls += 1
                await asyncio.sleep(0.2)
        return calls

    check(fake_openai, fake, asyncio.run(main()))


def test_vertex_provider_with_token_provider(
    daemon: Any, fake: FakeGoogle, fake_openai: FakeOpenAI
) -> None:
    """The same with OpenAI(provider=openai.providers.vertex(token_provider=...)). The
    provider accepts a plain-http base_url for hosts outside googleapis.com, which is
    how it is pointed at the stand-in."""
    provider = openai.providers.vertex(token_provider=tokend.client.token, base_url=fake_openai.url)
    calls = 0
    with openai.OpenAI(provider=provider, max_retries=0) as c:
        started = time.monotonic()
        while more(fake_openai, started):
            reply = c.responses.create(model="google/gemini-2.5-flash", input="hi")
            assert reply.id
            calls += 1
            time.sleep(0.2)
    check(fake_openai, fake, calls)
