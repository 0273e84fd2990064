"""The README's "Use it with ..." recipes, each run as its tool runs them: one
long-running process, across at least three token rotations, against the Vertex-like
stand-in (which accepts only a live token) with the real ``tokend run`` in front.

The tools come from the ``[tools]`` extra (langchain-openai, llm, litellm, pydantic-ai,
anthropic[vertex], google-genai); shell-gpt from a venv of its own that
scripts/_bootstrap.sh makes (it pins openai<3). Without them these tests are skipped,
except under CI, where a missing tool fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, run_daemon, wait_for
from tests.test_proxy import PROJECT, proxy_config, proxy_env
from tokend.testing import FakeGoogle, FakeOpenAI

pytestmark = pytest.mark.tools

#: Seconds a token lives: a rotation every few seconds, each one a chance to fail.
LIFETIME = 10.0
ROTATIONS = 3


def need(module: str) -> None:
    """Skip without the tool, but fail under CI: CI installs the [tools] extra."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing: CI installs the [tools] extra")
        pytest.skip(f"{module} is not installed (pip install -e '.[tools]')")


@pytest.fixture
def api(fake: FakeGoogle) -> Iterator[FakeOpenAI]:
    fake.lifetime = LIFETIME
    with FakeOpenAI(fake, project=PROJECT) as server:
        yield server


@pytest.fixture
def daemon(fake: FakeGoogle, api: FakeOpenAI, short_tmp: Path) -> Iterator[Daemon]:
    with run_daemon(fake, short_tmp, proxy_config(fake, short_tmp, api.origin)) as d:
        proxy_env(d)
        yield d


