"""report.md rendering from report.json dicts, full and partial."""

from __future__ import annotations

import copy
from typing import Any

from spa_export.report.markdown import render_markdown


def _entry(model: str, batch: int, p50: float, **extra: Any) -> dict[str, Any]:
    return {"device": "cpu", "runtime": "onnxruntime", "provider": "CPUExecutionProvider",
            "model": model, "batch": batch, "threads": 2, "opt_level": "all", "p50_ms": p50,
            "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.5, "mean_ms": p50, "std_ms": 0.01,
            "iterations": 100, "throughput_per_s": batch * 1e3 / p50, **extra}


REPORT: dict[str, Any] = {
    "schema_version": 1, "tool": {"name": "spa-export", "version": "0.1.0"},
    "task": "digits",
    "inputs": {"base": {"path": "base.pt", "digest": "sha256:aa"},
               "spa": {"path": "digits.spa", "sha256": "sha256:bb", "task": "digits",
                       "arch": "torchvision:resnet18"},
               "arch": "torchvision:resnet18", "input_shape": [1, 3, 64, 64], "opset": 17},
    "params": {"dense": 11689512, "pruned": 3012345},
    "macs": {"dense": 1.8e9, "pruned": 0.5e9},
    "learned_params": {"adapter": 1, "adapter_bias": 0, "overrides": 0, "mask_bits": 0,
                       "total": 1},
    "groups": [{"id": f"layer{i}.conv", "members": [f"layer{i}.conv"], "channels": 8 * i,
                "kept": 4 * i, "removed": 4 * i, "removed_unread": 0, "removed_constant": 4 * i,
                "kept_reasons": {"read by a consumer that keeps it": i % 3}}
               for i in range(1, 26)],
    "groups_kept_whole": [{"id": "fc", "channels": 10, "reason": "a network output | logits"}],
    "verification": {"passed": True, "rtol": 1e-4, "atol": 1e-5,
                     "cases": [{"name": "random batch 1", "batch": 1, "max_abs_err": 1e-6,
                                "max_rel_err": 2e-6}],
                     "worst": {"case": "random batch 1", "output": "output", "index": [0, 3],
                               "expected": 1.0, "got": 1.0001}},
    "latency": [_entry("dense", 1, 2.0), _entry("pruned", 1, 0.5),
                _entry("dense", 8, 8.0), _entry("pruned", 8, 4.0)],
    "speedup": [],
    "environment": {"cpu": {"model": "Test CPU", "physical_cores": 4, "logical_cores": 8},
                    "os": "Linux", "python": "3.11", "versions": {"onnx": "1.23.2"}},
    "gpu": {"status": "skipped", "reason": "TensorRT is not installed"},
    "stages": [{"name": "load", "seconds": 0.5}, {"name": "merge", "seconds": 0.25}],
    "versions": {"torch": "2.14.1", "onnx": "1.23.2"},
}


def test_full_report() -> None:
    md = render_markdown(REPORT, "latency.png")
    assert md.startswith("# spa-export report: digits\n")
    assert "| Architecture | torchvision:resnet18 |" in md
    assert "| Input shape | 1×3×64×64 |" in md
    assert "11,689,512 → 3,012,345 (25.8% kept, ×3.88 smaller)" in md
    assert "1.8 G → 500 M (27.8% kept, ×3.60 smaller)" in md
    assert "passed (rtol 0.0001, atol 1e-05)" in md
    assert "output 'output' at [0, 3]: expected 1.0, got 1.0001" in md
    # latency: dense and pruned side by side, speedup = dense p50 / pruned p50, MACs ratio
    assert "| cpu | onnxruntime | 1 | 2 | 2.2 | 3 | 0.5 | 0.55 | 0.75 | ×4.00 | ×3.60 |" in md
    assert "| cpu | onnxruntime | 8 | 8 | 8.8 | 12 | 4 | 4.4 | 6 | ×2.00 | ×3.60 |" in md
    assert "![Latency p50 against batch size](latency.png)" in md
    assert "GPU benchmark skipped: TensorRT is not installed." in md
    # groups: the 20 widest, widest first; the pipe in a reason is escaped
    assert md.index("| layer25.conv | 200 |") < md.index("| layer24.conv | 192 |")
    assert "| layer6.conv |" in md and "| layer5.conv |" not in md
    assert "5 more group(s) not shown." in md
    assert "read by a consumer that keeps it (1)" in md
    assert "a network output \\| logits" in md
    assert "| **total** | 0.75 |" in md
    assert "torch 2.14.1" in md and "Test CPU (4 physical / 8 logical cores)" in md
    assert "| random batch 1 | 1 | 1e-06 | 2e-06 | float32 |" in md
    assert "badly conditioned" not in md


