"""FakeGoogle and FakeOpenAI: the endpoints, the fault knobs and the bookkeeping.

Plain HTTP with ``requests`` here; tests/test_source.py drives the fake with google-auth.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import os
import selectors
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.conftest import wait_for
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


# -- FakeOpenAI as a Vertex-like upstream ------------------------------------------------

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def api(fake: FakeGoogle) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(fake) as server:
        yield server


def _vertex(api: FakeOpenAI, token: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=token, base_url=api.vertex_base_url, max_retries=0, timeout=5)


def _post(url: str, token: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """POST JSON with urllib: (status, headers with lower-case keys, body)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event", ""), json.loads(fields["data"])))
    return events


ANTHROPIC_BODY = {
    "anthropic_version": "vertex-2023-10-16",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


def test_vertex_addresses(fake: FakeGoogle) -> None:
    api = FakeOpenAI(fake, project="p-1", location="europe-west4")
    with api:
        origin = f"http://127.0.0.1:{api.port}"
        assert api.origin == origin and api.url == origin + "/v1"
        assert api.vertex_base_url == (
            origin + "/v1/projects/p-1/locations/europe-west4/endpoints/openapi"
        )
        assert api.anthropic_url("claude-x") == (
            origin + "/v1/projects/p-1/locations/europe-west4"
            "/publishers/anthropic/models/claude-x:rawPredict"
        )
        assert api.anthropic_url("claude-x", stream=True).endswith(":streamRawPredict")


def test_vertex_chat_with_a_refreshed_token(
    fake: FakeGoogle, api: FakeOpenAI, tmp_path: Path
) -> None:
    token = _refresh(fake, fake.write_authorized_user(tmp_path / "u.json")).json()
    with _vertex(api, token["access_token"]) as client:
        chat = client.chat.completions.create(model="google/gemini-2.5-flash", messages=CHAT)
        assert chat.choices[0].message.content == "ok"
        assert chat.model == "google/gemini-2.5-flash"
        assert client.responses.create(model="m", input="hi").output_text == "ok"
    assert api.seen_tokens == [token["access_token"]] * 2
    assert [s.status for s in api.requests] == [200, 200]
    assert api.requests[0].path == (
        f"/v1/projects/{api.project}/locations/{api.location}/endpoints/openapi/chat/completions"
    )


def test_mint_issues_a_live_token_without_a_request(fake: FakeGoogle) -> None:
    token = fake.mint("bob@example.com")
    assert fake.is_valid(token) and fake.who(token) == "bob@example.com"
    assert token in fake.issued and token in fake.secrets()
    assert fake.calls == {}


def test_streaming_chat_arrives_chunk_by_chunk(fake: FakeGoogle, api: FakeOpenAI) -> None:
    api.stream_chunks = 4
    api.stream_delay = 0.1
    arrivals: list[float] = []
    chunks = []
    with _vertex(api, fake.mint()) as client:
        stream = client.chat.completions.create(
            model="m", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
        assert stream.response.headers["content-type"] == "text/event-stream"
        assert "content-length" not in stream.response.headers
        with stream:
            for chunk in stream:
                arrivals.append(time.monotonic())
                chunks.append(chunk)
    assert len(chunks) == 5  # 4 content chunks + the usage chunk
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:4]) == "ok ok ok ok"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:4]] == [None, None, None, "stop"]
    assert chunks[4].choices == [] and chunks[4].usage is not None
    assert chunks[4].usage.completion_tokens == 4
    sent = [(i, at) for r, i, at in api.stream_log if r == 0]
    assert [i for i, _ in sent] == [0, 1, 2, 3, 4]
    times = [at for _, at in sent]
    assert arrivals[0] < times[-1], "the first chunk arrived only after the last was sent"
    assert all(a >= s for a, s in zip(arrivals, times, strict=True))
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(times))
    assert api.disconnects == 0 and api.requests[0].status == 200


