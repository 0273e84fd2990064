"""``tokend exec``'s process supervision: run a child, forward signals, pass on its exit.

Kept out of :mod:`tokend.cli` so the CLI stays a set of thin functions; stdlib only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

__all__ = ["FORWARDED_SIGNALS", "run_child"]

#: Signals ``tokend exec`` passes on to its child.
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def _keyboard_signal_reached_child(signum: int) -> bool:
    """True when ``signum`` most likely came from the terminal (Ctrl-C, Ctrl-\\): the
    kernel sent it to the whole foreground process group, child included, so forwarding
    it would deliver it twice (and a second Ctrl-C means "force quit" to many tools)."""
    if signum not in (signal.SIGINT, signal.SIGQUIT):
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False  # no controlling terminal: the signal came from kill(2)
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def run_child(argv: list[str], env: dict[str, str], *, expires_at: int | None) -> int:
    """Run ``argv`` with ``env``; forward INT/TERM/HUP/QUIT/USR1/USR2 to it; warn on
    stderr when it outlives ``expires_at`` (epoch seconds, the token's expiry; None: what
    it was given does not expire, the proxy's key).

    Returns:
        Its exit code; 128+N when signal N killed it (as shells report it); 127 when the
        command does not exist, 126 when it cannot be run.
    """
    proc: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if proc is None:
            pending.append(signum)  # arrived while spawning: delivered right after
        elif proc.returncode is None and not _keyboard_signal_reached_child(signum):
            proc.send_signal(signum)

    # Handlers go in before the child exists, so no signal can kill us and orphan it.
    # exec() resets caught signals to their defaults in the child.
    previous = {}
    for name in FORWARDED_SIGNALS:
        sig = getattr(signal, name)
        previous[sig] = signal.signal(sig, forward)

    def warn_expired() -> None:
        print(
            f"tokend: warning: the token given to {argv[0]} expired at "
            f"{time.strftime('%H:%M:%S', time.localtime(expires_at))} and it is still "
            "running; long-running programs should ask for a token per request "
            "(tokend.client.token, the token file or the socket), or use the local proxy "
            "(`tokend exec --proxy`)",
            file=sys.stderr,
            flush=True,
        )

    timer = None
    if expires_at is not None:
        timer = threading.Timer(max(0.0, expires_at - time.time()), warn_expired)
        timer.daemon = True
    try:
        try:
            proc = subprocess.Popen(argv, env=env)
        except FileNotFoundError:
            print(f"tokend: exec: {argv[0]}: command not found", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"tokend: exec: {argv[0]}: permission denied", file=sys.stderr)
            return 126
        for signum in pending:
            proc.send_signal(signum)
        if timer is not None:
            timer.start()
        rc = proc.wait()  # PEP 475: retried after each forwarded signal
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A child killed by signal N exits 128+N, the way shells report it.
    return 128 - rc if rc < 0 else rc
