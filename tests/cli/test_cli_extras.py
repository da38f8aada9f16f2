"""A command whose optional dependency is missing says which install brings it (exit 2).

The runtime-only install (``pip install spa-export``) has no torch and no
onnxsim; ``spa-export build`` there must name the ``build`` extra, not end in
``internal error (ModuleNotFoundError ...)``. The missing module is simulated
by blocking its import in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


def _run_without(blocked: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = ("import sys\n"
            f"for name in {blocked!r}:\n    sys.modules[name] = None\n"
            "from spa_export.cli import run\n"
            f"sys.argv = ['spa-export', *{args!r}]\n"
            "run()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(("blocked", "needs", "install"), [
    (["onnxsim"], "onnxsim", "pip install 'spa-export[build]'"),
    (["torch"], "torch", "pip install 'spa-export[build]'"),
])
def test_build_without_the_build_extra(tmp_path: Path, blocked: list[str], needs: str, install: str) -> None:
    r = _run_without(blocked, ["build", "--base", str(MODELS / "tiny_resnet.safetensors"), "--spa",
                               str(MODELS / "tiny_resnet-example.spa"), "--input-shape", "1,3,32,32",
                               "--out", str(tmp_path / "out"), "-q"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"error: spa-export build needs {needs}, which is not installed: {install}"
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_build_without_matplotlib_skips_the_plot_and_says_so(tmp_path: Path) -> None:
    r = _run_without(["matplotlib"], ["build", "--base", str(MODELS / "tiny_resnet.safetensors"), "--spa",
                                      str(MODELS / "tiny_resnet-example.spa"), "--input-shape", "1,3,32,32",
                                      "--out", str(tmp_path / "out"), "-q", "--bench", "cpu", "--budget", "0.05",
                                      "--batch", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    import json

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["plot"].startswith("not drawn: matplotlib is not installed")
    assert not (tmp_path / "out" / "latency.png").exists()
