#!/usr/bin/env python3
"""Benchmarks: tokend next to gcloud and google-auth, measured in one run, one table.

Starts :class:`tokend.testing.FakeGoogle` on loopback (so the network is not what is
measured) and the real ``tokend run`` in a subprocess, then measures, per token fetch:

1. ``gcloud auth application-default print-access-token`` (a throw-away
   ``CLOUDSDK_CONFIG`` holding the ADC file, ``CLOUDSDK_AUTH_TOKEN_HOST`` -> the fake);
2. a fresh Python process doing ``google.auth.default()`` + ``refresh()``;
3. the ``tokend token`` CLI process;
4. ``. tokend/tokend-env.sh`` in sh (dash when present);
5. in-process ``tokend.client.token()``: token file, and socket (no token file);
6. raw ``GET /v1/token`` on the socket, keep-alive, at 1, 64 and 512 concurrent clients;

and the token-endpoint calls N client processes cause, the idle daemon's RSS and CPU, and
the time from rewriting the ADC file to the new identity's token in ``token.json``.
Rows 10-15 measure the local proxy against :class:`tokend.testing.FakeOpenAI`, next to
direct calls and a minimal aiohttp proxy (and LiteLLM's with ``--with-litellm``).

Every row stands next to its floor, measured in the same run, and its ratio to it
(``x floor``): ``python -c pass`` for the process rows, ``dash -c :`` for the sh snippet,
one ``stat`` and read for the in-process client, a minimal asyncio Unix-socket server
answering the same bytes for the socket rows, direct calls to the upstream for the
proxy's, one profile for the many-profiles rows.

Usage: ``.venv/bin/python scripts/bench.py [--quick] [--only proxy] [--with-litellm]
[--json PATH]``. Prints one markdown
table; a missed target says ``MISSED``. ``--quick`` (about 2 minutes) is what the test
suite runs: fewer samples, and a 10 s idle window scaled to a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NONE = "-"  # an empty cell

#: The socket load rows alternate tokend and its floor this many times per level.
LOAD_ROUNDS = 4

# What "the usual refresher snippet" costs a process. authorized_user files are what
# `gcloud auth application-default login` writes; google-auth ignores their token_uri
# (it always uses Google's), so the snippet points the credentials at the fake with
# with_token_uri(), which costs nothing measurable.
GOOGLE_AUTH_SNIPPET = f"""\
import os
import google.auth
import google.auth.transport.requests
creds, _ = google.auth.default(scopes=[{SCOPE!r}])
creds = creds.with_token_uri(os.environ["BENCH_TOKEN_URI"])
creds.refresh(google.auth.transport.requests.Request())
print(creds.token)
"""

# The floor of the socket rows: the least a Python server can do for the same requests.
# A minimal asyncio Unix-socket server (nothing but asyncio imported) that answers every
# request head with the bytes tokend's fast path sent, and wakes once a second as
# tokend's suspend check does. It runs until its stdin closes.
FLOOR_SERVER = """\
import asyncio, sys, time
path, answer = sys.argv[1], open(sys.argv[2], "rb").read()

class Floor(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        buf = self.buf + data
        n = buf.count(b"\\r\\n\\r\\n")
        if n:
            self.transport.write(answer * n)
            buf = buf[buf.rindex(b"\\r\\n\\r\\n") + 4:]
        self.buf = buf

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Floor, path, backlog=4096)
    def tick():
        time.clock_gettime(time.CLOCK_BOOTTIME), time.time()
        loop.call_later(1.0, tick)
    tick()
    done = loop.create_future()
    loop.add_reader(0, lambda: done.done() or sys.stdin.buffer.read1() or done.set_result(0))
    print("ready", flush=True)
    await done
    server.close()

asyncio.run(main())
"""


@dataclass(frozen=True)
class Plan:
    """How many samples each measurement takes (``--quick`` or the full run)."""

    gcloud_runs: int
    gauth_runs: int
    cli_runs: int
    sh_runs: int
    inproc_calls: int
    socket_calls: int
    load_seconds: float
    load_warmup: float
    clients: int  # client processes for the token-endpoint count
    idle_seconds: float
    adc_rewrites: int
    # the proxy (rows 10-15)
    proxy_seconds: float  # measured seconds of one chat phase (per target and round)
    proxy_warmup: float
    proxy_rounds: int  # direct and proxied phases alternate this many times
    ttfb_samples: int
    sse_rounds: int
    hold_streams: int
    hold_delay: float  # seconds the upstream waits before each event of a held stream
    socket_seconds: float  # the token socket's load next to the proxy's (row 14)
    # many profiles (row 16)
    profile_counts: tuple[int, ...]
    profile_window: float  # seconds of each measurement window
    profile_lifetime: int  # seconds a token lives: each window must see refreshes


QUICK = Plan(
    gcloud_runs=3,
    gauth_runs=5,
    cli_runs=15,
    sh_runs=30,
    inproc_calls=20_000,
    socket_calls=500,
    load_seconds=1.5,
    load_warmup=0.3,
    clients=6,
    idle_seconds=10.0,
    adc_rewrites=2,
    proxy_seconds=0.4,
    proxy_warmup=0.15,
    proxy_rounds=2,
    ttfb_samples=50,
    sse_rounds=2,
    hold_streams=200,
    hold_delay=2.0,
    socket_seconds=1.0,
    profile_counts=(1, 10),
    profile_window=6.0,
    profile_lifetime=5,
)
FULL = Plan(
    gcloud_runs=20,
    gauth_runs=30,
    cli_runs=100,
    sh_runs=300,
    inproc_calls=200_000,
    socket_calls=3_000,
    load_seconds=5.0,
    load_warmup=1.0,
    clients=100,
    idle_seconds=60.0,
    adc_rewrites=5,
    proxy_seconds=3.0,
    proxy_warmup=0.5,
    proxy_rounds=3,
    ttfb_samples=500,
    sse_rounds=10,
    hold_streams=1000,
    hold_delay=6.0,
    socket_seconds=5.0,
    profile_counts=(1, 10, 100),
    profile_window=30.0,
    profile_lifetime=20,
)

# -- statistics and formatting ----------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil without float error
    return ordered[min(len(ordered), int(rank)) - 1]


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def ratio(slow: float, fast: float) -> float:
    return slow / fast if fast > 0 else float("inf")


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def times_floor(value: float, floor: float) -> str:
    """The ``x floor`` cell: how many times its floor a row's median is."""
    return f"x{ratio(value, floor):.2f}"


