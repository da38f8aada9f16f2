"""Benchmark dense against pruned: the API the build pipeline and ``spa-export bench`` call.

CPU: ONNX Runtime, models alternating in blocks (:func:`~spa_export.runtime.timing.compare`).
GPU: TensorRT engines in float32 and float16 built here; where TensorRT is missing
and the build holds the networks, the same networks with PyTorch on CUDA
(``torch-cuda``); ONNX Runtime's CUDA provider besides where ``onnxruntime-gpu``
is installed. The GPU outputs are compared with ONNX Runtime's on the CPU with a
tolerance suited to the precision (``gpu_numerics``). A GPU that was asked for and is missing is an
:class:`~spa_export.safety.errors.InputError` with ``device="gpu"``, and a
``{"status": "skipped", "reason": ...}`` note with ``device="all"``.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spa_export.runtime.environment import collect_environment
from spa_export.runtime.inputs import Inputs
from spa_export.runtime.runner import Feed, InputMetadata, Runner
from spa_export.runtime.timing import Stats, TimingConfig, compare
from spa_export.safety.errors import InputError, require_file

DEVICES = ("cpu", "gpu", "all")
#: Tolerances of TensorRT against ONNX Runtime (CPU), atol relative to the output's scale.
GPU_TOLERANCE = {"fp32": (1e-3, 1e-3), "fp16": (2e-2, 2e-2)}

Progress = Callable[[str], None]


def random_feed(metadata: InputMetadata, batch: int, rng: np.random.Generator,
                ranges: Mapping[str, tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs of the given batch size (axis 0): floats standard normal, bools fair, integers
    uniform in ``ranges[name]`` (``[low, high)``: token ids within the vocabulary), else in [0, 10)."""
    feed: dict[str, np.ndarray] = {}
    for name, (dtype, shape) in metadata.items():
        if not shape:
            raise InputError(f"input '{name}' is a scalar: no batch axis to set")
        first = shape[0]
        if isinstance(first, int) and first != batch:
            raise InputError(f"input '{name}' has a fixed batch of {first}: pass --batch {first}")
        rest = shape[1:]
        if any(not isinstance(d, int) for d in rest):
            raise InputError(f"input '{name}' has dynamic dimensions besides the batch: "
                             f"{list(shape)}; cannot make random inputs for it")
        full = (batch, *(int(d) for d in rest))  # type: ignore[arg-type]
        if np.issubdtype(dtype, np.floating):
            feed[name] = rng.standard_normal(full, dtype=np.float32).astype(dtype)
        elif np.issubdtype(dtype, np.bool_):
            feed[name] = rng.random(full) < 0.5
        else:
            low, high = (ranges or {}).get(name, (0, 10))
            feed[name] = rng.integers(low, high, size=full).astype(dtype)
    return feed


def _same_inputs(metas: Mapping[str, InputMetadata]) -> None:
    labels = list(metas)
    first = metas[labels[0]]
    for label in labels[1:]:
        other = metas[label]
        if set(other) != set(first):
            raise InputError(f"models '{labels[0]}' and '{label}' take different inputs: "
                             f"{sorted(first)} vs {sorted(other)}")
        for name, (dtype, shape) in first.items():
            o_dtype, o_shape = other[name]
            fixed = [a == b for a, b in zip(shape[1:], o_shape[1:], strict=False)
                     if isinstance(a, int) and isinstance(b, int)]
            if o_dtype != dtype or len(o_shape) != len(shape) or not all(fixed):
                raise InputError(f"input '{name}' differs between '{labels[0]}' "
                                 f"({dtype}, {list(shape)}) and '{label}' ({o_dtype}, {list(o_shape)})")


def _entry(label: str, runner: Runner, stats: Stats) -> dict[str, Any]:
    info = runner.describe()
    entry: dict[str, Any] = {
        "device": info["device"], "runtime": info["runtime"], "provider": info["provider"],
        "model": label, "batch": stats.batch, "threads": info["threads"],
        "opt_level": info["opt_level"],
    }
    entry.update({k: v for k, v in stats.as_dict().items() if k != "batch"})
    for key in ("cuda_graphs", "graph_fallback", "host_memory", "tensorrt_version", "precision_method"):   # how a GPU entry ran, said per entry
        if key in info:
            entry[key] = info[key]
    if label.endswith(INT8_SUFFIX):   # an int8 network (QDQ or dynamic), timed on the CPU beside float32
        entry["precision"] = "int8"
    if runner.device == "gpu":
        entry["precision"] = info.get("precision") or "fp32"
        entry.setdefault("h2d_ms", None)
        entry.setdefault("d2h_ms", None)
    return entry


