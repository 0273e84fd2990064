"""The Token value type: renderings, redaction, the two clocks, untrusted input."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokend import wire
from tokend.timefmt import format_time, parse_time
from tokend.token import Token, token_from_dict

SECRET = "ya29.secret-value-never-in-repr"
T0 = 1_800_000_000.0  # wall clock
S0 = 5_000.0  # steady clock, at the same instant


def make(**kw: object) -> Token:
    base: dict[str, object] = dict(
        profile="default",
        account="me@example.com",
        scopes=("https://www.googleapis.com/auth/cloud-platform",),
        credentials_id="0123456789abcdef",
    )
    base.update(kw)
    return Token.received(SECRET, 3599.7, wall=T0 + 0.25, steady=S0, **base)  # type: ignore[arg-type]


def test_repr_and_str_show_a_fingerprint_not_the_value() -> None:
    tok = make()
    for text in (repr(tok), str(tok), f"{tok}", repr([tok])):
        assert SECRET not in text
        assert tok.fingerprint in text
    assert Token.received("other", 10, wall=T0, steady=S0).fingerprint != tok.fingerprint


def test_received_states_whole_seconds_and_the_deadline_is_that_instant() -> None:
    """The files can state only whole seconds: the expiry is rounded down, and the
    deadline every check uses is the stated instant, so no file outlives what it says."""
    tok = make()
    assert tok.expires_at == T0 + 3599  # floor(T0 + 0.25 + 3599.7)
    assert tok.deadline == S0 + (tok.expires_at - (T0 + 0.25))
    assert tok.lifetime == pytest.approx(3598.75)
    assert tok.is_valid(tok.deadline - 0.01) and not tok.is_valid(tok.deadline)


@given(
    st.floats(min_value=-7200, max_value=7200, allow_nan=False),
    st.floats(min_value=0, max_value=3000, allow_nan=False),
)
def test_rebased_after_a_step_states_the_truth_rounded_down(step: float, elapsed: float) -> None:
    tok = make()
    steady = S0 + elapsed
    wall = T0 + 0.25 + elapsed + step  # the wall clock was moved by `step`
    back = tok.rebased(wall - steady)
    truth = wall + (tok.deadline - steady)  # when it really expires, in today's wall terms
    assert back.expires_at == int(back.expires_at)
    assert truth - 1 < back.expires_at <= truth + 1e-3
    assert tok.deadline - 1 < back.deadline <= tok.deadline + 1e-3
    assert back.expires_at - wall == pytest.approx(back.deadline - steady, abs=1e-6)
    assert back.value == tok.value and back.fingerprint == tok.fingerprint


def test_raw_is_the_token_without_newline() -> None:
    assert make().render("raw", S0) == SECRET.encode()


def test_json_matches_the_socket_api_object() -> None:
    tok = make()
    data = json.loads(tok.render("json", S0 + 10))
    assert data == {
        "access_token": SECRET,
        "token_type": "Bearer",
        "expires_at": format_time(T0 + 3599),
        "expires_in": 3588,
        "lifetime": 3598,
        "profile": "default",
        "account": "me@example.com",
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        "credentials_id": "0123456789abcdef",
    }
    assert data["expires_at"].endswith("Z")
    back = token_from_dict(data, wall=T0 + 10.25, steady=S0 + 10)
    assert back.value == SECRET and back.credentials_id == "0123456789abcdef"
    assert back.expires_at == T0 + 3599
    assert back.deadline == pytest.approx(tok.deadline)
    assert back.lifetime == pytest.approx(3598, abs=1)  # issued follows from it


def test_env_is_valid_for_sh_systemd_and_docker() -> None:
    text = make().render("env", S0, base_url="https://h/v1/p").decode()
    assert text == (
        f"OPENAI_API_KEY={SECRET}\nOPENAI_BASE_URL=https://h/v1/p\n"
        f"TOKEND_EXPIRES_AT={int(T0 + 3599)}\nTOKEND_LIFETIME=3598\n"
    )
    assert "OPENAI_BASE_URL" not in make().render("env", S0).decode()
    out = subprocess.run(
        ["sh", "-c", 'set -a; . "$0"; printf %s "$OPENAI_API_KEY"', "/dev/stdin"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == SECRET


@pytest.mark.parametrize(
    ("lifetime", "wanted"), [(3600, 60), (240, 60), (20, 5), (8, 2), (0, 60), (-5, 60)]
)
def test_the_default_min_valid_follows_short_lifetimes(lifetime: float, wanted: float) -> None:
    """A token living 8 s can never have 60 s left: clients ask for a quarter of it."""
    assert wire.default_min_valid(wire.stated_lifetime({"lifetime": lifetime})) == wanted


HOSTILE = [
    "",
    "ya29.$(touch /tmp/pwned)",
    "ya29.a\nLD_PRELOAD=/tmp/evil.so",
    "ya29.a b",
    "ya29.a'b",
    "ya29.\u00e9",
    "====",
    "a" * (wire.MAX_TOKEN_LENGTH + 1),
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_only_token68_tokens_of_bounded_length_are_tokens(value: str) -> None:
    with pytest.raises(ValueError) as info:
        wire.check_token(value)
    assert value not in str(info.value) or not value


def test_real_token_shapes_pass() -> None:
    for value in ("ya29.a0AfB_byC-12_x~y+z/w==", "a" * wire.MAX_TOKEN_LENGTH, "abc="):
        assert wire.check_token(value) == value


@pytest.mark.parametrize(
    ("expires_in", "ok"), [(0.5, False), (-10, False), (2.0, True), (43200, True), (43300, False)]
)
def test_a_file_must_state_a_plausible_remaining_life(expires_in: float, ok: bool) -> None:
    data = json.loads(make().render("json", S0))
    data["expires_at"] = format_time(T0 + expires_in)
    if ok:
        assert token_from_dict(data, wall=T0, steady=S0).deadline == S0 + int(expires_in)
    else:
        with pytest.raises(ValueError):
            token_from_dict(data, wall=T0, steady=S0)


@pytest.mark.parametrize(
    "data",
    [[], {"access_token": "a b", "expires_at": "2027-01-01T00:00:00Z"}, {"access_token": "x"}],
)
def test_a_malformed_file_is_no_token(data: object) -> None:
    with pytest.raises(ValueError):
        token_from_dict(data, wall=T0, steady=S0)


def test_time_format_round_trips() -> None:
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert parse_time(format_time(T0)) == T0


def test_a_step_by_whole_seconds_keeps_the_stated_second() -> None:
    """Float noise must not cost a whole second at each step (found by the step test)."""
    tok = make()
    for step in (60.0, -60.0, 3600.0, -0.0):
        wall = T0 + 0.25 + 7.0 + step
        back = tok.rebased(wall - (S0 + 7.0))
        assert back.expires_at == tok.expires_at + step
        assert back.deadline == pytest.approx(tok.deadline, abs=1e-3)
