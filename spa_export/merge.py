"""Merge adapter updates into the weights and apply the masks (the task's dense network).

Works like a safe merge: on a copy of the network, in float32, checking that
every merged tensor is finite before anything is committed. The result has
the full width; masked weights are zero. Channel removal comes later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spa_export.errors import non_finite_merge
from spa_export.finite import all_finite
from spa_export.modcopy import check_complete, copy_leaving
from spa_export.spa import LayerSpa, SpaFile
from spa_export.threads import one_thread


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
    # The SPA layers' weights and biases are not copied: W' and b' replace them.
    merged = copy_leaving(model, [(name, attr) for name in spa.layers for attr in ("weight", "bias")])
    merged = merged.float().eval()
    originals, modules = dict(model.named_modules()), dict(merged.named_modules())
    report = MergeReport()
    # The copy is private until it is returned: updates go straight into it, and a non-finite
    # result discards it whole (the caller's network is never touched).
    with torch.no_grad(), one_thread():  # W' goes into the file: the same bytes on any machine
        for name, layer in sorted(spa.layers.items()):
            original, mod = originals[name], modules[name]
            weight, bias = merged_weights(original, layer)
            for tensor, what in ((weight, "weight"), (bias, "bias")):
                if tensor is not None and not all_finite(tensor):
                    raise non_finite_merge(spa.path, name, what)
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


def merged_weights(mod: nn.Module, layer: LayerSpa) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W', b')`` of one layer: adapter update added, masks applied (spec steps 2 and 3)."""
    w = mod.weight.detach().to(torch.float32).clone()
    b = None if mod.bias is None else mod.bias.detach().to(torch.float32).clone()
    out, in_ = w.shape[0], _in_size(mod)
    oi, ii = layer.kept_out_index(out), layer.kept_in_index(in_)
    update = None
    if layer.lora_cols is not None:
        update = layer.lora_cols.to(torch.float32) @ layer.lora_rows.to(torch.float32)
    elif layer.pointwise is not None:
        update = layer.pointwise.to(torch.float32).T
    if update is not None:  # W'[kept outputs, kept inputs, centre] += update, one axis at a time
        plane = w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))]
        rows = plane.index_select(0, oi)
        block = rows.index_select(1, ii)
        block += update
        rows.index_copy_(1, ii, block)
        plane.index_copy_(0, oi, rows)
    if layer.pos_weights is not None:
        protos = layer.proto_cols.to(torch.float32) @ layer.proto_rows.to(torch.float32)
        for k in range(protos.shape[0]):
            w += torch.kron(layer.pos_weights[k].to(torch.float32), protos[k])
    if layer.adapter_bias is not None:
        b[oi] += layer.adapter_bias.to(torch.float32)
    if layer.out_mask is not None:
        w[~layer.out_mask] = 0
        if b is not None:
            b[~layer.out_mask] = 0
    if layer.in_mask is not None:
        groups = getattr(mod, "groups", 1)
        per_in, per_out = in_ // groups, out // groups
        # Output o reads input channel g(o) * per_in + j at position j of its group g(o).
        reads = (torch.arange(out) // per_out)[:, None] * per_in + torch.arange(per_in)[None, :]
        w[~layer.in_mask[reads]] = 0
    if layer.block_mask is not None:
        p, q = out // layer.block_mask.shape[0], in_ // layer.block_mask.shape[1]
        w *= torch.kron(layer.block_mask.to(torch.float32), torch.ones(p, q))
    return w, b


def _in_size(mod: nn.Module) -> int:
    return mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
