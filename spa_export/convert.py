"""Convert a network adapted with the ``sp_adapters`` library into an SPA file.

The library (``structured-pruning-adapters``) replaces ``Linear``/``ConvNd``
modules in place, so ``named_modules()`` names are the base network's. Where
its tensors live and how they map onto the spec (``shared/spec/spa-format.md``):

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
* The library trains every adapted layer's ``bias`` itself. The spec's
  ``adapter_bias`` is a difference to the base's bias, so it can only be
  computed with the original base (``base_state``); differing non-adapter
  entries (a new head, batch-norm statistics) become ``override.<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from spa_export.errors import InputError
from spa_export.spa import LayerSpa, SpaFile, make_spa, state_dict_digest

MaskPair = tuple[torch.Tensor | None, torch.Tensor | None]


def _library() -> dict[str, tuple[type, ...]]:
    try:
        import sp_adapters as spa_lib
    except ImportError as err:  # pragma: no cover - a test/convert-time dependency
        raise InputError("converting needs the 'structured-pruning-adapters' package") from err
    return {
        "splora": (spa_lib.SPLoRALinear, spa_lib.SPLoRAConv1d, spa_lib.SPLoRAConv2d,
                   spa_lib.SPLoRAConv3d),
        "sppara": (spa_lib.SPPaRAConv1d, spa_lib.SPPaRAConv2d, spa_lib.SPPaRAConv3d),
        "splopa": (spa_lib.SPLoPALinear,),
    }


def _adapted(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """``name -> (kind, module)`` of the adapted layers; refuses what the spec cannot hold."""
    kinds = _library()
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
        raise InputError(f"'{name}': adapter kind {type(mod).__name__} has no SPA form "
                         "(supported: SPLoRA Linear/ConvNd, SPPaRA ConvNd, SPLoPA Linear)")
    for name, (_, mod) in found.items():
        if not name:
            raise InputError("the adapted model is a single layer: wrap it in a container so it has a name")
        if getattr(mod, "groups", 1) != 1:
            raise InputError(f"'{name}': {type(mod).__name__} with groups={mod.groups}: the SPA "
                             "format allows adapters on groups == 1 layers only")
    return found


def _is_adapter_key(key: str, adapted: Mapping[str, object]) -> bool:
    return any(key.startswith(f"{name}.adapter.") or key == f"{name}.adapter" for name in adapted)


def base_state_from_sp_adapters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without adapter tensors, keyed like the original network.

    Adapted layers' biases are included as they are now (the library trains
    them): with this as the base, a converted SPA has no ``adapter_bias``.
    """
    adapted = _adapted(model)
    return {k: v.detach().to("cpu").clone().contiguous()
            for k, v in model.state_dict().items() if not _is_adapter_key(k, adapted)}


