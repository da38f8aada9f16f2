"""Helpers for end-to-end tests: weight shapes of an ONNX file and of what the masks say."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn


def onnx_weight_shapes(path: Path) -> Counter:
    """Shapes of every Conv weight and Gemm/MatMul weight ([out, in]) in the file."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    shapes: Counter = Counter()
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits:
            shapes[tuple(inits[node.input[1]].shape)] += 1
        elif node.op_type == "Gemm" and node.input[1] in inits:
            w = inits[node.input[1]]
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            shapes[tuple(w.shape if trans_b else w.shape[::-1])] += 1
        elif node.op_type == "MatMul" and node.input[1] in inits:
            shapes[tuple(inits[node.input[1]].shape[::-1])] += 1
    return shapes


def mask_weight_shapes(model: nn.Module, spa) -> Counter:
    """Weight shapes the masks ask for: every output and input channel masked out is gone."""
    shapes: Counter = Counter()
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        w = mod.weight
        layer = spa.layers.get(name)
        out, rest = w.shape[0], list(w.shape[1:])
        if f"{name}.weight" in spa.overrides:
            out = spa.overrides[f"{name}.weight"].shape[0]
        if layer is not None and layer.out_mask is not None:
            out = int(layer.out_mask.sum())
        groups = getattr(mod, "groups", 1)
        if groups > 1 and groups == mod.in_channels == mod.out_channels:
            rest[0] = 1
            groups_out = out
            shapes[(groups_out, *rest)] += 1
            continue
        if layer is not None and layer.in_mask is not None:
            rest[0] = int(layer.in_mask.sum()) // groups
        shapes[(out, *rest)] += 1
    return shapes


def max_rel_error(onnx_path: Path, reference: nn.Module, shape: tuple[int, ...], seed: int = 123) -> float:
    """Largest |onnx - reference| over the reference output's scale, on a seeded batch of 3."""
    x = np.random.default_rng(seed).standard_normal((3, *shape[1:])).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    return float(np.abs(got - expected).max() / np.abs(expected).max())
