# Sourced by scripts/test and scripts/demo: make sure .venv exists and holds this
# checkout (editable) with its test dependencies. Reinstalls when pyproject.toml changes.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "tokend needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
stamp="$VENV/.tokend-installed"
want=$(cksum < "$ROOT/pyproject.toml")
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up $VENV (once) ..." >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test,tools]" >&2
    # shell-gpt (tests/test_tools.py) in a venv of its own, as pipx gives it: it pins
    # openai<3, older than the SDK the [test] extra tests. It imports click without
    # declaring it (the typer it gets, 0.29, vendors its own click), so click comes along.
    "$PY" -m venv "$VENV/tools/shell-gpt"
    "$VENV/tools/shell-gpt/bin/python" -m pip install --quiet --disable-pip-version-check \
        "shell-gpt>=1.4" click >&2
    printf '%s' "$want" > "$stamp"
fi
# Bytecode for the package, as an installed wheel has it: with PYTHONDONTWRITEBYTECODE
# set (some machines do), each `tokend token` would compile the edited modules again.
"$VENV/bin/python" -m compileall -q "$ROOT/tokend" >&2
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