def _sizes(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    return mod.out_channels, mod.in_channels


def _mask(mask: torch.Tensor | None, size: int, name: str, which: str) -> torch.Tensor | None:
    if mask is None:
        return None
    m = torch.as_tensor(mask).detach().to("cpu")
    if m.dtype != torch.bool or m.dim() != 1 or m.numel() != size:
        raise InputError(f"'{name}': {which} must be a 1-D bool tensor of {size} entries, "
                         f"got {m.dtype} {list(m.shape)}")
    return m


def _splopa(name: str, mod: nn.Module) -> dict[str, torch.Tensor]:
    pos = mod.adapter.pos_weights.detach().float()            # [P, out/p, in/q]
    cols = mod.adapter.prototypes.cols.detach().float()       # [P, p, r]
    rows = mod.adapter.prototypes.rows.detach().float()       # [P, r, q]
    n_proto, p, r = cols.shape
    if pos.shape[0] != n_proto or pos.shape[1] * p != mod.out_features:
        raise InputError(f"'{name}': SPLoPA pos_weights {list(pos.shape)} do not fit "
                         f"prototypes {list(cols.shape)} and weight {list(mod.weight.shape)}")
    # rank-r prototype k -> r rank-1 prototypes (k, j), each with pos_weights[k]
    return {"pos_weights": pos.repeat_interleave(r, dim=0).contiguous(),
            "proto_cols": cols.permute(0, 2, 1).reshape(n_proto * r, p, 1).contiguous(),
            "proto_rows": rows.reshape(n_proto * r, 1, rows.shape[2]).contiguous()}


def _layer(name: str, kind: str | None, mod: nn.Module, masks: MaskPair,
           base_bias: torch.Tensor | None) -> LayerSpa:
    out, in_ = _sizes(mod)
    out_mask = _mask(masks[0], out, name, "out_mask")
    in_mask = _mask(masks[1], in_, name, "in_mask")
    oi = torch.arange(out) if out_mask is None else torch.nonzero(out_mask).flatten()
    ii = torch.arange(in_) if in_mask is None else torch.nonzero(in_mask).flatten()
    fields: dict[str, torch.Tensor] = {}
    if kind == "splora":
        if mod.adapter.cols.shape[0] != 1:
            raise InputError(f"'{name}': SPLoRA adapter with {mod.adapter.cols.shape[0]} filters")
        if mod.adapter.rank > 0:
            fields["lora_cols"] = mod.adapter.cols.detach()[0][oi].float().contiguous()
            fields["lora_rows"] = mod.adapter.rows.detach()[0][:, ii].float().contiguous()
    elif kind == "sppara":
        # library: W[:, :, centre] += adapter ([out, in]); spec: += adapter.T
        fields["pointwise"] = mod.adapter.detach()[oi][:, ii].float().T.contiguous()
    elif kind == "splopa":
        fields.update(_splopa(name, mod))
    if kind is not None and base_bias is not None and mod.bias is not None:
        delta = mod.bias.detach().float() - base_bias.float()
        if bool((delta != 0).any()):
            fields["adapter_bias"] = delta[oi].contiguous()
    return LayerSpa(name, out_mask=out_mask, in_mask=in_mask, **fields)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.to(b.dtype), b))


def from_sp_adapters(model: nn.Module, *, masks: Mapping[str, MaskPair] | None = None,
                     task: str | None = None, arch: str | None = None,
                     base_state: Mapping[str, torch.Tensor] | None = None) -> SpaFile:
    """The SPA file of a network adapted with ``sp_adapters``.

    ``masks`` maps module names to ``(out_mask, in_mask)`` bool tensors (either
    may be ``None``); adapter factors are then stored for kept channels only.
    With ``base_state`` (the original network's state dict) the SPA records
    ``spa.base_digest``, trained biases of adapted layers as ``adapter_bias``
    and every other differing entry as ``override.<key>``; without it the
    model's own non-adapter state is taken as the base.
    """
    adapted = _adapted(model)
    modules = dict(model.named_modules())
    masks = dict(masks or {})
    for name in masks:
        if not isinstance(modules.get(name), (nn.Linear, nn.modules.conv._ConvNd)) or not name:
            raise InputError(f"mask for '{name}': no Linear or ConvNd module of that name in the model")
    own = base_state_from_sp_adapters(model)
    overrides: dict[str, torch.Tensor] = {}
    bias_from_base: dict[str, torch.Tensor] = {}
    if base_state is not None:
        missing, extra = sorted(set(own) - set(base_state)), sorted(set(base_state) - set(own))
        if missing or extra:
            raise InputError(f"base_state does not fit the model: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        for key, value in own.items():
            base = base_state[key]
            layer = key[: -len(".bias")] if key.endswith(".bias") else None
            if layer in adapted and value.shape == base.shape:
                bias_from_base[layer] = base.detach().to("cpu")
            elif not _same(value, base.detach().to("cpu")):
                overrides[key] = value
    layers = [_layer(name, adapted[name][0] if name in adapted else None, modules[name],
                     masks.get(name, (None, None)), bias_from_base.get(name))
              for name in sorted(set(adapted) | set(masks))]
    digest = state_dict_digest(dict(base_state)) if base_state is not None else None
    return make_spa([layer for layer in layers if layer.field_tensors()], overrides, task=task,
                    arch=arch, base_digest=digest, description="converted from sp_adapters")
