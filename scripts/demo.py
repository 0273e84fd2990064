"""Driver of scripts/demo: FakeGoogle + the real `tokend run`, watching files rotate, and
a default OpenAI client, configured once from the local proxy's proxy.env, calling a
Vertex-like stand-in across the rotations."""

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
from typing import Any

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


class ProxyClient:
    """What most tools do: read OPENAI_BASE_URL and OPENAI_API_KEY from the environment
    once, at start, and keep one client. Here the environment comes from proxy.env (as
    `set -a; . proxy.env` or systemd's EnvironmentFile= would set it), and the client is
    the SDK's default, `openai.OpenAI()`, with no arguments: through the proxy it
    outlives every token."""

    def __init__(self, runtime: Path, api: FakeOpenAI) -> None:
        self.runtime = runtime
        self.api = api
        self.client: Any = None
        self.calls = 0
        self.tokens: list[str] = []

    def call(self) -> str:
        try:
            import openai
        except ImportError:
            return "(openai not installed: no SDK calls)"
        if self.client is None:
            try:
                text = (self.runtime / "proxy.env").read_text()
            except OSError:
                return ""
            os.environ.update(line.split("=", 1) for line in text.splitlines() if line)
            self.client = openai.OpenAI(max_retries=0)  # OPENAI_BASE_URL, OPENAI_API_KEY
        reply = self.client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
        )
        self.calls += 1
        token = self.api.requests[-1].token
        if token not in self.tokens:
            self.tokens.append(token)
        return (
            f"openai.OpenAI(), configured once by the environment from proxy.env: "
            f"{reply.choices[0].message.content!r}"
            f" (the proxy sent Google token {token[:14]}…, #{self.tokens.index(token) + 1})"
        )


def openai_call(fake: FakeGoogle, api: FakeOpenAI) -> None:
    """The other way: the real OpenAI SDK, its key supplied by tokend on every request."""
    try:
        import openai
    except ImportError:
        return
    client = openai.OpenAI(api_key=tokend.client.token, base_url=api.vertex_base_url, max_retries=0)
    reply = client.chat.completions.create(
        model="google/gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
    )
    print(
        f"openai.OpenAI(api_key=tokend.client.token): request accepted "
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
    with (
        FakeGoogle(lifetime=args.lifetime) as fake,
        FakeOpenAI(fake, project="demo-project", location="us-central1") as api,
    ):
        creds = fake.write_service_account(work / "service-account.json")
        config = work / "config.toml"
        config.write_text(
            f'[proxy]\nlisten = "127.0.0.1:0"\n[profiles.default]\ncredentials = "{creds}"\n'
            '[profiles.default.openai]\nproject = "demo-project"\nlocation = "us-central1"\n'
            f'api_endpoint = "{api.origin}"  # the Vertex-like stand-in\n'
        )
        print(f"FakeGoogle listening on {fake.url} (tokens live {args.lifetime:g} s)")
        print(f"Vertex-like stand-in on {api.origin} (accepts only live FakeGoogle tokens)")
        print(f"config: {config}\nruntime dir: {runtime}\n")
        os.environ["TOKEND_RUNTIME_DIR"] = str(runtime)  # where tokend.client looks
        os.environ["TOKEND_STATE_DIR"] = str(work / "state")  # the proxy's key
        env = {**os.environ, **fake.env()}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tokend", "run", "--config", str(config)], env=env
        )
        deadline = None if args.forever else time.monotonic() + args.seconds
        last = ""
        tool = ProxyClient(runtime, api)
        next_call = time.monotonic() + 0.5
        try:
            while deadline is None or time.monotonic() < deadline:
                if daemon.poll() is not None:
                    print(f"tokend exited with {daemon.returncode}", file=sys.stderr)
                    return 1
                now = show(runtime, fake)
                if now != last:
                    print(f"[{time.strftime('%H:%M:%S')}] {now}", flush=True)
                    last = now
                if time.monotonic() >= next_call:
                    next_call += 2.0
                    if said := tool.call():
                        print(f"[{time.strftime('%H:%M:%S')}]   {said}", flush=True)
                time.sleep(0.25)
            files = sorted(p.name for p in runtime.iterdir())
            print(f"\nfiles in {runtime}: {', '.join(files)}")
            print(f"token endpoint calls: {fake.calls['token']} (one per rotation, for everyone)")
            print("\n$ tokend status", flush=True)
            subprocess.run([sys.executable, "-m", "tokend", "status"], env=env, check=False)
            print(
                f"\none OpenAI client, key read once: {tool.calls} requests through the proxy, "
                f"across {len(tool.tokens)} Google tokens, {api.rejected} rejected"
            )
            openai_call(fake, api)
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
