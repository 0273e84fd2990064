"""ID tokens: FakeGoogle's RS256 tokens, minting them through each kind of credentials
(real google-auth against FakeGoogle), the audience rules, the per-audience cache in the
daemon, and every front end (socket, CLI, client).

Tokens are verified as a service would verify them: ``google.oauth2.id_token.verify_token``
checks the signature against the certificates FakeGoogle serves, ``aud`` and ``exp``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import google.auth.transport.requests
import pytest
import requests
from google.oauth2 import id_token as google_id_token
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import run_daemon, sa_config, wait_for
from tests.reliability_util import get_json
from tokend import idtokens, wire
from tokend.config import ProfileConfig
from tokend.endpoints import Answer, Endpoints, IdTokenQuery, Served
from tokend.errors import CredentialsError, RefreshError
from tokend.idtokens import IdTokens
from tokend.metrics import Metrics
from tokend.refresher import ProfileRefresher
from tokend.source import Source, read_jwt_claims
from tokend.testing import FakeGoogle
from tokend.token import Token

SA = "sa@fake-project.iam.gserviceaccount.com"
TARGET = "target@fake-project.iam.gserviceaccount.com"
RUN = "https://hello-abc123-uc.a.run.app"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient ADC or metadata settings leak in (or out)."""
    for var in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GCE_METADATA_HOST",
        "GCE_METADATA_ROOT",
        "GCE_METADATA_IP",
        "GOOGLE_CLOUD_QUOTA_PROJECT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))


def source(credentials: str | Path, **profile: Any) -> Source:
    return Source("p", ProfileConfig(credentials=str(credentials), **profile), timeout=2.0)


def verify(fake: FakeGoogle, token: str, audience: str) -> dict[str, Any]:
    """What a service behind Cloud Run or IAP checks: signature, ``aud``, ``exp``."""
    with requests.Session() as session:
        request = google.auth.transport.requests.Request(session)
        claims = google_id_token.verify_token(
            token, request, audience=audience, certs_url=fake.certs_url
        )
    assert isinstance(claims, dict)
    return claims


def assert_no_secrets(fake: FakeGoogle, *texts: str) -> None:
    blob = "\n".join(texts)
    for secret in fake.secrets():
        assert secret not in blob


# -- FakeGoogle ----------------------------------------------------------------------------


