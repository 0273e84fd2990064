"""The reliability and security battery: the real ``tokend run`` against FakeGoogle
under faults, load and hostile input, faults injected at the OS boundary or in the fake.

Sections: torn reads, SIGKILL mid-write, endpoint faults, credentials files, disks,
socket abuse, secrets, the soak (1-8); time jumps (suspend, clock steps), hostile
answers, files that are not files, deadlines, restarts, what a new user met (9-14);
trust in directories; the socket and the service manager.

Each test is a scenario with numbered steps. Sizes come in a quick variant (the default
run) and a ``slow`` one (``scripts/test --slow``, CI); environment variables override
them (``TOKEND_TORN_SECONDS``, ``TOKEND_KILLS``, ``TOKEND_SOAK_SECONDS``, ...). Every
scenario reports its figures through :func:`tests.reliability_util.report` (stdout, and
the JSON file named by ``TOKEND_RELIABILITY_REPORT``) and scans what it saw (logs,
status and error bodies, command lines) for secrets.

Related scenarios live elsewhere and are not repeated here: the uid check with a socket
chmod-ed 666 (tests/test_server.py::test_other_uid_refused_even_with_socket_chmod_666), garbage and
oversized requests next to a good client (test_server.py::test_bad_clients_do_not_disturb_others),
deleted files and runtime dir (test_daemon.py::test_deleted_files_and_runtime_dir_are_rewritten).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, launch, run_daemon, sa_config, terminate, tokend_env, wait_for
from tests.reliability_util import (
    assert_no_secrets,
    failures_in_log,
    get,
    judge_reads,
    knob,
    one_response,
    profile_status,
    readers,
    recovery_step,
    report,
    request,
)
from tokend.refresher import RETIRE_MARGIN
from tokend.testing import FakeGoogle

SA_EMAIL = "sa@fake-project.iam.gserviceaccount.com"
FILES = ("token", "token.json", "openai.env")
TMP_MARK = ".tokend-tmp-"
TOKEN_RE = re.compile(r"ya29\.fake-[A-Za-z0-9_-]{44}")


def sizes(name: str, quick: float, slow: float) -> list[Any]:
    """The two variants of a scenario: ``quick`` (default run) and ``slow``."""
    return [
        pytest.param(knob(name, quick), id="quick"),
        pytest.param(knob(name + "_SLOW", slow), id="slow", marks=pytest.mark.slow),
    ]


def token_in(name: str, data: bytes) -> str | None:
    """The token a complete file of kind ``name`` holds, or None if it is not one."""
    text = data.decode("ascii", "replace")
    if name == "token":
        return text if TOKEN_RE.fullmatch(text) else None
    if name == "token.json":
        if not text.endswith("}\n"):
            return None
        try:
            tok = json.loads(text)["access_token"]
        except (ValueError, KeyError, TypeError):
            return None
        return tok if isinstance(tok, str) and TOKEN_RE.fullmatch(tok) else None
    shape = r"OPENAI_API_KEY=(\S+)\nTOKEND_EXPIRES_AT=\d+\n(?:TOKEND_LIFETIME=\d+\n)?"
    m = re.fullmatch(shape, text)
    return m.group(1) if m and TOKEN_RE.fullmatch(m.group(1)) else None


# -- 1. torn reads ----------------------------------------------------------------------


@pytest.mark.serial
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seconds", sizes("TOKEND_TORN_SECONDS", 8, 60))
def test_torn_reads(fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, seconds: float) -> None:
    """1. tokend rotates a 2-second token (a refresh every ~1.6 s).
    2. Four reader processes read token, token.json, openai.env and /v1/token in a tight
       loop for ``seconds``.
    3. Every read is complete, holds a token FakeGoogle issued, unexpired, with at least
       the retire margin (10 % of the lifetime, which tokend rounds down to the whole
       second its files state) left, and no read begins after the expiry its own file
       states; no file is ever missing unless the daemon logged a late retirement (a
       refresh that missed it removes the files)."""
    lifetime = 2.0
    fake.lifetime = lifetime
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        calls = fake.calls["token"]
        with readers(4, d.runtime_dir, d.file("tokend.sock"), seconds, short_tmp) as collect:
            results = collect()
        rotations = fake.calls["token"] - calls
        assert d.proc.poll() is None
        log = d.log()
    margin = RETIRE_MARGIN * (lifetime - 1) * 0.9
    figures = judge_reads(fake, results, margin=margin, daemon_log=log)
    figures.update(seconds=seconds, rotations=rotations, lifetime=lifetime)
    report(f"torn_reads[{seconds:g}s]", **figures)
    assert not figures["problems"], figures
    assert rotations >= seconds / lifetime, figures  # it really rotated underneath
    assert figures["total_reads"] > 1000 * seconds / 15, figures


# -- 2. SIGKILL mid-write ---------------------------------------------------------------


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kills", sizes("TOKEND_KILLS", 8, 100))
def test_sigkill_mid_write(fake: FakeGoogle, short_tmp: Path, kills: float) -> None:
    """1. 2-second tokens (a write every second or so: tokend rounds a token's expiry
       down to the whole second its files state) plus SIGUSR1 bursts force writes.
    2. tokend is SIGKILL-ed ``kills`` times, and restarted each time: half of the kills
       at a random moment, half the instant a temp file appears (mid-write).
    3. After each kill every file is absent or holds, complete, one of the two newest
       tokens FakeGoogle issued (the old or the new one), never anything else.
    4. After each restart the temp files the kill left are gone (swept at start); after
       the final clean stop there are none."""
    fake.lifetime = 2.0
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    config = short_tmp / "config.toml"
    config.write_text(sa_config(fake, short_tmp))
    runtime = short_tmp / "rt"
    env = tokend_env(fake, runtime)
    logs: dict[str, str] = {}
    left_temp = mixed = absent = swept = 0
    problems: list[str] = []
    leftovers: set[str] = set()
    for i in range(int(kills)):
        d = launch(config, short_tmp / f"run{i}.log", env)
        try:
            wait_for(lambda: "token refreshed" in d.log() or d.proc.poll() is not None, 20)
            assert d.proc.poll() is None, d.log()
            still = leftovers & set(os.listdir(runtime))
            if still:
                problems.append(f"run {i}: temp files survived the restart: {sorted(still)}")
            if "temp file(s) a previous run left" in d.log():
                swept += 1
            for _ in range(rng.randint(0, 3)):
                d.proc.send_signal(signal.SIGUSR1)
                time.sleep(rng.uniform(0, 0.02))
            if i % 2:
                time.sleep(rng.uniform(0, 0.9))  # anywhere
            else:
                # The moment a temp file shows up: between its creation and the rename.
                d.proc.send_signal(signal.SIGUSR1)
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline and not any(
                    TMP_MARK in n for n in os.listdir(runtime)
                ):
                    pass
        finally:
            d.proc.kill()
            d.proc.wait()
            logs[f"run {i} log"] = d.log()
        newest = fake.issued[-2:]
        tokens = set()
        for name in FILES:
            try:
                data = (runtime / name).read_bytes()
            except FileNotFoundError:
                absent += 1
                continue
            tok = token_in(name, data)
            if tok is None:
                problems.append(f"kill {i}: {name} holds {len(data)} bytes that are no token")
            elif tok not in newest:
                problems.append(f"kill {i}: {name} holds a token that is neither old nor new")
            else:
                tokens.add(tok)
        mixed += len(tokens) > 1
        leftovers = {n for n in os.listdir(runtime) if TMP_MARK in n}
        left_temp += bool(leftovers)
    final = launch(config, short_tmp / "final.log", env)
    try:
        wait_for(lambda: "token refreshed" in final.log() or final.proc.poll() is not None, 20)
        assert final.proc.poll() is None, final.log()
        if leftovers & set(os.listdir(runtime)):
            problems.append("temp files survived the final restart")
    finally:
        assert final.stop() == 0
        logs["final log"] = final.log()
    after = [n for n in os.listdir(runtime) if TMP_MARK in n]
    scanned = assert_no_secrets(fake, logs)
    report(
        f"sigkill[{int(kills)}]",
        kills=int(kills),
        seed=seed,
        kills_leaving_temp_files=left_temp,
        restarts_that_swept=swept,
        kills_with_old_and_new_token_on_disk=mixed,
        absent_file_observations=absent,
        tokens_issued=len(fake.issued),
        logs_scanned=scanned,
        problems=problems,
    )
    assert not problems, problems
    assert after == [], after


# -- 3. token endpoint faults -----------------------------------------------------------


def check_schedule(failures: list[tuple[float, int, float]], attempt_seconds: float) -> list[str]:
    """The announced delays follow the full-jitter policy (retry n waits 0.1 s to
    min(60, 2**(n-1)) s) and the daemon really waits them: the next failure comes one
    delay (plus one attempt's duration) later, never sooner."""
    problems = []
    for when, n, delay in failures:
        ceiling = min(60.0, 2.0 ** (n - 1))
        if not 0.1 - 1e-9 <= delay <= ceiling + 0.05:
            problems.append(f"retry {n}: delay {delay}s outside [0.1, {ceiling}]")
    for (t0, _, delay), (t1, n, _) in itertools.pairwise(failures):
        gap = t1 - t0
        if gap < delay - 0.06 or gap > delay + attempt_seconds + 1.0:
            problems.append(f"retry {n}: came {gap:.2f}s after the failure, announced {delay}s")
    return problems


def tokens_on_disk(d: Any) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in FILES:
        data = d.read(name)
        found[name] = None if data is None else token_in(name, data)
    return found


def current_token(d: Any) -> str | None:
    return tokens_on_disk(d)["token.json"]


def status_cli(d: Any) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "tokend", "status", "--json"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.returncode, json.loads(out.stdout)


#: fault -> (expected state while it lasts, expected last_error_reason)
FAULTS: dict[str, tuple[str, str]] = {
    "500": ("retrying", "unavailable"),
    "503": ("retrying", "unavailable"),
    "429": ("retrying", "unavailable"),
    "refused": ("retrying", "transport_error"),
    "hang": ("retrying", "timeout"),
    "garbage": ("retrying", "bad_response"),
    "invalid_grant": ("reauth_required", "reauth_required"),
    "slow": ("refreshing", ""),
}


def inject(fake: FakeGoogle, kind: str) -> None:
    if kind in ("500", "503", "429"):
        fake.fail(int(kind))
    elif kind == "refused":
        fake.refuse()
    elif kind == "hang":
        fake.hang(60)
    elif kind == "garbage":
        fake.garbage()
    elif kind == "invalid_grant":
        fake.invalid_grant()
    elif kind == "slow":
        fake.hang(5, count=1)


def heal(fake: FakeGoogle, kind: str) -> None:
    fake.accept() if kind == "refused" else fake.clear_faults()


def _fault_params() -> list[Any]:
    quick = knob("TOKEND_FAULT_SECONDS", 2)
    slow = knob("TOKEND_FAULT_SECONDS_SLOW", 25)
    params = [pytest.param(kind, quick, id=f"{kind}-quick") for kind in FAULTS]
    params += [
        pytest.param(kind, slow, id=f"{kind}-slow", marks=pytest.mark.slow)
        for kind in ("503", "refused", "hang")
    ]
    return params


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("kind", "window"), _fault_params())
def test_token_endpoint_fault(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, kind: str, window: float
) -> None:
    """1. A 2-minute token is on disk; then the endpoint fails (``kind``) and SIGUSR1
       forces a refresh into the fault, which lasts ``window`` seconds.
    2. Throughout: the state and reason are the expected ones, every file and the
       socket keep serving the first token (still valid), and a retryable fault is
       retried on the full-jitter schedule (delays 0.1 s..2**(n-1) s, really waited);
       ``invalid_grant`` is not retried on a timer; a slow (5 s) answer just lands.
    3. The fault ends: a new token everywhere within one backoff step (for
       ``invalid_grant``: once the credentials file is rewritten, as a new login does)."""
    timeout = 8.0 if kind == "slow" else 1.0
    fake.lifetime = 120.0
    state, reason = FAULTS[kind]
    config = sa_config(fake, short_tmp)
    texts: dict[str, str | bytes] = {}
    with daemon_factory(config, env={"TOKEND_TIMEOUT": f"{timeout:g}"}) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        assert first is not None
        arrivals = len(fake.arrivals)
        inject(fake, kind)
        t_inject = time.time()
        d.signal(signal.SIGUSR1)
        states: dict[str, int] = {}
        problems: list[str] = []
        landed = 0.0
        until = t_inject + (5.5 if kind == "slow" else window)
        while time.time() < until:
            snap = profile_status(sock)
            states[snap["state"]] = states.get(snap["state"], 0) + 1
            texts[f"status {len(texts)}"] = json.dumps(snap)
            on_disk = tokens_on_disk(d)
            if kind == "slow" and (current_token(d) != first or set(on_disk.values()) - {first}):
                # The slow answer landed: its files are being published (a read in the
                # middle of that sees some new and some old ones, which is no fault).
                landed = time.time() - t_inject
                break
            if set(on_disk.values()) != {first}:
                problems.append(f"files changed during the fault: {sorted(on_disk)}")
            code, body = get(sock, "/v1/token")
            served = json.loads(body).get("access_token") if code == 200 else None
            if kind == "slow" and served not in (None, first) and fake.is_valid(served):
                landed = time.time() - t_inject  # on the socket a moment before the files
                break
            if served != first:
                problems.append(f"/v1/token answered {code} during the fault")
            time.sleep(0.2)
        during = profile_status(sock)
        cli_code, cli_status = status_cli(d)
        texts["tokend status --json"] = json.dumps(cli_status)
        fetches = len(fake.arrivals) - arrivals
        # -- the fault ends
        heal(fake, kind)
        t_heal = time.time()
        if kind == "invalid_grant":
            fake.write_service_account(short_tmp / "sa.json")  # what a new login does
        wait_for(lambda: current_token(d) not in (None, first), timeout=70)
        recovery = time.time() - t_heal
        wait_for(lambda: len(set(tokens_on_disk(d).values())) == 1, timeout=5)
        after = profile_status(sock)
        code, body = get(sock, "/v1/token")
        log = d.log()
        failures = failures_in_log(log)
    texts["log"] = log
    texts["last_error during"] = during["last_error"]
    schedule = check_schedule(failures, attempt_seconds=timeout if kind == "hang" else 0.2)
    # One backoff step: the attempt scheduled last, after the fault ended, succeeds.
    step = recovery_step(failures, t_heal)
    bound = step + 1.0
    # The most the policy lets the last failure wait (a hang first lasts the timeout).
    policy_bound = (timeout if kind == "hang" else 0.0) + min(60.0, 2.0 ** (len(failures) - 1))
    figures = {
        "fault": kind,
        "window_s": window if kind != "slow" else None,
        "slow_answer_landed_after_s": round(landed, 2) if kind == "slow" else None,
        "states_seen": states,
        "state_during": during["state"],
        "reason": during["last_error_reason"],
        "last_error": during["last_error"],
        "status_cli_exit": cli_code,
        "token_requests_during_fault": fetches,
        "retry_delays_s": [delay for _, _, delay in failures],
        "failure_gaps_s": [round(b[0] - a[0], 2) for a, b in itertools.pairwise(failures)],
        "recovery_s": round(recovery, 2),
        "next_attempt_after_heal_s": round(step, 2),
        "policy_bound_s": policy_bound,
        "secrets_scanned_texts": assert_no_secrets(fake, texts),
        "problems": problems + schedule,
    }
    report(f"endpoint_fault[{kind},{window:g}s]", **figures)
    assert not figures["problems"], figures
    assert state in states, figures
    if kind != "slow":
        assert during["state"] == state and during["last_error_reason"] == reason, figures
    assert after["state"] == "fresh" and after["consecutive_failures"] == 0, after
    assert code == 200 and json.loads(body)["access_token"] == current_token(d)
    assert fake.is_valid(current_token(d) or "")
    if kind == "slow":
        assert fetches == 1 and not failures and 4.5 < landed < 7, figures
        assert during["state"] == "fresh" and cli_code == 0, figures
        return
    assert cli_code == 0 and cli_status["profiles"]["default"]["state"] == state, cli_status
    if kind == "invalid_grant":
        assert fetches == 1 and not failures, figures  # no retry on a timer
        assert recovery < 3.0, figures
        assert "reauth_required" in log
        return
    assert len(failures) >= 2, figures
    if kind != "refused":  # a refused connection never reaches the fake
        assert 0 <= fetches - during["consecutive_failures"] <= 1, figures
    assert recovery <= bound and recovery <= policy_bound + 1.0, figures


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("lifetime", "outage"),
    [
        pytest.param(4.0, knob("TOKEND_OUTAGE_SECONDS", 6), id="quick"),
        pytest.param(
            20.0, knob("TOKEND_OUTAGE_SECONDS_SLOW", 60), id="slow", marks=pytest.mark.slow
        ),
    ],
)
def test_outage_longer_than_the_lifetime(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, lifetime: float, outage: float
) -> None:
    """1. Right after the first token, the endpoint answers 503 for ``outage`` seconds,
       longer than the token lives.
    2. Until the token's retirement the files and socket serve it; from then on no file
       exists (none ever holds an expired token), /v1/token answers 503 with the reason
       and the next attempt, /healthz 503, status ``expired``.
    3. The endpoint recovers: files, socket and health are back within one backoff step."""
    fake.lifetime = lifetime
    texts: dict[str, str | bytes] = {}
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        assert first is not None
        fake.fail(503)
        t_fail = time.time()
        real_expiry = fake.expires_at(first) or 0.0
        removed_at = None
        problems: list[str] = []
        reads = 0
        while time.time() < t_fail + outage:
            now = time.time()
            for name, tok in tokens_on_disk(d).items():
                reads += 1
                if tok is not None and (fake.expires_at(tok) or 0) <= time.time():
                    problems.append(f"{name} held an expired token")
            if removed_at is None and all(d.read(n) is None for n in FILES):
                removed_at = now
            time.sleep(0.05)
        code, body = get(sock, "/v1/token")
        hz, hz_body = get(sock, "/healthz")
        snap = profile_status(sock)
        texts.update({"503 body": body, "healthz": hz_body, "status": json.dumps(snap)})
        fake.clear_faults()
        t_heal = time.time()
        wait_for(lambda: all(d.read(n) is not None for n in FILES), timeout=70)
        recovery = time.time() - t_heal
        back = get(sock, "/v1/token")[0], get(sock, "/healthz")[0], profile_status(sock)["state"]
        log = d.log()
    texts["log"] = log
    failures = failures_in_log(log)
    step = recovery_step(failures, t_heal)
    error = json.loads(body)
    figures = {
        "lifetime_s": lifetime,
        "outage_s": outage,
        "files_removed_s_before_real_expiry": None
        if removed_at is None
        else round(real_expiry - removed_at, 2),
        "file_reads": reads,
        "token_answer": [code, error.get("error")],
        "detail": error.get("detail"),
        "healthz": hz,
        "state": snap["state"],
        "failed_attempts": len(failures),
        "retry_delays_s": [delay for _, _, delay in failures],
        "next_attempt_after_heal_s": round(step, 2),
        "recovery_s": round(recovery, 2),
        "after_recovery": back,
        "secrets_scanned_texts": assert_no_secrets(fake, texts),
        "problems": problems + check_schedule(failures, 0.2),
    }
    report(f"outage[{lifetime:g}s token, {outage:g}s outage]", **figures)
    assert not figures["problems"], figures
    assert removed_at is not None and 0 < real_expiry - removed_at <= 0.1 * lifetime + 1.5, figures
    assert code == 503 and error["error"] == "unavailable", figures
    assert "HTTP 503" in error["detail"] and "next attempt in" in error["detail"], figures
    assert hz == 503 and snap["state"] == "expired", figures
    assert "expired with no successor" in log
    assert recovery <= step + 1.0, figures
    assert back == (200, 200, "fresh"), figures


