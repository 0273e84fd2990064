"""The reliability and security battery (issue 5): the real ``tokend run`` against
FakeGoogle under faults, load and hostile input.

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

import itertools
import json
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.reliability_util import (
    assert_no_secrets,
    failures_in_log,
    get,
    judge_reads,
    knob,
    launch,
    one_response,
    profile_status,
    readers,
    recovery_step,
    report,
    request,
    tokend_env,
)
from tokend.refresher import RETIRE_MARGIN
from tokend.testing import FakeGoogle

SA_EMAIL = "sa@fake-project.iam.gserviceaccount.com"
FILES = ("token", "token.json", "openai.env")
TMP_MARK = ".tokend-tmp-"
TOKEN_RE = re.compile(r"ya29\.fake-[A-Za-z0-9_-]{44}")


def sa_config(fake: FakeGoogle, d: Path, extra: str = "") -> str:
    creds = fake.write_service_account(d / "sa.json")
    return f'[profiles.default]\ncredentials = "{creds}"\n{extra}'


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
    m = re.fullmatch(r"OPENAI_API_KEY=(\S+)\nTOKEND_EXPIRES_AT=\d+\n", text)
    return m.group(1) if m and TOKEN_RE.fullmatch(m.group(1)) else None


# -- 1. torn reads ----------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seconds", sizes("TOKEND_TORN_SECONDS", 15, 60))
def test_torn_reads(fake: FakeGoogle, short_tmp: Path, daemon_factory: Any, seconds: float) -> None:
    """1. tokend rotates a 2-second token (a refresh every ~1.6 s).
    2. Four reader processes read token, token.json, openai.env and /v1/token in a tight
       loop for ``seconds``.
    3. Every read is complete, holds a token FakeGoogle issued, unexpired, with at least
       the retire margin (10 % of the lifetime) left; no file is ever missing unless the
       daemon logged a late retirement (a refresh that missed it removes the files)."""
    lifetime = 2.0
    fake.lifetime = lifetime
    with daemon_factory(sa_config(fake, short_tmp)) as d:
        calls = fake.calls["token"]
        with readers(4, d.runtime_dir, d.file("tokend.sock"), seconds, short_tmp) as collect:
            results = collect()
        rotations = fake.calls["token"] - calls
        assert d.proc.poll() is None
        log = d.log()
    figures = judge_reads(fake, results, margin=RETIRE_MARGIN * lifetime * 0.9, daemon_log=log)
    figures.update(seconds=seconds, rotations=rotations, lifetime=lifetime)
    report(f"torn_reads[{seconds:g}s]", **figures)
    assert not figures["problems"], figures
    assert rotations >= seconds / lifetime, figures  # it really rotated underneath
    assert figures["total_reads"] > 1000 * seconds / 15, figures


# -- 2. SIGKILL mid-write ---------------------------------------------------------------


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kills", sizes("TOKEND_KILLS", 15, 100))
def test_sigkill_mid_write(fake: FakeGoogle, short_tmp: Path, kills: float) -> None:
    """1. 1-second tokens (a write every ~0.8 s) plus SIGUSR1 bursts force writes.
    2. tokend is SIGKILL-ed ``kills`` times, and restarted each time: half of the kills
       at a random moment, half the instant a temp file appears (mid-write).
    3. After each kill every file is absent or holds, complete, one of the two newest
       tokens FakeGoogle issued (the old or the new one), never anything else.
    4. After each restart the temp files the kill left are gone (swept at start); after
       the final clean stop there are none."""
    fake.lifetime = 1.0
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
    import subprocess
    import sys

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
    "hang": ("retrying", "transport_error"),
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
    quick = knob("TOKEND_FAULT_SECONDS", 3)
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
            if kind == "slow" and current_token(d) != first:
                landed = time.time() - t_inject
                break
            if set(on_disk.values()) != {first}:
                problems.append(f"files changed during the fault: {sorted(on_disk)}")
            code, body = get(sock, "/v1/token")
            if code != 200 or json.loads(body)["access_token"] != first:
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
        pytest.param(4.0, knob("TOKEND_OUTAGE_SECONDS", 9), id="quick"),
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
    assert removed_at is not None and 0 < real_expiry - removed_at <= 0.1 * lifetime + 0.5, figures
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
    assert removed_at is not None and 0 < real_expiry - removed_at <= 0.1 * lifetime + 0.5, figures
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(CRED_FAULTS))
def test_credentials_file_fault(fake: FakeGoogle, short_tmp: Path, kind: str) -> None:
    """1. ADC (GOOGLE_APPLICATION_CREDENTIALS) is alice's login; 60-second tokens.
    2. The file is deleted / truncated / replaced by garbage / made unreadable (chmod
       000; the daemon runs without CAP_DAC_OVERRIDE) / replaced by bob's login.
    3. tokend notices at once: the expected state and reason in status, one log line
       with the fix, no crash; alice's still-valid token keeps being served (bob's
       login instead replaces it at once, everywhere).
    4. The file is fixed (a new login, chmod 600): a new token within a few seconds."""
    from tests.reliability_util import running

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
    with running(fake, short_tmp, config, env=env, prefix=prefix) as d:
        sock = d.file("tokend.sock")
        first = current_token(d)
        assert first is not None and fake.who(first) == "alice@example.com"
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
        # -- fixed
        t1 = time.time()
        if kind == "permission":
            adc.chmod(0o600)
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
        "secrets_scanned_texts": assert_no_secrets(fake, texts),
    }
    report(f"credentials[{kind}]", **figures)
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


def _systemd_nofile() -> None:
    """systemd's default for services: a soft limit of 1024 open files."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nofile", ["inherited", "systemd_default_1024"])
