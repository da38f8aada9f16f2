"""The reference: the spec's masked network, built straight from base and SPA.

This is the function every build is verified against, so it is written
independently of :mod:`spa_export.merge`, :mod:`spa_export.plan` and
:mod:`spa_export.apply`: the update is placed through selection matrices
(``S_out @ U @ S_in``) rather than by indexing, and masks become
multiplicative 0/1 tensors built from the spec's sentences one by one.
"""

from __future__ import annotations

import torch
from torch import nn

from spa_export.arch import build_model, load_into, resize_for_overrides
from spa_export.spa import SpaFile


def build_reference(arch: str, base_state: dict[str, torch.Tensor], spa: SpaFile) -> nn.Module:
    """The masked network of ``spa`` on ``base_state`` (float32, eval mode)."""
    state = dict(base_state)
    state.update(spa.overrides)                                   # step 1
    model = build_model(arch, init=False)  # loaded strictly below
    resize_for_overrides(model, spa.overrides)
    load_into(model, state)
    model = model.float().eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, layer in spa.layers.items():
            mod = modules[name]
            w = mod.weight.to(torch.float32)
            out, in_ = w.shape[0], w.shape[1] * getattr(mod, "groups", 1)
            s_out = _selection(layer.out_mask, out)              # [out, out_kept]
            s_in = _selection(layer.in_mask, in_)                 # [in, in_kept]
            d = torch.zeros_like(w)                               # step 2
            full = None
            if layer.lora_cols is not None:
                full = _spread(s_out, layer.lora_cols.float() @ layer.lora_rows.float(), s_in)
            elif layer.pointwise is not None:
                full = _spread(s_out, layer.pointwise.float().T, s_in)
            if full is not None:
                centre = [k // 2 for k in w.shape[2:]]
                d[(slice(None), slice(None), *centre)] = full
            if layer.pos_weights is not None:
                for k in range(layer.pos_weights.shape[0]):
                    proto = layer.proto_cols[k].float() @ layer.proto_rows[k].float()
                    d = d + torch.kron(layer.pos_weights[k].float(), proto)
            w = w + d
            b = None if mod.bias is None else mod.bias.to(torch.float32).clone()
            if layer.adapter_bias is not None:
                b = b + torch.sparse.mm(s_out, layer.adapter_bias.float()[:, None])[:, 0]
            keep = _mask_tensor(mod, layer, w.shape)              # step 3
            mod.weight.copy_(w * keep)
            if b is not None:
                ob = torch.ones(out) if layer.out_mask is None else layer.out_mask.float()
                mod.bias.copy_(b * ob)
    return model


def _selection(mask: torch.Tensor | None, size: int) -> torch.Tensor:
    """Sparse one-hot columns for the kept entries: ``S[o, o'] = 1`` where ``o`` is the o'-th kept channel."""
    kept = torch.arange(size) if mask is None else torch.nonzero(mask).flatten()
    index = torch.stack([kept, torch.arange(len(kept))])
    return torch.sparse_coo_tensor(index, torch.ones(len(kept)), (size, len(kept)), check_invariants=True).coalesce()


def _spread(s_out: torch.Tensor, compact: torch.Tensor, s_in: torch.Tensor) -> torch.Tensor:
    """``S_out @ compact @ S_in^T``: the compact update at full size, zero for masked channels."""
    left = torch.sparse.mm(s_out, compact)                      # [out, in_kept]
    return torch.sparse.mm(s_in, left.T).T                      # [out, in]


def _mask_tensor(mod: nn.Module, layer, shape: torch.Size) -> torch.Tensor:
    keep = torch.ones(shape)
    out = shape[0]
    groups = getattr(mod, "groups", 1)
    if layer.out_mask is not None:
        for o in range(out):
            if not bool(layer.out_mask[o]):
                keep[o] = 0
    if layer.in_mask is not None:
        per_in, per_out = shape[1], out // groups
        for i in range(len(layer.in_mask)):
            if not bool(layer.in_mask[i]):
                group, pos = i // per_in, i % per_in
                keep[group * per_out:(group + 1) * per_out, pos] = 0
    if layer.block_mask is not None:
        rows, cols = layer.block_mask.shape
        p, q = out // rows, shape[1] // cols
        for r in range(rows):
            for c in range(cols):
                if not bool(layer.block_mask[r, c]):
                    keep[r * p:(r + 1) * p, c * q:(c + 1) * q] = 0
    return keep