def test_abandoned_stream_counts_a_disconnect(fake: FakeGoogle, api: FakeOpenAI) -> None:
    api.stream_chunks = 200
    api.stream_delay = 0.01
    with _vertex(api, fake.mint()) as client:
        with client.chat.completions.create(model="m", messages=CHAT, stream=True) as stream:
            first = next(iter(stream))
        assert first.choices[0].delta.content == "ok"
        wait_for(lambda: api.disconnects == 1, timeout=3)
        assert len(api.stream_log) < 200
        # the server is fine afterwards
        api.stream_chunks = 2
        again = client.chat.completions.create(model="m", messages=CHAT, stream=True)
        assert len(list(again)) == 2


def test_stop_interrupts_a_stream_sleep(fake: FakeGoogle) -> None:
    api = FakeOpenAI(fake).start()
    api.stream_delay = 30
    with _vertex(api, fake.mint()) as client:
        stream = client.chat.completions.create(model="m", messages=CHAT, stream=True)
        start = time.monotonic()
        api.stop()
        assert time.monotonic() - start < 2
        assert list(stream) == []  # the connection closed before the first chunk
    assert api.stream_log == [] and api.disconnects == 0


def test_embeddings(fake: FakeGoogle, api: FakeOpenAI) -> None:
    with _vertex(api, fake.mint()) as client:
        # the SDK asks for base64 unless told otherwise, and decodes it
        two = client.embeddings.create(model="text-embedding-005", input=["a", "b"])
        assert two.object == "list" and two.model == "text-embedding-005"
        assert [e.index for e in two.data] == [0, 1]
        assert all(len(e.embedding) == 8 for e in two.data)
        assert two.data[0].embedding != two.data[1].embedding
        floats = client.embeddings.create(
            model="e", input="a", encoding_format="float", dimensions=16
        )
        assert floats.data[0].embedding[:8] == two.data[0].embedding  # deterministic
        assert len(floats.data[0].embedding) == 16
        assert all(-1 <= x < 1 for x in floats.data[0].embedding)
        assert two.usage.prompt_tokens == 2
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="e", input=[])
    assert json.loads(api.requests[0].body)["encoding_format"] == "base64"


def test_unknown_routes_are_404(fake: FakeGoogle, api: FakeOpenAI) -> None:
    token = fake.mint()
    with _vertex(api, token) as client:
        with pytest.raises(openai.NotFoundError) as err:
            client.models.list()  # Vertex's openapi endpoint has no /models
        assert err.value.body == {
            "message": "Unknown path.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    wrong = [
        api.vertex_base_url.replace("fake-project", "other-project") + "/chat/completions",
        api.vertex_base_url.replace("us-central1", "europe-west4") + "/embeddings",
        f"{api.origin}/v1/projects/{api.project}/locations/{api.location}/chat/completions",
        api.anthropic_url("claude-x").replace("fake-project", "other"),
        api.vertex_base_url + "/completions",
    ]
    for url in wrong:
        status, _, body = _post(url, token, {"model": "m", "messages": CHAT})
        assert status == 404, url
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert api.seen_tokens == [] and api.rejected == 0
    assert [s.status for s in api.requests] == [404] * 6


