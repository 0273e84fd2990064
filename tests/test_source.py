"""Source: real google-auth against FakeGoogle, for every credential kind and failure.

Each scenario checks what the daemon relies on: the token is one FakeGoogle issued to
the expected identity, a failure is classified (retryable or a person must act), one
fetch makes one HTTP attempt, and no secret ever reaches a message or a repr.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tokend import clock
from tokend.config import ProfileConfig
from tokend.errors import CredentialsError, RefreshError
from tokend.source import Source
from tokend.testing import FakeGoogle

SA = "sa@fake-project.iam.gserviceaccount.com"
TARGET = "target@fake-project.iam.gserviceaccount.com"
GCLOUD_CLIENT_ID = "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com"


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


@pytest.fixture
def errors() -> Iterator[list[BaseException]]:
    """Collects every error a test provokes; none may carry a secret."""
    seen: list[BaseException] = []
    yield seen
    assert seen, "the test recorded no error"


def source(credentials: str | Path, *, timeout: float = 2.0, **profile: Any) -> Source:
    return Source("p", ProfileConfig(credentials=str(credentials), **profile), timeout=timeout)


def assert_no_secrets(fake: FakeGoogle, *texts: str) -> None:
    blob = "\n".join(texts)
    for secret in fake.secrets():
        assert secret not in blob
    # google-auth copies response bodies into its exceptions; we must not.
    assert "expired or revoked" not in blob and "injected" not in blob


def fetch_error(src: Source) -> RefreshError | CredentialsError:
    with pytest.raises((RefreshError, CredentialsError)) as info:
        src.fetch()
    err = info.value
    assert isinstance(err, (RefreshError, CredentialsError))
    assert "\n" not in str(err)
    assert not str(err).startswith("profile")  # the daemon prefixes the profile name
    return err


# -- every credential kind ---------------------------------------------------------------


def test_service_account_key(fake: FakeGoogle, tmp_path: Path) -> None:
    src = source(fake.write_service_account(tmp_path / "sa.json"))
    assert src.credential_type == "" and src.account == ""  # nothing loaded yet
    before = clock.steady()
    tok = src.fetch()
    assert fake.is_valid(tok.value) and fake.who(tok.value) == SA
    assert src.credential_type == "service_account" and src.account == SA == tok.account
    assert tok.profile == "p"
    assert tok.scopes == ("https://www.googleapis.com/auth/cloud-platform",)
    assert before <= tok.issued <= clock.steady()
    assert 3589 < tok.expires_at - time.time() <= 3600
    assert tok.expires_at == int(tok.expires_at)  # whole seconds, as the files state it
    assert abs((tok.expires_at - time.time()) - tok.expires_in(clock.steady())) < 0.01
    assert fake.calls == {"token": 1}


def test_authorized_user_with_token_uri_override(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json", account="alice@example.com")
    src = source(user, token_uri=fake.token_uri)
    tok = src.fetch()
    assert fake.is_valid(tok.value) and fake.who(tok.value) == "alice@example.com"
    assert src.credential_type == "authorized_user"
    assert src.account == tok.account == ""  # google-auth does not know a user's email
    assert src.watched_paths == (user,)


def test_adc_from_google_application_credentials(
    fake: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = fake.write_authorized_user(tmp_path / "adc.json", account="bob@example.com")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user))
    src = source("adc", token_uri=fake.token_uri)
    assert src.watched_paths == (user,)
    assert fake.who(src.fetch().value) == "bob@example.com"


def test_adc_well_known_file_appears_later(fake: FakeGoogle, tmp_path: Path) -> None:
    """1. No ADC anywhere: credentials_missing with the gcloud advice, no HTTP at all.
    2. `gcloud auth application-default login` writes the well-known file.
    3. After invalidate() the next fetch uses it."""
    src = source("adc", token_uri=fake.token_uri)
    well_known = tmp_path / "gcloud" / "application_default_credentials.json"
    assert src.watched_paths == (well_known,)  # computed without loading
    start = time.monotonic()
    err = fetch_error(src)
    assert time.monotonic() - start < 1  # no metadata-server probing off GCE
    assert isinstance(err, CredentialsError) and err.reason == "credentials_missing"
    assert "gcloud auth application-default login" in str(err) and str(well_known) in str(err)
    assert fake.calls == {}

    well_known.parent.mkdir()
    fake.write_authorized_user(well_known, account="carol@example.com")
    src.invalidate()
    assert fake.who(src.fetch().value) == "carol@example.com"


def test_adc_quota_project_warning_is_silenced(fake: FakeGoogle, tmp_path: Path) -> None:
    # gcloud's own client id without a quota project makes google-auth warn; pytest
    # turns warnings into errors, so this passes only if source.py silences it.
    user = fake.write_authorized_user(tmp_path / "u.json", client_id=GCLOUD_CLIENT_ID)
    tok = source(user, token_uri=fake.token_uri).fetch()
    assert fake.is_valid(tok.value)


def test_metadata_server(fake: FakeGoogle, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    src = source("metadata")
    assert src.watched_paths == ()
    tok = src.fetch()
    assert fake.is_valid(tok.value) and fake.who(tok.value) == fake.metadata_account
    assert src.credential_type == "metadata"
    assert src.account == tok.account == fake.metadata_account  # learned during refresh
    assert fake.calls == {"metadata": 1}


def test_adc_falls_back_to_the_metadata_server(
    fake: FakeGoogle, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    src = source("adc")
    assert fake.who(src.fetch().value) == fake.metadata_account
    assert src.credential_type == "metadata"


def test_impersonation_via_iam_endpoint(fake: FakeGoogle, tmp_path: Path) -> None:
    sa = fake.write_service_account(tmp_path / "sa.json")
    src = source(sa, impersonate=TARGET, iam_endpoint=fake.iam_endpoint)
    tok = src.fetch()
    assert fake.is_valid(tok.value) and fake.who(tok.value) == TARGET
    assert src.credential_type == "impersonated_service_account"
    assert src.account == tok.account == TARGET
    assert fake.calls == {"token": 1, "iam": 1}
    # the source token is still fresh: the next fetch only asks IAM
    tok2 = src.fetch()
    assert tok2.value != tok.value and fake.who(tok2.value) == TARGET
    assert fake.calls == {"token": 1, "iam": 2}


def test_impersonating_a_user_with_token_uri(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json")
    src = source(user, token_uri=fake.token_uri, impersonate=TARGET, iam_endpoint=fake.iam_endpoint)
    assert fake.who(src.fetch().value) == TARGET


def test_impersonation_refused_by_iam(fake: FakeGoogle, tmp_path: Path) -> None:
    src = source(
        fake.write_service_account(tmp_path / "sa.json"),
        impersonate=TARGET,
        iam_endpoint=fake.iam_endpoint,
    )
    src.fetch()
    fake.fail(403, count=1)
    err = fetch_error(src)
    assert isinstance(err, CredentialsError)
    assert "roles/iam.serviceAccountTokenCreator" in str(err) and TARGET in str(err)


def test_external_account_file_sourced(fake: FakeGoogle, tmp_path: Path) -> None:
    cfg = fake.write_external_account(
        tmp_path / "ext.json", tmp_path / "subject", account="wif@example.com"
    )
    src = source(cfg)
    tok = src.fetch()
    assert fake.is_valid(tok.value) and fake.who(tok.value) == "wif@example.com"
    assert src.credential_type == "external_account" and src.account == ""
    assert fake.calls == {"sts": 1}  # loading made no project-id lookups


def test_external_account_with_impersonation(fake: FakeGoogle, tmp_path: Path) -> None:
    cfg = fake.write_external_account(
        tmp_path / "ext.json", tmp_path / "subject", impersonate=TARGET
    )
    src = source(cfg)
    tok = src.fetch()
    assert fake.who(tok.value) == TARGET and src.account == TARGET
    assert fake.calls == {"sts": 1, "iam": 1}


def test_external_account_subject_token_missing(fake: FakeGoogle, tmp_path: Path) -> None:
    subject = tmp_path / "subject"
    src = source(fake.write_external_account(tmp_path / "ext.json", subject))
    subject.unlink()
    err = fetch_error(src)
    assert isinstance(err, CredentialsError) and err.reason == "credentials_invalid"
    assert fake.calls == {}


def test_quota_project_applies(fake: FakeGoogle, tmp_path: Path) -> None:
    src = source(fake.write_service_account(tmp_path / "sa.json"), quota_project="billing-1")
    assert fake.is_valid(src.fetch().value)
    assert src._credentials.quota_project_id == "billing-1"


# -- classification ------------------------------------------------------------------------


def _kinds(fake: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    user = fake.write_authorized_user(tmp_path / "u.json")
    return {
        "service_account": (
            {"credentials": str(fake.write_service_account(tmp_path / "sa.json"))},
            "token",
        ),
        "authorized_user": ({"credentials": str(user), "token_uri": fake.token_uri}, "token"),
        "metadata": ({"credentials": "metadata"}, "metadata"),
        "impersonation": (
            {
                "credentials": str(user),
                "token_uri": fake.token_uri,
                "impersonate": TARGET,
                "iam_endpoint": fake.iam_endpoint,
            },
            "token",
        ),
        "external_account": (
            {
                "credentials": str(
                    fake.write_external_account(tmp_path / "ext.json", tmp_path / "subject")
                )
            },
            "sts",
        ),
    }


KINDS = ["service_account", "authorized_user", "metadata", "impersonation", "external_account"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_retryable_and_tried_once(
    fake: FakeGoogle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    errors: list[BaseException],
    kind: str,
    status: int,
) -> None:
    profile, endpoint = _kinds(fake, tmp_path, monkeypatch)[kind]
    src = Source("p", ProfileConfig(**profile), timeout=2.0)
    fake.fail(status)
    start = time.monotonic()
    err = fetch_error(src)
    errors.append(err)
    assert time.monotonic() - start < 0.5  # google-auth's own backoff would sleep 1 s+
    assert isinstance(err, RefreshError) and err.retryable
    assert f"HTTP {status}" in str(err)
    assert fake.calls == {endpoint: 1}  # exactly one HTTP attempt
    assert_no_secrets(fake, str(err), repr(src))
    fake.clear_faults()
    assert fake.is_valid(src.fetch().value)  # and it recovers


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_is_retryable(
    fake: FakeGoogle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    errors: list[BaseException],
    kind: str,
) -> None:
    profile, endpoint = _kinds(fake, tmp_path, monkeypatch)[kind]
    src = Source("p", ProfileConfig(**profile), timeout=2.0)
    fake.garbage()
    err = fetch_error(src)
    errors.append(err)
    assert isinstance(err, RefreshError) and err.retryable and err.reason == "bad_response"
    assert fake.calls == {endpoint: 1}
    assert_no_secrets(fake, str(err))


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_grant_needs_a_person(
    fake: FakeGoogle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    errors: list[BaseException],
    kind: str,
) -> None:
    profile, endpoint = _kinds(fake, tmp_path, monkeypatch)[kind]
    src = Source("p", ProfileConfig(**profile), timeout=2.0)
    fake.invalid_grant()
    err = fetch_error(src)
    errors.append(err)
    assert isinstance(err, CredentialsError) and err.reason == "reauth_required"
    assert "invalid_grant" in str(err)
    assert fake.calls == {endpoint: 1}
    assert_no_secrets(fake, str(err), repr(src))


def test_invalid_grant_on_adc_says_how_to_log_in(
    fake: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errors: list[BaseException]
) -> None:
    user = fake.write_authorized_user(tmp_path / "adc.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user))
    src = source("adc", token_uri=fake.token_uri)
    fake.invalid_grant()
    err = fetch_error(src)
    errors.append(err)
    assert isinstance(err, CredentialsError) and err.reason == "reauth_required"
    assert "gcloud auth application-default login" in str(err)
    assert_no_secrets(fake, str(err))


@pytest.mark.parametrize("kind", ["service_account", "metadata", "external_account"])
def test_hang_times_out_quickly(
    fake: FakeGoogle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    errors: list[BaseException],
    kind: str,
) -> None:
    profile, endpoint = _kinds(fake, tmp_path, monkeypatch)[kind]
    src = Source("p", ProfileConfig(**profile), timeout=0.5)
    fake.hang(5)
    start = time.monotonic()
    err = fetch_error(src)
    errors.append(err)
    assert time.monotonic() - start < 2
    assert isinstance(err, RefreshError) and err.retryable
    assert "timed out after 0.5 s" in str(err) and "127.0.0.1" in str(err)
    assert err.reason == "timeout"  # as when the whole fetch's deadline passes first
    assert fake.calls == {endpoint: 1}
    fake.clear_faults()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_retryable(
    fake: FakeGoogle, tmp_path: Path, errors: list[BaseException]
) -> None:
    port = _closed_port()
    src = source(
        fake.write_authorized_user(tmp_path / "u.json"),
        token_uri=f"http://127.0.0.1:{port}/token",
    )
    start = time.monotonic()
    err = fetch_error(src)
    errors.append(err)
    assert time.monotonic() - start < 1  # no internal retries with sleeps
    assert isinstance(err, RefreshError) and err.retryable and err.reason == "transport_error"
    assert f"127.0.0.1:{port}" in str(err) and "connection failed" in str(err)


def test_metadata_server_down_is_retryable(
    monkeypatch: pytest.MonkeyPatch, errors: list[BaseException]
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    err = fetch_error(source("metadata"))
    errors.append(err)
    assert time.monotonic() - start < 1  # google-auth alone would try 5 times with sleeps
    assert isinstance(err, RefreshError) and err.retryable
    # Off Google Cloud this is the usual cause: say so; whether it is retried is for the
    # caller to say (`run --once` does not retry).
    assert 'credentials = "metadata" works only on Google Cloud' in str(err)
    assert "retrying" not in str(err)


# -- files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path, errors: list[BaseException]) -> None:
    path = tmp_path / "nope.json"
    src = source(path)
    assert src.watched_paths == (path,)
    err = fetch_error(src)
    errors.append(err)
    assert isinstance(err, CredentialsError) and err.reason == "credentials_missing"
    assert str(path) in str(err) and "profiles.p.credentials" in str(err)


def test_missing_adc_file_named_by_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errors: list[BaseException]
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "gone.json"))
    err = fetch_error(source("adc"))
    errors.append(err)
    assert isinstance(err, CredentialsError) and err.reason == "credentials_missing"
    assert "gone.json" in str(err)


CORRUPT: dict[str, Callable[[Path, FakeGoogle], None]] = {
    "not json": lambda p, f: p.write_text("{not json"),
    "binary": lambda p, f: p.write_bytes(b"\xff\xfe\x00"),
    "a list": lambda p, f: p.write_text("[1, 2]"),
    "no type": lambda p, f: p.write_text('{"client_id": "x"}'),
    "unsupported type": lambda p, f: p.write_text('{"type": "gdch_service_account"}'),
    "authorized_user without refresh token": lambda p, f: p.write_text(
        '{"type": "authorized_user", "client_id": "x"}'
    ),
    "service account with a broken key": lambda p, f: p.write_text(
        json.dumps(
            {**json.loads(f.write_service_account(p).read_text()), "private_key": "-----BEGIN"}
        )
    ),
    "impersonated without source": lambda p, f: p.write_text(
        '{"type": "impersonated_service_account"}'
    ),
    "a directory": lambda p, f: p.mkdir(),
    "service account, key's CRT values disagree": lambda p, f: _with_key(p, f, _bad_crt_key()),
    "service account, an EC key": lambda p, f: _with_key(p, f, _ec_key()),
    "service account, no private_key": lambda p, f: _with_key(p, f, None),
}


def _with_key(path: Path, fake: FakeGoogle, pem: str | None) -> None:
    """A service-account file as FakeGoogle writes it, with its private key replaced."""
    fake.write_service_account(path)
    info = json.loads(path.read_text())
    if pem is None:
        del info["private_key"]
    else:
        info["private_key"] = pem
    path.write_text(json.dumps(info))


def _pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _bad_crt_key() -> str:
    """An RSA key that parses but whose iqmp is off by one: OpenSSL's check (which
    tokend skips for its cost) would refuse it, and so must tokend's own."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    good = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_numbers()
    bad = rsa.RSAPrivateNumbers(
        good.p, good.q, good.d, good.dmp1, good.dmq1, good.iqmp + 1, good.public_numbers
    )
    return _pem(bad.private_key(unsafe_skip_rsa_key_validation=True))


