"""The dense and pruned networks timed on an NVIDIA GPU with PyTorch (``torch-cuda``).

Where TensorRT is missing but PyTorch sees a CUDA device (most GPU servers),
the build times the two networks it already holds: the merged dense network
and the pruned one that was exported. Timing follows TensorRT's runner: CUDA
events around the execution alone, host-to-device and device-to-host copies
measured apart. Each batch size runs as a captured CUDA graph where the
network allows it (launch overhead gone, as in a served model); where capture
fails it runs eagerly, and the entry says so.

float16 runs the network cast to half precision; its outputs are compared
with the verified ONNX model on the CPU (:func:`spa_export.runtime.bench`),
with the tolerance stated in the report.

torch is imported inside the runner, so importing this module stays cheap.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from spa_export.runtime.runner import Feed, InputMetadata, Runner
from spa_export.safety.errors import InputError

PRECISIONS = ("fp32", "fp16")


def cuda_unavailable_reason() -> str | None:
    """Why PyTorch cannot run on a CUDA device here, or None when it can."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of every build
        return "PyTorch is not installed"
    if not torch.backends.cuda.is_built():
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


class TorchCudaRunner(Runner):
    """A network on ``cuda:0`` in float32 or float16; named like the exported ONNX file
    (input ``input``; output ``output``, or ``output0``... for several)."""

    device = "gpu"
    runtime = "torch-cuda"
    provider = "CUDA"

    def __init__(self, model: Any, sample_shape: tuple[int, ...], *, precision: str = "fp32",
                 cuda_graphs: bool = True, name: str = "model") -> None:
        super().__init__(name)
        if precision not in PRECISIONS:
            raise InputError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
        self._source = model  # never moved or cast: the runner works on its own copy
        self._shape = tuple(int(d) for d in sample_shape[1:])
        self.precision = precision
        self.use_graphs = cuda_graphs
        self.graph_fallback: str | None = None  # why a batch size ran eagerly
        self._model: Any = None
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}

    # -- lifecycle -----------------------------------------------------------------------
    def _activate(self) -> None:
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise InputError(f"cannot time on the GPU with PyTorch: {reason}")
        import torch

        self._torch = torch
        self._dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self._model = copy.deepcopy(self._source).eval().to("cuda", dtype=self._dtype)
        self._stream = torch.cuda.Stream()
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]

    def _deactivate(self) -> None:
        self._graphs = {}
        self._model = None
        if getattr(self, "_torch", None) is not None:
            self._torch.cuda.empty_cache()

    def _input_metadata(self) -> InputMetadata:
        return {"input": (np.dtype(np.float32), (None, *self._shape))}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["precision"] = self.precision
        info["cuda_graphs"] = self.use_graphs and self.graph_fallback is None
        if self.graph_fallback is not None:
            info["graph_fallback"] = self.graph_fallback
        info["host_memory"] = "pinned"
        return info

    def prepare(self, batches: list[int]) -> None:
        """Capture every batch size's graph before timing, so that one mode holds for all of them."""
        for batch in batches:
            if self._graph(batch) is None:
                break
        if self.graph_fallback is not None:
            self.disable_graphs(self.graph_fallback)

    def disable_graphs(self, reason: str) -> None:
        """Run every batch size eagerly (a network compared with this one could not be captured)."""
        self._graphs = {}
        self.use_graphs = False
        self.graph_fallback = self.graph_fallback or reason

    # -- inference -----------------------------------------------------------------------
    def _host_input(self, feed: Feed) -> np.ndarray:
        if "input" not in feed:
            raise InputError(f"runner '{self.name}': missing input 'input'")
        array = np.ascontiguousarray(feed["input"], dtype=np.float32)
        if array.shape[1:] != self._shape:
            raise InputError(f"runner '{self.name}': input of shape {array.shape}, expected "
                             f"(N, {', '.join(map(str, self._shape))})")
        return array

    def _graph(self, batch: int) -> tuple[Any, Any, Any] | None:
        """The captured graph of one batch size (static input, graph, static output), or None."""
        if not self.use_graphs or self.graph_fallback is not None:
            return None
        if batch not in self._graphs:
            torch = self._torch
            static_in = torch.zeros((batch, *self._shape), device="cuda", dtype=self._dtype)
            try:
                with torch.no_grad():
                    self._stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(self._stream):
                        for _ in range(3):  # warm-up on a side stream, as capture requires
                            self._model(static_in)
                    torch.cuda.current_stream().wait_stream(self._stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        static_out = self._model(static_in)
            except Exception as err:  # capture is an optimisation: eager still times the network
                self.graph_fallback = f"CUDA graph capture failed ({type(err).__name__}: {err}); eager"
                return None
            self._graphs[batch] = (static_in, graph, static_out)
        return self._graphs[batch]

    def _run(self, feed: Feed) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
        torch = self._torch
        host = torch.from_numpy(self._host_input(feed)).pin_memory()
        start, copied, ran, back = self._events
        captured = self._graph(host.shape[0])
        with torch.no_grad():
            start.record()
            device_in = host.to("cuda", non_blocking=True).to(self._dtype)
            copied.record()
            if captured is not None:
                static_in, graph, static_out = captured
                static_in.copy_(device_in)
                graph.replay()
                out = static_out
            else:
                out = self._model(device_in)
            ran.record()
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            results = [o.float().cpu() for o in outs]
            back.record()
        torch.cuda.synchronize()
        extras = {"h2d_ms": start.elapsed_time(copied) / 1e3, "d2h_ms": ran.elapsed_time(back) / 1e3}
        names = ["output"] if len(results) == 1 else [f"output{i}" for i in range(len(results))]
        return {n: r.numpy() for n, r in zip(names, results, strict=True)}, copied.elapsed_time(ran) / 1e3, extras

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        return self._run(feed)[0]

    def infer_timed(self, feed: Feed) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
        """Execution time from CUDA events; copies reported apart (seconds, as the base class)."""
        self._require_active()
        return self._run(feed)