def test_cases_judged_by_the_float64_reference_are_marked() -> None:
    report = copy.deepcopy(REPORT)
    report["verification"]["cases"][0]["reference"] = "float64"
    md = render_markdown(report, None)
    assert "| random batch 1 | 1 | 1e-06 | 2e-06 | float64 |" in md
    assert "failed against the float32 one: the network is badly conditioned" in md


def test_no_latency_and_failed_verification() -> None:
    report = copy.deepcopy(REPORT)
    del report["latency"], report["gpu"], report["speedup"]
    report["verification"]["passed"] = False
    md = render_markdown(report, None)
    assert "No latency was measured." in md
    assert "**FAILED**" in md
    assert "![" not in md and "GPU" not in md


def test_minimal_and_single_model_reports() -> None:
    assert render_markdown({}, None).startswith("# spa-export report\n")
    single = {"latency": [_entry("model", 1, 1.0)]}
    md = render_markdown(single, None)
    assert "| cpu | onnxruntime | model | 1 | 1 | 1.1 | 1.5 | 100 |" in md


def test_gpu_entries_and_accuracy() -> None:
    gpu = {"device": "gpu", "runtime": "tensorrt", "provider": "TensorRT", "precision": "fp16"}
    report = {"latency": [{**_entry("dense", 1, 1.0), **gpu}, {**_entry("pruned", 1, 0.5), **gpu}],
              "gpu": {"status": "ok", "reason": None},
              "gpu_numerics": [{"model": "dense", "precision": "fp16", "batch": 1,
                                "max_abs_err": 1e-3, "max_err_over_scale": 1e-4, "passed": True,
                                "rtol": 0.02, "atol_over_scale": 0.02},
                               {"model": "pruned", "runtime": "torch-cuda", "precision": "fp16", "batch": 8,
                                "max_abs_err": 0.5, "max_err_over_scale": 0.3, "passed": False,
                                "rtol": 0.02, "atol_over_scale": 0.02}]}
    md = render_markdown(report, None)
    assert "| gpu | tensorrt fp16 | 1 | 1 |" in md and "×2.00 | n/a |" in md
    assert "| dense | tensorrt | fp16 | 1 | 0.001 | 0.0001 | 0.02 / 0.02 | within tolerance |" in md
    assert "| pruned | torch-cuda | fp16 | 8 | 0.5 | 0.3 | 0.02 / 0.02 | **outside tolerance** |" in md
    assert "skipped" not in md


def test_timings_that_did_not_settle_are_marked_as_noise() -> None:
    report = copy.deepcopy(REPORT)
    for e in report["latency"]:
        e["stable"] = not (e["batch"] == 8 and e["model"] == "pruned")
    text = render_markdown(report, None)
    rows = [line for line in text.splitlines() if line.startswith("| cpu |")]
    assert rows[0].endswith("| yes |") and rows[1].endswith("| **no** |"), rows
    assert "**1 of 4 timing(s) did not settle** within the budget" in text and "larger `--budget`" in text
    assert "did not settle" not in render_markdown(REPORT, None)   # no field: as before, nothing said


def test_speedups_say_whether_both_timings_settled() -> None:
    from spa_export.runtime.bench import speedups

    latency = [_entry("dense", 1, 2.0, stable=True), _entry("pruned", 1, 1.0, stable=False),
               _entry("dense", 8, 8.0, stable=True), _entry("pruned", 8, 4.0, stable=True)]
    assert [(s["batch"], s["stable"]) for s in speedups(latency)] == [(1, False), (8, True)]
