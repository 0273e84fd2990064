"""The contracts daemon and client share, defined once: the ``/v1/token`` object (also
the ``json`` file), what a token may look like, and Vertex AI's OpenAI base URL.

stdlib only (:mod:`tokend.client` imports it) and cheap to import: no :mod:`re`, no
:mod:`typing` at run time.

A token reaches files that are sourced by shells (``set -a; . openai.env``) and read by
systemd's ``EnvironmentFile=``, so one holding ``$(...)``, a space or a newline would run
a command or inject variables there. Bearer tokens are ``token68`` (RFC 6750 section
2.1): letters, digits and ``-._~+/``, then optional ``=`` padding. Anything else, or
longer than :data:`MAX_TOKEN_LENGTH`, is not a token.
"""

from __future__ import annotations

from tokend.timefmt import format_time, parse_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_MIN_VALID",
    "HELPER_MIN_VALID",
    "MAX_LIFETIME",
    "MAX_TOKEN_LENGTH",
    "MIN_LIFETIME",
    "check_audience",
    "check_lifetime",
    "check_token",
    "default_min_valid",
    "id_token_object",
    "read_id_token_object",
    "read_token_object",
    "stated_lifetime",
    "token_object",
    "vertex_base_url",
    "vertex_origin",
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


# -- the /v1/token object ---------------------------------------------------------------


def token_object(
    value: str,
    *,
    expires_at: float,
    expires_in: float,
    profile: str,
    account: str,
    scopes: tuple[str, ...],
    credentials_id: str = "",
    lifetime: float = 0.0,
) -> dict[str, Any]:
    """The ``/v1/token`` answer, which is also the ``json`` file and what ``tokend token
    --format json`` prints. ``expires_at`` is written in whole seconds, rounded down;
    ``lifetime`` is how long the token was issued for (0: unknown)."""
    return {
        "access_token": value,
        "token_type": "Bearer",
        "expires_at": format_time(expires_at),
        "expires_in": max(0, int(expires_in)),
        "lifetime": max(0, int(lifetime)),
        "profile": profile,
        "account": account,
        "scopes": list(scopes),
        "credentials_id": credentials_id,
    }


