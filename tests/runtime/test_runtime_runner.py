"""Runner lifecycle, the ONNX Runtime runner and machine detection."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import make_conv

from spa_export.runtime import environment
from spa_export.runtime.onnxrt import OnnxRuntimeRunner
from spa_export.runtime.runner import Runner, RunnerStateError
from spa_export.safety.errors import InputError


@pytest.fixture()
def conv(tmp_path: Path) -> Path:
    return make_conv(tmp_path / "wide.onnx", 16)


def test_lifecycle_and_context_manager(conv: Path) -> None:
    runner = OnnxRuntimeRunner(conv, threads=1)
    assert not runner.is_active
    with pytest.raises(RunnerStateError):
        runner.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})
    with runner as active:
        assert active is runner and runner.is_active
        with pytest.raises(RunnerStateError):
            runner.activate()
    assert not runner.is_active
    runner.deactivate()  # a no-op when inactive
    runner.activate()  # can be activated again
    runner.deactivate()


def test_infer_and_metadata(conv: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with OnnxRuntimeRunner(conv, threads=1) as runner:
        meta = runner.input_metadata()
        assert list(meta) == ["x"]
        dtype, shape = meta["x"]
        assert dtype == np.float32
        assert shape[0] in (None, "N") and shape[1:] == (3, 8, 8)
        out = runner.infer({"x": x})
        assert out["y"].shape == (2, 2, 8, 8)
        outputs, seconds, extras = runner.infer_timed({"x": x})
        assert seconds > 0 and extras == {}
        np.testing.assert_array_equal(outputs["y"], out["y"])


def test_outputs_equal_across_runners(conv: Path) -> None:
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with OnnxRuntimeRunner(conv, threads=1, opt_level="disable") as a, \
            OnnxRuntimeRunner(conv, threads=2, opt_level="all") as b:
        np.testing.assert_allclose(a.infer({"x": x})["y"], b.infer({"x": x})["y"],
                                   rtol=1e-5, atol=1e-5)


def test_descriptive_attributes(conv: Path) -> None:
    runner = OnnxRuntimeRunner(conv, opt_level="basic")
    assert runner.name == "wide"
    assert runner.device == "cpu" and runner.runtime == "onnxruntime"
    assert runner.provider == "CPUExecutionProvider"
    assert runner.threads == environment.physical_cores()
    assert runner.describe()["opt_level"] == "basic"


def test_bad_arguments(conv: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="optimisation level"):
        OnnxRuntimeRunner(conv, opt_level="fast")
    with pytest.raises(InputError, match="threads"):
        OnnxRuntimeRunner(conv, threads=0)
    with pytest.raises(InputError, match="no such file"):
        OnnxRuntimeRunner(tmp_path / "missing.onnx").activate()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match="cannot load"):
        OnnxRuntimeRunner(bad).activate()
    with pytest.raises(InputError, match="NoSuchExecutionProvider"):
        OnnxRuntimeRunner(conv, providers=("NoSuchExecutionProvider",)).activate()


def test_wrong_feed_is_input_error(conv: Path) -> None:
    with OnnxRuntimeRunner(conv, threads=1) as runner, pytest.raises(InputError):
        runner.infer({"x": np.zeros((1, 5, 8, 8), np.float32)})


def test_base_runner_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        Runner("abstract").activate()


CPUINFO = """processor\t: 0
physical id\t: 0
core id\t\t: 0

processor\t: 1
physical id\t: 0
core id\t\t: 0

processor\t: 2
physical id\t: 0
core id\t\t: 1

processor\t: 3
physical id\t: 1
core id\t\t: 0
model name\t: Test CPU
"""


def test_physical_cores_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    monkeypatch.setattr(environment, "_usable_cpus", lambda: {0, 1, 2, 3})
    assert environment.physical_cores(info) == 3  # (0,0) (0,1) (1,0): siblings count once
    monkeypatch.setattr(environment, "_usable_cpus", lambda: {0, 1})
    assert environment.physical_cores(info) == 1  # only the affinity mask's processors
    assert environment.cpu_model(info) == "Test CPU"


def test_physical_cores_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nBogoMIPS\t: 1\n\nprocessor\t: 1\n")
    monkeypatch.setattr(environment, "_usable_cpus", lambda: None)
    assert environment.physical_cores(info) == (os.cpu_count() or 1)
    assert environment.physical_cores(tmp_path / "absent") >= 1


def test_environment_reads_versions_without_importing() -> None:
    env = environment.collect_environment()
    assert env["cpu"]["physical_cores"] >= 1
    assert env["cpu"]["logical_cores"] >= 1
    assert env["versions"]["numpy"] == np.__version__
    assert "torch" in env["versions"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert isinstance(env["gpus"], list)
