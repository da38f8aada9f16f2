"""The reference: the spec's masked network, built straight from base and SPA.

This is the function every build is verified against, so it is written
independently of :mod:`spa_export.stages.merge`, :mod:`spa_export.stages.plan` and
:mod:`spa_export.stages.apply`: the update is placed through selection matrices
(``S_out @ U @ S_in``) rather than by indexing, and masks become 0/1 tensors
broadcast from the spec's sentences (rows, grouped columns, blocks).

The network shares the base's tensors. Each layer of the SPA gets a
parametrization that computes ``W'`` and ``b'`` from the base's ``W`` and
``b`` whenever the layer runs, so the reference costs the base's memory plus
one layer's weight at a time, and the base's tensors are never written.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from spa_export.nets.arch import (
    build_loaded,
    load_into,
    resize_for_overrides,
    without_auxiliary_heads,
)
from spa_export.nets.finite import all_finite
from spa_export.safety.errors import non_finite_merge
from spa_export.spa import LayerSpa, SpaFile
from spa_export.spa.projections import split_name


def build_reference(arch: str, base_state: dict[str, torch.Tensor], spa: SpaFile) -> nn.Module:
    """The masked network of ``spa`` on ``base_state`` (float32, eval mode).

    ``layer.weight`` and ``layer.bias`` of every SPA layer read as the spec's
    ``W'`` and ``b'``, computed on each access.
    """
    base_state, _ = without_auxiliary_heads(arch, base_state)     # training-only heads, never run
    model = build_loaded(arch, base_state, source="the base")
    if spa.overrides:                                             # step 1
        resize_for_overrides(model, spa.overrides)
        load_into(model, {**base_state, **spa.overrides}, source=spa.path, assign=True)
    model = model.float().eval().requires_grad_(False)
    modules = dict(model.named_modules())
    attention: dict[str, dict[int, LayerSpa]] = {}
    for name, layer in spa.layers.items():
        where = split_name(name, modules)
        if where is not None:    # an attention's query, key or value projection
            attention.setdefault(where[0], {})[where[1]] = layer
            continue
        mod = modules[name]
        groups = getattr(mod, "groups", 1)
        where = (spa.path, name)
        parametrize.register_parametrization(mod, "weight", _MaskedWeight(layer, groups, where), unsafe=True)
        if mod.bias is not None:
            parametrize.register_parametrization(mod, "bias", _MaskedBias(layer, where), unsafe=True)
    for name, layers in attention.items():
        _parametrize_attention(modules[name], name, layers, spa.path)
    return model


def _parametrize_attention(mod: nn.MultiheadAttention, name: str, layers: dict[int, LayerSpa],
                           path: object) -> None:
    """The projections' ``W'`` and ``b'`` where ``nn.MultiheadAttention`` keeps them: rows of its tensors."""
    parts = ("q_proj", "k_proj", "v_proj")
    weights = [None if i not in layers else _MaskedWeight(layers[i], 1, (path, f"{name}.{parts[i]}"))
               for i in range(3)]
    if mod._qkv_same_embed_dim:
        parametrize.register_parametrization(mod, "in_proj_weight", _Rows(weights), unsafe=True)
    else:
        for i, attr in enumerate(("q_proj_weight", "k_proj_weight", "v_proj_weight")):
            if weights[i] is not None:
                parametrize.register_parametrization(mod, attr, weights[i], unsafe=True)
    if mod.in_proj_bias is not None:
        biases = [None if i not in layers else _MaskedBias(layers[i], (path, f"{name}.{parts[i]}"))
                  for i in range(3)]
        parametrize.register_parametrization(mod, "in_proj_bias", _Rows(biases), unsafe=True)


class _Rows(nn.Module):
    """A tensor of three equal row blocks (query, key, value), each through its own map or as it is."""

    def __init__(self, maps: list[nn.Module | None]) -> None:
        super().__init__()
        self.maps = maps

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        blocks = t.chunk(3)
        return torch.cat([b if f is None else f(b) for f, b in zip(self.maps, blocks, strict=True)])


