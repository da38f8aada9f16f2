"""The latency plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from spa_export.report.plots import plot_latency


def _entry(device: str, runtime: str, model: str, batch: int, p50: float,
           precision: str | None = None) -> dict:
    entry = {"device": device, "runtime": runtime, "model": model, "batch": batch,
             "p50_ms": p50, "p90_ms": p50 * 1.2}
    if precision:
        entry["precision"] = precision
    return entry


def test_plot_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the [report] extra")
    report = {"task": "digits", "latency": [
        _entry("cpu", "onnxruntime", "dense", 1, 2.0), _entry("cpu", "onnxruntime", "pruned", 1, 1.0),
        _entry("cpu", "onnxruntime", "dense", 8, 9.0), _entry("cpu", "onnxruntime", "pruned", 8, 3.0),
        _entry("gpu", "tensorrt", "dense", 1, 0.5, "fp16"),
        _entry("gpu", "tensorrt", "pruned", 1, 0.3, "fp16")]}
    out = plot_latency(report, tmp_path / "sub" / "latency.png")
    assert out == tmp_path / "sub" / "latency.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_latency_no_plot(tmp_path: Path) -> None:
    assert plot_latency({}, tmp_path / "a.png") is None
    assert plot_latency({"latency": []}, tmp_path / "a.png") is None
    assert not (tmp_path / "a.png").exists()


def test_speedups_pair_dense_and_pruned_per_batch_with_their_stability() -> None:
    from spa_export.report.plots import _panels, _speedups

    latency = [_entry("cpu", "onnxruntime", "dense", 1, 2.0), _entry("cpu", "onnxruntime", "pruned", 1, 1.0),
               {**_entry("cpu", "onnxruntime", "dense", 8, 9.0), "stable": False},
               _entry("cpu", "onnxruntime", "pruned", 8, 3.0), _entry("cpu", "onnxruntime", "pruned", 16, 5.0)]
    models = _panels(latency)["cpu · onnxruntime"]
    assert _speedups(models) == [(1, 2.0, True), (8, 3.0, False)]   # batch 16 has no dense timing
