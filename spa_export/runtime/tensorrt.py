"""TensorRT engines on an NVIDIA GPU.

Isolated from the rest of the runtime: ``tensorrt`` and Polygraphy (whose CUDA
wrapper loads ``libcudart``) are imported inside functions, so this module can
be imported anywhere. :class:`TensorRTRunner` times like ``trtexec`` reports:
CUDA events around the engine's execution alone, host-to-device and
device-to-host copies measured apart.

An engine built by :func:`spa_export.runtime.engine.build_engine` has a
``<engine>.json`` beside it; the runner refuses an engine whose metadata names
another GPU or another TensorRT version, and says which.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from spa_export.runtime.runner import Dim, Feed, InputMetadata, Runner
from spa_export.safety.errors import BuildError, InputError, require_file

TENSORRT_MISSING = (
    "TensorRT is not installed: pip install 'spa-export[tensorrt]' on a machine with an NVIDIA GPU"
)
_H2D, _D2H = 1, 2  # cudaMemcpyKind
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDeviceAttr


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`InputError` saying how to get it."""
    try:
        import tensorrt
    except ImportError as err:
        raise InputError(TENSORRT_MISSING) from err
    return tensorrt


def find_cudart(paths: list[str] | None = None) -> Path | None:
    """libcudart as pip's CUDA wheels lay it out, or None.

    The wheels put it under ``site-packages/nvidia/cu<N>/lib/`` (CUDA 13) or
    ``site-packages/nvidia/cuda_runtime/lib/`` (CUDA 12) as ``libcudart.so.<N>``, without the
    ``libcudart.so`` development link that a plain ``dlopen`` (and Polygraphy's search) asks for.
    """
    for folder in (sys.path if paths is None else paths):
        for pattern in ("nvidia/cu[0-9]*/lib/libcudart.so.*", "nvidia/cuda_runtime/lib/libcudart.so.*"):
            found = sorted(Path(folder).glob(pattern)) if folder else []
            if found:
                return found[-1]
    return None


def _cudart() -> Any:
    """A handle on libcudart (a ``ctypes.CDLL``): Polygraphy's, else the one pip's CUDA wheels installed.

    Where only the wheels' library exists, its folder is added to ``LD_LIBRARY_PATH`` for this
    process, so that Polygraphy's own search finds it when the runner needs it.
    """
    first: str
    try:
        from polygraphy import cuda

        return cuda.wrapper().handle
    except ImportError:
        first = "Polygraphy is not installed (pip install 'spa-export[tensorrt]')"
    except Exception as err:  # OSError from ctypes, PolygraphyException
        first = f"Polygraphy cannot load it: {err}"
    found = find_cudart()
    if found is None:
        raise InputError(f"the CUDA runtime library cannot be loaded: {first}; and no libcudart from pip's CUDA "
                         "wheels is installed (site-packages/nvidia/*/lib)")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(found.parent),
                                                                   os.environ.get("LD_LIBRARY_PATH")]))
    try:
        return ctypes.CDLL(str(found), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise InputError(f"the CUDA runtime library {found} cannot be loaded: {err} ({first})") from err


def _check(status: int, what: str) -> None:
    if status != 0:
        raise BuildError(f"CUDA error {status} in {what}")


def gpu_count() -> tuple[int, str | None]:
    """``(number of CUDA devices, reason when 0)``."""
    handle = _cudart()
    count = ctypes.c_int(0)
    status = handle.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0:
        meaning = {35: ": the NVIDIA driver is missing or older than this CUDA runtime",
                   100: ": no CUDA-capable device"}.get(status, "")
        return 0, f"no usable NVIDIA GPU: cudaGetDeviceCount returned CUDA error {status}{meaning}"
    if count.value == 0:
        return 0, "no NVIDIA GPU found"
    return count.value, None


def gpu_unavailable_reason() -> str | None:
    """Why the TensorRT path cannot run here, or None when it can."""
    try:
        import_tensorrt()
        count, reason = gpu_count()
    except InputError as err:
        return str(err)
    return reason if count == 0 else None


def require_gpu() -> ModuleType:
    """``tensorrt`` where TensorRT and a GPU are present, else :class:`InputError`."""
    trt = import_tensorrt()
    count, reason = gpu_count()
    if count == 0:
        raise InputError(reason or "no NVIDIA GPU found")
    return trt


def gpu_device_info(device: int = 0) -> dict[str, Any]:
    """Name, compute capability and driver of a CUDA device (best effort)."""
    handle = _cudart()
    major, minor, driver = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    _check(handle.cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device),
           "cudaDeviceGetAttribute")
    _check(handle.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device),
           "cudaDeviceGetAttribute")
    handle.cudaDriverGetVersion(ctypes.byref(driver))
    name = None
    try:  # cuda-python, part of the [tensorrt] extra
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python
        err, prop = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            raw = prop.name
            name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            name = name.rstrip("\x00").strip()
    except Exception:  # no cuda-python, or another API generation: fall back
        name = None
    if not name:
        from spa_export.runtime.environment import nvidia_smi

        gpus = nvidia_smi()
        name = gpus[device]["name"] if len(gpus) > device else None
    return {
        "name": name or "unknown",
        "compute_capability": f"{major.value}.{minor.value}",
        "cuda_driver": driver.value,
    }


