"""Making SPA files: from a network trained with ``sp_adapters`` (``pack``, here) or from the spec
alone (``synth``: random adapters and masks for a base, for tests and benchmarks).

What it holds: this module (``pack_model``, ``pack_checkpoint``), ``adapters`` and ``attention``
(the library's tensors -> SPA fields), ``masks`` (masks from wherever training left them),
``rebuild`` (the adapted network again from a saved state dict), ``convert`` (the earlier names
of this API) and ``synth``.

May import: spa_export.stages, spa_export.nets, spa_export.runtime, spa_export.spa, spa_export.safety

``pack``: the SPA file of a network adapted and pruned with ``sp_adapters``, as small as it can be.

What training leaves behind is a whole network: the frozen base weights
(with pruned rows zeroed), the adapters, a new head, fine-tuned batch-norm
statistics. The SPA file keeps only what the task adds:

* adapter factors, for the kept channels only (:mod:`spa_export.pack.adapters`);
* masks, from wherever training left them (:mod:`spa_export.pack.masks`);
* an ``override.<key>`` only for an entry that really differs from the base:
  not for a weight that equals the base outside its masked channels (the
  mask says it), not for batch-norm's ``num_batches_tracked`` counters (they
  do not change the function in eval mode). Every override is reported with
  its reason.

Then the file is checked: the spec's masked network built from the base and
the new SPA must compute what the adapted network computes with its masks
applied, and the report says whether that is also the adapted network's own
forward pass (it is when the masked channels are really pruned in it).

``pack_model`` takes an in-memory network (a training script);
``pack_checkpoint`` a saved state dict (``spa-export pack``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from spa_export.pack.adapters import (
    adapted_layers,
    adapter_fields,
    grouped,
    is_adapter_key,
    merged_weight,
)
from spa_export.pack.attention import (
    frozen_state,
    fused_keys,
    library_attention,
    mask_projection,
    split_state,
)
from spa_export.pack.masks import LayerMasks, MaskPair, find_masks, pruning_hooks, refresh_pruned
from spa_export.runtime.inputs import Inputs
from spa_export.safety.errors import InputError, VerificationError, shown
from spa_export.spa import LayerSpa, SpaFile, make_spa, spa_bytes, state_dict_digest
from spa_export.spa.projections import PARTS

#: Tolerance of the check, as for a build: |got - want| <= ATOL x output scale + RTOL x |want|.
RTOL = 1e-4
ATOL = 1e-4


@dataclass
class PackResult:
    spa: SpaFile
    report: dict = field(default_factory=dict)


def _owner(key: str) -> tuple[str, str]:
    module, _, attr = key.rpartition(".")
    return module, attr


def network_state(model: nn.Module, adapted: Mapping[str, object], keys: list[str] | None) -> dict[str, torch.Tensor]:
    """The adapted network's entries under the base network's keys (adapters and pruning state left out).

    A layer still pruned with ``torch.nn.utils.prune`` gives its effective
    (masked) ``weight``; ``output_mask`` buffers are masks, not state.
    """
    own = model.state_dict()
    names = keys if keys is not None else [
        k for k in own if not is_adapter_key(k, adapted)
        and not k.endswith(("_orig", "_mask")) and not k.endswith(".output_mask")]
    names = names + [k[: -len("_orig")] for k in own if k.endswith("weight_orig") and keys is None]
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key in names:
        module, attr = _owner(key)
        value = getattr(modules.get(module), attr, None) if module in modules else None
        if not isinstance(value, torch.Tensor):
            raise InputError(f"the adapted network has no entry '{shown(key)}' that the base has")
        out[key] = value.detach().to("cpu").contiguous()
    return out


def _keep_index(mask: torch.Tensor | None, size: int) -> torch.Tensor:
    return torch.arange(size) if mask is None else torch.nonzero(mask).flatten()


def _sizes(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    return mod.out_channels, mod.in_channels


def _outside_masks(value: torch.Tensor, base: torch.Tensor, masks: LayerMasks | None,
                   mod: nn.Module | None) -> bool:
    """Whether ``value`` equals ``base`` wherever the layer's masks do not prune (the masks say the rest)."""
    if value.shape != base.shape:
        return False
    differs = value.to(base.dtype) != base
    if not bool(differs.any()):
        return True
    if masks is None:
        return False
    allowed = torch.zeros_like(differs)
    if masks.out_mask is not None and differs.dim() >= 1:
        allowed |= (~masks.out_mask).reshape(-1, *([1] * (differs.dim() - 1)))
    if masks.in_mask is not None and differs.dim() >= 2 and not (mod is not None and grouped(mod)):
        allowed |= (~masks.in_mask).reshape(1, -1, *([1] * (differs.dim() - 2)))
    return bool((differs & ~allowed).sum() == 0)


