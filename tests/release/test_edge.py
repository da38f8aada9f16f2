"""The edge layout: the demo recipe as one base and three deltas, materialized without torch.

* the package holds the base once and no task network; each delta materializes to the file the
  build verified (sha256 equal to the manifest's), which computes what the reference computed;
* ``spa-export check`` passes on it, and fails (exit 1) when a stored output is wrong;
* one flipped byte of a delta or of the base, a delta of another base or of an unknown format
  version: exit 2, one line naming the file, nothing written;
* with torch blocked, ``materialize`` and ``check`` still run (the runtime half).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import spa_export

REPO = Path(spa_export.__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "digits.yaml"
TASKS = ["new-digits", "rotated", "parity"]


def invoke(args: list[str]):
    from click.testing import CliRunner

    from spa_export.cli.main import _register, cli

    _register()
    return CliRunner().invoke(cli, args, prog_name="spa-export")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edge") / "pkg"
    result = invoke(["build", str(RECIPE), "--layout", "edge", "--out", str(out), "--bench", "none", "-q"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    return out


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _copy(edge: Path, tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    shutil.copytree(edge, pkg)
    return pkg


def test_the_package_carries_the_base_once_and_each_task_as_a_delta(edge: Path) -> None:
    manifest = json.loads((edge / "manifest.json").read_text())
    content = manifest["content"]
    assert content["recipe"]["layout"] == "edge"
    # no float32 network ships whole; the int8 one (the recipe's quantize: [int8]) does, made by quantization
    assert sorted(p.name for p in edge.rglob("*.onnx")) == ["model.int8.onnx"] * 3
    base = edge / "base.safetensors"
    assert content["base_file"] == {"path": "base.safetensors", "sha256": _sha(base.read_bytes()),
                                    "size": base.stat().st_size}
    for task in TASKS:
        files = {p.name for p in (edge / task).iterdir()}
        assert files == {"delta.safetensors", "check.safetensors", "model.int8.onnx", "report.json", "report.md"}, files
        entry = content["tasks"][task]
        assert set(entry["artefacts"]) == {f"{task}/delta.safetensors", f"{task}/check.safetensors",
                                           f"{task}/model.int8.onnx"}
        report = json.loads((edge / task / "report.json").read_text())
        # most weights come from the base; what is stored is small beside the network
        assert report["delta"]["from_base"] >= 0.8 * report["delta"]["weights"], report["delta"]
        assert report["delta"]["bytes"] < 0.6 * report["delta"]["model_bytes"], report["delta"]


def test_materialize_gives_the_verified_file_of_every_task(edge: Path, tmp_path: Path) -> None:
    content = json.loads((edge / "manifest.json").read_text())["content"]
    for task in TASKS:
        out = tmp_path / f"{task}.onnx"
        result = invoke(["materialize", str(edge), task, "-o", str(out)])
        assert result.exit_code == 0, result.stderr
        assert _sha(out.read_bytes()) == content["tasks"][task]["model_sha256"]


def test_the_materialized_file_runs_as_the_reference_computed(edge: Path) -> None:
    from spa_export.runtime.check import read_cases
    from spa_export.runtime.packaged import open_package, task_session

    pkg = open_package(edge)
    for task in TASKS:
        session = task_session(pkg, task)   # from memory, no file
        cases = read_cases(task, (edge / task / "check.safetensors").read_bytes())
        for _, arrays, expected in cases.cases:
            got = session.run(None, arrays)[0]
            np.testing.assert_allclose(got, expected[0], rtol=1e-4, atol=1e-4 * np.abs(expected[0]).max())


def test_check_passes_on_the_package_and_prints_a_row_per_task(edge: Path) -> None:
    result = invoke(["check", str(edge)])
    assert result.exit_code == 0, result.stderr
    for task in TASKS:
        assert any(line.startswith(task) and line.endswith("pass") for line in result.stdout.splitlines())
    assert "3 of 3 tasks match" in result.stdout


def test_check_fails_with_exit_1_where_an_output_differs(edge: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load, save

    pkg = _copy(edge, tmp_path)
    path = pkg / "parity" / "check.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    tensors = load(data)
    tensors["case0/output0"] = tensors["case0/output0"] + 0.5   # what the reference "computed" is now off
    path.write_bytes(save(tensors, metadata=meta))
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["content"]["tasks"]["parity"]["artefacts"]["parity/check.safetensors"]["sha256"] = _sha(path.read_bytes())
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    result = invoke(["check", str(pkg)])
    assert result.exit_code == 1
    assert "parity" in result.stderr and "1 of 3 tasks differ" in result.stderr
    assert any(line.startswith("new-digits") and line.endswith("pass") for line in result.stdout.splitlines())


@pytest.mark.parametrize("victim", ["parity/delta.safetensors", "base.safetensors"])
def test_one_flipped_byte_is_refused_and_nothing_is_written(edge: Path, tmp_path: Path, victim: str) -> None:
    pkg = _copy(edge, tmp_path)
    path = pkg / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    out = tmp_path / "model.onnx"
    result = invoke(["materialize", str(pkg), "parity", "-o", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and victim in lines[0] and "changed since the build" in lines[0], lines
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    assert invoke(["check", str(pkg), "--task", "parity"]).exit_code == 2


def _rewrite_delta(pkg: Path, task: str, change: dict) -> None:
    from spa_export.runtime.delta import delta_bytes, read_delta

    path = pkg / task / "delta.safetensors"
    delta = read_delta(path)
    delta.meta.update(change)
    path.write_bytes(delta_bytes(delta))
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["content"]["tasks"][task]["artefacts"][f"{task}/delta.safetensors"]["sha256"] = _sha(path.read_bytes())
    (pkg / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("change", "said"), [
    ({"base_digest": "sha256:" + "0" * 64}, "made for base sha256:0000"),
    ({"version": 99}, "delta format version 99"),
])
def test_a_delta_of_another_base_or_version_is_refused(edge: Path, tmp_path: Path, change: dict, said: str) -> None:
    pkg = _copy(edge, tmp_path)
    _rewrite_delta(pkg, "rotated", change)
    out = tmp_path / "model.onnx"
    result = invoke(["materialize", str(pkg), "rotated", "-o", str(out)])
    assert result.exit_code == 2 and said in result.stderr and "rotated/delta.safetensors" in result.stderr
    assert not out.exists()


def test_a_truncated_delta_is_refused(edge: Path, tmp_path: Path) -> None:
    from spa_export.runtime.delta import read_delta
    from spa_export.safety.errors import InputError

    data = (edge / "parity" / "delta.safetensors").read_bytes()
    with pytest.raises(InputError, match="not a readable delta"):
        read_delta("parity/delta.safetensors", data[: len(data) // 2])


BLOCKED = textwrap.dedent('''
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (imported: {name})")

    sys.meta_path.insert(0, BlockTorch())
    from spa_export.cli.main import main
    sys.argv = ["spa-export", *sys.argv[1:]]
    try:
        main()
    finally:
        print("TORCH_ABSENT" if "torch" not in sys.modules else "TORCH_LOADED")
''')


def test_materialize_and_check_run_without_torch(edge: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = tmp_path / "parity.onnx"
    for args in (["materialize", str(edge), "parity", "-o", str(out)], ["check", str(edge)]):
        done = subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, timeout=120,
                              env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "TORCH_ABSENT" in done.stdout
    content = json.loads((edge / "manifest.json").read_text())["content"]
    assert _sha(out.read_bytes()) == content["tasks"]["parity"]["model_sha256"]


@pytest.mark.gpu
def test_check_on_the_gpu_runs_every_gpu_runtime_here(edge: Path) -> None:
    from spa_export.runtime.onnxrt import cuda_provider_available
    from spa_export.runtime.tensorrt import gpu_unavailable_reason

    trt = gpu_unavailable_reason()
    if trt is not None and not cuda_provider_available():
        pytest.skip(f"no GPU runtime here: no CUDA provider in ONNX Runtime, and TensorRT: {trt}")
    result = invoke(["check", str(edge), "--device", "gpu"])
    assert result.exit_code == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(tuple(TASKS))]
    if trt is None:   # TensorRT fp32 and fp16 engines of every task, within their precision's tolerance
        assert sum("tensorrt" in r for r in rows) == 2 * len(TASKS)


def test_check_on_a_machine_without_a_gpu_says_why(edge: Path) -> None:
    from spa_export.runtime.onnxrt import cuda_provider_available
    from spa_export.runtime.tensorrt import gpu_unavailable_reason

    if cuda_provider_available() or gpu_unavailable_reason() is None:
        pytest.skip("this machine has a GPU runtime")
    result = invoke(["check", str(edge), "--device", "gpu"])
    assert result.exit_code == 2 and "no CUDA execution provider" in result.stderr and "TensorRT" in result.stderr
