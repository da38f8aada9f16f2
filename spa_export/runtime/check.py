"""Verification cases that travel with a package, and ``spa-export check`` on the target.

Each task's ``check.safetensors`` holds what the build's independent
reference (the spec's masked network) computed for its seeded random
verification cases. The inputs are not stored: they are made again from the
recorded seed, input specification and batch sizes, and their sha256 proves
they are the inputs the build used. On the device each task's network (its
file, or materialized from its delta) runs on the device's own runtime and
is compared with those outputs under the tolerance of its precision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spa_export.runtime.compare import compare_output
from spa_export.runtime.inputs import Inputs, as_inputs, random_arrays
from spa_export.runtime.inputs import to_json as inputs_json
from spa_export.safety.errors import InputError

FORMAT = "spa-export-check"
VERSION = 1
META_KEY = "spa_export.check"
#: tolerance per precision: (rtol, atol as a fraction of the output's scale); float32 uses the build's own
FP16 = (1e-2, 1e-2)


def _inputs_sha(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}\n".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def random_cases(specs: Inputs, seed: int, batches: tuple[int, ...]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The seeded random verification cases, in the order the build makes them."""
    rng = np.random.default_rng(seed)
    return [(f"random batch {b}", random_arrays(specs, rng, b)) for b in batches]


def check_bytes(specs: Inputs, seed: int, batches: tuple[int, ...], outputs: list[list[np.ndarray]], *,
                rtol: float, atol_scale: float) -> bytes:
    """The ``check.safetensors`` of a task: the reference's outputs for the random cases."""
    from safetensors.numpy import save

    cases = random_cases(specs, seed, batches)
    tensors, described = {}, []
    for i, ((name, arrays), outs) in enumerate(zip(cases, outputs, strict=False)):
        for k, o in enumerate(outs):
            tensors[f"case{i}/output{k}"] = np.ascontiguousarray(o)
        described.append({"name": name, "batch": int(next(iter(arrays.values())).shape[0]),
                          "inputs_sha256": _inputs_sha(arrays), "outputs": len(outs)})
    meta = {"format": FORMAT, "version": VERSION, "seed": seed, "batches": list(batches),
            **inputs_json(specs), "rtol": rtol, "atol_scale": atol_scale, "cases": described}
    return save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


@dataclass
class Cases:
    """A task's stored cases: inputs made again, and the outputs the reference computed."""

    rtol: float
    atol_scale: float
    cases: list[tuple[str, dict[str, np.ndarray], list[np.ndarray]]] = field(default_factory=list)


def read_cases(where: str, data: bytes) -> Cases:
    from safetensors.numpy import load

    from spa_export.runtime.delta import safetensors_metadata

    try:
        tensors = load(data)
        meta = json.loads(safetensors_metadata(data)[META_KEY])
    except Exception as err:   # a truncated or foreign file
        raise InputError(f"{where}: not a readable check file ({type(err).__name__})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{where}: check format {meta.get('format')!r} version {meta.get('version')!r}; "
                         f"this spa-export reads {FORMAT} version {VERSION}")
    specs = as_inputs(meta.get("inputs") or meta.get("input_shape"), where)
    made = random_cases(specs, int(meta["seed"]), tuple(meta["batches"]))
    out = Cases(float(meta["rtol"]), float(meta["atol_scale"]))
    for i, (info, (name, arrays)) in enumerate(zip(meta["cases"], made, strict=True)):
        if _inputs_sha(arrays) != info["inputs_sha256"]:
            raise InputError(f"{where}: case '{name}': numpy here makes other random inputs from the seed than "
                             f"the build's (numpy {np.__version__}): cannot check against the stored outputs")
        out.cases.append((name, arrays, [tensors[f"case{i}/output{k}"] for k in range(info["outputs"])]))
    return out


@dataclass
class TaskCheck:
    task: str
    runtime: str
    precision: str
    passed: bool
    worst_ratio: float
    cases: int
    detail: str = ""

    def to_json(self) -> dict:
        return self.__dict__.copy()


def check_task(task: str, model: bytes, cases: Cases, *, device: str = "cpu") -> list[TaskCheck]:
    """Run every stored case on ``device``: ONNX Runtime (CPU, or CUDA), and on a GPU with TensorRT
    installed also TensorRT fp32 and fp16 engines built here; each under its precision's tolerance."""
    from spa_export.runtime.onnxrt import (
        CPU_PROVIDER,
        CUDA_PROVIDER,
        OnnxRuntimeRunner,
        cuda_provider_available,
    )

    rows = []
    if device == "cpu" or cuda_provider_available():
        provider = CUDA_PROVIDER if device == "gpu" else CPU_PROVIDER
        runner = OnnxRuntimeRunner(Path(f"{task}/model.onnx"), model=model, providers=(provider,), threads=None,
                                   memory_arena=False)
        label = f"onnxruntime {'CUDA' if device == 'gpu' else 'CPU'}"
        rows.append(run_cases(task, runner, label, "fp32", cases, (cases.rtol, cases.atol_scale)))
    if device == "gpu":
        rows += _tensorrt_rows(task, model, cases)
    return rows


def _tensorrt_rows(task: str, model: bytes, cases: Cases) -> list[TaskCheck]:
    """TensorRT fp32 and fp16 engines of the task, built in a temporary folder, where TensorRT works here."""
    import tempfile

    from spa_export.runtime.tensorrt import TensorRTRunner, gpu_unavailable_reason

    if gpu_unavailable_reason() is not None:
        return []
    from spa_export.runtime.bench import GPU_TOLERANCE
    from spa_export.runtime.engine import build_engine

    rows = []
    batches = sorted({len(next(iter(arrays.values()))) for _, arrays, _ in cases.cases})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model)
        for precision in ("fp32", "fp16"):
            engine = build_engine(path, Path(tmp) / f"model.{precision}", fp16=precision == "fp16", batches=batches)
            rows.append(run_cases(task, TensorRTRunner(engine), "tensorrt", precision, cases, GPU_TOLERANCE[precision]))
    return rows


def run_cases(task: str, runner: object, runtime: str, precision: str, cases: Cases,
              tolerance: tuple[float, float]) -> TaskCheck:
    """Every case through ``runner`` (a Runner), compared with the stored outputs under ``tolerance``."""
    rtol, atol_scale = tolerance
    worst, failed = 0.0, []
    with runner as r:
        names = list(r.input_metadata())
        for name, arrays, expected in cases.cases:
            got = list(r.infer({k: arrays[k] for k in names}).values())
            if len(got) != len(expected):
                failed.append(f"{name}: {len(got)} outputs, {len(expected)} stored")
                worst = float("inf")
                continue
            for k, (e, g) in enumerate(zip(expected, got, strict=True)):
                c = compare_output(name, f"output{k}", e, np.asarray(g), rtol, atol_scale)
                worst = max(worst, c["worst"]["ratio"])
                if not c["passed"]:
                    w = c["worst"]
                    failed.append(f"{name} output{k} at {w['index']}: expected {w['expected']:.6g}, got "
                                  f"{w['got']:.6g} (allowed {w['allowed']:.3g})")
    return TaskCheck(task, runtime, precision, not failed, worst, len(cases.cases), "; ".join(failed[:2]))
