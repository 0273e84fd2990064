"""``tokend doctor``: check the setup, one line per check with the fix.

Each check returns a :class:`Check` (``OK``, ``WARN`` or ``FAIL``). Nothing here writes
a file, refreshes a token or talks to Google: the doctor is safe to run offline and
while the daemon runs. Credentials are described by :func:`tokend.source.describe_credentials`
(type and account only); tokens are never printed, only how long they stay valid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tokend.service import run_command

__all__ = ["Check", "run_checks"]

Status = Literal["OK", "WARN", "FAIL"]

#: A wall clock before this (2024-01-01) is a dead RTC battery or a VM without time sync.
EARLIEST_SANE_TIME = 1_704_067_200


@dataclass(frozen=True, slots=True)
class Check:
    """One result line: ``STATUS  name  detail — fix``."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.name:<10} {self.detail}"
        return f"{text} — {self.fix}" if self.fix else text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(config_path: str | None = None) -> list[Check]:
    """Every check, in the order a person would fix things."""
    return list(_checks(config_path))


def _checks(config_path: str | None) -> Iterator[Check]:
    from tokend import config as config_mod
    from tokend.errors import ConfigError

    try:
        cfg = config_mod.load(config_path)
    except ConfigError as err:
        yield Check("config", "FAIL", str(err), "fix the file (see README, Configuration)")
        return
    file, _named = config_mod.resolve_config_path(config_path)
    where = str(file) if file.exists() else "no config file, defaults"
    yield Check("config", "OK", f"{where}: {len(cfg.profiles)} profile(s)")

    status, why = _daemon_status(file)
    profiles: dict[str, Any] = (status or {}).get("profiles") or {}
    for name, profile in cfg.profiles.items():
        yield _credentials(name, profile, profiles.get(name) or {})
    yield _runtime_dir(cfg.runtime_path)
    yield _socket(cfg.socket_path, status, why)
    if cfg.proxy.enabled and status is not None:
        yield _proxy(cfg.runtime_path, status)
    if cfg.metadata.enabled and status is not None:
        yield _metadata(status)
    yield _service()
    for name in cfg.profiles:
        yield _token(name, profiles.get(name) or {}, file)
    yield _clock()
    for name, profile in cfg.profiles.items():
        yield _openai(name, profile.base_url)


# -- the checks ----------------------------------------------------------------------


def _credentials(name: str, profile: Any, live: dict[str, Any]) -> Check:
    from tokend.errors import CredentialsError
    from tokend.source import Source, describe_credentials

    label = "adc" if profile.credentials == "adc" else f"creds:{name}"
    files = Source(name, profile).watched_paths
    where = f" at {files[0]}" if files else ""
    try:
        kind, account = describe_credentials(name, profile)
    except CredentialsError as err:
        if live.get("credential_type") == "metadata":  # the daemon fell back to it
            return Check(label, "OK", f"profile {name}: metadata server (per the daemon)")
        what, _, fix = str(err).rpartition("; ")
        return Check(label, "FAIL", f"profile {name}: {what or fix}", fix if what else "")
    who = f" ({account})" if account else ""
    return Check(label, "OK", f"profile {name}: {kind}{who}{where}")


def _runtime_dir(path: Path) -> Check:
    from tokend.errors import UnsafePathError
    from tokend.paths import open_dir

    try:
        os.close(open_dir(path, "private"))  # the daemon's own checks, ancestors included
    except FileNotFoundError:
        return Check(
            "runtime", "WARN", f"{path} does not exist yet", "start tokend; it creates it 0700"
        )
    except UnsafePathError as err:
        what, _, fix = str(err).rpartition("; ")
        return Check("runtime", "FAIL", what or fix, fix.removeprefix("fix: ") if what else "")
    except OSError as err:
        return Check("runtime", "FAIL", f"{path}: {err.strerror or err}")
    loose = []
    for entry in path.iterdir():
        with contextlib.suppress(OSError):  # it may vanish in a rotation while we look
            est = entry.lstat()
            if stat.S_ISREG(est.st_mode) and stat.S_IMODE(est.st_mode) & 0o077:
                loose.append(f"{entry.name} {stat.S_IMODE(est.st_mode):04o}")
    if loose:
        return Check(
            "runtime",
            "WARN",
            f"{path} is 0700 but holds files open to others: {', '.join(loose)}",
            "fine if a sink's `mode` says so; else chmod 600 them",
        )
    return Check("runtime", "OK", f"{path} (mode 0700, ours)")