def _token_and_expiry(data: object, key: str) -> tuple[dict[str, Any], str, float]:
    """A token object, the checked token under ``key`` and its ``expires_at`` instant."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    value = check_token(data.get(key))
    try:
        return data, value, parse_time(str(data["expires_at"]))
    except (KeyError, ValueError):
        raise ValueError("expires_at is missing or not a time") from None


def read_token_object(data: object) -> tuple[str, float, str, str, tuple[str, ...], str]:
    """``(access_token, expires_at, profile, account, scopes, credentials_id)`` from a
    ``/v1/token`` object, trusting nothing: the token must pass :func:`check_token`.

    Raises:
        ValueError: not such an object (the message never holds the token).
    """
    data, value, expires_at = _token_and_expiry(data, "access_token")
    scopes = data.get("scopes") or ()
    if not isinstance(scopes, list | tuple):
        raise ValueError("scopes is not a list")
    return (
        value,
        expires_at,
        str(data.get("profile") or "default"),
        str(data.get("account") or ""),
        tuple(str(s) for s in scopes),
        str(data.get("credentials_id") or ""),
    )


# -- ID tokens ---------------------------------------------------------------------------

#: An audience is at most this long: Cloud Run URLs and IAP client ids are ~100.
MAX_AUDIENCE_LENGTH = 512
#: What an audience may hold: enough for https URLs (with a path) and OAuth client ids
#: (``123-abc.apps.googleusercontent.com``); no spaces, quotes, ``?``, ``#``, ``&``,
#: ``$`` or control characters: it ends up in logs, status and metadata paths.
_AUDIENCE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/@%+=,")


def check_audience(value: object) -> str:
    """``value`` if it is an audience tokend mints ID tokens for, else
    :class:`ValueError` saying what is allowed: an absolute ``https://`` URL with a
    host (Cloud Run, IAP-protected apps, Cloud Functions), or a client id / custom
    audience string (no ``://``) starting with a letter or digit; at most
    :data:`MAX_AUDIENCE_LENGTH` characters of letters, digits and ``-._~:/@%+=,``."""
    if not isinstance(value, str) or not value:
        raise ValueError(
            "audience is missing; give the service's URL, e.g. https://my-service-abc-uc.a.run.app"
        )
    if len(value) > MAX_AUDIENCE_LENGTH:
        raise ValueError(
            f"audience is {len(value)} characters long (at most {MAX_AUDIENCE_LENGTH})"
        )
    if not _AUDIENCE.issuperset(value):
        raise ValueError(
            "audience holds characters an audience cannot have (allowed: letters, digits "
            "and -._~:/@%+=,)"
        )
    if "://" in value:
        scheme, _, rest = value.partition("://")
        host = rest.split("/", 1)[0]
        if scheme != "https" or not host or "@" in host or host.startswith((".", "-", ":")):
            raise ValueError(
                "audience must be an absolute https:// URL with a host (e.g. "
                "https://my-service-abc-uc.a.run.app) or a client id"
            )
    elif not value[0].isalnum():
        raise ValueError("audience must start with a letter or digit, or be an https:// URL")
    return value


def id_token_object(
    value: str,
    *,
    expires_at: float,
    expires_in: float,
    lifetime: float,
    profile: str,
    account: str,
    audience: str,
) -> dict[str, Any]:
    """The ``/v1/id_token`` answer (also an ID token's ``json`` file and ``tokend
    id-token --format json``): like the token object, with ``id_token`` and
    ``audience`` instead of ``access_token`` and ``scopes``."""
    return {
        "id_token": value,
        "token_type": "Bearer",
        "expires_at": format_time(expires_at),
        "expires_in": max(0, int(expires_in)),
        "lifetime": max(0, int(lifetime)),
        "profile": profile,
        "account": account,
        "audience": audience,
    }


def read_id_token_object(data: object) -> tuple[str, float, str, str, str]:
    """``(id_token, expires_at, profile, account, audience)`` from a ``/v1/id_token``
    object, trusting nothing: the token must pass :func:`check_token`.

    Raises:
        ValueError: not such an object (the message never holds the token).
    """
    data, value, expires_at = _token_and_expiry(data, "id_token")
    return (
        value,
        expires_at,
        str(data.get("profile") or "default"),
        str(data.get("account") or ""),
        str(data.get("audience") or ""),
    )


def stated_lifetime(data: object) -> float:
    """The ``lifetime`` a token object states, if it is plausible, else 0 (unknown)."""
    value = data.get("lifetime") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if MIN_LIFETIME <= value <= MAX_LIFETIME else 0.0


#: The ``min_valid`` clients ask for unless told: a token must last this long...
DEFAULT_MIN_VALID = 60.0


#: ``tokend token``'s default, for the tools that run it as a key helper and keep its
#: answer: longer than Claude Code's 5 minutes and a usual Codex refresh_interval_ms.
HELPER_MIN_VALID = 600.0


def default_min_valid(lifetime: float, most: float = DEFAULT_MIN_VALID) -> float:
    """``most`` (by default DEFAULT_MIN_VALID) or a quarter of its lifetime, when that is
    shorter: a token that lives 20 s (tests, demos, a short-lived service account token)
    would otherwise never be good enough, and every call would force a refresh."""
    if lifetime > 0:
        return min(most, lifetime / 4)
    return most


# -- Vertex AI ------------------------------------------------------------------------


def vertex_origin(location: str, api_endpoint: str = "") -> str:
    """``https://{location}-aiplatform.googleapis.com`` (``aiplatform.googleapis.com``
    for location ``global``), or ``api_endpoint`` when one is configured."""
    if api_endpoint:
        return api_endpoint.rstrip("/")
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def vertex_base_url(
    project: str, location: str, endpoint: str = "openapi", api_endpoint: str = ""
) -> str:
    """Vertex AI's OpenAI-compatible base URL for a project and location. The parts are
    percent-quoted (the client reads them unvalidated from the config file; validated
    values come out unchanged)."""
    from urllib.parse import quote  # only here: most callers of this module never need it

    return (
        f"{vertex_origin(location, api_endpoint)}/v1/projects/{quote(project, safe=':.')}"
        f"/locations/{quote(location, safe='')}/endpoints/{quote(endpoint, safe='')}"
    )