#: a model label ending so is an int8 network: timed on the CPU only, its speed-ups in the float32 rows
INT8_SUFFIX = "-int8"


def speedups(latency: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Dense p50 over pruned p50 per device, runtime, precision and batch.

    Where a ``pruned-int8`` entry was timed in the same loop, the row also gives its p50 and its
    speed-up over the float32 dense and pruned networks.
    """
    groups: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for e in latency:
        key = (e["device"], e["runtime"], e.get("precision"), e["batch"])
        groups.setdefault(key, {})[e["model"]] = e
    out = []
    for (device, runtime, precision, batch), by_model in groups.items():
        if "dense" not in by_model or "pruned" not in by_model:
            continue
        dense, pruned = by_model["dense"]["p50_ms"], by_model["pruned"]["p50_ms"]
        row: dict[str, Any] = {"device": device, "runtime": runtime, "batch": batch,
                               "dense_p50_ms": dense, "pruned_p50_ms": pruned,
                               "speedup": dense / pruned if pruned > 0 else None,
                               # both timings settled within the budget; else the ratio is noise
                               "stable": bool(by_model["dense"].get("stable", True)
                                              and by_model["pruned"].get("stable", True))}
        if precision is not None:
            row["precision"] = precision
        q = groups.get((device, runtime, "int8", batch), {}).get("pruned" + INT8_SUFFIX)
        if q is not None and q["p50_ms"] > 0:
            row.update({"int8_p50_ms": q["p50_ms"], "int8_over_dense": dense / q["p50_ms"],
                        "int8_over_pruned": pruned / q["p50_ms"],
                        "int8_stable": bool(q.get("stable", True))})
        out.append(row)
    return out


def _same_graph_mode(runners: Mapping[str, Runner], batches: Sequence[int]) -> None:
    """Runners that can run as CUDA graphs capture every batch size first; where one cannot, all run
    eagerly, so that networks compared with each other run in the same mode."""
    graphable = [r for r in runners.values() if hasattr(r, "prepare")]
    for r in graphable:
        r.prepare(list(batches))
    failed = [r for r in graphable if getattr(r, "graph_fallback", None)]
    if failed:
        why = f"'{failed[0].name}' could not be captured as a CUDA graph, so every network of this comparison runs eagerly"
        for r in graphable:
            r.disable_graphs(why)


def _time_group(
    runners: Mapping[str, Runner], batches: Sequence[int], rng_seed: int,
    config: TimingConfig, progress: Progress | None, prefix: str,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, Feed]]:
    """Activate, build feeds, time; return the entries and the feeds used."""
    with contextlib.ExitStack() as stack:
        for runner in runners.values():
            stack.enter_context(runner)
        _same_graph_mode(runners, batches)
        metas = {label: r.input_metadata() for label, r in runners.items()}
        _same_inputs(metas)
        first = next(iter(metas.values()))
        rng = np.random.default_rng(rng_seed)
        feeds = {b: random_feed(first, b, rng, ranges) for b in batches}
        say = (lambda msg: progress(f"{prefix}: {msg}")) if progress is not None else None
        results = compare(runners, feeds, config=config, progress=say)
        entries = [_entry(label, runners[label], stats)
                   for batch in batches for label, stats in results[batch].items()]
    return entries, feeds


def _numerics(
    onnx_models: Mapping[str, Path], gpu_runners: Mapping[str, Runner], feeds: Mapping[int, Feed],
    precision: str, threads: int | None,
) -> list[dict[str, Any]]:
    """Each GPU runner's outputs against the verified ONNX file on ONNX Runtime (CPU)."""
    from spa_export.runtime.onnxrt import OnnxRuntimeRunner

    rtol, atol_scale = GPU_TOLERANCE[precision]
    rows = []
    for label, onnx_path in onnx_models.items():
        with OnnxRuntimeRunner(onnx_path, threads=threads) as ref, gpu_runners[label] as gpu_runner:
            for batch, feed in feeds.items():
                want, got = ref.infer(feed), gpu_runner.infer(feed)
                worst_abs, worst_rel, passed = 0.0, 0.0, True
                for name, expected in want.items():
                    exp = np.asarray(expected, dtype=np.float64)
                    act = np.asarray(got[name], dtype=np.float64).reshape(exp.shape)
                    scale = float(np.max(np.abs(exp))) if exp.size else 0.0
                    err = np.abs(act - exp)
                    atol = atol_scale * max(scale, 1e-12)
                    passed = passed and bool(np.all(err <= atol + rtol * np.abs(exp)))
                    out_abs = float(err.max()) if err.size else 0.0
                    worst_abs = max(worst_abs, out_abs)
                    worst_rel = max(worst_rel, out_abs / scale if scale > 0 else 0.0)
                rows.append({"model": label, "runtime": gpu_runner.runtime, "precision": precision,
                             "batch": batch,
                             "reference": "onnxruntime CPUExecutionProvider",
                             "max_abs_err": worst_abs, "max_err_over_scale": worst_rel,
                             "rtol": rtol, "atol_over_scale": atol_scale, "passed": passed})
    return rows


def torch_cuda_timing(device: str) -> bool:
    """Whether ``device``'s GPU half times networks with PyTorch: TensorRT missing, a CUDA device seen."""
    from spa_export.runtime.tensorrt import gpu_unavailable_reason
    from spa_export.runtime.torch_cuda import cuda_unavailable_reason

    return device in ("gpu", "all") and gpu_unavailable_reason() is not None \
        and cuda_unavailable_reason() is None


def _precisions(fp16: bool | None) -> list[str]:
    return ["fp32", "fp16"] if fp16 is None else (["fp16"] if fp16 else ["fp32"])


def _gpu_part(
    models: Mapping[str, Path], batches: Sequence[int], *, fp16: bool | None, threads: int | None,
    opt_level: str, config: TimingConfig, engine_dir: Path | None, timing_cache: Path | None,
    seed: int, progress: Progress | None, result: dict[str, Any],
    networks: Mapping[str, Any] | None, sample_shape: tuple[int, ...] | None,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> str | None:
    """Time on the GPU what can be timed here; return why nothing could, else None.

    TensorRT where it is installed; else, for a build that holds the networks, PyTorch on
    CUDA; ONNX Runtime's CUDA provider besides, where ``onnxruntime-gpu`` is installed.
    """
    from spa_export.runtime.onnxrt import CudaOnnxRuntimeRunner, cuda_provider_available
    from spa_export.runtime.tensorrt import TensorRTRunner, gpu_unavailable_reason
    from spa_export.runtime.torch_cuda import TorchCudaRunner, cuda_unavailable_reason

    are_engines = all(p.suffix == ".engine" for p in models.values())
    trt_reason = gpu_unavailable_reason()
    notes: list[str] = []
    ran = False
    if not are_engines and cuda_provider_available():
        runners = {k: CudaOnnxRuntimeRunner(p, threads=threads, opt_level=opt_level, name=k)
                   for k, p in models.items()}
        try:
            entries, _ = _time_group(runners, batches, seed, config, progress,
                                     "gpu onnxruntime-cuda", ranges)
            result["latency"].extend(entries)
            ran = True
        except InputError as err:
            notes.append(f"onnxruntime CUDA: {err}")
    if networks is not None and torch_cuda_timing("gpu"):
        notes.append(f"{trt_reason}: timed with PyTorch on CUDA instead")
        for precision in _precisions(fp16):
            runners = {k: TorchCudaRunner(networks[k], sample_shape, precision=precision, name=k)
                       for k in models}
            entries, feeds = _time_group(runners, batches, seed, config, progress, f"gpu torch-cuda {precision}",
                                         ranges)
            result["latency"].extend(entries)
            checks = {k: TorchCudaRunner(networks[k], sample_shape, precision=precision, name=k)
                      for k in models}
            result["gpu_numerics"].extend(_numerics(models, checks, feeds, precision, threads))
            ran = True
    elif trt_reason is not None:
        reason = cuda_unavailable_reason() if networks is not None else \
            "PyTorch's CUDA path times the networks a build holds (spa-export build --bench gpu), not ONNX files"
        notes.append(f"{trt_reason}; {reason}" if reason else trt_reason)
    elif are_engines:
        runners = {k: TensorRTRunner(p, name=k) for k, p in models.items()}
        entries, _ = _time_group(runners, batches, seed, config, progress, "gpu tensorrt", ranges)
        result["latency"].extend(entries)
        ran = True
    else:
        from spa_export.runtime.engine import build_engine

        precisions = _precisions(fp16)
        with tempfile.TemporaryDirectory(prefix="spa-export-engines-") as tmp:
            out_dir = Path(engine_dir) if engine_dir is not None else Path(tmp)
            for precision in precisions:
                engines = {k: build_engine(p, out_dir / f"{p.stem}.{k}.{precision}",
                                           fp16=precision == "fp16", batches=batches,
                                           timing_cache=timing_cache, progress=progress)
                           for k, p in models.items()}
                runners = {k: TensorRTRunner(e, name=k) for k, e in engines.items()}
                entries, feeds = _time_group(runners, batches, seed, config, progress,
                                             f"gpu tensorrt {precision}", ranges)
                result["latency"].extend(entries)
                checks = {k: TensorRTRunner(e, name=k) for k, e in engines.items()}
                result["gpu_numerics"].extend(_numerics(models, checks, feeds, precision, threads))
                ran = True
    if not ran:
        return "; ".join(notes) or "nothing could run on the GPU"
    result["gpu"] = {"status": "ok", "reason": "; ".join(notes) or None}
    return None


def benchmark(
    models: Mapping[str, str | Path],
    *,
    device: str = "cpu",
    batches: Sequence[int] = (1, 8),
    threads: int | None = None,
    budget_s: float = 2.0,
    fp16: bool | None = None,
    opt_level: str = "all",
    timing: TimingConfig | None = None,
    engine_dir: Path | None = None,
    timing_cache: Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    networks: Mapping[str, Any] | None = None,
    sample_shape: tuple[int, ...] | None = None,
    inputs: Inputs | None = None,
) -> dict[str, Any]:
    """Time ``models`` (label -> .onnx, or .engine for the GPU) at every batch size.

    ``fp16``: None times float32 and float16 (engines, or networks cast), True float16
    only, False float32 only. ``timing`` overrides ``budget_s``. ``networks`` (label ->
    torch module computing what the label's ONNX file computes) and ``sample_shape``
    let the GPU half time them with PyTorch on CUDA where TensorRT is missing (a network of
    one float input). ``inputs`` (InputSpecs, see :mod:`spa_export.runtime.inputs`) gives the range
    of integer inputs' random values, and ``sample_shape`` where it is one float input.
    Returns ``{"latency", "speedup", "environment", "gpu", "gpu_numerics", "config"}``.
    """
    if not models:
        raise InputError("no model to benchmark")
    ranges: dict[str, tuple[int, int]] = {}
    if inputs is not None:
        from spa_export.runtime.inputs import is_plain

        specs = inputs
        ranges = {s.name: (s.low, s.high) for s in specs if s.high is not None}
        if is_plain(specs):
            sample_shape = sample_shape or specs[0].shape
        else:
            networks = None   # PyTorch's CUDA runner feeds one float input
    if device not in DEVICES:
        raise InputError(f"unknown device '{device}' (expected one of {', '.join(DEVICES)})")
    paths = {label: Path(p) for label, p in models.items()}
    for path in paths.values():
        require_file(path)
        if path.suffix not in (".onnx", ".engine"):
            raise InputError(f"{path}: expected an ONNX file (.onnx) or a TensorRT engine (.engine)")
    kinds = {p.suffix for p in paths.values()}
    if len(kinds) > 1:
        raise InputError("give either ONNX files or TensorRT engines, not both")
    if ".engine" in kinds and device == "cpu":
        raise InputError("a TensorRT engine runs on the GPU only: pass --device gpu")
    batch_list = sorted({int(b) for b in batches})
    if not batch_list or batch_list[0] < 1:
        raise InputError(f"batch sizes must be positive integers, got {list(batches)}")
    config = timing if timing is not None else TimingConfig(budget_s=budget_s)

    result: dict[str, Any] = {
        "latency": [], "speedup": [], "environment": collect_environment(),
        "gpu": {"status": "skipped", "reason": "not requested (device cpu)"},
        "gpu_numerics": [],
        "config": {"device": device, "batches": batch_list, "budget_s": config.budget_s,
                   "min_iterations": config.min_iterations, "seed": seed},
    }
    if device in ("cpu", "all") and ".onnx" in kinds:
        from spa_export.runtime.onnxrt import OnnxRuntimeRunner

        runners = {k: OnnxRuntimeRunner(p, threads=threads, opt_level=opt_level, name=k)
                   for k, p in paths.items()}
        entries, _ = _time_group(runners, batch_list, seed, config, progress, "cpu onnxruntime", ranges)
        result["latency"].extend(entries)
    if device in ("gpu", "all"):
        gpu_paths = {k: p for k, p in paths.items() if not k.endswith(INT8_SUFFIX)}   # TensorRT int8: `engine`
        reason = _gpu_part(gpu_paths, batch_list, fp16=fp16, threads=threads, opt_level=opt_level,
                           config=config, engine_dir=engine_dir, timing_cache=timing_cache,
                           seed=seed, progress=progress, result=result, networks=networks,
                           sample_shape=sample_shape, ranges=ranges)
        if reason is not None:
            if device == "gpu" or not result["latency"]:
                raise InputError(f"cannot benchmark on the GPU: {reason}")
            result["gpu"] = {"status": "skipped", "reason": reason}
    result["speedup"] = speedups(result["latency"])
    return result
