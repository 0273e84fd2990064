"""What a token may look like on the wire, checked the same way by daemon and client.

stdlib only (:mod:`tokend.client` imports it) and cheap to import: no :mod:`re`.

A token reaches files that are sourced by shells (``set -a; . openai.env``) and read by
systemd's ``EnvironmentFile=``, so one holding ``$(...)``, a space or a newline would run
a command or inject variables there. Bearer tokens are ``token68`` (RFC 6750 section
2.1): letters, digits and ``-._~+/``, then optional ``=`` padding. Anything else, or
longer than :data:`MAX_TOKEN_LENGTH`, is not a token.
"""

from __future__ import annotations

__all__ = [
    "MAX_LIFETIME",
    "MAX_TOKEN_LENGTH",
    "MIN_LIFETIME",
    "check_lifetime",
    "check_token",
]

#: Google's access tokens are documented to stay under 2048 bytes; ID tokens (JWTs
#: with a few claims) are of the same order. Twice that leaves room and bounds memory.
MAX_TOKEN_LENGTH = 4096
#: The longest life Google grants an access token (service accounts with
#: ``constraints/iam.allowServiceAccountCredentialLifetimeExtension``), plus a minute
#: of clock skew between Google and us.
MAX_LIFETIME = 12 * 3600.0 + 60.0
#: A token with less left than this is dead on arrival: refreshing it would be a loop
#: of requests, not a schedule.
MIN_LIFETIME = 1.0

_TOKEN68 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")


def check_token(value: object) -> str:
    """``value`` if it is a token68 string of sane length, else :class:`ValueError`
    (whose message never contains the value)."""
    if not isinstance(value, str) or not value:
        raise ValueError("the token is missing or not a string")
    if len(value) > MAX_TOKEN_LENGTH:
        raise ValueError(f"the token is {len(value)} characters long (at most {MAX_TOKEN_LENGTH})")
    body = value.rstrip("=")
    if not body or not _TOKEN68.issuperset(body):
        raise ValueError("the token holds characters a bearer token cannot have")
    return value


def check_lifetime(seconds: float) -> float:
    """``seconds`` if it is a plausible remaining life for a token, else
    :class:`ValueError` saying why."""
    if not seconds >= MIN_LIFETIME:  # also NaN
        raise ValueError(f"the token expires in {seconds:.1f} s (at least {MIN_LIFETIME:g} s)")
    if seconds > MAX_LIFETIME:
        raise ValueError(
            f"the token claims to live {seconds / 3600:.1f} h, longer than Google issues (12 h)"
        )
    return seconds