@dataclass
class Row:
    what: str
    median: str
    p99: str = NONE
    target: str = NONE
    result: str = ""
    floor: str = NONE  #: the floor's median, measured in the same run
    x_floor: str = NONE  #: median / floor (for throughput: the floor's / ours)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        what: str,
        median: str,
        p99: str,
        target: str,
        result: str,
        *,
        floor: str = NONE,
        x_floor: str = NONE,
    ) -> None:
        self.rows.append(Row(what, median, p99, target, result, floor, x_floor))

    def table(self) -> str:
        lines = [
            "| what | median | p99 | floor | x floor | target | result |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            cells = (r.what, r.median, r.p99, r.floor, r.x_floor, r.target, r.result)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


# -- process plumbing -------------------------------------------------------------------

_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def run(
    argv: Sequence[str], env: dict[str, str], timeout: float = 60.0
) -> tuple[float, int, str, str]:
    """Run argv to completion: (wall seconds, exit code, stdout, stderr). The child is
    registered so that an interrupted bench can kill it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return time.perf_counter() - t0, proc.returncode, out.decode(), err.decode()


def worker(args: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    """Run this script as ``--worker ARGS...``: the JSON it printed."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    _, rc, out, err = run(argv, env, timeout)
    if rc != 0:
        raise RuntimeError(f"{args[0]} worker failed: {err.strip()[-1500:]}")
    return json.loads(out)


def kill_live() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def proc_cpu(pid: int) -> float:
    """CPU seconds a process has used: the scheduler's nanosecond count summed over its
    threads (/proc/<pid>/task/*/schedstat), else utime + stime from /proc/<pid>/stat,
    which counts in clock ticks (10 ms: too coarse for an idle daemon)."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces: split after its closing paren.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile (shared libraries, shared with other processes) and PSS
    of a process, in MB, from /proc."""
    mem: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                mem[key] = int(line.split()[1]) / 1024
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                mem["Pss"] = int(line.split()[1]) / 1024
    return mem


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores, {cpu}, {platform.system()} {platform.release()}"


def clean_env() -> dict[str, str]:
    """The environment of every child: none of the user's tokend, Google or gcloud
    settings; loopback never through an HTTP proxy. Children write .pyc files, as an
    installed package has them: under PYTHONDONTWRITEBYTECODE an edited module would be
    compiled on every run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOKEND_", "GOOGLE_", "CLOUDSDK_", "GCE_METADATA"))
        and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# -- the bench: FakeGoogle + tokend run ---------------------------------------------------


class Bench:
    def __init__(self, plan: Plan, report: Report) -> None:
        from tokend.testing import FakeGoogle

        self.plan = plan
        self.report = report
        # Short: the socket path must stay under the AF_UNIX limit.
        self.work = Path(tempfile.mkdtemp(prefix="tkb", dir="/tmp"))
        self.runtime = self.work / "rt"
        self.sock = self.runtime / "tokend.sock"
        self.adc = self.work / "adc.json"
        self.fake = FakeGoogle(lifetime=3600)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_calls = 0
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.base_env = clean_env()
        self.floor_sock = self.work / "floor.sock"
        self.floor: subprocess.Popen[bytes] | None = None
        self.py_floor: list[float] = []  # `python -c pass`, the CLI rows' floor

    # -- lifecycle

    def start(self) -> None:
        self.fake.start()
        self.fake.write_authorized_user(self.adc, account="alice@example.com")
        config = self.work / "config.toml"
        config.write_text(
            f'[profiles.default]\ncredentials = "adc"\ntoken_uri = "{self.fake.token_uri}"\n'
        )
        env = {
            **self.base_env,
            **self.fake.env(),
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.adc),
            "TOKEND_RUNTIME_DIR": str(self.runtime),
        }
        with open(self.work / "daemon.log", "wb") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "tokend", "run", "--config", str(config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work,
            )
        deadline = time.monotonic() + 30
        while not (self.current_token() and self.sock.exists()):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tokend did not start:\n{self.daemon_log()}")
            time.sleep(0.02)
        self.daemon_calls = self.fake.calls["token"]
        self.start_floor()

    def start_floor(self) -> None:
        """The socket rows' floor (:data:`FLOOR_SERVER`), answering with the very bytes
        tokend's fast path sends for a keep-alive ``GET /v1/token``."""
        answer = self.work / "answer"
        answer.write_bytes(fetch_answer(self.sock))
        self.floor = subprocess.Popen(
            [sys.executable, "-c", FLOOR_SERVER, str(self.floor_sock), str(answer)],
            env=self.base_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.floor.stdout is not None
        if self.floor.stdout.readline() != b"ready\n":
            raise RuntimeError("the floor server did not start")

    def stop(self) -> None:
        kill_live()
        if self.floor is not None and self.floor.poll() is None:
            assert self.floor.stdin is not None
            self.floor.stdin.close()
            try:
                self.floor.wait(5)
            except subprocess.TimeoutExpired:
                self.floor.kill()
                self.floor.wait()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(5)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.fake.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def daemon_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / "daemon.log").read_text(errors="replace")[-3000:]
        return ""

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def current_token(self) -> str:
        try:
            return str(json.loads((self.runtime / "token.json").read_bytes())["access_token"])
        except (OSError, ValueError, KeyError):
            return ""

    def client_env(self, **extra: str) -> dict[str, str]:
        return {**self.base_env, "TOKEND_RUNTIME_DIR": str(self.runtime), **extra}

    # -- helpers

    def samples(
        self, argv: Sequence[str], env: dict[str, str], n: int, what: str, timeout: float = 60
    ) -> list[float]:
        """Wall seconds of n runs of argv, after one warm-up run (page cache, .pyc files)
        whose output must end with a token the fake issued."""
        _, rc, out, err = run(argv, env, timeout)
        token = out.strip().splitlines()[-1] if out.strip() else ""
        if rc != 0 or not self.fake.is_valid(token):
            raise RuntimeError(f"{what}: exit {rc}, no valid token: {err.strip()[-500:]}")
        times = []
        for _ in range(n):
            t, rc, out, err = run(argv, env, timeout)
            if rc != 0:
                raise RuntimeError(f"{what}: exit {rc}: {err.strip()[-500:]}")
            times.append(t)
        return times

    def paired(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        floor_argv: Sequence[str],
        n: int,
        what: str,
        expect: str = "",
    ) -> tuple[list[float], list[float]]:
        """Wall seconds of n runs of argv and n of its floor, alternating, so that what
        else the machine does weighs on both alike; one unmeasured warm-up run of each.
        argv must succeed (and print ``expect``); so must the floor."""
        times: list[float] = []
        floor: list[float] = []
        for i in range(n + 1):
            t, rc, out, err = run(argv, env)
            if rc != 0 or expect not in out:
                raise RuntimeError(f"{what}: exit {rc}, not what was expected: {err[-500:]}")
            f, rc, _out, err = run(floor_argv, self.base_env)
            if rc != 0:
                raise RuntimeError(f"{what}'s floor {floor_argv}: exit {rc}: {err[-500:]}")
            if i:
                times.append(t)
                floor.append(f)
        return times, floor

    def burst(self, argv: Sequence[str], env: dict[str, str], n: int, parallel: int) -> int:
        """n client processes, `parallel` at a time: the token-endpoint calls they caused."""
        before = self.fake.calls["token"]
        pool = ThreadPoolExecutor(parallel)
        try:
            results = list(pool.map(lambda _: run(argv, env, 120), range(n)))
        except BaseException:
            kill_live()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        failed = [r for r in results if r[1] != 0]
        if failed:
            raise RuntimeError(f"{len(failed)} of {n} processes failed: {failed[0][3][-300:]}")
        return self.fake.calls["token"] - before

    def _worker(self, args: list[str], env: dict[str, str], timeout: float = 120) -> Any:
        return worker(args, env, timeout)

    # -- 1-4: one process per token

    def gcloud(self) -> list[float] | None:
        what = "1. `gcloud auth application-default print-access-token`"
        exe = shutil.which("gcloud")
        if exe is None:
            self.report.add(what, "skipped", NONE, NONE, "gcloud is not installed")
            return None
        cfg = self.work / "gcloud"
        cfg.mkdir()
        # gcloud reads user ADC from $CLOUDSDK_CONFIG and, for authorized_user
        # credentials, refreshes at the auth/token_host property.
        self.fake.write_authorized_user(cfg / "application_default_credentials.json")
        env = {
            **self.base_env,
            "CLOUDSDK_CONFIG": str(cfg),
            "CLOUDSDK_AUTH_TOKEN_HOST": self.fake.token_uri,
            # Off the network and quiet (a user's gcloud may do these checks as well).
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        }
        argv = [exe, "auth", "application-default", "print-access-token"]
        try:
            times = self.samples(argv, env, self.plan.gcloud_runs, "gcloud")
        except RuntimeError as err:
            self.report.add(what, "skipped", NONE, NONE, f"not pointable at the fake: {err}")
            return None
        self.commands["gcloud"] = (argv, env)
        self.report.add(
            f"{what} (new process; user ADC in a throw-away `CLOUDSDK_CONFIG`, "
            "`CLOUDSDK_AUTH_TOKEN_HOST` → fake)",
            fmt_s(pct(times, 50)),
            fmt_s(pct(times, 99)),
            "baseline",
            f"n={len(times)}",
            **self.python_floor(times),
        )
        self.report.raw["gcloud"] = times
        return times

    def google_auth(self, gcloud: list[float] | None) -> list[float]:
        env = {
            **self.base_env,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.adc),
            "BENCH_TOKEN_URI": self.fake.token_uri,
        }
        argv = [sys.executable, "-c", GOOGLE_AUTH_SNIPPET]
        times = self.samples(argv, env, self.plan.gauth_runs, "google-auth")
        self.commands["google-auth"] = (argv, env)
        med = pct(times, 50)
        result = f"n={len(times)}"
        if gcloud:
            result += f"; {ratio(pct(gcloud, 50), med):.1f}x faster than gcloud"
        self.report.add(
            "2. new Python process: `google.auth.default()` + `refresh()` (authorized_user "
            "ADC via `GOOGLE_APPLICATION_CREDENTIALS`, `creds.with_token_uri(fake)`)",
            fmt_s(med),
            fmt_s(pct(times, 99)),
            "baseline",
            result,
            **self.python_floor(times),
        )
        self.report.raw["google_auth"] = times
        return times

    def python_floor(self, times: list[float]) -> dict[str, str]:
        """The floor cells of a process row: ``python -c pass`` (interpreter start-up,
        same venv), measured once for rows 1 and 2 and side by side with rows 3."""
        if not self.py_floor:
            py = [sys.executable, "-c", "pass"]
            run(py, self.base_env)  # warm-up
            self.py_floor = [run(py, self.base_env)[0] for _ in range(self.plan.cli_runs)]
        floor = pct(self.py_floor, 50)
        return {"floor": fmt_s(floor), "x_floor": times_floor(pct(times, 50), floor)}

    def cli(self, gcloud: list[float] | None, gauth: list[float]) -> None:
        exe = str(Path(sys.executable).parent / "tokend")
        py = [sys.executable, "-c", "pass"]
        token = self.current_token()
        argv = [exe, "token"]
        env = self.client_env()
        times, floor = self.paired(argv, env, py, self.plan.cli_runs, "tokend token", token)
        self.commands["tokend token"] = (argv, env)
        med, fl = pct(times, 50), pct(floor, 50)
        ok = med < 0.060 and med <= 2 * fl
        parts = [f"{'within' if med <= 2 * fl else 'over'} 2x `python -c pass`"]
        if gcloud:
            r = ratio(pct(gcloud, 50), med)
            parts.append(f"{r:.0f}x faster than gcloud")
            ok = ok and r >= 20
        r = ratio(pct(gauth, 50), med)
        parts.append(f"{r:.1f}x faster than google-auth")
        ok = ok and r >= 5
        parts.append(f"{'under' if med < 0.060 else 'over'} 60 ms")
        self.report.add(
            "3. `tokend token` (new process, the console script; floor: `python -c pass` "
            "run alternately with it)",
            fmt_s(med),
            fmt_s(pct(times, 99)),
            "≤2x floor, ≥20x gcloud, ≥5x google-auth, <60 ms",
            f"{', '.join(parts)}: {verdict(ok)}",
            floor=fmt_s(fl),
            x_floor=times_floor(med, fl),
        )
        self.report.raw["tokend_token"] = {"times": times, "floor": floor}
        argv = [exe, "env"]
        times, floor = self.paired(argv, env, py, self.plan.cli_runs, "tokend env", token)
        med, fl = pct(times, 50), pct(floor, 50)
        self.report.add(
            "3. `tokend env` (new process; floor: `python -c pass` run alternately with it)",
            fmt_s(med),
            fmt_s(pct(times, 99)),
            "≤2x floor",
            verdict(med <= 2 * fl),
            floor=fmt_s(fl),
            x_floor=times_floor(med, fl),
        )
        self.report.raw["tokend_env"] = {"times": times, "floor": floor}

    def shell(self, gcloud: list[float] | None) -> None:
        sh = shutil.which("dash") or "/bin/sh"
        name = Path(sh).name
        script = shlex.quote(str(ROOT / "tokend" / "tokend-env.sh"))
        env = self.client_env()
        argv = [sh, "-c", f'. {script} && printf "%s\\n" "$OPENAI_API_KEY"']
        times, floor = self.paired(
            argv, env, [sh, "-c", ":"], self.plan.sh_runs, "tokend-env.sh", self.current_token()
        )
        med, fl = pct(times, 50), pct(floor, 50)
        self.report.add(
            f"4. `{name} -c '. tokend/tokend-env.sh'` (new sh process; floor: `{name} -c :`)",
            fmt_s(med),
            fmt_s(pct(times, 99)),
            NONE,
            f"{ratio(pct(gcloud, 50), med):.0f}x faster than gcloud" if gcloud else "",
            floor=fmt_s(fl),
            x_floor=times_floor(med, fl),
        )
        self.report.raw["sh"] = {"times": times, "floor": floor}
        # Sourced n times in one running shell: what a login script pays. The floor is
        # the same loop doing `:` instead (its `date` forks and arithmetic).
        n = self.plan.sh_runs

        def loop(body: str) -> float:
            code = (
                "s=$(date +%s%N); i=0; "
                f"while [ $i -lt {n} ]; do {body} || exit 1; i=$((i+1)); done; "
                "e=$(date +%s%N); echo $((e - s))"
            )
            _, rc, out, err = run([sh, "-c", code], env)
            if rc != 0 or not out.strip().isdigit():
                raise RuntimeError(f"sourcing tokend-env.sh in a loop: exit {rc}: {err[-300:]}")
            return int(out.strip()) / n / 1e9

        each, floor_each = loop(f". {script}"), loop(":")
        self.report.add(
            f"4. `. tokend/tokend-env.sh` in a running {name} (mean of {n}; floor: the "
            "same loop doing `:`)",
            fmt_s(each),
            NONE,
            NONE,
            "the loop reads `date` twice in all",
            floor=fmt_s(floor_each),
            x_floor=times_floor(each, floor_each),
        )

    # -- 5-6: in-process and socket

    def inproc(self) -> None:
        out = self._worker(["inproc", str(self.plan.inproc_calls)], self.client_env())
        times = [t / 1e9 for t in out["ns"]]
        floor = [t / 1e9 for t in out["floor"]]
        med, fl = pct(times, 50), pct(floor, 50)
        self.report.add(
            "5. in-process `tokend.client.token()`, token file (floor: one `os.stat` and "
            "one read of token.json)",
            fmt_s(med),
            fmt_s(pct(times, 99)),
            "<50 µs",
            f"{verdict(med < 50e-6)} (n={len(times)}); a call is one `stat` while the "
            "file is unchanged",
            floor=fmt_s(fl),
            x_floor=times_floor(med, fl),
        )
        # No token file where the client looks, so token() asks the socket. The daemon
        # holds a valid token and answers from memory: forcing refreshes (min_valid
        # above what the token has) would measure FakeGoogle, and the daemon rate-limits it.
        empty = self.work / "empty"
        empty.mkdir()
        env = self.client_env(TOKEND_RUNTIME_DIR=str(empty), TOKEND_SOCKET=str(self.sock))
        out = self._worker(["inproc", str(self.plan.socket_calls)], env)
        times = [t / 1e9 for t in out["ns"]]
        floor_out = self._worker(["rawget", str(self.floor_sock), str(self.plan.socket_calls)], env)
        floor = [t / 1e9 for t in floor_out["ns"]]
        med, fl = pct(times, 50), pct(floor, 50)
        self.report.add(
            "5. in-process `tokend.client.token()`, socket (no token file; a new connection "
            "per call; floor: connect, `GET`, read, close against the floor server)",
            fmt_s(med),
            fmt_s(pct(times, 99)),
            NONE,
            f"n={len(times)}",
            floor=fmt_s(fl),
            x_floor=times_floor(med, fl),
        )

    def load(self) -> None:
        best = best_floor = 0.0
        rounds = LOAD_ROUNDS
        for conns, rate in ((1, 0.0), (64, 0.0), (512, 0.0), (64, 5000.0)):
            args = [
                str(conns),
                str(self.plan.load_seconds / rounds),
                str(self.plan.load_warmup),
                str(rate),
            ]
            # tokend and the floor in turns, the order swapped every round, so that
            # what else the machine does weighs on both alike.
            runs: dict[str, list[Any]] = {"tokend": [], "floor": []}
            daemon_cpu = 0.0
            for r in range(rounds):
                for name in ("tokend", "floor") if r % 2 == 0 else ("floor", "tokend"):
                    path = self.sock if name == "tokend" else self.floor_sock
                    cpu0 = proc_cpu(self.pid)
                    runs[name].append(self._worker(["load", str(path), *args], self.base_env))
                    if name == "tokend":
                        daemon_cpu += proc_cpu(self.pid) - cpu0
            out, fo = (
                {
                    "ns": [t for o in runs[name] for t in o["ns"]],
                    **{
                        k: sum(o[k] for o in runs[name])
                        for k in ("count", "elapsed", "cpu", "total")
                    },
                }
                for name in ("tokend", "floor")
            )
            rps, floor_rps = out["count"] / out["elapsed"], fo["count"] / fo["elapsed"]
            lat = [t / 1e9 for t in out["ns"]]
            floor_lat = [t / 1e9 for t in fo["ns"]]
            p50, p99, f50 = pct(lat, 50), pct(lat, 99), pct(floor_lat, 50)
            result = (
                f"{rps:,.0f} req/s (floor {floor_rps:,.0f}); daemon CPU "
                f"{daemon_cpu / out['total']:.0%}, load generator CPU "
                f"{out['cpu'] / out['total']:.0%}; floor p99 {fmt_s(pct(floor_lat, 99))}"
            )
            clients = f"{conns} client{'s' if conns > 1 else ''}"
            target = NONE
            if rate:
                what = (
                    f"6. socket `GET /v1/token`, keep-alive, {clients} sending "
                    f"{rate:,.0f} req/s together (Poisson)"
                )
                target = "p50 <200 µs, p99 <2 ms at 64 clients"
                result += f": {verdict(p50 < 200e-6 and p99 < 2e-3)}"
            else:
                best, best_floor = max(best, rps), max(best_floor, floor_rps)
                what = f"6. socket `GET /v1/token`, keep-alive, {clients}, closed loop"
                if conns > 1:
                    result += f"; p50 ≈ {conns} / throughput = {fmt_s(conns / rps)}"
                if conns in (1, 64):
                    target = "p50 ≤1.3x floor"
                    result += f": {verdict(p50 <= 1.3 * f50)}"
            self.report.add(
                what,
                fmt_s(p50),
                fmt_s(p99),
                target,
                result,
                floor=fmt_s(f50),
                x_floor=times_floor(p50, f50),
            )
            self.report.raw[f"load_{conns}_{rate:g}"] = {
                "tokend": {k: v for k, v in out.items() if k != "ns"},
                "floor": {k: v for k, v in fo.items() if k != "ns"},
            }
        self.report.add(
            "6. socket throughput (best closed-loop level; x floor = the floor's / ours)",
            f"{best:,.0f} req/s",
            NONE,
            "≥5,000 req/s",
            verdict(best >= 5000),
            floor=f"{best_floor:,.0f} req/s",
            x_floor=times_floor(best_floor, best),
        )
        self.report.notes.append(
            "Load generator: one separate Python process, epoll over non-blocking keep-alive "
            "connections, requests pre-encoded; latency is from send to the answer's last "
            "byte. Closed loop: each connection sends its next request as soon as its answer "
            "is in, so N requests are always queued and p50 ≈ N / throughput (Little's law); "
            "with 64 queued requests no server has a 200 µs p50 below 320,000 req/s. The "
            "paced row is the latency target's case: 64 connected clients asking at random "
            "times, together at the 5,000 req/s throughput target (it waits in select(2), "
            "which sleeps to the microsecond). The socket rows' floor is a minimal asyncio "
            "Unix-socket server in its own process (nothing but asyncio imported) answering "
            "every request with the bytes tokend's fast path sent, driven by the same load "
            f"generator in turns with tokend ({LOAD_ROUNDS} rounds a level, the order "
            "swapped every round)."
        )

    # -- 7-9

    def endpoint_calls(self) -> None:
        n = self.plan.clients
        for what, parallel in (("gcloud", 4), ("google-auth", 8), ("tokend token", 8)):
            if what not in self.commands:
                continue
            argv, env = self.commands[what]
            calls = self.burst(argv, env, n, parallel)
            target, result = NONE, f"{calls / n:g} per client"
            if what == "tokend token":
                target = "independent of N"
                result = (
                    f"{verdict(calls == 0)}: the clients read the token file; the daemon "
                    f"made {self.daemon_calls} call(s) since it started, one per token "
                    "lifetime, for every client"
                )
            self.report.add(
                f"7. token-endpoint calls, {n} client processes ({what}, {parallel} at a time; "
                "floor: none needed while one token serves them all)",
                str(calls),
                NONE,
                target,
                result,
                floor="0",
            )

    def idle(self) -> None:
        seconds = self.plan.idle_seconds
        time.sleep(1.0)  # the load generators' connections close
        assert self.floor is not None
        cpu0, floor_cpu0 = proc_cpu(self.pid), proc_cpu(self.floor.pid)
        time.sleep(seconds)
        cpu = proc_cpu(self.pid) - cpu0
        floor_cpu = proc_cpu(self.floor.pid) - floor_cpu0
        mem = proc_mem(self.pid)
        rss = mem["VmRSS"]
        floor_rss = proc_mem(self.floor.pid)["VmRSS"]
        detail = ", ".join(
            f"{label} {mem[key]:.1f} MB"
            for key, label in (("RssAnon", "anonymous"), ("RssFile", "file-backed"), ("Pss", "PSS"))
            if key in mem
        )
        self.report.add(
            "8. idle daemon RSS (VmRSS, after the load; floor: the floor server's, a "
            "Python process with asyncio alone)",
            f"{rss:.1f} MB",
            NONE,
            "<60 MB",
            f"{verdict(rss < 60)} ({detail})",
            floor=f"{floor_rss:.1f} MB",
            x_floor=times_floor(rss, floor_rss),
        )
        # Everything but the fast path (status, metrics, errors, waits) loads aiohttp.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.sock))
            s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
        time.sleep(0.5)
        loaded = proc_mem(self.pid)["VmRSS"]
        self.report.add(
            "8. the same daemon after one `/v1/status` (loads aiohttp)",
            f"{loaded:.1f} MB",
            NONE,
            NONE,
            f"+{loaded - rss:.1f} MB: the full HTTP handling (status, metrics, errors, waits) "
            "loads on first use",
            floor=f"{floor_rss:.1f} MB",
            x_floor=times_floor(loaded, floor_rss),
        )
        per_minute = cpu * 60 / seconds
        window = "over 60 s" if seconds == 60 else f"over {seconds:g} s, x{60 / seconds:g}"
        floor_minute = floor_cpu * 60 / seconds
        self.report.add(
            f"8. idle daemon CPU per minute (time on CPU, all threads, {window}; floor: "
            "the floor server's, which also wakes once a second)",
            f"{per_minute:.4f} s",
            NONE,
            "<0.1 s",
            f"{verdict(per_minute < 0.1)} (includes the 1 s clock tick that notices suspends)",
            floor=f"{floor_minute:.4f} s",
            x_floor=times_floor(per_minute, floor_minute),
        )
        self.report.raw["idle"] = {
            "cpu_s": cpu,
            "floor_cpu_s": floor_cpu,
            "floor_rss": floor_rss,
            "seconds": seconds,
            **mem,
            "VmRSS_after_status": loaded,
        }

    def refresh_floor(self) -> list[float]:
        """What the refresh alone costs: google-auth's ``refresh()`` of the ADC file's
        credentials against the fake, in this process (after one warm-up)."""
        import google.auth.transport.requests
        import google.oauth2.credentials

        info = json.loads(self.adc.read_text())
        creds = google.oauth2.credentials.Credentials.from_authorized_user_info(info)
        creds = creds.with_token_uri(self.fake.token_uri)
        request = google.auth.transport.requests.Request()
        times = []
        for i in range(self.plan.adc_rewrites + 1):
            t0 = time.perf_counter()
            creds.refresh(request)
            if i:
                times.append(time.perf_counter() - t0)
        return times

    def adc_rewrite(self) -> None:
        times = []
        for i in range(self.plan.adc_rewrites):
            account = f"user{i}@example.com"
            t0 = time.perf_counter()
            self.fake.write_authorized_user(self.adc, account=account)
            while self.fake.who(self.current_token()) != account:
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(
                        f"the new identity never reached token.json:\n{self.daemon_log()}"
                    )
                time.sleep(0.0005)
            times.append(time.perf_counter() - t0)
            time.sleep(1.2)  # one login at a time
        floor = self.refresh_floor()
        self.report.add(
            "9. ADC file rewritten → new identity's token in token.json (floor: one "
            "google-auth `refresh()` against the fake, in-process)",
            fmt_s(pct(times, 50)),
            fmt_s(pct(times, 99)),
            NONE,
            f"n={len(times)} (inotify → reload → refresh at FakeGoogle → atomic write)",
            floor=fmt_s(pct(floor, 50)),
            x_floor=times_floor(pct(times, 50), pct(floor, 50)),
        )
        self.report.raw["adc_rewrite"] = times