@pytest.mark.timeout(60)
def test_refresh_hanging_past_the_tokens_retirement(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. 4-second tokens; the refresh of the first one hangs for 5 s at the endpoint
       (inside the 10 s HTTP timeout), past the first token's expiry.
    2. The first token is still retired on time: every file is gone before it expires,
       none ever holds an expired token, /v1/token answers 503 saying a refresh is in
       flight, status is ``expired``.
    3. When the answer comes, files, socket and status are back with the new token."""
    lifetime = 4.0
    fake.lifetime = lifetime
    with daemon_factory(sa_config(fake, short_tmp), env={"TOKEND_TIMEOUT": "10"}) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        assert first is not None
        fake.hang(5, count=1)
        real_expiry = fake.expires_at(first) or 0.0
        removed_at = None
        problems: list[str] = []
        while time.time() < real_expiry + 0.5:
            for name, tok in tokens_on_disk(d).items():
                if tok is not None and (fake.expires_at(tok) or 0) <= time.time():
                    problems.append(f"{name} held an expired token")
            if removed_at is None and all(d.read(n) is None for n in FILES):
                removed_at = time.time()
            time.sleep(0.02)
        hanging = fake.calls["token"] == 2 and len(fake.call_log) == 1
        code, body = get(sock, "/v1/token")
        snap = profile_status(sock)
        wait_for(lambda: all(d.read(n) is not None for n in FILES), timeout=10)
        second = current_token(d)
        back = get(sock, "/v1/token")[0], profile_status(sock)["state"]
        log = d.log()
    error = json.loads(body)
    figures = {
        "lifetime_s": lifetime,
        "hang_s": 5,
        "fetch_hanging_at_expiry": hanging,
        "files_removed_s_before_real_expiry": None
        if removed_at is None
        else round(real_expiry - removed_at, 2),
        "token_answer": [code, error.get("error")],
        "detail": error.get("detail"),
        "state": snap["state"],
        "after": back,
        "problems": sorted(set(problems)),
        "secrets_scanned_texts": assert_no_secrets(fake, {"log": log, "503 body": body}),
    }
    report("refresh hanging past retirement", **figures)
    assert hanging and not problems, figures
    assert removed_at is not None and 0 < real_expiry - removed_at <= 0.1 * lifetime + 1.5, figures
    assert code == 503 and "one is in flight" in error["detail"], figures
    assert snap["state"] == "expired", figures
    assert second not in (None, first) and fake.is_valid(second or ""), figures
    assert back == (200, "fresh"), figures


# -- 4. credential file faults ----------------------------------------------------------

#: Run the daemon as root without the capabilities that let root read any file, so a
#: chmod 000 credentials file is unreadable to it as it would be to a normal user.
NO_DAC = (
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
    "--",
)

#: fault -> (state, reason, text the log line must carry)
CRED_FAULTS: dict[str, tuple[str, str, str]] = {
    "deleted": ("reauth_required", "credentials_missing", "no such file; run `gcloud auth"),
    "truncated": ("reauth_required", "credentials_invalid", "not valid JSON; run `gcloud auth"),
    "garbage": ("reauth_required", "credentials_invalid", "not valid JSON; run `gcloud auth"),
    "permission": ("reauth_required", "credentials_invalid", "permission denied; make it"),
    # google-auth knows no email for a user login, so the log cannot name alice and bob.
    "other_identity": ("fresh", "", "adc.json changed, reloading credentials"),
    # Not files at all: a FIFO nobody writes (it blocked the fetch thread forever, and
    # the profile never recovered) and a link to /dev/zero (1.5 GB of RSS in 3 s).
    "fifo": ("reauth_required", "credentials_invalid", "not a regular file"),
    "devzero": ("reauth_required", "credentials_invalid", "not a regular file"),
}


def _damage(fake: FakeGoogle, adc: Path, kind: str) -> None:
    if kind == "deleted":
        adc.unlink()
    elif kind == "truncated":
        data = adc.read_bytes()
        with open(adc, "r+b") as f:  # in place, as a full disk or a crash would leave it
            f.truncate(len(data) // 2)
    elif kind == "garbage":
        adc.write_bytes(os.urandom(300))
    elif kind == "permission":
        adc.chmod(0)
    elif kind == "other_identity":
        tmp = adc.with_name("adc.json.new")
        fake.write_authorized_user(tmp, account="bob@example.com")
        os.replace(tmp, adc)  # as gcloud does: a new file renamed over the old one
    elif kind in ("fifo", "devzero"):
        tmp = adc.with_name("adc.json.new")
        os.mkfifo(tmp) if kind == "fifo" else os.symlink("/dev/zero", tmp)
        os.replace(tmp, adc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(CRED_FAULTS))
def test_credentials_file_fault(fake: FakeGoogle, short_tmp: Path, kind: str) -> None:
    """1. ADC (GOOGLE_APPLICATION_CREDENTIALS) is alice's login; 60-second tokens.
    2. The file is deleted / truncated / replaced by garbage / made unreadable (chmod
       000; the daemon runs without CAP_DAC_OVERRIDE) / replaced by bob's login / by a
       FIFO / by a symlink to /dev/zero.
    3. tokend notices at once: the expected state and reason in status, one log line
       with the fix, no crash; alice's still-valid token keeps being served (bob's
       login instead replaces it at once, everywhere).
    4. The file is fixed (a new login, chmod 600): a new token within a few seconds."""
    from tests.reliability_util import proc_figures

    prefix: tuple[str, ...] = ()
    if kind == "permission" and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads any file; needs setpriv to drop CAP_DAC_OVERRIDE")
        prefix = NO_DAC
    fake.lifetime = 60.0
    adc = fake.write_authorized_user(short_tmp / "adc.json", account="alice@example.com")
    config = f'[profiles.default]\ntoken_uri = "{fake.token_uri}"\n'
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(adc)}
    state, reason, line = CRED_FAULTS[kind]
    texts: dict[str, str | bytes] = {}
    with run_daemon(fake, short_tmp, config, env=env, prefix=prefix) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        assert first is not None and fake.who(first) == "alice@example.com"
        rss0 = proc_figures(d.proc.pid)["rss_kib"]
        t0 = time.time()
        _damage(fake, adc, kind)
        try:
            wait_for(lambda: line in d.log(), timeout=5)
        except AssertionError:
            raise AssertionError(f"no {line!r} in the log:\n{d.log()}") from None
        noticed = time.time() - t0
        if kind == "other_identity":
            wait_for(
                lambda: current_token(d) != first and len(set(tokens_on_disk(d).values())) == 1
            )
            wait_for(lambda: profile_status(sock)["state"] == "fresh")
        snap = profile_status(sock)
        code, body = get(sock, "/v1/token")
        texts.update({"status": json.dumps(snap), "log": d.log()})
        served = json.loads(body).get("access_token") if code == 200 else None
        on_disk = set(tokens_on_disk(d).values())
        assert d.proc.poll() is None
        rss_growth = proc_figures(d.proc.pid)["rss_kib"] - rss0
        # -- fixed
        t1 = time.time()
        if kind == "permission":
            adc.chmod(0o600)
        elif kind in ("fifo", "devzero"):
            tmp = adc.with_name("adc.json.new")  # writing into them would block or vanish
            fake.write_authorized_user(tmp, account="alice@example.com")
            os.replace(tmp, adc)
        elif kind != "other_identity":
            fake.write_authorized_user(adc, account="alice@example.com")  # a new login
        wait_for(lambda: current_token(d) not in (None, first), timeout=10)
        recovered = time.time() - t1
        after = profile_status(sock)
        wait_for(lambda: len(set(tokens_on_disk(d).values())) == 1, timeout=5)
        final = current_token(d) or ""
        texts["log"] = d.log()
    figures = {
        "fault": kind,
        "noticed_s": round(noticed, 2),
        "state": snap["state"],
        "reason": snap["last_error_reason"],
        "last_error": snap["last_error"],
        "served_meanwhile": "new identity" if kind == "other_identity" else served == first,
        "recovered_s": round(recovered, 2),
        "rss_growth_kib": rss_growth,
        "secrets_scanned_texts": assert_no_secrets(fake, texts),
    }
    report(f"credentials[{kind}]", **figures)
    assert rss_growth < 20 * 1024, figures
    assert snap["state"] == state and snap["last_error_reason"] == reason, figures
    assert d.log().count(line) == 1, figures  # one line, not one per retry
    if kind == "other_identity":
        assert fake.who(served or "") == "bob@example.com" and on_disk == {served}, figures
        recovered = 0.0
    else:
        assert served == first and on_disk == {first}, figures
        assert fake.who(final) == "alice@example.com" and after["state"] == "fresh", figures
    assert noticed < 3.0 and recovered < 5.0, figures


# -- 5. disk faults ---------------------------------------------------------------------


def _mnt_config(fake: FakeGoogle, d: Path, mnt: Path) -> str:
    return sa_config(
        fake,
        d,
        f'[[profiles.default.sinks]]\npath = "{mnt}/token.json"\nformat = "json"\n'
        f'[[profiles.default.sinks]]\npath = "{mnt}/token"\nformat = "raw"\n',
    )


def _mnt_tokens(mnt: Path) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("token", "token.json"):
        try:
            found[name] = token_in(name, (mnt / name).read_bytes())
        except FileNotFoundError:
            found[name] = None
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["full", "readonly"])
def test_sink_disk_fault(fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, kind: str) -> None:
    """1. The sinks (token, token.json) live on a 64 KiB tmpfs; 30-second tokens.
    2. The filesystem fills up (ENOSPC) / is remounted read-only (EROFS); SIGUSR1
       forces a refresh.
    3. The new token is fetched and served on the socket, the files keep the last good
       token (complete, valid), /v1/status reports ``sink_write_failed`` naming the path
       and the error, logged once.
    4. Space returns / the filesystem is writable again: the files hold the new token
       within about a second (the sink retry interval) and the error clears."""
    from tests.reliability_util import fill, remount, tiny_tmpfs

    fake.lifetime = 30.0
    with (
        tiny_tmpfs(short_tmp / "mnt") as mnt,
        daemon_factory(_mnt_config(fake, short_tmp, mnt)) as d,
    ):
        sock = d.file("tokend.sock")
        first = _mnt_tokens(mnt)["token.json"]
        assert first is not None and set(_mnt_tokens(mnt).values()) == {first}
        filler = fill(mnt) if kind == "full" else None
        if kind == "readonly":
            remount(mnt, "ro")
        d.signal(signal.SIGUSR1)
        wait_for(
            lambda: profile_status(sock)["last_error_reason"] == "sink_write_failed", timeout=5
        )
        time.sleep(2.5)  # a few sink retries
        snap = profile_status(sock)
        code, body = get(sock, "/v1/token")
        served = json.loads(body)["access_token"] if code == 200 else None
        on_disk = _mnt_tokens(mnt)
        errors_logged = d.log().count("the previous file is left intact")
        # -- space returns
        t0 = time.time()
        if filler is not None:
            filler.unlink()
        else:
            remount(mnt, "rw")
        wait_for(lambda: set(_mnt_tokens(mnt).values()) == {served}, timeout=5)
        healed = time.time() - t0
        after = profile_status(sock)
        texts = {"status": json.dumps(snap), "log": d.log()}
    strerror = "No space left on device" if kind == "full" else "Read-only file system"
    figures = {
        "fault": kind,
        "last_error": snap["last_error"],
        "reason": snap["last_error_reason"],
        "state": snap["state"],
        "files_kept_last_good_token": set(on_disk.values()) == {first},
        "socket_served_new_token": served not in (None, first),
        "error_lines_logged": errors_logged,
        "rewritten_after_s": round(healed, 2),
        "secrets_scanned_texts": assert_no_secrets(fake, texts),
    }
    report(f"disk[{kind}]", **figures)
    assert set(on_disk.values()) == {first} and fake.is_valid(first), figures
    assert served not in (None, first) and fake.is_valid(served or ""), figures
    assert f"{mnt}/token" in snap["last_error"] and strerror in snap["last_error"], figures
    assert snap["last_error_reason"] == "sink_write_failed" and errors_logged == 1, figures
    assert healed < 2.5, figures
    assert after["last_error"] == "" and after["last_error_reason"] == "", after


@pytest.mark.timeout(60)
def test_full_disk_outlasting_the_token(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. 4-second tokens, sinks on a 64 KiB tmpfs that fills up; refreshes keep
       succeeding but no write does.
    2. The token left on disk is removed when it retires (a full disk still allows
       unlink), though newer ones exist: no file ever holds an expired token. (The
       page that frees lets the current token in at once, so the gap is not visible.)
    3. Space returns: the current token is written within about a second."""
    from tests.reliability_util import fill, tiny_tmpfs

    fake.lifetime = 4.0
    with (
        tiny_tmpfs(short_tmp / "mnt") as mnt,
        daemon_factory(_mnt_config(fake, short_tmp, mnt)) as d,
    ):
        first = _mnt_tokens(mnt)["token.json"]
        assert first is not None
        filler = fill(mnt)
        problems: list[str] = []
        removed_at = None
        until = time.time() + 7
        while time.time() < until:
            for name, tok in _mnt_tokens(mnt).items():
                if tok is not None and (fake.expires_at(tok) or 0) <= time.time():
                    problems.append(f"{name} held an expired token")
                if tok is None and removed_at is None:
                    removed_at = time.time()
            time.sleep(0.05)
        t0 = time.time()
        filler.unlink()
        wait_for(lambda: all(_mnt_tokens(mnt).values()), timeout=5)
        healed = time.time() - t0
        now_on_disk = set(_mnt_tokens(mnt).values())
        texts = {"log": d.log()}
    removals = texts["log"].count("expired and its successor was not written in time")
    figures = {
        "stale_files_removed": removals,
        "rewritten_after_s": round(healed, 2),
        "problems": sorted(set(problems)),
        "secrets_scanned_texts": assert_no_secrets(fake, texts),
    }
    report("disk[full past expiry]", **figures)
    assert not problems, figures
    assert removals >= 2, figures
    assert healed < 2.5 and all(fake.is_valid(t or "") for t in now_on_disk), figures


