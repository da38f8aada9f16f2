"""8-bit networks with ONNX Runtime's own quantization tools, and how far they stray.

Convolutional networks: static quantization in QDQ form, weights per channel
(signed 8-bit), activation ranges calibrated (MinMax) on inputs the user
gives. The activation type is the one that is fastest for the processor's
ONNX Runtime kernels: on x86, unsigned activations with signed weights (U8S8;
with VNNI the U8S8 kernels are the fast ones, S8S8 falls back to slower
paths: ``benchmarks/results/int8_speedup.md`` measures both); on ARM, signed
(S8S8). Transformers (a graph of MatMuls with LayerNormalization or Softmax):
dynamic quantization of MatMul and Gemm weights, which needs no calibration
and is what ONNX Runtime's documentation recommends for them.

A quantized network cannot be exact. :func:`compare_int8` measures it against
the float32 network it came from: the output error in units of the output's
scale, and, where the first output is a score per class, the share of top-1
predictions that differ.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spa_export.safety.errors import BuildError, InputError

PRECISIONS = ("int8",)
ACTIVATIONS = ("auto", "u8", "s8")


def precisions(values: object, name: str = "--quantize") -> tuple[str, ...]:
    """Precisions asked for beside float32 (a name or a list): known ones, duplicates dropped."""
    items = [values] if isinstance(values, str) else list(values or ())
    for v in items:
        if not isinstance(v, str) or v not in PRECISIONS:
            shown_value = f"'{v}'" if isinstance(v, str) else type(v).__name__
            raise InputError(f"{name}: unknown precision {shown_value} (known: {', '.join(PRECISIONS)}; "
                             "float32 is always built)")
    return tuple(dict.fromkeys(items))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni_or_amx() -> bool:
    """Whether x86 int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX) are here."""
    return bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_instructions() -> str:
    """The instruction set that runs ONNX Runtime's int8 kernels here: AMX, VNNI, or neither."""
    flags = _cpu_flags()
    found = []
    if {"amx_int8", "amx_tile"} <= flags:
        found.append("AMX")
    if "avx512_vnni" in flags:
        found.append("AVX-512 VNNI")
    elif "avx_vnni" in flags:
        found.append("AVX-VNNI")
    if "asimddp" in flags:
        found.append("ARM dot product")
    return ", ".join(found) if found else "neither VNNI nor AMX (int8 runs on plain SIMD: expect less speed-up)"


def choose_activations(requested: str) -> tuple[str, str]:
    """The activation type (``u8`` or ``s8``) and why."""
    if requested in ("u8", "s8"):
        return requested, "as asked (--int8-activations)"
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        return "u8", ("x86: ONNX Runtime's int8 convolution and matrix kernels are fastest with unsigned "
                      "activations and signed weights (U8S8); signed activations (S8S8) measured slower than "
                      "float32 on AVX-512 VNNI (benchmarks/results/int8_speedup.md)")
    return "s8", f"{machine}: ONNX Runtime's ARM int8 kernels take signed activations (S8S8)"


