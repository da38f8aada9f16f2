"""Build a TensorRT engine from an ONNX file, on the machine that will run it.

One optimisation profile covers the batch sizes asked for (min, opt, max over
the batch axis, the first axis of every input); the engine is saved as
``<out>.engine`` with ``<out>.engine.json`` beside it recording the TensorRT
version, the GPU (name and compute capability), the precision, the batches
and the ONNX file's sha256, which :class:`~spa_export.runtime.tensorrt.TensorRTRunner`
checks before it runs the engine. A timing cache, when given, is loaded and
updated so that rebuilds are fast. Built through Polygraphy's TensorRT loaders;
tensorrt and polygraphy are imported inside :func:`build_engine`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spa_export import __version__
from spa_export.runtime.tensorrt import gpu_device_info, metadata_path, require_gpu
from spa_export.safety.errors import BuildError, InputError, require_file
from spa_export.safety.publish import atomic_write, atomic_write_bytes

Shape = tuple[int, ...]


def sha256_file(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def engine_path_for(out_path: str | Path) -> Path:
    """``out`` as given when it ends in ``.engine``, else ``<out>.engine``."""
    out_path = Path(out_path)
    return out_path if out_path.suffix == ".engine" else out_path.with_name(out_path.name + ".engine")


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, list[int | None]]:
    """The graph inputs (initialisers excluded) with None for dynamic dimensions."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # DecodeError and friends
        raise InputError(f"{onnx_path}: not a readable ONNX model: {err}") from err
    initialisers = {init.name for init in model.graph.initializer}
    shapes: dict[str, list[int | None]] = {}
    for value in model.graph.input:
        if value.name in initialisers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                              for d in dims]
    return shapes


