"""Running tokend under a service manager.

- :mod:`tokend.service.notify`: the sd_notify protocol (``READY``, ``STATUS``,
  ``WATCHDOG``, ``STOPPING``), stdlib only, silent outside systemd.
- :mod:`tokend.service.systemd`: the user unit, ``tokend install`` / ``uninstall`` on Linux.
- :mod:`tokend.service.launchd`: the LaunchAgent plist and the same on macOS.

Installers share :class:`Plan` (the steps, in order: ``--dry-run`` prints what a real
run carries out) and :class:`ServiceError` (one line with the fix).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tokend.errors import ServiceError

__all__ = ["Plan", "ServiceError", "Step", "run_command", "tokend_command", "write_file"]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing an installer does: write a file, remove one, or run a command."""

    kind: Literal["write", "remove", "run"]
    path: Path | None = None
    content: bytes = b""
    cmd: tuple[str, ...] = ()
    note: str = ""  #: shown by --dry-run, e.g. "only when loaded"

    def render(self) -> str:
        note = f"  # {self.note}" if self.note else ""
        if self.kind == "write":
            return f"# would write {self.path}:{note}\n{self.content.decode().rstrip()}"
        if self.kind == "remove":
            return f"# would remove {self.path}{note}"
        return f"# would run: {_shell_join(self.cmd)}{note}"


@dataclass
class Plan:
    """What an install/uninstall does, in order: printed by ``--dry-run``, else
    carried out by the installer."""

    steps: list[Step] = field(default_factory=list)

    def write(self, path: Path, content: bytes) -> None:
        self.steps.append(Step("write", path=path, content=content))

    def remove(self, path: Path) -> None:
        self.steps.append(Step("remove", path=path))

    def run(self, *cmd: str, note: str = "") -> None:
        self.steps.append(Step("run", cmd=cmd, note=note))

    def render(self) -> str:
        """The dry-run text."""
        return "\n".join(step.render() for step in self.steps)

    def carry_out(
        self,
        explain: Callable[[tuple[str, ...], str], str],
        ran: Callable[[tuple[str, ...]], str | None] = lambda _cmd: None,
    ) -> list[str]:
        """Do the steps in order. Returns one line per thing done (files written or
        removed, and what ``ran`` says of a command). A failing command stops it with a
        :class:`ServiceError`: what was done before, then ``explain(cmd, last line of
        its output)``, which is where each service manager adds its fix."""
        done: list[str] = []
        for step in self.steps:
            if step.kind == "write" and step.path is not None:
                changed = write_file(step.path, step.content)
                done.append(f"{'wrote' if changed else 'unchanged:'} {step.path}")
            elif step.kind == "remove" and step.path is not None:
                step.path.unlink(missing_ok=True)
                done.append(f"removed {step.path}")
            elif step.kind == "run":
                result = run_command(step.cmd)
                if result.returncode != 0:
                    lines = (result.stderr or result.stdout).strip().splitlines()
                    # The error is the last line: warnings (about a unit file, say) come
                    # before it.
                    last = lines[-1] if lines else f"exit status {result.returncode}"
                    before = "".join(f"{d}; " for d in done)
                    raise ServiceError(before + explain(step.cmd, last))
                if (line := ran(step.cmd)) is not None:
                    done.append(line)
        return done


def _shell_join(cmd: Sequence[str]) -> str:
    import shlex

    return shlex.join(cmd)


def tokend_command() -> list[str]:
    """How a service manager should start this tokend: the ``tokend`` script that is
    running now, else the one on PATH, else ``python -m tokend`` with this interpreter.

    The script path is kept as given (not resolved through symlinks): pipx and
    distribution packages keep that path stable across upgrades.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "tokend" and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]
    found = shutil.which("tokend")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "tokend"]


def write_file(path: Path, content: bytes, mode: int = 0o644) -> bool:
    """Write ``content`` to ``path`` atomically (temp file + rename). Returns False,
    touching nothing, when the file already holds exactly that content."""
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def run_command(cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a service-manager command (looked up on PATH), capturing its output: we
    print our own line instead."""
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=timeout)
