"""ID tokens: FakeGoogle's RS256 tokens, minting them through each kind of credentials
(real google-auth against FakeGoogle), the audience rules, the per-audience cache in the
daemon, and every front end (socket, CLI, client).

Tokens are verified as a service would verify them: ``google.oauth2.id_token.verify_token``
checks the signature against the certificates FakeGoogle serves, ``aud`` and ``exp``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import pytest
import requests
from google.oauth2 import id_token as google_id_token

from tokend import wire
from tokend.config import ProfileConfig
from tokend.errors import CredentialsError, RefreshError
from tokend.source import Source, read_jwt_claims
from tokend.testing import FakeGoogle

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
    3. It is among the fake's secrets (the log scans look for it)."""
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
    with pytest.raises(ValueError, match="characters long"):
        read_jwt_claims("a" * 4097)
    with pytest.raises(ValueError, match="missing"):
        read_jwt_claims(None)
    assert read_jwt_claims("eyJhIjoxfQ.eyJhIjoxfQ.x") == {"a": 1}


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