def test_a_thousand_concurrent_connections(fake: FakeGoogle, short_tmp: Path, nofile: str) -> None:
    """1. 1,000 clients connect at once (all connections open before any request), then
       each sends a request. Also 1,500 clients against a daemon started with systemd's
       default soft limit of 1024 open files.
    2. Every one gets 200 and the current token, no accept fails (EMFILE), and the
       daemon's fd count returns to its baseline afterwards."""
    import asyncio

    from tests.reliability_util import proc_figures, running

    # Past the 1024 soft limit where it applies: the daemon must lift it itself.
    n = int(knob("TOKEND_CONCURRENT", 1000 if nofile == "inherited" else 1500))
    _raise_nofile(n + 200)
    preexec = _systemd_nofile if nofile != "inherited" else None
    with running(fake, short_tmp, sa_config(fake, short_tmp), preexec_fn=preexec) as d:
        sock = str(d.file("tokend.sock"))
        token = current_token(d)
        base = proc_figures(d.proc.pid)

        async def storm() -> tuple[list[bytes], float, int]:
            conns = await asyncio.gather(*(asyncio.open_unix_connection(sock) for _ in range(n)))
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
       service account key (private key) and one whose credentials file is missing.
    2. Gathered: /proc/PID/cmdline of tokend, of ``tokend exec`` and of its child;
       /v1/status, /metrics, /healthz, the 503/404 error bodies, ``tokend status``
       (text and --json), ``tokend token`` for the broken profile and the
       TokenUnavailable message the client raises; the daemon log.
    3. No value FakeGoogle handed out appears in any of them (the child does get
       OPENAI_API_KEY in its environment, which is the point of exec)."""
    import subprocess
    import sys

    from tests.reliability_util import cmdline, running

    fake.lifetime = 60.0
    user = fake.write_authorized_user(short_tmp / "adc.json", account="alice@example.com")
    sa = fake.write_service_account(short_tmp / "sa.json")
    config = (
        f'[profiles.default]\ntoken_uri = "{fake.token_uri}"\n'
        f'[profiles.sa]\ncredentials = "{sa}"\n'
        f'[profiles.broken]\ncredentials = "{short_tmp}/missing.json"\n'
    )
    texts: dict[str, str | bytes] = {}
    with running(fake, short_tmp, config, env={"GOOGLE_APPLICATION_CREDENTIALS": str(user)}) as d:
        sock = d.file("tokend.sock")
        wait_for(lambda: profile_status(sock, "broken")["state"] == "reauth_required")
        wait_for(lambda: profile_status(sock, "sa")["state"] == "fresh")
        texts["tokend cmdline"] = cmdline(d.proc.pid)
        for target in (
            "/v1/status",
            "/metrics",
            "/healthz",
            "/v1/token?profile=broken",
            "/v1/token?profile=nope",
            "/v1/token?min_valid=abc",
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
    reads = judge_reads(fake, results, margin=RETIRE_MARGIN * lifetime * 0.9, daemon_log=log)
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
