"""Helpers for tests/test_reliability.py: scenario sizes, reporting, a raw HTTP client for
the socket, /proc figures, reader processes and a bare ``tokend run`` launcher.

Nothing here mocks tokend: faults are injected at the OS boundary or in FakeGoogle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokend.testing import FakeGoogle

# -- sizes and reporting ----------------------------------------------------------------


def knob(name: str, default: float) -> float:
    """A scenario size: ``default`` unless the environment variable ``name`` is set."""
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


def report(scenario: str, **figures: Any) -> None:
    """Print a scenario's figures and, when ``TOKEND_RELIABILITY_REPORT`` names a file,
    merge them into that JSON object (keyed by scenario), so the numbers survive
    pytest's output capture."""
    line = json.dumps(figures, sort_keys=True, default=str)
    print(f"\nRELIABILITY {scenario}: {line}", flush=True)
    path = os.environ.get("TOKEND_RELIABILITY_REPORT", "")
    if not path:
        return
    target = Path(path)
    try:
        data = json.loads(target.read_text())
    except (OSError, ValueError):
        data = {}
    data[scenario] = figures
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, target)


def assert_no_secrets(fake: FakeGoogle, texts: Mapping[str, str | bytes]) -> int:
    """No value FakeGoogle handed out (token, refresh token, client secret, key line)
    appears in any of ``texts`` (name -> text). Returns how many texts were scanned.
    The failure names the text, never the secret."""
    secrets = fake.secrets()
    for name, text in texts.items():
        body = text.decode(errors="replace") if isinstance(text, bytes) else text
        for secret in secrets:
            assert secret not in body, f"a secret reached {name}"
    return len(texts)


# -- the socket -------------------------------------------------------------------------