class _MaskedWeight(nn.Module):
    """``W -> (W + D) * keep`` for one layer (spec steps 2 and 3)."""

    def __init__(self, layer: LayerSpa, groups: int, where: tuple[object, str]) -> None:
        super().__init__()
        self.layer = layer
        self.groups = groups
        self.where = where  # the SPA file and the layer, for the error when W' overflows

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        layer, dt = self.layer, w.dtype   # float32, unless a caller converted the network (.double())
        out, in_ = w.shape[0], w.shape[1] * self.groups
        update = None
        if layer.lora_cols is not None:
            update = layer.lora_cols.to(dt) @ layer.lora_rows.to(dt)
        elif layer.pointwise is not None:
            update = layer.pointwise.to(dt).T
        d = torch.zeros_like(w)                                   # step 2
        if update is not None:
            full = _spread(_selection(layer.out_mask, out, dt), update, _selection(layer.in_mask, in_, dt))
            centre = [k // 2 for k in w.shape[2:]]
            d[(slice(None), slice(None), *centre)] = full
        if layer.pos_weights is not None:
            for k in range(layer.pos_weights.shape[0]):
                proto = layer.proto_cols[k].to(dt) @ layer.proto_rows[k].to(dt)
                d += torch.kron(layer.pos_weights[k].to(dt), proto)
        d += w
        return _finite(d.mul_(_keep(layer, w.shape, self.groups)), self.where, "weight")   # step 3


class _MaskedBias(nn.Module):
    """``b -> (b + S_out @ adapter_bias) * out_mask``."""

    def __init__(self, layer: LayerSpa, where: tuple[object, str]) -> None:
        super().__init__()
        self.layer = layer
        self.where = where

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        layer, dt = self.layer, b.dtype
        if layer.adapter_bias is not None:
            b = b + _spread(_selection(layer.out_mask, len(b), dt), layer.adapter_bias.to(dt)[:, None], None)[:, 0]
        return _finite(b if layer.out_mask is None else b * layer.out_mask.to(dt), self.where, "bias")


def _finite(t: torch.Tensor, where: tuple[object, str], what: str) -> torch.Tensor:
    """``t``, unless the layer's merged values overflow (a task no float32 network can run)."""
    if not all_finite(t):
        raise non_finite_merge(*where, what)
    return t


def _selection(mask: torch.Tensor | None, size: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Sparse one-hot columns for the kept entries: ``S[o, o'] = 1`` where ``o`` is the o'-th kept channel.

    None where there is no mask: ``S`` is the identity.
    """
    if mask is None:
        return None
    kept = torch.nonzero(mask).flatten()
    index = torch.stack([kept, torch.arange(len(kept))])
    ones = torch.ones(len(kept), dtype=dtype)
    return torch.sparse_coo_tensor(index, ones, (size, len(kept)), check_invariants=True).coalesce()


def _spread(s_out: torch.Tensor | None, compact: torch.Tensor, s_in: torch.Tensor | None) -> torch.Tensor:
    """``S_out @ compact @ S_in^T``: the compact update at full size, zero for masked channels."""
    left = compact if s_out is None else torch.sparse.mm(s_out, compact)       # [out, in_kept]
    return left if s_in is None else torch.sparse.mm(s_in, left.T).T          # [out, in]


def _keep(layer: LayerSpa, shape: torch.Size, groups: int) -> torch.Tensor:
    """True where a weight of shape ``shape`` survives the layer's masks, False where a mask zeroes it."""
    out, per_in = shape[0], shape[1]
    spatial = (1,) * (len(shape) - 2)
    keep = torch.ones(shape, dtype=torch.bool)
    if layer.out_mask is not None:                  # W'[o] = 0
        keep &= layer.out_mask.view(out, 1, *spatial)
    if layer.in_mask is not None:                   # the weights that read input channel i
        # output channel o belongs to group o // (out / groups) and reads, at position j,
        # input channel (o // (out / groups)) * per_in + j
        reads = layer.in_mask.view(groups, per_in).repeat_interleave(out // groups, dim=0)
        keep &= reads.view(out, per_in, *spatial)
    if layer.block_mask is not None:                # pruned blocks of W'
        rows, cols = layer.block_mask.shape
        blocks = layer.block_mask.repeat_interleave(out // rows, 0).repeat_interleave(per_in // cols, 1)
        keep &= blocks.view(out, per_in, *spatial)
    return keep
