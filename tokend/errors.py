"""Every error tokend raises on purpose.

::

    TokendError
    ├── ConfigError(TokendError, ValueError)       bad config file, key or value (exit 2)
    ├── UnsafePathError(TokendError, PermissionError)
    │                                              a path we would write to is not ours or
    │                                              too open; the message carries the fix
    ├── CredentialsError(TokendError)              credentials missing, corrupt or revoked:
    │                                              a person has to act (not retried on a timer)
    ├── RefreshError(TokendError)                  a refresh failed; ``retryable`` says whether
    │                                              backing off and trying again can help
    ├── ServiceError(TokendError, RuntimeError)    a service manager (systemd, launchd) is
    │                                              missing or refused; the message has the fix
    └── TokenUnavailable(TokendError, LookupError) a client could not get a valid token

``CredentialsError`` and ``RefreshError`` carry a ``reason``, one of :data:`REASONS`: the
``error`` field of the socket API's 503 and ``last_error_reason`` in status.

This module is stdlib-only: :mod:`tokend.client` imports it.
No message ever carries a token, refresh token or key.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    Reason = Literal[
        "reauth_required",
        "credentials_missing",
        "credentials_invalid",
        "unavailable",
        "transport_error",
        "timeout",
        "bad_response",
        "abandoned",
        "refresh_failed",
        "internal_error",
        "sink_write_failed",
        "id_token_unsupported",
    ]

__all__ = [
    "ADVICE",
    "LOGIN",
    "REASONS",
    "START_DAEMON",
    "ConfigError",
    "CredentialsError",
    "RefreshError",
    "ServiceError",
    "TokenUnavailable",
    "TokendError",
    "UnsafePathError",
]

#: Why a profile has no fresh token, the closed set (``Reason``), each with its meaning.
REASONS: dict[str, str] = {
    # A person must act (CredentialsError): tokend waits for the file to change.
    "reauth_required": "the grant was revoked or expired: log in again",
    "credentials_missing": "the credentials file does not exist",
    "credentials_invalid": "the credentials file cannot be used as it is",
    # Retried with backoff (RefreshError).
    "unavailable": "the token endpoint answered 5xx, 408 or 429",
    "transport_error": "the token endpoint could not be reached",
    "timeout": "no answer within TOKEND_TIMEOUT",
    "bad_response": "an answer tokend will not use (no token, a malformed one, an "
    "implausible lifetime)",
    "abandoned": "the fetch was given up by its caller (a suspend, a deadline)",
    "refresh_failed": "google-auth failed in another way",
    "internal_error": "a bug in tokend (logged with its traceback)",
    # The token is fine, its files are not.
    "sink_write_failed": "a token file could not be written",
    # A person must act (CredentialsError): these credentials cannot mint ID tokens.
    "id_token_unsupported": "user or external-account credentials cannot mint ID tokens "
    "for an audience: set impersonate to a service account",
}


#: What a person runs: the advice tokend gives, worded once for every front end.
LOGIN = "run `gcloud auth application-default login`"
START_DAEMON = "start it with `systemctl --user start tokend` (or run `tokend run`)"

#: The fix for each reason a person must act on, when the message has none of its own.
ADVICE: dict[str, str] = {
    "reauth_required": f"{LOGIN}; tokend notices the new credentials at once",
    "credentials_missing": "create the credentials (for ADC: "
    "`gcloud auth application-default login`) or fix the profile's `credentials` path",
    "credentials_invalid": "replace the credentials file (for ADC: "
    "`gcloud auth application-default login`)",
    "id_token_unsupported": 'set impersonate = "SA@PROJECT.iam.gserviceaccount.com" in the '
    "profile (your account needs roles/iam.serviceAccountTokenCreator on it)",
}


def _checked(reason: str) -> str:
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}")  # a bug: every reason is listed
    return reason


class TokendError(Exception):
    """Base of every error tokend raises on purpose."""


class ConfigError(TokendError, ValueError):
    """The configuration is invalid. ``str()`` is one line naming file, key and fix."""


class UnsafePathError(TokendError, PermissionError):
    """A directory or file we would use is owned by someone else or open to others."""


class CredentialsError(TokendError):
    """Credentials cannot be used until a person acts (login again, fix the file).

    ``reason`` is a short machine-readable word (``reauth_required``,
    ``credentials_missing``, ``credentials_invalid``) for status and the socket API.
    """

    def __init__(self, message: str, *, reason: Reason = "reauth_required") -> None:
        super().__init__(message)
        self.reason = _checked(reason)


class RefreshError(TokendError):
    """Fetching a token failed. ``retryable`` is true for transport errors, timeouts,
    5xx and 429: the kind of failure that backing off can outlast."""

    def __init__(self, message: str, *, retryable: bool, reason: Reason = "refresh_failed") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = _checked(reason)


class ServiceError(TokendError, RuntimeError):
    """A service manager is missing or refused; the message says how to fix it."""


class TokenUnavailable(TokendError, LookupError):
    """No valid token could be had. The message says what to do."""