def _reason(key: str, value: torch.Tensor, base: torch.Tensor, mod: nn.Module | None) -> str:
    if value.shape != base.shape:
        return f"resized from {list(base.shape)} to {list(value.shape)} (a new head)"
    if isinstance(mod, nn.modules.batchnorm._NormBase):
        return ("batch-norm statistics" if key.endswith(("running_mean", "running_var"))
                else "batch-norm affine parameters")
    return f"changed {_owner(key)[1]}"


def pack_model(model: nn.Module, base_state: Mapping[str, torch.Tensor] | None, *,
               masks: Mapping[str, MaskPair] | None = None, task: str | None = None, arch: str | None = None,
               input_shape: object = None, description: str | None = None,
               seed: int = 0, masks_source: str = "the given masks", accept_masks: bool = False) -> PackResult:
    """The SPA file of the adapted network ``model`` over ``base_state``, and the report of it.

    ``base_state`` is the original network's state dict (None: the network's
    own non-adapter state is the base). ``masks`` maps layer names to
    ``(out_mask, in_mask)``; more are found in the network itself. With
    ``arch`` and ``input_shape`` (a shape, or InputSpecs: see :mod:`spa_export.runtime.inputs`) the file is
    checked against the network.
    ``model`` is not changed.

    When the file is checked and the SPA's masked network does not compute what ``model``
    itself computes (masked output channels that its adapters or biases still write), that
    is a :class:`~spa_export.safety.errors.VerificationError` naming the layers, unless
    ``accept_masks``: then the masks' meaning is what ships, and the SPA's description and
    the report's ``check.accepted`` say so.
    """
    if pruning_hooks(model):   # prune's weight may be stale: read a copy with it computed again
        model = refresh_pruned(copy.deepcopy(model))
    adapted = adapted_layers(model)
    attention = library_attention(model)
    fused = {k: name for name, mod in attention.items() for k in fused_keys(name, mod)}
    net = network_state(model, adapted, [k for k in base_state if k not in fused] if base_state is not None else None)
    for name, mod in attention.items():       # the library's attention holds them split (pack.attention)
        net = {k: v for k, v in net.items() if not any(k.startswith(f"{name}.{p}.") for p in PARTS)}
        net.update(frozen_state(name, mod))
    base = {k: v.detach().to("cpu") for k, v in (base_state if base_state is not None else net).items()}
    # Each projection's weight and bias, as a Linear layer's entries (masks, adapter_bias, overrides).
    split_net, split_base = {}, {}
    for name, mod in attention.items():
        split_net.update(split_state(name, mod._qkv_same_embed_dim, net))
        split_base.update(split_state(name, mod._qkv_same_embed_dim, base))
    found = find_masks(model, {**base, **split_base}, masks, given_source=masks_source)
    modules = dict(model.named_modules())
    overrides: dict[str, torch.Tensor] = {}
    reasons: list[dict] = []
    skipped: list[dict] = []
    layers: list[LayerSpa] = []
    absorbed: set[str] = set()   # state entries the layers carry (adapter_bias, merged weights)
    for name in sorted(set(adapted) | set(found)):
        mod = modules[name]
        kind = adapted[name][0] if name in adapted else None
        lm = found.get(name, LayerMasks())
        out_size, in_size = _sizes(mod)
        fields: dict[str, torch.Tensor] = {}
        if kind is not None and grouped(mod):
            overrides[f"{name}.weight"] = merged_weight(mod)
            reasons.append({"key": f"{name}.weight", "reason": f"adapter on a grouped convolution "
                            f"(groups={mod.groups}), stored merged: version 1 has no grouped adapter",
                            "elements": overrides[f"{name}.weight"].numel()})
            absorbed.add(f"{name}.weight")
        elif kind is not None:
            fields = adapter_fields(name, kind, mod, _keep_index(lm.out_mask, out_size),
                                    _keep_index(lm.in_mask, in_size))
            bias_key = f"{name}.bias"
            nets, bases = {**net, **split_net}, {**base, **split_base}
            if bias_key in nets and bias_key in bases and nets[bias_key].shape == bases[bias_key].shape:
                delta = nets[bias_key].float() - bases[bias_key].float()
                if bool((delta != 0).any()):
                    fields["adapter_bias"] = delta[_keep_index(lm.out_mask, out_size)].contiguous()
                absorbed.add(bias_key)
        layer = LayerSpa(name, out_mask=lm.out_mask, in_mask=lm.in_mask, **fields)
        if layer.field_tensors():
            layers.append(layer)
    for key, owner in fused.items():
        if key.endswith("in_proj_bias"):
            absorbed.add(key)         # the projections' adapter_bias (all three are SPLoRA layers)
        elif all(_outside_masks(split_net[k], split_base[k], found.get(k.rpartition(".")[0]), None)
                 for k in split_net if k.startswith(f"{owner}.") and k.endswith(".weight")):
            absorbed.add(key)         # the frozen weights are the base's, but for masked rows and columns
    for key, value in net.items():
        if key in absorbed:
            continue
        if key not in base:
            raise InputError(f"the adapted network has an entry '{shown(key)}' that the base lacks")
        module, attr = _owner(key)
        mod = modules.get(module)
        if attr == "num_batches_tracked":
            if not torch.equal(value, base[key]):
                skipped.append({"key": key, "reason": "batch-norm counter: no effect in eval mode"})
            continue
        if _outside_masks(value, base[key], found.get(module), mod):
            continue
        overrides[key] = value
        reasons.append({"key": key, "reason": _reason(key, value, base[key], mod), "elements": value.numel()})
    digest = state_dict_digest(dict(base_state)) if base_state is not None else None
    spa = make_spa(layers, overrides, task=task, arch=arch, base_digest=digest,
                   description=description or "packed from an sp_adapters network")
    report = _report(spa, base, found, reasons, skipped, adapted)
    if arch is not None and input_shape is not None:
        from spa_export.runtime.inputs import as_inputs

        report["check"] = check(model, spa, base, arch, as_inputs(input_shape), found, seed=seed)
        differs = report["check"].get("why_own_forward_differs")
        if differs is not None:
            if not accept_masks:
                raise VerificationError(
                    "the packed SPA does not compute what the trained network computes: "
                    f"{'; '.join(differs[:3]) or 'its output differs'}"
                    f"{f' and {len(differs) - 3} more layer(s)' if len(differs) > 3 else ''}. "
                    "The masks prune channels the network still writes; zero the pruned rows of each "
                    "adapter (and bias) in training so that the network is its masks, or accept the masks' "
                    "meaning (--accept-masks; recorded in the SPA) if the masked network is what you want")
            note = (f"masks accepted (--accept-masks): the masked channels that the trained network still "
                    f"wrote are zeroed, as the masks say ({len(differs)} layer(s))")
            spa = make_spa(layers, overrides, task=task, arch=arch, base_digest=digest,
                           description=f"{spa.description}; {note}")
            report["check"]["accepted"] = note
            report["spa_bytes"] = len(spa_bytes(spa))
            report["fraction_of_base"] = report["spa_bytes"] / max(report["base_tensor_bytes"], 1)
    return PackResult(spa, report)