def test_fake_google_signs_id_tokens_that_verify_token_accepts(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """1. An ID token minted through the service-account key verifies against the
    fake's certificates for its audience, with exp = iat + lifetime.
    2. The same token is refused for another audience, and once tampered with.
    3. It is among the fake's secrets (the log scans look for it).
    4. An expired one (minted so) is refused for its exp."""
    fake.lifetime = 600
    tok = source(fake.write_service_account(tmp_path / "sa.json")).fetch_id_token(RUN)
    claims = verify(fake, tok.value, RUN)
    assert claims["aud"] == RUN and claims["email"] == SA
    assert claims["exp"] - claims["iat"] == 600
    assert fake.id_token_of(tok.value) == (SA, RUN)
    with pytest.raises(ValueError, match="audience"):
        verify(fake, tok.value, "https://other.example.com")
    head, body, sig = tok.value.split(".")
    forged = f"{head}.{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{sig}"
    with pytest.raises(ValueError):
        verify(fake, forged, RUN)
    assert tok.value in fake.secrets()
    expired = fake.mint_id_token(RUN, lifetime=-60)
    with pytest.raises(ValueError, match="expired"):
        verify(fake, expired, RUN)


# -- minting, per kind of credentials ----------------------------------------------------


def test_service_account_key_mints_through_the_token_endpoint(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """The JWT-bearer grant with target_audience, one request, no access token asked."""
    src = source(fake.write_service_account(tmp_path / "sa.json"))
    tok = src.fetch_id_token(RUN)
    assert fake.calls == {"id_token": 1}
    assert tok.audience == RUN and tok.account == SA and tok.profile == "p"
    assert tok.scopes == () and 3590 < tok.expires_in(tok.issued) <= 3600
    assert tok.as_dict(tok.issued)["id_token"] == tok.value
    assert tok.as_dict(tok.issued)["audience"] == RUN
    assert tok.value not in repr(tok)
    verify(fake, tok.value, RUN)


def test_service_account_key_with_token_uri_override(fake: FakeGoogle, tmp_path: Path) -> None:
    key = fake.write_service_account(tmp_path / "sa.json")
    text = key.read_text().replace(fake.token_uri, "https://oauth2.invalid/token")
    key.write_text(text)
    tok = source(key, token_uri=fake.token_uri).fetch_id_token(RUN)
    verify(fake, tok.value, RUN)


def test_impersonation_mints_through_generate_id_token_at_iam_endpoint(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """impersonate + iam_endpoint: the source key's access token, then
    generateIdToken for the target at the configured IAM endpoint."""
    sa = fake.write_service_account(tmp_path / "sa.json")
    src = source(sa, impersonate=TARGET, iam_endpoint=fake.iam_endpoint)
    tok = src.fetch_id_token(RUN)
    assert fake.calls == {"token": 1, "iam_id": 1}
    assert tok.account == TARGET and fake.id_token_of(tok.value) == (TARGET, RUN)
    assert verify(fake, tok.value, RUN)["email"] == TARGET
    src.fetch_id_token(RUN)  # the source's access token is reused while valid
    assert fake.calls == {"token": 1, "iam_id": 2}


def test_impersonating_a_user_mints_id_tokens(fake: FakeGoogle, tmp_path: Path) -> None:
    """The fix the authorized_user error names: impersonate a service account."""
    user = fake.write_authorized_user(tmp_path / "user.json")
    src = source(
        user, token_uri=fake.token_uri, impersonate=TARGET, iam_endpoint=fake.iam_endpoint
    )
    verify(fake, src.fetch_id_token(RUN).value, RUN)


def test_impersonated_service_account_file(fake: FakeGoogle, tmp_path: Path) -> None:
    """A credentials file of type impersonated_service_account: its target and source
    as google-auth loads them, generateIdToken at the profile's iam_endpoint."""
    user = fake.write_authorized_user(tmp_path / "user.json")
    import json

    info = json.loads(user.read_text())
    path = tmp_path / "imp.json"
    path.write_text(
        json.dumps(
            {
                "type": "impersonated_service_account",
                "service_account_impersonation_url": fake.impersonation_url(TARGET),
                "delegates": [],
                "source_credentials": info,
            }
        )
    )
    src = source(path, token_uri=fake.token_uri, iam_endpoint=fake.iam_endpoint)
    tok = src.fetch_id_token(RUN)
    assert fake.id_token_of(tok.value) == (TARGET, RUN)
    assert fake.calls["iam_id"] == 1


def test_impersonation_refused_names_token_creator(fake: FakeGoogle, tmp_path: Path) -> None:
    sa = fake.write_service_account(tmp_path / "sa.json")
    src = source(sa, impersonate=TARGET, iam_endpoint=fake.iam_endpoint)
    src.fetch()  # loads
    fake.fail(403, count=1)
    with pytest.raises(CredentialsError) as info:
        src.fetch_id_token(RUN)
    assert "roles/iam.serviceAccountTokenCreator" in str(info.value)


def test_metadata_server_identity(fake: FakeGoogle, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    src = source("metadata")
    tok = src.fetch_id_token(RUN)
    assert fake.calls == {"identity": 1}
    assert tok.account == fake.metadata_account
    assert verify(fake, tok.value, RUN)["email"] == fake.metadata_account


@pytest.mark.parametrize("kind", ["authorized_user", "external_account"])
def test_user_credentials_cannot_mint_and_say_how(
    fake: FakeGoogle, tmp_path: Path, kind: str
) -> None:
    """One line: user credentials cannot mint ID tokens for an audience; impersonate
    = "SA@…" fixes it, with roles/iam.serviceAccountTokenCreator. No request made."""
    if kind == "authorized_user":
        src = source(fake.write_authorized_user(tmp_path / "u.json"), token_uri=fake.token_uri)
    else:
        src = source(fake.write_external_account(tmp_path / "e.json", tmp_path / "subject"))
    with pytest.raises(CredentialsError) as info:
        src.fetch_id_token(RUN)
    message = str(info.value)
    assert info.value.reason == "id_token_unsupported"
    assert "\n" not in message and "cannot mint ID tokens for an audience" in message
    assert 'impersonate = "SA@' in message and "roles/iam.serviceAccountTokenCreator" in message
    if kind == "authorized_user":
        assert message.startswith("user credentials (authorized_user)")
    assert sum(fake.calls.values()) == 0
    assert_no_secrets(fake, message)


# -- hostile or broken answers ------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-jwt",
        "a.b",
        "$(touch /tmp/x).b.c",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",  # claims are not JSON
        "eyJhbGciOiJSUzI1NiJ9.WzFd.c2ln",  # claims are a list
        "x" * 5000,
    ],
)
def test_a_garbled_id_token_is_a_retryable_bad_response(
    fake: FakeGoogle, tmp_path: Path, bad: str
) -> None:
    src = source(fake.write_service_account(tmp_path / "sa.json"))
    fake.bad_token(bad, count=1)
    with pytest.raises(RefreshError) as info:
        src.fetch_id_token(RUN)
    assert info.value.retryable and info.value.reason == "bad_response"
    assert_no_secrets(fake, str(info.value))
    verify(fake, src.fetch_id_token(RUN).value, RUN)  # the next answer is fine again


@pytest.mark.parametrize("seconds", [0, -30, 100 * 365 * 86400])
def test_an_implausible_exp_is_a_retryable_bad_response(
    fake: FakeGoogle, tmp_path: Path, seconds: float
) -> None:
    src = source(fake.write_service_account(tmp_path / "sa.json"))
    fake.bad_expires_in(seconds, count=1)
    with pytest.raises(RefreshError) as info:
        src.fetch_id_token(RUN)
    assert info.value.reason == "bad_response" and "expir" in str(info.value)


def test_an_id_token_for_another_audience_is_refused(fake: FakeGoogle, tmp_path: Path) -> None:
    """A token endpoint that answers with a token for another aud (a confused proxy)."""
    src = source(fake.write_service_account(tmp_path / "sa.json"))
    other = src.fetch_id_token("https://other.example.com").value
    fake.bad_token(other, count=1)
    with pytest.raises(RefreshError, match="another audience") as info:
        src.fetch_id_token(RUN)
    assert info.value.reason == "bad_response"


@pytest.mark.parametrize("fault", ["fail", "hang"])
def test_endpoint_faults_are_retryable(fake: FakeGoogle, tmp_path: Path, fault: str) -> None:
    key = fake.write_service_account(tmp_path / "sa.json")
    src = Source("p", ProfileConfig(credentials=str(key)), timeout=0.5)
    if fault == "fail":
        fake.fail(503, count=1)
    else:
        fake.hang(2.0, count=1)
    started = time.monotonic()
    with pytest.raises(RefreshError) as info:
        src.fetch_id_token(RUN)
    assert info.value.retryable and time.monotonic() - started < 1.5
    assert fake.calls["id_token"] == 1  # one attempt: no retry inside google-auth


def test_read_jwt_claims_bounds() -> None:
    import base64

    with pytest.raises(ValueError, match="characters long"):
        read_jwt_claims("a" * 4097)
    with pytest.raises(ValueError, match="missing"):
        read_jwt_claims(None)
    # Nested deeper than the recursion limit (json raises RecursionError, not ValueError).
    nested = base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).rstrip(b"=").decode()
    with pytest.raises(ValueError, match="not base64url JSON"):
        read_jwt_claims(f"e30.{nested}.x")
    assert read_jwt_claims("eyJhIjoxfQ.eyJhIjoxfQ.x") == {"a": 1}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[profiles.default.id_tokens]]\naudience = "http://x"\npath = "x.jwt"\n',
            "profiles.default.id_tokens[0].audience: audience must be an absolute https://",
        ),
        (
            f'[[profiles.default.id_tokens]]\naudience = "{RUN}"\npath = "x"\nformat = "env"\n',
            "profiles.default.id_tokens[0].format: must be raw or json",
        ),
        (
            f'[[profiles.default.id_tokens]]\naudience = "{RUN}"\npath = "token"\n',
            "profiles.default.id_tokens[0].path: ",
        ),
        (
            f'[[profiles.default.id_tokens]]\naudience = "{RUN}"\npath = "../x"\n',
            'profiles.default.id_tokens[0].path: ../x: ".." is not allowed',
        ),
        (
            f'[[profiles.default.id_tokens]]\naudience = "{RUN}"\npath = "a"\n'
            f'[[profiles.default.id_tokens]]\naudience = "{RUN}"\npath = "b"\n',
            f"profiles.default.id_tokens: audience {RUN} is listed twice",
        ),
        ("max_id_token_audiences = 0\n", "max_id_token_audiences: must be a whole number"),
        ('max_id_token_audiences = "16"\n', "max_id_token_audiences: must be a whole number"),
    ],
)
def test_id_token_configuration_errors_are_one_line(
    tmp_path: Path, toml: str, message: str
) -> None:
    from tokend.config import load
    from tokend.errors import ConfigError

    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load(path, {"TOKEND_RUNTIME_DIR": str(tmp_path / "rt")})
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)
    assert "\n" not in str(info.value)


