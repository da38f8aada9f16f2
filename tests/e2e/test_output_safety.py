"""No output option can delete or change a file spa-export did not write.

Each test lays out a user's folder (the inputs, a notes file, other work),
runs a command whose output points somewhere dangerous, and checks: exit 2,
one ``error:`` line that says why, and every byte of the whole folder as it
was. The shapes of ``--out`` are those of the issue that found the data loss:
``.``, ``""``, the inputs' folder, an ancestor of it, the current directory's
ancestor, a symbolic link, a folder that is not spa-export's, and an earlier
spa-export output that a user has added to or edited. Recipes' ``out`` and
the single-file outputs (``bench --json``, ``synth -o``/``--save-base``,
``engine --out``) follow the same rule. The positive cases show what may be
replaced: an empty folder and an intact earlier output.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from bad_inputs import EXAMPLE_BASE, EXAMPLE_SPA, invoke, tree

SHAPE = "1,3,32,32"


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A user's folder: the inputs, notes, and a sub-folder of other work."""
    w = tmp_path / "work"
    w.mkdir()
    shutil.copy(EXAMPLE_BASE, w / "base.safetensors")
    shutil.copy(EXAMPLE_SPA, w / "task.spa")
    (w / "notes.txt").write_text("three weeks of notes\n")
    (w / "data").mkdir()
    (w / "data" / "x.bin").write_bytes(os.urandom(64))
    return w


def _build(work: Path, out: str, *extra: str) -> list[str]:
    return ["build", "--base", str(work / "base.safetensors"), "--spa", str(work / "task.spa"),
            "--input-shape", SHAPE, "--out", out, "-q", *extra]


def _refused(args: list[str], watched: Path, *expect: str) -> str:
    before = tree(watched)
    result = invoke(args)
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in expect:
        assert fragment in lines[0], lines[0]
    assert tree(watched) == before, "a file changed"
    return lines[0]


def _earlier_output(work: Path, out: Path) -> None:
    result = invoke(_build(work, str(out)))
    assert result.exit_code == 0, result.stderr


def test_out_dot_is_the_current_directory(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work)
    _refused(_build(work, "."), work.parent, "--out .", "is the current directory")


def test_out_empty_string(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work)
    _refused(_build(work, ""), work.parent, "--out is empty", "unset shell variable")
    _refused(_build(work, "  "), work.parent, "--out is empty")


