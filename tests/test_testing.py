"""FakeGoogle and FakeOpenAI: the endpoints, the fault knobs and the bookkeeping.

Plain HTTP with ``requests`` here; tests/test_source.py drives the fake with google-auth.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import requests

from tokend.testing import FakeGoogle, FakeOpenAI


def _refresh(fake: FakeGoogle, path: Path) -> requests.Response:
    info = json.loads(path.read_text())
    return requests.post(
        fake.token_uri,
        data={
            "grant_type": "refresh_token",
            "refresh_token": info["refresh_token"],
            "client_id": info["client_id"],
            "client_secret": info["client_secret"],
        },
        timeout=5,
    )


def test_refresh_grant_issues_token_for_the_account(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json", account="alice@example.com")
    assert stat.S_IMODE(os.stat(user).st_mode) == 0o600
    r = _refresh(fake, user)
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    token = body["access_token"]
    assert token.startswith("ya29.fake-") and len(token) >= len("ya29.fake-") + 40
    assert "alice" not in token
    assert fake.who(token) == "alice@example.com"
    assert fake.is_valid(token)
    assert fake.issued == [token]
    assert fake.calls["token"] == 1
    assert fake.call_log[-1][1:] == ("token", 200)


def test_unknown_refresh_token_and_wrong_client(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json")
    info = json.loads(user.read_text())
    bad = requests.post(
        fake.token_uri,
        data={"grant_type": "refresh_token", "refresh_token": "nope", "client_id": "x"},
        timeout=5,
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    wrong = requests.post(
        fake.token_uri,
        data={**info, "grant_type": "refresh_token", "client_secret": "wrong"},
        timeout=5,
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert fake.who("nope") is None and not fake.is_valid("nope")


def test_lifetime_rounds_up_and_expires(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json")
    fake.lifetime = 0.3
    body = _refresh(fake, user).json()
    assert body["expires_in"] == 1
    assert fake.is_valid(body["access_token"])
    time.sleep(1.05)
    assert not fake.is_valid(body["access_token"])
    assert fake.who(body["access_token"]) is not None  # expired, still known


def test_fail_counts_down_then_clears(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json")
    fake.fail(503, count=2)
    statuses = [_refresh(fake, user).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert [s for _, _, s in fake.call_log] == [503, 503, 200]
    assert fake.calls["token"] == 3
    assert len(fake.issued) == 1


def test_fail_without_count_lasts_until_cleared(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json")
    fake.fail(500)
    assert [_refresh(fake, user).status_code for _ in range(4)] == [500] * 4
    fake.clear_faults()
    assert _refresh(fake, user).status_code == 200


def test_garbage_and_invalid_grant(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json")
    fake.garbage(count=1)
    r = _refresh(fake, user)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    fake.invalid_grant(count=1)
    r = _refresh(fake, user)
    assert r.status_code == 400
    assert r.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    assert _refresh(fake, user).status_code == 200


def test_hang_delays_the_answer(fake: FakeGoogle, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "u.json")
    fake.hang(0.4, count=1)
    start = time.monotonic()
    assert _refresh(fake, user).status_code == 200
    assert time.monotonic() - start >= 0.35
    start = time.monotonic()
    assert _refresh(fake, user).status_code == 200
    assert time.monotonic() - start < 0.3


def test_stop_wakes_a_hanging_handler(tmp_path: Path) -> None:
    fake = FakeGoogle().start()
    user = fake.write_authorized_user(tmp_path / "u.json")
    fake.hang(30)
    with pytest.raises(requests.exceptions.ReadTimeout):
        _refresh_with_timeout(fake, user, 0.2)
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 2


def _refresh_with_timeout(fake: FakeGoogle, path: Path, timeout: float) -> requests.Response:
    info = json.loads(path.read_text())
    return requests.post(
        fake.token_uri, data={**info, "grant_type": "refresh_token"}, timeout=timeout
    )


def test_metadata_requires_the_flavor_header(fake: FakeGoogle) -> None:
    base = f"http://{fake.metadata_host}/computeMetadata/v1/instance/service-accounts/default/"
    assert requests.get(base + "token", timeout=5).status_code == 403
    hdr = {"Metadata-Flavor": "Google"}
    ping = requests.get(f"http://{fake.metadata_host}/", headers=hdr, timeout=5)
    assert ping.status_code == 200 and ping.headers["Metadata-Flavor"] == "Google"
    info = requests.get(base + "?recursive=true", headers=hdr, timeout=5).json()
    assert info["email"] == fake.metadata_account and "default" in info["aliases"]
    body = requests.get(base + "token", headers=hdr, timeout=5).json()
    assert fake.who(body["access_token"]) == fake.metadata_account
    assert fake.calls["metadata"] == 1  # the 403 was turned away before the token handler


def test_iam_requires_a_live_bearer(fake: FakeGoogle, tmp_path: Path) -> None:
    url = fake.impersonation_url("target@p.iam.gserviceaccount.com")
    assert url.startswith(fake.iam_endpoint + "/v1/projects/-/serviceAccounts/")
    body = json.dumps({"scope": ["x"], "lifetime": "3600s"})
    denied = requests.post(url, data=body, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert denied.status_code == 401 and denied.json()["error"]["status"] == "UNAUTHENTICATED"
    caller = _refresh(fake, fake.write_authorized_user(tmp_path / "u.json")).json()
    r = requests.post(
        url,
        data=body,
        headers={"Authorization": f"Bearer {caller['access_token']}"},
        timeout=5,
    )
    assert r.status_code == 200
    reply = r.json()
    assert reply["expireTime"].endswith("Z")
    assert fake.who(reply["accessToken"]) == "target@p.iam.gserviceaccount.com"
    assert fake.calls["iam"] == 2


def test_sts_exchanges_the_subject_token(fake: FakeGoogle, tmp_path: Path) -> None:
    subject = tmp_path / "subject"
    subject.write_text("my-idp-token\n")
    cfg = fake.write_external_account(tmp_path / "ext.json", subject, account="wif@example.com")
    info = json.loads(cfg.read_text())
    assert info["token_url"] == fake.sts_uri
    assert info["credential_source"] == {"file": str(subject)}
    assert subject.read_text() == "my-idp-token\n"  # kept
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "my-idp-token",
        "subject_token_type": info["subject_token_type"],
        "audience": info["audience"],
    }
    r = requests.post(fake.sts_uri, data=form, timeout=5)
    assert r.status_code == 200
    assert fake.who(r.json()["access_token"]) == "wif@example.com"
    bad = requests.post(fake.sts_uri, data={**form, "subject_token": "x"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"


def test_faults_apply_to_every_token_endpoint(fake: FakeGoogle, tmp_path: Path) -> None:
    fake.fail(502)
    hdr = {"Metadata-Flavor": "Google"}
    meta = f"http://{fake.metadata_host}/computeMetadata/v1/instance/service-accounts/default/"
    assert requests.get(meta + "token", headers=hdr, timeout=5).status_code == 502
    assert requests.post(fake.sts_uri, data={}, timeout=5).status_code == 502
    assert requests.post(fake.impersonation_url("a@b.c"), timeout=5).status_code == 502
    assert requests.post(fake.token_uri, data={}, timeout=5).status_code == 502
    # ...but not the info endpoints google-auth reads around them
    assert requests.get(meta + "?recursive=true", headers=hdr, timeout=5).status_code == 200
    assert fake.calls == {"metadata": 1, "sts": 1, "iam": 1, "token": 1}


def test_service_account_file_and_secrets(fake: FakeGoogle, tmp_path: Path) -> None:
    sa = fake.write_service_account(tmp_path / "sa.json", email="x@p.iam.gserviceaccount.com")
    info = json.loads(sa.read_text())
    assert info["type"] == "service_account" and info["token_uri"] == fake.token_uri
    assert info["client_email"] == "x@p.iam.gserviceaccount.com"
    assert stat.S_IMODE(os.stat(sa).st_mode) == 0o600
    user = fake.write_authorized_user(tmp_path / "u.json")
    uinfo = json.loads(user.read_text())
    secrets = fake.secrets()
    assert uinfo["refresh_token"] in secrets and uinfo["client_secret"] in secrets
    key_lines = info["private_key"].splitlines()[1:-1]
    assert any(line in secrets for line in key_lines)


def test_env_points_at_the_fake(fake: FakeGoogle) -> None:
    env = fake.env()
    assert env["GCE_METADATA_HOST"] == fake.metadata_host == env["GCE_METADATA_IP"]
    assert "127.0.0.1" in env["NO_PROXY"] and "127.0.0.1" in env["no_proxy"]
    assert fake.url == f"http://{fake.metadata_host}"


# -- FakeOpenAI with the real SDK ------------------------------------------------------


def test_openai_sdk_accepts_only_live_tokens(fake: FakeGoogle, tmp_path: Path) -> None:
    token = _refresh(fake, fake.write_authorized_user(tmp_path / "u.json")).json()
    with FakeOpenAI(fake) as api:
        good = openai.OpenAI(api_key=token["access_token"], base_url=api.url, max_retries=0)
        chat = good.chat.completions.create(
            model="google/gemini-2.0-flash", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].message.content == "ok"
        assert chat.model == "google/gemini-2.0-flash"
        resp = good.responses.create(model="m", input="hi")
        assert resp.output_text == "ok"
        assert api.seen_tokens == [token["access_token"]] * 2

        bad = openai.OpenAI(api_key="ya29.not-issued", base_url=api.url, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            bad.responses.create(model="m", input="hi")
        assert api.rejected == 2
        good.close()
        bad.close()


def test_openai_rejects_expired_tokens(fake: FakeGoogle, tmp_path: Path) -> None:
    fake.lifetime = 0.2
    token = _refresh(fake, fake.write_authorized_user(tmp_path / "u.json")).json()
    time.sleep(1.05)
    with FakeOpenAI(fake) as api:
        client = openai.OpenAI(api_key=token["access_token"], base_url=api.url, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        client.close()
        assert api.seen_tokens == [] and api.rejected == 1


# -- python -m tokend.testing ----------------------------------------------------------


def test_module_main_serves_until_sigterm(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "tokend.testing", "--lifetime", "5", "--dir", str(tmp_path)]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("fake Google listening on http://127.0.0.1:")
            url = first.split()[4]
            user = tmp_path / "authorized_user.json"
            info = json.loads(user.read_text())  # written before the banner
            r = requests.post(
                url + "/token", data={**info, "grant_type": "refresh_token"}, timeout=5
            )
            assert r.status_code == 200 and r.json()["expires_in"] == 5
            proc.terminate()
            out = first + proc.stdout.read()
            assert proc.wait(10) == 0
            assert str(user) in out and "GCE_METADATA_HOST" in out
            assert info["refresh_token"] not in out
        finally:
            if proc.poll() is None:
                proc.kill()
