"""Every snippet in README runs as it is pasted.

The blocks run in README's order, in one empty folder, as a reader would paste them: Python
with this interpreter, bash with this environment's ``spa-export`` on the PATH, and a YAML block
is written to the file its first line names (``# release.yaml``). ``text`` blocks (diagrams,
synopses) are not code. The two set-up commands of the quick start install packages: their
test command must be the one ``.ci/run`` runs, and the demo build is the one ``test_package``
builds. A block of any other kind fails this test, so that no new snippet goes unrun.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)
SET_UP = "python3 -m venv .venv && .venv/bin/pip install"


def snippets() -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every fenced block, dedented."""
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(2), textwrap.dedent(m.group(3)).strip("\n"))
            for m in FENCE.finditer(text)]


def test_the_set_up_commands_are_what_ci_runs() -> None:
    set_up = [code for _, lang, code in snippets() if lang == "bash" and code.startswith(SET_UP)]
    assert len(set_up) == 2
    ci = (REPO / ".ci" / "run").read_text()
    assert set_up[1] in ci.splitlines(), "README's test command is not .ci/run's"
    assert set_up[0].endswith("&& .venv/bin/spa-export build recipes/digits.yaml")


def test_every_snippet_runs_as_pasted(tmp_path: Path) -> None:
    pytest.importorskip("sp_adapters", reason="the training snippet uses the structured-pruning-adapters library")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    ran = []
    for line, lang, code in snippets():
        where = f"README.md:{line}"
        if lang == "text" or (lang == "bash" and code.startswith(SET_UP)):
            continue
        if lang == "yaml":
            name = re.fullmatch(r"# ([\w.-]+\.ya?ml)", code.splitlines()[0])
            assert name, f"{where}: a YAML snippet names its file in its first line (# release.yaml)"
            (tmp_path / name.group(1)).write_text(code + "\n")
        elif lang == "python":
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"{where}:\n{done.stderr[-3000:]}"
        elif lang == "bash":
            done = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"{where}:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
        else:
            pytest.fail(f"{where}: a ```{lang or ''} block: mark it text, or give it a language this test runs")
        ran.append(lang)
    assert ran.count("python") == 2 and ran.count("bash") >= 3 and ran.count("yaml") == 1, ran
    assert (tmp_path / "release" / "manifest.json").is_file() and (tmp_path / "out" / "release" / "summary.md").is_file()
    assert (tmp_path / "out" / "tokens" / "model.onnx").is_file() and (tmp_path / "dogs.spa").is_file()
