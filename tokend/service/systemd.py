"""The systemd user unit, and ``tokend install`` / ``uninstall`` on Linux.

The unit text lives here, not only in ``systemd/tokend.service``, because an installed
wheel carries no ``systemd/`` directory; a test pins the committed file to
:func:`render_unit` with the default ``ExecStart``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from tokend.service import Plan, ServiceError, write_file

__all__ = [
    "DEFAULT_EXEC",
    "UNIT_NAME",
    "install",
    "install_plan",
    "render_unit",
    "uninstall",
    "uninstall_plan",
    "unit_path",
]

UNIT_NAME = "tokend.service"
#: ExecStart of the committed unit (for packagers: tokend on the manager's PATH).
#: ``tokend install`` writes the absolute path of the installed tokend instead.
DEFAULT_EXEC = ("/usr/bin/env", "tokend")

# Every hardening line is one that works in a *user* unit (systemd >= 247 with
# PrivateUsers=yes, which user units need for any file-system sandboxing).
# Left out on purpose, though `systemd-analyze security` would count them:
# ProtectProc=, ProcSubset= and ProtectControlGroups= (system units only),
# IPAddressDeny= (needs BPF privileges a user manager lacks; Google's addresses
# are not a fixed list anyway), PrivateNetwork= (we must reach Google).
_UNIT = """\
# tokend: keeps a Google access token fresh for every local program.
# Installed by `tokend install`; check it with `tokend doctor`.
[Unit]
Description=tokend: fresh Google access tokens for local programs

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# Exit code 2 is a bad configuration or another tokend on the socket: a restart
# cannot fix either (fix the file, then `systemctl --user restart tokend`).
RestartPreventExitStatus=2
WatchdogSec=30s
TimeoutStopSec=10s

# %t/tokend (= $XDG_RUNTIME_DIR/tokend, tokend's default runtime_dir), mode 0700 as
# tokend requires. Kept across restarts so clients keep reading a valid token file.
RuntimeDirectory=tokend
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
UMask=0077
LimitCORE=0
# The local proxy's keys outlive restarts and reboots: systemd's state dir for the unit
# (%S/tokend: ~/.local/state/tokend, or ~/.config/tokend before systemd 253), made
# 0700 and writable in the sandbox; `tokend proxy-key` asks the daemon where it is.
StateDirectory=tokend
StateDirectoryMode=0700
Environment=TOKEND_STATE_DIR=%S/tokend

# Sandbox. Read-only: the OS and $HOME (~/.config/gcloud ADC, ~/.config/tokend);
# writable: only the runtime dir and the state dir. A runtime_dir or absolute sink path elsewhere
# needs a drop-in with ReadWritePaths=.
# PrivateUsers=yes maps only this user: peers of other uids (socket.allow_uids)
# appear as 65534 (see README, "Running as a service").
PrivateUsers=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
PrivateIPC=yes
PrivateMounts=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
KeyringMode=private
RemoveIPC=yes
# Google's token endpoints (and the metadata server), the Unix socket, the proxy;
# netlink (sock_diag) tells the proxy which uid owns a connecting socket.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=default.target
"""


def _exec_quote(arg: str, *, program: bool = False) -> str:
    """Quote one ExecStart= word: systemd expands ``%`` specifiers everywhere and
    ``$VARS`` in the arguments (not in the program path), and splits on whitespace,
    so a path must be escaped to stay literal."""
    escaped = arg.replace("%", "%%")
    if not program:
        escaped = escaped.replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(command: Sequence[str] = DEFAULT_EXEC, config: Path | None = None) -> str:
    """The unit text with ``ExecStart=`` running ``command run`` (``--config`` added
    when given)."""
    argv = [*command, "run"]
    if config is not None:
        argv += ["--config", str(config)]
    words = [_exec_quote(argv[0], program=True), *(_exec_quote(a) for a in argv[1:])]
    return _UNIT.format(exec_start=" ".join(words))


def unit_path() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user/tokend.service`` (``~/.config`` by default)."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg.startswith("/") else Path.home() / ".config"
    return base / "systemd" / "user" / UNIT_NAME


SYSTEMCTL = ("systemctl", "--user")


def install_plan(command: Sequence[str], config: Path | None, *, update: bool) -> Plan:
    """Write the unit, reload, restart a running older version, enable and start.

    Args:
        update: the unit file exists with other content (an upgrade, a new --config).
    """
    plan = Plan()
    plan.write(unit_path(), render_unit(command, config).encode())
    plan.run(*SYSTEMCTL, "daemon-reload")
    if update:
        # enable --now does not restart a running service: apply the new unit.
        plan.run(*SYSTEMCTL, "try-restart", UNIT_NAME)
    plan.run(*SYSTEMCTL, "enable", "--now", UNIT_NAME)
    return plan


def uninstall_plan() -> Plan:
    """Stop and disable, remove the unit file, reload."""
    plan = Plan()
    plan.run(*SYSTEMCTL, "disable", "--now", UNIT_NAME)
    plan.remove(unit_path())
    plan.run(*SYSTEMCTL, "daemon-reload")
    return plan


_NO_MANAGER = (
    "systemd's user manager is not reachable ({why}). Fix: log in through a normal "
    "session (ssh or console, not su/sudo), or run `loginctl enable-linger $USER` "
    "so it starts at boot; then run `tokend {verb}` again. Without systemd, run "
    "`tokend run` under another supervisor."
)
_NOT_SYSTEMD = (
    "this machine does not run systemd (PID 1 is {pid1}), so there is no service manager "
    "to start tokend{done}. Run `tokend run` from whatever starts programs here (a "
    "container's entrypoint, supervisord, runit, a login script); `tokend install "
    "--dry-run` prints the unit for a machine with systemd"
)
#: sd_booted(3): the system runs systemd as PID 1 if and only if this directory exists.
_BOOTED = Path("/run/systemd/system")
#: What systemctl --user says when there is no user manager (or no session bus) to ask.
_NO_BUS = ("Failed to connect to bus", "No medium found", "XDG_RUNTIME_DIR", "not defined")


def _require_systemctl() -> None:
    if shutil.which("systemctl") is None:
        raise ServiceError(
            "systemctl not found: this system does not run systemd. Run `tokend run` "
            "under your own supervisor, or use --launchd on macOS"
        )


class _Unreachable(ServiceError):
    """systemctl --user found no user manager to talk to (``why``: what it said)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _carry_out(plan: Plan, verb: str) -> list[str]:
    """Do the plan. Raises :class:`_Unreachable` when there is no user manager to ask,
    else :class:`ServiceError` with what was done and what failed."""
    unreachable: list[str] = []

    def explain(cmd: tuple[str, ...], first: str) -> str:
        if any(marker in first for marker in _NO_BUS):
            unreachable.append(first)
        return f"`{' '.join(cmd)}` failed: {first}"

    try:
        return plan.carry_out(explain)
    except ServiceError:
        if unreachable:
            raise _Unreachable(unreachable[0]) from None
        raise


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip() or "unknown"
    except OSError:
        return "not systemd"


