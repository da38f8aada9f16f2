"""What an SPA file holds, and with a base, what the pruned task network costs."""

from __future__ import annotations

from pathlib import Path

from spa_export.spa import read_spa


def inspect_spa(path: Path, *, base: Path | None = None, arch: str | None = None,
                input_shape: object = None) -> dict:
    """``input_shape``: a shape, InputSpecs, or what ``--input-shape`` gives (see spa_export.runtime.inputs)."""
    spa = read_spa(path)
    info: dict = {"path": str(path), "task": spa.task, "arch": spa.arch, "metadata": dict(spa.metadata),
                  "learned_params": spa.learned_parameter_count(), "overrides": sorted(spa.overrides),
                  "layers": []}
    sizes: dict[str, tuple[int, int]] = {}
    if base is not None:
        from spa_export.nets.metrics import count_params
        from spa_export.stages.load import load_inputs
        from spa_export.stages.merge import merge

        loaded = load_inputs(base, path, arch)
        for name, mod in loaded.model.named_modules():
            if hasattr(mod, "weight") and name in spa.layers:
                sizes[name] = (mod.weight.shape[0], getattr(mod, "in_features", getattr(mod, "in_channels", 0)))
        merged, _ = merge(loaded.model, spa)
        dense = count_params(merged)
        info["dense_params"] = dense
        info["ratio_vs_finetune"] = info["learned_params"]["total"] / max(dense, 1)
        if input_shape:
            from spa_export.nets.footprint import activation_footprint
            from spa_export.nets.metrics import checked_macs
            from spa_export.runtime.inputs import as_inputs, as_option
            from spa_export.safety.memory import check_fits
            from spa_export.stages.apply import apply_plan
            from spa_export.stages.plan import make_plan

            specs = as_inputs(input_shape)
            footprint = activation_footprint(loaded.arch, spa.overrides, specs, spa_path=path)
            if footprint is None or footprint.macs is None:
                checked_macs(merged, specs, loaded.arch)   # that the inputs fit, where the meta pass could not tell
            check_fits(footprint, {}, as_option(specs), traced=specs[0].shape[0])
            info["pruned_params"] = count_params(apply_plan(merged, make_plan(merged, specs)))
    for name, layer in sorted(spa.layers.items()):
        out, in_ = sizes.get(name, (None, None))
        if layer.out_mask is not None:
            out = len(layer.out_mask)
        if layer.in_mask is not None:
            in_ = len(layer.in_mask)
        out = out or _adapter_width(layer, "out")   # no mask, no base: an adapter spans the whole layer
        in_ = in_ or _adapter_width(layer, "in")
        info["layers"].append({
            "name": name, "kind": layer.kind, "rank": layer.rank, "out": out, "in": in_,
            "out_kept": layer.out_kept(out) if out else None, "in_kept": layer.in_kept(in_) if in_ else None,
        })
    return info


def _adapter_width(layer: object, side: str) -> int | None:
    """A layer's output or input width as its adapter tensors give it (where the layer has no mask on that
    side, its adapter factors span the whole width): SPLoRA's factors, SPPaRA's matrix, ``adapter_bias``."""
    if side == "out":
        for t, axis in ((layer.lora_cols, 0), (layer.pointwise, 1), (layer.adapter_bias, 0)):
            if t is not None:
                return int(t.shape[axis])
        return None
    for t, axis in ((layer.lora_rows, 1), (layer.pointwise, 0)):
        if t is not None:
            return int(t.shape[axis])
    return None