# -- 10-15: the OpenAI proxy, against the Vertex-like stand-in ------------------------------

PROJECT = "fake-project"
LOCATION = "us-central1"
LITELLM_VENV = Path.home() / ".cache" / "tokend-bench" / "litellm-venv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fmt_d(seconds: float) -> str:
    """A difference, signed: +1.2 ms, -40.0 µs."""
    return ("+" if seconds >= 0 else "-") + fmt_s(abs(seconds))


def fmt_pair(ns: Sequence[float]) -> str:
    return f"p50 {fmt_s(pct(ns, 50))}, p99 {fmt_s(pct(ns, 99))}"


class Upstream:
    """FakeGoogle + FakeOpenAI in a worker process of their own, so that their request
    threads do not share a GIL with the bench or the load generator; driven by one JSON
    line per command on its stdin (EOF stops it)."""

    def __init__(self, directory: Path, log_path: Path, env: dict[str, str]) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "upstream"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*argv, str(directory)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        with _LIVE_LOCK:
            _LIVE.add(self.proc)
        self.log_path = log_path
        self.info: dict[str, Any] = self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the upstream worker died: {self.log_path.read_text()[-1000:]}")
        return json.loads(line)

    def call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        with _LIVE_LOCK:
            _LIVE.discard(self.proc)


