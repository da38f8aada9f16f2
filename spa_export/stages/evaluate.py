"""Stage: held-out accuracy of the task, by the masked reference network and by the exported file.

An evaluation set is an ``.npz`` archive with ``x`` (samples of the input
shape, ``[N, ...]``) and ``y`` (integer class labels, ``[N]``), and optionally
0-d strings ``dataset`` and ``split`` that name them in the report. Both
networks classify every sample (argmax of the first output); the report gives
both accuracies and how many predictions agree. Verification already proved
the two compute the same function within tolerance; this shows what that
means for the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spa_export.nets.arrays import finite_float32, read_npz
from spa_export.runtime.inputs import Inputs
from spa_export.safety.errors import InputError

#: Samples per forward pass.
EVAL_BATCH = 256


@dataclass(frozen=True)
class EvalData:
    path: Path
    x: np.ndarray
    y: np.ndarray
    dataset: str
    split: str


def read_eval(path: Path, input_shape: Inputs) -> EvalData:
    """Read and check an evaluation set for a network taking ``input_shape`` (one float input)."""
    from spa_export.runtime.inputs import describe, is_plain

    specs = input_shape
    if not is_plain(specs):
        raise InputError(f"{path}: an evaluation set (x, y) is for a network of one float input; this one "
                         f"takes {describe(specs)}")
    input_shape = specs[0].shape
    arrays = read_npz(path, ["x", "y", "dataset", "split"])
    for name in ("x", "y"):
        if name not in arrays:
            raise InputError(f"{path}: no array '{name}'; an evaluation set holds x (samples) and y (labels)")
    x, y = arrays["x"], arrays["y"]
    if x.ndim != len(input_shape) or tuple(x.shape[1:]) != tuple(input_shape[1:]) or x.shape[0] < 1:
        raise InputError(f"{path}: x has shape {list(x.shape)}, expected [N, "
                         f"{', '.join(map(str, input_shape[1:]))}]")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
        raise InputError(f"{path}: y must hold {x.shape[0]} integer labels, got {y.dtype} {list(y.shape)}")
    if (y < 0).any():
        raise InputError(f"{path}: y holds negative labels")
    label = {k: str(arrays[k]) if k in arrays and arrays[k].dtype.kind == "U" else "" for k in ("dataset", "split")}
    return EvalData(path, finite_float32(x, f"{path}: x"), y.astype(np.int64),
                    label["dataset"] or path.stem, label["split"] or "held-out")


def predict_reference(reference: nn.Module, x: np.ndarray) -> np.ndarray:
    """The reference's class for every sample of ``x`` (argmax of its first output)."""
    preds = []
    with torch.no_grad():
        for i in range(0, len(x), EVAL_BATCH):
            out = reference(torch.from_numpy(x[i:i + EVAL_BATCH]))
            out = out if isinstance(out, torch.Tensor) else out[0]
            preds.append(out.reshape(out.shape[0], -1).argmax(dim=1).numpy())
    return np.concatenate(preds)


def _predict_onnx(onnx_path: Path, x: np.ndarray) -> tuple[np.ndarray, int]:
    from spa_export.runtime.onnxrt import OnnxRuntimeRunner

    preds, classes = [], 0
    with OnnxRuntimeRunner(onnx_path, threads=None, memory_arena=False) as runner:
        name = next(iter(runner.input_metadata()))
        for i in range(0, len(x), EVAL_BATCH):
            out = next(iter(runner.infer({name: x[i:i + EVAL_BATCH]}).values()))
            out = np.asarray(out).reshape(out.shape[0], -1)
            classes = out.shape[1]
            preds.append(out.argmax(axis=1))
    return np.concatenate(preds), classes


def evaluate_int8(want: np.ndarray, int8_path: Path, data: EvalData) -> dict:
    """Accuracy of the float32 reference and of the int8 file on ``data``, and their top-1 agreement."""
    got, _ = _predict_onnx(int8_path, data.x)
    n = int(len(data.y))
    return {"dataset": data.dataset, "n": n, "reference": float((want == data.y).mean()),
            "int8": float((got == data.y).mean()), "agreeing_predictions": int((want == got).sum()),
            "top1_agreement_pct": float((want == got).mean() * 100)}


def evaluate(want: np.ndarray, onnx_path: Path, data: EvalData) -> dict:
    """Accuracy of the reference and of the ONNX file on ``data``, and their agreement.

    ``want``: the reference's classes, :func:`predict_reference` on ``data.x`` (a build
    computes them early, while the base is in memory).
    """
    got, classes = _predict_onnx(onnx_path, data.x)
    if int(data.y.max()) >= classes:
        raise InputError(f"{data.path}: y holds label {int(data.y.max())}, but the network has "
                         f"{classes} outputs")
    n = int(len(data.y))
    return {"dataset": data.dataset, "split": data.split, "n": n, "path": str(data.path),
            "reference": float((want == data.y).mean()), "exported": float((got == data.y).mean()),
            "agreeing_predictions": int((want == got).sum())}
