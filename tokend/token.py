"""The ``Token`` value type and its three file renderings (raw, json, env).

stdlib-only, like :mod:`tokend.errors`: the client parses what this module writes.

A token carries two expiries on purpose (see :mod:`tokend.clock`): ``deadline`` on the
steady clock, which every validity check uses, and ``expires_at`` on the wall clock,
which is what files and answers state. ``expires_at`` is always a whole second (the
precision the files carry) and ``deadline`` is that same instant: so a file is never
retired after the instant it states, and a reader judging it by its own ``expires_at``
never sees a published token as expired. When the wall clock steps, :meth:`rebased`
moves ``expires_at`` (and, by the rounding, ``deadline`` a fraction earlier, never
later) and the files are rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from tokend import wire
from tokend.timefmt import format_time

__all__ = ["Token", "token_from_dict"]

#: See :meth:`Token.rebased`.
REBASE_SLACK = 0.001


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and what is known about it.

    ``value`` never appears in ``repr``/``str``: they show :attr:`fingerprint`, a short
    hash that is enough to tell two tokens apart in logs. Build one with
    :meth:`received` (a fresh answer) or :func:`token_from_dict` (a file).
    """

    value: str = field(repr=False)
    expires_at: float  #: wall-clock epoch seconds, whole: what files and answers state
    deadline: float  #: the same instant on :func:`tokend.clock.steady`
    issued: float  #: :func:`tokend.clock.steady` when tokend received it
    profile: str = "default"
    account: str = ""  #: email of the identity, "" where google-auth does not know it
    scopes: tuple[str, ...] = ()
    #: Which credentials minted it (:attr:`tokend.source.Source.credentials_id`), so a
    #: restart can tell whether a token on disk belongs to the credentials configured now.
    credentials_id: str = ""
    #: An ID token's audience (its ``aud``); "" for an access token.
    audience: str = ""

    @classmethod
    def received(
        cls, value: str, expires_in: float, *, wall: float, steady: float, **fields: Any
    ) -> Token:
        """A token that arrived at ``wall``/``steady`` with ``expires_in`` seconds to
        live: ``expires_at`` is rounded down to the whole second (a token is never
        believed to live longer than it does)."""
        expires_at = float(math.floor(wall + expires_in))
        return cls(value, expires_at, steady + (expires_at - wall), steady, **fields)

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
        """Seconds between receipt and expiry."""
        return max(0.0, self.deadline - self.issued)

    def expires_in(self, steady: float) -> float:
        return self.deadline - steady

    def is_valid(self, steady: float, min_valid: float = 0.0) -> bool:
        """True while more than ``min_valid`` seconds remain."""
        return self.deadline - steady > min_valid

    def rebased(self, offset: float) -> Token:
        """This token with ``expires_at`` recomputed from ``offset``, the wall clock's
        offset to the steady clock now (:func:`tokend.clock.wall_offset`, after a step):
        still whole seconds, still equal to ``deadline``, which moves earlier by the
        rounding. (A step by whole seconds keeps the second: within a millisecond of
        one, ``exact`` is measurement noise.)"""
        exact = self.deadline + offset
        expires_at = float(math.floor(exact + REBASE_SLACK))
        return dataclasses.replace(
            self, expires_at=expires_at, deadline=self.deadline - (exact - expires_at)
        )

    # -- renderings -----------------------------------------------------------------

    def as_dict(self, steady: float) -> dict[str, Any]:
        """The ``/v1/token`` object (also the ``json`` file format); for an ID token,
        the ``/v1/id_token`` object."""
        if self.audience:
            return wire.id_token_object(
                self.value,
                expires_at=self.expires_at,
                expires_in=self.deadline - steady,
                lifetime=self.lifetime,
                profile=self.profile,
                account=self.account,
                audience=self.audience,
            )
        return wire.token_object(
            self.value,
            expires_at=self.expires_at,
            expires_in=self.deadline - steady,
            profile=self.profile,
            account=self.account,
            scopes=self.scopes,
            credentials_id=self.credentials_id,
            lifetime=self.lifetime,
        )

    def render(self, fmt: str, steady: float, base_url: str = "") -> bytes:
        """Bytes of one file format: ``raw``, ``json`` or ``env``."""
        if fmt == "raw":
            return self.value.encode()
        if fmt == "json":
            return (json.dumps(self.as_dict(steady), indent=2) + "\n").encode()
        if fmt == "env" and not self.audience:
            # No quotes and no spaces: the one dialect that systemd EnvironmentFile=,
            # docker --env-file and `set -a; . file` all read the same way (the value is
            # token68, checked on arrival, so it needs none).
            # TOKEND_EXPIRES_AT is epoch seconds so a POSIX shell can compare it to
            # `date +%s` without parsing dates.
            lines = [f"OPENAI_API_KEY={self.value}"]
            if base_url:
                lines.append(f"OPENAI_BASE_URL={base_url}")
            lines.append(f"TOKEND_EXPIRES_AT={int(self.expires_at)}")
            if self.lifetime >= 1:  # tokend-env.sh judges "about to expire" by it
                lines.append(f"TOKEND_LIFETIME={int(self.lifetime)}")
            return ("\n".join(lines) + "\n").encode()
        raise ValueError(f"unknown format {fmt!r}: must be raw, json or env")


def token_from_dict(data: Any, *, wall: float, steady: float) -> Token:
    """Parse a ``/v1/token`` object (a ``json`` sink) back into a :class:`Token`, trusting
    nothing: the token must be token68 and its remaining life plausible (at most the
    12 h Google issues). ``issued`` follows from the stated ``lifetime``, else is
    ``steady``.

    Raises:
        ValueError: a malformed object, a bad token or an implausible expiry (the message
            never holds the token).
    """
    value, expires_at, profile, account, scopes, credentials_id = wire.read_token_object(data)
    wire.check_lifetime(expires_at - wall)
    stated = float(math.floor(expires_at))
    deadline = steady + (stated - wall)
    lifetime = wire.stated_lifetime(data)
    return Token(
        value=value,
        expires_at=stated,
        deadline=deadline,
        # When it was issued, if the object says how long it lives; else "now".
        issued=deadline - lifetime if lifetime >= deadline - steady else steady,
        profile=profile,
        account=account,
        scopes=scopes,
        credentials_id=credentials_id,
    )