# -- audiences --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audience",
    [
        RUN,
        "https://iap.example.com/app/path",
        "https://127.0.0.1:8443",
        "123456789-abcdef.apps.googleusercontent.com",
        "my-custom-audience",
    ],
)
def test_audiences_accepted(audience: str) -> None:
    assert wire.check_audience(audience) == audience


@given(st.text(max_size=600) | st.from_regex(r"https://[a-z0-9.\-]{1,40}(/[ -~]{0,40})?"))
@settings(max_examples=300, deadline=None)
def test_an_accepted_audience_is_always_safe(audience: str) -> None:
    """Whatever is accepted can go into a log line, a status field, a metadata query
    and a JWT claim as is: bounded, no space, quote, control character, ? # & $; an
    https URL with a host, or no scheme at all."""
    try:
        accepted = wire.check_audience(audience)
    except ValueError as err:
        assert "\n" not in str(err)  # one line; the audience itself is never echoed
        return
    assert accepted == audience and 0 < len(audience) <= wire.MAX_AUDIENCE_LENGTH
    assert all(c.isascii() and (c.isalnum() or c in "-._~:/@%+=,") for c in audience)
    if "://" in audience:
        scheme, _, rest = audience.partition("://")
        assert scheme == "https" and rest.split("/")[0] and "@" not in rest.split("/")[0]
    else:
        assert audience[0].isalnum()