def test_revoked_token_gets_401(fake: FakeGoogle, api: FakeOpenAI) -> None:
    token = fake.mint("carol@example.com")
    with _vertex(api, token) as client:
        assert client.chat.completions.create(model="m", messages=CHAT).choices
        fake.revoke(token)
        assert not fake.is_valid(token)
        assert fake.who(token) == "carol@example.com" and fake.expires_at(token) is not None
        with pytest.raises(openai.AuthenticationError) as err:
            client.chat.completions.create(model="m", messages=CHAT)
        assert err.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client.embeddings.create(model="e", input="a")
    assert _post(api.anthropic_url("claude-x"), token, ANTHROPIC_BODY)[0] == 401
    iam = requests.post(
        fake.impersonation_url("t@p.iam.gserviceaccount.com"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert iam.status_code == 401
    assert api.rejected == 3 and api.seen_tokens == [token]
    assert fake.is_valid(fake.mint()), "revoking one token leaves the others alone"


def test_expired_token_gets_401_on_every_route(fake: FakeGoogle, api: FakeOpenAI) -> None:
    fake.lifetime = 0.2
    token = fake.mint()
    time.sleep(1.05)  # expires_in is rounded up to whole seconds
    with _vertex(api, token) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="m", messages=CHAT, stream=True)
        with pytest.raises(openai.AuthenticationError):
            client.embeddings.create(model="e", input="a")
    url = api.anthropic_url("claude-x", stream=True)
    assert _post(url, token, ANTHROPIC_BODY)[0] == 401
    assert api.rejected == 3 and api.seen_tokens == [] and api.stream_log == []


def test_fail_next(fake: FakeGoogle, api: FakeOpenAI) -> None:
    with _vertex(api, fake.mint()) as client:
        api.fail_next(500)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="m", messages=CHAT)
        assert err.value.body == {
            "message": "Injected HTTP 500.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        api.fail_next(429, count=2)
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="m", messages=CHAT, stream=True)
        assert client.chat.completions.create(model="m", messages=CHAT).choices

        overloaded = {"error": {"code": 503, "message": "Overloaded.", "status": "UNAVAILABLE"}}
        api.fail_next(503, body=overloaded)
        api.fail_next(500)
        with pytest.raises(openai.APIStatusError) as err:
            client.embeddings.create(model="e", input="a")
        assert err.value.status_code == 503 and err.value.body == overloaded["error"]
        with pytest.raises(openai.NotFoundError):
            client.models.list()  # an unknown path does not use up the queued failure
        with pytest.raises(openai.InternalServerError):
            client.responses.create(model="m", input="hi")

        api.fail_next(502, count=5)
        api.clear_faults()
        assert client.chat.completions.create(model="m", messages=CHAT).choices
    # a failure is answered before the token is looked at
    api.fail_next(429)
    assert _post(api.anthropic_url("claude-x"), "ya29.bogus", ANTHROPIC_BODY)[0] == 429
    assert api.rejected == 0
    statuses = [s.status for s in api.requests]
    assert statuses == [500, 429, 429, 200, 503, 404, 500, 200, 429]
    assert len(api.seen_tokens) == 2


def test_requests_records_what_it_saw(fake: FakeGoogle, api: FakeOpenAI) -> None:
    token = fake.mint()
    with _vertex(api, token) as client:
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "secret prompt"}],
            extra_headers={"X-Custom": "custom-header-value"},
            extra_query={"trace": "abc"},
        )
        with pytest.raises(openai.AuthenticationError):
            client.with_options(api_key="ya29.wrong").embeddings.create(model="e", input="x")
    ok, bad = api.requests
    assert ok.method == "POST"
    assert ok.path == (
        f"/v1/projects/{api.project}/locations/{api.location}"
        "/endpoints/openapi/chat/completions?trace=abc"
    )
    assert ok.headers["authorization"] == f"Bearer {token}"
    assert ok.headers["x-custom"] == "custom-header-value"
    assert all(k == k.lower() for k in ok.headers)
    assert ok.json()["messages"][0]["content"] == "secret prompt"
    assert ok.token == token and ok.status == 200
    assert bad.token == "ya29.wrong" and bad.status == 401
    assert bad.path.endswith("/endpoints/openapi/embeddings")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.status = 500  # type: ignore[misc]

    text = repr(api.requests) + str(ok)
    assert repr(ok) == (
        "Seen(method='POST', path='/v1/projects/fake-project/locations/us-central1"
        "/endpoints/openapi/chat/completions?…', status=200)"
    )
    for leak in (token, "ya29.wrong", "secret prompt", "custom-header-value", "abc"):
        assert leak not in text


