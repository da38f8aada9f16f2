"""An adapted network rebuilt from its state dict: the base architecture plus the library's layers.

A training script saves ``model.state_dict()`` of a network adapted with
``sp_adapters``; the keys say which layer carries which adapter:

* ``L.adapter.cols`` / ``L.adapter.rows``: SPLoRA, its rank from the shapes;
* ``L.adapter`` (a matrix) on a convolution: SPPaRA;
* ``L.adapter.pos_weights`` and ``L.adapter.prototypes.*``: SPLoPA;
* ``M.q_proj.adapter.cols`` under an ``nn.MultiheadAttention`` ``M``: the
  library's ``SPLoRAMultiheadAttention`` (its projections as SPLoRA layers);
* ``L.weight_orig`` / ``L.weight_mask``: a layer still pruned with
  ``torch.nn.utils.prune``; ``L.output_mask``: a mask kept as a buffer;
* a weight whose first dimension differs from the architecture's: a new head.

Each such layer is replaced by the library's class, and the state dict is
loaded strictly: a key that fits nothing is an error that names it. Nothing
in the file runs: it is a state dict, read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from spa_export.nets.arch import build_model, load_into, set_submodule
from spa_export.pack.masks import LAYERS, refresh_pruned
from spa_export.safety.errors import CheckpointError, shown


def _resized(mod: nn.Module, out: int) -> nn.Module:
    if isinstance(mod, nn.Linear):
        return nn.Linear(mod.in_features, out, bias=mod.bias is not None)
    return type(mod)(mod.in_channels, out, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                     dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None,
                     padding_mode=mod.padding_mode)


def _adapted(name: str, mod: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    import sp_adapters as lib

    p = f"{name}."
    conv = isinstance(mod, nn.modules.conv._ConvNd)
    nd = len(mod.kernel_size) if conv else 0
    if p + "adapter.pos_weights" in state:
        if conv:
            raise CheckpointError(f"'{shown(name)}': SPLoPA adapter keys on a convolution; SPLoPA is for Linear")
        pos, cols = state[p + "adapter.pos_weights"], state.get(p + "adapter.prototypes.cols")
        rows = state.get(p + "adapter.prototypes.rows")
        if cols is None or rows is None or cols.dim() != 3 or rows.dim() != 3:
            raise CheckpointError(f"'{shown(name)}': SPLoPA pos_weights without prototypes.cols and .rows")
        return lib.SPLoPALinear.from_module(mod, num_prototypes=int(pos.shape[0]),
                                            block_shape=(int(cols.shape[1]), int(rows.shape[2])),
                                            prototype_rank=int(cols.shape[2]), shared_prototypes=False)
    cols = state.get(p + "adapter.cols")
    if cols is not None:
        if cols.dim() != 3:
            raise CheckpointError(f"'{shown(name)}.adapter.cols': expected [1, out, rank], got {list(cols.shape)}")
        cls = lib.SPLoRALinear if not conv else (lib.SPLoRAConv1d, lib.SPLoRAConv2d, lib.SPLoRAConv3d)[nd - 1]
        return cls.from_module(mod, rank=int(cols.shape[2]))
    if p + "adapter" in state:
        if not conv:
            raise CheckpointError(f"'{shown(name)}.adapter': an SPPaRA adapter on a Linear layer; "
                                  "the library has SPPaRA for convolutions only")
        return (lib.SPPaRAConv1d, lib.SPPaRAConv2d, lib.SPPaRAConv3d)[nd - 1].from_module(mod)
    return mod


def rebuild_adapted(arch: str, state: Mapping[str, torch.Tensor], *, source: object = None) -> nn.Module:
    """The adapted network whose state dict is ``state`` (eval mode)."""
    from torch.nn.utils import prune

    model = build_model(arch)
    for name, mod in list(model.named_modules()):
        cols = state.get(f"{name}.q_proj.adapter.cols")
        if isinstance(mod, nn.MultiheadAttention) and cols is not None:
            import sp_adapters as lib

            if cols.dim() != 3:
                raise CheckpointError(f"'{shown(name)}.q_proj.adapter.cols': expected [1, out, rank], "
                                      f"got {list(cols.shape)}")
            set_submodule(model, name, lib.SPLoRAMultiheadAttention.from_module(mod, rank=int(cols.shape[2])))
    for name, mod in list(model.named_modules()):
        if not name or not isinstance(mod, LAYERS):
            continue
        p = f"{name}."
        weight = state.get(p + "weight", state.get(p + "weight_orig"))
        if weight is not None and weight.dim() and weight.shape[0] != mod.weight.shape[0]:
            mod = _resized(mod, int(weight.shape[0]))
        new = _adapted(name, mod, state)
        if p + "weight_orig" in state:
            prune.identity(new, "weight")
        if p + "output_mask" in state:
            kept = state[p + "output_mask"]
            new.register_buffer("output_mask", torch.ones(kept.shape, dtype=kept.dtype))
        if new is not model.get_submodule(name):
            set_submodule(model, name, new)
    load_into(model, dict(state), source=source)
    return refresh_pruned(model).eval()   # prune's weight was computed before the state was loaded
