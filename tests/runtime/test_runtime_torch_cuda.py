"""PyTorch's CUDA timing path: refused here with the reason, timed and checked where CUDA exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spa_export.runtime.bench import GPU_TOLERANCE, benchmark
from spa_export.runtime.tensorrt import gpu_unavailable_reason
from spa_export.runtime.timing import TimingConfig
from spa_export.runtime.torch_cuda import TorchCudaRunner, cuda_unavailable_reason
from spa_export.safety.errors import InputError

FAST = TimingConfig(budget_s=0.05, warmup_runs=1, min_iterations=5, block_runs=5)
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device visible to PyTorch "
                                                     "(torch.cuda.is_available() is False here)")


def _net(width: int) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5)).eval()


def _onnx(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      dynamo=False)
    return path


def test_the_reason_matches_what_torch_sees() -> None:
    reason = cuda_unavailable_reason()
    assert (reason is None) == HAS_CUDA
    if reason is not None:
        assert "CUDA" in reason


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_runner_without_cuda_is_refused_with_the_reason() -> None:
    runner = TorchCudaRunner(_net(4), (1, 3, 16, 16), name="dense")
    with pytest.raises(InputError, match="cannot time on the GPU with PyTorch: "):
        runner.activate()
    assert not runner.is_active


@pytest.mark.skipif(HAS_CUDA or gpu_unavailable_reason() is None, reason="this machine has a GPU")
def test_gpu_benchmark_of_networks_without_any_gpu_names_both_reasons(tmp_path: Path) -> None:
    nets = {"dense": _net(8), "pruned": _net(4)}
    models = {k: _onnx(m, tmp_path / f"{k}.onnx") for k, m in nets.items()}
    with pytest.raises(InputError) as err:
        benchmark(models, device="gpu", timing=FAST, networks=nets, sample_shape=(1, 3, 16, 16))
    text = str(err.value)
    assert text.startswith("cannot benchmark on the GPU: ")
    assert gpu_unavailable_reason() in text and cuda_unavailable_reason() in text


def test_runner_refuses_an_unknown_precision() -> None:
    with pytest.raises(InputError, match="precision 'int8'"):
        TorchCudaRunner(_net(4), (1, 3, 16, 16), precision="int8")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_runner_matches_the_cpu_network(precision: str) -> None:
    net = _net(8)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16), dtype=np.float32)
    want = net(torch.from_numpy(x)).detach().numpy()
    with TorchCudaRunner(net, (1, 3, 16, 16), precision=precision, name="dense") as runner:
        got, seconds, extras = runner.infer_timed({"input": x})
        info = runner.describe()
    rtol, atol = GPU_TOLERANCE[precision]
    scale = float(np.abs(want).max())
    assert np.abs(got["output"] - want).max() <= atol * scale + rtol * np.abs(want).max()
    assert seconds > 0 and set(extras) == {"h2d_ms", "d2h_ms"}
    assert info["runtime"] == "torch-cuda" and info["precision"] == precision
    assert next(net.parameters()).device.type == "cpu"  # the caller's network is not moved


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="TensorRT is installed: it takes precedence")
def test_gpu_benchmark_times_both_networks_in_both_precisions(tmp_path: Path) -> None:
    nets = {"dense": _net(32), "pruned": _net(8)}
    models = {k: _onnx(m, tmp_path / f"{k}.onnx") for k, m in nets.items()}
    result = benchmark(models, device="gpu", batches=(1, 8), timing=FAST, networks=nets,
                       sample_shape=(1, 3, 16, 16))
    gpu = [e for e in result["latency"] if e["device"] == "gpu" and e["runtime"] == "torch-cuda"]
    assert sorted((e["model"], e["precision"], e["batch"]) for e in gpu) == sorted(
        (m, p, b) for m in ("dense", "pruned") for p in ("fp32", "fp16") for b in (1, 8))
    assert all(e["p50_ms"] > 0 and e["h2d_ms"] is not None for e in gpu)
    assert {(r["model"], r["precision"]) for r in result["gpu_numerics"]} == {
        (m, p) for m in ("dense", "pruned") for p in ("fp32", "fp16")}
    assert all(r["passed"] for r in result["gpu_numerics"])
    # ONNX Runtime's CUDA provider adds rows of its own where onnxruntime-gpu is installed
    assert {(s["runtime"], s["precision"]) for s in result["speedup"]
            if s["device"] == "gpu" and s["runtime"] == "torch-cuda"} == {("torch-cuda", "fp32"), ("torch-cuda", "fp16")}
    assert {e["runtime"] for e in result["latency"] if e["device"] == "gpu"} <= {"torch-cuda", "onnxruntime"}
    assert all(e["cuda_graphs"] == gpu[0]["cuda_graphs"] for e in gpu)   # dense and pruned in one mode