def test_anthropic_raw_predict(fake: FakeGoogle, api: FakeOpenAI) -> None:
    token = fake.mint()
    status, headers, body = _post(
        api.anthropic_url("claude-sonnet-4@20250514"), token, ANTHROPIC_BODY
    )
    assert status == 200 and headers["content-type"] == "application/json"
    message = json.loads(body)
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == "claude-sonnet-4@20250514"
    assert message["content"] == [{"type": "text", "text": "ok"}]
    assert message["stop_reason"] == "end_turn"
    assert set(message["usage"]) >= {"input_tokens", "output_tokens"}

    no_version = {k: v for k, v in ANTHROPIC_BODY.items() if k != "anthropic_version"}
    status, _, body = _post(api.anthropic_url("claude-x"), token, no_version)
    assert status == 400
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "anthropic_version: Field required"},
    }
    assert _post(api.anthropic_url("claude-x"), "ya29.nope", ANTHROPIC_BODY)[0] == 401
    assert [s.status for s in api.requests] == [200, 400, 401]
    assert api.requests[0].token == token


def test_anthropic_stream_raw_predict(fake: FakeGoogle, api: FakeOpenAI) -> None:
    api.stream_chunks = 3
    api.stream_delay = 0.02
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        path = api.anthropic_url("claude-x", stream=True).removeprefix(api.origin)
        conn.request(
            "POST",
            path,
            body=json.dumps({**ANTHROPIC_BODY, "stream": True}),
            headers={"Authorization": f"Bearer {fake.mint()}"},
        )
        r = conn.getresponse()
        assert r.status == 200 and r.version == 10
        assert r.getheader("Content-Type") == "text/event-stream"
        assert r.getheader("Content-Length") is None
        events = _sse_events(r.read())
    finally:
        conn.close()
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    assert events[0][1]["message"]["model"] == "claude-x"
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == (
        "ok ok ok"
    )
    assert events[6][1]["delta"]["stop_reason"] == "end_turn"
    assert [i for _, i, _ in api.stream_log] == list(range(8))
    # rawPredict with "stream": true streams too
    status, headers, body = _post(
        api.anthropic_url("claude-x"), fake.mint(), {**ANTHROPIC_BODY, "stream": True}
    )
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert _sse_events(body)[-1][0] == "message_stop"


GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_gemini_generate_content(fake: FakeGoogle, api: FakeOpenAI) -> None:
    token = fake.mint()
    assert api.gemini_url("gemini-x") == (
        f"{api.origin}/v1beta1/projects/{api.project}/locations/{api.location}"
        "/publishers/google/models/gemini-x:generateContent"
    )
    for version in ("v1beta1", "v1"):
        status, headers, body = _post(
            api.gemini_url("gemini-2.5-flash", version=version), token, GEMINI_BODY
        )
        assert status == 200 and headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert answer["candidates"][0]["content"] == {"role": "model", "parts": [{"text": "ok"}]}
        assert answer["candidates"][0]["finishReason"] == "STOP"
        assert answer["modelVersion"] == "gemini-2.5-flash"
    status, _, body = _post(api.gemini_url("gemini-x"), token, {"contents": []})
    assert status == 400
    assert json.loads(body)["error"]["status"] == "INVALID_ARGUMENT"
    other = api.gemini_url("gemini-x").replace(api.project, "other-project")
    assert _post(other, token, GEMINI_BODY)[0] == 404
    assert _post(api.gemini_url("gemini-x"), "ya29.nope", GEMINI_BODY)[0] == 401
    fake.revoke(token)
    assert _post(api.gemini_url("gemini-x"), token, GEMINI_BODY)[0] == 401
    assert [s.status for s in api.requests] == [200, 200, 400, 404, 401, 401]
    assert api.rejected == 2 and api.seen_tokens == [token] * 3
    assert api.requests[0].json() == GEMINI_BODY
    assert api.requests[0].path.startswith("/v1beta1/projects/")