# -- 6. socket abuse --------------------------------------------------------------------

REQUEST = b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n"


def _raise_nofile(need: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _open_unix(path: str) -> tuple[Any, Any]:
    """asyncio.open_unix_connection, waiting for room in a full listen queue as
    tokend.client does. asyncio's own connect takes that EAGAIN for "in progress" and
    returns a socket that never connected (reads fail with EINVAL), so a burst larger
    than the queue would test asyncio, not the daemon."""
    import asyncio

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    while True:
        try:
            sock.connect(path)
            break
        except BlockingIOError:
            await asyncio.sleep(0.005)
    return await asyncio.open_unix_connection(sock=sock)


def _systemd_nofile() -> None:
    """systemd's default for services: a soft limit of 1024 open files."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


@pytest.mark.serial
@pytest.mark.timeout(120)
@pytest.mark.parametrize("nofile", ["inherited", "systemd_default_1024"])
def test_a_thousand_concurrent_connections(fake: FakeGoogle, short_tmp: Path, nofile: str) -> None:
    """1. 1,000 clients connect at once (all connections open before any request), then
       each sends a request. Also 1,500 clients against a daemon started with systemd's
       default soft limit of 1024 open files.
    2. Every one gets 200 and the current token, no accept fails (EMFILE), and the
       daemon's fd count returns to its baseline afterwards."""
    import asyncio

    from tests.reliability_util import proc_figures

    # Past the 1024 soft limit where it applies: the daemon must lift it itself.
    n = int(knob("TOKEND_CONCURRENT", 1000 if nofile == "inherited" else 1500))
    _raise_nofile(n + 200)
    preexec = _systemd_nofile if nofile != "inherited" else None
    with run_daemon(fake, short_tmp, sa_config(fake, short_tmp), preexec_fn=preexec) as d:
        sock = str(d.file("tokend.sock"))
        token = current_token(d)
        base = proc_figures(d.proc.pid)

        async def storm() -> tuple[list[bytes], float, int]:
            conns = await asyncio.gather(*(_open_unix(sock) for _ in range(n)))
            peak = proc_figures(d.proc.pid)["fds"]
            t0 = time.monotonic()
            for _, w in conns:
                w.write(REQUEST)

            async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bytes:
                try:
                    return await r.read()
                except OSError as err:
                    return f"{type(err).__name__} {err.errno}".encode()
                finally:
                    w.close()

            replies = await asyncio.wait_for(
                asyncio.gather(*(answer(r, w) for r, w in conns)), timeout=60
            )
            return replies, time.monotonic() - t0, peak

        replies, took, peak = asyncio.run(storm())
        ok = sum(1 for r in replies if r.startswith(b"HTTP/1.1 200") and token.encode() in r)
        others: dict[str, int] = {}
        for r in replies:
            if not r.startswith(b"HTTP/1.1 200"):
                key = r[:40].decode(errors="replace")
                others[key] = others.get(key, 0) + 1
        wait_for(lambda: proc_figures(d.proc.pid)["fds"] <= base["fds"] + 2, timeout=10)
        after = proc_figures(d.proc.pid)
        log = d.log()
    figures = {
        "daemon_nofile": nofile,
        "connections": n,
        "answered_200": ok,
        "other_outcomes": others,
        "all_answered_s": round(took, 2),
        "daemon_fds_before_peak_after": [base["fds"], peak, after["fds"]],
        "accept_errors_logged": log.count("out of system resource"),
    }
    report(f"socket_concurrent[{n},{nofile}]", **figures)
    assert ok == n, figures
    assert "out of system resource" not in log, figures


@pytest.mark.serial
@pytest.mark.timeout(90)
def test_slowloris_does_not_slow_a_good_client(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. 200 connections each send half a request line and then nothing.
    2. Meanwhile a normal client asks /v1/token over and over (a new connection each
       time): every answer is 200 and arrives in under 50 ms.
    3. The server closes every half-open connection after its idle timeout (5 s); the
       daemon's fd count returns to its baseline."""
    import socket

    from tests.reliability_util import proc_figures

    n = int(knob("TOKEND_SLOWLORIS", 200))
    _raise_nofile(n + 200)
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = str(d.file("tokend.sock"))
        base = proc_figures(d.proc.pid)["fds"]
        idle = []
        t_open = time.monotonic()
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            s.sendall(b"GET /v1/tok")
            idle.append(s)
        latencies: list[float] = []
        bad: list[int] = []
        while time.monotonic() - t_open < 6.5:
            t0 = time.perf_counter()
            code, _ = get(sock, "/v1/token")
            latencies.append(time.perf_counter() - t0)
            if code != 200:
                bad.append(code)
            time.sleep(0.01)
        closed_by_server = 0
        for s in idle:
            s.settimeout(5)
            try:
                closed_by_server += s.recv(100) == b""
            except ConnectionResetError:
                closed_by_server += 1
            except TimeoutError:
                pass
            s.close()
        wait_for(lambda: proc_figures(d.proc.pid)["fds"] <= base + 1, timeout=10)
    latencies.sort()
    figures = {
        "half_open": n,
        "good_requests": len(latencies),
        "latency_ms_p50_p99_max": [
            round(1000 * latencies[len(latencies) // 2], 2),
            round(1000 * latencies[int(len(latencies) * 0.99)], 2),
            round(1000 * latencies[-1], 2),
        ],
        "non_200": bad,
        "half_open_closed_by_server": closed_by_server,
    }
    report(f"slowloris[{n}]", **figures)
    assert not bad and len(latencies) > 100, figures
    assert latencies[-1] < 0.050, figures
    assert closed_by_server == n, figures


#: (name, raw bytes sent) -> must get a 4xx or be closed without an answer, never 5xx
HOSTILE: list[tuple[str, bytes]] = [
    ("binary garbage", bytes(random.Random(5).randrange(256) for _ in range(4096))),
    ("NUL bytes", b"\0" * 512 + b"\r\n\r\n"),
    ("1 MiB request line", b"GET /v1/token?" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n"),
    ("TLS ClientHello", bytes.fromhex("16030100a5010000a10303") + os.urandom(32) + b"\r\n\r\n"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("unknown path", b"GET /v2/token HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("path traversal", b"GET /../../etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("encoded traversal", b"GET /v1/%2e%2e/%2e%2e/token HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("trailing slash", b"GET /v1/token/ HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("unknown profile", b"GET /v1/token?profile=nope HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("NUL in profile", b"GET /v1/token?profile=%00default HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("traversal profile", b"GET /v1/token?profile=../default HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("long profile", b"GET /v1/token?profile=" + b"p" * 3000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("invalid UTF-8 path", b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("min_valid=inf", b"GET /v1/token?min_valid=inf HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("wait=1e308", b"GET /v1/token?wait=1e308 HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("POST", b"POST /v1/token HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"),
    ("DELETE", b"DELETE /v1/token HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("CONNECT", b"CONNECT tokend:443 HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("huge Content-Length", b"POST /v1/token HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
    ("negative Content-Length", b"GET /v1/token HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
    ("bad chunked body", b"POST /v1/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    (
        "request smuggling",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n0\r\n\r\n",
    ),
    ("header without colon", b"GET /healthz HTTP/1.1\r\nbogus header\r\n\r\n"),
    ("LF only", b"GET /v1/nope HTTP/1.1\nHost: t\n\n"),
]


@pytest.mark.timeout(90)
def test_hostile_requests_get_4xx_and_disturb_no_one(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. Each hostile request of :data:`HOSTILE` on its own connection.
    2. Each gets a 4xx (with a JSON error body where it could be parsed) or is closed
       without an answer; none gets a 5xx, a token, or hangs past the idle timeout.
    3. Between them a good client still gets the token; no secret in any answer."""
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        outcomes: dict[str, str] = {}
        texts: dict[str, bytes] = {}
        problems: list[str] = []
        for name, payload in HOSTILE:
            t0 = time.monotonic()
            answer = one_response(sock, payload)
            took = time.monotonic() - t0
            texts[name] = answer
            status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else ""
            outcomes[name] = f"{status or 'closed'} in {took:.2f}s"
            if status and not status.startswith("4"):
                problems.append(f"{name}: HTTP {status}")
            if took > 6.5:
                problems.append(f"{name}: took {took:.1f}s")
            head, _, body = answer.partition(b"\r\n\r\n")
            # What reached the app answers the JSON error; what aiohttp's parser
            # rejects gets its plain-text 400 (see the module docstring).
            if b"application/json" in head and b'"error"' not in body:
                problems.append(f"{name}: error body is not the JSON error")
            code, _ = get(sock, "/v1/token")
            if code != 200:
                problems.append(f"after {name}: the good client got {code}")
        assert d.proc.poll() is None
        texts["log"] = d.log().encode()
    figures = {
        "requests": len(HOSTILE),
        "daemon_log_lines": texts["log"].count(b"\n"),
        "outcomes": outcomes,
        "problems": problems,
        "secrets_scanned_texts": assert_no_secrets(fake, texts),
    }
    report("hostile_requests", **figures)
    assert not problems, figures
    # A malformed request is the client's fault: no ERROR line (or traceback) for it.
    assert " ERROR: " not in texts["log"].decode(), texts["log"].decode()[-3000:]


@pytest.mark.timeout(60)
def test_http_pipelining(fake: FakeGoogle, short_tmp: Path, daemon_factory: Any) -> None:
    """Three requests in one write (keep-alive, the last one asks to close) get three
    responses, in order, on the same connection."""
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        payload = (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /v1/token?profile=nope HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /v1/token HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        raw = request(sock, payload)  # Connection: close on the last one
        token = current_token(d)
    responses = []
    rest = raw
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        body, rest = rest[:length], rest[length:]
        responses.append((int(head.split()[1]), json.loads(body)))
    statuses = [s for s, _ in responses]
    report("pipelining", responses=len(responses), statuses=statuses)
    assert statuses == [200, 404, 200], statuses
    assert responses[0][1] == {"status": "ok"}
    assert responses[1][1]["error"] == "unknown_profile"
    assert responses[2][1]["access_token"] == token


# -- 7. secrets -------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_no_secret_in_logs_status_errors_or_command_lines(
    fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. Three profiles: a user login through ADC (refresh token, client secret), a
       service account key (private key) and one whose credentials file is missing;
       the service account also keeps an ID token in a file, and one more is asked
       for over the socket (ID tokens are secrets too).
    2. Gathered: /proc/PID/cmdline of tokend, of ``tokend exec`` and of its child;
       /v1/status, /metrics, /healthz, the 503/404 error bodies (an ID token asked of
       the user login among them), ``tokend status`` (text and --json), ``tokend
       token`` for the broken profile and the TokenUnavailable message the client
       raises; the daemon log.
    3. No value FakeGoogle handed out appears in any of them (the child does get
       OPENAI_API_KEY in its environment, which is the point of exec)."""
    from tests.reliability_util import cmdline

    fake.lifetime = 60.0
    user = fake.write_authorized_user(short_tmp / "adc.json", account="alice@example.com")
    sa = fake.write_service_account(short_tmp / "sa.json")
    config = (
        f'[profiles.default]\ntoken_uri = "{fake.token_uri}"\n'
        f'[profiles.sa]\ncredentials = "{sa}"\n'
        '[[profiles.sa.id_tokens]]\naudience = "https://run.example.com"\npath = "run.jwt"\n'
        f'[profiles.broken]\ncredentials = "{short_tmp}/missing.json"\n'
    )
    texts: dict[str, str | bytes] = {}
    with run_daemon(
        fake, short_tmp, config, env={"GOOGLE_APPLICATION_CREDENTIALS": str(user)}
    ) as d:
        sock = d.file("tokend.sock")
        wait_for(lambda: profile_status(sock, "broken")["state"] == "reauth_required")
        wait_for(lambda: profile_status(sock, "sa")["state"] == "fresh")
        wait_for(lambda: d.read("run.jwt"))
        asked = get(sock, "/v1/id_token?profile=sa&audience=https://asked.example.com")
        assert asked[0] == 200 and len(fake.id_tokens_issued) == 2
        texts["tokend cmdline"] = cmdline(d.proc.pid)
        for target in (
            "/v1/status",
            "/metrics",
            "/healthz",
            "/v1/token?profile=broken",
            "/v1/token?profile=nope",
            "/v1/token?min_valid=abc",
            "/v1/id_token?audience=https://asked.example.com",
            "/v1/id_token?profile=sa&audience=http://plain.example.com",
        ):
            texts[target] = get(sock, target)[1]

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "tokend", *args],
                env={**d.env, "TOKEND_CONFIG": str(d.config_path)},
                capture_output=True,
                text=True,
                timeout=30,
            )

        for args in (("status",), ("status", "--json"), ("token", "--profile", "broken")):
            out = cli(*args)
            texts[f"tokend {' '.join(args)}"] = out.stdout + out.stderr
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                "import tokend\ntry:\n tokend.token('broken')\n"
                "except tokend.TokenUnavailable as e:\n print(repr(e), e)",
            ],
            env={**d.env, "TOKEND_CONFIG": str(d.config_path)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        texts["TokenUnavailable"] = client.stdout + client.stderr
        child_code = "import os, sys, time\nprint(os.getpid(), flush=True)\ntime.sleep(30)"
        ex = subprocess.Popen(
            [sys.executable, "-m", "tokend", "exec", "--", sys.executable, "-c", child_code],
            env={**d.env, "TOKEND_CONFIG": str(d.config_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            child = int(ex.stdout.readline())  # type: ignore[union-attr]
            texts["tokend exec cmdline"] = cmdline(ex.pid)
            texts["exec child cmdline"] = cmdline(child)
            child_env = Path(f"/proc/{child}/environ").read_bytes()
        finally:
            ex.terminate()
            _, err = ex.communicate(timeout=10)
        texts["tokend exec stderr"] = err
        texts["daemon log"] = d.log()
    scanned = assert_no_secrets(fake, texts)
    report(
        "secrets",
        texts_scanned=scanned,
        secrets_known=len(fake.secrets()),
        bytes_scanned=sum(len(t) for t in texts.values()),
        sources=sorted(texts),
    )
    assert b"OPENAI_API_KEY=ya29.fake-" in child_env
    assert "TokenUnavailable" in str(texts["TokenUnavailable"]), texts["TokenUnavailable"]
    assert b"credentials_missing" in texts["/v1/token?profile=broken"]  # type: ignore[operator]


# -- 8. long run ------------------------------------------------------------------------


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak(fake: FakeGoogle, short_tmp: Path, daemon_factory: Any) -> None:
    """1. 5-second tokens for ``TOKEND_SOAK_SECONDS`` (10 minutes); two reader processes
       read the files and /v1/token continuously (1 ms pause), and the test asks
       /v1/status, /metrics and /v1/token?min_valid=1 every second.
    2. RSS, open fds and threads of the daemon after a 30 s warm-up and at the end:
       flat (RSS +10 MiB at most, fds +5, threads +2 for a fetch in flight).
    3. The readers saw no partial, expired or nearly-expired token, and no missing file
       unless the daemon logged why (a token retired before its successor landed)."""
    from tests.reliability_util import proc_figures

    seconds = knob("TOKEND_SOAK_SECONDS", 600)
    warmup = min(30.0, seconds / 4)
    lifetime = 5.0
    fake.lifetime = lifetime
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        pid = d.proc.pid
        samples: list[dict[str, Any]] = []
        asked = errors = 0
        t_start = time.monotonic()
        with readers(2, d.runtime_dir, sock, seconds, short_tmp, pause=0.001) as collect:
            start = None
            while time.monotonic() - t_start < seconds:
                for target in ("/v1/status", "/metrics", "/v1/token?min_valid=1"):
                    asked += 1
                    errors += get(sock, target)[0] != 200
                elapsed = time.monotonic() - t_start
                if start is None and elapsed >= warmup:
                    start = proc_figures(pid)
                if not samples or elapsed - samples[-1]["t"] >= 30:
                    samples.append({"t": round(elapsed), **proc_figures(pid)})
                time.sleep(1.0)
            end = proc_figures(pid)
            results = collect()
        rotations = fake.calls["token"]
        assert d.proc.poll() is None
        log = d.log()
    reads = judge_reads(fake, results, margin=RETIRE_MARGIN * (lifetime - 1) * 0.9, daemon_log=log)
    assert start is not None
    figures = {
        "seconds": seconds,
        "lifetime_s": lifetime,
        "token_fetches": rotations,
        "after_warmup": start,
        "end": end,
        "rss_growth_kib": end["rss_kib"] - start["rss_kib"],
        "fd_growth": end["fds"] - start["fds"],
        "thread_growth": end["threads"] - start["threads"],
        "samples": samples,
        "api_requests": asked,
        "api_errors": errors,
        "reads": reads,
    }
    report(f"soak[{seconds:g}s]", **figures)
    assert not reads["problems"] and errors == 0, figures
    assert figures["rss_growth_kib"] < 10 * 1024, figures
    assert figures["fd_growth"] <= 5 and figures["thread_growth"] <= 2, figures


# -- 9. time jumps: suspend, resume and wall-clock steps --------------------------------


def _stated(d: Any) -> tuple[str | None, float | None]:
    """(token, the expiry token.json states, epoch seconds) or Nones."""
    from tokend.timefmt import parse_time

    data = d.read("token.json")
    tok = token_in("token.json", data) if data else None
    if tok is None or data is None:
        return None, None
    return tok, parse_time(json.loads(data)["expires_at"])


def _step_params() -> list[Any]:
    return [
        pytest.param(-60.0, 8.0, 9.0, id="back-quick"),
        pytest.param(60.0, 8.0, 4.0, id="forward-quick"),
        pytest.param(
            knob("TOKEND_STEP_SECONDS_SLOW", -600.0),
            40.0,
            90.0,
            id="back-slow",
            marks=pytest.mark.slow,
        ),
    ]


@pytest.mark.serial
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("step", "lifetime", "seconds"), _step_params())
def test_wall_clock_step(
    fake: FakeGoogle, short_tmp: Path, step: float, lifetime: float, seconds: float
) -> None:
    """1. tokend runs with its wall clock under libfaketime (its monotonic and boot
       clocks real); ``lifetime``-second tokens; two reader processes, on the real
       clock, read the files and /v1/token for ``seconds``.
    2. One second in, tokend's wall clock is stepped by ``step`` seconds (NTP, a person
       setting the time).
    3. Within 2 s the files state the expiry in the new wall time (moved by exactly
       the step): the same token, rewritten, with no token request for the step.
    4. No reader ever gets a token past its real expiry, from a file or the socket, and
       tokens keep rotating on their real schedule (backwards: before today's fix, the
       files and socket served a 20 s token 56 s past its expiry)."""
    from tests.reliability_util import clocks

    clk = clocks(short_tmp)
    fake.lifetime = lifetime
    with run_daemon(fake, short_tmp, sa_config(fake, short_tmp), env=clk.env()) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        # Two readers, not four: under libfaketime every wall-clock read costs a file
        # read (~6 us), which a tight loop of requests turns into real load.
        with readers(2, d.runtime_dir, sock, seconds, short_tmp, pause=0.001) as collect:
            time.sleep(1.0)
            calls = fake.calls["token"]
            before, claimed_before = _stated(d)
            t_step = time.time()
            seen_states: dict[Any, float] = {}
            clk.step(step)

            def restated() -> float:
                # The same token, its stated expiry moved by exactly the step (whole
                # seconds in, whole seconds out).
                tok, claimed = _stated(d)
                seen_states.setdefault((tok and tok[:14], claimed), round(time.time() - t_step, 3))
                ok = tok == before and claimed == (claimed_before or 0.0) + step
                return max(1e-6, time.time() - t_step) if ok else 0.0

            try:
                restated_after = wait_for(restated, timeout=10)
            except AssertionError:
                raise AssertionError(
                    f"never restated: {before and before[:12]} at {claimed_before}, now "
                    f"{_stated(d)[1]}; seen {seen_states}\n{d.log()}"
                ) from None
            token_restated = current_token(d)
            calls_for_step = fake.calls["token"] - calls
            results = collect()
        rotations = fake.calls["token"] - calls
        log = d.log()
    figures = judge_reads(
        fake,
        results,
        margin=RETIRE_MARGIN * (lifetime - 1) * 0.9,
        daemon_log=log,
        same_clock=False,
    )
    figures.update(
        step_s=step,
        lifetime_s=lifetime,
        seconds=seconds,
        files_restated_after_s=round(restated_after, 2),
        same_token_restated=token_restated == first,
        token_requests_for_the_step=calls_for_step,
        rotations=rotations,
    )
    report(f"wall_clock_step[{step:+g}s]", **figures)
    assert not figures["problems"], figures
    assert "the wall clock was stepped by" in log, figures
    assert restated_after < 2.0 and token_restated == first and calls_for_step == 0, figures
    if seconds > lifetime:
        assert rotations >= 1, figures  # the next refresh came on the real schedule


SUSPENDS = {
    # id: (token lifetime, seconds suspended, a fetch hanging when the lid closes)
    "expired-during-suspend": (20.0, 100.0, False),
    "lunch-break": (3600.0, 7200.0, False),
    "during-a-fetch": (20.0, 100.0, True),
    "short-suspend": (3600.0, 60.0, False),
}


@pytest.mark.serial
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(SUSPENDS))
def test_suspend_and_resume(fake: FakeGoogle, short_tmp: Path, case: str) -> None:
    """1. tokend runs; its wall and boot clocks can jump forward together while its
       monotonic clock, the one asyncio's timers use, stands still: a suspend, as far
       as tokend can tell (tests/clockshift.c).
    2. The machine "sleeps" longer than the token lives (100 s with a 20 s token; two
       hours with a 1-hour one), optionally while a refresh hangs at the endpoint.
    3. Within 2 s of the resume no file holds the token that died during the sleep and
       a new fetch has reached the endpoint (a hanging one is given up: its connection
       predates the sleep); the new token lands everywhere (before today's fix, files
       held the dead token until asyncio's timer fired: up to 45 minutes after a lunch
       break).
    4. A suspend shorter than the token's remaining life changes nothing: same token,
       same files, no request."""
    from tests.reliability_util import clocks

    lifetime, asleep, fetching = SUSPENDS[case]
    clk = clocks(short_tmp)
    fake.lifetime = lifetime
    env = {**clk.env(), "TOKEND_TIMEOUT": "10"}
    with run_daemon(fake, short_tmp, sa_config(fake, short_tmp), env=env) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        assert first is not None
        if fetching:
            fake.hang(30, count=1)
            d.signal(signal.SIGUSR1)
            wait_for(lambda: fake.calls["token"] == 2, timeout=5)
        arrivals = len(fake.arrivals)
        t_resume = time.time()
        clk.suspend(asleep)
        if case == "short-suspend":
            time.sleep(3.0)
            kept = tokens_on_disk(d)
            code, body = get(sock, "/v1/token")
            figures = {
                "asleep_s": asleep,
                "files_kept": set(kept.values()) == {first},
                "token_requests": len(fake.arrivals) - arrivals,
                "socket": [code, json.loads(body).get("access_token") == first],
            }
            report(f"suspend[{case}]", **figures)
            assert figures["files_kept"] and figures["token_requests"] == 0, figures
            assert figures["socket"] == [200, True], figures
            return

        def first_gone() -> float:
            gone = first not in tokens_on_disk(d).values()
            return max(1e-6, time.time() - t_resume) if gone else 0.0

        def fetch_started() -> float:
            return max(1e-6, time.time() - t_resume) if len(fake.arrivals) > arrivals else 0.0

        gone_after = wait_for(first_gone, timeout=40)
        fetch_after = wait_for(fetch_started, timeout=40)
        wait_for(lambda: current_token(d) not in (None, first), timeout=10)
        landed_after = time.time() - t_resume
        wait_for(lambda: len(set(tokens_on_disk(d).values())) == 1, timeout=5)
        second = current_token(d)
        code, body = get(sock, "/v1/token")
        d.wait_log("resumed after", timeout=2)
    figures = {
        "lifetime_s": lifetime,
        "asleep_s": asleep,
        "fetch_hanging_at_suspend": fetching,
        "dead_token_gone_after_s": round(gone_after, 2),
        "new_fetch_after_s": round(fetch_after, 2),
        "new_token_everywhere_after_s": round(landed_after, 2),
        "socket_serves_the_new_token": code == 200 and json.loads(body)["access_token"] == second,
    }
    report(f"suspend[{case}]", **figures)
    assert gone_after < 2.0 and fetch_after < 2.0, figures
    assert figures["socket_serves_the_new_token"] and fake.is_valid(second or ""), figures


# -- 10. untrusted answers from the token endpoint ------------------------------------

#: kind -> FakeGoogle knob and its argument ({marker} is a path the test watches)
BAD_ANSWERS: dict[str, tuple[str, Any]] = {
    "shell": ("bad_token", "ya29.$(touch${IFS}{marker})"),
    "newline": ("bad_token", "ya29.ok\nLD_PRELOAD={marker}"),
    "huge": ("bad_token", "ya29." + "a" * 100_000),
    "expires_in_0": ("bad_expires_in", 0),
    "expires_in_negative": ("bad_expires_in", -30),
    "a_century": ("bad_expires_in", 100 * 365 * 86400),
}


def _answer_badly(fake: FakeGoogle, kind: str, marker: Path) -> None:
    knob_name, arg = BAD_ANSWERS[kind]
    if isinstance(arg, str):
        arg = arg.replace("{marker}", str(marker))
    getattr(fake, knob_name)(arg)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(BAD_ANSWERS))
def test_hostile_token_answer(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, kind: str
) -> None:
    """1. A 60-second token on disk.
    2. For 2 s the endpoint answers 200 with a token holding ``$(...)``, a newline and a
       variable, or 100 kB; or with ``expires_in`` 0, negative or a century; SIGUSR1
       forces a refresh into it.
    3. Each answer is a failed refresh (``bad_response``), retried with backoff (a few
       requests, not the 45-76 per second an ``expires_in`` of 0 used to cause), and
       never written: the files and the socket keep the first token, and sourcing
       openai.env runs nothing.
    4. The endpoint heals (and SIGUSR1): a new token."""
    fake.lifetime = 60.0
    marker = short_tmp / "pwned"
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        arrivals = len(fake.arrivals)
        _answer_badly(fake, kind, marker)
        d.signal(signal.SIGUSR1)
        time.sleep(2.0)
        requests = len(fake.arrivals) - arrivals
        snap = profile_status(sock)
        on_disk = {name: d.read(name) for name in FILES}
        code, body = get(sock, "/v1/token")
        sourced = subprocess.run(
            ["sh", "-c", 'set -a; . "$0"; env', str(d.file("openai.env"))],
            capture_output=True,
            text=True,
        )
        fake.clear_faults()
        d.signal(signal.SIGUSR1)  # not the backoff's next attempt: the heal is not the test
        wait_for(lambda: current_token(d) not in (None, first), timeout=70)
        log = d.log()
    figures = {
        "answer": kind,
        "state": snap["state"],
        "reason": snap["last_error_reason"],
        "last_error": snap["last_error"],
        "token_requests_in_2s": requests,
        "files_kept_first_token": all(
            token_in(n, data or b"") == first for n, data in on_disk.items()
        ),
        "socket_kept_first_token": code == 200 and json.loads(body)["access_token"] == first,
        "sourcing_openai_env_ran_code": marker.exists(),
        "injected_variable": "LD_PRELOAD" in sourced.stdout,
        "secrets_scanned_texts": assert_no_secrets(fake, {"log": log, "status": json.dumps(snap)}),
    }
    report(f"hostile_answer[{kind}]", **figures)
    assert snap["state"] == "retrying" and snap["last_error_reason"] == "bad_response", figures
    assert 1 <= requests <= 5, figures
    assert figures["files_kept_first_token"] and figures["socket_kept_first_token"], figures
    assert not marker.exists() and not figures["injected_variable"], figures


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["shell", "expires_in_0"])
def test_run_once_refuses_a_hostile_answer(fake: FakeGoogle, short_tmp: Path, kind: str) -> None:
    """``tokend run --once`` against an endpoint answering a hostile token or an
    already-expired one: exit 3 with one line, nothing written (before: the expired
    token was written and the exit was 0)."""
    marker = short_tmp / "pwned"
    config = short_tmp / "config.toml"
    config.write_text(sa_config(fake, short_tmp))
    _answer_badly(fake, kind, marker)
    runtime = short_tmp / "rt"
    out = subprocess.run(
        [sys.executable, "-m", "tokend", "run", "--once", "--config", str(config)],
        env=tokend_env(fake, runtime),
        capture_output=True,
        text=True,
        timeout=20,
    )
    written = sorted(p.name for p in runtime.iterdir()) if runtime.exists() else []
    figures = {"exit": out.returncode, "stderr": out.stderr.strip(), "written": written}
    report(f"run_once_hostile[{kind}]", **figures)
    assert out.returncode == 3 and written == [], figures
    assert len(out.stderr.strip().splitlines()) == 1 and "bad_response" not in out.stderr, figures
    assert not marker.exists()


# -- 11. files that are not files: the config file -------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_config_file_that_is_not_a_file(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, kind: str
) -> None:
    """1. tokend runs with a config file; 3-second tokens.
    2. The config file is replaced by a FIFO nobody writes / a symlink to /dev/zero;
       the watcher reloads it.
    3. The event loop never stalls: /healthz answers every 50 ms, tokens keep rotating
       and retiring, the refusal is logged once with the path, the running
       configuration is kept, SIGTERM stops it at once (before: a FIFO froze the loop
       and an expired token.json stayed on disk).
    4. ``tokend run`` started on that file: exit 2, one line."""
    from tests.reliability_util import proc_figures

    fake.lifetime = 3.0
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        rss0 = proc_figures(d.proc.pid)["rss_kib"]
        calls = fake.calls["token"]
        bad = d.config_path.with_name("bad.toml")
        if kind == "fifo":
            os.mkfifo(bad)
        else:
            os.symlink("/dev/zero", bad)
        os.replace(bad, d.config_path)
        slowest = 0.0
        unhealthy = 0
        t_end = time.time() + 4.0
        while time.time() < t_end:
            t = time.monotonic()
            unhealthy += get(sock, "/healthz", timeout=2.0)[0] != 200
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.05)
        rotations = fake.calls["token"] - calls
        rss1 = proc_figures(d.proc.pid)["rss_kib"]
        t_stop = time.monotonic()
        exit_code = d.stop()
        stop_s = time.monotonic() - t_stop
        log = d.log()
        started = subprocess.run(
            [sys.executable, "-m", "tokend", "run", "--config", str(d.config_path)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=20,
        )
    figures = {
        "kind": kind,
        "healthz_slowest_ms": round(slowest * 1000, 1),
        "healthz_not_200": unhealthy,
        "rotations_meanwhile": rotations,
        "rss_growth_kib": rss1 - rss0,
        "stop_s": round(stop_s, 2),
        "refusals_logged": log.count("not a regular file"),
        "start_on_it": [started.returncode, started.stderr.strip()],
    }
    report(f"config_not_a_file[{kind}]", **figures)
    assert slowest < 1.0 and not unhealthy and rotations >= 1, figures
    assert exit_code == 0 and stop_s < 2.0, figures
    assert figures["refusals_logged"] >= 1 and "configuration not reloaded" in log, figures
    assert figures["rss_growth_kib"] < 20 * 1024, figures
    assert started.returncode == 2 and len(started.stderr.strip().splitlines()) == 1, figures
    assert "not a regular file" in started.stderr, figures


# -- 12. every wait has a deadline -----------------------------------------------------


@pytest.mark.timeout(60)
def test_trickling_endpoint_is_given_up_at_the_deadline(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. TOKEND_TIMEOUT=2; a 60-second token on disk.
    2. The endpoint trickles its answers one byte a second: every read is quick, so no
       per-read timeout fires; SIGUSR1 forces a refresh.
    3. The fetch is given up 2 s after it started: a retryable failure (``timeout``)
       in status and log, the old token kept, retries backing off (before: one fetch
       ran on with no error for as long as the answer took).
    4. The endpoint heals: a new token within a backoff step."""
    fake.lifetime = 60.0
    with daemon_factory(sa_config(fake, short_tmp), env={"TOKEND_TIMEOUT": "2"}) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        fake.trickle(1.0)
        t0 = time.time()
        d.signal(signal.SIGUSR1)
        wait_for(lambda: profile_status(sock)["last_error_reason"] == "timeout", timeout=10)
        given_up = time.time() - t0
        snap = profile_status(sock)
        kept = set(tokens_on_disk(d).values()) == {first}
        fake.clear_faults()
        wait_for(lambda: current_token(d) not in (None, first), timeout=30)
        recovered = time.time() - t0
        log = d.log()
    figures = {
        "given_up_after_s": round(given_up, 2),
        "state": snap["state"],
        "last_error": snap["last_error"],
        "old_token_kept": kept,
        "new_token_after_s": round(recovered, 2),
    }
    report("trickling_endpoint", **figures)
    assert 1.8 < given_up < 3.5 and snap["state"] == "retrying" and kept, figures
    assert "TOKEND_TIMEOUT" in snap["last_error"] and "gave up on it" in log, figures


@pytest.mark.timeout(60)
def test_credentials_touched_continuously(fake: FakeGoogle, short_tmp: Path) -> None:
    """1. ADC is alice's login; 60-second tokens.
    2. bob logs in (the file is replaced), and then a sync tool or an editor touches
       the file every 100 ms, for 5 s.
    3. bob's token is in every file within 2 s of his login, while the touching goes
       on: the debounce waits at most 1 s (before: each touch postponed the reload, for
       as long as the touching lasted)."""

    fake.lifetime = 60.0
    adc = fake.write_authorized_user(short_tmp / "adc.json", account="alice@example.com")
    config = f'[profiles.default]\ntoken_uri = "{fake.token_uri}"\n'
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(adc)}
    with run_daemon(fake, short_tmp, config, env=env) as d:
        tmp = adc.with_name("adc.json.new")
        fake.write_authorized_user(tmp, account="bob@example.com")
        os.replace(tmp, adc)
        t0 = time.time()
        bob_after = None
        while time.time() - t0 < 5.0:
            os.utime(adc)
            tokens = set(tokens_on_disk(d).values())
            if bob_after is None and len(tokens) == 1:
                (tok,) = tokens
                if fake.who(tok or "") == "bob@example.com":
                    bob_after = time.time() - t0
            time.sleep(0.1)
    figures = {"touch_interval_s": 0.1, "bobs_token_everywhere_after_s": bob_after}
    report("credentials_touched_continuously", **figures)
    assert bob_after is not None and bob_after < 2.0, figures


# -- 13. restarts trust only what they can verify --------------------------------------

RESTARTS = ("same_credentials", "bogus_token_until_2096", "other_identity")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", RESTARTS)
def test_restart_adopts_only_what_it_can_verify(
    fake: FakeGoogle, short_tmp: Path, case: str
) -> None:
    """1. tokend runs with alice's ADC login and a 1-hour token; it is SIGKILL-ed.
    2. While it is down: nothing changes / token.json is rewritten with a bogus token
       "valid until 2096" / bob logs in (the ADC file is replaced).
    3. tokend restarts while the endpoint is down (503).
    4. Same credentials: alice's token, still valid, is served from the first moment.
       Otherwise every file of the earlier run is removed and /v1/token answers 503:
       never the bogus token, never alice's token for bob (before: both were served,
       the latter for the rest of its hour)."""

    fake.lifetime = 3600.0
    adc = fake.write_authorized_user(short_tmp / "adc.json", account="alice@example.com")
    config = f'[profiles.default]\ntoken_uri = "{fake.token_uri}"\n'
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(adc)}
    with run_daemon(fake, short_tmp, config, env=env) as d:
        first = current_token(d)
        d.proc.kill()
        d.proc.wait()
    runtime = short_tmp / "rt"
    bogus = "ya29.bogus-" + "x" * 40
    if case == "bogus_token_until_2096":
        data = json.loads((runtime / "token.json").read_bytes())
        data.update(access_token=bogus, expires_at="2096-01-01T00:00:00Z")
        (runtime / "token.json").write_text(json.dumps(data))
    elif case == "other_identity":
        tmp = adc.with_name("adc.json.new")
        fake.write_authorized_user(tmp, account="bob@example.com")
        os.replace(tmp, adc)
    fake.fail(503)
    cfg_path = short_tmp / "config.toml"
    restarted = launch(cfg_path, short_tmp / "daemon2.log", tokend_env(fake, runtime, env))
    try:
        sock = runtime / "tokend.sock"
        wait_for(lambda: "refresh failed" in restarted.log(), timeout=15)
        code, body = get(sock, "/v1/token")
        files = {name: (runtime / name).exists() for name in FILES}
        log = restarted.log()
    finally:
        restarted.stop()
    served = json.loads(body).get("access_token") if code == 200 else None
    figures = {
        "case": case,
        "token_answer": code,
        "served": "alice's token" if served == first else ("bogus" if served == bogus else served),
        "files_left": files,
        "log": [line.split(": ", 1)[-1] for line in log.splitlines() if "earlier run" in line],
        "secrets_scanned_texts": assert_no_secrets(
            fake, {"log": log, **({} if code == 200 else {"answer": body})}
        ),
    }
    report(f"restart[{case}]", **figures)
    if case == "same_credentials":
        assert code == 200 and served == first and all(files.values()), figures
    else:
        assert code == 503 and not any(files.values()), figures
        assert "earlier run" in log, figures


# -- 14. what a new user met -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_run_once_while_a_daemon_runs_is_refused(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """``tokend run --once`` while a daemon serves the same runtime dir: exit 2 with one
    line, the daemon's files untouched (before: it silently overwrote them, and file
    and socket then disagreed)."""
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        before = {n: os.stat(d.file(n)).st_ino for n in FILES}
        calls = fake.calls["token"]
        out = subprocess.run(
            [sys.executable, "-m", "tokend", "run", "--once", "--config", str(d.config_path)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        after = {n: os.stat(d.file(n)).st_ino for n in FILES}
        extra_calls = fake.calls["token"] - calls
    figures = {"exit": out.returncode, "stderr": out.stderr.strip(), "files_same": before == after}
    report("run_once_while_running", **figures)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, figures
    assert "already serving" in out.stderr and before == after and extra_calls == 0, figures


@pytest.mark.timeout(60)
def test_files_left_by_a_stopped_daemon_are_refused_once_expired(
    fake: FakeGoogle, short_tmp: Path
) -> None:
    """1. ``tokend run --once`` writes 3-second tokens and exits: no daemon is left to
       remove them at expiry (the guarantee holds while tokend runs).
    2. Once the token has expired, every tokend client refuses the file: ``tokend
       token`` exits 1 with what to do, ``. tokend-env.sh`` returns 1 and sets nothing;
       token.json and openai.env state the expiry for other readers."""
    fake.lifetime = 3.0
    config = short_tmp / "config.toml"
    config.write_text(sa_config(fake, short_tmp))
    runtime = short_tmp / "rt"
    env = {**tokend_env(fake, runtime), "TOKEND_SOCKET": str(short_tmp / "none.sock")}
    once = subprocess.run(
        [sys.executable, "-m", "tokend", "run", "--once", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert once.returncode == 0, once.stderr
    tok = token_in("token.json", (runtime / "token.json").read_bytes())
    wait_for(lambda: not fake.is_valid(tok or ""), timeout=10)
    cli = subprocess.run(
        [sys.executable, "-m", "tokend", "token", "--min-valid", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    source_it = f'. "{ROOT}/tokend/tokend-env.sh"; echo "rc=$? key=${{OPENAI_API_KEY:-}}"'
    shim = subprocess.run(
        ["sh", "-c", source_it],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    figures = {
        "once_says": once.stderr.strip().splitlines()[-1].split(": ", 1)[-1],
        "tokend_token": [cli.returncode, cli.stderr.strip()],
        "tokend_env_sh": [shim.stdout.strip(), shim.stderr.strip()],
    }
    report("files_after_the_daemon", **figures)
    assert "readers must check its expires_at" in once.stderr, figures
    assert cli.returncode == 1 and tok not in cli.stdout and "expired" in cli.stderr, figures
    assert shim.stdout.strip() == "rc=1 key=", figures


# == trust in directories, checked where the write happens; one default runtime dir ======
# (issue 9 §4 and §6.) Faults come from another uid, a throw-away user made for these
# scenarios and deleted after them, acting on the filesystem, or from the configuration.

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create and act as another user",
)


@dataclass
class User:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str) -> None:
        """Run ``argv`` as this user (no supplementary groups), failing loudly."""
        subprocess.run(argv, check=True, user=self.uid, group=self.gid, extra_groups=[], timeout=10)


@pytest.fixture(scope="module")
def mallory() -> Iterator[User]:
    """A throw-away local user, deleted at the end of the module."""
    name = f"tkp{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        pw = pwd.getpwnam(name)
        yield User(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def her_dir(mallory: User) -> Iterator[Path]:
    """Her own directory in /tmp, which she wants our tokens in."""
    d = Path(tempfile.mkdtemp(prefix="tkh", dir="/tmp"))
    os.chown(d, mallory.uid, mallory.gid)
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


#: A refusal comes at once (well under a second); a tokend still running after this
#: has started instead.
REFUSE_WITHIN = 8.0


def start_refused(
    fake: FakeGoogle,
    directory: Path,
    config: str,
    runtime: Path | None,
    env: dict[str, str] | None = None,
) -> tuple[int | None, list[str], float]:
    """``tokend run`` that must refuse to start: (exit code, stderr lines, seconds).
    ``runtime`` is TOKEND_RUNTIME_DIR, or None to unset it and XDG_RUNTIME_DIR, so that
    the default applies. Exit code None: it was still running after REFUSE_WITHIN s."""
    cfg = directory / "config.toml"
    cfg.write_text(config)
    full = tokend_env(fake, runtime or directory / "rt", env)
    if runtime is None:
        full.pop("TOKEND_RUNTIME_DIR")
        full.pop("XDG_RUNTIME_DIR", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokend", "run", "--config", str(cfg)],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=REFUSE_WITHIN)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:  # it started: that is the failure being shown
        terminate(proc, 5.0)
        _, err = proc.communicate()
        code = None
    return code, err.strip().splitlines(), time.monotonic() - t0


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def token_served(sock: Path) -> str | None:
    code, body = get(sock, "/v1/token")
    return json.loads(body)["access_token"] if code == 200 else None


# -- a. the runtime dir (or a sink's dir) swapped for her symlink while tokend runs -------


def _swap_layout(fake: FakeGoogle, top: Path, target: str) -> tuple[str, dict[str, str], Path]:
    """(config, env, the directory she will swap). ``top`` is traversable by her; the
    swapped directory's parent is safe (0755, root's) at start."""
    top.chmod(0o755)
    parent = top / "par"
    parent.mkdir(mode=0o755)
    parent.chmod(0o755)
    sock = f'[socket]\npath = "{top}/tokend.sock"\n'
    if target == "runtime_dir":
        return (
            sock + sa_config(fake, top),
            {"TOKEND_RUNTIME_DIR": str(parent / "rt")},
            parent / "rt",
        )
    sub = parent / "sub"
    sub.mkdir(mode=0o755)
    sinks = (
        f'[[profiles.default.sinks]]\npath = "{sub}/token"\n'
        f'[[profiles.default.sinks]]\npath = "{sub}/token.json"\nformat = "json"\n'
    )
    return sock + sa_config(fake, top, sinks), {}, sub


@needs_root
@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["runtime_dir", "absolute_sink"])
def test_swapped_directory_receives_nothing(
    fake: FakeGoogle,
    short_tmp: Path,
    daemon_factory: Any,
    mallory: User,
    her_dir: Path,
    target: str,
) -> None:
    """1. tokend runs; the runtime dir (or the directory of an absolute sink,
       ``par/sub/token``) sits in ``par``, root's and 0755: safe at start.
    2. ``par`` is loosened to 0777 (no sticky bit). She renames the directory away and
       puts a symlink to her own directory in its place.
    3. SIGUSR1 forces a refresh and so a write, then the sink retries run for a while.
    4. Nothing is ever written into her directory; the new token is served on the
       socket; status names the refusal; the process lives on and stops cleanly."""
    config, env, swapped = _swap_layout(fake, short_tmp, target)
    sock = short_tmp / "tokend.sock"
    with daemon_factory(config, env=env) as d:
        first = token_served(sock)
        assert first is not None and (swapped / "token").exists()
        issued = len(fake.issued)
        # -- the attack
        swapped.parent.chmod(0o777)
        mallory.run("mv", str(swapped), f"{swapped}.old")
        mallory.run("ln", "-s", str(her_dir), str(swapped))
        t0 = time.time()
        d.signal(signal.SIGUSR1)
        wait_for(lambda: len(fake.issued) > issued, timeout=10)
        wait_for(
            lambda: (
                os.listdir(her_dir)
                or profile_status(sock)["last_error_reason"] == "sink_write_failed"
            ),
            timeout=5,
        )
        time.sleep(2.5)  # a few sink retries (one a second) and repair attempts
        found = sorted(os.listdir(her_dir))
        served = token_served(sock)
        snap = profile_status(sock)
        alive = d.proc.poll() is None
        log = d.log()
        code = d.stop()
    refusal = f"{swapped.parent}: mode 0777 is group/world writable without the sticky bit"
    figures = {
        "target": target,
        "files_in_her_dir": found,
        "socket_served_new_token": served not in (None, first),
        "status_reason": snap["last_error_reason"],
        "refusal_in_status": refusal in snap["last_error"],
        "error_lines_logged": log.count("the previous file is left intact"),
        "alive_after_s": round(time.time() - t0, 1),
        "exit_code": code,
        "secrets_scanned_texts": assert_no_secrets(fake, {"log": log, "status": str(snap)}),
    }
    report(f"paths[swap {target}]", **figures)
    assert found == [], figures
    assert alive and code == 0, figures
    assert served not in (None, first) and fake.is_valid(served or ""), figures
    assert snap["last_error_reason"] == "sink_write_failed" and refusal in snap["last_error"]
    assert figures["error_lines_logged"] == 1, figures  # logged once, not once per retry


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["runtime_dir", "absolute_sink"])
def test_swappable_directory_is_refused_at_start(
    fake: FakeGoogle, short_tmp: Path, target: str
) -> None:
    """1. The runtime dir's parent (or, for ``pub/sub/token``, the sink directory's
       parent ``pub``) is world writable without the sticky bit from the start.
    2. ``tokend run`` exits 2 at once with one line naming that directory and the fix.
    3. Nothing is written: no runtime dir, no token file."""
    loose = short_tmp / "pub"
    loose.mkdir()
    loose.chmod(0o777)
    if target == "runtime_dir":
        runtime = loose / "rt"
        config = sa_config(fake, short_tmp)
        written = runtime
    else:
        runtime = short_tmp / "rt"
        (loose / "sub").mkdir(mode=0o755)
        written = loose / "sub" / "token"
        config = sa_config(fake, short_tmp, f'[[profiles.default.sinks]]\npath = "{written}"\n')
    code, lines, seconds = start_refused(fake, short_tmp, config, runtime)
    figures = {
        "target": target,
        "exit_code": code,
        "stderr_lines": len(lines),
        "seconds": round(seconds, 2),
        "written": written.exists(),
    }
    report(f"paths[refused at start {target}]", **figures)
    assert code == 2 and len(lines) == 1, (figures, lines)
    assert f"{loose}: mode 0777 is group/world writable without the sticky bit" in lines[0]
    assert f"fix: chmod go-w {loose}" in lines[0]
    assert not written.exists(), figures


# -- c. sink paths that leave the runtime dir or alias the socket ------------------------

BAD_SINKS = {
    "dotdot": ("../x", '../x: ".." is not allowed in a sink path'),
    "socket_relative": ("./tokend.sock", "{rt}/tokend.sock is the socket (socket.path)"),
    "socket_absolute": ("{rt}/tokend.sock", "{rt}/tokend.sock is the socket (socket.path)"),
    "runtime_dir": (".", "{rt} is the runtime dir itself"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(BAD_SINKS))
def test_sink_leaving_or_aliasing_is_refused(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, kind: str
) -> None:
    """1. A sink path with ``..``, or naming the socket or the runtime dir.
    2. At start: exit 2, one line with the key, nothing written (no runtime dir).
    3. As a reload (SIGHUP) of a running tokend: refused with the same line, the running
       configuration kept, the socket still a socket that serves the token, nothing
       written outside the runtime dir."""
    rt = short_tmp / "rt"
    raw, expected = (s.replace("{rt}", str(rt)) for s in BAD_SINKS[kind])
    bad = sa_config(fake, short_tmp, f'[[profiles.default.sinks]]\npath = "{raw}"\n')
    key = "profiles.default.sinks[0].path: "
    code, lines, seconds = start_refused(fake, short_tmp, bad, rt)
    at_start = {
        "kind": kind,
        "exit_code": code,
        "stderr_lines": len(lines),
        "seconds": round(seconds, 2),
        "runtime_dir_created": rt.exists(),
        "outside": sorted(p.name for p in short_tmp.iterdir()),
    }
    report(f"paths[bad sink {kind} at start]", **at_start)
    assert code == 2 and len(lines) == 1 and f"{key}{expected}" in lines[0], (at_start, lines)
    assert not rt.exists() and "x" not in at_start["outside"], at_start
    # -- the same as a reload
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = d.file("tokend.sock")
        assert token_served(sock)
        d.config_path.write_text(bad)
        d.signal(signal.SIGHUP)
        d.wait_log("reloaded")  # "configuration not reloaded: ..." or "... reloaded: N"
        time.sleep(1.5)  # a sink retry / repair would have written by now
        refusals = [ln for ln in d.log().splitlines() if "not reloaded" in ln]
        still_socket = is_socket(sock)
        served = token_served(sock) if still_socket else None
        outside = sorted(p.name for p in short_tmp.iterdir())
    on_reload = {
        "kind": kind,
        "refusals_logged": len(refusals),
        "socket_intact": still_socket,
        "served_after_reload": served is not None,
        "outside": outside,
    }
    report(f"paths[bad sink {kind} on reload]", **on_reload)
    assert len(refusals) == 1 and f"{key}{expected}" in refusals[0], on_reload
    assert still_socket and served is not None and "x" not in outside, on_reload


# -- d. a fallback runtime dir made beforehand by another user ---------------------------


@needs_root
@pytest.mark.timeout(60)
@pytest.mark.skipif(
    os.path.isdir(f"/run/user/{os.geteuid()}"), reason="/run/user/$UID exists: no fallback"
)
@pytest.mark.parametrize("mode", [0o700, 0o777], ids=["0700", "0777"])
def test_fallback_runtime_dir_of_another_user(
    fake: FakeGoogle, short_tmp: Path, mallory: User, mode: int
) -> None:
    """1. No XDG_RUNTIME_DIR, no TOKEND_RUNTIME_DIR: the default is
       ``$TMPDIR/runtime-$UID/tokend``. ``$TMPDIR`` is a fresh sticky dir like /tmp.
    2. She made ``$TMPDIR/runtime-0`` first (0700: we could not even enter it as
       anyone but root; or 0777).
    3. ``tokend run`` exits 2 with one line naming that directory and her, no traceback
       (which ``Restart=on-failure`` would turn into a restart loop); nothing is
       created in her directory."""
    tmp = short_tmp / "t"
    tmp.mkdir()
    tmp.chmod(0o1777)
    short_tmp.chmod(0o755)
    planted = tmp / f"runtime-{os.geteuid()}"
    mallory.run("mkdir", "-m", f"{mode:o}", str(planted))
    code, lines, seconds = start_refused(
        fake, short_tmp, sa_config(fake, short_tmp), None, {"TMPDIR": str(tmp)}
    )
    figures = {
        "mode": f"{mode:04o}",
        "exit_code": code,
        "stderr_lines": len(lines),
        "traceback": any("Traceback" in ln for ln in lines),
        "seconds": round(seconds, 2),
        "created_inside": os.listdir(planted),
    }
    report(f"paths[fallback of another user {mode:04o}]", **figures)
    assert code == 2 and len(lines) == 1, (figures, lines)
    assert f"{planted}: owned by uid {mallory.uid} ({mallory.name})" in lines[0], lines
    assert "runtime_dir / TOKEND_RUNTIME_DIR" in lines[0], lines
    assert os.listdir(planted) == [], figures


# -- e. clients and daemon name the same runtime dir -------------------------------------

WHERE = """
from tokend import client
print(client.socket_path()); print(client.token_file_path())
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    os.path.isdir(f"/run/user/{os.geteuid()}"), reason="/run/user/$UID exists: no fallback"
)
def test_client_and_daemon_agree_without_xdg_runtime_dir(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. XDG_RUNTIME_DIR and TOKEND_RUNTIME_DIR unset; TMPDIR points to a fresh dir.
    2. Before the daemon starts, a client process names the socket and token file.
    3. The daemon starts and says which runtime dir it uses; the client's names are
       in it, and ``tokend token`` and ``. tokend/tokend-env.sh`` get the token.
    4. After the daemon stops, ``tokend status`` names the same socket."""
    tmp = short_tmp / "t"
    tmp.mkdir(mode=0o700)
    env = {"TMPDIR": str(tmp), "HOME": str(short_tmp)}
    unset = ("XDG_RUNTIME_DIR", "TOKEND_RUNTIME_DIR", "XDG_CONFIG_HOME")
    client_env = {k: v for k, v in os.environ.items() if k not in unset}
    client_env.update(env, TOKEND_CONFIG=str(short_tmp / "config.toml"))

    def client_names() -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", WHERE], env=client_env, capture_output=True, text=True
        )
        return out.stdout.split()

    before = client_names()
    with daemon_factory(sa_config(fake, short_tmp), env=env, unset=unset) as d:
        line = next(ln for ln in d.log().splitlines() if "runtime dir" in ln)
        runtime = Path(line.rsplit("runtime dir ", 1)[1])
        during = client_names()
        got = subprocess.run(
            [sys.executable, "-m", "tokend", "token"],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        shim = subprocess.run(
            ["sh", "-c", f'. "{ROOT}/tokend/tokend-env.sh" && printf %s "$OPENAI_API_KEY"'],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        d.stop()
    status = subprocess.run(
        [sys.executable, "-m", "tokend", "status"],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    expected = [str(runtime / "tokend.sock"), str(runtime / "token.json")]
    figures = {
        "daemon_runtime_dir": str(runtime),
        "client_before_start": before,
        "client_while_running": during,
        "token_exit_code": got.returncode,
        "tokend_env_sh": [shim.returncode, shim.stderr.strip()],
        "status_names_daemon_socket": expected[0] in status.stderr + status.stdout,
    }
    report("paths[client and daemon agree]", **figures)
    assert runtime == tmp / f"runtime-{os.geteuid()}" / "tokend", figures
    assert before == during == expected, figures
    assert got.returncode == 0 and fake.is_valid(got.stdout.strip()), figures
    assert shim.returncode == 0 and shim.stdout == got.stdout.strip(), figures
    assert figures["status_names_daemon_socket"], (status.stdout, status.stderr)


# == the socket and the service manager ==================================================
# (issue 9 §3 and §6.) A stuck service manager never blocks the loop; clients that never
# read are bounded and closed; socket.allow_uids lets an allowed user in and tells a
# refused one why; a socket outside the runtime dir comes back after a delete.


def _timed_get(sock: str, target: str, timeout: float) -> tuple[int | str, float]:
    """(status or the error's name, seconds) of one GET."""
    t0 = time.monotonic()
    try:
        code: int | str = get(sock, target, timeout)[0]
    except OSError as err:
        code = type(err).__name__
    return code, time.monotonic() - t0


# -- 3. sd_notify never blocks the loop ---------------------------------------------------


@contextlib.contextmanager
def _stuck_manager(address: str) -> Iterator[socket.socket]:
    """A datagram socket at ``address`` that is never read (until the test drains it):
    a service manager that stopped reading its notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    try:
        yield sock
    finally:
        sock.close()


def _drain(sock: socket.socket) -> list[str]:
    fields: list[str] = []
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            fields += sock.recv(65536).decode().split("\n")
    return fields


@pytest.mark.serial
@pytest.mark.timeout(120)
@pytest.mark.parametrize("seconds", sizes("TOKEND_NOTIFY_SECONDS", 6, 30))
def test_unread_notify_socket_blocks_nothing(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, seconds: float
) -> None:
    """1. NOTIFY_SOCKET names a datagram socket nobody reads, with a 200 ms watchdog
       (a ping every 100 ms): its queue (net.unix.max_dgram_qlen, 10) is full within
       a second.
    2. For ``seconds``, SIGUSR1 every 0.3 s makes a refresh, and so two status
       changes; a client asks /healthz and /v1/token every 20 ms.
    3. Every answer is 200 within 0.5 s; the refreshes happened (FakeGoogle counted
       them, the token file changed).
    4. The signals stop and the manager reads its queue: within 2 s the last STATUS=
       it has seen is the current state (fresh), so what was dropped did not matter."""
    address = str(short_tmp / "notify")
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    with (
        _stuck_manager(address) as manager,
        daemon_factory(sa_config(fake, short_tmp), env=env, wait_ready=False) as d,
    ):
        sock = str(d.file("tokend.sock"))
        wait_for(lambda: os.path.exists(sock), 10)
        worst = 0.0
        bad: dict[str, int] = {}
        answers = 0
        t_start = time.monotonic()
        next_signal = t_start
        first_token = None
        while time.monotonic() - t_start < seconds:
            if time.monotonic() >= next_signal:
                d.signal(signal.SIGUSR1)
                next_signal += 0.3
            for target in ("/healthz", "/v1/token"):
                code, took = _timed_get(sock, target, 2.0)
                answers += 1
                worst = max(worst, took)
                if code != 200 and not (code == 503 and first_token is None):
                    bad[str(code)] = bad.get(str(code), 0) + 1
            if first_token is None:
                first_token = current_token(d)
            time.sleep(0.02)
        figures: dict[str, Any] = {
            "seconds": seconds,
            "answers": answers,
            "worst_answer_s": round(worst, 3),
            "bad_answers": bad,
            "token_fetches": fake.calls["token"],
        }
        report(f"notify_unread[{seconds:g}]", **figures)
        assert not bad and worst < 0.5, figures
        assert figures["token_fetches"] >= seconds / 0.3 / 2, figures  # every other SIGUSR1
        assert first_token and current_token(d) != first_token, figures

        wait_for(lambda: profile_status(sock)["state"] == "fresh", 5)
        seen = _drain(manager)
        figures["notify_fields_queued_unread"] = len(seen)
        t_drained = time.monotonic()

        def manager_view() -> str:
            seen.extend(_drain(manager))
            return [f for f in seen if f.startswith("STATUS=")][-1]

        wait_for(lambda: manager_view().startswith("STATUS=default: fresh"), 2)
        figures["manager_view_after_drain_s"] = round(time.monotonic() - t_drained, 3)
        figures["manager_view_after_drain"] = manager_view()
        assert d.proc.poll() is None
    report(f"notify_unread[{seconds:g}]", **figures)


# -- 3. clients that send and never read --------------------------------------------------

#: A client process asking /v1/token over and over (a new connection each time) until a
#: stop file appears; prints the latencies and any failure as JSON. It imports nothing
#: of tokend.
GOOD_CLIENT = r"""
import json, os, socket, sys, time
path, stop = sys.argv[1:3]
latencies, failures = [], []
while not os.path.exists(stop):
    t0 = time.perf_counter()
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        while True:  # as tokend.client does: wait while the listen queue is full
            try:
                s.connect(path)
                break
            except BlockingIOError:
                time.sleep(0.005)
        s.sendall(b"GET /v1/token HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 200"):
            failures.append(data[:40].decode(errors="replace"))
    except OSError as err:
        failures.append(repr(err))
    latencies.append(time.perf_counter() - t0)
    time.sleep(0.01)
print(json.dumps({"latencies": latencies, "failures": failures[:10]}))
"""

#: What the daemon may hold for one client that sends and never reads: a read
#: (server.READ_SIZE, 4 KiB) and a head cut short by it (< 2 KiB), answers beyond what
#: its socket buffer took (server.WRITE_BUFFER, 4 KiB, plus the one answer that crossed
#: it), the connection's own objects (~3 KiB), and the allocator's slack.
PER_GREEDY_CLIENT = 24 * 1024
#: Plus, once: aiohttp's import (~10 MB) should some request of theirs need it.
GREEDY_FIXED = 16 * 1024 * 1024


def _greedy_wave(sock: str, n: int, payload: bytes) -> tuple[list[socket.socket], float]:
    """``n`` clients connect and push ``payload`` (pipelined requests) each, reading
    nothing, until the daemon stops reading from all of them (no send makes progress
    for 0.5 s). Returns the clients and how long the push lasted."""
    clients = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.setblocking(False)
        clients.append(s)
    left = [memoryview(payload) for _ in clients]
    t0 = last_progress = time.monotonic()
    while time.monotonic() - last_progress < 0.5 and time.monotonic() - t0 < 30:
        for i, s in enumerate(clients):
            if not left[i]:
                continue
            try:
                sent = s.send(left[i])
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                continue
            left[i] = left[i][sent:]
            last_progress = time.monotonic()
        time.sleep(0.005)
    return clients, last_progress - t0


def _ends(clients: list[socket.socket]) -> dict[str, int]:
    """How each client's connection ended, from the client's side: ``closed`` (EOF or
    ECONNRESET after whatever answers reached it) or ``open``."""
    out = {"closed": 0, "open": 0}
    for s in clients:
        state = "open"
        try:
            while chunk := s.recv(1 << 16):
                del chunk
            state = "closed"
        except ConnectionResetError:
            state = "closed"
        except BlockingIOError:
            pass
        out[state] += 1
        s.close()
    return out


@pytest.mark.serial
@pytest.mark.timeout(240)
@pytest.mark.parametrize("n", sizes("TOKEND_GREEDY_CLIENTS", 500, 2000))
def test_clients_that_never_read_are_bounded_and_closed(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, n: float
) -> None:
    """1. ``n`` same-uid clients connect and pipeline ``GET /v1/token`` (1 MiB each)
       without ever reading; a separate good client asks for the token every 10 ms
       throughout.
    2. While the daemon stopped reading from them, its RSS grew by at most
       :data:`PER_GREEDY_CLIENT` a client plus :data:`GREEDY_FIXED` (on main: ~280 KiB
       a client, 282 MB for 1,000).
    3. Within the idle timeout (5 s) and a margin of 2 s, the daemon closed every one
       of them (its fds are back to the baseline; on main they stayed open forever).
    4. The good client got 200 every time, 99 % within 100 ms, each within
       0.5 s + 0.5 ms a greedy client: while they all become readable at once it
       waits for one pass of the loop over them, and each costs the loop one read and
       the ~40 answers its socket buffer takes before it pushes back.
    5. After they are gone the RSS stays where it was (freed memory is reused, it does
       not grow); the slow size sends a second wave, whose peak may not exceed the
       first one's by more than 4 MiB."""
    from tests.reliability_util import proc_figures
    from tests.test_reliability import _raise_nofile

    n = int(n)
    _raise_nofile(n + 200)
    waves = 2 if n > 1000 else 1
    one = b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\n\r\n"
    payload = one * ((1 << 20) // len(one))
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        sock = str(d.file("tokend.sock"))
        assert get(sock, "/v1/token")[0] == 200
        base = proc_figures(d.proc.pid)
        stop = short_tmp / "stop"
        good = subprocess.Popen(
            [sys.executable, "-I", "-c", GOOD_CLIENT, sock, str(stop)], stdout=subprocess.PIPE
        )
        rows = []
        try:
            for _ in range(waves):
                clients, pushed = _greedy_wave(sock, n, payload)
                t_stall = time.monotonic()
                peak = proc_figures(d.proc.pid)
                closed_after = None
                while time.monotonic() - t_stall < 12:
                    now = proc_figures(d.proc.pid)
                    peak["rss_kib"] = max(peak["rss_kib"], now["rss_kib"])
                    if now["fds"] <= base["fds"] + 2:
                        closed_after = time.monotonic() - t_stall
                        break
                    time.sleep(0.05)
                ends = _ends(clients)
                time.sleep(0.5)
                rows.append(
                    {
                        "push_s": round(pushed, 2),
                        "rss_kib_peak": peak["rss_kib"],
                        "fds_peak": peak["fds"],
                        "closed_after_stall_s": closed_after and round(closed_after, 2),
                        "client_ends": ends,
                        "rss_kib_after": proc_figures(d.proc.pid)["rss_kib"],
                    }
                )
        finally:
            stop.touch()
            out, _ = good.communicate(timeout=10)
        assert d.proc.poll() is None
    import json

    seen = json.loads(out) if out else {"latencies": [], "failures": ["killed"]}
    lat = sorted(seen["latencies"])
    growth = [r["rss_kib_peak"] - base["rss_kib"] for r in rows]
    latency_bound = 0.5 + n * 0.0005
    figures = {
        "clients": n,
        "rss_kib_base": base["rss_kib"],
        "waves": rows,
        "rss_growth_kib_per_client": [round(g / n, 1) for g in growth],
        "rss_bound_kib": (n * PER_GREEDY_CLIENT + GREEDY_FIXED) // 1024,
        "good_latency_bound_s": latency_bound,
        "good_requests": len(lat),
        "good_failures": seen["failures"],
        "good_latency_ms_p50_p99_max": [
            round(1000 * lat[len(lat) // 2], 2),
            round(1000 * lat[int(len(lat) * 0.99)], 2),
            round(1000 * lat[-1], 2),
        ]
        if lat
        else None,
    }
    report(f"greedy_clients[{n}]", **figures)
    for g, r in zip(growth, rows, strict=True):
        assert g * 1024 <= n * PER_GREEDY_CLIENT + GREEDY_FIXED, figures
        assert r["closed_after_stall_s"] is not None and r["closed_after_stall_s"] <= 7, figures
        assert r["client_ends"] == {"closed": n, "open": 0}, figures
        assert r["rss_kib_after"] <= r["rss_kib_peak"] + 1024, figures
    assert not seen["failures"] and lat, figures
    assert lat[int(len(lat) * 0.99)] < 0.1 and lat[-1] < latency_bound, figures
    if waves > 1:
        assert rows[1]["rss_kib_peak"] <= rows[0]["rss_kib_peak"] + 4096, figures


# -- 6. socket.allow_uids lets the allowed in, and tells the others why -----------------------

#: Run as another user with the system interpreter: tokend.client (stdlib only) from this
#: checkout, asked through the socket only (no runtime dir, no config); prints the token
#: or the error, then what a raw request gets: the status line and the body.
AS_USER = r"""
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
import tokend.client as c
try:
    print("token", c.token(min_valid=0))
except c.TokenUnavailable as err:
    print("error", err)
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(os.environ["TOKEND_SOCKET"])
try:
    s.sendall(b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\n\r\n")
except (BrokenPipeError, ConnectionResetError):
    pass
data, end = b"", "eof"
try:
    while chunk := s.recv(65536):
        data += chunk
        if data.count(b"\r\n\r\n") and b"Connection: close" not in data:
            break  # keep-alive answer: one is enough
except ConnectionResetError:
    end = "reset"
head, _, body = data.partition(b"\r\n\r\n")
print("raw", json.dumps({"status": head.split(b"\r\n")[0].decode(), "body": body.decode(),
                         "end": end}))
"""


@contextlib.contextmanager
def _throwaway_users(*names: str) -> Iterator[dict[str, int]]:
    """Create users (no home, no shell) for the test; delete them afterwards."""
    import pwd
    import subprocess

    made = []
    try:
        for name in names:
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
            )
            made.append(name)
        yield {name: pwd.getpwnam(name).pw_uid for name in names}
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)


def _as_user(user: str, sock: Path) -> dict[str, Any]:
    import json
    import subprocess

    from tests.conftest import ROOT
    from tests.test_server import PYTHON

    env = {
        "PATH": "/usr/bin:/bin",
        "TOKEND_SOCKET": str(sock),
        "TOKEND_RUNTIME_DIR": "/nonexistent/tokend",
        "TOKEND_CONFIG": "/nonexistent/config.toml",
    }
    out = subprocess.run(
        [PYTHON, "-I", "-c", AS_USER, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=20,
        user=user,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    raw = json.loads(lines["raw"])
    return {"token": lines.get("token"), "error": lines.get("error"), **raw}


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def _answers(sock: Path) -> bool:
    """Whether the socket is there and answers /healthz."""
    try:
        return get(str(sock), "/healthz", 2.0)[0] == 200
    except OSError:
        return False


@pytest.mark.timeout(90)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create and become other users")
@pytest.mark.skipif(not Path("/usr/sbin/useradd").exists(), reason="needs useradd")
def test_allow_uids_lets_the_allowed_user_in_and_tells_the_other_why(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. Two throw-away users; ``socket.allow_uids`` names one. The socket is at an
       absolute path outside the runtime dir, in a 0711 directory as an administrator
       would make it (``pub/``; the temp dir above it is made 0711 too).
    2. The allowed user gets the daemon's token through the socket with tokend.client
       (on main: EACCES, the socket was 0600).
    3. The other one gets a 403 whose JSON names its uid and socket.allow_uids, read
       after the connection was refused, not a broken pipe; tokend.client's error says
       so; the refusal is logged once.
    4. The socket is 0666; deleted, it is back within 2 s and 0666 again; its directory
       deleted with it, both are back (0711, 0666) and the allowed user gets in."""
    tag = str(os.getpid())[-6:]
    allowed, denied = f"tkok{tag}", f"tkno{tag}"
    short_tmp.chmod(0o711)
    pub = short_tmp / "pub"
    pub.mkdir(mode=0o711)
    pub.chmod(0o711)
    sock = pub / "tokend.sock"
    with _throwaway_users(allowed, denied) as uids:
        config = sa_config(
            fake, short_tmp, f'[socket]\npath = "{sock}"\nallow_uids = [{uids[allowed]}]\n'
        )
        with daemon_factory(config) as d:
            token = current_token(d)
            mode_at_start = _mode(sock)
            ok = _as_user(allowed, sock)
            no = _as_user(denied, sock)
            refusals = d.log().count(f"from uid {uids[denied]}")

            t0 = time.monotonic()
            sock.unlink()
            wait_for(lambda: _answers(sock), 5)
            back_after = time.monotonic() - t0
            mode_after_delete = _mode(sock)

            import shutil

            t0 = time.monotonic()
            shutil.rmtree(pub)
            wait_for(lambda: _answers(sock), 5)
            dir_back_after = time.monotonic() - t0
            modes_after_rmtree = (_mode(pub), _mode(sock))
            again = _as_user(allowed, sock)
    figures = {
        "allowed": {k: ok[k] for k in ("status", "end")} | {"got_token": ok["token"] == token},
        "refused": {k: no[k] for k in ("status", "body", "end", "error")},
        "refusals_logged": refusals,
        "socket_mode_at_start": mode_at_start,
        "socket_back_after_s": round(back_after, 2),
        "socket_mode_after_delete": mode_after_delete,
        "dir_and_socket_back_after_s": round(dir_back_after, 2),
        "dir_and_socket_modes_after_rmtree": modes_after_rmtree,
        "allowed_after_rmtree": again["token"] == token,
    }
    report("allow_uids", **figures)
    assert ok["token"] == token and ok["status"] == "HTTP/1.1 200 OK", figures
    assert no["token"] is None and no["status"] == "HTTP/1.1 403 Forbidden", figures
    import json

    detail = json.loads(no["body"])["detail"]
    assert f"uid {uids[denied]} is not allowed" in detail and "socket.allow_uids" in detail
    assert "refused the connection" in no["error"] and "socket.allow_uids" in no["error"]
    assert token not in no["body"] and token not in no["error"]
    assert refusals == 1, figures
    assert mode_at_start == mode_after_delete == "0o666", figures
    assert back_after < 2 and dir_back_after < 2, figures
    assert modes_after_rmtree == ("0o711", "0o666"), figures
    assert again["token"] == token, figures


# -- 6. an absolute socket.path outside the runtime dir comes back --------------------------


@pytest.mark.timeout(60)
def test_socket_outside_the_runtime_dir_comes_back_after_a_delete(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. ``socket.path`` is absolute, in a directory of ours outside the runtime dir.
    2. The socket file is deleted, three times: each time it is back (the watcher sees
       the delete, the daemon binds again) within 2 s and answers /v1/token; inside the
       runtime dir this took ~1 s already, outside it never happened (main).
    3. It is 0600 (no allow_uids) and the daemon still removes it when it stops."""
    pub = short_tmp / "pub"
    pub.mkdir(mode=0o700)
    sock = pub / "tokend.sock"
    with daemon_factory(sa_config(fake, short_tmp, f'[socket]\npath = "{sock}"\n')) as d:
        token = current_token(d)
        assert get(str(sock), "/v1/token")[0] == 200
        # Past the repair that writing the first token's files schedules (0.2 s after
        # them): it would restore a socket deleted right now, watched or not.
        time.sleep(0.5)
        back: list[float | None] = []
        for _ in range(3):
            sock.unlink()
            t0 = time.monotonic()
            while not _answers(sock) and time.monotonic() - t0 < 5:
                time.sleep(0.02)
            back.append(round(time.monotonic() - t0, 2) if _answers(sock) else None)
            if back[-1] is None:
                break
            code, body = get(str(sock), "/v1/token")
            assert code == 200 and token and token.encode() in body
        mode = _mode(sock) if sock.exists() else None
        assert d.stop() == 0
    figures = {"back_after_s": back, "mode": mode, "removed_at_stop": not sock.exists()}
    report("socket_outside_runtime_dir", **figures)
    assert len(back) == 3 and all(b is not None and b < 2 for b in back), figures
    assert mode == "0o600" and figures["removed_at_stop"], figures