class ProxyBench:
    """Rows 10-15: ``tokend run`` with ``[proxy]`` in front of :class:`FakeOpenAI`, every
    measurement next to its floor (the same client code calling the stand-in directly
    with a valid Google token) in the same run, the two alternating."""

    def __init__(self, plan: Plan, report: Report, with_litellm: bool) -> None:
        self.plan = plan
        self.report = report
        self.with_litellm = with_litellm
        self.work = Path(tempfile.mkdtemp(prefix="tkp", dir="/tmp"))
        self.runtime = self.work / "rt"
        self.sock = self.runtime / "tokend.sock"
        self.env = clean_env()
        self.upstream: Upstream | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.lean: subprocess.Popen[bytes] | None = None
        self.litellm: subprocess.Popen[bytes] | None = None
        self.litellm_status = "not run: pass --with-litellm"
        self.targets: dict[str, dict[str, Any]] = {}
        self.levels: dict[str, dict[str, Any]] = {}

    # -- lifecycle

    def start(self) -> None:
        # The daemon watches the directories of its config and credentials: its log (a
        # line per proxied request) must not be in them, or every request would wake
        # its watcher thread.
        for sub in ("cfg", "creds", "log"):
            (self.work / sub).mkdir()
        self.upstream = up = Upstream(self.work / "creds", self.log("upstream"), self.env)
        config = self.work / "cfg" / "config.toml"
        config.write_text(
            f'[proxy]\nlisten = "127.0.0.1:0"\n'
            f'[profiles.default]\ncredentials = "{up.info["sa"]}"\n'
            f'[profiles.default.openai]\nproject = "{PROJECT}"\nlocation = "{LOCATION}"\n'
            f'api_endpoint = "{up.info["origin"]}"\n'
        )
        env = {
            **self.env,
            "TOKEND_RUNTIME_DIR": str(self.runtime),
            "TOKEND_STATE_DIR": str(self.work / "state"),
        }
        with open(self.log("daemon"), "wb") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "tokend", "run", "--config", str(config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work / "log",
            )
        deadline = time.monotonic() + 30
        penv = self.runtime / "proxy.env"
        while not (penv.exists() and self.sock.exists() and (self.runtime / "token.json").exists()):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tokend (proxy) did not start:\n{self.daemon_log()}")
            time.sleep(0.02)
        proxy = dict(line.split("=", 1) for line in penv.read_text().splitlines() if "=" in line)
        self.targets = {
            "direct": {
                "name": "direct",
                "url": f"{up.info['vertex_base_url']}/chat/completions",
                "headers": {"Authorization": f"Bearer {up.info['token']}"},
            },
            "proxy": {
                "name": "proxy",
                "url": f"{proxy['OPENAI_BASE_URL']}/chat/completions",
                "headers": {"Authorization": f"Bearer {proxy['OPENAI_API_KEY']}"},
            },
        }
        self.start_lean()
        # The proxied paths work end to end before anything is measured.
        self._http({"mode": "ttfb", "targets": list(self.targets.values()), "samples": 3})

    def start_lean(self) -> None:
        """The floor for a proxy: :func:`worker_lean`, a minimal aiohttp reverse proxy
        with none of tokend's checks, on the same upstream."""
        assert self.upstream is not None
        info = self.upstream.info
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "lean"]
        with open(self.log("lean"), "wb") as log:
            self.lean = subprocess.Popen(
                [*argv, info["vertex_base_url"], info["token"]],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        with _LIVE_LOCK:
            _LIVE.add(self.lean)
        assert self.lean.stdout is not None
        line = self.lean.stdout.readline()
        if not line:
            raise RuntimeError(f"the lean proxy did not start: {self.log('lean').read_text()}")
        self.targets["lean"] = {
            "name": "lean",
            "url": f"http://127.0.0.1:{int(line)}/v1/chat/completions",
            "headers": {},
            "pid": self.lean.pid,
        }

    def stop(self) -> None:
        for proc in (self.litellm, self.lean, self.daemon):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            with _LIVE_LOCK:
                _LIVE.discard(proc)
        if self.upstream is not None:
            self.upstream.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def log(self, name: str) -> Path:
        return self.work / "log" / f"{name}.log"

    def daemon_log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log("daemon").read_text(errors="replace")[-3000:]
        return ""

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def _http(self, spec: dict[str, Any], timeout: float = 300) -> Any:
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "http"]
        spec = {"pid": self.pid, **spec}
        _, rc, out, err = run([*argv, json.dumps(spec)], self.env, timeout)
        if rc != 0:
            raise RuntimeError(
                f"http worker ({spec['mode']}) failed: {err.strip()[-1500:]}\n"
                f"daemon log: {self.daemon_log()[-1500:]}"
            )
        return json.loads(out)

    def _set(self, chunks: int, delay: float) -> None:
        assert self.upstream is not None
        self.upstream.call("set", chunks=chunks, delay=delay)

    # -- the rows

    def run(self) -> None:
        self.chat()
        self.ttfb()
        self.sse()
        self.hold()
        self.socket_under_load()
        # Started last: even idle, LiteLLM's background tasks would take CPU from the
        # rows before.
        self.start_litellm()
        self.litellm_rows()
        self.report.notes.append(
            "Proxy rows (10-15): the stand-in upstream (FakeGoogle + FakeOpenAI: stdlib "
            "ThreadingHTTPServer, a thread per connection) runs in a worker process of its "
            "own, the load generator (aiohttp, one process) in "
            "another, and the daemon in a third; on this machine they share "
            f"{len(os.sched_getaffinity(0))} cores. The floor is the same load generator "
            "calling the stand-in directly with a valid Google token; direct and proxied "
            "phases alternate (the order swapped every round). A second floor, the lean "
            "proxy, is a 30-line aiohttp reverse proxy with none of tokend's checks, on the "
            "same upstream. Every client keeps its connections alive (HTTP/1.1), and so "
            "does the stand-in (as Vertex does), except for streams, which end with their "
            "connection. Where the closed loop saturates (64 clients), the added latency "
            "is queueing on a busy machine, the lean proxy's as much as tokend's; the paced "
            "row is the case the target is about."
        )

    def _chat(
        self,
        conns: int,
        rate: float,
        names: Sequence[str],
        seconds: float = 0.0,
        warmup: float = 0.0,
        rounds: int = 0,
    ) -> dict[str, Any]:
        p = self.plan
        out: dict[str, Any] = self._http(
            {
                "mode": "chat",
                "targets": [self.targets[n] for n in names],
                "conns": conns,
                "seconds": seconds or p.proxy_seconds,
                "warmup": warmup or p.proxy_warmup,
                "rounds": rounds or p.proxy_rounds,
                "rate": rate,
            }
        )
        return out

    def chat(self) -> None:
        names = ["direct", "proxy", "lean"]
        self._set(3, 0.0)
        levels: dict[str, dict[str, Any]] = {}
        for conns in (1, 64):
            levels[f"c{conns}"] = out = self._chat(conns, 0.0, names)
            self._added_row(
                out,
                f"10. proxy: added latency (proxy - direct), non-streaming `chat/completions`, "
                f"{conns} client{'s' if conns > 1 else ''}, closed loop",
                conns == 64,
            )
            if conns == 64:
                rd, rt, rl = (out[n]["rps"] for n in ("direct", "proxy", "lean"))
                t, lean = out["proxy"], out["lean"]
                self.report.add(
                    "10. proxy: throughput, non-streaming `chat/completions`, 64 clients, "
                    "closed loop",
                    f"{rt:,.0f} req/s",
                    NONE,
                    "≥ 0.8x the lean proxy",
                    f"lean proxy (floor) {rl:,.0f} req/s: x{ratio(rt, rl):.2f}; direct "
                    f"{rd:,.0f} req/s; daemon CPU {fmt_s(t['daemon_cpu'] / t['done'])} a "
                    f"request (lean proxy {fmt_s(lean['daemon_cpu'] / lean['done'])}), "
                    f"{t['daemon_cpu'] / t['wall']:.0%} of a core: {verdict(rt >= 0.8 * rl)}",
                    floor=f"{rl:,.0f} req/s",
                    x_floor=times_floor(rl, rt),
                )
                paced = 0.5 * min(rd, rt, rl)
        # The latency target's case when the closed loop saturates a core: 64 clients
        # asking at random times, together at half the slowest closed-loop throughput.
        paced = float(max(50, round(paced, -1)))
        levels["paced"] = out = self._chat(64, paced, ["direct", "proxy", "lean"])
        self._added_row(
            out,
            f"10. proxy: added latency, non-streaming `chat/completions`, 64 clients sending "
            f"{paced:,.0f} req/s together (Poisson; half the closed-loop throughput)",
            True,
        )
        self.levels = levels
        self.report.raw["proxy_chat"] = {
            level: {name: {k: v for k, v in r.items() if k != "ns"} for name, r in out.items()}
            for level, out in levels.items()
        }

    def _added_row(self, out: dict[str, Any], what: str, judged: bool) -> None:
        """A latency row: what the proxy adds to calling the upstream directly, next to
        what the lean proxy adds in the same run; judged against the issue's target."""
        dl, tl, ll = ([x / 1e9 for x in out[n]["ns"]] for n in ("direct", "proxy", "lean"))
        add50, add99 = pct(tl, 50) - pct(dl, 50), pct(tl, 99) - pct(dl, 99)
        result = (
            f"proxy {fmt_pair(tl)}; direct (floor) {fmt_pair(dl)}; the lean proxy adds "
            f"{fmt_d(pct(ll, 50) - pct(dl, 50))} (p50), {fmt_d(pct(ll, 99) - pct(dl, 99))} "
            f"(p99); n={len(tl)}/{len(dl)}/{len(ll)}"
        )
        target = NONE
        if judged:
            target = "p50 ≤ +1 ms, p99 ≤ +5 ms"
            result += f": {verdict(add50 <= 1e-3 and add99 <= 5e-3)}"
        self.report.add(
            what,
            fmt_d(add50),
            fmt_d(add99),
            target,
            result,
            floor=fmt_s(pct(dl, 50)),
            x_floor=times_floor(pct(tl, 50), pct(dl, 50)),
        )

    def ttfb(self) -> None:
        self._set(1, 0.0)
        out = self._http(
            {
                "mode": "ttfb",
                "targets": [self.targets[n] for n in ("direct", "proxy", "lean")],
                "samples": self.plan.ttfb_samples,
            }
        )
        dl, tl, ll = ([x / 1e9 for x in out[n]] for n in ("direct", "proxy", "lean"))
        add50, add99 = pct(tl, 50) - pct(dl, 50), pct(tl, 99) - pct(dl, 99)
        self.report.add(
            "11. proxy: time to first streamed byte (request sent → first SSE bytes), "
            "1 client, proxy - direct",
            fmt_d(add50),
            fmt_d(add99),
            "≤ +1 ms",
            f"proxy {fmt_pair(tl)}; direct (floor) {fmt_pair(dl)}; the lean proxy adds "
            f"{fmt_d(pct(ll, 50) - pct(dl, 50))} (p50); n={len(tl)}: {verdict(add50 <= 1e-3)}",
            floor=fmt_s(pct(dl, 50)),
            x_floor=times_floor(pct(tl, 50), pct(dl, 50)),
        )
        self.report.raw["proxy_ttfb"] = out

    def sse(self) -> None:
        assert self.upstream is not None
        chunks, delay, streams = 10, 0.020, 4
        self._set(chunks, delay)
        since = self.upstream.call("mark")["mark"]
        out = self._http(
            {
                "mode": "sse",
                "targets": [self.targets[n] for n in ("direct", "proxy", "lean")],
                "rounds": self.plan.sse_rounds,
                "streams": streams,
            }
        )
        sent = self.upstream.call("log", since=since, prefix="sse-")["log"]
        lags: dict[str, list[float]] = {"direct": [], "proxy": [], "lean": []}
        missing = 0
        for model, arrivals in out["arrivals"].items():
            name = model.split("-")[1]
            at = {int(e): t for e, t in sent.get(model, [])}
            for i in range(chunks):
                if i in at and i < len(arrivals):
                    lags[name].append(arrivals[i] - at[i])
                else:
                    missing += 1
        if missing or not all(lags.values()):
            raise RuntimeError(f"sse: {missing} chunks were not matched to the upstream log")
        dl, tl, ll = lags["direct"], lags["proxy"], lags["lean"]
        add50, add99 = pct(tl, 50) - pct(dl, 50), pct(tl, 99) - pct(dl, 99)
        self.report.add(
            f"12. proxy: each SSE chunk, upstream's write → its arrival at the client "
            f"({streams} streams at a time, {chunks} chunks {delay * 1e3:g} ms apart)",
            fmt_s(pct(tl, 50)),
            fmt_s(pct(tl, 99)),
            "forwarded within 1 ms (p99 - floor's p99)",
            f"direct (floor) {fmt_pair(dl)}; added p50 {fmt_d(add50)}, p99 {fmt_d(add99)}, "
            f"max {fmt_s(max(tl))} (floor {fmt_s(max(dl))}); the lean proxy adds "
            f"{fmt_d(pct(ll, 50) - pct(dl, 50))} (p50), {fmt_d(pct(ll, 99) - pct(dl, 99))} "
            f"(p99); n={len(tl)} chunks: {verdict(add99 <= 1e-3)}",
            floor=fmt_s(pct(dl, 50)),
            x_floor=times_floor(pct(tl, 50), pct(dl, 50)),
        )
        self.report.raw["proxy_sse"] = lags

    def hold(self) -> None:
        n, delay = self.plan.hold_streams, self.plan.hold_delay
        self._set(3, delay)
        out = self._http(
            {"mode": "hold", "targets": [self.targets["proxy"]], "streams": n, "delay": delay},
            timeout=120 + 3 * delay,
        )
        self._set(3, 0.0)
        per = (out["rss1"] - out["rss0"]) / n  # KB
        ok = per <= 64 and out["got"] == n and out["idle"]
        quick = " (--quick: 200 instead of 1,000)" if n < 1000 else ""
        firsts = [x / 1e9 for x in out["first"]] or [0.0]
        self.report.add(
            f"13. proxy: {n:,} concurrent streams held open{quick}, daemon RSS growth "
            "per idle stream (VmRSS)",
            f"{per:.1f} KB",
            NONE,
            "≤ 64 KB per stream; all get their first chunk",
            f"{out['got']:,}/{n:,} got their first chunk (open → first chunk {fmt_pair(firsts)}, "
            f"upstream delay {delay:g} s); VmRSS {out['rss0'] / 1024:.1f} → "
            f"{out['rss1'] / 1024:.1f} MB, {out['fds']:,} fds open"
            f"{'' if out['idle'] else ', NOT idle at the reading'}: {verdict(ok)}",
        )
        self.report.raw["proxy_hold"] = {k: v for k, v in out.items() if k != "first"}

    def socket_under_load(self) -> None:
        p = self.plan
        rate, conns = 500.0, 4

        def token_load() -> list[float]:
            args = ["load", str(self.sock), str(conns), str(p.socket_seconds)]
            out = worker([*args, str(p.load_warmup), str(rate)], self.env)
            return [t / 1e9 for t in out["ns"]]

        idle = token_load()
        raw: dict[str, Any] = {"idle": idle}
        for label, chunks, delay in (("back to back", 20, 0.0), ("20 ms apart", 10, 0.020)):
            self._set(chunks, delay)
            ready, stop = self.work / "ready", self.work / "stop"
            ready.unlink(missing_ok=True)
            stop.unlink(missing_ok=True)
            spec = {
                "pid": self.pid,
                "mode": "streamload",
                "targets": [self.targets["proxy"]],
                "conns": 64,
                "ready": str(ready),
                "stop": str(stop),
            }
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "http"]
            pool = ThreadPoolExecutor(1)
            try:
                fut = pool.submit(run, [*argv, json.dumps(spec)], self.env, 120)
                deadline = time.monotonic() + 30
                while not ready.exists() and not fut.done() and time.monotonic() < deadline:
                    time.sleep(0.01)
                cpu0 = proc_cpu(self.pid)
                busy = token_load()
                cpu = proc_cpu(self.pid) - cpu0
                stop.touch()
                _, rc, out, err = fut.result(timeout=120)
            finally:
                stop.touch()
                pool.shutdown(wait=True)
            if rc != 0:
                raise RuntimeError(f"streamload worker failed: {err.strip()[-1500:]}")
            streams = json.loads(out)
            r50, r99 = ratio(pct(busy, 50), pct(idle, 50)), ratio(pct(busy, 99), pct(idle, 99))
            self.report.add(
                f"14. socket `GET /v1/token` ({conns} clients, {rate:,.0f} req/s, Poisson) while "
                f"the proxy relays 64 streams, {chunks} chunks each {label} "
                f"({streams['chunks_per_s']:,.0f} chunks/s)",
                fmt_s(pct(busy, 50)),
                fmt_s(pct(busy, 99)),
                "within 2x of idle",
                f"idle {fmt_pair(idle)}: x{r50:.1f} (p50), x{r99:.1f} (p99); daemon CPU "
                f"{cpu / (p.socket_seconds + p.load_warmup):.0%}: "
                f"{verdict(r50 <= 2 and r99 <= 2)}",
                floor=fmt_s(pct(idle, 50)),
                x_floor=times_floor(pct(busy, 50), pct(idle, 50)),
            )
            raw[label] = {"busy": busy, "streams": streams}
        self._set(3, 0.0)
        self.report.raw["proxy_socket"] = raw

    # -- 15: LiteLLM

    def start_litellm(self) -> None:
        if not self.with_litellm:
            return
        exe, why = litellm_install()
        if exe is None:
            self.litellm_status = f"not run: install failed: {why}"
            return
        assert self.upstream is not None
        port = free_port()
        cfg = self.work / "cfg" / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            "  - model_name: bench-model\n"
            "    litellm_params:\n"
            "      model: openai/bench-model\n"
            f"      api_base: {self.upstream.info['vertex_base_url']}\n"
            f"      api_key: {self.upstream.info['token']}\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        # A master key, as tokend's proxy has its local key (LiteLLM refuses to start
        # without one): every request is checked against it.
        master = f"sk-bench-{os.urandom(8).hex()}"
        env = {
            **self.env,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": master,
        }
        with open(self.log("litellm"), "wb") as log:
            self.litellm = subprocess.Popen(
                [
                    str(exe),
                    "--config",
                    str(cfg),
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                    "--num_workers",
                    "1",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work / "log",
            )
        deadline = time.monotonic() + 180
        while True:
            if self.litellm.poll() is not None or time.monotonic() > deadline:
                tail = self.log("litellm").read_text(errors="replace")[-300:]
                self.litellm_status = f"not run: litellm did not start: {' '.join(tail.split())}"
                return
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1) as s,
            ):
                s.sendall(b"GET /health/liveliness HTTP/1.0\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    break
            time.sleep(0.25)
        self.targets["litellm"] = {
            "name": "litellm",
            "url": f"http://127.0.0.1:{port}/v1/chat/completions",
            "headers": {"Authorization": f"Bearer {master}"},
            "pid": self.litellm.pid,
        }
        try:
            self._http(
                {
                    "mode": "ttfb",
                    "targets": [self.targets["litellm"]],
                    "samples": 3,
                    "stream": False,
                }
            )
        except RuntimeError as err:
            del self.targets["litellm"]
            self.litellm_status = f"not run: litellm failed a request: {str(err)[:300]}"
            return
        self.litellm_status = f"litellm {why}"

    def litellm_rows(self) -> None:
        what = (
            "15. LiteLLM proxy (`litellm[proxy]`, 1 worker) in the same place: added "
            "latency and throughput as in rows 10"
        )
        if "litellm" not in self.targets:
            self.report.add(what, "not run", NONE, NONE, self.litellm_status)
            return
        # LiteLLM takes tens of ms of CPU a request: at 64 clients one answer takes
        # seconds, so its phases (with direct and tokend's, alternating) are longer.
        names = ["direct", "proxy", "litellm"]
        self._set(3, 0.0)
        c1 = self._chat(1, 0.0, names, seconds=2.0, warmup=0.5, rounds=1)
        c64 = self._chat(64, 0.0, names, seconds=8.0, warmup=3.0, rounds=1)
        self.report.raw["litellm_chat"] = {
            level: {name: {k: v for k, v in r.items() if k != "ns"} for name, r in out.items()}
            for level, out in (("c1", c1), ("c64", c64))
        }
        dl, tl, ml = ([x / 1e9 for x in c1[n]["ns"]] for n in names)
        if not ml or not c64["litellm"]["ns"]:
            self.report.add(
                what,
                "no answer",
                NONE,
                NONE,
                f"{self.litellm_status}: no request finished "
                "inside a measured window (2 s at 1 client, 8 s at 64)",
            )
            return
        t50, m50 = pct(tl, 50) - pct(dl, 50), pct(ml, 50) - pct(dl, 50)
        t99, m99 = pct(tl, 99) - pct(dl, 99), pct(ml, 99) - pct(dl, 99)
        self.report.add(
            f"15. LiteLLM proxy ({self.litellm_status}, 1 worker): added latency "
            "(LiteLLM - direct), non-streaming `chat/completions`, 1 client, closed loop",
            fmt_d(m50),
            fmt_d(m99),
            "tokend adds less",
            f"LiteLLM {fmt_pair(ml)}; tokend adds {fmt_d(t50)} (p50), {fmt_d(t99)} (p99) in "
            f"the same phases: LiteLLM/tokend added p50 = x{ratio(m50, t50):.1f}; "
            f"n={len(ml)}/{len(tl)}: {verdict(t50 < m50 and t99 < m99)}",
            floor=fmt_s(pct(dl, 50)),
            x_floor=times_floor(pct(ml, 50), pct(dl, 50)),
        )
        rd, rt, rm = (c64[n]["rps"] for n in names)
        m = c64["litellm"]
        self.report.add(
            "15. LiteLLM proxy: throughput, non-streaming `chat/completions`, 64 clients, "
            "closed loop",
            f"{rm:,.0f} req/s",
            NONE,
            "tokend's higher",
            f"tokend {rt:,.0f} req/s, direct {rd:,.0f} req/s in the same run: tokend/LiteLLM "
            f"= x{ratio(rt, rm):.1f}; LiteLLM CPU {fmt_s(m['daemon_cpu'] / max(1, m['done']))} "
            f"a request: {verdict(rt > rm)}",
            floor=f"{rd:,.0f} req/s",
            x_floor=times_floor(rd, rm),
        )


# -- 16: many profiles ----------------------------------------------------------------------


def profiles_section(plan: Plan, report: Report) -> None:
    """Row 16: ``tokend run`` with N service-account profiles of short-lived tokens (every
    one rotates in each window), for each N
    in the plan: start-up to ready, CPU per refresh (its ratio to one profile's), the
    token socket's latency while they all rotate, RSS and open files."""
    from tokend.testing import FakeGoogle

    first: float | None = None  # one profile's CPU per refresh, start-up and socket p50
    first_ready = first_p50 = 0.0
    raw: dict[str, Any] = {}
    for n in plan.profile_counts:
        fake = FakeGoogle(lifetime=plan.profile_lifetime).start()
        work = Path(tempfile.mkdtemp(prefix="tkn", dir="/tmp"))
        daemon: subprocess.Popen[bytes] | None = None
        try:
            rt = work / "rt"
            (work / "log").mkdir()
            config = []
            for i in range(n):
                name = "default" if i == 0 else f"p{i}"
                sa = fake.write_service_account(work / f"sa{i}.json", email=f"sa{i}@p.iam.x")
                config.append(f'[profiles.{name}]\ncredentials = "{sa}"\n')
            (work / "config.toml").write_text("".join(config))
            env = {
                **clean_env(),
                **fake.env(),
                "TOKEND_RUNTIME_DIR": str(rt),
                "TOKEND_STATE_DIR": str(work / "state"),
            }
            files = [rt / "token.json"] + [rt / f"p{i}.token.json" for i in range(1, n)]
            t0 = time.monotonic()
            with open(work / "log" / "daemon.log", "wb") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "tokend", "run", "--config", str(work / "config.toml")],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=work / "log",
                )
            while not ((rt / "tokend.sock").exists() and all(f.exists() for f in files)):
                if daemon.poll() is not None or time.monotonic() - t0 > 120:
                    tail = (work / "log" / "daemon.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"tokend with {n} profiles did not start:\n{tail}")
                time.sleep(0.01)
            ready = time.monotonic() - t0
            time.sleep(1.0)  # the start-up's own writes settle
            # CPU per refresh: a window with no clients.
            calls0, cpu0 = fake.calls["token"], proc_cpu(daemon.pid)
            time.sleep(plan.profile_window)
            cpu, calls = proc_cpu(daemon.pid) - cpu0, fake.calls["token"] - calls0
            # The socket while they rotate: a second window, with clients.
            calls1 = fake.calls["token"]
            args = ["load", str(rt / "tokend.sock"), "4", str(plan.profile_window), "0.5", "500"]
            ns = [t / 1e9 for t in worker(args, clean_env(), plan.profile_window + 60)["ns"]]
            rotations = fake.calls["token"] - calls1
            mem = proc_mem(daemon.pid)
            fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
        finally:
            if daemon is not None and daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(10)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
            fake.stop()
            shutil.rmtree(work, ignore_errors=True)
        if calls == 0:
            raise RuntimeError(f"{n} profiles: no refresh in {plan.profile_window:g} s")
        per = cpu / calls
        if first is None:
            first, first_ready, first_p50 = per, ready, pct(ns, 50)
        label = f"16. {n} profile{'s' if n > 1 else ''} ({plan.profile_lifetime} s tokens)"
        big = n >= 100
        report.add(
            f"{label}: start-up to ready (the socket and every profile's token.json)",
            fmt_s(ready),
            NONE,
            "≤ 2 s at 100 profiles" if big else NONE,
            verdict(ready <= 2.0) if big else NONE,
            floor=fmt_s(first_ready),
            x_floor=times_floor(ready, first_ready),
        )
        report.add(
            f"{label}: daemon CPU per refresh ({plan.profile_window:g} s without clients)",
            fmt_s(per),
            NONE,
            "≤ 1.5x one profile's at 100" if big else NONE,
            f"{calls} refreshes, CPU {cpu / plan.profile_window * 60:.2f} s a minute; "
            f"x{ratio(per, first):.2f} one profile's"
            + (f": {verdict(per <= 1.5 * first)}" if big else "")
            + f"; VmRSS {mem['VmRSS']:.1f} MB, {fds} open files",
            floor=fmt_s(first),
            x_floor=times_floor(per, first),
        )
        report.add(
            f"{label}: socket `GET /v1/token` (4 clients, 500 req/s, Poisson) while they "
            f"rotate ({rotations} refreshes in {plan.profile_window:g} s)",
            fmt_s(pct(ns, 50)),
            fmt_s(pct(ns, 99)),
            "p99 < 5 ms",
            f"max {fmt_s(max(ns))}, n={len(ns)}: {verdict(pct(ns, 99) < 5e-3)}",
            floor=fmt_s(first_p50),
            x_floor=times_floor(pct(ns, 50), first_p50),
        )
        raw[str(n)] = {
            "ready": ready,
            "cpu": cpu,
            "refreshes": calls,
            "rss_mb": mem["VmRSS"],
            "fds": fds,
            "socket": ns,
        }
    report.raw["profiles"] = raw


def litellm_install() -> tuple[Path | None, str]:
    """``litellm`` in its own venv under ~/.cache (created on first use): (its console
    script, its version) or (None, why not)."""
    venv = LITELLM_VENV
    exe = venv / "bin" / "litellm"
    py = venv / "bin" / "python"
    done = venv / ".bench-complete"
    if not done.exists():
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        print(f"bench: installing litellm[proxy] into {venv} (once)...", file=sys.stderr)
        env = clean_env()
        for argv in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(py), "-m", "pip", "install", "-q", "litellm[proxy]"],
        ):
            _, rc, _out, err = run(argv, env, timeout=1800)
            if rc != 0:
                shutil.rmtree(venv, ignore_errors=True)
                last = " ".join(err.strip().splitlines()[-1:]) if err.strip() else f"exit {rc}"
                return None, last[:300]
        done.write_text("ok\n")
    _, rc, out, err = run(
        [str(py), "-c", "from importlib.metadata import version; print(version('litellm'))"],
        clean_env(),
    )
    if rc != 0 or not exe.exists():
        return None, (err.strip().splitlines() or ["litellm is not importable"])[-1][:300]
    return exe, out.strip()