def profile_shapes(
    inputs: dict[str, list[int | None]], batches: Sequence[int], *, opt_batch: int | None = None
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``{input: (min, opt, max)}`` over the batch axis; other axes must be fixed."""
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"batch sizes must be positive integers, got {list(batches)}")
    lo, hi = batches[0], batches[-1]
    opt = hi if opt_batch is None else int(opt_batch)
    if not lo <= opt <= hi:
        raise InputError(f"the optimisation batch {opt} is outside {lo}..{hi}")
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, dims in inputs.items():
        if not dims:
            raise InputError(f"input '{name}' is a scalar: it has no batch axis")
        rest = dims[1:]
        if any(d is None for d in rest):
            raise InputError(f"input '{name}' has a dynamic dimension besides the batch axis: "
                             f"{dims}; export with fixed spatial sizes")
        fixed_rest = tuple(int(d) for d in rest)  # type: ignore[arg-type]
        if dims[0] is not None and (lo != dims[0] or hi != dims[0]):
            raise InputError(f"input '{name}' has a fixed batch of {dims[0]}: "
                             f"cannot build for batches {batches}")
        shapes[name] = ((lo, *fixed_rest), (opt, *fixed_rest), (hi, *fixed_rest))
    return shapes


def _precision(fp16: bool, int8: bool) -> str:
    return "int8" if int8 else "fp16" if fp16 else "fp32"


#: TensorRT major versions this builds engines with: 10 (JetPack 6's; weak typing still exists, strongly
#: typed networks are the recommended opt-in) and 11 (no weak-typing builder flags left).
SUPPORTED_TENSORRT = (10, 11)


def precision_method(trt_version: str, precision: str) -> str:
    """How an engine of ``precision`` gets its precision on TensorRT ``trt_version``: always a strongly
    typed network whose graph carries the types (the one way TensorRT 10 and 11 share)."""
    try:
        major = int(str(trt_version).split(".")[0])
    except ValueError:
        raise InputError(f"TensorRT version '{trt_version}' is not a version number") from None
    if major not in SUPPORTED_TENSORRT:
        raise InputError(f"TensorRT {trt_version}: spa-export builds engines with TensorRT "
                         f"{' or '.join(map(str, SUPPORTED_TENSORRT))} (strongly typed networks)")
    return {"fp32": "strongly typed network of the float32 graph",
            "fp16": "strongly typed network of the graph converted to float16 (onnxconverter-common, "
                    "float32 inputs and outputs kept)",
            "int8": "strongly typed network of the explicitly quantized (Q/DQ) graph"}[precision]


def float16_graph(onnx_path: Path, out_path: Path) -> Path:
    """The model with float16 weights and arithmetic, float32 at its inputs and outputs (for fp16 engines)."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as err:
        raise InputError("fp16 engines need onnxconverter-common: pip install 'spa-export[tensorrt]'") from err
    model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
    return out_path


def require_qdq(onnx_path: Path) -> None:
    """An INT8 engine needs an explicitly quantized model: refuse a float one (a calibrator is not used)."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise InputError(f"{onnx_path}: --int8 needs an explicitly quantized (QDQ) model, such as the "
                         "model.int8.onnx of `spa-export build --quantize int8`; this one has no "
                         "QuantizeLinear/DequantizeLinear nodes")


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    fp16: bool,
    batches: Sequence[int],
    timing_cache: Path | None = None,
    workspace_mb: int = 2048,
    opt_batch: int | None = None,
    progress: Callable[[str], None] | None = None,
    int8: bool = False,
) -> Path:
    """Build and save an engine; return its path (metadata at ``<engine>.json``).

    Every engine is a strongly typed network, on TensorRT 10 and 11 alike (:func:`precision_method`):
    fp32 from the graph as it is, ``fp16`` from the graph converted to float16 (float32 inputs and
    outputs kept), ``int8`` from an explicitly quantized (QDQ) model such as ``model.int8.onnx``,
    whose QuantizeLinear/DequantizeLinear nodes carry the scales (no calibrator runs). No GPU has
    been lent to this project yet: this path is written against the documented APIs, not yet run.
    """
    onnx_path = Path(onnx_path)
    require_file(onnx_path)
    if int8:
        require_qdq(onnx_path)
    if workspace_mb < 1:
        raise InputError(f"workspace must be at least 1 MiB, got {workspace_mb}")
    trt = require_gpu()
    precision = _precision(fp16, int8)
    method = precision_method(trt.__version__, precision)
    shapes = profile_shapes(onnx_input_shapes(onnx_path), batches, opt_batch=opt_batch)
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        Profile,
    )
    from polygraphy.exception import PolygraphyException

    profile = Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    cache = Path(timing_cache) if timing_cache is not None else None
    config = CreateConfig(   # no precision flags: the strongly typed network's graph decides
        profiles=[profile],
        load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20},
    )
    if progress is not None:
        progress(f"building a {precision} engine of {onnx_path.name} "
                 f"for batches {sorted(set(batches))} (this takes a while)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # The graph carries the precision (float16 types, or Q/DQ nodes); the network is strongly typed,
        # as TensorRT 11 requires and TensorRT 10 recommends: no FP16/INT8 flag, no calibrator.
        source = float16_graph(onnx_path, Path(tmp) / "fp16.onnx") if precision == "fp16" else onnx_path
        try:
            serialized = EngineBytesFromNetwork(
                NetworkFromOnnxPath(str(source), strongly_typed=True),
                config=config,
                save_timing_cache=str(cache) if cache is not None else None,
            )()
        except PolygraphyException as err:
            raise BuildError(f"{onnx_path}: TensorRT could not build an engine: {err}") from err

    engine_path = engine_path_for(out_path)
    meta = engine_metadata(
        onnx_path, trt_version=trt.__version__, gpu=gpu_device_info(), fp16=fp16,
        shapes=shapes, batches=batches, workspace_mb=workspace_mb, int8=int8,
    )
    meta["precision_method"] = method
    atomic_write(engine_path, lambda fh: fh.write(memoryview(serialized)))
    atomic_write_bytes(metadata_path(engine_path), (json.dumps(meta, indent=2) + "\n").encode())
    return engine_path


def engine_metadata(
    onnx_path: Path,
    *,
    trt_version: str,
    gpu: dict[str, Any],
    fp16: bool,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    batches: Sequence[int],
    workspace_mb: int,
    int8: bool = False,
) -> dict[str, Any]:
    """The JSON saved beside an engine."""
    return {
        "schema_version": 1,
        "tool": {"name": "spa-export", "version": __version__},
        "tensorrt_version": trt_version,
        "gpu": gpu,
        "precision": _precision(fp16, int8),
        "batches": sorted({int(b) for b in batches}),
        "profile": {name: {"min": list(lo), "opt": list(opt), "max": list(hi)}
                    for name, (lo, opt, hi) in shapes.items()},
        "workspace_mb": workspace_mb,
        "onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path)},
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
