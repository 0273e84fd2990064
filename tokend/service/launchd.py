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

from tokend.service import Plan, ServiceError, run_command, write_file

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


def _run(cmd: list[str], done: list[str]) -> None:
    result = run_command(cmd)
    if result.returncode == 0:
        return
    lines = (result.stderr or result.stdout).strip().splitlines()
    first = lines[0] if lines else f"exit status {result.returncode}"
    hint = ""
    if cmd[1] == "bootstrap":
        # Error 5 (Input/output error) is what launchctl says for most refusals: no GUI
        # session for this user (ssh only), or a plist launchd rejects.
        hint = (
            f"; the {_domain()} domain exists only while you are logged in to the "
            f"desktop (not over ssh alone); check the file with `plutil -lint {plist_path()}`"
        )
    raise ServiceError(" ".join([*done, f"`{' '.join(cmd)}` failed: {first}{hint}"]))


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
    done: list[str] = []
    for step in plan.steps:
        if step.kind == "write" and step.path is not None:
            # The log dir first: launchd opens the log files itself, and fails silently.
            log_path().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            changed = write_file(step.path, step.content)
            done.append(f"{'wrote' if changed else 'unchanged:'} {step.path}")
        elif step.kind == "remove" and step.path is not None:
            step.path.unlink(missing_ok=True)
            done.append(f"removed {step.path}")
        elif step.kind == "run":
            _run(list(step.cmd), [f"{d};" for d in done])
            if step.cmd[1] == "bootout":
                done.append(f"unloaded {LABEL} from {_domain()}")
    return done


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