def _ec_key() -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    return _pem(ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files(
    fake: FakeGoogle, tmp_path: Path, errors: list[BaseException], case: str
) -> None:
    path = tmp_path / "creds.json"
    CORRUPT[case](path, fake)
    err = fetch_error(source(path))
    errors.append(err)
    assert isinstance(err, CredentialsError) and err.reason == "credentials_invalid"
    assert str(path) in str(err)
    assert "BEGIN" not in str(err)
    assert fake.calls == {}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(fake: FakeGoogle, tmp_path: Path, errors: list[BaseException]) -> None:
    path = fake.write_service_account(tmp_path / "sa.json")
    path.chmod(0)
    err = fetch_error(source(path))
    errors.append(err)
    assert isinstance(err, CredentialsError) and "permission denied" in str(err)


def test_token_uri_on_metadata_is_refused(
    fake: FakeGoogle, monkeypatch: pytest.MonkeyPatch, errors: list[BaseException]
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", fake.metadata_host)
    err = fetch_error(source("metadata", token_uri=fake.token_uri))
    errors.append(err)
    assert isinstance(err, CredentialsError) and "token_uri" in str(err)


# -- reloads, timing, secrecy --------------------------------------------------------------


def test_invalidate_rereads_a_rewritten_file(fake: FakeGoogle, tmp_path: Path) -> None:
    path = fake.write_service_account(tmp_path / "sa.json", email="one@p.iam.gserviceaccount.com")
    src = source(path)
    assert fake.who(src.fetch().value) == "one@p.iam.gserviceaccount.com"
    fake.write_service_account(path, email="two@p.iam.gserviceaccount.com")
    assert fake.who(src.fetch().value) == "one@p.iam.gserviceaccount.com"  # still cached
    src.invalidate()
    tok = src.fetch()
    assert fake.who(tok.value) == "two@p.iam.gserviceaccount.com"
    assert src.account == tok.account == "two@p.iam.gserviceaccount.com"


def test_invalidate_recovers_from_a_missing_file(fake: FakeGoogle, tmp_path: Path) -> None:
    path = tmp_path / "u.json"
    src = source(path, token_uri=fake.token_uri)
    with pytest.raises(CredentialsError):
        src.fetch()
    fake.write_authorized_user(path, account="dave@example.com")
    src.invalidate()
    assert fake.who(src.fetch().value) == "dave@example.com"


def test_short_lifetime_expiry(fake: FakeGoogle, tmp_path: Path) -> None:
    fake.lifetime = 2.0
    src = source(fake.write_service_account(tmp_path / "sa.json"))
    src.fetch()  # load the credentials first: only the HTTP exchange is measured
    fake.hang(0.3, count=1)  # a slow answer must not stretch the believed lifetime
    before = time.time()
    tok = src.fetch()
    # 2 s minus the 0.3 s the answer took (google-auth counts from its arrival), then
    # rounded down to the whole second the files state.
    assert 0.6 < tok.expires_in(clock.steady()) <= 1.7 + 0.01
    assert tok.expires_at <= before + 2.0 + 0.005  # counted from the request, not the answer
    assert tok.lifetime <= 1.7 + 0.01


def test_construction_is_cheap(tmp_path: Path) -> None:
    src = source(tmp_path / "does-not-exist.json", timeout=1.0)
    assert src.credential_type == "" and src.account == ""
    assert "does-not-exist.json" in repr(src)


def test_no_secret_in_repr_or_token_str(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json")
    sources = [
        source(fake.write_service_account(tmp_path / "sa.json")),
        source(user, token_uri=fake.token_uri),
        source(user, token_uri=fake.token_uri, impersonate=TARGET, iam_endpoint=fake.iam_endpoint),
    ]
    texts = []
    for src in sources:
        tok = src.fetch()
        texts += [repr(src), str(src), repr(tok), str(tok)]
        assert src.name in repr(src) and src.credential_type in repr(src)
    assert_no_secrets(fake, *texts)


def test_invalidate_does_not_wait_for_a_fetch_in_flight(fake: FakeGoogle, tmp_path: Path) -> None:
    import threading

    path = fake.write_service_account(tmp_path / "sa.json", email="one@p.iam.gserviceaccount.com")
    src = source(path, timeout=3.0)
    src.fetch()
    fake.hang(0.8, count=1)
    worker = threading.Thread(target=src.fetch)
    worker.start()
    time.sleep(0.2)  # the fetch is waiting on the fake now
    fake.write_service_account(path, email="two@p.iam.gserviceaccount.com")
    start = time.monotonic()
    src.invalidate()
    assert time.monotonic() - start < 0.1
    worker.join(5)
    assert fake.who(src.fetch().value) == "two@p.iam.gserviceaccount.com"


def test_credentials_naming_a_directory_says_to_name_the_file(tmp_path: Path) -> None:
    err = fetch_error(source(tmp_path))
    assert isinstance(err, CredentialsError) and err.reason == "credentials_invalid"
    assert str(err) == (
        f"{tmp_path} is a directory; profiles.p.credentials names the credentials JSON file "
        "itself, e.g. ~/.config/gcloud/application_default_credentials.json"
    )