def tool_env(d: Daemon, **extra: str) -> dict[str, str]:
    """What a user's shell has: tokend's config and runtime dir, no OPENAI_* of its own."""
    env = {k: v for k, v in d.env.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    env["TOKEND_CONFIG"] = str(d.config_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def run_across_rotations(
    api: FakeOpenAI,
    argv: list[str],
    env: dict[str, str],
    *,
    stdin: Callable[[subprocess.Popen[str]], None] | None = None,
    timeout: float = 90.0,
    new_session: bool = False,
) -> str:
    """Run the tool's process until the stand-in has accepted more than ROTATIONS
    distinct tokens from it; then stop it. Every request must have been accepted.
    ``new_session``: no controlling terminal (a tool that would open /dev/tty cannot)."""
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=env.get("HOME", "/"),
        start_new_session=new_session,
    )
    try:
        if stdin is not None:
            stdin(proc)
        else:
            wait_for(
                lambda: len(set(api.seen_tokens)) > ROTATIONS or proc.poll() is not None, timeout
            )
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert len(set(api.seen_tokens)) > ROTATIONS, f"too few rotations:\n{out}\n{err[-3000:]}"
    assert api.rejected == 0, err[-3000:]
    failed = [s for s in api.requests if s.status != 200]
    assert not failed, (failed, err[-3000:])
    return out


def no_local_key_upstream(api: FakeOpenAI, key: str) -> None:
    """The local key the tool sent never reached the upstream, in any header."""
    assert api.requests
    assert not [s for s in api.requests if key in repr(sorted(s.headers.items()))]


# -- langchain-openai -----------------------------------------------------------------------

LANGCHAIN_CALLABLE = """
import tokend
from langchain_openai import ChatOpenAI

# The recipe: a callable key, asked before every request.
llm = ChatOpenAI(model="google/gemini-2.5-flash", base_url=tokend.openai_base_url(),
                 api_key=tokend.token, max_retries=0)
while True:
    assert llm.invoke("hi").content == "ok"
    assert "".join(c.content for c in llm.stream("hi"))
"""

LANGCHAIN_PROXY = """
from langchain_openai import ChatOpenAI

# The recipe: nothing but OPENAI_BASE_URL and OPENAI_API_KEY from proxy.env.
llm = ChatOpenAI(model="gemini-2.5-flash", max_retries=0)
while True:
    assert llm.invoke("hi").content == "ok"
"""


@pytest.mark.parametrize("way", ["callable key", "proxy"])
def test_langchain_chatopenai(daemon: Daemon, api: FakeOpenAI, way: str) -> None:
    need("langchain_openai")
    if way == "proxy":
        env = tool_env(daemon, **proxy_env(daemon))
        script = LANGCHAIN_PROXY
    else:
        env = tool_env(daemon)
        script = LANGCHAIN_CALLABLE
    run_across_rotations(api, [sys.executable, "-c", script], env)


# -- litellm ---------------------------------------------------------------------------------

LITELLM_PER_CALL = """
import litellm, tokend

# The recipe: litellm takes no callable key, so pass a fresh one on every call.
while True:
    r = litellm.completion(model="openai/google/gemini-2.5-flash",
                           api_base=tokend.openai_base_url(), api_key=tokend.token(),
                           messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "ok"
"""

LITELLM_PROXY = """
import os, litellm

# The recipe: the proxy's base URL and key, read once.
base, key = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
while True:
    r = litellm.completion(model="openai/gemini-2.5-flash", api_base=base, api_key=key,
                           messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "ok"
"""


@pytest.mark.parametrize("way", ["per-call key", "proxy"])
def test_litellm(daemon: Daemon, api: FakeOpenAI, way: str) -> None:
    need("litellm")
    extra = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    if way == "proxy":
        env = tool_env(daemon, **proxy_env(daemon), **extra)
        script = LITELLM_PROXY
    else:
        env = tool_env(daemon, **extra)
        script = LITELLM_PER_CALL
    run_across_rotations(api, [sys.executable, "-c", script], env, timeout=120)


# -- pydantic-ai -----------------------------------------------------------------------------

PYDANTIC_AI_CALLABLE = """
import asyncio, openai, tokend
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

# The recipe: an AsyncOpenAI client with a callable key, asked before every request.
client = openai.AsyncOpenAI(api_key=tokend.token_async, base_url=tokend.openai_base_url(),
                            max_retries=0)
agent = Agent(OpenAIChatModel("google/gemini-2.5-flash",
                              provider=OpenAIProvider(openai_client=client)))

async def main():
    while True:
        assert (await agent.run("hi")).output == "ok"

asyncio.run(main())
"""

PYDANTIC_AI_PROXY = """
import os
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

# The recipe: the proxy's base URL and key, read once.
provider = OpenAIProvider(base_url=os.environ["OPENAI_BASE_URL"],
                          api_key=os.environ["OPENAI_API_KEY"])
agent = Agent(OpenAIChatModel("gemini-2.5-flash", provider=provider))
while True:
    assert agent.run_sync("hi").output == "ok"
"""


@pytest.mark.parametrize("way", ["callable key", "proxy"])
def test_pydantic_ai(daemon: Daemon, api: FakeOpenAI, way: str) -> None:
    need("pydantic_ai")
    if way == "proxy":
        env = tool_env(daemon, **proxy_env(daemon))
        script = PYDANTIC_AI_PROXY
    else:
        env = tool_env(daemon)
        script = PYDANTIC_AI_CALLABLE
    run_across_rotations(api, [sys.executable, "-c", script], env)


# -- llm -------------------------------------------------------------------------------------


def llm_home(d: Daemon, api: FakeOpenAI, way: str) -> dict[str, str]:
    """An LLM_USER_PATH set up as the README says, for ``way``."""
    home = d.dir / "llm"
    home.mkdir()
    if way == "proxy":
        env = proxy_env(d)
        models = f"""\
            - model_id: vertex
              model_name: google/gemini-2.5-flash
              api_base: "{env["OPENAI_BASE_URL"]}"
              api_key_name: tokend
            """
        (home / "keys.json").write_text(json.dumps({"tokend": env["OPENAI_API_KEY"]}))
    else:
        # llm reads keys.json before every prompt: a symlink to token.json, whose
        # access_token field is the key, keeps even `llm chat` on the current token.
        models = f"""\
            - model_id: vertex
              model_name: google/gemini-2.5-flash
              api_base: "{api.vertex_base_url}"
              api_key_name: access_token
            """
        (home / "keys.json").symlink_to(d.runtime_dir / "token.json")
    (home / "extra-openai-models.yaml").write_text(textwrap.dedent(models))
    return tool_env(d, LLM_USER_PATH=str(home), HOME=str(d.dir))


@pytest.mark.parametrize("way", ["keys.json symlink", "proxy"])
def test_llm_chat(daemon: Daemon, api: FakeOpenAI, way: str) -> None:
    """`llm chat`, one long-running process, a prompt every second across rotations."""
    need("llm")
    exe = shutil.which("llm", path=str(Path(sys.executable).parent))
    assert exe, "the llm command is missing"
    env = llm_home(daemon, api, way)

    def converse(proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None
        done = 0

        def answered() -> bool:
            return sum(1 for s in api.requests if s.status == 200) > done

        while len(set(api.seen_tokens)) <= ROTATIONS:
            assert proc.poll() is None, "llm chat exited"
            proc.stdin.write("hi\n")
            proc.stdin.flush()
            wait_for(answered, 15)
            done += 1
            time.sleep(1.0)
        proc.stdin.write("exit\n")
        proc.stdin.flush()

    out = run_across_rotations(api, [exe, "chat", "-m", "vertex"], env, stdin=converse)
    assert out.count("ok") > ROTATIONS, out


# -- shell-gpt -------------------------------------------------------------------------------


def sgpt_command() -> str:
    """shell-gpt's ``sgpt``: from its own venv, which scripts/_bootstrap.sh makes beside the
    project's (as pipx would: shell-gpt pins openai<3), else from PATH."""
    own = Path(sys.prefix) / "tools" / "shell-gpt" / "bin" / "sgpt"
    exe = str(own) if own.exists() else shutil.which("sgpt")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(f"sgpt is missing: scripts/_bootstrap.sh installs it at {own}")
        pytest.skip(f"sgpt is not installed (scripts/_bootstrap.sh puts it at {own})")
    return exe


def test_sgpt_repl(daemon: Daemon, api: FakeOpenAI) -> None:
    """`sgpt --repl temp`, the process that crashed at the first token expiry before the
    proxy: one long-running REPL, configured only by its ``.sgptrc`` with proxy.env's
    values, a prompt every second across rotations."""
    exe = sgpt_command()
    home = daemon.dir / "sgpt-home"
    config = home / ".config" / "shell_gpt"
    config.mkdir(parents=True)
    values = proxy_env(daemon)
    (config / ".sgptrc").write_text(
        f"API_BASE_URL={values['OPENAI_BASE_URL']}\n"
        f"OPENAI_API_KEY={values['OPENAI_API_KEY']}\n"
        "DEFAULT_MODEL=google/gemini-2.5-flash\n"
        f"CHAT_CACHE_PATH={home / 'chat_cache'}\n"
        f"CACHE_PATH={home / 'cache'}\n"
    )
    # sgpt finds its config under ~ (HOME); nothing of the proxy in its environment.
    env = tool_env(daemon, HOME=str(home))

    def converse(proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None
        # With stdin not a terminal, sgpt first reads an initial prompt up to this line,
        # then tries /dev/tty (none: a new session) and reads the REPL's input from stdin.
        proc.stdin.write("__sgpt__eof__\n")
        done = 0

        def answered() -> bool:
            return sum(1 for s in api.requests if s.status == 200) > done

        while len(set(api.seen_tokens)) <= ROTATIONS:
            assert proc.poll() is None, "sgpt --repl exited"
            proc.stdin.write(f"hi {done}\n")  # distinct prompts: no answer from its cache
            proc.stdin.flush()
            wait_for(answered, 15)
            done += 1
            time.sleep(1.0)
        proc.stdin.write("exit()\n")
        proc.stdin.flush()
        proc.wait(15)

    out = run_across_rotations(api, [exe, "--repl", "temp"], env, stdin=converse, new_session=True)
    assert out.count("ok ok ok") > ROTATIONS, out  # the stand-in streams "ok ok ok"
    assert {s.json()["model"] for s in api.requests} == {"google/gemini-2.5-flash"}
    assert all(s.json()["stream"] is True for s in api.requests)
    no_local_key_upstream(api, values["OPENAI_API_KEY"])


# -- Vertex's own API through /vertex: Anthropic's SDK, google-genai -------------------------


def vertex_env(d: Daemon, **extra: str) -> dict[str, str]:
    """proxy.env plus the proxy's /vertex base, with no way to Google's own auth: no
    metadata server, and an ADC file that does not exist. An SDK that ran google-auth
    itself (instead of sending the placeholder token it was given) fails."""
    env = tool_env(d, **proxy_env(d), **extra)
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP"):
        env.pop(name, None)
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(d.dir / "no-such-adc.json")
    env["TOKEND_VERTEX_BASE"] = env["OPENAI_BASE_URL"].removesuffix("/v1") + "/vertex"
    return env


def tokens_per_route(api: FakeOpenAI, suffix: str) -> int:
    """How many distinct tokens the stand-in accepted on paths ending in ``suffix``."""
    return len({s.token for s in api.requests if s.path.endswith(suffix) and s.status == 200})


ANTHROPIC_VERTEX_ARGS = """
import os
from anthropic import AnthropicVertex

# The recipe: the proxy's /vertex/v1 as base URL, the local key as x-api-key, and an
# access token that is never used (the proxy puts the current Google token in), so the
# SDK never runs google-auth itself.
client = AnthropicVertex(region="us-central1", project_id=os.environ["PROJECT"],
                         base_url=os.environ["TOKEND_VERTEX_BASE"] + "/v1",
                         access_token="unused",
                         default_headers={"x-api-key": os.environ["OPENAI_API_KEY"]},
                         max_retries=0)
"""

ANTHROPIC_VERTEX_ENV = """
from anthropic import AnthropicVertex

# Claude Code's variables: ANTHROPIC_VERTEX_BASE_URL, CLOUD_ML_REGION,
# ANTHROPIC_VERTEX_PROJECT_ID, ANTHROPIC_CUSTOM_HEADERS (CLAUDE_CODE_SKIP_VERTEX_AUTH is
# Claude Code's own; for the SDK the placeholder access token does it).
client = AnthropicVertex(access_token="unused", max_retries=0)
"""

ANTHROPIC_VERTEX_LOOP = """
import time

messages = [{"role": "user", "content": "hi"}]
while True:
    m = client.messages.create(model="claude-sonnet-4@20250514", max_tokens=16, messages=messages)
    assert m.content[0].text == "ok", m
    with client.messages.stream(model="claude-sonnet-4@20250514", max_tokens=16,
                                messages=messages) as s:
        assert "".join(s.text_stream) == "ok ok ok"
    time.sleep(0.2)
"""


@pytest.mark.parametrize("way", ["arguments", "Claude Code's variables"])
def test_anthropic_vertex(daemon: Daemon, api: FakeOpenAI, way: str) -> None:
    """Anthropic's SDK (``anthropic[vertex]``) through the proxy's /vertex passthrough:
    messages.create, plain and streamed, one process across rotations."""
    need("anthropic")
    env = vertex_env(daemon, PROJECT=PROJECT)
    if way == "arguments":
        script = ANTHROPIC_VERTEX_ARGS
    else:
        env.update(
            ANTHROPIC_VERTEX_BASE_URL=env["TOKEND_VERTEX_BASE"] + "/v1",
            CLOUD_ML_REGION="us-central1",
            ANTHROPIC_VERTEX_PROJECT_ID=PROJECT,
            ANTHROPIC_CUSTOM_HEADERS=f"x-api-key: {env['OPENAI_API_KEY']}",
        )
        script = ANTHROPIC_VERTEX_ENV
    run_across_rotations(api, [sys.executable, "-c", script + ANTHROPIC_VERTEX_LOOP], env)
    assert tokens_per_route(api, ":rawPredict") >= ROTATIONS
    assert tokens_per_route(api, ":streamRawPredict") >= ROTATIONS
    assert all(
        "/publishers/anthropic/models/claude-sonnet-4@20250514:" in s.path for s in api.requests
    ), api.requests
    no_local_key_upstream(api, env["OPENAI_API_KEY"])


GENAI = """
import os, time
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials

# The recipe: Vertex mode with the proxy's /vertex as base URL, the local key as
# x-api-key, and credentials holding a placeholder token with no expiry and nothing to
# refresh with: genai never runs google-auth (no ADC), the proxy puts the token in.
client = genai.Client(
    vertexai=True, project=os.environ["PROJECT"], location="us-central1",
    credentials=Credentials(token="unused"),
    http_options=types.HttpOptions(base_url=os.environ["TOKEND_VERTEX_BASE"],
                                   headers={"x-api-key": os.environ["OPENAI_API_KEY"]}),
)
while True:
    r = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert r.text == "ok", r
    chunks = client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    assert "".join(c.text for c in chunks) == "ok ok ok"
    time.sleep(0.2)
"""


def test_google_genai(daemon: Daemon, api: FakeOpenAI) -> None:
    """google-genai in Vertex mode through the proxy's /vertex passthrough:
    generate_content, plain and streamed, one process across rotations."""
    need("google.genai")
    env = vertex_env(daemon, PROJECT=PROJECT)
    run_across_rotations(api, [sys.executable, "-c", GENAI], env)
    assert tokens_per_route(api, ":generateContent") >= ROTATIONS
    assert tokens_per_route(api, ":streamGenerateContent?alt=sse") >= ROTATIONS
    assert all(
        s.path.startswith(
            f"/v1beta1/projects/{PROJECT}/locations/us-central1/"
            "publishers/google/models/gemini-2.5-flash:"
        )
        for s in api.requests
    ), api.requests
    no_local_key_upstream(api, env["OPENAI_API_KEY"])
