"""Checks of an SPA file against the base network it is meant for.

The reader checks what the file alone determines; this module checks what
needs the base: that every layer exists and is a ``Linear``/``ConvNd``, mask
lengths, adapter shapes against the layer's sizes, the restrictions of each
adapter kind, and the overrides (spec sections "Tensor names" and "Meaning").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from spa_export.safety.errors import SpaCompatibilityError
from spa_export.spa.digest import safetensors_dtype_name
from spa_export.spa.model import OVERRIDE_PREFIX, LayerSpa, SpaFile, tensor_name
from spa_export.spa.projections import with_projections

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _sizes(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.out_channels, module.in_channels  # type: ignore[return-value]


def _dtype(t: torch.Tensor) -> str:
    try:
        return safetensors_dtype_name(t.dtype)
    except Exception:
        return str(t.dtype)


def _resized_outputs(
    spa: SpaFile, modules: Mapping[str, nn.Module], state_dict: Mapping[str, torch.Tensor]
) -> dict[str, int]:
    """Check the overrides; return module name -> new output size for resized modules."""
    path = spa.path
    resized: dict[str, dict[str, int]] = {}
    for key, t in spa.overrides.items():
        name = OVERRIDE_PREFIX + key
        if key not in state_dict:
            raise SpaCompatibilityError(
                f"override of unknown key '{key}': the base state dict has no such entry",
                path=path,
                key=name,
            )
        base = state_dict[key]
        if base.is_floating_point() != t.is_floating_point():
            raise SpaCompatibilityError(
                f"dtype {_dtype(t)} does not fit the base entry's dtype {_dtype(base)} "
                "(float and non-float do not mix)",
                path=path,
                key=name,
            )
        if tuple(t.shape) == tuple(base.shape):
            continue
        mod_name, _, leaf = key.rpartition(".")
        module = modules.get(mod_name)
        if (
            isinstance(module, ADAPTABLE)
            and leaf in ("weight", "bias")
            and t.dim() == base.dim() >= 1
            and tuple(t.shape[1:]) == tuple(base.shape[1:])
        ):
            resized.setdefault(mod_name, {})[leaf] = int(t.shape[0])
            continue
        what = ""
        if module is not None and not isinstance(module, ADAPTABLE):
            what = f" ('{mod_name}' is a {type(module).__name__})"
        raise SpaCompatibilityError(
            f"shape {list(t.shape)} differs from the base's {list(base.shape)}; only dimension 0 "
            f"of a Linear/ConvNd weight and its bias may change{what}",
            path=path,
            key=name,
        )

    out_size: dict[str, int] = {}
    for mod_name, leaves in resized.items():
        module = modules[mod_name]
        prefix = f"{mod_name}." if mod_name else ""
        w_key, b_key = prefix + "weight", prefix + "bias"
        base_out = int(module.weight.shape[0])
        w_out = leaves.get("weight", base_out)
        has_bias = getattr(module, "bias", None) is not None
        if "weight" in leaves and has_bias and b_key not in spa.overrides:
            raise SpaCompatibilityError(
                f"resizes '{mod_name}' to {w_out} outputs but '{b_key}' is not overridden "
                f"and keeps the base's {base_out} entries; override both",
                path=path,
                key=OVERRIDE_PREFIX + w_key,
            )
        if has_bias and b_key in spa.overrides:
            b_out = int(spa.overrides[b_key].shape[0])
            if b_out != w_out:
                where = "its override" if w_key in spa.overrides else "the base weight"
                raise SpaCompatibilityError(
                    f"has {b_out} entries but '{w_key}' ({where}) has {w_out} outputs; "
                    "a weight and its bias must be resized together",
                    path=path,
                    key=OVERRIDE_PREFIX + b_key,
                )
        out_size[mod_name] = w_out
    return out_size


def _check_layer(layer: LayerSpa, module: nn.Module, out: int, in_: int, path: object) -> None:
    name = layer.name

    def err(attr: str, message: str) -> SpaCompatibilityError:
        return SpaCompatibilityError(message, path=path, key=tensor_name(name, attr))

    for attr, size, what in (("out_mask", out, "outputs"), ("in_mask", in_, "inputs")):
        mask = getattr(layer, attr)
        if mask is not None and mask.numel() != size:
            raise err(
                attr, f"expected length {size} ('{name}' has {size} {what}), got {mask.numel()}"
            )
    out_kept, in_kept = layer.out_kept(out), layer.in_kept(in_)
    kind = layer.kind
    is_linear = isinstance(module, nn.Linear)
    mtype = type(module).__name__

    if kind in ("splora", "sppara"):
        attr = "lora_cols" if kind == "splora" else "pointwise"
        label = "SPLoRA" if kind == "splora" else "SPPaRA"
        if not is_linear:
            groups = int(module.groups)  # type: ignore[arg-type]
            if groups != 1:
                raise err(
                    attr,
                    f"'{name}' is a grouped convolution (groups={groups}); {label} adapters "
                    "apply to layers with groups == 1 only",
                )
            kernel = tuple(int(k) for k in module.kernel_size)  # type: ignore[union-attr]
            if any(k % 2 == 0 for k in kernel):
                raise err(
                    attr,
                    f"'{name}' has kernel size {kernel}; {label} adapters need odd kernel sizes "
                    "(the update sits at the kernel centre)",
                )
        if kind == "splora":
            r = layer.rank
            if tuple(layer.lora_cols.shape) != (out_kept, r):  # type: ignore[union-attr]
                raise err(
                    "lora_cols",
                    f"expected shape [{out_kept}, {r}] (out_kept of '{name}', r), "
                    f"got {list(layer.lora_cols.shape)}",  # type: ignore[union-attr]
                )
            if tuple(layer.lora_rows.shape) != (r, in_kept):  # type: ignore[union-attr]
                raise err(
                    "lora_rows",
                    f"expected shape [{r}, {in_kept}] (r, in_kept of '{name}'), "
                    f"got {list(layer.lora_rows.shape)}",  # type: ignore[union-attr]
                )
        elif tuple(layer.pointwise.shape) != (in_kept, out_kept):  # type: ignore[union-attr]
            raise err(
                "pointwise",
                f"expected shape [{in_kept}, {out_kept}] (in_kept, out_kept of '{name}'), "
                f"got {list(layer.pointwise.shape)}",  # type: ignore[union-attr]
            )

    block = None
    if kind == "splopa":
        if not is_linear:
            raise err(
                "pos_weights", f"SPLoPA adapters apply to Linear layers only; '{name}' is a {mtype}"
            )
        p, q = layer.block_size  # type: ignore[misc]
        if p == 0 or q == 0 or out % p or in_ % q:
            raise err(
                "proto_cols",
                f"block size {p}x{q} does not divide the {out}x{in_} weight of '{name}'",
            )
        block = (out // p, in_ // q)
        n_proto = int(layer.pos_weights.shape[0])  # type: ignore[union-attr]
        if tuple(layer.pos_weights.shape) != (n_proto, *block):  # type: ignore[union-attr]
            raise err(
                "pos_weights",
                f"expected shape [{n_proto}, {block[0]}, {block[1]}] (P, out/p, in/q), "
                f"got {list(layer.pos_weights.shape)}",  # type: ignore[union-attr]
            )
    if layer.block_mask is not None:
        if not is_linear:
            raise err(
                "block_mask", f"block masks apply to Linear layers only; '{name}' is a {mtype}"
            )
        a, b = (int(s) for s in layer.block_mask.shape)
        if block is None and (a == 0 or b == 0 or out % a or in_ % b):
            raise err(
                "block_mask",
                f"a [{a}, {b}] block grid does not divide the {out}x{in_} weight of '{name}'",
            )
        if block is not None and (a, b) != block:
            raise err(
                "block_mask",
                f"expected shape [{block[0]}, {block[1]}] (out/p, in/q), got [{a}, {b}]",
            )

    if layer.adapter_bias is not None:
        if getattr(module, "bias", None) is None:
            raise err(
                "adapter_bias",
                f"'{name}' has no bias ({mtype} with bias=False); adapter_bias needs one",
            )
        if layer.adapter_bias.numel() != out_kept:
            raise err(
                "adapter_bias",
                f"expected shape [{out_kept}] (out_kept of '{name}'), got {list(layer.adapter_bias.shape)}",
            )


def check_compatible(
    spa: SpaFile, model: nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Raise :class:`SpaCompatibilityError` unless ``spa`` fits the base ``model``.

    ``model`` has the base shapes; ``state_dict`` is the base state dict (the
    keys overrides may replace). Resizing overrides change a module's output
    size for the checks of its masks and adapters.
    """
    modules = dict(model.named_modules())
    out_size = _resized_outputs(spa, modules, state_dict)
    if any(isinstance(m, nn.MultiheadAttention) for m in modules.values()):
        modules = with_projections(modules)   # '<attention>.q_proj' etc. (spa_export.spa.projections)
    for name, layer in spa.layers.items():
        first = next(iter(layer.tensors()), None)
        module = modules.get(name)
        if module is None:
            raise SpaCompatibilityError(
                f"the base network has no module '{name}'", path=spa.path, key=first
            )
        if not isinstance(module, ADAPTABLE):
            raise SpaCompatibilityError(
                f"'{name}' is a {type(module).__name__}, expected Linear or ConvNd",
                path=spa.path,
                key=first,
            )
        out, in_ = _sizes(module)
        _check_layer(layer, module, out_size.get(name, out), in_, spa.path)
