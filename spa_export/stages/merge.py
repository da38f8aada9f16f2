"""Merge adapter updates into the weights and apply the masks (the task's dense network).

Works like a safe merge: on a copy of the network, in float32, checking that
every merged tensor is finite before anything is committed. The result has
the full width; masked weights are zero. Channel removal comes later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spa_export.nets.finite import all_finite
from spa_export.nets.modcopy import check_complete, copy_leaving
from spa_export.nets.threads import one_thread
from spa_export.runtime.merge_math import merge_layer
from spa_export.safety.errors import non_finite_merge
from spa_export.spa import LayerSpa, SpaFile
from spa_export.spa.projections import part_tensors, split_name, weight_names


@dataclass
class MergeReport:
    layers: int = 0
    adapters: dict[str, int] = field(default_factory=dict)
    masked_out_channels: int = 0
    masked_in_channels: int = 0

    def to_json(self) -> dict:
        return {"layers": self.layers, "adapters": self.adapters,
                "masked_out_channels": self.masked_out_channels,
                "masked_in_channels": self.masked_in_channels}


def merge(model: nn.Module, spa: SpaFile) -> tuple[nn.Module, MergeReport]:
    """Return a merged, masked float32 copy of ``model`` (overrides already applied) and a report."""
    originals = dict(model.named_modules())
    parts = {name: split_name(name, originals) for name in spa.layers}
    attention = {where[0] for where in parts.values() if where is not None}
    # The SPA layers' weights and biases are not copied: W' and b' replace them.
    leave = [(name, attr) for name, where in parts.items() if where is None for attr in ("weight", "bias")]
    leave += [(name, attr) for name in attention for attr in (*weight_names(originals[name]), "in_proj_bias")]
    merged = copy_leaving(model, leave).float().eval()
    modules = dict(merged.named_modules())
    report = MergeReport()
    # The copy is private until it is returned: updates go straight into it, and a non-finite
    # result discards it whole (the caller's network is never touched).
    with torch.no_grad(), one_thread():  # W' goes into the file: the same bytes on any machine
        for name in sorted(attention):
            _merge_attention(originals[name], modules[name], name, spa)
        for name, layer in sorted(spa.layers.items()):
            if parts[name] is None:
                original, mod = originals[name], modules[name]
                weight, bias = _checked(merged_weights(original, layer), spa, name)
                mod.weight = nn.Parameter(weight, original.weight.requires_grad)
                if bias is not None:
                    mod.bias = nn.Parameter(bias, original.bias.requires_grad)
            report.layers += 1
            if layer.kind:
                report.adapters[layer.kind] = report.adapters.get(layer.kind, 0) + 1
            if layer.out_mask is not None:
                report.masked_out_channels += int((~layer.out_mask).sum())
            if layer.in_mask is not None:
                report.masked_in_channels += int((~layer.in_mask).sum())
    check_complete(merged, "the merge")
    return merged, report


def _checked(pair: tuple[torch.Tensor, torch.Tensor | None], spa: SpaFile,
             name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    for tensor, what in zip(pair, ("weight", "bias"), strict=True):
        if tensor is not None and not all_finite(tensor):
            raise non_finite_merge(spa.path, name, what)
    return pair


def _merge_attention(original: nn.MultiheadAttention, mod: nn.MultiheadAttention, name: str,
                     spa: SpaFile) -> None:
    """``W'`` and ``b'`` of an attention's query, key and value projections, into its own tensors."""
    weights, biases = [], []
    for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        w, b = part_tensors(original, i)
        layer = spa.layers.get(f"{name}.{part}")
        if layer is None:
            w, b = w.detach().float().clone(), None if b is None else b.detach().float().clone()
        else:
            w, b = _checked(merged_weights(_Projection(w, b), layer), spa, f"{name}.{part}")
        weights.append(w)
        biases.append(b)
    names = weight_names(original)
    if original._qkv_same_embed_dim:
        mod.in_proj_weight = nn.Parameter(torch.cat(weights), original.in_proj_weight.requires_grad)
    else:
        for attr, w in zip(names, weights, strict=True):
            setattr(mod, attr, nn.Parameter(w, getattr(original, attr).requires_grad))
    if original.in_proj_bias is not None:
        mod.in_proj_bias = nn.Parameter(torch.cat(biases), original.in_proj_bias.requires_grad)


class _Projection:
    """One projection's weight and bias, read like a Linear layer's by :func:`merged_weights`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias
        self.in_features = weight.shape[1]


def merged_weights(mod: nn.Module, layer: LayerSpa) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W', b')`` of one layer: adapter update added, masks applied (spec steps 2 and 3).

    The formula is :func:`spa_export.runtime.merge_math.merge_layer`, the one a device runs when it
    materializes a task from the base and its delta: the same bits on both.
    """
    weight = mod.weight.detach().to("cpu", torch.float32).numpy()
    bias = None if mod.bias is None else mod.bias.detach().to("cpu", torch.float32).numpy()
    fields = {k: v.detach().cpu().numpy() for k, v in layer.field_tensors().items()}
    w, b = merge_layer(weight, bias, fields, groups=getattr(mod, "groups", 1))
    return torch.from_numpy(w), None if b is None else torch.from_numpy(b)