def _report(spa: SpaFile, base: Mapping[str, torch.Tensor], found: Mapping[str, LayerMasks],
            reasons: list[dict], skipped: list[dict], adapted: Mapping[str, tuple[str, nn.Module]]) -> dict:
    size = len(spa_bytes(spa))
    base_bytes = sum(t.numel() * t.element_size() for t in base.values())
    return {
        "spa_bytes": size, "base_tensor_bytes": base_bytes, "fraction_of_base": size / max(base_bytes, 1),
        "learned_params": spa.learned_parameter_count(),
        "adapters": {name: kind for name, (kind, _) in sorted(adapted.items())},
        "masks": [m.to_json(name) for name, m in sorted(found.items())],
        "overrides": sorted(reasons, key=lambda r: r["key"]),
        "not_stored": skipped,
    }


def _masked_forward(model: nn.Module, found: Mapping[str, LayerMasks], x: torch.Tensor,
                    apply: bool) -> torch.Tensor:
    handles = []
    modules = dict(model.named_modules())
    attention = library_attention(model)
    if apply:
        for name, lm in found.items():
            owner, _, part = name.rpartition(".")
            if owner in attention and part in PARTS:   # never called as a layer: masked in its tensors
                mask_projection(attention[owner], part, lm.out_mask, lm.in_mask)
                continue
            mod = modules[name]
            axis = -1 if isinstance(mod, nn.Linear) else 1
            if lm.out_mask is not None:
                m = lm.out_mask.float()
                handles.append(mod.register_forward_hook(
                    lambda _m, _a, out, m=m, axis=axis: out * _shape(m, out, axis)))
            if lm.in_mask is not None and not grouped(mod):
                m = lm.in_mask.float()
                handles.append(mod.register_forward_pre_hook(
                    lambda _m, args, m=m, axis=axis: (args[0] * _shape(m, args[0], axis), *args[1:])))
    try:
        with torch.no_grad():
            out = model(*x)
    finally:
        for h in handles:
            h.remove()
    return out if isinstance(out, torch.Tensor) else out[0]


