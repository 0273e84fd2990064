"""The one default runtime dir and config path that daemon and clients share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokend import paths


def mkdir(p: Path, m: int) -> Path:
    p.mkdir()
    p.chmod(m)  # mkdir's mode passes through the umask; chmod says exactly m
    return p


# -- the default runtime dir, one answer for daemon and client ---------------------------

COMPARE = r"""
import json, sys, warnings
import platformdirs
from tokend import paths
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    theirs = [platformdirs.user_runtime_dir("tokend"), platformdirs.user_config_dir("tokend")]
ours = [str(paths.default_runtime_dir()), str(paths.default_config_path().parent)]
print(json.dumps({"theirs": theirs, "ours": ours, "light": "platformdirs" not in sys.modules}))
"""


def compare(env: dict[str, str]) -> dict[str, list[str]]:
    """Both answers from a fresh process (platformdirs and tempfile cache nothing yet)."""
    out = subprocess.run(
        [sys.executable, "-c", COMPARE],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(json.loads(out.stdout))


@pytest.mark.skipif(sys.platform == "darwin", reason="the Linux rules")
def test_default_runtime_dir_is_platformdirs_answer(short_tmp: Path) -> None:
    """The ordinary cases: XDG_RUNTIME_DIR set to a valid dir; unset, with
    /run/user/$UID absent (then $TMPDIR/runtime-$UID). Config dir likewise."""
    xdg = mkdir(short_tmp / "xdg", 0o700)
    home = mkdir(short_tmp / "home", 0o700)
    tmp = mkdir(short_tmp / "tmp", 0o1777)
    seen = compare({"XDG_RUNTIME_DIR": str(xdg), "HOME": str(home)})
    assert seen["ours"] == seen["theirs"] == [f"{xdg}/tokend", f"{home}/.config/tokend"]
    seen = compare({"XDG_CONFIG_HOME": str(xdg), "HOME": str(home)})
    assert seen["ours"][1] == seen["theirs"][1] == f"{xdg}/tokend"
    if os.path.isdir(f"/run/user/{os.geteuid()}"):
        pytest.skip("/run/user/$UID exists here; the fallback case cannot be seen")
    seen = compare({"TMPDIR": str(tmp), "HOME": str(home)})
    assert seen["ours"][0] == seen["theirs"][0] == f"{tmp}/runtime-{os.geteuid()}/tokend"
    seen = compare({"HOME": str(home)})
    assert seen["ours"][0] == seen["theirs"][0]


def test_default_runtime_dir_rules(short_tmp: Path) -> None:
    uid = os.geteuid()
    assert paths.default_runtime_dir({"XDG_RUNTIME_DIR": "/x/y"}) == Path("/x/y/tokend")
    fallback = paths.default_runtime_dir({"XDG_RUNTIME_DIR": "rel", "TMPDIR": str(short_tmp)})
    if not os.path.isdir(f"/run/user/{uid}"):
        assert fallback == short_tmp / f"runtime-{uid}" / "tokend"
        assert paths.default_runtime_dir({"TMPDIR": "rel"}) == Path(f"/tmp/runtime-{uid}/tokend")
    assert paths.default_config_path({"XDG_CONFIG_HOME": "/c"}) == Path("/c/tokend/config.toml")
