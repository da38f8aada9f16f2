"""Interrupted builds leave ``--out`` exactly as it was.

Real ``spa-export build`` processes on the shipped example get SIGINT or
SIGKILL at a time after start or when stderr shows a given stage line. The
process runs through ``held_cli.py``, which pauses just before publication, so
that on a slow machine the signal still lands before the output exists (the
example builds in seconds). Then:

* ``--out`` is byte-identical to what it was before: absent, or a complete
  earlier build;
* SIGINT: exit code 130, one ``interrupted:`` line (the last on stderr), no
  traceback, and no staging directory left behind;
* SIGTERM (a CI runner cancelling the job): the same, with exit code 143 and
  a ``terminated (SIGTERM):`` line;
* SIGKILL: the process cannot clean up, so a hidden ``.out.staging-*``
  directory beside ``--out`` may remain; ``--out`` itself must be untouched,
  and the next build must still work.

One more run pauses right after publication instead: SIGINT then exits 130
saying that the output was written in full, and ``--out`` is the new build.

The runs go side by side (each pays the interpreter and torch start-up), in
a module fixture; the tests then check one run each.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from bad_inputs import EXAMPLE_BASE, EXAMPLE_SPA, HERE, cli_env, invoke, tree
from held_cli import PUBLISHED

MESSAGES = {signal.SIGINT: "interrupted: nothing was written",
            signal.SIGTERM: "terminated (SIGTERM): nothing was written"}
PROGRESS = re.compile(r"^(\[\d+/\d+\] \w+ \.\.\.|      .*)$")   # stage lines of StageProgress


@dataclass(frozen=True)
class Scenario:
    id: str
    sig: signal.Signals
    when: float | str           # seconds after start, or the start of a stderr line
    over_complete: bool         # --out holds a complete earlier build
    hold: str = "before-publish"  # where held_cli.py pauses


SCENARIOS = [
    Scenario("sigint-0.5s", signal.SIGINT, 0.5, False),
    Scenario("sigint-4s", signal.SIGINT, 4.0, True),
    Scenario("sigint-export", signal.SIGINT, "[6/8] export", True),
    Scenario("sigint-verify", signal.SIGINT, "[7/8] verify", False),
    Scenario("sigterm-load", signal.SIGTERM, "[1/8] load", True),
    Scenario("sigterm-verify", signal.SIGTERM, "[7/8] verify", False),
    Scenario("sigkill-1s", signal.SIGKILL, 1.0, True),
    Scenario("sigkill-export", signal.SIGKILL, "[6/8] export", False),
    Scenario("sigkill-verify", signal.SIGKILL, "[7/8] verify", True),
]
AFTER_PUBLISH = [Scenario("sigint-after-publish", signal.SIGINT, PUBLISHED, True, hold="after-publish"),
                 Scenario("sigterm-after-publish", signal.SIGTERM, PUBLISHED, True, hold="after-publish")]


@dataclass
class Run:
    fired: bool
    seen: str                   # the last stderr line before the signal
    code: int
    stdout: str
    stderr: str
    before: object
    after: object
    out: Path


def _build_args(out: Path) -> list[str]:
    return [sys.executable, str(HERE / "held_cli.py"), "build", "--base", str(EXAMPLE_BASE), "--spa", str(EXAMPLE_SPA),
            "--input-shape", "1,3,32,32", "--bench", "none", "--out", str(out)]


def _run(s: Scenario, work: Path, complete: Path) -> Run:
    work.mkdir(parents=True)
    out = work / "out"
    if s.over_complete:
        shutil.copytree(complete, out)
    before = tree(out)
    # one intra-op thread each: three builds share the machine, more threads would only spin
    proc = subprocess.Popen(_build_args(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(extra={"OMP_NUM_THREADS": "1", "SPA_EXPORT_TEST_HOLD": s.hold}))
    lines: list[str] = []
    at_stage = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if isinstance(s.when, str) and line.startswith(s.when):
                at_stage.set()
        at_stage.set()  # end of output: the process is gone

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if isinstance(s.when, str):
        at_stage.wait(timeout=240)
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=s.when)
    fired = proc.poll() is None
    seen = lines[-1].rstrip("\n") if lines else ""
    if fired:
        proc.send_signal(s.sig)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    reader.join(timeout=30)
    assert proc.stdout is not None
    return Run(fired, seen, code, proc.stdout.read(), "".join(lines), before, tree(out), out)


@pytest.fixture(scope="module")
def runs(complete_build: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    # A shell that starts a job in the background sets SIGINT to "ignore", and
    # children inherit that: make sure ours can be interrupted at all.
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    root = tmp_path_factory.mktemp("interrupt")
    try:
        # the earliest signal lands during start-up: give that run the machine to itself
        early = [s for s in SCENARIOS if isinstance(s.when, float) and s.when < 1.0]
        done = {s.id: _run(s, root / s.id, complete_build) for s in early}
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {s.id: pool.submit(_run, s, root / s.id, complete_build)
                       for s in [*SCENARIOS, *AFTER_PUBLISH] if s not in early}
            done.update((k, f.result()) for k, f in futures.items())
        return done
    finally:
        if previous == signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_interrupted_build_leaves_out_as_it_was(scenario: Scenario, runs: dict[str, Run]) -> None:
    r = runs[scenario.id]
    assert r.fired, f"the build ended (exit {r.code}) before the signal could be sent:\n{r.stderr}"
    assert r.after == r.before, f"--out changed (signal after: {r.seen!r})"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    beside = sorted(p.name for p in r.out.parent.iterdir() if p.name != "out")
    if scenario.sig in MESSAGES:
        assert r.code == 128 + scenario.sig, f"exit {r.code} (signal after: {r.seen!r}):\n{r.stderr}"
        lines = r.stderr.splitlines()
        assert lines[-1] == MESSAGES[scenario.sig], r.stderr
        others = [line for line in lines[:-1] if not PROGRESS.match(line)]
        assert not others, f"unexpected stderr lines {others}"
        assert beside == [], f"left behind: {beside}"
    else:
        assert r.code == -signal.SIGKILL
        # killed outright: no cleanup can run, so a staging directory may remain, but only that
        assert all(name.startswith(".out.staging-") for name in beside), beside


@pytest.mark.parametrize("scenario", AFTER_PUBLISH, ids=lambda s: s.id)
def test_interrupt_after_publication_says_the_output_is_complete(scenario: Scenario, runs: dict[str, Run]) -> None:
    r = runs[scenario.id]
    assert r.fired, f"the build ended (exit {r.code}) before the signal could be sent:\n{r.stderr}"
    assert r.code == 128 + scenario.sig, r.stderr
    word = "interrupted" if scenario.sig == signal.SIGINT else "terminated"
    assert r.stderr.splitlines()[-1] == f"{word}: {r.out} was already written in full", r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert isinstance(r.after, dict) and isinstance(r.before, dict)
    assert sorted(r.after) == [".spa-export", "model.onnx", "report.json", "report.md"]
    # a new build, not the earlier one: the stage times in report.json always differ
    assert r.after["report.json"] != r.before["report.json"]
    assert json.loads((r.out / "report.json").read_text())["verification"]["passed"] is True
    assert sorted(p.name for p in r.out.parent.iterdir()) == ["out"]


def test_build_after_a_killed_build(runs: dict[str, Run]) -> None:
    """A staging directory left by SIGKILL does not stand in the way of the next build."""
    r = runs["sigkill-export"]
    result = invoke(["build", "--base", str(EXAMPLE_BASE), "--spa", str(EXAMPLE_SPA), "--input-shape",
                     "1,3,32,32", "--bench", "none", "--out", str(r.out), "-q"])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in r.out.iterdir()) == [".spa-export", "model.onnx", "report.json", "report.md"]