def metadata_path(engine_path: str | Path) -> Path:
    """Where an engine's metadata JSON lives: ``<engine>.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_engine_metadata(engine_path: str | Path) -> dict[str, Any] | None:
    """The engine's metadata, None where there is none; InputError where it is broken."""
    path = metadata_path(engine_path)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable engine metadata: {err}") from err
    if not isinstance(meta, dict):
        raise InputError(f"{path}: engine metadata is not a JSON object")
    return meta


def incompatibility(
    meta: Mapping[str, Any],
    *,
    tensorrt_version: str,
    gpu_name: str | None,
    compute_capability: str | None,
) -> str | None:
    """Why an engine with metadata ``meta`` cannot run here, or None."""
    built_trt = meta.get("tensorrt_version")
    if built_trt and built_trt != tensorrt_version:
        return f"it was built with TensorRT {built_trt}, this machine has TensorRT {tensorrt_version}"
    gpu = meta.get("gpu") or {}
    built_cc = gpu.get("compute_capability")
    if built_cc and compute_capability and built_cc != compute_capability:
        return (
            f"it was built for compute capability {built_cc} ({gpu.get('name', 'unknown GPU')}), "
            f"this GPU has {compute_capability}"
        )
    built_name = gpu.get("name")
    known = {None, "", "unknown"}
    if built_name not in known and gpu_name not in known and built_name != gpu_name:
        return f"it was built on a {built_name}, this GPU is a {gpu_name}"
    return None


