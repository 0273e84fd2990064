"""Driver of scripts/demo: FakeGoogle + the real `tokend run`, watching files rotate."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tokend.client
from tokend.testing import FakeGoogle, FakeOpenAI


def show(runtime: Path, fake: FakeGoogle) -> str:
    try:
        data = json.loads((runtime / "token.json").read_text())
    except (OSError, ValueError):
        return "token.json: (none yet)"
    value = data["access_token"]
    valid = "valid" if fake.is_valid(value) else "NOT VALID"
    return (
        f"token.json: {value[:14]}… ({valid} at FakeGoogle, account {data['account'] or '?'}, "
        f"expires {data['expires_at']})"
    )


def openai_call(fake: FakeGoogle) -> None:
    """The main job: the real OpenAI SDK, its key supplied by tokend on every request,
    against a local stand-in that accepts only tokens FakeGoogle considers valid."""
    try:
        import openai
    except ImportError:
        print("(openai not installed: skipping the SDK call)")
        return
    with FakeOpenAI(fake) as api:
        client = openai.OpenAI(api_key=tokend.client.token, base_url=api.url, max_retries=0)
        reply = client.chat.completions.create(
            model="google/gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
        )
        print(
            f"\nopenai.OpenAI(api_key=tokend.client.token): request accepted "
            f"({reply.choices[0].message.content!r}), {api.rejected} rejected"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--forever", action="store_true", help="run until Ctrl-C")
    ap.add_argument("--seconds", type=float, default=25.0, help="how long to run (default 25)")
    ap.add_argument("--lifetime", type=float, default=8.0, help="token lifetime in seconds")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tokend-demo-", dir="/tmp"))
    runtime = work / "rt"
    with FakeGoogle(lifetime=args.lifetime) as fake:
        creds = fake.write_service_account(work / "service-account.json")
        config = work / "config.toml"
        config.write_text(
            f'[profiles.default]\ncredentials = "{creds}"\n'
            '[profiles.default.openai]\nproject = "demo-project"\nlocation = "global"\n'
        )
        print(f"FakeGoogle listening on {fake.url} (tokens live {args.lifetime:g} s)")
        print(f"config: {config}\nruntime dir: {runtime}\n")
        os.environ["TOKEND_RUNTIME_DIR"] = str(runtime)  # where tokend.client looks
        env = {**os.environ, **fake.env()}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tokend", "run", "--config", str(config)], env=env
        )
        deadline = None if args.forever else time.monotonic() + args.seconds
        last = ""
        try:
            while deadline is None or time.monotonic() < deadline:
                if daemon.poll() is not None:
                    print(f"tokend exited with {daemon.returncode}", file=sys.stderr)
                    return 1
                now = show(runtime, fake)
                if now != last:
                    print(f"[{time.strftime('%H:%M:%S')}] {now}", flush=True)
                    last = now
                time.sleep(0.25)
            files = sorted(p.name for p in runtime.iterdir())
            print(f"\nfiles in {runtime}: {', '.join(files)}")
            print(f"token endpoint calls: {fake.calls['token']} (one per rotation, for everyone)")
            print("\n$ tokend status", flush=True)
            subprocess.run([sys.executable, "-m", "tokend", "status"], env=env, check=False)
            openai_call(fake)
        except KeyboardInterrupt:
            pass
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(10)
            shutil.rmtree(work, ignore_errors=True)
        print(f"tokend stopped (exit {code}); demo done.")
        return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
