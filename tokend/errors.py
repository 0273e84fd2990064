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
    └── TokenUnavailable(TokendError, LookupError) a client could not get a valid token

This module is stdlib-only: :mod:`tokend.client` imports it.
No message ever carries a token, refresh token or key.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CredentialsError",
    "RefreshError",
    "TokenUnavailable",
    "TokendError",
    "UnsafePathError",
]


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

    def __init__(self, message: str, *, reason: str = "reauth_required") -> None:
        super().__init__(message)
        self.reason = reason


class RefreshError(TokendError):
    """Fetching a token failed. ``retryable`` is true for transport errors, timeouts,
    5xx and 429: the kind of failure that backing off can outlast."""

    def __init__(self, message: str, *, retryable: bool, reason: str = "refresh_failed") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason


class TokenUnavailable(TokendError, LookupError):
    """No valid token could be had. The message says what to do."""
