"""The ``Token`` value type and its three file renderings (raw, json, env).

stdlib-only, like :mod:`tokend.errors`: the client parses what this module writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tokend.timefmt import format_time, parse_time

__all__ = ["Token", "token_from_dict"]


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and what is known about it.

    ``value`` never appears in ``repr``/``str``: they show :attr:`fingerprint`, a short
    hash that is enough to tell two tokens apart in logs.
    """

    value: str = field(repr=False)
    expires_at: float  #: epoch seconds
    issued_at: float  #: epoch seconds, when tokend received it
    profile: str = "default"
    account: str = ""  #: email of the identity, "" where google-auth does not know it
    scopes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Token(fp={self.fingerprint}, profile={self.profile!r}, "
            f"account={self.account!r}, expires_at={format_time(self.expires_at)})"
        )

    __str__ = __repr__

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the token's SHA-256: safe to log, useless to an attacker."""
        return hashlib.sha256(self.value.encode()).hexdigest()[:12]

    @property
    def lifetime(self) -> float:
        """Seconds between receipt and expiry as issued."""
        return max(0.0, self.expires_at - self.issued_at)

    def expires_in(self, now: float) -> float:
        return self.expires_at - now

    def is_valid(self, now: float, min_valid: float = 0.0) -> bool:
        """True while more than ``min_valid`` seconds remain."""
        return self.expires_at - now > min_valid

    # -- renderings -----------------------------------------------------------------

    def as_dict(self, now: float) -> dict[str, Any]:
        """The ``/v1/token`` object (also the ``json`` file format)."""
        return {
            "access_token": self.value,
            "token_type": "Bearer",
            "expires_at": format_time(self.expires_at),
            "expires_in": max(0, int(self.expires_at - now)),
            "profile": self.profile,
            "account": self.account,
            "scopes": list(self.scopes),
        }

    def render(self, fmt: str, now: float, base_url: str = "") -> bytes:
        """Bytes of one file format: ``raw``, ``json`` or ``env``."""
        if fmt == "raw":
            return self.value.encode()
        if fmt == "json":
            return (json.dumps(self.as_dict(now), indent=2) + "\n").encode()
        if fmt == "env":
            # No quotes and no spaces: the one dialect that systemd EnvironmentFile=,
            # docker --env-file and `set -a; . file` all read the same way.
            # TOKEND_EXPIRES_AT is epoch seconds so a POSIX shell can compare it to
            # `date +%s` without parsing dates.
            lines = [f"OPENAI_API_KEY={self.value}"]
            if base_url:
                lines.append(f"OPENAI_BASE_URL={base_url}")
            lines.append(f"TOKEND_EXPIRES_AT={int(self.expires_at)}")
            return ("\n".join(lines) + "\n").encode()
        raise ValueError(f"unknown format {fmt!r}: must be raw, json or env")


def token_from_dict(data: dict[str, Any], now: float) -> Token:
    """Parse a ``/v1/token`` object (or ``json`` sink) back into a :class:`Token`.

    Raises ``ValueError``/``KeyError``/``TypeError`` on a malformed object.
    """
    value = data["access_token"]
    if not isinstance(value, str) or not value:
        raise ValueError("access_token must be a non-empty string")
    scopes = data.get("scopes") or ()
    return Token(
        value=value,
        expires_at=parse_time(str(data["expires_at"])),
        issued_at=now,
        profile=str(data.get("profile") or "default"),
        account=str(data.get("account") or ""),
        scopes=tuple(str(s) for s in scopes),
    )
