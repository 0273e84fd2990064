"""The launchd LaunchAgent (macOS), and ``tokend install`` / ``uninstall`` there.

The agent runs in the user's GUI domain (``gui/<uid>``), which exists while the
user is logged in; launchd restarts it when it exits with a failure
(``KeepAlive: {SuccessfulExit: false}``) and at login (``RunAtLoad``).
"""

from __future__ import annotations

import os
import plistlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokend.service import Plan, ServiceError, run_command

__all__ = ["LABEL", "build_plist", "install", "log_path", "plist_path", "uninstall"]

LABEL = "dev.tokend"


def plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_path() -> Path:
    """stdout and stderr of the agent (tokend logs to stderr, one line per event)."""
    return Path.home() / "Library" / "Logs" / "tokend" / "tokend.log"


def build_plist(command: Sequence[str], config: Path | None) -> dict[str, Any]:
    """The LaunchAgent as a dict (``plistlib.dumps`` renders it)."""
    agent: dict[str, Any] = {
        "Label": LABEL,
        "ProgramArguments": [*command, "run"],
        "RunAtLoad": True,
        # Restart after a crash, not after a clean exit (exit 2, a bad configuration,
        # is not clean either; launchd throttles restarts to one per 10 s).
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Background",
        "StandardOutPath": str(log_path()),
        "StandardErrorPath": str(log_path()),
    }
    if config is not None:
        agent["EnvironmentVariables"] = {"TOKEND_CONFIG": str(config)}
    return agent


def _domain() -> str:
    return f"gui/{os.getuid()}"


def _target() -> str:
    return f"{_domain()}/{LABEL}"


def _loaded() -> bool:
    return run_command(["launchctl", "print", _target()]).returncode == 0


def _require_launchctl() -> None:
    if shutil.which("launchctl") is None:
        raise ServiceError(
            "launchctl not found: launchd agents exist only on macOS. Use --systemd on "
            "Linux, or run `tokend run` under another supervisor"
        )


def _explain(cmd: tuple[str, ...], first: str) -> str:
    hint = ""
    if cmd[1] == "bootstrap":
        # Error 5 (Input/output error) is what launchctl says for most refusals: no GUI
        # session for this user (ssh only), or a plist launchd rejects.
        hint = (
            f"; the {_domain()} domain exists only while you are logged in to the "
            f"desktop (not over ssh alone); check the file with `plutil -lint {plist_path()}`"
        )
    return f"`{' '.join(cmd)}` failed: {first}{hint}"


def _ran(cmd: tuple[str, ...]) -> str | None:
    return f"unloaded {LABEL} from {_domain()}" if cmd[1] == "bootout" else None


def _plan(path: Path, content: bytes | None, loaded: bool, *, dry_run: bool) -> Plan:
    plan = Plan()
    if content is not None:
        plan.write(path, content)
    if loaded or dry_run:
        # bootstrap refuses a label that is already loaded: bootout first, so a second
        # install (or one with a new plist) simply reloads it.
        plan.run("launchctl", "bootout", _target(), note="only when loaded" if dry_run else "")
    if content is not None:
        plan.run("launchctl", "enable", _target())  # undoes an earlier `launchctl disable`
        plan.run("launchctl", "bootstrap", _domain(), str(path))
    else:
        plan.remove(path)
    return plan


def _carry_out(plan: Plan) -> list[str]:
    if any(step.kind == "write" for step in plan.steps):
        # The log dir first: launchd opens the log files itself, and fails silently.
        log_path().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return plan.carry_out(_explain, _ran)


def install(command: Sequence[str], config: Path | None, *, dry_run: bool = False) -> list[str]:
    """Write the plist and (re)load the agent. Returns the lines to print.

    Raises:
        ServiceError: no launchctl, or launchd refused (message has the fix).
    """
    path = plist_path()
    content = plistlib.dumps(build_plist(command, config))
    if dry_run:
        return [_plan(path, content, False, dry_run=True).render()]
    _require_launchctl()
    done = _carry_out(_plan(path, content, _loaded(), dry_run=False))
    return [
        *(d for d in done if not d.startswith("unloaded")),
        f"loaded {LABEL} in {_domain()}: it starts at login and restarts after a crash "
        f"(logs: {log_path()}; check with `tokend doctor`)",
    ]


def uninstall(*, dry_run: bool = False) -> list[str]:
    """Unload the agent and remove the plist. Returns the lines to print."""
    path = plist_path()
    if dry_run:
        return [_plan(path, None, False, dry_run=True).render()]
    if not path.exists():
        return [f"{LABEL} is not installed ({path} does not exist); nothing to do"]
    _require_launchctl()
    return _carry_out(_plan(path, None, _loaded(), dry_run=False))
