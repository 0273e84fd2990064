"""scripts/bench.py keeps working: `--quick` runs the whole comparison and prints the table.

Only the shape is checked, not the numbers: targets are for the README's full run on a
quiet machine, and a loaded CI runner may miss them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

ROWS = (
    "1. `gcloud auth application-default print-access-token`",
    "2. new Python process: `google.auth.default()` + `refresh()`",
    "3. `tokend token`",
    "3. `tokend env`",
    "4. `",  # the sh rows name the shell found (dash or sh)
    "5. in-process `tokend.client.token()`, token file",
    "5. in-process `tokend.client.token()`, socket",
    "6. socket `GET /v1/token`, keep-alive, 1 client, closed loop",
    "6. socket `GET /v1/token`, keep-alive, 64 clients, closed loop",
    "6. socket `GET /v1/token`, keep-alive, 512 clients, closed loop",
    "6. socket `GET /v1/token`, keep-alive, 64 clients sending",
    "6. socket throughput",
    "7. token-endpoint calls",
    "8. idle daemon RSS",
    "8. idle daemon CPU per minute",
    "9. ADC file rewritten",
    "10. proxy: added latency (proxy - direct), non-streaming `chat/completions`, 1 client,",
    "10. proxy: added latency (proxy - direct), non-streaming `chat/completions`, 64 clients,",
    "10. proxy: throughput, non-streaming `chat/completions`, 64 clients",
    "10. proxy: added latency, non-streaming `chat/completions`, 64 clients sending",
    "11. proxy: time to first streamed byte",
    "12. proxy: each SSE chunk",
    "13. proxy: 200 concurrent streams held open",  # --quick: 200, the full run 1,000
    "14. socket `GET /v1/token`",
    "15. LiteLLM proxy",  # "not run: pass --with-litellm" under --quick
    "16. 1 profile (5 s tokens): start-up",  # --quick: 1 and 10 profiles, the full run 100 too
    "16. 1 profile (5 s tokens): daemon CPU per refresh",
    "16. 1 profile (5 s tokens): socket",
    "16. 10 profiles (5 s tokens): start-up",
    "16. 10 profiles (5 s tokens): daemon CPU per refresh",
    "16. 10 profiles (5 s tokens): socket",
)


@pytest.mark.serial
@pytest.mark.timeout(300)
@pytest.mark.slow  # 100 s: CI (scripts/test --slow) runs it, the quick suite does not
def test_quick_bench_prints_the_whole_table(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    head = out.splitlines()[0]
    for part in ("cores", "Python 3.", "command: `", "--quick"):
        assert part in head, head
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == "| what | median | p99 | floor | x floor | target | result |"
    for row in ROWS:
        assert any(line.startswith(f"| {row}") for line in table), (row, out)
    # Every row has its seven cells; a missed target is spelled out, never hidden.
    for line in table[1:]:
        assert len(line.strip("|").split(" | ")) == 7, line
    # Every row but the held streams' (no other proxy held them) stands next to its
    # floor, measured in the run, and its ratio to it.
    for line in table[2:]:
        cells = line.strip("| ").split(" | ")
        if cells[0].startswith(("13. ", "7. ", "15. ", "1. ")):
            continue  # 7: the floor is 0 calls; 15: not run without --with-litellm
        assert cells[3] != "-" and cells[4].startswith("x"), line
    assert any("met" in line or "MISSED" in line for line in table[1:]), out
    # tokend itself never makes the clients call the token endpoint.
    calls = next(line for line in table if line.startswith("| 7.") and "(tokend token" in line)
    assert calls.split(" | ")[1] == "0", calls
    # Without --with-litellm the comparison row says so instead of a number.
    litellm = next(line for line in table if line.startswith("| 15. LiteLLM"))
    assert "not run: pass --with-litellm" in litellm, litellm
    data = json.loads(out_json.read_text())
    assert len(data["rows"]) == len(table) - 1
    assert data["header"] == head
