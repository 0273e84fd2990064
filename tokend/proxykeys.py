"""The local proxy's keys: long-lived random secrets, useful only through the proxy.

A tool configured once with ``OPENAI_API_KEY=<local key>`` and the proxy's base URL keeps
working for as long as the daemon runs: the key never expires, so it survives restarts
(kept in the state dir, 0600, in a 0700 directory) until ``tokend proxy-key rotate``
replaces it. The key named ``default`` is the one ``proxy.env`` holds; other names are
per-application keys (``tokend proxy-key add NAME``) that logs and metrics name, so one
tool's key can be revoked without touching the others.

The file, ``proxy-keys.json``::

    {"keys": [{"name": "default", "key": "tokend-…", "created": "2026-12-02T07:00:00Z"}]}

It is written atomically (:func:`tokend.sinks.atomic_write`) by the daemon (the first
key, at first start) and by the ``proxy-key`` commands; the daemon watches it and picks
changes up at once. Everything read from it is checked: a regular file of bounded size,
names and keys of the expected shape. No key value ever reaches a log, an error or a
``repr``.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from tokend.errors import ConfigError
from tokend.paths import read_regular
from tokend.timefmt import format_time

__all__ = ["DEFAULT", "KEYS_FILE", "KeyRing", "LocalKey", "generate", "keys_path"]

KEYS_FILE = "proxy-keys.json"
#: The key ``proxy.env`` and ``tokend env --proxy`` hand out.
DEFAULT = "default"
_PREFIX = "tokend-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
# The prefix, then 32 random bytes in base64url (43 characters); longer is refused.
_KEY = re.compile(r"tokend-[A-Za-z0-9_\-]{32,128}")
#: State-dir fix when it is not the user's own.
STATE_ELSEWHERE = "use a directory of your own (state_dir / TOKEND_STATE_DIR)"


def generate() -> str:
    """A new local key: ``tokend-`` and 256 random bits."""
    return _PREFIX + secrets.token_urlsafe(32)


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def keys_path(state_dir: Path) -> Path:
    return state_dir / KEYS_FILE


@dataclass(frozen=True, slots=True)
class LocalKey:
    name: str
    value: str = field(repr=False)
    created: str = ""


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys the proxy accepts."""

    keys: tuple[LocalKey, ...] = ()

    def __repr__(self) -> str:
        return f"KeyRing({', '.join(k.name for k in self.keys)})"

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.keys]

    def get(self, name: str) -> LocalKey | None:
        return next((k for k in self.keys if k.name == name), None)

    def match(self, presented: str) -> str | None:
        """The name of the key ``presented`` is, else None. Every key is compared, each
        in constant time, so the time taken says nothing about how close a guess was."""
        given = presented.encode("utf-8", "surrogateescape")
        found = None
        for key in self.keys:
            if hmac.compare_digest(given, key.value.encode()):
                found = key.name
        return found

    def match_any(self, presented: list[str]) -> str | None:
        """The name of the first of ``presented`` that is a key (each compared as in
        :meth:`match`), else None."""
        names = [self.match(p) for p in presented]
        return next((n for n in names if n is not None), None)

    def with_key(self, name: str, value: str | None = None) -> KeyRing:
        """This ring with ``name`` set to a new key (replacing one of that name)."""
        new = LocalKey(name, value or generate(), format_time(time.time()))
        kept = tuple(k for k in self.keys if k.name != name)
        return KeyRing((*kept, new) if name != DEFAULT else (new, *kept))

    def without(self, name: str) -> KeyRing:
        return KeyRing(tuple(k for k in self.keys if k.name != name))

    def dumps(self) -> bytes:
        keys = [{"name": k.name, "key": k.value, "created": k.created} for k in self.keys]
        return (json.dumps({"keys": keys}, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, source: str) -> KeyRing:
        """Check and read a keys file's bytes.

        Raises:
            ConfigError: not a keys file; the message names the file and the fix.
        """
        fix = (
            "; fix it, or remove it and run `tokend proxy-key rotate` "
            "(configured tools then need the new key)"
        )
        try:
            doc = json.loads(data)
        except ValueError:
            raise ConfigError(f"{source}: not JSON{fix}") from None
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(f'{source}: no "keys" list{fix}')
        keys: list[LocalKey] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ConfigError(f"{source}: keys[{i}] is not an object{fix}")
            name, value = entry.get("name"), entry.get("key")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ConfigError(f"{source}: keys[{i}].name is not a key name{fix}")
            if not isinstance(value, str) or not _KEY.fullmatch(value):
                raise ConfigError(f"{source}: keys[{i}] ({name}): the key is malformed{fix}")
            if any(k.name == name for k in keys):
                raise ConfigError(f"{source}: keys[{i}]: {name} appears twice{fix}")
            keys.append(LocalKey(name, value, str(entry.get("created") or "")))
        return cls(tuple(keys))


def load(state_dir: Path) -> KeyRing | None:
    """The keys in ``state_dir``, None when there is no keys file yet.

    Raises:
        ConfigError: the file is there but unreadable or malformed.
    """
    path = keys_path(state_dir)
    try:
        data = read_regular(path, 1 << 16)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the proxy keys: {err.strerror or err}") from None
    return KeyRing.parse(data, str(path))


def save(state_dir: Path, ring: KeyRing) -> None:
    """Write the keys atomically, 0600, into ``state_dir`` (created 0700, checked).

    Raises:
        UnsafePathError: the state dir, or the way to it, is not safe.
        OSError: the write failed.
    """
    from tokend.paths import ensure_private_dir
    from tokend.sinks import atomic_write

    ensure_private_dir(state_dir, elsewhere=STATE_ELSEWHERE)
    atomic_write(keys_path(state_dir), ring.dumps(), 0o600, private=True)


def ensure(state_dir: Path) -> tuple[KeyRing, bool]:
    """The keys, creating the file with a ``default`` key at first start; whether a key
    was made. A ring without ``default`` (revoked by hand) gets a new one."""
    ring = load(state_dir)
    if ring is not None and ring.get(DEFAULT) is not None:
        return ring, False
    ring = (ring or KeyRing()).with_key(DEFAULT)
    save(state_dir, ring)
    return ring, True