def install(command: Sequence[str], config: Path | None, *, dry_run: bool = False) -> list[str]:
    """Install, enable and start the user unit. Returns the lines to print.

    Raises:
        ServiceError: no systemctl, or the user manager is unreachable (message has the fix).
    """
    path = unit_path()
    content = render_unit(command, config).encode()
    previous: bytes | None
    try:
        previous = path.read_bytes()
    except FileNotFoundError:
        previous = None
    plan = install_plan(command, config, update=previous not in (None, content))
    if dry_run:
        return [plan.render()]
    _require_systemctl()
    missing = [d for d in path.parents if not d.exists()]  # made by the write
    try:
        done = _carry_out(plan, "install")
    except _Unreachable as err:
        # Nothing would ever start the unit: leave the files as they were.
        if previous is None:
            path.unlink(missing_ok=True)
            for made in missing:
                with contextlib.suppress(OSError):
                    made.rmdir()
        else:
            write_file(path, previous)
        if not _BOOTED.is_dir():
            raise ServiceError(
                _NOT_SYSTEMD.format(pid1=_pid1(), done="; nothing was written")
            ) from None
        raise ServiceError(
            _NO_MANAGER.format(why=err.why, verb="install") + " Nothing was written."
        ) from None
    exec_line = next(ln for ln in content.decode().splitlines() if ln.startswith("ExecStart="))
    return [
        f"{done[0]} ({exec_line})",
        f"enabled and started {UNIT_NAME}; see `systemctl --user status tokend`, "
        "`journalctl --user -u tokend` or `tokend doctor`",
    ]


def uninstall(*, dry_run: bool = False) -> list[str]:
    """Stop, disable and remove the user unit. Returns the lines to print."""
    path = unit_path()
    plan = uninstall_plan()
    if dry_run:
        return [plan.render()]
    if not path.exists():
        return [f"{UNIT_NAME} is not installed ({path} does not exist); nothing to do"]
    _require_systemctl()
    try:
        done = _carry_out(plan, "uninstall")
    except _Unreachable as err:
        if _BOOTED.is_dir():
            # A manager we cannot reach may be running the service: keep its file.
            raise ServiceError(_NO_MANAGER.format(why=err.why, verb="uninstall")) from None
        # No systemd, so nothing runs the unit: remove what an install wrote.
        wants = path.parent / "default.target.wants" / UNIT_NAME
        if wants.is_symlink():
            wants.unlink()
        path.unlink(missing_ok=True)
        return [f"removed {path} (this machine does not run systemd: nothing was running)"]
    return [f"stopped and disabled {UNIT_NAME}", *done]
