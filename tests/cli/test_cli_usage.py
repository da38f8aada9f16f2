"""Usage errors are one line on stderr, name where help is, and exit 2, like every bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("args", "says"), [
    (["assemble", "--out", "x"], "error: Missing argument 'PARTS...'. (see 'spa-export assemble --help')"),
    (["build", "--bogus"], "No such option '--bogus'"),
    (["--bogus"], "error: No such option '--bogus'. (see 'spa-export --help')"),
    (["nosuch"], "error: No such command 'nosuch'. (see 'spa-export --help')"),
    (["pack"], "(see 'spa-export pack --help')"),
    (["bench", "m.onnx", "--batch", "x"], "'x' is not a valid integer"),
])
def test_usage_errors_are_one_line(tmp_path, args: list[str], says: str) -> None:
    r = subprocess.run([sys.executable, "-m", "spa_export", *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and says in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_arguments_show_the_help() -> None:
    r = subprocess.run([sys.executable, "-m", "spa_export"], capture_output=True, text=True, timeout=120)
    assert "Usage: spa-export [OPTIONS] COMMAND" in r.stdout + r.stderr and "Commands:" in r.stdout + r.stderr
