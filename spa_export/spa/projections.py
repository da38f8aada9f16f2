"""Attention's input projections as SPA layers: ``<m>.q_proj``, ``<m>.k_proj``, ``<m>.v_proj``.

``nn.MultiheadAttention`` holds its query, key and value projections as
parameters (``in_proj_weight`` and ``in_proj_bias``, or ``q_proj_weight``,
``k_proj_weight``, ``v_proj_weight`` where keys or values have their own
width), not as ``Linear`` modules, so version 1's ``<module>.<field>`` names
have no module to name them by. spa-export reads (and writes) them under the
names the ``sp_adapters`` library gives them: for an ``nn.MultiheadAttention``
``m`` of the base with embedding width ``E``,

* ``m.q_proj``: the ``Linear`` with weight ``in_proj_weight[0:E]`` (or
  ``q_proj_weight``) and bias ``in_proj_bias[0:E]``;
* ``m.k_proj``: rows ``E:2E`` (or ``k_proj_weight``), bias ``in_proj_bias[E:2E]``;
* ``m.v_proj``: rows ``2E:3E`` (or ``v_proj_weight``), bias ``in_proj_bias[2E:3E]``.

Every field and every rule of a ``Linear`` layer applies to them unchanged
(masks, SPLoRA, SPPaRA, SPLoPA, ``adapter_bias``). The extension is
version-1 compatible: it gives a meaning only to names that version 1
refuses (they name no module), so every valid version-1 file means what it
meant, and ``spa.version`` stays ``1``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

PARTS = ("q_proj", "k_proj", "v_proj")


def split_name(name: str, modules: Mapping[str, nn.Module]) -> tuple[str, int] | None:
    """``(attention name, 0/1/2)`` where ``name`` is a projection of an ``nn.MultiheadAttention``."""
    owner, _, part = name.rpartition(".")
    if part not in PARTS or name in modules or not isinstance(modules.get(owner), nn.MultiheadAttention):
        return None
    return owner, PARTS.index(part)


def weight_names(mod: nn.MultiheadAttention) -> tuple[str, str, str]:
    """The attribute holding each projection's weight rows (``in_proj_weight`` for all three when fused)."""
    if mod._qkv_same_embed_dim:
        return ("in_proj_weight",) * 3
    return ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def part_tensors(mod: nn.MultiheadAttention, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Projection ``index``'s weight and bias: views of ``mod``'s tensors, not copies."""
    e = mod.embed_dim
    weight = getattr(mod, weight_names(mod)[index])
    if mod._qkv_same_embed_dim:
        weight = weight[index * e:(index + 1) * e]
    bias = None if mod.in_proj_bias is None else mod.in_proj_bias[index * e:(index + 1) * e]
    return weight, bias


def projection(mod: nn.MultiheadAttention, index: int) -> nn.Linear:
    """A ``Linear`` whose weight and bias are projection ``index``'s tensors (shared, read-only use)."""
    weight, bias = part_tensors(mod, index)
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return lin


def with_projections(modules: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """``modules`` plus a ``Linear`` view for every projection of every ``nn.MultiheadAttention``."""
    out = dict(modules)
    for name, mod in modules.items():
        if isinstance(mod, nn.MultiheadAttention):
            for i, part in enumerate(PARTS):
                key = f"{name}.{part}" if name else part
                if key not in out:
                    out[key] = projection(mod, i)
    return out
