"""Stage: check the exported file against the reference.

The reference is the spec's masked network built straight from base and SPA
(:mod:`spa_export.stages.reference`); the exported file runs in ONNX Runtime. Every
output element must satisfy ``|got - expected| <= atol + rtol * |expected|``
with ``atol = atol_scale * max|expected|`` (the output's scale) for each
case: seeded random inputs at batch 1 and a larger batch, and the user's own
``.npy``/``.npz`` inputs. All cases run; the report keeps each case's worst element. A network
with several inputs (or integer ones: token ids) gets each input's seeded random values in
its own range (:mod:`spa_export.runtime.inputs`).

The reference's outputs (:func:`expected_outputs`) are computed once, and can
be computed early: a build runs the reference before anything is merged or
pruned, while the base is still in memory, and checks the exported files
against those outputs (:func:`verify_against`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spa_export.nets.finite import all_finite
from spa_export.runtime.compare import compare_output
from spa_export.runtime.inputs import Inputs, random_arrays
from spa_export.safety.errors import InputError, VerificationError
from spa_export.safety.memory import release

#: a user's verification case: one array (a network of one input) or arrays by input name
Case = np.ndarray | dict[str, np.ndarray]

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL_SCALE = 1e-4


@dataclass
class VerifyReport:
    passed: bool
    rtol: float
    atol_scale: float
    cases: list[dict] = field(default_factory=list)
    worst: dict | None = None
    #: what the comparison cannot show (an output that is zero in every case proves only zeros)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"passed": self.passed, "rtol": self.rtol, "atol_scale": self.atol_scale,
               "cases": self.cases, "worst": self.worst}
        if self.warnings:
            out["warnings"] = self.warnings
        return out

    def summary(self) -> str:
        w = self.worst
        if w is None:
            return "no cases"
        return (f"{w['case']}: output '{w['output']}' at {w['index']}: expected {w['expected']:.9g}, "
                f"got {w['got']:.9g} (allowed error {w['allowed']:.3g})")


@dataclass
class Expected:
    """What the reference computes for every verification case, computed once.

    ``cases``: each case's name and its input arrays by input name, in the
    network's order; ``outputs``: the reference's float32 outputs for it, one
    array per network output.
    """

    cases: list[tuple[str, dict[str, np.ndarray]]]
    outputs: list[list[np.ndarray]]


def expected_outputs(reference: nn.Module, input_shape: Inputs, *, batches: tuple[int, ...] = (1, 4),
                     seed: int = 0, inputs: list[tuple[str, Case]] | None = None) -> Expected:
    """Run ``reference`` on every case: seeded random inputs at ``batches``, then the user's ``inputs``.

    The random batches go through the reference in one forward pass (each
    sample's output is its own in eval mode, and the per-layer ``W'`` are
    computed once); ONNX Runtime later runs each batch apart. ``input_shape``:
    every input of the network (InputSpecs); a user's case is one array (one
    input) or arrays by input name.
    """
    specs = input_shape
    rng = np.random.default_rng(seed)
    cases = [(f"random batch {b}", random_arrays(specs, rng, b)) for b in batches]
    outputs = _run_together(reference, [x for _, x in cases])
    for name, x in inputs or []:
        arrays = x if isinstance(x, dict) else {specs[0].name: x}
        cases.append((name, arrays))
        outputs.append(_run(reference, _tensors(arrays), name))
    return Expected(cases, outputs)


def verify(reference: nn.Module, onnx_path: Path, input_shape: Inputs, *,
           batches: tuple[int, ...] = (1, 4), seed: int = 0, inputs: list[tuple[str, Case]] | None = None,
           rtol: float = DEFAULT_RTOL, atol_scale: float = DEFAULT_ATOL_SCALE) -> VerifyReport:
    """:func:`expected_outputs` of ``reference``, then :func:`verify_against` them (float64: a copy of it)."""
    expected = expected_outputs(reference, input_shape, batches=batches, seed=seed, inputs=inputs)
    return verify_against(expected, onnx_path, rtol=rtol, atol_scale=atol_scale,
                          reference64=lambda: copy.deepcopy(reference).double())


def verify_against(expected: Expected, onnx_path: Path, *, rtol: float = DEFAULT_RTOL,
                   atol_scale: float = DEFAULT_ATOL_SCALE,
                   reference64: Callable[[], nn.Module] | None = None) -> VerifyReport:
    """Run every case of ``expected`` through the ONNX file; collect every output's comparison.

    A case that fails against the float32 reference is checked again against
    the float64 network that ``reference64`` makes (called once, on the first
    failure). On a badly conditioned network the float32 reference itself can
    be ~1e-4 of the output scale away from the masked network's function; the
    float64 one is not, so a case passes when the exported file is within
    tolerance of either. The case records which reference it was judged by.
    """
    from spa_export.runtime.onnxrt import OnnxRuntimeRunner

    report = VerifyReport(True, rtol, atol_scale)
    worst_ratio = -1.0
    network64: nn.Module | None = None
    with OnnxRuntimeRunner(onnx_path, threads=None, memory_arena=False) as runner:
        names = list(runner.input_metadata())
        for (name, x), want in zip(expected.cases, expected.outputs, strict=True):
            got = list(runner.infer(_feed(names, x, onnx_path)).values())
            compared = _compare_outputs(name, want, got, rtol, atol_scale, "float32")
            if not all(c["passed"] for c in compared) and reference64 is not None:
                if network64 is None:  # (not `or`: an empty nn.Sequential is falsy)
                    network64 = reference64()
                again = _compare_outputs(name, _run(network64, _tensors(x, double=True), name), got,
                                         rtol, atol_scale, "float64")
                if all(c["passed"] for c in again):
                    compared = again
            for case in compared:
                report.cases.append(case)
                report.passed &= case["passed"]
                if case["worst"]["ratio"] > worst_ratio:
                    worst_ratio = case["worst"]["ratio"]
                    report.worst = {"case": name, **case["worst"]}
    for output in dict.fromkeys(c["output"] for c in report.cases):
        if all(c.get("scale") == 0 for c in report.cases if c["output"] == output):
            report.warnings.append(f"output '{output}' of the masked network is zero in every case: verification "
                                   "shows only that the file outputs zeros too (a head initialised to zeros "
                                   "and never trained?)")
    return report


def _feed(names: list[str], case: dict[str, np.ndarray], onnx_path: Path) -> dict[str, np.ndarray]:
    """The case's arrays by the file's input names (the order of the network's inputs where the names differ)."""
    if set(names) == set(case):
        return {k: case[k] for k in names}
    if len(names) == len(case):
        return dict(zip(names, case.values(), strict=True))
    raise VerificationError(f"{onnx_path.name} takes inputs {names}, the network {list(case)}")


def _tensors(arrays: dict[str, np.ndarray], *, double: bool = False) -> tuple[torch.Tensor, ...]:
    out = tuple(torch.from_numpy(a) for a in arrays.values())
    return tuple(t.double() if double and t.is_floating_point() else t for t in out)


def _run_together(reference: nn.Module, batches: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The reference's outputs for each of ``batches``, from one forward pass over all of them."""
    if not batches:
        return []
    sizes = [len(next(iter(x.values()))) for x in batches]
    name = "random batch " + " and ".join(map(str, sizes))
    joined = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
    outputs = _run(reference, _tensors(joined), name)
    ends = np.cumsum(sizes)
    return [[o[end - size:end] for o in outputs] for size, end in zip(sizes, ends, strict=True)]


def _run(reference: nn.Module, x: tuple[torch.Tensor, ...], case: str) -> list[np.ndarray]:
    with torch.no_grad():
        out = reference(*x)
    out = [out] if isinstance(out, torch.Tensor) else list(out)
    release()  # the forward's activations and per-layer weights, before ONNX Runtime's
    if not all(all_finite(o) for o in out):
        raise InputError(
            f"the masked network's output is not finite on '{case}': the base or the SPA "
            "overflows in float32, so there is nothing to verify against")
    return [o.numpy() for o in out]


def _compare_outputs(case: str, expected: list[np.ndarray], got: list[np.ndarray], rtol: float,
                     atol_scale: float, reference: str) -> list[dict]:
    if len(expected) != len(got):
        raise VerificationError(f"'{case}': the masked network has {len(expected)} outputs, the ONNX file {len(got)}")
    names = ["output"] if len(expected) == 1 else [f"output{k}" for k in range(len(expected))]
    return [{**compare_output(case, n, e, g, rtol, atol_scale), "reference": reference}
            for n, e, g in zip(names, expected, got, strict=True)]
