"""The README's entry points work as written: scripts/demo and python -m tokend.testing.
(scripts/test is what CI runs, so it is exercised by every CI run.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import ROOT, wait_for


def test_demo_shows_rotation_and_an_openai_call_then_stops_by_itself() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo"), "--seconds", "12", "--lifetime", "4"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rotations = [line for line in out.splitlines() if "valid at FakeGoogle" in line]
    assert len(rotations) >= 3, out  # 4-second tokens rotate thrice within 12 s
    assert "NOT VALID" not in out
    assert "request accepted" in out and ", 0 rejected" in out
    # One default OpenAI client, configured once by the environment from proxy.env,
    # across several rotations.
    assert "openai.OpenAI(), configured once by the environment from proxy.env" in out
    through = re.search(
        r"(\d+) requests through the proxy, across (\d+) Google tokens, 0 rejected", out
    )
    assert through and int(through[1]) >= 4 and int(through[2]) >= 3, out
    assert "fresh" in out  # tokend status
    assert "tokend stopped (exit 0); demo done." in out


def test_fake_google_runs_by_hand_and_prints_a_working_config(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokend.testing", "--lifetime", "60", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        block = text.split("tokend config (config.toml):\n")[1].splitlines()
        config = "\n".join(ln[2:] for ln in block if ln.startswith("  "))
        profile = tomllib.loads(config)["profiles"]["default"]
        assert Path(profile["credentials"]).is_file()
        cfg = tmp_path / "config.toml"
        cfg.write_text(config.replace("127.0.0.1:8789", "127.0.0.1:0"))  # any free port
        env = {
            **os.environ,
            "TOKEND_RUNTIME_DIR": str(tmp_path / "rt"),
            "TOKEND_STATE_DIR": str(tmp_path / "state"),
        }
        once = subprocess.run(
            [sys.executable, "-m", "tokend", "run", "--once", "--config", str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert once.returncode == 0, once.stderr
        assert (tmp_path / "rt" / "token").read_text().startswith("ya29.fake-")
        # The proxy in front of the printed Vertex-like API: a tool works offline.
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tokend", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: (tmp_path / "rt" / "proxy.env").exists())
            tool = subprocess.run(
                [
                    "sh",
                    "-c",
                    'set -a; . "$1"; exec "$2" -c "$3"',
                    "sh",
                    str(tmp_path / "rt" / "proxy.env"),
                    sys.executable,
                    "import openai; print(openai.OpenAI(max_retries=0).chat.completions.create("
                    "model='gemini-2.5-flash', messages=[]).choices[0].message.content)",
                ],
                env={k: v for k, v in env.items() if not k.startswith("OPENAI_")},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert tool.stdout == "ok\n", tool.stderr
        finally:
            daemon.terminate()
            daemon.wait(10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        proc.stdout.close()