# -- workers (separate processes) ---------------------------------------------------------


def worker_inproc(n: int) -> None:
    """n calls of ``tokend.client.token()``; and, when it reads a token file, n of the
    floor: one ``os.stat`` and one read of that file."""
    import tokend.client

    timer = time.perf_counter_ns
    get = tokend.client.token
    if not get():  # the cold call (config lookup, first read) is not measured
        raise RuntimeError("no token")
    ns = []
    for _ in range(n):
        t0 = timer()
        get()
        ns.append(timer() - t0)
    floor = []
    path = tokend.client.token_file_path()
    if path is not None and path.exists():
        name = str(path)
        for _ in range(n):
            t0 = timer()
            os.stat(name)
            with open(name, "rb") as f:
                f.read()
            floor.append(timer() - t0)
    json.dump({"ns": ns, "floor": floor}, sys.stdout)


def worker_rawget(path: str, n: int) -> None:
    """n of what a stdlib client must do at the least to ask a Unix socket: connect,
    send ``GET /v1/token``, read the whole answer, close."""
    request = b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n"
    timer = time.perf_counter_ns
    ns = []
    for i in range(n + 1):
        t0 = timer()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(request)
            data = s.recv(65536)
            while b"\r\n\r\n" not in data or not data.startswith(b"HTTP/1.1 200"):
                more = s.recv(65536)
                if not more:
                    raise RuntimeError(f"unexpected answer: {data[:80]!r}")
                data += more
        if i:
            ns.append(timer() - t0)
    json.dump({"ns": ns}, sys.stdout)


