"""The merge formula on numpy arrays: one layer's ``W'`` and ``b'`` (spec steps 2 and 3).

One implementation serves both halves: the build's merge
(:mod:`spa_export.stages.merge`) calls it on the base's tensors, and the
device's :mod:`spa_export.runtime.materialize` calls it on the same tensors
read from the package. So the weights a device rebuilds are the build's, bit
for bit. Every step is an elementwise IEEE operation in a fixed order: the
low-rank products are summed term by term in float64 (each float32 product is
exact there) and rounded to float32 once, instead of a matrix product whose
summation order depends on the BLAS and the processor.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: the fields of one SPA layer that the formula reads (spec tensor suffixes, as LayerSpa names them)
FIELDS = ("out_mask", "in_mask", "lora_cols", "lora_rows", "pointwise", "adapter_bias", "pos_weights",
          "proto_cols", "proto_rows", "block_mask")


def low_rank(cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``cols @ rows`` in float32, the same bits on every machine (term by term in float64)."""
    cols64, rows64 = cols.astype(np.float64), rows.astype(np.float64)
    acc = np.zeros((cols.shape[0], rows.shape[1]), dtype=np.float64)
    for k in range(cols.shape[1]):
        acc += np.multiply.outer(cols64[:, k], rows64[k])
    with np.errstate(over="ignore"):   # an overflow becomes inf: the caller checks finiteness
        return acc.astype(np.float32)


def kept(mask: np.ndarray | None, size: int) -> np.ndarray:
    """Indices (int64, ascending) of the channels a mask keeps; all where there is no mask."""
    return np.arange(size, dtype=np.int64) if mask is None else np.flatnonzero(mask).astype(np.int64)


def merge_layer(weight: np.ndarray, bias: np.ndarray | None, layer: Mapping[str, np.ndarray], *,
                groups: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W', b')``: the adapter update added, the masks applied; new float32 arrays.

    ``layer``: the layer's SPA tensors by field name (absent fields left out);
    ``groups``: the convolution's groups (1 for a Linear layer).
    """
    w = np.array(weight, dtype=np.float32, copy=True)
    b = None if bias is None else np.array(bias, dtype=np.float32, copy=True)
    out, in_ = w.shape[0], w.shape[1] * groups
    oi, ii = kept(layer.get("out_mask"), out), kept(layer.get("in_mask"), in_)
    update = None
    if layer.get("lora_cols") is not None:
        update = low_rank(layer["lora_cols"], layer["lora_rows"])
    elif layer.get("pointwise") is not None:
        update = np.ascontiguousarray(layer["pointwise"].astype(np.float32).T)
    if update is not None:  # W'[kept outputs, kept inputs, centre] += update
        plane = w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))]
        plane[np.ix_(oi, ii)] += update
    if layer.get("pos_weights") is not None:
        pos, cols, rows = layer["pos_weights"], layer["proto_cols"], layer["proto_rows"]
        for k in range(pos.shape[0]):
            w += np.kron(pos[k].astype(np.float32), low_rank(cols[k], rows[k]))
    if layer.get("adapter_bias") is not None and b is not None:
        b[oi] += layer["adapter_bias"].astype(np.float32)
    out_mask, in_mask = layer.get("out_mask"), layer.get("in_mask")
    if out_mask is not None:
        w[~out_mask.astype(bool)] = 0
        if b is not None:
            b[~out_mask.astype(bool)] = 0
    if in_mask is not None:
        per_in, per_out = in_ // groups, out // groups
        # Output o reads input channel g(o) * per_in + j at position j of its group g(o).
        reads = (np.arange(out) // per_out)[:, None] * per_in + np.arange(per_in)[None, :]
        w[~in_mask.astype(bool)[reads]] = 0
    if layer.get("block_mask") is not None:
        bm = layer["block_mask"]
        p, q = out // bm.shape[0], in_ // bm.shape[1]
        w *= np.kron(bm.astype(np.float32), np.ones((p, q), dtype=np.float32))
    return w, b