def _daemon_status(config: Path) -> tuple[dict[str, Any] | None, str]:
    """The daemon's /v1/status, or (None, why not)."""
    from tokend import client

    try:
        return client.daemon_status(timeout=3.0, config=config), ""
    except client.TokenUnavailable as err:
        return None, str(err)


def _socket(path: Path | None, status: dict[str, Any] | None, why: str) -> Check:
    if path is None:
        return Check("socket", "WARN", 'turned off (socket.path = "")', "clients use files only")
    if status is None:
        what, _, fix = why.partition("; ")  # the client's message carries its own fix
        if what.startswith("tokend is not running") or not fix:
            fix = _start_hint()  # the fuller one: it also names `tokend install`
        return Check("socket", "FAIL", what, fix)
    n = len(status.get("profiles") or {})
    return Check("socket", "OK", f"tokend answers on {path} ({n} profile(s))")


def _metadata(status: dict[str, Any]) -> Check:
    """The metadata endpoint answers its ping as GCE's does (what the libraries check)."""
    import http.client

    host = status.get("metadata")
    if not host:
        return Check(
            "metadata",
            "FAIL",
            "metadata.listen is set but the running tokend has no metadata endpoint",
            "see the daemon's log; `systemctl --user reload tokend` tries again",
        )
    address, _, port = str(host).rpartition(":")
    conn = http.client.HTTPConnection(address.strip("[]"), int(port), timeout=3.0)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as err:
        return Check("metadata", "FAIL", f"{host}: no answer ({err})", "see the daemon's log")
    finally:
        conn.close()
    if resp.status != 200 or resp.getheader("Metadata-Flavor") != "Google":
        return Check("metadata", "FAIL", f"{host}: answered {resp.status}: not tokend's?")
    return Check("metadata", "OK", f"{host} answers; GCE_METADATA_HOST={host}")


def _proxy(runtime: Path, status: dict[str, Any]) -> Check:
    """The proxy answers as tokend does (a request without the key gets tokend's 401),
    and proxy.env names the address it listens on."""
    import http.client
    import json
    from urllib.parse import urlsplit

    from tokend import client

    url = status.get("proxy")
    if not url:
        return Check(
            "proxy",
            "FAIL",
            "proxy.listen is set but the running tokend has no proxy",
            "restart tokend (`systemctl --user restart tokend`) to start it",
        )
    try:
        env = client.proxy_env()
    except client.TokenUnavailable as err:
        return Check("proxy", "FAIL", str(err))
    if env["OPENAI_BASE_URL"] != url:
        return Check(
            "proxy",
            "FAIL",
            f"{runtime}/proxy.env names {env['OPENAI_BASE_URL']}, tokend listens on {url}",
            "restart tokend",
        )
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=3.0)
    try:
        conn.request("GET", "/v1/models")  # no key: tokend's own 401, nothing forwarded
        resp = conn.getresponse()
        code = json.loads(resp.read()).get("error", {}).get("code")
    except (OSError, ValueError, AttributeError) as err:
        return Check("proxy", "FAIL", f"{url}: no answer ({err})", "see the daemon's log")
    finally:
        conn.close()
    if resp.status != 401 or code != "invalid_api_key":
        return Check("proxy", "FAIL", f"{url}: answered {resp.status}: not tokend's proxy?")
    return Check("proxy", "OK", f"{url} answers; proxy.env holds its address and key")


def _start_hint() -> str:
    if sys.platform == "darwin":
        return "tokend install (or `tokend run`)"
    return "systemctl --user start tokend (or `tokend install`, or `tokend run`)"


def _service() -> Check:
    if sys.platform == "darwin":
        return _launchd_service()
    return _systemd_service()