def test_out_is_the_inputs_folder(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _refused(_build(work, str(work)), tmp_path, f"--out {work}", "contains the input")


def test_out_is_an_ancestor_of_the_inputs(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    _refused(_build(work, str(tmp_path)), tmp_path, "contains the input")
    _refused(_build(work, str(work / "data" / "..")), tmp_path, "contains the input")


def test_out_contains_the_current_directory(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work / "data")
    _refused(_build(work, ".."), work.parent, "contains the current directory")


def test_out_holds_an_input_reached_through_a_link(work: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The SPA is given by a link from elsewhere; --out is the folder that really holds it."""
    links = tmp_path / "links"
    links.mkdir()
    (links / "task.spa").symlink_to(work / "task.spa")
    monkeypatch.chdir(links)
    args = ["build", "--base", str(work / "base.safetensors"), "--spa", str(links / "task.spa"),
            "--input-shape", SHAPE, "--out", str(work), "-q"]
    _refused(args, tmp_path, "contains the input")


def test_out_is_a_symbolic_link(work: Path, tmp_path: Path) -> None:
    target = tmp_path / "earlier"
    _earlier_output(work, target)          # even a link to spa-export's own output is refused
    link = tmp_path / "latest"
    link.symlink_to(target)
    _refused(_build(work, str(link)), tmp_path, "is a symbolic link", "give the folder itself")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    _refused(_build(work, str(dangling)), tmp_path, "is a symbolic link")


def test_out_is_a_folder_that_is_not_spa_exports(work: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.onnx").write_bytes(b"a model of their own")
    _refused(_build(work, str(theirs)), tmp_path, "is not a spa-export output", "give a new folder")


def test_earlier_output_with_a_users_file_added(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _earlier_output(work, out)
    (out / "notes.txt").write_text("my notes on this build\n")
    _refused(_build(work, str(out)), tmp_path, "holds files spa-export did not write: notes.txt")
    (out / "notes.txt").unlink()
    (out / "sub").mkdir()
    (out / "sub" / "deep.txt").write_text("deeper\n")
    _refused(_build(work, str(out)), tmp_path, "sub/deep.txt")


def test_earlier_output_with_a_file_edited(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _earlier_output(work, out)
    with open(out / "report.md", "a") as fh:
        fh.write("\nMy remarks on the report.\n")
    _refused(_build(work, str(out)), tmp_path, "report.md was changed after spa-export wrote it")


def test_earlier_output_with_a_link_inside(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _earlier_output(work, out)
    (out / "data").symlink_to(work / "data")
    _refused(_build(work, str(out)), tmp_path, "links or special files", "data")


def test_a_forged_marker_does_not_make_a_folder_replaceable(work: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("\\documentclass{article}\n")
    (theirs / ".spa-export").write_text(json.dumps({"tool": "spa-export", "files": {}}))
    _refused(_build(work, str(theirs)), tmp_path, "thesis.tex")
    (theirs / ".spa-export").write_text(json.dumps({"tool": "spa-export", "files": {
        "thesis.tex": {"size": 1, "sha256": "sha256:" + "0" * 64}}}))
    _refused(_build(work, str(theirs)), tmp_path, "thesis.tex was changed")


def test_an_empty_folder_and_an_intact_earlier_output_are_replaced(work: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(_build(work, str(empty)))
    assert result.exit_code == 0, result.stderr
    first = (empty / "report.json").read_bytes()
    result = invoke(_build(work, str(empty), "--seed", "1"))
    assert result.exit_code == 0, result.stderr
    assert (empty / "report.json").read_bytes() != first
    assert json.loads((empty / "report.json").read_text())["verification"]["passed"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "work"]


# ------------------------------------------------------------------ recipes' out

def _recipe(folder: Path, work: Path, out: str) -> Path:
    path = folder / "release.yaml"
    path.write_text(f"base: {work / 'base.safetensors'}\ninput_shape: {SHAPE}\nout: '{out}'\n"
                    f"tasks:\n  - name: t\n    spa: {work / 'task.spa'}\n")
    return path


def test_recipe_out_is_the_recipes_folder(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(work, work, ".")
    _refused(["build", str(recipe), "-q"], tmp_path, "contains the input")


def test_recipe_out_is_an_ancestor(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    recipe = _recipe(work, work, "..")
    _refused(["build", str(recipe), "-q"], tmp_path, f"--out {tmp_path}", "contains the input")


def test_recipe_out_is_a_foreign_folder_or_empty(work: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("keep\n")
    _refused(["build", str(_recipe(tmp_path, work, "theirs")), "-q"], tmp_path, "is not a spa-export output")
    _refused(["build", str(_recipe(tmp_path, work, "ok")), "--out", "", "-q"], tmp_path, "--out is empty")


# ------------------------------------------------------------------ single output files

@pytest.fixture()
def onnx_model(work: Path, tmp_path: Path) -> Path:
    out = tmp_path / "built"
    _earlier_output(work, out)
    return out / "model.onnx"


def test_bench_json_never_overwrites_a_model_or_an_existing_file(onnx_model: Path, tmp_path: Path) -> None:
    fast = ["--batch", "1", "--budget", "0.05", "--quiet"]
    _refused(["bench", str(onnx_model), *fast, "--json", str(onnx_model)], tmp_path, "is the input")
    _refused(["bench", str(onnx_model), *fast, "--json", str(onnx_model), "--force"], tmp_path, "is the input")
    notes = tmp_path / "work" / "notes.txt"
    _refused(["bench", str(onnx_model), *fast, "--json", str(notes)], tmp_path, "exists", "--force")
    _refused(["bench", str(onnx_model), *fast, "--json", str(tmp_path / "work")], tmp_path, "is a directory")
    result = invoke(["bench", str(onnx_model), *fast, "--json", str(notes), "--force"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(notes.read_text())["latency"]


def test_synth_never_writes_over_its_base(work: Path, tmp_path: Path) -> None:
    base = work / "base.safetensors"
    args = ["synth", "--arch", "spa_export.examples:tiny_resnet", "--input-shape", SHAPE, "--base", str(base)]
    _refused([*args, "-o", str(base)], tmp_path, "is the input")
    _refused([*args, "-o", str(base), "--force"], tmp_path, "is the input")
    _refused([*args, "-o", str(work / "task.spa")], tmp_path, "exists", "--force")
    save = ["synth", "--arch", "spa_export.examples:tiny_resnet", "--input-shape", SHAPE]
    _refused([*save, "--save-base", str(base), "-o", str(tmp_path / "new.spa")], tmp_path, "--save-base", "exists")
    _refused([*save, "--save-base", str(tmp_path / "same"), "-o", str(tmp_path / "same")], tmp_path,
             "--save-base", "is the input")


def test_engine_out_never_replaces_an_existing_file(onnx_model: Path, tmp_path: Path) -> None:
    existing = tmp_path / "work" / "notes.engine"
    existing.write_bytes(b"an engine built elsewhere")
    _refused(["engine", str(onnx_model), "--out", str(existing)], tmp_path, "exists", "--force")
    _refused(["engine", str(onnx_model), "--out", ""], tmp_path, "--out is empty")
