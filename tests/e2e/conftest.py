"""Fixtures of the end-to-end tests: one complete build of the shipped example, shared."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import EXAMPLE_BASE, EXAMPLE_SPA, invoke


@pytest.fixture(scope="session")
def complete_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, successful build of the shipped example (its files are never modified)."""
    out = tmp_path_factory.mktemp("complete") / "out"
    result = invoke(["build", "--base", str(EXAMPLE_BASE), "--spa", str(EXAMPLE_SPA), "--input-shape",
                     "1,3,32,32", "--bench", "none", "--out", str(out), "-q"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert {p.name for p in out.iterdir()} == {".spa-export", "model.onnx", "report.json", "report.md"}
    return out