def fetch_answer(path: Path) -> bytes:
    """The whole answer tokend's fast path gives a keep-alive ``GET /v1/token``."""
    request = b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\nAccept: application/json\r\n\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(request)
        data = b""
        while True:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                i = data.lower().find(b"content-length:", 0, head_end)
                length = int(data[i + 15 : data.find(b"\r\n", i)])
                if len(data) >= head_end + 4 + length:
                    break
            more = s.recv(65536)
            if not more:
                raise RuntimeError(f"tokend closed the socket mid-answer: {data[:80]!r}")
            data += more
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"tokend answered {data[:80]!r}")
    return data


def worker_load(path: str, conns: int, seconds: float, warmup: float, rate: float) -> None:
    """Keep-alive ``GET /v1/token`` load on the socket from ``conns`` connections.

    ``rate`` 0: closed loop, every connection sends its next request as soon as the
    previous answer is complete (finds the throughput). ``rate`` > 0: the connections
    together send ``rate`` requests/s at Poisson-distributed times, as many independent
    clients would; a request that falls due while its connection still waits is sent
    when the answer arrives.

    Latency is from send to the answer's last byte, for requests sent after ``warmup``
    and answered within the following ``seconds``.
    """
    import heapq
    import random

    request = b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\nAccept: application/json\r\n\r\n"
    timer = time.perf_counter_ns
    # Paced: select(2) sleeps to the microsecond, epoll only to the millisecond (sends
    # would bunch up on millisecond ticks, or the generator would have to spin and take
    # a core from the daemon). Closed loop: epoll, which scales to 512 connections.
    sel = selectors.SelectSelector() if rate > 0 else selectors.DefaultSelector()
    # fd -> [socket, sent at, buffer, waiting for an answer, a send fell due meanwhile]
    states: dict[int, list[Any]] = {}
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        states[s.fileno()] = [s, 0, b"", False, False]
        sel.register(s, selectors.EVENT_READ)
    rng = random.Random(6)
    gap_ns = conns / rate * 1e9 if rate > 0 else 0.0
    outstanding = 0

    def send(st: list[Any]) -> None:
        nonlocal outstanding
        st[1] = timer()
        st[0].send(request)
        st[3] = True
        outstanding += 1

    cpu0 = time.process_time()
    start = timer()
    measure_from = start + int(warmup * 1e9)
    stop_at = measure_from + int(seconds * 1e9)
    due: list[tuple[float, int]] = []
    for fd, st in states.items():
        if rate > 0:
            heapq.heappush(due, (start + rng.expovariate(1.0) * gap_ns, fd))
        else:
            send(st)
    ns: list[int] = []
    heard = start
    while True:
        now = timer()
        if now >= stop_at and outstanding == 0:
            break
        while due and due[0][0] <= now < stop_at:
            at, fd = heapq.heappop(due)
            heapq.heappush(due, (at + rng.expovariate(1.0) * gap_ns, fd))
            st = states[fd]
            if st[3]:
                st[4] = True
            else:
                send(st)
        timeout = max(0.0, (due[0][0] - now) / 1e9) if due and now < stop_at else 0.5
        events = sel.select(timeout)
        if events:
            heard = now
        elif outstanding and now - heard > 10e9:
            raise RuntimeError("the daemon stopped answering")
        for key, _ in events:
            st = states[key.fd]
            data = st[0].recv(65536)
            if not data:
                raise RuntimeError("the daemon closed a keep-alive connection")
            buf = st[2] + data
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                st[2] = buf
                continue
            i = buf.lower().find(b"content-length:", 0, head_end)
            length = int(buf[i + 15 : buf.find(b"\r\n", i)])
            if len(buf) < head_end + 4 + length:
                st[2] = buf
                continue
            if not buf.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {buf[:80]!r}")
            done = timer()
            st[2], st[3] = b"", False
            outstanding -= 1
            if st[1] >= measure_from and done <= stop_at:
                ns.append(done - st[1])
            if done < stop_at and (rate <= 0 or st[4]):
                st[4] = False
                send(st)
    cpu = time.process_time() - cpu0
    total = (timer() - start) / 1e9
    for st in states.values():
        st[0].close()
    json.dump(
        {"ns": ns, "count": len(ns), "elapsed": seconds, "cpu": cpu, "total": total}, sys.stdout
    )


