"""``spa-export bench`` and ``spa-export engine`` through the click group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from spa_export.cli.main import _register, cli
from spa_export.runtime.tensorrt import TENSORRT_MISSING, gpu_unavailable_reason

FAST = ["--budget", "0.05", "--batch", "1", "--batch", "2"]


def make_conv(path: Path, channels: int) -> Path:
    rng = np.random.default_rng(channels)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    _register()
    return CliRunner()


def test_bench_two_models(runner: CliRunner, tmp_path: Path) -> None:
    dense, pruned = make_conv(tmp_path / "d.onnx", 32), make_conv(tmp_path / "p.onnx", 8)
    out = tmp_path / "res" / "bench.json"
    result = runner.invoke(cli, ["bench", str(dense), str(pruned), *FAST, "--threads", "1",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header[:4] == ["device", "runtime", "batch", "dense"] and header[-1] == "speedup"
    assert result.stderr == ""  # not a TTY: no progress
    data = json.loads(out.read_text())
    assert data["models"] == {"dense": str(dense), "pruned": str(pruned)}
    assert [(s["batch"], s["device"]) for s in data["speedup"]] == [(1, "cpu"), (2, "cpu")]
    assert all(e["threads"] == 1 for e in data["latency"])


def test_bench_one_model(runner: CliRunner, tmp_path: Path) -> None:
    model = make_conv(tmp_path / "solo.onnx", 4)
    result = runner.invoke(cli, ["bench", str(model), *FAST, "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["device", "runtime", "model", "batch"]
    assert any(line.split()[2:4] == ["solo", "2"] for line in lines[2:])


def test_bench_input_errors(runner: CliRunner, tmp_path: Path) -> None:
    missing = runner.invoke(cli, ["bench", str(tmp_path / "absent.onnx")])
    assert missing.exit_code == 2
    assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'absent.onnx'}: no such file"]
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    invalid = runner.invoke(cli, ["bench", str(bad)])
    assert invalid.exit_code == 2
    assert len(invalid.stderr.strip().splitlines()) == 1 and "cannot load" in invalid.stderr
    model = make_conv(tmp_path / "m.onnx", 4)
    three = runner.invoke(cli, ["bench", str(model), str(model), str(model)])
    assert three.exit_code == 2 and "one or two models" in three.stderr


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU with TensorRT is present")
def test_gpu_missing(runner: CliRunner, tmp_path: Path) -> None:
    model = make_conv(tmp_path / "m.onnx", 4)
    only_gpu = runner.invoke(cli, ["bench", str(model), "--device", "gpu", *FAST])
    assert only_gpu.exit_code == 2
    assert "cannot benchmark on the GPU" in only_gpu.stderr and "Traceback" not in only_gpu.output
    both = runner.invoke(cli, ["bench", str(model), "--device", "all", *FAST])
    assert both.exit_code == 0, both.output
    assert "GPU skipped:" in both.stdout


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU with TensorRT is present")
def test_engine_without_tensorrt(runner: CliRunner, tmp_path: Path) -> None:
    model = make_conv(tmp_path / "m.onnx", 4)
    result = runner.invoke(cli, ["engine", str(model), "--fp16", "--batch", "1", "--batch", "8"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {gpu_unavailable_reason()}"
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("*.engine"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert result.stderr.strip() == f"error: {TENSORRT_MISSING}"
    missing = runner.invoke(cli, ["engine", str(tmp_path / "absent.onnx")])
    assert missing.exit_code == 2 and "no such file" in missing.stderr
