"""The ``sp_adapters`` library's adapted layers, mapped onto the SPA format's fields.

The library (``structured-pruning-adapters``) replaces ``Linear``/``ConvNd``
modules in place, so ``named_modules()`` names are the base network's. Where
its tensors live and how they map onto the spec (``docs/spa-format.md``):

* SPLoRA (``SPLoRALinear``, ``SPLoRAConv1d/2d/3d``): ``adapter.cols``
  ``[1, out, r]`` and ``adapter.rows`` ``[1, r, in]``; the update
  ``cols @ rows`` sits at the kernel centre, as in the spec.
* SPPaRA (``SPPaRAConv1d/2d/3d``): ``adapter`` is ``[out, in]`` and is added
  *as is* at the kernel centre. The spec's ``L.adapter`` is ``[in_kept,
  out_kept]`` and added transposed, so the file holds the library tensor's
  transpose.
* SPLoPA (``SPLoPALinear``): ``adapter.pos_weights`` ``[P, out/p, in/q]`` and
  prototypes ``cols @ rows`` with ``cols`` ``[P, p, r]``, ``rows`` ``[P, r, q]``.
  The spec's prototypes are rank 1; a rank-``r`` prototype is written as ``r``
  rank-1 prototypes sharing its position weights (the same sum, ``P * r``
  entries).
* Grouped and depthwise convolutions (``groups > 1``): the library adds
  ``cols @ rows`` (``[out, in/groups]``) at the kernel centre of each
  output channel's own group. Version 1 of the format allows adapters on
  ``groups == 1`` layers only, so such a layer's update is stored merged, as
  ``override.<layer>.weight`` (``W + D``): exact, readable by every version-1
  reader, and small where it matters (a depthwise weight is ``out x k x k``).
* The library trains every adapted layer's ``bias`` itself. The spec's
  ``adapter_bias`` is a difference to the base's bias.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from spa_export.safety.errors import InputError, shown

KINDS = ("splora", "sppara", "splopa")


def library() -> dict[str, tuple[type, ...]]:
    """The library's adapted layer classes by kind."""
    try:
        import sp_adapters as lib
    except ImportError as err:
        raise InputError("packing needs the 'structured-pruning-adapters' package: "
                         "pip install structured-pruning-adapters") from err
    return {
        "splora": (lib.SPLoRALinear, lib.SPLoRAConv1d, lib.SPLoRAConv2d, lib.SPLoRAConv3d),
        "sppara": (lib.SPPaRAConv1d, lib.SPPaRAConv2d, lib.SPPaRAConv3d),
        "splopa": (lib.SPLoPALinear,),
    }


def adapted_layers(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """``name -> (kind, module)`` of the adapted layers; refuses adapters the format cannot hold."""
    kinds = library()
    found: dict[str, tuple[str, nn.Module]] = {}
    for name, mod in model.named_modules():
        kind = next((k for k, classes in kinds.items() if isinstance(mod, classes)), None)
        if kind is not None:
            found[name] = (kind, mod)
    for name, mod in model.named_modules():
        if name in found or not type(mod).__module__.startswith("sp_adapters"):
            continue
        if any(name == f"{a}.adapter" or name.startswith(f"{a}.adapter.") for a in found if a):
            continue  # the adapter's own helper modules (LowRankMatrix, SPLoPAdapter)
        if type(mod).__name__ == "SPLoRAMultiheadAttention":
            continue  # its projections are SPLoRA layers (spa_export.pack.attention)
        raise InputError(f"'{shown(name)}': adapter kind {type(mod).__name__} has no SPA form "
                         "(supported: SPLoRA Linear/ConvNd/MultiheadAttention, SPPaRA ConvNd, SPLoPA Linear)")
    if "" in found:
        raise InputError("the adapted model is a single layer: wrap it in a container so it has a name")
    return found


def is_adapter_key(key: str, adapted: Mapping[str, object]) -> bool:
    """Whether a state-dict key belongs to an adapter (not to the base network)."""
    for name in adapted:
        if key == f"{name}.adapter" or key.startswith(f"{name}.adapter.") or key.startswith(f"{name}.adapter_"):
            return True
    return False


def grouped(mod: nn.Module) -> bool:
    return getattr(mod, "groups", 1) != 1


def merged_weight(mod: nn.Module) -> torch.Tensor:
    """The library's own adapted weight of a layer (``W + D``), as its forward pass uses it."""
    with torch.no_grad():
        return mod.adapted_weight.detach().to("cpu").float().contiguous()


def _splopa(name: str, mod: nn.Module) -> dict[str, torch.Tensor]:
    pos = mod.adapter.pos_weights.detach().float()            # [P, out/p, in/q]
    cols = mod.adapter.prototypes.cols.detach().float()       # [P, p, r]
    rows = mod.adapter.prototypes.rows.detach().float()       # [P, r, q]
    n_proto, p, r = cols.shape
    if pos.shape[0] != n_proto or pos.shape[1] * p != mod.out_features:
        raise InputError(f"'{shown(name)}': SPLoPA pos_weights {list(pos.shape)} do not fit "
                         f"prototypes {list(cols.shape)} and weight {list(mod.weight.shape)}")
    # rank-r prototype k -> r rank-1 prototypes (k, j), each with pos_weights[k]
    return {"pos_weights": pos.repeat_interleave(r, dim=0).contiguous(),
            "proto_cols": cols.permute(0, 2, 1).reshape(n_proto * r, p, 1).contiguous(),
            "proto_rows": rows.reshape(n_proto * r, 1, rows.shape[2]).contiguous()}


def adapter_fields(name: str, kind: str, mod: nn.Module, out_keep: torch.Tensor,
                   in_keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The layer's adapter tensors in the file's form, for the kept output and input channels."""
    if kind == "splora":
        if mod.adapter.cols.shape[0] != 1:
            raise InputError(f"'{shown(name)}': SPLoRA adapter with {mod.adapter.cols.shape[0]} filters")
        if mod.adapter.rank == 0:
            return {}
        return {"lora_cols": mod.adapter.cols.detach()[0][out_keep].float().contiguous(),
                "lora_rows": mod.adapter.rows.detach()[0][:, in_keep].float().contiguous()}
    if kind == "sppara":
        # library: W[:, :, centre] += adapter ([out, in]); spec: += adapter.T
        return {"pointwise": mod.adapter.detach()[out_keep][:, in_keep].float().T.contiguous()}
    return _splopa(name, mod)
