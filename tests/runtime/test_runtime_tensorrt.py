"""TensorRT: engine metadata and profiles everywhere; engines themselves on a GPU only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import make_conv

from spa_export.runtime.engine import (
    build_engine,
    engine_path_for,
    onnx_input_shapes,
    profile_shapes,
    sha256_file,
)
from spa_export.runtime.tensorrt import (
    TENSORRT_MISSING,
    TensorRTRunner,
    gpu_unavailable_reason,
    incompatibility,
    metadata_path,
    read_engine_metadata,
)
from spa_export.safety.errors import InputError

META = {"tensorrt_version": "10.3.0", "precision": "fp16",
        "gpu": {"name": "Orin", "compute_capability": "8.7"}}


def test_incompatibility_reasons() -> None:
    same = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7")
    assert incompatibility(META, **same) is None
    assert "TensorRT 10.3.0" in incompatibility(META, **{**same, "tensorrt_version": "10.8.0"})
    assert "compute capability 8.7" in incompatibility(
        META, **{**same, "compute_capability": "8.6", "gpu_name": "RTX 3090"})
    assert "built on a Orin" in incompatibility(META, **{**same, "gpu_name": "Xavier"})
    assert incompatibility(META, **{**same, "gpu_name": "unknown"}) is None
    assert incompatibility({}, **same) is None


def test_metadata_files(tmp_path: Path) -> None:
    engine = tmp_path / "m.fp16.engine"
    assert metadata_path(engine) == tmp_path / "m.fp16.engine.json"
    assert read_engine_metadata(engine) is None
    metadata_path(engine).write_text(json.dumps(META))
    assert read_engine_metadata(engine) == META
    metadata_path(engine).write_text("{broken")
    with pytest.raises(InputError, match="unreadable"):
        read_engine_metadata(engine)
    assert engine_path_for(tmp_path / "out") == tmp_path / "out.engine"
    assert engine_path_for(tmp_path / "out.engine") == tmp_path / "out.engine"


def test_profile_from_onnx(tmp_path: Path) -> None:
    path = make_conv(tmp_path / "m.onnx", 4)
    inputs = onnx_input_shapes(path)
    assert inputs == {"x": [None, 3, 8, 8]}
    assert profile_shapes(inputs, [8, 1, 4]) == {
        "x": ((1, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8))}
    assert profile_shapes(inputs, [1, 8], opt_batch=1)["x"][1] == (1, 3, 8, 8)
    with pytest.raises(InputError, match="outside"):
        profile_shapes(inputs, [1, 8], opt_batch=16)
    with pytest.raises(InputError, match="positive"):
        profile_shapes(inputs, [])
    with pytest.raises(InputError, match="dynamic dimension"):
        profile_shapes({"x": [None, 3, None]}, [1])
    fixed = onnx_input_shapes(make_conv(tmp_path / "f.onnx", 4, batch=1))
    assert profile_shapes(fixed, [1])["x"][0] == (1, 3, 8, 8)
    with pytest.raises(InputError, match="fixed batch of 1"):
        profile_shapes(fixed, [1, 8])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00garbage")
    with pytest.raises(InputError, match="not a readable ONNX"):
        onnx_input_shapes(bad)


def test_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"spa" * 1000)
    assert sha256_file(path) == "sha256:" + hashlib.sha256(b"spa" * 1000).hexdigest()


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU with TensorRT is present")
def test_without_gpu_engine_paths_are_input_errors(tmp_path: Path) -> None:
    path = make_conv(tmp_path / "m.onnx", 4)
    reason = gpu_unavailable_reason()
    with pytest.raises(InputError) as err:
        build_engine(path, tmp_path / "m", fp16=True, batches=[1, 8])
    assert str(err.value) == reason
    fake = tmp_path / "m.engine"
    fake.write_bytes(b"not an engine")
    with pytest.raises(InputError):
        TensorRTRunner(fake).activate()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert reason == TENSORRT_MISSING


# ---- on a machine with an NVIDIA GPU and TensorRT ------------------------------------------


@pytest.fixture()
def trt_gpu() -> None:
    pytest.importorskip(
        "tensorrt", reason="TensorRT not installed: GPU tests run where a GPU and TensorRT exist")
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_build_run_and_match_onnxruntime(trt_gpu: None, tmp_path: Path,
                                                 fp16: bool) -> None:
    from spa_export.runtime.onnxrt import OnnxRuntimeRunner

    onnx_path = make_conv(tmp_path / "m.onnx", 16)
    cache = tmp_path / "timing.cache"
    engine = build_engine(onnx_path, tmp_path / "m", fp16=fp16, batches=[1, 4],
                          timing_cache=cache, workspace_mb=256)
    assert engine == tmp_path / "m.engine" and engine.is_file() and cache.is_file()
    meta = read_engine_metadata(engine)
    assert meta["precision"] == ("fp16" if fp16 else "fp32")
    assert meta["batches"] == [1, 4]
    assert meta["onnx"]["sha256"] == sha256_file(onnx_path)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with TensorRTRunner(engine) as trt_runner, OnnxRuntimeRunner(onnx_path, threads=1) as ref:
        assert trt_runner.input_metadata()["x"][1] == (None, 3, 8, 8)
        got, seconds, extras = trt_runner.infer_timed({"x": x})
        assert seconds > 0 and set(extras) == {"h2d_ms", "d2h_ms"}
        want = ref.infer({"x": x})["y"]
        tol = 2e-2 if fp16 else 1e-3
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got["y"], want, rtol=tol, atol=tol * scale)
        with pytest.raises(InputError, match="outside the engine's profile"):
            trt_runner.infer({"x": np.zeros((8, 3, 8, 8), np.float32)})


@pytest.mark.gpu
def test_engine_from_another_gpu_is_refused(trt_gpu: None, tmp_path: Path) -> None:
    onnx_path = make_conv(tmp_path / "m.onnx", 4)
    engine = build_engine(onnx_path, tmp_path / "m", fp16=False, batches=[1])
    meta = read_engine_metadata(engine)
    meta["tensorrt_version"] = "0.0.1"
    metadata_path(engine).write_text(json.dumps(meta))
    with pytest.raises(InputError, match="built with TensorRT 0.0.1"):
        TensorRTRunner(engine).activate()


@pytest.mark.gpu
def test_gpu_benchmark(trt_gpu: None, tmp_path: Path) -> None:
    from spa_export.runtime.bench import benchmark
    from spa_export.runtime.timing import TimingConfig

    models = {"dense": make_conv(tmp_path / "d.onnx", 32), "pruned": make_conv(tmp_path / "p.onnx", 8)}
    result = benchmark(models, device="gpu", batches=(1, 4),
                       timing=TimingConfig(budget_s=0.05, min_iterations=5, block_runs=5))
    assert result["gpu"]["status"] == "ok"
    trt_entries = [e for e in result["latency"] if e["runtime"] == "tensorrt"]
    assert {e["precision"] for e in trt_entries} == {"fp32", "fp16"}
    for e in trt_entries:
        assert e["h2d_ms"] >= 0 and e["d2h_ms"] >= 0
        assert e["p50_ms"] <= e["p90_ms"] <= e["p99_ms"]
    assert len(result["gpu_numerics"]) == 2 * 2 * 2
    assert all(row["passed"] for row in result["gpu_numerics"])


def test_an_int8_engine_needs_an_explicitly_quantized_model(tmp_path: Path) -> None:
    """Refused before TensorRT is needed: a float model has no scales, and no calibrator runs."""
    onnx_path = make_conv(tmp_path / "m.onnx", 16)
    with pytest.raises(InputError, match="needs an explicitly quantized \\(QDQ\\) model"):
        build_engine(onnx_path, tmp_path / "m", fp16=False, int8=True, batches=[1])
    assert not list(tmp_path.glob("*.engine"))


@pytest.mark.gpu
def test_int8_engine_of_the_qdq_model_matches_onnxruntime(trt_gpu: None, tmp_path: Path) -> None:
    from spa_export.runtime.onnxrt import OnnxRuntimeRunner
    from spa_export.runtime.quantize import quantize_int8

    onnx_path = make_conv(tmp_path / "m.onnx", 16)
    rng = np.random.default_rng(0)
    quantize_int8(onnx_path, tmp_path / "m.int8.onnx", {"x": rng.standard_normal((32, 3, 8, 8)).astype(np.float32)},
                  calibration_source="random")
    engine = build_engine(tmp_path / "m.int8.onnx", tmp_path / "m", fp16=False, int8=True, batches=[1, 4],
                          workspace_mb=256)
    assert read_engine_metadata(engine)["precision"] == "int8"
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    with TensorRTRunner(engine) as trt_runner, OnnxRuntimeRunner(tmp_path / "m.int8.onnx", threads=1) as ref:
        got, want = trt_runner.infer({"x": x})["y"], ref.infer({"x": x})["y"]
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05 * scale)   # two int8 runtimes, one QDQ model


@pytest.mark.parametrize("layout", ["nvidia/cu13/lib/libcudart.so.13", "nvidia/cuda_runtime/lib/libcudart.so.12"])
def test_the_cuda_runtime_is_found_where_pip_wheels_put_it(tmp_path: Path, layout: str) -> None:
    from spa_export.runtime.tensorrt import find_cudart

    lib = tmp_path / layout
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    (lib.parent / "libcudart_static.a").write_bytes(b"")
    assert find_cudart([str(tmp_path / "elsewhere"), str(tmp_path)]) == lib
    assert find_cudart([str(tmp_path / "elsewhere")]) is None


def test_with_tensorrt_present_a_skip_names_the_real_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT stands in (a module object: only the version switch reads it); the CUDA runtime is real."""
    import types

    from spa_export.runtime import tensorrt as trt_module

    if trt_module.find_cudart() is None:
        pytest.skip("no libcudart from pip's CUDA wheels in this environment")
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda: types.ModuleType("tensorrt"))
    reason = trt_module.gpu_unavailable_reason()
    if reason is None:
        pytest.skip("this machine has a usable GPU")
    assert "cudaGetDeviceCount returned CUDA error" in reason and "cannot be loaded" not in reason


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.13"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_engine_is_strongly_typed_on_tensorrt_10_and_11(version: str, precision: str) -> None:
    from spa_export.runtime.engine import precision_method

    method = precision_method(version, precision)
    assert method.startswith("strongly typed network")
    assert {"fp32": "float32 graph", "fp16": "converted to float16", "int8": "Q/DQ"}[precision] in method


@pytest.mark.parametrize("version", ["8.6.1", "12.0.0", "x"])
def test_other_tensorrt_versions_are_refused_with_the_supported_ones(version: str) -> None:
    from spa_export.runtime.engine import precision_method

    with pytest.raises(InputError, match="TensorRT"):
        precision_method(version, "fp16")


def test_the_fp16_graph_keeps_float32_inputs_and_outputs(tmp_path: Path) -> None:
    pytest.importorskip("onnxconverter_common", reason="in the tensorrt extra")
    import onnx

    from spa_export.runtime.engine import float16_graph

    model = onnx.load(str(float16_graph(make_conv(tmp_path / "m.onnx", 16), tmp_path / "m16.onnx")))
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [
        onnx.TensorProto.FLOAT] * 2
    assert [n.op_type for n in model.graph.node].count("Cast") == 2
