"""The shared contracts: the /v1/token object and Vertex AI's base URL, built once for
daemon and client."""

from __future__ import annotations

import pytest

from tokend import wire
from tokend.config import OpenAIConfig


def test_the_token_object_round_trips() -> None:
    obj = wire.token_object(
        "ya29.abc",
        expires_at=1_800_000_000.9,
        expires_in=59.9,
        profile="p",
        account="a@b.c",
        scopes=("s1", "s2"),
        credentials_id="00ff",
    )
    assert obj["expires_at"] == "2027-01-15T08:00:00Z" and obj["expires_in"] == 59
    assert wire.read_token_object(obj) == (
        "ya29.abc",
        1_800_000_000.0,
        "p",
        "a@b.c",
        ("s1", "s2"),
        "00ff",
    )


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"expires_at": "2027-01-01T00:00:00Z"},
        {"access_token": "ya29.sEcReT x", "expires_at": "2027-01-01T00:00:00Z"},
        {"access_token": "ya29.a", "expires_at": "soon"},
        {"access_token": "ya29.a", "expires_at": "2027-01-01T00:00:00Z", "scopes": "s"},
    ],
)
def test_a_bad_object_is_refused_without_quoting_it(data: object) -> None:
    with pytest.raises(ValueError) as info:
        wire.read_token_object(data)
    assert "sEcReT" not in str(info.value)


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("us-central1", "us-central1-aiplatform.googleapis.com"),
        ("global", "aiplatform.googleapis.com"),
    ],
)
def test_one_vertex_url_for_daemon_and_client(location: str, host: str) -> None:
    url = f"https://{host}/v1/projects/my-proj/locations/{location}/endpoints/openapi"
    assert wire.vertex_base_url("my-proj", location) == url
    assert OpenAIConfig(project="my-proj", location=location).base_url == url


def test_unvalidated_parts_are_quoted_and_an_api_endpoint_replaces_the_origin() -> None:
    assert wire.vertex_base_url("p/../x", "us/x", "e?y") == (
        "https://us/x-aiplatform.googleapis.com/v1/projects/p%2F..%2Fx/locations/us%2Fx"
        "/endpoints/e%3Fy"
    )
    assert wire.vertex_base_url("p", "l", api_endpoint="http://127.0.0.1:9/") == (
        "http://127.0.0.1:9/v1/projects/p/locations/l/endpoints/openapi"
    )
