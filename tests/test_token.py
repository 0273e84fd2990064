"""The Token value type: renderings and redaction."""

from __future__ import annotations

import json
import subprocess

from tokend.timefmt import format_time, parse_time
from tokend.token import Token, token_from_dict

SECRET = "ya29.secret-value-never-in-repr"
T0 = 1_800_000_000.0


def make(**kw: object) -> Token:
    base: dict[str, object] = dict(
        value=SECRET,
        expires_at=T0 + 3599.7,
        issued_at=T0,
        profile="default",
        account="me@example.com",
        scopes=("https://www.googleapis.com/auth/cloud-platform",),
    )
    base.update(kw)
    return Token(**base)  # type: ignore[arg-type]


def test_repr_and_str_show_a_fingerprint_not_the_value() -> None:
    tok = make()
    for text in (repr(tok), str(tok), f"{tok}", repr([tok])):
        assert SECRET not in text
        assert tok.fingerprint in text
    assert make(value="other").fingerprint != tok.fingerprint


def test_raw_is_the_token_without_newline() -> None:
    assert make().render("raw", T0) == SECRET.encode()


def test_json_matches_the_socket_api_object() -> None:
    data = json.loads(make().render("json", T0 + 10))
    assert data == {
        "access_token": SECRET,
        "token_type": "Bearer",
        "expires_at": format_time(T0 + 3599),
        "expires_in": 3589,
        "profile": "default",
        "account": "me@example.com",
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
    }
    assert data["expires_at"].endswith("Z")
    back = token_from_dict(data, T0)
    assert back.value == SECRET
    assert back.expires_at == T0 + 3599  # rounded down: never claims more life


def test_env_is_valid_for_sh_systemd_and_docker() -> None:
    text = make().render("env", T0, base_url="https://h/v1/p").decode()
    assert text == (
        f"OPENAI_API_KEY={SECRET}\nOPENAI_BASE_URL=https://h/v1/p\n"
        f"TOKEND_EXPIRES_AT={int(T0 + 3599.7)}\n"
    )
    assert "OPENAI_BASE_URL" not in make().render("env", T0).decode()
    out = subprocess.run(
        ["sh", "-c", 'set -a; . "$0"; printf %s "$OPENAI_API_KEY"', "/dev/stdin"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == SECRET


def test_time_format_round_trips() -> None:
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert parse_time(format_time(T0)) == T0