def _shape(mask: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    if axis == -1:
        return mask
    return mask.reshape(1, -1, *([1] * (like.dim() - 2)))


def _error(got: torch.Tensor, want: torch.Tensor) -> tuple[float, bool]:
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = (got.double() - want.double()).abs()
    allowed = ATOL * scale + RTOL * want.double().abs()
    return (float(err.max()) / scale if scale > 0 else float(err.max())), bool((err <= allowed).all())


def check(model: nn.Module, spa: SpaFile, base: Mapping[str, torch.Tensor], arch: str,
          inputs: Inputs, found: Mapping[str, LayerMasks], *, seed: int = 0) -> dict:
    """The SPA's masked network against the adapted network, with its masks applied and as it is.

    Raises :class:`InputError` when the first comparison fails: the file
    would not compute what the masks say of the network.
    """
    from spa_export.runtime.inputs import describe, random_tensors
    from spa_export.stages.reference import build_reference

    net = copy.deepcopy(model).eval()   # the caller's network is left as it was
    specs = inputs
    x = random_tensors(specs, 2, torch.Generator().manual_seed(seed))
    reference = build_reference(arch, dict(base), spa)
    with torch.no_grad():
        got = reference(*x)
    got = got if isinstance(got, torch.Tensor) else got[0]
    own_err, own_ok = _error(got, _masked_forward(net, found, x, apply=False))
    masked_err, masked_ok = _error(got, _masked_forward(net, found, x, apply=True))   # masks the copy
    if not masked_ok:
        raise InputError(f"the packed SPA does not compute what the adapted network computes with its masks "
                         f"(worst error {masked_err:.3g} of the output's scale); please report it")
    result = {"inputs": f"2 seeded random samples of {describe(specs)}", "rtol": RTOL, "atol_scale": ATOL,
              "vs_masked_network": {"max_err_over_scale": masked_err, "passed": masked_ok},
              "vs_own_forward": {"max_err_over_scale": own_err, "passed": own_ok}}
    if not own_ok:
        result["why_own_forward_differs"] = _leaks(net, found)
    return result


def _leaks(model: nn.Module, found: Mapping[str, LayerMasks]) -> list[str]:
    """Layers whose masked output channels the network itself still computes (adapter or bias)."""
    modules = dict(model.named_modules())
    out = []
    for name, lm in sorted(found.items()):
        if lm.out_mask is None:
            continue
        mod = modules[name]
        weight = getattr(mod, "adapted_weight", mod.weight)
        rows = weight.detach().reshape(weight.shape[0], -1)[~lm.out_mask]
        bias = mod.bias.detach()[~lm.out_mask] if getattr(mod, "bias", None) is not None else torch.zeros(0)
        live = int(((rows != 0).any(dim=1)).sum()) + int((bias != 0).sum())
        if live:
            out.append(f"{name}: {live} masked output channel(s) still written by its adapter or bias")
    return out


def pack_checkpoint(arch: str, base: Path, adapted: Path, *, masks: Path | None = None, task: str | None = None,
                    input_shape: object, seed: int = 0, accept_masks: bool = False) -> PackResult:
    """:func:`pack_model` of a saved adapted state dict (``spa-export pack``)."""
    from spa_export.nets.checkpoint import load_state_dict_file
    from spa_export.pack.rebuild import rebuild_adapted

    base_state = load_state_dict_file(base)
    state = load_state_dict_file(adapted)
    model = rebuild_adapted(arch, state, source=adapted)
    given = _read_masks(masks) if masks is not None else None
    result = pack_model(model, base_state, masks=given, task=task, arch=arch, input_shape=input_shape,
                        seed=seed, masks_source=f"--masks {masks}", accept_masks=accept_masks)
    result.report["base_bytes"] = base.stat().st_size
    result.report["fraction_of_base"] = result.report["spa_bytes"] / max(base.stat().st_size, 1)
    return result


def _read_masks(path: Path) -> dict[str, MaskPair]:
    """A masks file: safetensors with ``<layer>.out_mask`` and ``<layer>.in_mask`` (bool or 0/1)."""
    from spa_export.nets.checkpoint import load_state_dict_file

    raw = load_state_dict_file(path)
    out: dict[str, list[torch.Tensor | None]] = {}
    for key, value in raw.items():
        layer, _, side = key.rpartition(".")
        if side not in ("out_mask", "in_mask") or not layer:
            raise InputError(f"{path}: '{shown(key)}': a masks file holds '<layer>.out_mask' and "
                             "'<layer>.in_mask' entries")
        out.setdefault(layer, [None, None])[0 if side == "out_mask" else 1] = value
    return {k: (v[0], v[1]) for k, v in out.items()}
