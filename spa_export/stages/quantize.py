"""Stage: the verified float32 network in 8 bits, judged by what it means for the task.

``model.int8.onnx`` is made from the verified ``model.onnx`` with ONNX
Runtime's quantization tools (:mod:`spa_export.runtime.quantize`). It cannot be
exact, so verification changes meaning, and the report says how:

* on the evaluation set (where the task has one): accuracy of the float32
  reference against int8, and how many top-1 predictions agree; the gate is
  ``max_accuracy_drop`` points of accuracy;
* without one: top-1 disagreement between float32 and int8 on the calibration
  and verification inputs, gated by ``max_disagreement`` percent;
* always: the largest output error on those inputs, in units of the output's
  scale.

A task over its gate fails as a failed verification does (exit 1, nothing
published).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spa_export.safety.errors import InputError, VerificationError

MIN_CALIBRATION = 16
RANDOM_CALIBRATION = 64


def read_calibration(path: Path, specs: Any) -> dict[str, np.ndarray]:
    """Calibration inputs by input name: an ``.npz`` with ``x`` (one input) or one array per input, or an ``.npy``."""
    import zipfile

    from spa_export.nets.arrays import check_input, read_inputs, read_npz

    if len(specs) == 1 and zipfile.is_zipfile(path):
        arrays = read_npz(path, ["x", specs[0].name])
        if "x" in arrays and specs[0].name not in arrays:   # an evaluation-style archive: x, inputs only
            return _enough({specs[0].name: check_input(arrays["x"], specs[0], f"{path}: array 'x'")}, path)
    return _enough(read_inputs(path, specs), path)


def _enough(arrays: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    n = len(next(iter(arrays.values())))
    if n < MIN_CALIBRATION:
        raise InputError(f"{path}: {n} calibration samples; int8 ranges need {MIN_CALIBRATION} or more real samples")
    return arrays


def quantize_task(opts: Any, staging: Path, expected: Any, evaluation: Any, predictions: Any) -> dict:
    """Write ``staging/model.int8.onnx``; return the report's ``int8`` part, or raise VerificationError."""
    from spa_export.runtime.inputs import random_arrays
    from spa_export.runtime.quantize import compare_int8, quantize_int8, run_model

    specs = opts.input_shape
    if opts.calibration == "random":
        calibration = random_arrays(specs, np.random.default_rng(opts.seed + 1), RANDOM_CALIBRATION)
        source = (f"RANDOM inputs ({RANDOM_CALIBRATION} samples, asked for with --calibration random): the ranges "
                  "do not come from real data, so int8 accuracy on real inputs is unknown")
    else:
        calibration = read_calibration(opts.calibration, specs)
        source = f"{opts.calibration} ({len(next(iter(calibration.values())))} samples)"
    report = quantize_int8(staging / "model.onnx", staging / "model.int8.onnx", calibration,
                           activations=opts.int8_activations, calibration_source=source)
    # float32 against int8 on the inputs this build has: the calibration inputs (real data, unless random)
    # and the verification cases (seeded random: often outside the calibrated ranges, so a larger error)
    out = report.to_json()
    verification = {k: np.concatenate([case[k] for _, case in expected.cases]) for k in calibration}
    out["comparison"] = compare_int8(run_model(staging / "model.onnx", calibration),
                                     run_model(staging / "model.int8.onnx", calibration))
    out["comparison"]["inputs"] = "calibration inputs"
    out["verification_cases"] = compare_int8(run_model(staging / "model.onnx", verification),
                                             run_model(staging / "model.int8.onnx", verification))
    if evaluation is not None:
        from spa_export.stages.evaluate import evaluate_int8

        out["accuracy"] = evaluate_int8(predictions, staging / "model.int8.onnx", evaluation)
        drop = (out["accuracy"]["reference"] - out["accuracy"]["int8"]) * 100
        out["gate"] = {"kind": "accuracy drop on the evaluation set (points)", "limit": opts.max_accuracy_drop,
                       "value": drop, "passed": drop <= opts.max_accuracy_drop}
    elif "top1_disagreement_pct" in out["comparison"]:
        value = out["comparison"]["top1_disagreement_pct"]
        out["gate"] = {"kind": "top-1 disagreement with float32 on the calibration inputs (%)",
                       "limit": opts.max_disagreement, "value": value, "passed": value <= opts.max_disagreement}
    else:
        out["gate"] = {"kind": "none: no evaluation set and no per-class output to compare", "passed": True}
    if not out["gate"]["passed"]:
        g = out["gate"]
        raise VerificationError(f"int8: {g['kind']} is {g['value']:.2f}, over the limit {g['limit']:g} "
                                "(--max-accuracy-drop / --max-disagreement; better calibration data, or drop "
                                "--quantize int8 for this task)")
    return out
