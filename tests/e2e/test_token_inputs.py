"""A network of token ids and a padding mask (two inputs, int64 and bool) builds exactly, from the CLI and a recipe.

``spa_export.examples:token_classifier``: an embedding of ids in [0, 50), a
2-layer ``nn.TransformerEncoder`` (width 32, 4 heads, MLP 64) that ignores
padded tokens, mean pooling. A ``groups`` SPA masks 2 of every 4 heads and
half of every MLP's hidden channels; the build removes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from spa_export.pack.synth import random_base, synth_spa
from spa_export.runtime.inputs import as_inputs
from spa_export.spa import read_spa, write_spa
from spa_export.stages.reference import build_reference

ROOT = Path(__file__).resolve().parents[2]
ARCH = "spa_export.examples:token_classifier"
SHAPES = ["ids:1,8:int64:0:50", "padding:1,8:bool"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spa_export", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    base = random_base(ARCH, as_inputs(SHAPES), seed=0)
    save_file(base, str(root / "base.safetensors"))
    write_spa(synth_spa(ARCH, as_inputs(SHAPES), prune=0.5, rank=4, seed=1, masks="groups", base_state=base),
              root / "task.spa")
    ids = np.array([[3, 49, 0, 7, 7, 12, 1, 2], [5, 6, 7, 8, 9, 10, 11, 12]], dtype=np.int64)
    padding = np.array([[0, 0, 0, 0, 0, 1, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1]], dtype=bool)
    np.savez(root / "mine.npz", ids=ids, padding=padding)
    np.savez(root / "outside.npz", ids=ids + 1, padding=padding)  # 49 + 1 is not a token id
    return root


def _shape_args(shapes: list[str]) -> list[str]:
    return [a for s in shapes for a in ("--input-shape", s)]


def test_token_ids_and_a_mask_build_exactly_and_lose_heads_and_hidden_channels(task: Path) -> None:
    out = task / "out"
    r = _run("build", "--base", str(task / "base.safetensors"), "--spa", str(task / "task.spa"), "--arch", ARCH,
             *_shape_args(SHAPES), "--input", str(task / "mine.npz"), "--bench", "cpu", "--budget", "0.05",
             "--batch", "2", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["inputs"] == [
        {"name": "ids", "shape": [1, 8], "dtype": "int64", "range": [0, 50]},
        {"name": "padding", "shape": [1, 8], "dtype": "bool"}]
    assert report["verification"]["passed"]
    assert [c["name"] for c in report["verification"]["cases"]] == ["random batch 1", "random batch 4",
                                                                    "input mine.npz"]
    assert {k: len(v["heads_kept"]) for k, v in report["plan"]["attention"].items()} == {
        "encoder.layers.0.self_attn": 2, "encoder.layers.1.self_attn": 2}
    assert report["macs"] == {"dense": 139424, "pruned": 69792}
    assert {(e["model"], e["batch"]) for e in report["latency"]} == {("dense", 2), ("pruned", 2)}
    assert "| Input ids | 1×8 int64 in [0, 50) |" in (out / "report.md").read_text()

    model = onnx.load(str(out / "model.onnx"))
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
        ("ids", onnx.TensorProto.INT64), ("padding", onnx.TensorProto.BOOL)]
    weights = Counter(tuple(t.dims) for t in model.graph.initializer if len(t.dims) == 2)
    # q, k, v: 16 of 32 rows each (2 heads); out_proj: 16 columns; MLP: 32 of 64 hidden; embedding; head
    assert weights == {(32, 16): 6, (16, 32): 2, (32, 32): 4, (50, 32): 1, (5, 32): 1}
    assert sum(a * b * n for (a, b), n in weights.items()) == 6 * 512 + 2 * 512 + 4 * 1024 + 1600 + 160

    # independent of the build: the masked network straight from base and SPA, on new ids and masks
    from safetensors.torch import load_file

    reference = build_reference(ARCH, load_file(str(task / "base.safetensors")), read_spa(task / "task.spa"))
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 50, size=(3, 8))
    padding = rng.random((3, 8)) < 0.4
    with torch.no_grad():
        want = reference(torch.from_numpy(ids), torch.from_numpy(padding)).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"ids": ids, "padding": padding})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_a_recipe_lists_its_inputs(task: Path) -> None:
    recipe = task / "tokens.yaml"
    recipe.write_text(
        f"base: base.safetensors\narch: {ARCH}\n"
        "input_shape:\n  - {name: ids, shape: [1, 8], dtype: int64, range: [0, 50]}\n  - padding:1,8:bool\n"
        "tasks:\n  - name: topic\n    spa: task.spa\n    inputs: [mine.npz]\n")
    r = _run("build", str(recipe), "--out", str(task / "package"), "-q")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((task / "package" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["content"]["recipe"]["inputs"]] == ["ids", "padding"]
    report = json.loads((task / "package" / "topic" / "report.json").read_text())
    assert report["verification"]["passed"] and len(report["verification"]["cases"]) == 3


@pytest.mark.parametrize(("args", "message"), [
    (["--input-shape", "ids:1,8:int64", "--input-shape", "padding:1,8:bool"],
     "give the range its values lie in"),
    (["--input-shape", "1,8", "--input-shape", "padding:1,8:bool"], "with several inputs, name each one"),
    (_shape_args(SHAPES) + ["--input", "outside.npz"], "value 50 at index [0, 1] is outside input 'ids''s range"),
    (_shape_args(SHAPES) + ["--input", "mine.npz", "--eval", "mine.npz"], "for a network of one float input"),
])
def test_bad_inputs_are_refused_before_anything_is_written(task: Path, args: list[str], message: str) -> None:
    out = task / "refused"
    args = [str(task / a) if a.endswith(".npz") else a for a in args]
    r = _run("build", "--base", str(task / "base.safetensors"), "--spa", str(task / "task.spa"), "--arch", ARCH,
             *args, "--out", str(out), "-q")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr
    assert not out.exists()


def test_synth_and_inspect_take_the_same_inputs(tmp_path: Path) -> None:
    spa, base = tmp_path / "t.spa", tmp_path / "b.safetensors"
    r = _run("synth", "--arch", ARCH, *_shape_args(SHAPES), "--save-base", str(base), "-o", str(spa))
    assert r.returncode == 0, r.stderr
    r = _run("inspect", str(spa), "--base", str(base), *_shape_args(SHAPES), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["dense_params"], info["pruned_params"]) == (19109, 10757)
    for command in (["synth", "--arch", ARCH, "-o", str(tmp_path / "x.spa")],
                    ["inspect", str(spa), "--base", str(base)]):
        r = _run(*command, "--input-shape", "1,8")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"--input-shape 1,8 does not fit '{ARCH}'" in r.stderr and "'padding'" in r.stderr, r.stderr
    assert not (tmp_path / "x.spa").exists()
