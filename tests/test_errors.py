"""The exception tree and the closed set of reasons, as errors.py draws them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tokend import errors
from tokend.service import ServiceError

PACKAGE = Path(errors.__file__).parent


def test_the_tree_inherits_the_builtins_callers_catch() -> None:
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.UnsafePathError, PermissionError)
    assert issubclass(errors.TokenUnavailable, LookupError)
    assert issubclass(errors.ServiceError, RuntimeError) and ServiceError is errors.ServiceError
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.TokendError), name


def test_every_reason_raised_or_reported_is_in_the_closed_set() -> None:
    """Walks the package for ``reason="…"`` and ``_failed("…", …)``: the API's ``error``
    codes cannot drift from the list clients are told about."""
    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == "reason" and isinstance(kw.value, ast.Constant):
                    used.add(kw.value.value)
                if kw.arg == "reason" and isinstance(kw.value, ast.IfExp):
                    used |= {
                        v.value
                        for v in (kw.value.body, kw.value.orelse)
                        if isinstance(v, ast.Constant)
                    }
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name == "_failed" and node.args and isinstance(node.args[0], ast.Constant):
                used.add(node.args[0].value)
    used.discard(None)
    assert used and used <= set(errors.REASONS), used - set(errors.REASONS)


def test_an_unlisted_reason_is_a_bug() -> None:
    with pytest.raises(ValueError):
        errors.RefreshError("x", retryable=True, reason="made_up")  # type: ignore[arg-type]
