"""Compare a network's outputs with expected ones, element by element, under stated tolerances.

The build's verification (:mod:`spa_export.stages.verify`) and the device's
``spa-export check`` (:mod:`spa_export.runtime.check`) judge outputs by this
one rule.
"""

from __future__ import annotations

import numpy as np


def compare_output(case: str, output: str, expected: np.ndarray, got: np.ndarray, rtol: float,
                   atol_scale: float) -> dict:
    """One output of one case: every element within ``atol_scale * max|expected| + rtol * |expected|``.

    Returns the comparison with its worst element (``ratio``: error over allowed error; above 1 fails).
    """
    if expected.shape != got.shape:
        worst = {"output": output, "index": [], "expected": float("nan"), "got": float("nan"),
                 "allowed": 0.0, "ratio": float("inf")}
        return {"name": case, "output": output, "batch": int(expected.shape[0]), "passed": False,
                "error": f"shape {list(got.shape)}, expected {list(expected.shape)}", "worst": worst}
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    atol = atol_scale * scale
    err = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    allowed = atol + rtol * np.abs(expected.astype(np.float64))
    ratio = np.where(allowed > 0, err / np.maximum(allowed, 1e-300), np.where(err > 0, np.inf, 0.0))
    ratio = np.where(np.isfinite(got) == np.isfinite(expected), ratio, np.inf)
    flat = int(np.argmax(ratio)) if ratio.size else 0
    idx = [int(i) for i in np.unravel_index(flat, expected.shape)] if ratio.size else []
    worst = {"output": output, "index": idx,
             "expected": float(expected.flat[flat]) if expected.size else 0.0,
             "got": float(got.flat[flat]) if got.size else 0.0,
             "allowed": float(allowed.flat[flat]) if allowed.size else 0.0,
             "ratio": float(ratio.flat[flat]) if ratio.size else 0.0}
    return {"name": case, "output": output, "batch": int(expected.shape[0]),
            "passed": bool((ratio <= 1.0).all()), "mismatches": int((ratio > 1.0).sum()),
            "max_abs_err": float(err.max()) if err.size else 0.0,
            "max_rel_err": float(err.max() / scale) if scale > 0 and err.size else 0.0,
            "atol": atol, "scale": scale, "worst": worst}
