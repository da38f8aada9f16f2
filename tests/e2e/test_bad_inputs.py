"""Bad input never crashes, corrupts or runs code: the corpus of ``bad_inputs.py`` through the CLI.

Every case must end with exit code 2, exactly one ``error:`` line on stderr
that names the file, the tensor or key and what was expected, no traceback,
and ``--out`` exactly as it was: absent (and none of its missing parents
created), or a complete earlier build byte for byte. No staging directory may
be left behind. Pickles that would run code write a marker file when loaded
unsafely; the marker must never appear.

Most cases run in-process through click's CliRunner, once with ``--out``
absent and once over a complete earlier build; the cases where the process
matters (pickles, PYTHONPATH factories, a user's view of stderr) run as real
subprocesses, side by side to keep the wall time low.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from bad_inputs import (
    CASES,
    Case,
    Corpus,
    RunsCode,
    build_case,
    cli_command,
    cli_env,
    invoke,
    tree,
)

PROGRESS = re.compile(r"^(\[\d+/\d+\] \w+ \.\.\.|      .*)$")


@dataclass
class Outcome:
    how: str
    code: int | None
    stdout: str
    stderr: str
    crashed: BaseException | None
    before: object
    after: object
    out: Path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cases(corpus: Corpus) -> dict[str, Case]:
    return {cid: build_case(corpus, cid) for cid in CASES}


def _prepare(case: Case, corpus: Corpus, run_dir: Path, existing: Path | None) -> tuple[Path, Path]:
    """The ``--out`` of this run and the directory whose whole tree must not change."""
    if case.out is not None:
        return case.out, corpus.root
    run_dir.mkdir(parents=True)
    out = run_dir / "out"
    if existing is not None:
        shutil.copytree(existing, out)
    return out, run_dir


def _run_in_process(case: Case, corpus: Corpus, run_dir: Path, existing: Path | None) -> Outcome:
    out, watched = _prepare(case, corpus, run_dir, existing)
    before = tree(watched)
    result = invoke(case.argv(out, quiet=True))
    crashed = None if isinstance(result.exception, SystemExit) else result.exception
    return Outcome("in-process" + (" over a complete build" if existing else ""), result.exit_code,
                   result.stdout, result.stderr, crashed, before, tree(watched), out)


def _run_subprocess(case: Case, corpus: Corpus, run_dir: Path, existing: Path | None) -> Outcome:
    out, watched = _prepare(case, corpus, run_dir, existing)
    before = tree(watched)
    proc = subprocess.run([*cli_command(), *case.argv(out, quiet=False)], capture_output=True,
                          text=True, timeout=300, env=cli_env(pythonpath=case.pythonpath, extra=case.env))
    return Outcome("subprocess" + (" over a complete build" if existing else ""), proc.returncode,
                   proc.stdout, proc.stderr, None, before, tree(watched), out)


@pytest.fixture(scope="module")
def subprocess_outcomes(cases: dict[str, Case], corpus: Corpus, complete_build: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """All subprocess cases, run side by side (each pays the interpreter and torch start-up)."""
    root = tmp_path_factory.mktemp("subprocess-runs")
    chosen = [cid for cid, c in cases.items() if c.subprocess]
    # the own-out cases watch the corpus directory: run those after the others, one at a time
    shared = [cid for cid in chosen if cases[cid].out is None]
    own = [cid for cid in chosen if cases[cid].out is not None]

    def run(index_cid: tuple[int, str]) -> tuple[str, Outcome]:
        i, cid = index_cid
        existing = complete_build if i % 2 else None
        return cid, _run_subprocess(cases[cid], corpus, root / cid, existing)

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = dict(pool.map(run, enumerate(shared)))
    outcomes.update(run((i, cid)) for i, cid in enumerate(own))
    return outcomes


def _check(case: Case, o: Outcome) -> None:
    where = f"{case.id} ({o.how})"
    assert o.crashed is None, f"{where}: crashed with {o.crashed!r}"
    assert "Traceback" not in o.stderr + o.stdout, f"{where}: traceback:\n{o.stderr}"
    assert o.code == 2, f"{where}: exit code {o.code}, stderr:\n{o.stderr}"
    lines = o.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"{where}: expected one error line, stderr:\n{o.stderr}"
    if o.how.startswith("in-process"):  # -q: the error is all there is
        assert lines == errors, f"{where}: more than the error on stderr:\n{o.stderr}"
    else:  # as a user sees it: stage lines, then the error last
        assert lines[-1] == errors[0], f"{where}: the error is not the last line:\n{o.stderr}"
        others = [line for line in lines[:-1] if not PROGRESS.match(line)]
        assert not others, f"{where}: unexpected stderr lines {others}"
    missing = [s for s in case.expect if s not in errors[0]]
    assert not missing, f"{where}: message lacks {missing}:\n{errors[0]}"
    assert o.before == o.after, f"{where}: the output location changed"
    if case.out is None:
        leftovers = [p.name for p in o.out.parent.iterdir() if p.name != "out"]
        assert not leftovers, f"{where}: left {leftovers} beside --out"
    if case.marker is not None:
        assert not case.marker.exists(), f"{where}: the pickled payload ran ({case.marker} exists)"
    for p in case.absent:
        assert not p.exists(), f"{where}: created {p}"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input(case_id: str, cases: dict[str, Case], corpus: Corpus, complete_build: Path,
                   subprocess_outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    case = cases[case_id]
    if case.subprocess:
        _check(case, subprocess_outcomes[case_id])
        return
    _check(case, _run_in_process(case, corpus, tmp_path / "fresh", None))
    if case.out is None:
        _check(case, _run_in_process(case, corpus, tmp_path / "over", complete_build))


def test_pickle_payloads_are_live(tmp_path: Path) -> None:
    """The corpus' pickles really run code when loaded unsafely: refusing them is what protects."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.read_text() == "code ran"
    marker.unlink()
    torch.save({"x": RunsCode(marker)}, str(tmp_path / "evil.pt"))
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_ignore_base_digest_builds(cases: dict[str, Case], corpus: Corpus, tmp_path: Path) -> None:
    """The digest-mismatch case of the corpus builds once the user asks to go on.

    Its ``--out`` has missing parents: a successful build creates them (the
    counterpart of the case 'out_missing_parents_bad_spa').
    """
    case = cases["base_digest_mismatch"]
    out = tmp_path / "a" / "b" / "out"
    result = invoke(["build", *case.args, "--ignore-base-digest", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["spa"]["base_digest"] == "sha256:" + "0" * 64
    assert report["inputs"]["base"]["digest"] == corpus.digest
    assert report["verification"]["passed"] is True
    assert sorted(p.name for p in out.iterdir()) == [".spa-export", "model.onnx", "report.json", "report.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["out"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: directory permissions do not bind, so a 0o500 directory "
                           "is writable (the case 'out_under_a_file' covers an unwritable --out instead)")
def test_out_in_unwritable_directory(corpus: Corpus, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = locked / "out"
        result = invoke(["build", *corpus.args(), "--out", str(out), "-q"])
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: --out {out}: cannot write in {locked}")
        assert len(result.stderr.splitlines()) == 1
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_base_whose_outputs_overflow_is_bad_input(corpus: Corpus, tmp_path: Path) -> None:
    """Finite weights that overflow to inf in the forward pass: the base is bad input (exit 2)."""
    base = corpus.base_with("overflow.safetensors", fc__weight=torch.full((10, 32), 3e38))
    out = tmp_path / "out"
    result = invoke(["build", *corpus.args(base=base, extra=("--ignore-base-digest",)), "--out", str(out), "-q"])
    assert not out.exists()
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
    assert "not finite" in result.stderr

