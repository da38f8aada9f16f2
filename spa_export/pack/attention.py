"""``sp_adapters``' ``SPLoRAMultiheadAttention``, packed as SPA layers.

The library replaces an ``nn.MultiheadAttention`` by a subclass whose query,
key and value projections are ``SPLoRALinear`` modules ``q_proj``, ``k_proj``,
``v_proj`` (no bias of their own: the attention's ``in_proj_bias`` serves
them) beside its ``out_proj``. The base network keeps the fused tensors
(``in_proj_weight``, or ``q_proj_weight``... where keys or values have their
own width). The SPA format names the projections ``<m>.q_proj`` etc.
(:mod:`spa_export.spa.projections`), so the library's layers map one to one:
here the fused base entries are split into per-projection entries, so that
masks, adapter biases and overrides are found as for any ``Linear`` layer,
and the network's frozen weights are joined back into the fused entries.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from spa_export.spa.projections import PARTS

FUSED_WEIGHT = "in_proj_weight"
SEPARATE_WEIGHTS = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def library_attention(model: nn.Module) -> dict[str, nn.Module]:
    """``name -> module`` of the library's adapted attention modules in ``model``."""
    try:
        from sp_adapters import SPLoRAMultiheadAttention
    except ImportError:
        return {}
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SPLoRAMultiheadAttention)}


def fused_keys(name: str, mod: nn.Module) -> list[str]:
    """The base state-dict keys of attention ``name``'s projections (weights, then the bias)."""
    weights = [FUSED_WEIGHT] if mod._qkv_same_embed_dim else list(SEPARATE_WEIGHTS)
    bias = ["in_proj_bias"] if mod.in_proj_bias is not None else []
    return [f"{name}.{k}" for k in weights + bias]


def frozen_state(name: str, mod: nn.Module) -> dict[str, torch.Tensor]:
    """The attention's frozen projection tensors under the base's fused keys."""
    weights = [getattr(mod, p).weight.detach().to("cpu") for p in PARTS]
    out = {f"{name}.{FUSED_WEIGHT}": torch.cat(weights)} if mod._qkv_same_embed_dim else {
        f"{name}.{k}": w for k, w in zip(SEPARATE_WEIGHTS, weights, strict=True)}
    if mod.in_proj_bias is not None:
        out[f"{name}.in_proj_bias"] = mod.in_proj_bias.detach().to("cpu")
    return {k: v.contiguous() for k, v in out.items()}


def split_state(name: str, fused: bool, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``<name>.q_proj.weight``/``.bias`` etc. from the fused entries of ``state``."""
    out: dict[str, torch.Tensor] = {}
    if fused:
        weights = state[f"{name}.{FUSED_WEIGHT}"].chunk(3)
    else:
        weights = [state[f"{name}.{k}"] for k in SEPARATE_WEIGHTS]
    bias = state.get(f"{name}.in_proj_bias")
    biases = bias.chunk(3) if bias is not None else (None,) * 3
    for part, w, b in zip(PARTS, weights, biases, strict=True):
        out[f"{name}.{part}.weight"] = w
        if b is not None:
            out[f"{name}.{part}.bias"] = b
    return out


@torch.no_grad()
def mask_projection(attention: nn.Module, part: str, out_mask: torch.Tensor | None,
                    in_mask: torch.Tensor | None) -> None:
    """Apply a projection's masks to the library's attention (in place, on a copy the caller owns).

    Its forward pass reads ``q_proj.adapted_weight`` directly, never calling
    the layer, so the masks go into the tensors: weight and adapter rows and
    the bias for ``out_mask``, weight and adapter columns for ``in_mask``.
    """
    layer = getattr(attention, part)
    index = PARTS.index(part)
    if out_mask is not None:
        layer.weight[~out_mask] = 0
        layer.adapter.cols[:, ~out_mask] = 0
        if attention.in_proj_bias is not None:
            e = attention.embed_dim
            attention.in_proj_bias[index * e:(index + 1) * e][~out_mask] = 0
    if in_mask is not None:
        layer.weight[:, ~in_mask] = 0
        layer.adapter.rows[..., ~in_mask] = 0