def worker_upstream(directory: str) -> None:
    """FakeGoogle + FakeOpenAI until stdin closes. Prints where they are, then answers
    one JSON line per command line: ``set`` (chunks, delay), ``mark`` (how long the
    stream log is), ``log`` (since, prefix: the stream events written since the mark,
    by the model the request named)."""
    from tokend.testing import FakeGoogle, FakeOpenAI

    google = FakeGoogle(lifetime=3600).start()
    api = FakeOpenAI(google, project=PROJECT, location=LOCATION, keep_alive=True).start()
    sa = google.write_service_account(Path(directory) / "sa.json")
    google.lifetime = 7 * 86400  # the floor's (and LiteLLM's) token outlives the bench
    token = google.mint("bench@example.com")
    google.lifetime = 3600
    models: dict[int, str] = {}

    def reply(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    reply(
        {
            "origin": api.origin,
            "vertex_base_url": api.vertex_base_url,
            "token": token,
            "sa": str(sa),
        }
    )
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "set":
                api.stream_chunks = int(cmd["chunks"])
                api.stream_delay = float(cmd["delay"])
                reply({})
            elif op == "mark":
                with api._lock:
                    reply({"mark": len(api.stream_log)})
            elif op == "log":
                with api._lock:
                    entries = api.stream_log[int(cmd["since"]) :]
                    requests = list(api.requests)
                found: dict[str, list[tuple[int, float]]] = {}
                for index, event, at in entries:
                    if index not in models:
                        try:
                            models[index] = str(requests[index].json().get("model"))
                        except (ValueError, AttributeError, IndexError):
                            models[index] = ""
                    if models[index].startswith(cmd["prefix"]):
                        found.setdefault(models[index], []).append((event, at))
                reply({"log": found})
            else:
                reply({"error": f"unknown op {op}"})
    finally:
        api.stop()
        google.stop()


def worker_lean(base: str, token: str) -> None:
    """The floor for a proxy: a minimal aiohttp reverse proxy (what a user would write in
    30 lines), with none of tokend's checks (no key, peer uid, Host, routing, log line or
    metrics) and a fixed token. Prints its port, then serves until killed."""
    import asyncio

    from aiohttp import ClientSession, TCPConnector, web

    skip = {"host", "authorization", "content-length", "connection", "transfer-encoding"}

    async def main() -> None:
        session = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False)

        async def handler(request: web.Request) -> web.StreamResponse:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
            headers["Authorization"] = f"Bearer {token}"
            url = f"{base}/{request.match_info['rest']}"
            body = await request.read()
            async with session.request(request.method, url, headers=headers, data=body) as up:
                resp = web.StreamResponse(status=up.status)
                for k, v in up.headers.items():
                    if k.lower() not in skip | {"content-encoding"}:
                        resp.headers[k] = v
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp

        app = web.Application()
        app.router.add_route("*", "/v1/{rest:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def worker_http(spec_json: str) -> None:
    """aiohttp load against OpenAI-style ``chat/completions`` targets (see
    :func:`_http_main` for the modes); prints one JSON document."""
    import asyncio

    spec = json.loads(spec_json)
    json.dump(asyncio.run(_http_main(spec)), sys.stdout)


def _chat_body(model: str = "bench-model", stream: bool = False) -> bytes:
    doc: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        doc["stream"] = True
    return json.dumps(doc).encode()


async def _http_main(spec: dict[str, Any]) -> Any:
    """Modes:

    - ``chat``: ``conns`` clients, closed loop (``rate`` 0) or together sending ``rate``
      req/s at Poisson times; ``rounds`` rounds of a ``warmup`` + ``seconds`` phase per
      target, the order of the targets rotated every round.
    - ``ttfb``: one client, ``samples`` streamed requests per target, alternating: from
      the request's start to the first bytes of the body.
    - ``sse``: ``rounds`` rounds of ``streams`` concurrent streams per target; when each
      event arrived (time.monotonic(), comparable with the upstream's, CLOCK_MONOTONIC is
      system-wide), by the unique model named in the request.
    - ``hold``: ``streams`` streams opened at once and held; the daemon's VmRSS before
      and once every stream has had its first event.
    - ``streamload``: ``conns`` clients streaming back to back; the file ``ready`` is
      created once ``conns`` streams are done, the load stops when ``stop`` exists.
    """
    import asyncio

    import aiohttp

    mode = spec["mode"]
    pid = int(spec["pid"])
    timer = time.perf_counter_ns
    sessions = {
        t["name"]: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
        )
        for t in spec["targets"]
    }

    async def post(target: dict[str, Any], body: bytes) -> bytes:
        session = sessions[target["name"]]
        headers = {**target["headers"], "Content-Type": "application/json"}
        async with session.post(target["url"], data=body, headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{target['name']}: HTTP {resp.status}: {data[:200]!r}")
            return data

    async def phase(target: dict[str, Any], conns: int, rate: float) -> dict[str, Any]:
        import random

        body = _chat_body()
        start = timer()
        measure_from = start + int(spec["warmup"] * 1e9)
        stop_at = measure_from + int(spec["seconds"] * 1e9)
        gap = conns / rate * 1e9 if rate > 0 else 0.0
        rng = random.Random(10)
        ns: list[int] = []
        done = 0

        async def client() -> None:
            nonlocal done
            due = start + rng.expovariate(1.0) * gap
            while True:
                if rate > 0:
                    wait = (due - timer()) / 1e9
                    if wait > 0:
                        await asyncio.sleep(wait)
                    due += rng.expovariate(1.0) * gap
                t0 = timer()
                if t0 >= stop_at:
                    return
                await post(target, body)
                t1 = timer()
                done += 1
                if t0 >= measure_from and t1 <= stop_at:
                    ns.append(t1 - t0)

        server = int(target.get("pid", pid))  # the process whose CPU is counted
        cpu0, dcpu0 = time.process_time(), proc_cpu(server)
        await asyncio.gather(*(client() for _ in range(conns)))
        cpu, dcpu = time.process_time() - cpu0, proc_cpu(server) - dcpu0
        wall = (timer() - start) / 1e9
        return {"ns": ns, "cpu": cpu, "daemon_cpu": dcpu, "wall": wall, "done": done}

    try:
        targets = spec["targets"]
        if mode == "chat":
            results: dict[str, dict[str, Any]] = {
                t["name"]: {"ns": [], "cpu": 0.0, "daemon_cpu": 0.0, "wall": 0.0, "done": 0}
                for t in targets
            }
            for r in range(int(spec["rounds"])):
                for target in targets[r % len(targets) :] + targets[: r % len(targets)]:
                    got = await phase(target, int(spec["conns"]), float(spec["rate"]))
                    acc = results[target["name"]]
                    acc["ns"] += got["ns"]
                    for k in ("cpu", "daemon_cpu", "wall", "done"):
                        acc[k] += got[k]
            for acc in results.values():
                acc["rps"] = len(acc["ns"]) / (spec["seconds"] * spec["rounds"])
            return results
        if mode == "ttfb":
            stream = spec.get("stream", True)
            body = _chat_body(stream=stream)
            first: dict[str, list[int]] = {t["name"]: [] for t in targets}
            for i in range(int(spec["samples"])):
                for target in targets if i % 2 == 0 else targets[::-1]:
                    session = sessions[target["name"]]
                    headers = {**target["headers"], "Content-Type": "application/json"}
                    t0 = timer()
                    async with session.post(target["url"], data=body, headers=headers) as resp:
                        chunk = await resp.content.readany()
                        t1 = timer()
                        rest = await resp.read()
                        if resp.status != 200 or not chunk:
                            raise RuntimeError(
                                f"{target['name']}: HTTP {resp.status}: {(chunk + rest)[:200]!r}"
                            )
                    first[target["name"]].append(t1 - t0)
            return first
        if mode == "sse":
            arrivals: dict[str, list[float]] = {}

            async def sse_stream(target: dict[str, Any], model: str) -> None:
                session = sessions[target["name"]]
                headers = {**target["headers"], "Content-Type": "application/json"}
                times: list[float] = []
                body = _chat_body(model, stream=True)
                async with session.post(target["url"], data=body, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"{target['name']}: HTTP {resp.status}")
                    seen = b""
                    async for data in resp.content.iter_any():
                        now = time.monotonic()
                        seen = seen[-1:] + data  # an event ends at the first b"\n\n"
                        times += [now] * seen.count(b"\n\n")
                arrivals[model] = times

            for r in range(int(spec["rounds"])):
                for target in targets if r % 2 == 0 else targets[::-1]:
                    await asyncio.gather(
                        *(
                            sse_stream(target, f"sse-{target['name']}-{r}-{i}")
                            for i in range(int(spec["streams"]))
                        )
                    )
            return {"arrivals": arrivals}
        if mode == "hold":
            return await _hold(spec, sessions, targets[0], pid)
        if mode == "streamload":
            target = targets[0]
            body = _chat_body(stream=True)
            count = 0
            chunks = 0
            ready, stop = Path(spec["ready"]), Path(spec["stop"])

            async def streamer() -> None:
                nonlocal count, chunks
                while not stop.exists():
                    data = await post(target, body)
                    count += 1
                    chunks += data.count(b"\n\n") - 1  # not data: [DONE]
                    if count == int(spec["conns"]):
                        ready.touch()

            t0 = timer()
            await asyncio.gather(*(streamer() for _ in range(int(spec["conns"]))))
            wall = (timer() - t0) / 1e9
            return {"streams": count, "chunks": chunks, "chunks_per_s": chunks / wall}
        raise RuntimeError(f"unknown mode {mode}")
    finally:
        for s in sessions.values():
            await s.close()


async def _hold(
    spec: dict[str, Any], sessions: dict[str, Any], target: dict[str, Any], pid: int
) -> dict[str, Any]:
    import asyncio
    import gc

    n, delay = int(spec["streams"]), float(spec["delay"])
    session = sessions[target["name"]]
    headers = {**target["headers"], "Content-Type": "application/json"}
    body = _chat_body(stream=True)
    timer = time.perf_counter_ns
    first: list[int] = []
    all_in = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        t0 = timer()
        async with session.post(target["url"], data=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"hold: HTTP {resp.status}")
            seen = b""
            while b"\n\n" not in seen:
                data = await resp.content.readany()
                if not data:
                    raise RuntimeError("hold: the stream ended before its first event")
                seen += data
            first.append(timer() - t0)
            if len(first) == n:
                all_in.set()
            await release.wait()

    gc.collect()
    await asyncio.sleep(0.3)
    rss0 = proc_mem(pid)["VmRSS"] * 1024  # KB
    opened = time.monotonic()
    tasks = [asyncio.create_task(holder()) for _ in range(n)]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), timeout=60 + 2 * delay)
        await asyncio.sleep(0.5)  # whatever the daemon does after the first chunks
        rss1 = proc_mem(pid)["VmRSS"] * 1024
        # Idle: the reading came before the upstream's second event (at 2 x delay).
        idle = time.monotonic() - opened < 2 * delay
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed: {failed[0].exception()}")
    finally:
        release.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "rss0": rss0,
        "rss1": rss1,
        "got": len(first),
        "n": n,
        "first": first,
        "idle": idle,
        "fds": fds,
        "delay": delay,
    }


