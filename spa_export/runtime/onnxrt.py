"""ONNX Runtime runners (CPU, and CUDA where ``onnxruntime-gpu`` provides it).

The session is configured for latency measurements that mean something:
``intra_op_num_threads`` = the physical cores (or what was asked),
``inter_op_num_threads`` = 1 and sequential execution, so that one run uses
one pool of threads, one per core. onnxruntime is imported inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from spa_export.runtime.environment import physical_cores
from spa_export.runtime.runner import Dim, Feed, InputMetadata, Runner
from spa_export.safety.errors import InputError, first_line, require_file

#: Our names of ONNX Runtime's graph optimisation levels.
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

#: ONNX tensor type strings as ONNX Runtime reports them, to numpy.
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def _import_ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise InputError("onnxruntime is not installed: pip install onnxruntime") from err
    return onnxruntime


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers on this machine."""
    return list(_import_ort().get_available_providers())


def cuda_provider_available() -> bool:
    """Whether the installed ONNX Runtime has the CUDA execution provider."""
    return CUDA_PROVIDER in available_providers()


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file with ONNX Runtime."""

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        opt_level: str = "all",
        providers: Sequence[str] = (CPU_PROVIDER,),
        name: str | None = None,
        memory_arena: bool = True,
        model: bytes | None = None,
    ) -> None:
        self.path = Path(path)
        self.model = model  # the file's bytes, already in memory (a materialized task): no file is read
        self.memory_arena = memory_arena  # False: no CPU arena (less memory for a few runs, slower for many)
        super().__init__(name if name is not None else self.path.stem)
        if opt_level not in OPT_LEVELS:
            raise InputError(
                f"unknown graph optimisation level '{opt_level}' "
                f"(expected one of {', '.join(OPT_LEVELS)})"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        if not providers:
            raise InputError("at least one execution provider is needed")
        self.providers = tuple(providers)
        self.provider = self.providers[0]
        self.device = "gpu" if self.provider == CUDA_PROVIDER else "cpu"
        self.threads = threads if threads is not None else physical_cores()
        self.opt_level = opt_level
        self._session = None
        self._output_names: list[str] = []

    def _activate(self) -> None:
        ort = _import_ort()
        if self.model is None:
            require_file(self.path)
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise InputError(
                f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)} "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, OPT_LEVELS[self.opt_level]
        )
        options.log_severity_level = 3  # errors only
        options.enable_cpu_mem_arena = self.memory_arena
        try:
            self._session = ort.InferenceSession(
                self.model if self.model is not None else str(self.path), sess_options=options, providers=list(self.providers)
            )
        except Exception as err:  # ORT raises its own pybind exception types
            first = first_line(err)
            raise InputError(f"{self.path}: ONNX Runtime cannot load it: {first}") from err
        if self.provider not in self._session.get_providers():
            raise InputError(
                f"{self.path}: ONNX Runtime did not enable {self.provider} "
                f"(enabled: {', '.join(self._session.get_providers())})"
            )
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _deactivate(self) -> None:
        self._session = None
        self._output_names = []

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._output_names, dict(feed))
        except Exception as err:  # wrong names, shapes or dtypes
            first = first_line(err)
            raise InputError(f"{self.path}: inference failed: {first}") from err
        return dict(zip(self._output_names, values, strict=True))

    def _input_metadata(self) -> InputMetadata:
        meta: InputMetadata = {}
        for arg in self._session.get_inputs():
            dtype = _ORT_TYPES.get(arg.type)
            if dtype is None:
                raise InputError(f"{self.path}: input '{arg.name}' has unsupported type {arg.type}")
            shape: tuple[Dim, ...] = tuple(
                d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None)
                for d in arg.shape
            )
            meta[arg.name] = (np.dtype(dtype), shape)
        return meta


class CudaOnnxRuntimeRunner(OnnxRuntimeRunner):
    """ONNX Runtime with the CUDA execution provider (``onnxruntime-gpu``), CPU as fallback
    for the operators CUDA lacks. Timed with the wall clock, host copies included."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        opt_level: str = "all",
        name: str | None = None,
    ) -> None:
        super().__init__(
            path, threads=threads, opt_level=opt_level,
            providers=(CUDA_PROVIDER, CPU_PROVIDER), name=name,
        )
