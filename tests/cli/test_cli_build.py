"""The command line as a user meets it: the shipped example, exit codes, help without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spa_export", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _build_example(example: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``spa-export build`` of the shipped tiny example into ``out``."""
    return _run("build", "--base", str(example / "tiny_resnet.safetensors"), "--spa",
                str(example / "tiny_resnet-example.spa"), "--input-shape", "1,3,32,32", "--out", str(out),
                *extra)


def _skip_on_a_gpu_machine() -> None:
    from spa_export.runtime.tensorrt import gpu_unavailable_reason
    from spa_export.runtime.torch_cuda import cuda_unavailable_reason

    if gpu_unavailable_reason() is None or cuda_unavailable_reason() is None:
        pytest.skip("this machine has a GPU (TensorRT or PyTorch with CUDA)")


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("example")
    for name in ("tiny_resnet.safetensors", "tiny_resnet-example.spa"):
        shutil.copy(ROOT / "models" / name, root / name)
    return root


def test_help_is_instant_and_imports_no_torch():
    code = ("import sys\nfrom spa_export.cli.main import main\nsys.argv=['spa-export','--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "build" in out.stdout and "synth" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_build_the_shipped_example(example):
    out = example / "out"
    r = _build_example(example, out, "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [".spa-export", "model.onnx", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["passed"]
    # The example's masks are output-only at 50%: half of every prunable group goes, constants folded in.
    assert [(g["id"], g["channels"], g["kept"]) for g in report["groups"] if g["removed"]] == [
        (g["id"], g["channels"], g["channels"] // 2) for g in report["groups"] if g["removed"]]
    assert report["params"]["pruned"] < 0.3 * report["params"]["dense"]
    assert "model.onnx" in r.stdout
    assert r.stderr == ""  # -q: no progress


def test_verification_failure_exits_1_and_publishes_nothing(example):
    out = example / "strict"
    r = _build_example(example, out,
             "--rtol", "1e-15", "--atol", "1e-15", "-q")
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: model.onnx differs from the masked network")
    assert "expected" in r.stderr and "got" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert not list(example.glob(".strict.staging-*"))


def test_synth_then_inspect(tmp_path):
    spa, base = tmp_path / "t.spa", tmp_path / "b.safetensors"
    r = _run("synth", "--arch", "spa_export.examples:tiny_resnet", "--input-shape", "1,3,32,32", "--prune", "0.25",
             "--rank", "2", "--save-base", str(base), "-o", str(spa))
    assert r.returncode == 0, r.stderr
    r = _run("inspect", str(spa), "--base", str(base), "--input-shape", "1,3,32,32", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["arch"] == "spa_export.examples:tiny_resnet"
    conv = next(layer for layer in info["layers"] if layer["name"] == "stem.0")
    assert (conv["out"], conv["out_kept"], conv["rank"]) == (16, 12, 2)
    assert info["pruned_params"] < info["dense_params"]
    assert 0 < info["ratio_vs_finetune"] < 0.2


def test_round_to_keeps_multiples(example, tmp_path):
    out = tmp_path / "r8"
    r = _build_example(example, out,
             "--round-to", "16", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["passed"] and report["plan"]["round_to"] == 16
    assert all(g["kept"] % 16 == 0 or g["kept"] == g["channels"] for g in report["groups"])


def test_gpu_alone_without_a_gpu_is_refused_up_front(example, tmp_path):
    pytest.importorskip("onnxruntime")
    _skip_on_a_gpu_machine()
    out = tmp_path / "gpu"
    r = _build_example(example, out,
             "--bench", "gpu", "-q")
    assert r.returncode == 2
    assert r.stderr.startswith("error: --bench gpu: ") and "Traceback" not in r.stderr
    assert "PyTorch cannot time it either" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()


def test_bench_all_without_a_gpu_times_the_cpu_and_says_why_not_the_gpu(example, tmp_path):
    _skip_on_a_gpu_machine()
    out = tmp_path / "all"
    r = _build_example(example, out,
             "--bench", "all", "--budget", "0.05", "--batch", "1", "--batch", "2", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["gpu"]["status"] == "skipped" and report["gpu"]["reason"]
    cpu = [e for e in report["latency"] if e["device"] == "cpu"]
    assert sorted((e["model"], e["batch"]) for e in cpu) == [("dense", 1), ("dense", 2), ("pruned", 1),
                                                             ("pruned", 2)]
    assert all(e["p50_ms"] <= e["p90_ms"] <= e["p99_ms"] and e["iterations"] >= 10 for e in cpu)
    assert {s["batch"] for s in report["speedup"]} == {1, 2}
    assert (out / "dense.onnx").is_file() and (out / "latency.png").is_file()
    assert "latency.png" in (out / "report.md").read_text()


def test_an_internal_error_is_one_line_not_a_traceback(monkeypatch, example, tmp_path):
    from click.testing import CliRunner

    import spa_export.stages.pipeline
    from spa_export.cli.main import _register, cli

    def broken(opts):
        raise RuntimeError("something we did not foresee")

    monkeypatch.setattr(spa_export.stages.pipeline, "build", broken)
    _register()
    result = CliRunner().invoke(cli, ["build", "--base", str(example / "tiny_resnet.safetensors"), "--spa",
                                      str(example / "tiny_resnet-example.spa"), "--input-shape", "1,3,32,32",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "internal error (RuntimeError: something we did not foresee)" in result.output
    assert "Traceback" not in result.output


@pytest.mark.gpu
def test_bench_gpu_with_pytorch_cuda_times_dense_and_pruned(example, tmp_path):
    from spa_export.runtime.tensorrt import gpu_unavailable_reason
    from spa_export.runtime.torch_cuda import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a CUDA device visible to PyTorch: {reason}")
    if gpu_unavailable_reason() is None:
        pytest.skip("TensorRT is installed: --bench gpu uses it instead of PyTorch")
    out = tmp_path / "gpu"
    r = _build_example(example, out,
             "--bench", "gpu", "--budget", "0.1", "--batch", "1", "--batch", "8", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    gpu = [e for e in report["latency"] if e["device"] == "gpu" and e["runtime"] == "torch-cuda"]
    assert {(e["runtime"], e["model"], e["precision"], e["batch"]) for e in gpu} == {
        ("torch-cuda", m, p, b) for m in ("dense", "pruned") for p in ("fp32", "fp16") for b in (1, 8)}
    # where onnxruntime-gpu is installed its CUDA provider is timed too, in rows of its own
    assert {e["runtime"] for e in report["latency"] if e["device"] == "gpu"} <= {"torch-cuda", "onnxruntime"}
    assert report["gpu_numerics"] and all(n["passed"] for n in report["gpu_numerics"])
    assert report["rounding"]["multiple"] == 8  # the GPU target: fp16 tensor-core multiples
    assert "torch-cuda fp16" in (out / "report.md").read_text()


@pytest.mark.gpu
def test_bench_gpu_with_tensorrt_builds_engines_and_times_them(example, tmp_path):
    """The build pipeline with TensorRT: engines of dense and pruned in fp32 and fp16, checked and timed."""
    from spa_export.runtime.tensorrt import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {reason}")
    out = tmp_path / "trt"
    r = _build_example(example, out, "--bench", "gpu", "--budget", "0.1", "--batch", "1", "--batch", "8", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    trt = [e for e in report["latency"] if e["device"] == "gpu" and e["runtime"] == "tensorrt"]
    assert {(e["model"], e["precision"], e["batch"]) for e in trt} == {
        (m, p, b) for m in ("dense", "pruned") for p in ("fp32", "fp16") for b in (1, 8)}
    assert all(e["host_memory"] == "pageable" for e in trt)
    assert report["gpu_numerics"] and all(n["passed"] for n in report["gpu_numerics"])
