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
    """``cols @ rows`` in float32, the same bits on every machine (term by term in float64).

    Each element is ``float32(((c0 r0 + c1 r1) + c2 r2) + ...)`` with exact float64 products:
    elementwise operations only, whose results do not depend on the processor's vector width or on a
    BLAS. Rows are done a block at a time so that the running sums stay in the cache.
    """
    cols64, rows64 = cols.astype(np.float64), rows.astype(np.float64)
    n, m = cols.shape[0], rows.shape[1]
    out = np.empty((n, m), dtype=np.float32)
    if n == 0 or m == 0:
        return out
    if cols.shape[1] == 0:
        out.fill(0)
        return out
    step = max(1, (1 << 15) // max(m, 1))   # about 256 KB of float64 running sums per block
    acc = np.empty((min(step, n), m), dtype=np.float64)
    tmp = np.empty_like(acc)
    with np.errstate(over="ignore"):   # an overflow becomes inf: the caller checks finiteness
        for start in range(0, n, step):
            stop = min(start + step, n)
            a, t = acc[:stop - start], tmp[:stop - start]
            a.fill(0)
            for k in range(cols.shape[1]):
                np.multiply.outer(cols64[start:stop, k], rows64[k], out=t)
                a += t
            out[start:stop] = a
    return out


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


def merge_kept(weight: np.ndarray, bias: np.ndarray | None, layer: Mapping[str, np.ndarray], *,
               out_keep: np.ndarray | None, in_keep: np.ndarray | None,
               groups: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W'[out_keep][:, in_keep], b'[out_keep])`` without merging the channels that are not kept.

    Every kept element goes through the very operations :func:`merge_layer` applies to it (the
    same products summed in the same order, the same float32 addition, the same zeroing), so the
    result equals slicing :func:`merge_layer`'s, bit for bit; it only skips the rest. Layers that
    the shortcut does not cover (SPLoPA, block masks, grouped convolutions) are merged whole and
    sliced.
    """
    if groups != 1 or layer.get("pos_weights") is not None or layer.get("block_mask") is not None:
        w, b = merge_layer(weight, bias, layer, groups=groups)
        if out_keep is not None:
            w, b = w[out_keep], None if b is None else b[out_keep]
        return (w if in_keep is None else w[:, in_keep]), b
    out, in_ = weight.shape[0], weight.shape[1]
    o_keep = np.arange(out) if out_keep is None else np.asarray(out_keep)
    i_keep = np.arange(in_) if in_keep is None else np.asarray(in_keep)
    w = np.asarray(np.take(np.take(weight, o_keep, axis=0), i_keep, axis=1), dtype=np.float32)
    b = None if bias is None else np.array(bias[o_keep], dtype=np.float32, copy=True)
    oi, ii = kept(layer.get("out_mask"), out), kept(layer.get("in_mask"), in_)
    # where each adapted row and column is in the slice (-1: not kept)
    o_pos, i_pos = np.full(out, -1), np.full(in_, -1)
    o_pos[o_keep], i_pos[i_keep] = np.arange(len(o_keep)), np.arange(len(i_keep))
    rows_u, cols_u = np.flatnonzero(o_pos[oi] >= 0), np.flatnonzero(i_pos[ii] >= 0)
    update = None
    if layer.get("lora_cols") is not None:
        update = low_rank(layer["lora_cols"][rows_u], layer["lora_rows"][:, cols_u])
    elif layer.get("pointwise") is not None:
        update = np.ascontiguousarray(layer["pointwise"].astype(np.float32).T[np.ix_(rows_u, cols_u)])
    if update is not None:
        plane = w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))]
        plane[np.ix_(o_pos[oi][rows_u], i_pos[ii][cols_u])] += update
    if layer.get("adapter_bias") is not None and b is not None:
        b[o_pos[oi][rows_u]] += layer["adapter_bias"].astype(np.float32)[rows_u]
    if layer.get("out_mask") is not None:
        dropped = ~layer["out_mask"].astype(bool)[o_keep]
        w[dropped] = 0
        if b is not None:
            b[dropped] = 0
    if layer.get("in_mask") is not None:
        w[:, ~layer["in_mask"].astype(bool)[i_keep]] = 0
    return w, b