def test_gemini_stream_generate_content(fake: FakeGoogle, api: FakeOpenAI) -> None:
    api.stream_chunks = 3
    status, headers, body = _post(api.gemini_url("gemini-x", stream=True), fake.mint(), GEMINI_BODY)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = [data for _, data in _sse_events(body)]
    assert len(events) == 3
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == (
        "ok ok ok"
    )
    assert [e["candidates"][0].get("finishReason") for e in events] == [None, None, "STOP"]
    assert api.requests[0].path.endswith(":streamGenerateContent?alt=sse")


def test_chunked_request_body(fake: FakeGoogle, api: FakeOpenAI) -> None:
    payload = json.dumps({"model": "chunked-model", "messages": CHAT}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request(
            "POST",
            api.vertex_base_url.removeprefix(api.origin) + "/chat/completions",
            body=iter([payload[:10], payload[10:]]),
            headers={"Authorization": f"Bearer {fake.mint()}"},
            encode_chunked=True,
        )
        r = conn.getresponse()
        assert r.status == 200
        assert json.loads(r.read())["model"] == "chunked-model"
    finally:
        conn.close()
    assert api.requests[0].body == payload
    assert api.requests[0].headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("keep_alive", [False, True])
def test_keep_alive_is_opt_in(fake: FakeGoogle, keep_alive: bool) -> None:
    """1. Two chats, then a stream, on one HTTP/1.1 connection.
    2. With keep_alive, the chats share the connection and the stream closes it (its body
       ends with the connection); without, the first answer closes it."""
    path = "/v1/chat/completions"
    with FakeOpenAI(fake, keep_alive=keep_alive) as api:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
        try:
            headers = {"Authorization": f"Bearer {fake.mint()}"}
            statuses, sockets = [], []
            for stream in (False, False, True):
                body = json.dumps({"model": "m", "messages": CHAT, "stream": stream})
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                sockets.append(conn.sock)
                statuses.append((r.status, r.getheader("Connection")))
                r.read()
                if not keep_alive:
                    break
        finally:
            conn.close()
    if keep_alive:
        assert statuses == [(200, None), (200, None), (200, "close")]
        assert sockets[0] is sockets[1] and sockets[0] is not None
    else:
        assert statuses == [(200, None)]
        assert r.version == 10  # HTTP/1.0: the connection ends with the answer


def test_burst_of_concurrent_connections(fake: FakeGoogle, api: FakeOpenAI) -> None:
    """300 connections opened at once are all queued (listen backlog) and answered."""
    n = 300
    body = json.dumps({"model": "m", "messages": CHAT}).encode()
    path = api.vertex_base_url.removeprefix(api.origin) + "/chat/completions"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {fake.mint()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    socks = [socket.socket() for _ in range(n)]
    try:
        with selectors.DefaultSelector() as sel:
            start = time.monotonic()
            for s in socks:
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", api.port))
                sel.register(s, selectors.EVENT_WRITE)
            pending = set(socks)
            while pending and time.monotonic() - start < 5:
                for key, _ in sel.select(timeout=0.5):
                    sel.unregister(key.fileobj)
                    pending.discard(key.fileobj)  # type: ignore[arg-type]
            connected = time.monotonic() - start
        assert not pending
        # a SYN dropped from a full backlog is retried after 1 s
        assert connected < 0.9, f"{n} connects took {connected:.2f} s"
        for s in socks:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            s.setblocking(True)
            s.settimeout(5)
            s.sendall(request)
        replies = []
        for s in socks:
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
            replies.append(b"".join(chunks))
    finally:
        for s in socks:
            s.close()
    assert all(r.startswith(b"HTTP/1.0 200 ") for r in replies)
    assert all(json.loads(r.partition(b"\r\n\r\n")[2])["choices"] for r in replies)
    assert len(api.requests) == n and api.rejected == 0


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