@pytest.mark.parametrize(
    ("audience", "why"),
    [
        ("", "missing"),
        ("http://svc.example.com", "https://"),
        ("https://", "https://"),
        ("https://user@host", "https://"),
        ("ftp://x", "https://"),
        ("https://a b", "characters"),
        ("https://a/?q=1", "characters"),
        ("https://a/#frag", "characters"),
        ("aud\nience", "characters"),
        ("$(id)", "characters"),
        ("-flag", "start"),
        ("//iam.googleapis.com/projects/1/locations/global", "https://"),
        ("https://" + "a" * 600, "at most 512"),
    ],
)
def test_audiences_refused(audience: str, why: str) -> None:
    with pytest.raises(ValueError, match="audience") as info:
        wire.check_audience(audience)
    assert why in str(info.value)


# -- the cache: one refresher per (profile, audience), LRU-bounded ------------------------


def _endpoints(fake: FakeGoogle, key: Path, max_audiences: int) -> tuple[Endpoints, IdTokens]:
    """The endpoints layer with an ID token cache, as the daemon wires them (real
    sources against the fake; no socket)."""

    def make(name: str) -> Source:
        return Source(name, ProfileConfig(credentials=str(key)), timeout=2.0)

    refreshers = {"default": ProfileRefresher("default", make("default"), [])}
    endpoints = Endpoints(Served(refreshers, "config.toml", key.parent), Metrics(refreshers))
    ids = IdTokens(make, max_audiences=max_audiences)
    endpoints.id_tokens = ids
    return endpoints, ids


def _audiences(ids: IdTokens) -> list[str]:
    return [audience for _, audience, _ in ids.entries()]