# -- main -------------------------------------------------------------------------------


def header(plan_name: str) -> str:
    from importlib.metadata import version

    gcloud = "absent"
    exe = shutil.which("gcloud")
    if exe:
        # Not `gcloud version`: that would write a config dir into $HOME.
        with contextlib.suppress(OSError):
            gcloud = (Path(exe).resolve().parent.parent / "VERSION").read_text().strip()
    return (
        f"tokend benchmark ({plan_name}), {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
        f"machine: {machine()}; Python {platform.python_version()}; "
        f"tokend {version('tokend')}, aiohttp {version('aiohttp')}, "
        f"google-auth {version('google-auth')}, gcloud {gcloud}; "
        f"command: `{shlex.join(sys.orig_argv)}`"
    )


def bench(plan: Plan, only: str = "", with_litellm: bool = False) -> Report:
    report = Report()
    if only == "profiles":
        profiles_section(plan, report)
        return report
    if only != "proxy":
        b = Bench(plan, report)
        try:
            b.start()
            gcloud = b.gcloud()
            gauth = b.google_auth(gcloud)
            b.cli(gcloud, gauth)
            b.shell(gcloud)
            b.inproc()
            b.load()
            b.endpoint_calls()
            b.idle()
            b.adc_rewrite()
        finally:
            b.stop()
        report.notes.append(
            "Every process-per-token row is the wall time of a whole process, started by "
            "this script after one unmeasured warm-up run (page cache, .pyc files). Other "
            "work on the machine shows up in p99."
        )
    pb = ProxyBench(plan, report, with_litellm)
    try:
        pb.start()
        pb.run()
    finally:
        pb.stop()
    if only != "proxy":
        profiles_section(plan, report)
    report.notes.append(
        "Floors (the `floor` column, measured in this run; `x floor` is the row's median "
        "over it, for throughput the floor's over ours): rows 1-3 `python -c pass` in the "
        "same venv (rows 3 run alternately with it); row 4 the shell doing nothing; row 5 "
        "one `stat` and read of token.json, or a bare connect-GET-read-close; rows 6 and 8 "
        "the floor server (asyncio alone, the same answer bytes, the same 1 s tick); row 9 "
        "one google-auth refresh; rows 10-12 and 15 the upstream called directly, the "
        "throughput row the 30-line aiohttp proxy; row 14 the same socket load with the "
        "proxy idle; rows 16 one profile. Row 13 has none: no other proxy held the streams."
    )
    return report


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that clean up


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="fewer samples, 10 s idle window (about 2 minutes)"
    )
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument(
        "--only",
        choices=["proxy", "profiles"],
        help="only the proxy rows (10-15), or only the many-profiles rows (16)",
    )
    ap.add_argument(
        "--profiles",
        metavar="N,N...",
        help="profile counts for rows 16 (default: 1,10,100; --quick: 1,10)",
    )
    ap.add_argument(
        "--with-litellm",
        action="store_true",
        help=f"also measure a LiteLLM proxy (installed once into {LITELLM_VENV})",
    )
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "inproc":
            worker_inproc(int(rest[0]))
        elif kind == "rawget":
            worker_rawget(rest[0], int(rest[1]))
        elif kind == "load":
            worker_load(rest[0], int(rest[1]), float(rest[2]), float(rest[3]), float(rest[4]))
        elif kind == "upstream":
            worker_upstream(rest[0])
        elif kind == "http":
            worker_http(rest[0])
        elif kind == "lean":
            worker_lean(rest[0], rest[1])
        else:
            ap.error(f"unknown worker {kind}")
        return 0

    signal.signal(signal.SIGTERM, _terminate)
    plan, name = (QUICK, "--quick") if args.quick else (FULL, "full run")
    started = time.monotonic()
    head = header(name)
    try:
        if args.profiles:
            counts = tuple(int(c) for c in args.profiles.split(",") if c.strip())
            plan = replace(plan, profile_counts=counts)
        report = bench(plan, args.only or "", args.with_litellm)
    except KeyboardInterrupt:
        print("bench: interrupted; processes stopped, temp files removed", file=sys.stderr)
        return 130
    except RuntimeError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    print(head)
    print()
    print(report.table())
    for note in report.notes:
        print(f"\n{note}")
    print(f"\n(took {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "header": head,
                    "rows": [asdict(r) for r in report.rows],
                    "notes": report.notes,
                    "raw": report.raw,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