class _Events:
    """Four CUDA events bracketing copy-in, execution and copy-out on one stream."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.events = []
        for _ in range(4):
            event = ctypes.c_void_p()
            _check(handle.cudaEventCreate(ctypes.byref(event)), "cudaEventCreate")
            self.events.append(event)

    def record(self, index: int, stream_ptr: int) -> None:
        _check(self._handle.cudaEventRecord(self.events[index], ctypes.c_void_p(stream_ptr)),
               "cudaEventRecord")

    def elapsed_s(self, start: int, end: int) -> float:
        ms = ctypes.c_float(0.0)
        _check(self._handle.cudaEventElapsedTime(
            ctypes.byref(ms), self.events[start], self.events[end]), "cudaEventElapsedTime")
        return ms.value / 1e3

    def destroy(self) -> None:
        for event in self.events:
            self._handle.cudaEventDestroy(event)
        self.events = []


class _DeviceBuffer:
    """Device memory that grows as needed."""

    def __init__(self) -> None:
        from polygraphy import cuda

        self._cuda = cuda.wrapper()
        self.ptr = 0
        self.nbytes = 0

    def reserve(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = self._cuda.malloc(max(nbytes, 1))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            self._cuda.free(self.ptr)
        self.ptr, self.nbytes = 0, 0


class TensorRTRunner(Runner):
    """Runs a serialised TensorRT engine (explicit batch, TensorRT 10 tensor API)."""

    runtime = "tensorrt"
    provider = "TensorRT"
    device = "gpu"

    def __init__(self, engine_path: str | Path, *, name: str | None = None) -> None:
        self.path = Path(engine_path)
        super().__init__(name if name is not None else self.path.name.split(".")[0])
        self.metadata: dict[str, Any] | None = None
        self._trt: Any = None
        self._runtime: Any = None
        self._cuda: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._events: _Events | None = None
        self._buffers: dict[str, _DeviceBuffer] = {}
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    def _activate(self) -> None:
        require_file(self.path)
        trt = require_gpu()
        self.metadata = read_engine_metadata(self.path)
        if self.metadata is not None:
            here = gpu_device_info()
            reason = incompatibility(
                self.metadata, tensorrt_version=trt.__version__,
                gpu_name=here["name"], compute_capability=here["compute_capability"],
            )
            if reason:
                raise InputError(f"{self.path}: refusing the engine: {reason}; rebuild it here "
                                 "with 'spa-export engine'")
            self.precision = self.metadata.get("precision")
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        try:
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        except Exception:  # some versions raise rather than return None
            self._engine = None
        if self._engine is None:
            raise InputError(f"{self.path}: TensorRT {trt.__version__} cannot deserialise it "
                             "(not an engine, or built by another TensorRT version or GPU)")
        self._context = self._engine.create_execution_context()
        from polygraphy import cuda

        self._trt = trt
        self._stream = cuda.Stream()
        self._cuda = _cudart()
        self._events = _Events(self._cuda)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names
                        if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._buffers = {n: _DeviceBuffer() for n in names}

    def _deactivate(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        if self._events is not None:
            self._events.destroy()
        if self._stream is not None:
            self._stream.free()
        self._buffers, self._events, self._stream = {}, None, None
        self._context = self._engine = self._runtime = None

    def _input_metadata(self) -> InputMetadata:
        meta: InputMetadata = {}
        for name in self._inputs:
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
            shape: tuple[Dim, ...] = tuple(
                None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name)
            )
            meta[name] = (dtype, shape)
        return meta

    def _run(self, feed: Feed) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
        trt, engine, context = self._trt, self._engine, self._context
        missing = [n for n in self._inputs if n not in feed]
        if missing:
            raise InputError(f"{self.path}: missing input(s) {', '.join(missing)}")
        host_in: dict[str, np.ndarray] = {}
        for name in self._inputs:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            array = np.ascontiguousarray(feed[name], dtype=dtype)
            if tuple(context.get_tensor_shape(name)) != array.shape and not \
                    context.set_input_shape(name, array.shape):
                lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                raise InputError(f"{self.path}: input '{name}' of shape {array.shape} is outside "
                                 f"the engine's profile {tuple(lo)}..{tuple(hi)}")
            host_in[name] = array
            context.set_tensor_address(name, self._buffers[name].reserve(array.nbytes))
        host_out: dict[str, np.ndarray] = {}
        for name in self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BuildError(f"{self.path}: output '{name}' has unresolved shape {shape}")
            array = np.empty(shape, dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
            host_out[name] = array
            context.set_tensor_address(name, self._buffers[name].reserve(array.nbytes))

        handle, stream, events = self._cuda, self._stream.ptr, self._events
        events.record(0, stream)
        for name, array in host_in.items():
            _check(handle.cudaMemcpyAsync(
                ctypes.c_void_p(self._buffers[name].ptr), ctypes.c_void_p(array.ctypes.data),
                ctypes.c_size_t(array.nbytes), _H2D, ctypes.c_void_p(stream)), "cudaMemcpyAsync")
        events.record(1, stream)
        if not context.execute_async_v3(stream):
            raise BuildError(f"{self.path}: TensorRT execution failed")
        events.record(2, stream)
        for name, array in host_out.items():
            _check(handle.cudaMemcpyAsync(
                ctypes.c_void_p(array.ctypes.data), ctypes.c_void_p(self._buffers[name].ptr),
                ctypes.c_size_t(array.nbytes), _D2H, ctypes.c_void_p(stream)), "cudaMemcpyAsync")
        events.record(3, stream)
        self._stream.synchronize()
        extras = {"h2d_ms": events.elapsed_s(0, 1), "d2h_ms": events.elapsed_s(2, 3)}
        return host_out, events.elapsed_s(1, 2), extras

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        return self._run(feed)[0]

    def infer_timed(self, feed: Feed) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
        """Execution time from CUDA events; copies reported as ``h2d_ms``/``d2h_ms``
        (in seconds here, like the execution time; the statistics turn them to ms)."""
        self._require_active()
        return self._run(feed)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["precision"] = self.precision
        # NumPy arrays: the copies include CUDA's staging through pinned memory (trtexec pins its buffers)
        info["host_memory"] = "pageable"
        meta = getattr(self, "metadata", None) or {}
        for key in ("tensorrt_version", "precision_method"):   # which TensorRT built it, and how precision was set
            if meta.get(key):
                info[key] = meta[key]
        return info