def _systemd_service() -> Check:
    from tokend.service.systemd import UNIT_NAME, unit_path

    path = unit_path()
    if not path.exists():
        return Check(
            "service", "WARN", f"not installed ({path} missing)", "tokend install --systemd"
        )
    if _outdated(path):
        return Check(
            "service",
            "WARN",
            f"{path} was written by an older tokend (it lacks what this one needs, e.g. the "
            "state dir for the proxy's keys)",
            "tokend install (again), then systemctl --user restart tokend",
        )
    if shutil.which("systemctl") is None:
        return Check("service", "WARN", f"{path} present but systemctl not found")
    try:
        result = run_command(["systemctl", "--user", "is-active", UNIT_NAME], timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("service", "WARN", f"systemctl --user is-active: {err}")
    state = (result.stdout.strip() or result.stderr.strip() or "unknown").splitlines()[0]
    if state == "active":
        return Check("service", "OK", f"{UNIT_NAME} is active ({path})")
    if "bus" in state.lower():
        return Check(
            "service",
            "WARN",
            f"systemd user manager not reachable ({state})",
            "log in with a normal session, or `loginctl enable-linger $USER`",
        )
    return Check(
        "service",
        "FAIL",
        f"{UNIT_NAME} is {state}",
        "systemctl --user start tokend; see `journalctl --user -u tokend`",
    )


def _outdated(path: Path) -> bool:
    """Whether the installed unit differs from what `tokend install` writes now, in any
    line but ExecStart= (which names the installed tokend and its --config)."""
    from tokend.service.systemd import render_unit

    def lines(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if not ln.startswith("ExecStart=")]

    try:
        return lines(path.read_text()) != lines(render_unit())
    except (OSError, UnicodeDecodeError):
        return False


def _launchd_service() -> Check:
    from tokend.service.launchd import LABEL, log_path, plist_path

    path = plist_path()
    if not path.exists():
        return Check(
            "service", "WARN", f"not installed ({path} missing)", "tokend install --launchd"
        )
    target = f"gui/{os.getuid()}/{LABEL}"
    try:
        result = run_command(["launchctl", "print", target], timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("service", "WARN", f"launchctl print {target}: {err}")
    if result.returncode != 0:
        return Check("service", "FAIL", f"{LABEL} is not loaded", "tokend install --launchd")
    running = "state = running" in result.stdout
    if running:
        return Check("service", "OK", f"{LABEL} is loaded and running")
    return Check("service", "FAIL", f"{LABEL} is loaded but not running", f"see {log_path()}")


def _token(name: str, live: dict[str, Any], config: Path) -> Check:
    from tokend import client

    label = f"token:{name}"
    try:
        info = client.token_info(name, min_valid=0, timeout=5.0, config=config)
    except client.TokenUnavailable as err:
        error = live.get("last_error") or ""
        detail = f"{live.get('state')}: {error}" if error else str(err)
        return Check(label, "FAIL", detail, "see `tokend status` and the daemon's log")
    from tokend.timefmt import format_duration

    who = f", account {info.account}" if info.account else ""
    return Check(label, "OK", f"valid for {format_duration(int(info.expires_in))}{who}")


def _clock() -> Check:
    now = time.time()
    if now < EARLIEST_SANE_TIME:
        return Check(
            "clock",
            "FAIL",
            f"the system clock says {time.strftime('%Y-%m-%d', time.gmtime(now))}",
            "set the time / enable time sync (timedatectl set-ntp true)",
        )
    # (A token outliving a clock step is no longer a clock problem: tokend measures
    # lifetimes on a clock that does not step, and restates expiry after a step.)
    synced = _ntp_synchronized()
    if synced is False:
        return Check(
            "clock",
            "WARN",
            "not synchronized with a time server; expiry times may be off",
            "timedatectl set-ntp true",
        )
    return Check("clock", "OK", "plausible" + (" and NTP-synchronized" if synced else ""))


def _ntp_synchronized() -> bool | None:
    """timedatectl's view, None when it cannot tell (no systemd, macOS, containers)."""
    if shutil.which("timedatectl") is None:
        return None
    try:
        result = run_command(
            ["timedatectl", "show", "--property=NTPSynchronized", "--value"], timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    return {"yes": True, "no": False}.get(value) if result.returncode == 0 else None


def _openai(name: str, base_url: str) -> Check:
    label = f"openai:{name}"
    if not base_url:
        return Check(
            label,
            "WARN",
            f"no [profiles.{name}.openai] table: OPENAI_BASE_URL is unknown",
            "add project and location there if you use Vertex AI's OpenAI endpoint",
        )
    env = os.environ.get("OPENAI_BASE_URL")
    if name == "default" and env and env.rstrip("/") != base_url:
        return Check(
            label,
            "WARN",
            f"OPENAI_BASE_URL in this shell is {env}, tokend composes {base_url}",
            'eval "$(tokend env)" or unset OPENAI_BASE_URL',
        )
    return Check(label, "OK", base_url)