def is_transformer(model_path: Path) -> bool:
    """A graph whose weights sit in MatMuls beside LayerNormalization or Softmax (ViT, BERT...)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    matmuls = ops.count("MatMul") + ops.count("Gemm")
    return matmuls > ops.count("Conv") and ("LayerNormalization" in ops or "Softmax" in ops)


@dataclass
class QuantizeReport:
    method: str                 # "static QDQ" or "dynamic"
    activations: str            # "u8" | "s8" | "dynamic u8"
    why: str
    instructions: str
    calibration: str            # where the ranges came from
    calibration_samples: int
    bytes: int
    comparison: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return self.__dict__.copy()


class _Reader:
    """ONNX Runtime's calibration data reader over arrays by input name, a batch at a time."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int = 16) -> None:
        self.arrays, self.batch = arrays, batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        n = len(next(iter(self.arrays.values())))
        for start in range(0, n, self.batch):
            yield {k: v[start:start + self.batch] for k, v in self.arrays.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_int8(src: Path, dst: Path, calibration: dict[str, np.ndarray] | None, *, activations: str = "auto",
                  calibration_source: str = "") -> QuantizeReport:
    """Write ``dst``, the int8 network of the float32 ``src``; ``calibration``: inputs by name."""

    instructions = int8_instructions()
    with _root_logger_quiet():   # the quantizer's advice goes to the root logger as warnings
        report = _quantize(src, dst, calibration, activations, calibration_source, instructions)
    report.bytes = dst.stat().st_size
    return report


@contextlib.contextmanager
def _root_logger_quiet() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize(src: Path, dst: Path, calibration: dict[str, np.ndarray] | None, activations: str,
              calibration_source: str, instructions: str) -> QuantizeReport:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    try:
        if is_transformer(src):
            quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
            report = QuantizeReport("dynamic", "dynamic u8", "a transformer: dynamic quantization of the MatMul and "
                                    "Gemm weights (activations quantized at run time); no calibration needed",
                                    instructions, "none (dynamic)", 0, 0)
        else:
            if calibration is None:
                raise InputError("--quantize int8 needs calibration data: --calibration DATA.npz (inputs only, "
                                 "real samples the network will see), or --calibration random to quantize with "
                                 "random ranges (the report will say so)")
            act, why = choose_activations(activations)

            class Reader(_Reader, CalibrationDataReader):
                pass

            # Without VNNI, x86's U8S8 kernels multiply-add pairs into 16 bits (VPMADDUBSW), which can saturate:
            # 7-bit weights (reduce_range), as ONNX Runtime's documentation advises there.
            reduce_range = act == "u8" and not has_vnni_or_amx()
            quantize_static(str(src), str(dst), Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, reduce_range=reduce_range,
                            extra_options={"ActivationSymmetric": act == "s8"})
            n = len(next(iter(calibration.values())))
            method = "static QDQ, per-channel weights" + (" (7-bit: reduce_range, no VNNI here)" if reduce_range else "")
            report = QuantizeReport(method, act, why, instructions, calibration_source, n, 0)
    except InputError:
        raise
    except Exception as err:   # ONNX Runtime's quantizer raises many types
        raise BuildError(f"int8 quantization failed: {type(err).__name__}: {str(err)[:300]}") from err
    return report


def run_model(path: Path, arrays: dict[str, np.ndarray], batch: int = 64) -> list[np.ndarray]:
    """Every output of the ONNX file for ``arrays`` (inputs by name), run in batches."""
    from spa_export.runtime.onnxrt import OnnxRuntimeRunner

    n = len(next(iter(arrays.values())))
    parts: list[list[np.ndarray]] = []
    with OnnxRuntimeRunner(path, threads=None, memory_arena=False) as runner:
        names = list(runner.input_metadata())
        for start in range(0, n, batch):
            parts.append(list(runner.infer({k: arrays[k][start:start + batch] for k in names}).values()))
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def top1(outputs: Sequence[np.ndarray]) -> np.ndarray | None:
    """Predicted classes of the first output where it is a score per class ([N, C], C >= 2)."""
    first = outputs[0]
    if first.ndim == 2 and first.shape[1] >= 2:
        return first.argmax(axis=1)
    return None


def compare_int8(float_outputs: Sequence[np.ndarray], int8_outputs: Sequence[np.ndarray]) -> dict:
    """Output error in units of the output's scale, and top-1 disagreement, int8 against float32."""
    errors = []
    for f, q in zip(float_outputs, int8_outputs, strict=True):
        scale = float(np.abs(f).max()) or 1.0
        errors.append(float(np.abs(q.astype(np.float64) - f).max() / scale))
    out: dict = {"samples": int(len(float_outputs[0])), "max_error_of_scale": max(errors)}
    a, b = top1(float_outputs), top1(int8_outputs)
    if a is not None and b is not None:
        out["top1_disagreement_pct"] = float((a != b).mean() * 100)
    return out