def request(
    sock: Path | str,
    payload: bytes,
    timeout: float = 5.0,
    *,
    until: Callable[[bytes], bool] | None = None,
) -> bytes:
    """Send ``payload`` on a fresh connection and read until the server closes (or
    until ``until(data)`` says the answer is complete)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(sock))
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading everything
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if until is not None and until(data):
                    break
        except ConnectionResetError:
            pass
        return data


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response, by its Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def one_response(sock: Path | str, payload: bytes, timeout: float = 8.0) -> bytes:
    """Send ``payload`` on a fresh connection; return the first response (complete by
    its Content-Length) without waiting for a keep-alive connection to close, or what
    came before the server closed."""
    return request(sock, payload, timeout, until=_complete)


def get(sock: Path | str, target: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One ``GET`` over the Unix socket: (status, body)."""
    raw = request(
        sock,
        f"GET {target} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n".encode(),
        timeout,
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def get_json(sock: Path | str, target: str, timeout: float = 5.0) -> tuple[int, Any]:
    status, body = get(sock, target, timeout)
    return status, json.loads(body)


def profile_status(sock: Path | str, profile: str = "default") -> dict[str, Any]:
    status, body = get_json(sock, "/v1/status")
    assert status == 200, body
    return dict(body["profiles"][profile])


# -- /proc --------------------------------------------------------------------------------


def proc_figures(pid: int) -> dict[str, int]:
    """RSS (KiB), open file descriptors and threads of a live process."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return {
        "rss_kib": int(fields["VmRSS"][0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"][0]),
    }


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


# -- a bare tokend run (for kill loops and unusual launches) ------------------------------


# -- the daemon's log ---------------------------------------------------------------


_FAILED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) tokend WARNING: profile default: refresh failed "
    r"\(.*\), retry (\d+) in ([\d.]+)s",
    re.M,
)


def failures_in_log(log: str) -> list[tuple[float, int, float]]:
    """(when, retry number, announced delay) of every retryable failure in a daemon log."""
    out = []
    for stamp, n, delay in _FAILED.findall(log):
        when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1e3
        out.append((when, int(n), float(delay)))
    return out


def recovery_step(failures: list[tuple[float, int, float]], t_heal: float) -> float:
    """Seconds from the heal to the attempt that recovers: the one the last failure
    scheduled. (Not the first one announced for after the heal: delays are logged to
    0.1 s, so an attempt announced just after the heal may have run, and failed, just
    before it.)"""
    if not failures:
        return 0.0
    when, _, delay = failures[-1]
    return max(0.0, when + delay - t_heal)


# -- reader processes -------------------------------------------------------------------

#: A reader process: reads the three files and the socket in a loop until a deadline and
#: writes what it saw as JSON. It imports nothing of tokend (it is any program on the box).
#: Per token it keeps the last time a read *started* (t0) and the last time one *ended*
#: (t1); the test compares those with when FakeGoogle says the token expires.
READER = r"""
import json, os, re, socket, sys, time
rt, sock_path, until, out, pause = sys.argv[1:6]
until, pause = float(until), float(pause)
TOKEN = r"ya29\.fake-[A-Za-z0-9_-]{44}"
RAW = re.compile(TOKEN)
ENV = re.compile(
    r"OPENAI_API_KEY=(" + TOKEN + r")\n(?:OPENAI_BASE_URL=\S+\n)?TOKEND_EXPIRES_AT=(\d+)\n"
    r"(?:TOKEND_LIFETIME=\d+\n)?"
)
KINDS = ("raw", "json", "env", "socket")
reads = dict.fromkeys(KINDS, 0)
missing = dict.fromkeys(KINDS, 0)
partial = dict.fromkeys(KINDS, 0)
statuses = {}
samples = []
seen = {}
claimed = {}

def note(tok, t0, t1, expires_at=None):
    s = seen.get(tok)
    if s is None:
        seen[tok] = [t0, t1]
    else:
        s[0] = max(s[0], t0); s[1] = max(s[1], t1)
    if expires_at is not None:
        claimed[tok] = max(claimed.get(tok, 0), expires_at)

def parse_json(data):
    if not data.endswith(b"}\n"):
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    tok = obj.get("access_token") if isinstance(obj, dict) else None
    if not isinstance(tok, str) or not RAW.fullmatch(tok) or "expires_at" not in obj:
        return None
    return obj

def epoch(iso):
    import datetime
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

def bad(kind, data):
    partial[kind] += 1
    if len(samples) < 5:
        samples.append(f"{kind}: {len(data)} bytes")  # never the content: it may hold a token

files = (("token", "raw"), ("token.json", "json"), ("openai.env", "env"))
while time.time() < until:
    for name, kind in files:
        t0 = time.time()
        try:
            with open(os.path.join(rt, name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            missing[kind] += 1
            continue
        t1 = time.time()
        reads[kind] += 1
        if kind == "raw":
            if not RAW.fullmatch(data.decode("ascii", "replace")):
                bad(kind, data); continue
            note(data.decode(), t0, t1)
        elif kind == "json":
            obj = parse_json(data)
            if obj is None:
                bad(kind, data); continue
            note(obj["access_token"], t0, t1, epoch(obj["expires_at"]))
        else:
            m = ENV.fullmatch(data.decode("ascii", "replace"))
            if m is None:
                bad(kind, data); continue
            note(m.group(1), t0, t1, float(m.group(2)))
    if sock_path:
        t0 = time.time()
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(sock_path)
            s.sendall(b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
        except OSError as err:
            statuses[type(err).__name__] = statuses.get(type(err).__name__, 0) + 1
            continue
        t1 = time.time()
        reads["socket"] += 1
        head, _, body = data.partition(b"\r\n\r\n")
        code = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "?"
        statuses[code] = statuses.get(code, 0) + 1
        if code == "200":
            obj = parse_json(body + b"\n")
            if obj is None:
                bad("socket", body); continue
            note(obj["access_token"], t0, t1, epoch(obj["expires_at"]))
    if pause:
        time.sleep(pause)
with open(out, "w") as f:
    json.dump({"reads": reads, "missing": missing, "partial": partial, "statuses": statuses,
               "samples": samples, "seen": seen, "claimed": claimed}, f)
"""


@contextlib.contextmanager
def readers(
    n: int, runtime: Path, sock: Path | None, seconds: float, out_dir: Path, pause: float = 0.0
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Start ``n`` reader processes for ``seconds``; yields a function that waits for
    them and returns their results."""
    until = time.time() + seconds
    procs = []
    for i in range(n):
        out = out_dir / f"reader{i}.json"
        procs.append(
            (
                subprocess.Popen(
                    [
                        sys.executable,
                        "-I",
                        "-c",
                        READER,
                        str(runtime),
                        str(sock or ""),
                        str(until),
                        str(out),
                        str(pause),
                    ],
                    stderr=subprocess.PIPE,
                ),
                out,
            )
        )

    def collect() -> list[dict[str, Any]]:
        results = []
        for proc, out in procs:
            _, err = proc.communicate(timeout=seconds + 60)
            assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
            results.append(json.loads(out.read_text()))
        return results

    try:
        yield collect
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


#: What the daemon logs when a token retires before its successor is on disk (the
#: fetch or the write was late): the files are removed, so readers find none.
LATE_RETIREMENT = ("expired with no successor", "its successor was not written in time")


def judge_reads(
    fake: FakeGoogle,
    results: list[dict[str, Any]],
    margin: float,
    daemon_log: str,
    *,
    same_clock: bool = True,
) -> dict[str, Any]:
    """Merge reader results and check every token seen against FakeGoogle.

    Returns figures, including ``problems`` (empty when all held): partial reads,
    non-200 socket answers, tokens FakeGoogle never issued, tokens read with less than
    ``margin`` seconds left, expiries claimed later than the real one, reads that began
    after the expiry the file (or answer) itself states, and missing files unless
    ``daemon_log`` shows a late retirement that explains them (then they are correct:
    no file may outlive its token). Warnings the daemon logged are included when there
    is a problem, to tell a slow machine from a bug.

    ``same_clock=False``: the daemon's wall clock is faked, so what the files state is
    not comparable with the readers' clock; those two checks are left to the caller."""
    reads: dict[str, int] = {}
    missing: dict[str, int] = {}
    partial: dict[str, int] = {}
    statuses: dict[str, int] = {}
    samples: list[str] = []
    seen: dict[str, list[float]] = {}
    claimed: dict[str, float] = {}
    for r in results:
        for src, dst in (
            (r["reads"], reads),
            (r["missing"], missing),
            (r["partial"], partial),
            (r["statuses"], statuses),
        ):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        samples += r["samples"]
        for tok, (t0, t1) in r["seen"].items():
            s = seen.setdefault(tok, [t0, t1])
            s[0], s[1] = max(s[0], t0), max(s[1], t1)
        for tok, exp in r["claimed"].items():
            claimed[tok] = max(claimed.get(tok, 0.0), exp)
    problems: list[str] = []
    unknown = expired = short = overclaimed = past_stated = 0
    least_left = float("inf")
    for tok, (t0, t1) in seen.items():
        real = fake.expires_at(tok)
        if real is None:
            unknown += 1
            continue
        if t1 >= real:
            expired += 1
        least_left = min(least_left, real - t0)
        if real - t0 < margin:
            short += 1
        if same_clock and claimed.get(tok, 0.0) > real + 1e-6:
            overclaimed += 1
        if same_clock and tok in claimed and t0 >= claimed[tok]:
            past_stated += 1
    if sum(partial.values()):
        problems.append(f"partial reads {partial} ({samples})")
    late = [line for line in daemon_log.splitlines() if any(m in line for m in LATE_RETIREMENT)]
    if sum(missing.values()) and not late:
        problems.append(f"missing files {missing}")
    if set(statuses) - {"200"}:
        problems.append(f"socket answers {statuses}")
    if unknown:
        problems.append(f"{unknown} token(s) FakeGoogle never issued")
    if expired:
        problems.append(f"{expired} token(s) read after they expired")
    if short:
        problems.append(f"{short} token(s) read with less than {margin:.2f}s left")
    if overclaimed:
        problems.append(f"{overclaimed} token(s) claimed to live longer than they do")
    if past_stated:
        problems.append(f"{past_stated} token(s) read after the expiry their file states")
    return {
        "reads": reads,
        "total_reads": sum(reads.values()),
        "missing": missing,
        "partial": partial,
        "socket_statuses": statuses,
        "distinct_tokens": len(seen),
        "least_seconds_left_at_read": round(least_left, 3),
        "tokens_read_after_their_stated_expiry": past_stated,
        "late_retirements": len(late),
        "problems": problems,
        "daemon_warnings": [
            line
            for line in daemon_log.splitlines()
            if problems and (" WARNING: " in line or " ERROR: " in line)
        ][:20],
    }


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """Mount a ``size`` tmpfs (mode 0700) on ``path``; skip the test where mounting is
    not allowed (not root, no CAP_SYS_ADMIN, a container without mount rights)."""
    import pytest

    path.mkdir(mode=0o700, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte (ENOSPC) with one file;
    call again to take back space freed since."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError as err:
        if err.errno != 28:  # ENOSPC
            raise
    finally:
        os.close(fd)
    return filler


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


# -- the clocks of a tokend run ---------------------------------------------------------


@dataclass
class Clocks:
    """Moves the clocks of the processes started with :meth:`env`, nobody else's.

    - :meth:`step`: the wall clock only (libfaketime with
      ``FAKETIME_DONT_FAKE_MONOTONIC=1``, its offset re-read from a file on every call),
      as NTP or a person setting the time does.
    - :meth:`suspend`: the wall clock and ``CLOCK_BOOTTIME`` together while
      ``CLOCK_MONOTONIC`` stands still, as a suspend does (tests/clockshift.c, which also
      keeps Python's ``time.sleep`` working under libfaketime).
    """

    shim: Path
    faketime: Path
    shift_file: Path
    step_file: Path
    stepped: float = 0.0
    suspended: float = 0.0

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": f"{self.shim} {self.faketime}",
            "CLOCKSHIFT_FILE": str(self.shift_file),
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_TIMESTAMP_FILE": str(self.step_file),
            "FAKETIME_NO_CACHE": "1",
        }

    def step(self, seconds: float) -> None:
        self.stepped += seconds
        _replace(self.step_file, f"{self.stepped:+.3f}\n")

    def suspend(self, seconds: float) -> None:
        self.suspended += seconds
        _replace(self.shift_file, f"{self.suspended:.3f}\n")

    @property
    def offset(self) -> float:
        """How far the faked wall clock is from the real one."""
        return self.stepped + self.suspended


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def clocks(directory: Path) -> Clocks:
    """Build the shim (once per machine) and find libfaketime; skip where either is
    missing, except in CI (``.ci/run`` installs faketime): there it is a failure."""
    import glob
    import hashlib

    import pytest

    def missing(what: str) -> Any:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; .ci/run installs it")
        pytest.skip(f"{what} is missing (apt-get install faketime gcc)")

    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not libs:
        missing("libfaketime")
    source = Path(__file__).with_name("clockshift.c")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    shim = Path(f"/tmp/tokend-clockshift-{digest}.so")
    if not shim.exists():
        tmp = shim.with_name(f"{shim.name}.{os.getpid()}")
        try:
            out = subprocess.run(
                ["cc", "-shared", "-fPIC", "-O2", "-o", str(tmp), str(source), "-ldl"],
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            missing("a C compiler (cc)")
        if out.returncode != 0:
            missing(f"a working C compiler ({out.stderr.strip()[:200]})")
        os.replace(tmp, shim)
    c = Clocks(shim, Path(libs[-1]), directory / "suspended", directory / "stepped")
    _replace(c.shift_file, "0\n")
    _replace(c.step_file, "+0\n")
    return c
