"""The demo recipe (models/digits, recipes/digits.yaml) built into release packages.

* every task's held-out accuracy is the same for the masked reference and the
  exported ONNX, equals what the training script measured on the library
  network, and is far above chance;
* a second build (here in two processes, ``-j 2``) gives byte-identical model
  files and the same hashed manifest content;
* the recipe built as two shards and assembled equals the single-machine package;
* ``--layout triton`` makes a Triton model repository (each task's int8 network a model of its own);
* every task is also built in int8 (the recipe's ``quantize: [int8]``), within a point of float32;
* SIGTERM during a parallel build leaves nothing behind, and the rerun works.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bad_inputs import REPO, cli_env, invoke

RECIPE = REPO / "recipes" / "digits.yaml"
TRAINING = json.loads((REPO / "models" / "digits" / "training.json").read_text())
TASKS = [t["task"] for t in TRAINING["tasks"]]
FAST = ["--bench", "none", "-q"]


def _build(out: Path, *extra: str) -> dict:
    result = invoke(["build", str(RECIPE), "--out", str(out), *FAST, *extra])
    assert result.exit_code == 0, (result.stderr, result.exception)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "pkg"
    _build(out)
    return out


def _models(pkg: Path) -> dict[str, bytes]:
    return {p.relative_to(pkg).as_posix(): p.read_bytes() for p in sorted(pkg.rglob("*.onnx"))}


def test_package_layout_and_manifest(single: Path) -> None:
    manifest = json.loads((single / "manifest.json").read_text())
    content = manifest["content"]
    assert sorted(content["tasks"]) == sorted(TASKS) and "part" not in manifest
    assert content["recipe"]["path"] == "digits.yaml" and content["recipe"]["tasks"] == TASKS
    assert content["base"]["digest"].startswith("sha256:")
    for name in TASKS:
        entry = content["tasks"][name]
        assert entry["spa"]["path"] == f"../models/digits/{name}.spa"
        assert set(entry["artefacts"]) == {f"{name}/model.onnx", f"{name}/model.int8.onnx", f"{name}/check.safetensors"}
        assert entry["model_sha256"] == entry["artefacts"][f"{name}/model.onnx"]["sha256"]
        assert {f"{name}/report.json", f"{name}/report.md"} <= set(manifest["run"]["files"])
    assert (single / "summary.md").read_text().count("| yes |") == len(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_accuracy_reference_and_exported_agree_with_training(single: Path, task: str) -> None:
    report = json.loads((single / task / "report.json").read_text())
    acc = report["accuracy"]
    trained = next(t for t in TRAINING["tasks"] if t["task"] == task)
    assert acc["n"] == trained["test"] and acc["split"] == "held-out 30%"
    assert acc["reference"] == acc["exported"] and acc["agreeing_predictions"] == acc["n"]
    assert abs(acc["reference"] - trained["accuracy"]["spa"]) < 1e-9    # the library network's own accuracy
    assert acc["reference"] > 1 / trained["classes"] + 0.3              # far above chance
    assert report["verification"]["passed"] and report["params"]["pruned"] < report["params"]["dense"]
    assert abs(acc["int8"] - acc["reference"]) <= 0.01 and report["int8"]["gate"]["passed"]   # int8: within a point


def test_a_second_build_in_parallel_is_byte_identical(single: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    manifest = _build(again, "-j", "2")
    first = json.loads((single / "manifest.json").read_text())
    assert manifest["content"] == first["content"] and manifest["content_sha256"] == first["content_sha256"]
    assert _models(again) == _models(single)


def test_shards_assembled_equal_the_single_machine_package(single: Path, tmp_path: Path) -> None:
    parts = [tmp_path / "p1", tmp_path / "p2"]
    m1, m2 = _build(parts[0], "--shard", "1/2"), _build(parts[1], "--shard", "2/2")
    assert m1["part"]["tasks"] == TASKS[0::2] and m2["part"]["tasks"] == TASKS[1::2]
    result = invoke(["assemble", *map(str, parts), "--out", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.stderr
    assembled = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    first = json.loads((single / "manifest.json").read_text())
    assert assembled["content_sha256"] == first["content_sha256"] and "part" not in assembled
    assert _models(tmp_path / "pkg") == _models(single)
    assert sorted(p.name for p in (tmp_path / "pkg").iterdir()) == sorted(p.name for p in single.iterdir())


def test_parts_whose_processors_chose_other_roundings_are_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """round_to 'auto' follows the processor: an AVX2 runner's part and an AVX-512 one's differ."""
    from spa_export.stages.plan import rounding

    parts = [tmp_path / "p1", tmp_path / "p2"]
    monkeypatch.setattr(rounding, "cpu_flags", lambda: {"avx", "avx2", "avx512f"})
    _build(parts[0], "--shard", "1/2")
    monkeypatch.setattr(rounding, "cpu_flags", lambda: {"avx", "avx2"})
    _build(parts[1], "--shard", "2/2")
    result = invoke(["assemble", *map(str, parts), "--out", str(tmp_path / "pkg")])
    assert result.exit_code == 2 and not (tmp_path / "pkg").exists()
    assert "rounds channels to multiples of 8" in result.stderr and "to 16" in result.stderr
    assert "set round_to in the recipe" in result.stderr and result.stderr.count("\n") == 1


def test_triton_layout(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    _build(out, "--layout", "triton", "--task", "parity")
    assert (out / "parity" / "1" / "model.onnx").is_file() and not (out / "parity" / "model.onnx").exists()
    config = (out / "parity" / "config.pbtxt").read_text()
    assert config.startswith('name: "parity"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n')
    assert 'dims: [ 1, 8, 8 ]' in config and "dims: [ 2 ]" in config and "dynamic_batching { }" in config
    # the int8 network: a second model beside the task's, named for it, in the manifest with the task
    assert (out / "parity-int8" / "1" / "model.onnx").is_file() and not (out / "parity" / "model.int8.onnx").exists()
    assert (out / "parity-int8" / "config.pbtxt").read_text().startswith('name: "parity-int8"\n')
    artefacts = json.loads((out / "manifest.json").read_text())["content"]["tasks"]["parity"]["artefacts"]
    assert {"parity/1/model.onnx", "parity-int8/1/model.onnx", "parity-int8/config.pbtxt"} <= set(artefacts)
    result = invoke(["check", str(out)])   # the triton layout's model.onnx is found in its version folder
    assert result.exit_code == 0 and "1 of 1 tasks match" in result.stdout, result.stderr


def test_sigterm_during_a_parallel_build_leaves_nothing_and_the_rerun_works(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    proc = subprocess.Popen([sys.executable, "-m", "spa_export", "build", str(RECIPE), "--out", str(out),
                             "--bench", "none", "-j", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=cli_env(), start_new_session=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:               # wait until the workers are building tasks
        lines.append(line)
        if "verify ..." in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert code == 143, "".join(lines) + rest
    assert rest.splitlines()[-1] == "terminated (SIGTERM): nothing was written"
    assert list(tmp_path.iterdir()) == []
    deadline = time.monotonic() + 30         # the workers are gone too
    while time.monotonic() < deadline:
        alive = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, f"worker processes left: {alive}"
    _build(out)
    assert sorted(json.loads((out / "manifest.json").read_text())["content"]["tasks"]) == sorted(TASKS)


def test_a_part_never_replaces_the_whole_package(tmp_path: Path) -> None:
    """Without --out, a shard goes to its own folder beside the recipe's out; a --task selection is refused."""
    recipe = tmp_path / "release.yaml"
    text = RECIPE.read_text().replace("../models/", f"{REPO / 'models'}/").replace("out: ../out/digits", "out: pkg")
    recipe.write_text(text)
    whole = tmp_path / "pkg"
    whole.mkdir()
    (whole / "keep.txt").write_text("the whole package stays")
    result = invoke(["build", str(recipe), *FAST, "--shard", "2/3"])
    assert result.exit_code == 0, result.stderr
    part = tmp_path / "pkg-part-2-of-3"
    assert json.loads((part / "manifest.json").read_text())["part"]["tasks"] == [TASKS[1]]
    refused = invoke(["build", str(recipe), *FAST, "--task", TASKS[0]])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert f"--task without --out would replace the package {whole}" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "pkg-part-2-of-3", "release.yaml"]
    assert [p.name for p in whole.iterdir()] == ["keep.txt"]


def test_check_passes_on_the_plain_package(single: Path) -> None:
    """``spa-export check`` on the plain layout: each task's model.onnx against its stored cases."""
    result = invoke(["check", str(single)])
    assert result.exit_code == 0, result.stderr
    assert f"{len(TASKS)} of {len(TASKS)} tasks match" in result.stdout