def test_audiences_are_cached_and_the_least_recently_used_is_evicted(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """max_audiences = 2:
    1. a and b are minted on first request (the request waits), once each.
    2. a again: from the cache, no request to the fake; a is now the most recent.
    3. c: b, the least recently used, is dropped (its refresher stopped).
    4. b again: minted anew; a is dropped."""
    a, b, c = (f"https://{n}.example.com" for n in "abc")
    key = fake.write_service_account(tmp_path / "sa.json")

    async def scenario() -> None:
        endpoints, ids = _endpoints(fake, key, 2)
        try:
            got = {}
            for audience in (a, b):
                tok = await endpoints.fresh_id_token(IdTokenQuery(audience, wait=5))
                assert isinstance(tok, Token)
                got[audience] = tok
                verify(fake, tok.value, audience)
            assert fake.calls["id_token"] == 2 and _audiences(ids) == [a, b]
            again = await endpoints.fresh_id_token(IdTokenQuery(a, wait=5))
            assert again is got[a] and fake.calls["id_token"] == 2
            assert _audiences(ids) == [b, a]
            dropped = ids.current("default", b)
            assert dropped is not None
            await endpoints.fresh_id_token(IdTokenQuery(c, wait=5))
            assert _audiences(ids) == [a, c] and ids.current("default", b) is None
            await asyncio.sleep(0)
            tok_b = await endpoints.fresh_id_token(IdTokenQuery(b, wait=5))
            assert isinstance(tok_b, Token) and tok_b is not got[b]
            assert _audiences(ids) == [c, b] and fake.calls["id_token"] == 4
            ids.max_audiences = 1  # a reload lowered the bound: the oldest goes at once
            assert _audiences(ids) == [b]
        finally:
            await ids.stop()

    asyncio.run(scenario())


def test_a_flood_of_audiences_cannot_start_fetches_without_bound(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """max_audiences = 2 and Google slow to answer (1.5 s):
    1. a and b are minting; a third audience is refused with 429 at once (evicting a
       minting entry would leave its fetch running: a flood would start fetches
       without bound), and nothing is asked of Google for it.
    2. Once they are minted, the third is served (the least recently used dropped)."""
    key = fake.write_service_account(tmp_path / "sa.json")
    a, b, c = (f"https://{n}.example.com" for n in "abc")

    async def scenario() -> None:
        endpoints, ids = _endpoints(fake, key, 2)
        fake.hang(1.5, count=2)
        try:
            for audience in (a, b):
                answer = await endpoints.fresh_id_token(IdTokenQuery(audience, wait=0))
                assert isinstance(answer, Answer) and answer.status == 503  # starting
            await asyncio.sleep(0.2)
            busy = await endpoints.id_token(IdTokenQuery(c, wait=5))
            assert busy.status == 429
            assert json.loads(busy.body)["error"] == "too_many_audiences"
            assert fake.calls["id_token"] == 2 and _audiences(ids) == [a, b]
            tok = await endpoints.fresh_id_token(IdTokenQuery(a, wait=5))
            assert isinstance(tok, Token)
            deadline = time.monotonic() + 5
            while ids.current("default", b) is not None and ids.current("default", b).refreshing:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            tok = await endpoints.fresh_id_token(IdTokenQuery(c, wait=5))
            assert isinstance(tok, Token) and _audiences(ids) == [a, c]
        finally:
            await ids.stop()

    asyncio.run(scenario())


def test_an_audience_is_refreshed_like_an_access_token_and_dropped_when_idle(
    fake: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens of 3 s; an entry nobody asks for is dropped after its token's lifetime.
    1. Asked for once: minted; refreshed before it expires (at 75-85 % of its life),
       without a request, and the answer is always a token with time left.
    2. Nobody asks for 3 s: the entry is dropped and no more tokens are minted."""
    monkeypatch.setattr(idtokens, "MIN_IDLE", 0.5)
    fake.lifetime = 3
    key = fake.write_service_account(tmp_path / "sa.json")

    async def scenario() -> None:
        endpoints, ids = _endpoints(fake, key, 16)
        ids.start()
        try:
            first = await endpoints.fresh_id_token(IdTokenQuery(RUN, wait=5))
            assert isinstance(first, Token)
            r = ids.current("default", RUN)
            assert r is not None
            deadline = time.monotonic() + 5
            while r.token is first and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                ids.get("default", RUN)  # asked for meanwhile: kept
            assert r.token is not None and r.token is not first  # refreshed on its own
            assert fake.calls["id_token"] == 2
            deadline = time.monotonic() + 6
            while ids.current("default", RUN) is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(ids) == 0
            calls = fake.calls["id_token"]
            await asyncio.sleep(1.5)
            assert fake.calls["id_token"] == calls  # dropped: no more minting
        finally:
            await ids.stop()

    asyncio.run(scenario())


def test_failures_back_off_and_keep_the_last_token(fake: FakeGoogle, tmp_path: Path) -> None:
    """The fake answers 503 after the first token: the entry retries with backoff
    (state retrying), keeps serving the token it has until it is retired, then
    answers 503 with the reason."""
    fake.lifetime = 3
    key = fake.write_service_account(tmp_path / "sa.json")

    async def scenario() -> None:
        endpoints, ids = _endpoints(fake, key, 16)
        try:
            first = await endpoints.fresh_id_token(IdTokenQuery(RUN, wait=5))
            assert isinstance(first, Token)
            fake.fail(503)
            r = ids.current("default", RUN)
            assert r is not None
            deadline = time.monotonic() + 5
            while r.consecutive_failures < 2 and time.monotonic() < deadline:
                again = await endpoints.fresh_id_token(IdTokenQuery(RUN, wait=0))
                if isinstance(again, Token):
                    assert again is first
                await asyncio.sleep(0.05)
            assert r.state.value in ("retrying", "expired") and r.consecutive_failures >= 2
            deadline = time.monotonic() + 5
            while r.valid_token() is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            answer = await endpoints.fresh_id_token(IdTokenQuery(RUN, wait=0))
            assert isinstance(answer, Answer) and answer.status == 503
            body = json.loads(answer.body)
            assert body["error"] == "unavailable" and "ID token for" in body["detail"]
            fake.clear_faults()
            tok = await endpoints.fresh_id_token(IdTokenQuery(RUN, wait=5))
            assert isinstance(tok, Token) and tok is not first
        finally:
            await ids.stop()

    asyncio.run(scenario())


def test_entry_point_errors(fake: FakeGoogle, tmp_path: Path) -> None:
    """Unknown profile: 404 unknown_profile. User credentials: 503 id_token_unsupported
    with the fix, at once (no waiting out `wait`). A bad audience for the bare-token
    hook: 400."""
    user = fake.write_authorized_user(tmp_path / "user.json")

    async def scenario() -> None:
        def make(name: str) -> Source:
            return Source(name, ProfileConfig(credentials=str(user), token_uri=fake.token_uri))

        refreshers = {"default": ProfileRefresher("default", make("default"), [])}
        endpoints = Endpoints(
            Served(refreshers, "config.toml", tmp_path), Metrics(refreshers)
        )
        ids = endpoints.id_tokens = IdTokens(make)
        try:
            missing = await endpoints.fresh_id_token(IdTokenQuery(RUN, "nope"))
            assert isinstance(missing, Answer) and missing.status == 404
            assert json.loads(missing.body)["error"] == "unknown_profile"
            started = time.monotonic()
            answer = await endpoints.id_token(IdTokenQuery(RUN, wait=30))
            assert time.monotonic() - started < 5
            body = json.loads(answer.body)
            assert answer.status == 503 and body["error"] == "id_token_unsupported"
            assert body["detail"].startswith(f"profile default (ID token for {RUN}): user creden")
            assert 'impersonate = "SA@' in body["detail"] and "\n" not in body["detail"]
            bad = await endpoints.id_token_value("default", "http://plain.example.com", 1)
            assert isinstance(bad, Answer) and bad.status == 400
        finally:
            await ids.stop()

    asyncio.run(scenario())


# -- end to end: the real `tokend run` ------------------------------------------------------


def test_daemon_serves_id_tokens_on_the_socket_and_in_files(
    fake: FakeGoogle, short_tmp: Path
) -> None:
    """The real daemon, a service-account key, 4 s tokens:
    1. The configured audience's file holds an ID token that verifies for it, and is
       replaced before it expires (refreshed like the access token).
    2. GET /v1/id_token for another audience mints it on the first request; the answer
       verifies, states the audience and account; a second request is served from the
       cache (no new request to Google).
    3. A bad audience is a 400 naming what is allowed; an unknown profile a 404.
    4. /v1/status lists both audiences, without their tokens; /healthz ignores them.
    5. A reload that drops the configured audience removes its file.
    The log holds no ID token (run_daemon scans it; FakeGoogle.secrets() has them)."""
    fake.lifetime = 4
    config = sa_config(
        fake,
        short_tmp,
        '[[profiles.default.id_tokens]]\naudience = "https://hello-abc.a.run.app"\n'
        'path = "hello.jwt"\nformat = "raw"\n',
    )
    with run_daemon(fake, short_tmp, config) as d:
        jwt_file = d.file("hello.jwt")
        first = wait_for(lambda: d.read("hello.jwt"), 10).decode()
        assert jwt_file.stat().st_mode & 0o777 == 0o600
        verify(fake, first, "https://hello-abc.a.run.app")
        wait_for(lambda: d.read("hello.jwt") not in (None, first.encode()), 10)
        sock = d.file("tokend.sock")
        status, body = get_json(sock, f"/v1/id_token?audience={quote(RUN, safe='')}")
        assert status == 200, body
        assert body["audience"] == RUN and body["account"] == SA
        assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 4
        verify(fake, body["id_token"], RUN)
        calls = fake.calls["id_token"]
        status, again = get_json(sock, f"/v1/id_token?audience={quote(RUN, safe='')}")
        assert again["id_token"] == body["id_token"] and fake.calls["id_token"] == calls
        status, bad = get_json(sock, "/v1/id_token?audience=http%3A%2F%2Fx")
        assert status == 400 and "https://" in bad["detail"]
        status, bad = get_json(sock, "/v1/id_token")
        assert status == 400 and "audience is missing" in bad["detail"]
        status, missing = get_json(sock, f"/v1/id_token?profile=nope&audience={RUN}")
        assert status == 404 and missing["error"] == "unknown_profile"
        status, st = get_json(sock, "/v1/status")
        listed = {t["audience"]: t for t in st["id_tokens"]}
        assert set(listed) == {"https://hello-abc.a.run.app", RUN}
        assert all(t["state"] == "fresh" and t["profile"] == "default" for t in listed.values())
        text = json.dumps(st)
        assert body["id_token"] not in text and first not in text
        shown = subprocess.run(
            [sys.executable, "-m", "tokend", "status"],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert f"default (ID token for {RUN})" in shown and body["id_token"] not in shown
        assert get_json(sock, "/healthz")[0] == 200
        d.config_path.write_text(sa_config(fake, short_tmp))
        d.signal(signal.SIGHUP)
        wait_for(lambda: not jwt_file.exists(), 10)
        d.wait_log("removed")
    assert d.proc.returncode == 0 or d.proc.returncode == -signal.SIGTERM


def test_daemon_tells_user_credentials_to_impersonate(fake: FakeGoogle, short_tmp: Path) -> None:
    """1. An authorized_user profile: /v1/id_token answers 503 id_token_unsupported at
       once, with the one-line fix; the access token is unaffected.
    2. The fix, applied by a reload (impersonate = the service account): the same
       request gets an ID token for that account."""
    user = fake.write_authorized_user(short_tmp / "user.json")
    config = f'[profiles.default]\ncredentials = "{user}"\ntoken_uri = "{fake.token_uri}"\n'
    with run_daemon(fake, short_tmp, config) as d:
        sock = d.file("tokend.sock")
        started = time.monotonic()
        status, body = get_json(sock, f"/v1/id_token?audience={RUN}", 15)
        assert time.monotonic() - started < 5
        assert status == 503 and body["error"] == "id_token_unsupported"
        assert "user credentials (authorized_user) cannot mint ID tokens" in body["detail"]
        assert "roles/iam.serviceAccountTokenCreator" in body["detail"]
        assert get_json(sock, "/v1/token")[0] == 200
        d.config_path.write_text(
            config + f'impersonate = "{TARGET}"\niam_endpoint = "{fake.iam_endpoint}"\n'
        )
        d.signal(signal.SIGHUP)
        d.wait_log("configuration reloaded")
        status, body = get_json(sock, f"/v1/id_token?audience={RUN}", 15)
        assert status == 200, body
        assert body["account"] == TARGET and verify(fake, body["id_token"], RUN)["email"] == TARGET


def test_cli_and_client_get_id_tokens(
    fake: FakeGoogle, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. `tokend id-token --audience URL` prints a token that verifies for it; --format
       json prints the /v1/id_token object, header an Authorization line.
    2. A bad audience: exit 2 and one line saying what is allowed; nothing asked.
    3. tokend.client.id_token() returns a verifying token, and reuses it in-process
       while it has time left (the daemon stopped, it still answers); a new audience
       then fails with TokenUnavailable saying tokend is not running."""
    from tokend import client

    with run_daemon(fake, short_tmp, sa_config(fake, short_tmp)) as d:
        cli = [sys.executable, "-m", "tokend", "id-token", "--audience", RUN]
        out = subprocess.run(cli, env=d.env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        token = out.stdout.strip()
        verify(fake, token, RUN)
        out = subprocess.run(
            [*cli, "--format", "json"], env=d.env, capture_output=True, text=True, timeout=30
        )
        obj = json.loads(out.stdout)
        assert obj["id_token"] == token and obj["audience"] == RUN and obj["account"] == SA
        out = subprocess.run(
            [*cli, "--format", "header"], env=d.env, capture_output=True, text=True, timeout=30
        )
        assert out.stdout == f"Authorization: Bearer {token}\n"
        bad = subprocess.run(
            [sys.executable, "-m", "tokend", "id-token", "--audience", "http://x"],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 2 and bad.stdout == ""
        assert bad.stderr.count("\n") == 1 and "https://" in bad.stderr
        assert token not in d.log()

        monkeypatch.setenv("TOKEND_RUNTIME_DIR", str(d.runtime_dir))
        monkeypatch.setenv("TOKEND_CONFIG", str(d.config_path))
        other = "https://other-abc.a.run.app"
        value = client.id_token(other)
        verify(fake, value, other)
        assert asyncio.run(client.id_token_async(other)) == value
        d.stop()
    assert client.id_token(other) == value  # from the in-process cache
    with pytest.raises(client.TokenUnavailable, match="not running") as info:
        client.id_token("https://third.example.com")
    assert "\n" not in str(info.value)


def test_the_readme_id_token_commands(fake: FakeGoogle, short_tmp: Path) -> None:
    """The README's ID token commands, in a user's shell, print a token that verifies
    for the README's audience (the CLI's raw token; curl's /v1/id_token object)."""
    from tests.test_readme import ID_TOKEN_CLI, ID_TOKEN_CURL, ID_TOKEN_RUN, sh, user_shell

    with user_shell(fake, short_tmp) as env:
        printed = sh(ID_TOKEN_CLI, env)
        assert printed.returncode == 0, printed.stderr
        verify(fake, printed.stdout.strip(), ID_TOKEN_RUN)
        answer = json.loads(sh(ID_TOKEN_CURL, env).stdout)
        assert answer["audience"] == ID_TOKEN_RUN
        assert answer["id_token"] == printed.stdout.strip()  # the cached one
        verify(fake, answer["id_token"], ID_TOKEN_RUN)


def test_a_configured_file_follows_new_credentials_and_is_removed_before_expiry(
    fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. The credentials file is replaced by another account's key: the ID token file
       holds a token for the new account within a few seconds (no waiting for its
       scheduled refresh, 30 s away).
    2. SIGUSR1 refreshes it now (to a 4 s token); then Google fails every request:
       the file keeps the last token while it is valid, and is removed before it
       expires (never an expired token on disk).
    The daemon keeps running and says why in /v1/status."""
    fake.lifetime = 40
    other = "other@fake-project.iam.gserviceaccount.com"
    config = sa_config(
        fake, short_tmp, f'[[profiles.default.id_tokens]]\naudience = "{RUN}"\npath = "run.jwt"\n'
    )
    with run_daemon(fake, short_tmp, config) as d:
        first = wait_for(lambda: d.read("run.jwt"), 10).decode()
        assert read_jwt_claims(first)["email"] == SA
        fake.write_service_account(short_tmp / "sa.json", email=other)

        def new_identity() -> bool:
            raw = d.read("run.jwt")
            return raw is not None and read_jwt_claims(raw.decode())["email"] == other

        wait_for(new_identity, 10)
        fake.lifetime = 4  # then SIGUSR1: a 4 s token, so the outage outlives it soon
        d.signal(signal.SIGUSR1)

        def short_token() -> str | None:
            raw = d.read("run.jwt")
            if raw is None:
                return None
            claims = read_jwt_claims(raw.decode())
            return raw.decode() if claims["exp"] - claims["iat"] == 4 else None

        last = wait_for(short_token, 10)
        fake.fail(503)
        exp = read_jwt_claims(last)["exp"]
        while d.read("run.jwt") is not None:
            assert time.time() < exp, "the file outlived its token"
            time.sleep(0.02)
        assert time.time() < exp
        _, st = get_json(d.file("tokend.sock"), "/v1/status")
        (entry,) = st["id_tokens"]
        assert entry["state"] in ("retrying", "expired") and entry["consecutive_failures"] >= 1


def test_cycling_through_audiences_does_not_grow_the_daemon(
    fake: FakeGoogle, short_tmp: Path
) -> None:
    """A client asks for 100 audiences, one after the other, of a daemon that keeps 4:
    each is minted and answered, /v1/status lists only the 4 most recent, and the
    daemon's open files and threads are what they were after the first 4."""
    from tests.reliability_util import proc_figures

    config = "max_id_token_audiences = 4\n" + sa_config(fake, short_tmp)
    with run_daemon(fake, short_tmp, config) as d:
        sock = d.file("tokend.sock")
        for i in range(4):
            assert get_json(sock, f"/v1/id_token?audience=https://warm{i}.example.com")[0] == 200
        time.sleep(0.3)
        before = proc_figures(d.proc.pid)
        for i in range(100):
            status, body = get_json(sock, f"/v1/id_token?audience=https://svc{i}.example.com")
            assert status == 200 and body["audience"] == f"https://svc{i}.example.com"
        _, st = get_json(sock, "/v1/status")
        assert [t["audience"] for t in st["id_tokens"]] == [
            f"https://svc{i}.example.com" for i in range(96, 100)
        ]
        assert fake.calls["id_token"] == 104

        def settled() -> bool:  # a thread may take a moment to end after its answer
            now = proc_figures(d.proc.pid)
            return now["fds"] <= before["fds"] and now["threads"] <= before["threads"]

        wait_for(settled, 5)


def test_run_once_writes_configured_id_token_files(fake: FakeGoogle, short_tmp: Path) -> None:
    """`tokend run --once`: a service-account profile's ID token file holds a token for
    its audience (json: the /v1/id_token object), exit 0. A user login's: the access
    token files are written, the ID token's is not, exit 3 with one line saying to
    impersonate."""
    rt = short_tmp / "rt"
    env = {**os.environ, **fake.env(), "TOKEND_RUNTIME_DIR": str(rt)}
    ids = (
        f'[[profiles.default.id_tokens]]\naudience = "{RUN}"\npath = "run.json"\n'
        'format = "json"\n'
    )
    config = short_tmp / "config.toml"
    config.write_text(sa_config(fake, short_tmp, ids))
    cmd = [sys.executable, "-m", "tokend", "run", "--once", "--config", str(config)]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    written = json.loads((rt / "run.json").read_text())
    assert written["audience"] == RUN and verify(fake, written["id_token"], RUN)["email"] == SA
    assert f"profile default (ID token for {RUN}): wrote {rt / 'run.json'}" in ok.stderr
    (rt / "run.json").unlink()
    user = fake.write_authorized_user(short_tmp / "user.json")
    config.write_text(
        f'[profiles.default]\ncredentials = "{user}"\ntoken_uri = "{fake.token_uri}"\n{ids}'
    )
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 3 and fake.is_valid((rt / "token").read_text())
    assert not (rt / "run.json").exists()
    (error,) = [line for line in bad.stderr.splitlines() if "ERROR" in line]
    assert "cannot mint ID tokens for an audience; set impersonate" in error
    assert_no_secrets(fake, ok.stderr, bad.stderr)


# -- the metadata endpoint's identity -------------------------------------------------------


def test_metadata_identity_gives_google_auth_an_id_token(fake: FakeGoogle, short_tmp: Path) -> None:
    """[metadata] on, a service-account profile:
    1. google-auth's own fetch_id_token(), in a process of its own configured only by
       GCE_METADATA_HOST/IP (no ADC file), gets an ID token from tokend's
       …/identity?audience=…&format=full that verifies for the audience.
    2. It is the token /v1/id_token answers: one cache for every front end.
    3. A bad audience is a 400 saying what is allowed; no audience, the endpoint's 400."""
    config = sa_config(fake, short_tmp, '[metadata]\nlisten = "127.0.0.1:0"\n')
    with run_daemon(fake, short_tmp, config) as d:
        host = wait_for(lambda: re.findall(r"GCE_METADATA_HOST=(\S+)\)", d.log()), 10)[-1]
        home = short_tmp / "home"
        home.mkdir()
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "GCE_METADATA_HOST": host,
            "GCE_METADATA_IP": host,
            "NO_PROXY": "127.0.0.1,localhost",
        }
        code = (
            "import google.auth.transport.requests as r, google.oauth2.id_token as i; "
            f"print(i.fetch_id_token(r.Request(), {RUN!r}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr[-2000:]
        token = out.stdout.strip()
        assert verify(fake, token, RUN)["email"] == SA
        status, body = get_json(d.file("tokend.sock"), f"/v1/id_token?audience={RUN}")
        assert status == 200 and body["id_token"] == token
        path = "/computeMetadata/v1/instance/service-accounts/default/identity"
        bad = f"?audience={quote('http://x', safe='')}"
        for query, why in ((bad, "https://"), ("", "audience")):
            conn = http.client.HTTPConnection(*host.split(":"), timeout=10)
            try:
                conn.request("GET", path + query, headers={"Metadata-Flavor": "Google"})
                resp = conn.getresponse()
                assert resp.status == 400 and why in resp.read().decode()
            finally:
                conn.close()
        assert token not in d.log()
