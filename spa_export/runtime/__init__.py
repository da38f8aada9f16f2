"""The runtime half: run and time ONNX models (ONNX Runtime) and TensorRT engines.

Nothing under this package imports torch, so ``spa-export bench`` and
``spa-export engine`` run on a device that has onnxruntime or TensorRT alone.
onnxruntime, tensorrt and polygraphy are imported inside functions.

What it holds: ``runner`` (one lifecycle for every backend), ``onnxrt``, ``tensorrt`` and
``torch_cuda`` (the backends), ``timing`` and ``bench`` (side-by-side timing), ``engine``
(TensorRT engines), ``environment`` (the machine and library versions), ``footprint`` (memory of
a running model), ``inputs`` (what a network takes: names, shapes, dtypes, value ranges),
``compare`` (outputs against expected ones under stated tolerances), ``merge_math`` (the merge
formula on numpy arrays, shared by the build and the device), ``delta`` (a task as a delta on the
base, and materializing it), ``packaged`` (a built package read on the device: each task's
verified network, from its file or its delta), ``check`` (stored verification cases, run on
the target) and ``quantize`` (int8 networks with ONNX Runtime's quantization tools, and how far
they stray from float32).

May import: spa_export.safety
"""

from __future__ import annotations

from spa_export.runtime.bench import benchmark, random_feed, speedups
from spa_export.runtime.onnxrt import CudaOnnxRuntimeRunner, OnnxRuntimeRunner
from spa_export.runtime.runner import Runner
from spa_export.runtime.tensorrt import TensorRTRunner
from spa_export.runtime.timing import (
    NonFiniteOutputError,
    Stats,
    TimingConfig,
    check_finite,
    compare,
    time_runner,
)

__all__ = [
    "CudaOnnxRuntimeRunner",
    "NonFiniteOutputError",
    "OnnxRuntimeRunner",
    "Runner",
    "Stats",
    "TensorRTRunner",
    "TimingConfig",
    "benchmark",
    "check_finite",
    "compare",
    "random_feed",
    "speedups",
    "time_runner",
]
