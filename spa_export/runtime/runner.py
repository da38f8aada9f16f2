"""One lifecycle for every inference backend.

A :class:`Runner` is built cheaply, loads its model in :meth:`Runner.activate`
and frees it in :meth:`Runner.deactivate` (or use it as a context manager), in
the manner of Polygraphy's runners. Between the two, :meth:`Runner.infer` maps
input names to arrays and returns output names to arrays.

:meth:`Runner.infer_timed` is what the timing loop calls: by default it times
``infer`` with the wall clock; a backend that can time itself more precisely
(TensorRT with CUDA events) overrides it and reports host-to-device and
device-to-host copies apart from execution.

This module imports numpy only: the runtime half never imports torch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from spa_export.safety.errors import InputError

#: A dimension of an input: an int when fixed, a str (symbolic name) or None when dynamic.
Dim = int | str | None
#: ``{input name: (numpy dtype, shape)}``.
InputMetadata = dict[str, tuple[np.dtype, tuple[Dim, ...]]]
Feed = Mapping[str, np.ndarray]


class RunnerStateError(InputError):
    """A runner used outside its active lifetime."""


class Runner:
    """Base class of the backends (ONNX Runtime, TensorRT).

    Subclasses implement :meth:`_activate`, :meth:`_deactivate`, :meth:`_infer`
    and :meth:`_input_metadata`, and set the descriptive attributes below.
    """

    #: ``"cpu"`` or ``"gpu"``.
    device: str = "cpu"
    #: ``"onnxruntime"`` or ``"tensorrt"``.
    runtime: str = ""
    #: The execution provider (ONNX Runtime) or ``"TensorRT"``.
    provider: str = ""
    #: Intra-op threads, where the backend has such a setting.
    threads: int | None = None
    #: Graph optimisation level, where the backend has one.
    opt_level: str | None = None
    #: ``"fp32"``/``"fp16"`` for engines, None where it does not apply.
    precision: str | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_active = False

    # -- lifecycle -----------------------------------------------------------------------
    def activate(self) -> Runner:
        """Load the model; a runner can be activated again after :meth:`deactivate`."""
        if self.is_active:
            raise RunnerStateError(f"runner '{self.name}' is already active")
        try:
            self._activate()
        except BaseException:
            with contextlib.suppress(Exception):
                self._deactivate()  # free whatever was set up before the failure
            raise
        self.is_active = True
        return self

    def deactivate(self) -> None:
        """Free what :meth:`activate` loaded; does nothing when not active."""
        if not self.is_active:
            return
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- inference -----------------------------------------------------------------------
    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        """Run the model once on ``feed`` and return its outputs by name."""
        self._require_active()
        return self._infer(feed)

    def infer_timed(self, feed: Feed) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
        """Run once; return ``(outputs, seconds of execution, extra stage seconds)``.

        The base implementation times :meth:`infer` with ``time.perf_counter``
        and reports no extra stages.
        """
        self._require_active()
        start = time.perf_counter()
        outputs = self._infer(feed)
        return outputs, time.perf_counter() - start, {}

    def input_metadata(self) -> InputMetadata:
        """``{name: (dtype, shape)}`` with None or a str for dynamic dimensions."""
        self._require_active()
        return self._input_metadata()

    def describe(self) -> dict[str, Any]:
        """The fields every latency entry carries about the runner."""
        return {
            "device": self.device,
            "runtime": self.runtime,
            "provider": self.provider,
            "threads": self.threads,
            "opt_level": self.opt_level,
        }

    # -- for subclasses ------------------------------------------------------------------
    def _require_active(self) -> None:
        if not self.is_active:
            raise RunnerStateError(f"runner '{self.name}' is not active: call activate() first")

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _input_metadata(self) -> InputMetadata:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "active" if self.is_active else "inactive"
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r}, {state})"
