"""benchmark(): the API the build pipeline and the CLI call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import make_conv

from spa_export.runtime.bench import benchmark, random_feed, speedups
from spa_export.runtime.onnxrt import cuda_provider_available
from spa_export.runtime.tensorrt import gpu_unavailable_reason
from spa_export.runtime.timing import TimingConfig
from spa_export.safety.errors import InputError

FAST = TimingConfig(budget_s=0.05, warmup_runs=1, min_iterations=5, block_runs=5)
ENTRY_KEYS = {"device", "runtime", "provider", "model", "batch", "threads", "opt_level",
              "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "iterations",
              "throughput_per_s"}


@pytest.fixture()
def pair(tmp_path: Path) -> dict[str, Path]:
    return {"dense": make_conv(tmp_path / "dense.onnx", 32),
            "pruned": make_conv(tmp_path / "pruned.onnx", 8)}


def test_cpu_benchmark_entries(pair: dict[str, Path]) -> None:
    result = benchmark(pair, device="cpu", batches=(4, 1), threads=1, timing=FAST)
    assert set(result) >= {"latency", "speedup", "environment", "gpu"}
    latency = result["latency"]
    assert [(e["model"], e["batch"]) for e in latency] == [
        ("dense", 1), ("pruned", 1), ("dense", 4), ("pruned", 4)]
    for e in latency:
        assert set(e) >= ENTRY_KEYS
        assert e["device"] == "cpu" and e["runtime"] == "onnxruntime"
        assert e["provider"] == "CPUExecutionProvider"
        assert e["threads"] == 1 and e["opt_level"] == "all"
        assert e["iterations"] >= FAST.min_iterations
        assert 0 < e["p50_ms"] <= e["p90_ms"] <= e["p99_ms"]
        assert e["throughput_per_s"] == pytest.approx(e["batch"] * 1e3 / e["mean_ms"])
    assert [(s["device"], s["runtime"], s["batch"]) for s in result["speedup"]] == [
        ("cpu", "onnxruntime", 1), ("cpu", "onnxruntime", 4)]
    for s in result["speedup"]:
        assert s["speedup"] == pytest.approx(s["dense_p50_ms"] / s["pruned_p50_ms"])
    assert result["gpu"]["status"] == "skipped"
    assert result["environment"]["cpu"]["physical_cores"] >= 1


def test_single_model_labelled_by_caller(pair: dict[str, Path]) -> None:
    result = benchmark({"dense": pair["dense"]}, batches=(2,), timing=FAST)
    assert [e["model"] for e in result["latency"]] == ["dense"]
    assert result["speedup"] == []


def test_speedups_pair_dense_and_pruned() -> None:
    latency = [
        {"device": "gpu", "runtime": "tensorrt", "precision": "fp16", "batch": 1,
         "model": "dense", "p50_ms": 3.0},
        {"device": "gpu", "runtime": "tensorrt", "precision": "fp16", "batch": 1,
         "model": "pruned", "p50_ms": 1.5},
        {"device": "gpu", "runtime": "tensorrt", "precision": "fp32", "batch": 1,
         "model": "dense", "p50_ms": 3.0},
    ]
    assert speedups(latency) == [{"device": "gpu", "runtime": "tensorrt", "batch": 1,
                                  "dense_p50_ms": 3.0, "pruned_p50_ms": 1.5, "speedup": 2.0,
                                  "stable": True, "precision": "fp16"}]


def test_random_feed_is_seeded_and_shaped() -> None:
    meta = {"x": (np.dtype(np.float32), ("N", 3, 4)), "ids": (np.dtype(np.int64), (None, 5))}
    a = random_feed(meta, 6, np.random.default_rng(7))
    b = random_feed(meta, 6, np.random.default_rng(7))
    assert a["x"].shape == (6, 3, 4) and a["x"].dtype == np.float32
    assert a["ids"].shape == (6, 5) and a["ids"].dtype == np.int64
    np.testing.assert_array_equal(a["x"], b["x"])
    with pytest.raises(InputError, match="fixed batch of 1"):
        random_feed({"x": (np.dtype(np.float32), (1, 3))}, 8, np.random.default_rng(0))
    with pytest.raises(InputError, match="dynamic dimensions"):
        random_feed({"x": (np.dtype(np.float32), ("N", "H"))}, 1, np.random.default_rng(0))


def test_input_errors(pair: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        benchmark({"dense": tmp_path / "absent.onnx"}, timing=FAST)
    with pytest.raises(InputError, match="unknown device"):
        benchmark(pair, device="tpu", timing=FAST)
    with pytest.raises(InputError, match="batch sizes"):
        benchmark(pair, batches=(0,), timing=FAST)
    other = make_conv(tmp_path / "other.onnx", 8, cin=5)
    with pytest.raises(InputError, match="differs"):
        benchmark({"dense": pair["dense"], "pruned": other}, batches=(1,), timing=FAST)
    fixed = make_conv(tmp_path / "fixed.onnx", 8, batch=1)
    with pytest.raises(InputError, match="fixed batch"):
        benchmark({"fixed": fixed}, batches=(1, 8), timing=FAST)


@pytest.mark.skipif(gpu_unavailable_reason() is None or cuda_provider_available(),
                    reason="this machine can time on a GPU (TensorRT or onnxruntime-gpu)")
def test_missing_gpu(pair: dict[str, Path]) -> None:
    reason = gpu_unavailable_reason()
    with pytest.raises(InputError, match="cannot benchmark on the GPU"):
        benchmark(pair, device="gpu", batches=(1,), timing=FAST)
    result = benchmark(pair, device="all", batches=(1,), timing=FAST)
    assert result["gpu"]["status"] == "skipped"
    # ONNX files alone: PyTorch's CUDA path needs the networks, and says so
    assert result["gpu"]["reason"] == f"{reason}; PyTorch's CUDA path times the networks a build " \
                                      "holds (spa-export build --bench gpu), not ONNX files"
    assert {e["device"] for e in result["latency"]} == {"cpu"}


class _Graphable:
    """Stands in for TorchCudaRunner's capture bookkeeping only (no timing, no results)."""

    def __init__(self, name: str, fails_at: int | None) -> None:
        self.name, self.fails_at = name, fails_at
        self.use_graphs, self.graph_fallback, self.captured = True, None, []

    def prepare(self, batches: list[int]) -> None:
        for b in batches:
            if b == self.fails_at:
                self.graph_fallback = f"capture failed at batch {b}"
                break
            self.captured.append(b)
        if self.graph_fallback:
            self.disable_graphs(self.graph_fallback)

    def disable_graphs(self, reason: str) -> None:
        self.use_graphs, self.captured = False, []
        self.graph_fallback = self.graph_fallback or reason


def test_networks_compared_with_each_other_run_in_the_same_graph_mode() -> None:
    from spa_export.runtime.bench import _same_graph_mode

    dense, pruned = _Graphable("dense", None), _Graphable("pruned", 8)
    _same_graph_mode({"dense": dense, "pruned": pruned}, [1, 8])
    assert not dense.use_graphs and not pruned.use_graphs   # pruned failed at batch 8: both eager, every batch
    assert dense.graph_fallback.startswith("'pruned' could not be captured")
    both = _Graphable("dense", None), _Graphable("pruned", None)
    _same_graph_mode(dict(zip(("dense", "pruned"), both, strict=True)), [1, 8])
    assert all(r.use_graphs and r.captured == [1, 8] for r in both)
