"""Synthetic SPA files and bases: random adapters and masks for any traceable network.

For tests, and for the user who asks "what would 70% pruning buy me on this
device?". Three mask modes:

* ``groups``: whole dependency groups pruned consistently, output masks on
  every producer and input masks on every consumer;
* ``out-only``: the same channels, output masks alone, as the paper's own
  experiments produce them (a pruned channel leaves batch-norm's shift behind);
* ``random``: independent per-layer output and input masks that disagree
  within groups.

All randomness comes from generators seeded here; the global RNG is untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spa_export.nets.arch import build_model
from spa_export.nets.attention import fused_qkv, head_attributes, head_shape
from spa_export.nets.metrics import checked_macs
from spa_export.runtime.inputs import as_inputs, random_tensors
from spa_export.safety.errors import InputError
from spa_export.spa import LayerSpa, SpaFile, make_spa, state_dict_digest
from spa_export.spa.projections import PARTS, with_projections
from spa_export.stages.plan.decide import dependency_groups
from spa_export.stages.plan.trace import ChannelGraph, trace_channels

MASK_MODES = ("groups", "out-only", "random")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def random_base(arch: str, input_shape: object, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A base state dict with seeded random weights and realistic batch-norm statistics.

    Batch-norm statistics are measured on random inputs (so activations stay
    in range through deep networks), and shifts are non-zero, so that a pruned
    channel leaves a constant behind as trained networks do.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch)
    gen = torch.Generator().manual_seed(seed + 1)
    specs = as_inputs(input_shape)
    checked_macs(model, specs, arch)   # a clear error where the inputs do not fit the network (eval mode)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(*random_tensors(specs, 4, gen))
        for bn in bns:
            bn.momentum = 0.1
            if bn.affine:
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.2)
    model.eval()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def synth_spa(arch: str, input_shape: object, *, prune: float = 0.5, rank: int = 8, seed: int = 0,
              masks: str = "groups", base_state: dict[str, torch.Tensor] | None = None,
              num_classes: int | None = None, task: str | None = None) -> SpaFile:
    """An SPA for ``arch`` with SPLoRA adapters of rank ``rank`` and ``prune`` of the channels masked."""
    if masks not in MASK_MODES:
        raise InputError(f"unknown mask mode '{masks}' (one of {', '.join(MASK_MODES)})")
    if not 0.0 <= prune < 1.0:
        raise InputError(f"--prune must be in [0, 1), got {prune}")
    if rank < 0:
        raise InputError(f"--rank must be >= 0, got {rank}")
    model = build_model(arch)
    specs = as_inputs(input_shape)
    checked_macs(model, specs, arch)   # a clear error where the inputs do not fit the network
    graph = trace_channels(model, specs, seed=seed)
    rng = np.random.default_rng(seed)
    modules = with_projections(dict(model.named_modules()))   # attention's q_proj, k_proj, v_proj too
    out_masks: dict[str, np.ndarray] = {}
    in_masks: dict[str, np.ndarray] = {}
    if masks == "random":
        _random_masks(graph, modules, prune, rng, out_masks, in_masks)
    else:
        _group_masks(graph, prune, rng, out_masks, in_masks, with_inputs=masks == "groups")
        _head_masks(graph, modules, prune, rng, out_masks, in_masks, with_inputs=masks == "groups")
    head = _head(graph, modules)
    overrides: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed + 7)
    if num_classes is not None and head is not None:
        lin = modules[head]
        overrides[f"{head}.weight"] = torch.randn(num_classes, lin.in_features, generator=gen) * 0.05
        if lin.bias is not None:
            overrides[f"{head}.bias"] = torch.randn(num_classes, generator=gen) * 0.05
        out_masks.pop(head, None)
    layers = []
    for name, mod in modules.items():
        if not isinstance(mod, (nn.Linear, *_CONV)):
            continue
        out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        if name == head and num_classes is not None:
            out = num_classes
        om, im = out_masks.get(name), in_masks.get(name)
        fields: dict[str, torch.Tensor] = {}
        if om is not None and not om.all():
            fields["out_mask"] = torch.from_numpy(om.copy())
        if im is not None and not im.all():
            fields["in_mask"] = torch.from_numpy(im.copy())
        out_kept = int(om.sum()) if om is not None else out
        in_size = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
        in_kept = int(im.sum()) if im is not None else in_size
        adaptable = getattr(mod, "groups", 1) == 1 and all(k % 2 == 1 for k in getattr(mod, "kernel_size", ()))
        r = min(rank, out_kept, in_kept)
        if adaptable and r > 0:
            fields["lora_cols"] = torch.randn(out_kept, r, generator=gen) * 0.05
            fields["lora_rows"] = torch.randn(r, in_kept, generator=gen) * 0.05
            if mod.bias is not None:
                fields["adapter_bias"] = torch.randn(out_kept, generator=gen) * 0.05
        if fields:
            layers.append(LayerSpa(name, **fields))
    digest = state_dict_digest(base_state) if base_state is not None else None
    return make_spa(layers, overrides, task=task or f"synth-{masks}-{prune:g}", arch=arch, base_digest=digest,
                    description=f"synthetic: prune={prune} rank={rank} seed={seed} masks={masks}")


def _roots(graph: ChannelGraph) -> np.ndarray:
    n = len(graph.uf)
    return np.fromiter((graph.uf.find(i) for i in range(n)), dtype=np.int64, count=n)


def _held(graph: ChannelGraph, root: np.ndarray) -> set[int]:
    held = {int(root[i]) for i in graph.fixed}
    for ids, _ in graph.holds:
        held.update(np.unique(root[ids]).tolist())
    return held


def _group_masks(graph: ChannelGraph, prune: float, rng: np.random.Generator, out_masks: dict,
                 in_masks: dict, *, with_inputs: bool) -> None:
    root = _roots(graph)
    held = _held(graph, root)
    present = np.unique(root[np.concatenate([p.ids for p in graph.producers])])
    pruned: set[int] = set()
    for _producers, roots in dependency_groups(graph, root, present):
        if any(int(r) in held for r in roots):
            continue
        layout = _grouped_layout(graph, root, roots)
        if layout is None:
            k = int(prune * len(roots))
            chosen = rng.choice(roots, size=k, replace=False) if k else []
        else:  # equal numbers from every group of a grouped convolution
            chosen = []
            for row in layout:
                k = int(prune * len(row))
                chosen += rng.choice(row, size=min(k, len(row) - 1), replace=False).tolist() if k else []
        pruned.update(int(r) for r in chosen)
    keep = np.array(sorted(pruned), dtype=np.int64)
    for p in graph.producers:
        if p.module is not None:
            out_masks[p.module] = ~np.isin(root[p.ids], keep)
    for m in graph.members:
        if m.kind == "depthwise":
            out_masks[m.module] = ~np.isin(root[m.ids], keep)
    if with_inputs:
        for c in graph.consumers:
            in_masks[c.module] = ~np.isin(root[c.ids], keep)


def _head_masks(graph: ChannelGraph, modules: dict, prune: float, rng: np.random.Generator, out_masks: dict,
                in_masks: dict, *, with_inputs: bool) -> None:
    """Whole attention heads: their query, key and value rows (and the output projection's columns)."""
    for name, weights_read in graph.attention.items():
        mod = modules[name]
        h, d = head_shape(mod)
        k = min(int(prune * h), h - 1)
        if weights_read or k == 0:
            continue
        heads = rng.choice(h, size=k, replace=False)
        keep = ~np.isin(np.arange(h * d) // d, heads)
        if fused_qkv(mod):   # timm's Attention: one qkv Linear, its query, key and value rows in turn
            for child, parts in head_attributes(mod).rows:
                out_masks[f"{name}.{child}"] = np.concatenate([keep] * len(parts))
            if with_inputs:
                in_masks[f"{name}.proj"] = keep
            continue
        for part in PARTS:
            out_masks[f"{name}.{part}"] = keep
        if with_inputs:
            in_masks[f"{name}.out_proj"] = keep


def _grouped_layout(graph: ChannelGraph, root: np.ndarray, roots: np.ndarray) -> list[np.ndarray] | None:
    members = set(roots.tolist())
    for ids, g in [(c.ids, c.groups) for c in graph.consumers] + [(p.ids, p.groups) for p in graph.producers]:
        if g > 1 and int(root[ids[0]]) in members:
            return [np.unique(row) for row in root[ids].reshape(g, -1)]
    return None


def _random_masks(graph: ChannelGraph, modules: dict, prune: float, rng: np.random.Generator,
                  out_masks: dict, in_masks: dict) -> None:
    root = _roots(graph)
    output_roots = set()
    for ids, why in graph.holds:
        if why == "reaches the network output":
            output_roots.update(np.unique(root[ids]).tolist())
    for name, mod in modules.items():
        if not isinstance(mod, (nn.Linear, *_CONV)) or getattr(mod, "groups", 1) != 1:
            continue
        out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        in_ = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
        producer = next((p for p in graph.producers if p.module == name), None)
        if producer is None or not (set(root[producer.ids].tolist()) & output_roots):
            out_masks[name] = _random_mask(out, prune, rng)
        in_masks[name] = _random_mask(in_, prune, rng)


def _random_mask(n: int, prune: float, rng: np.random.Generator) -> np.ndarray:
    mask = rng.random(n) >= prune
    if not mask.any():
        mask[rng.integers(n)] = True
    return mask


def _head(graph: ChannelGraph, modules: dict) -> str | None:
    """The Linear layer whose outputs are the network's output (the classifier head)."""
    root = _roots(graph)
    out_roots = set()
    for ids, why in graph.holds:
        if why == "reaches the network output":
            out_roots.update(np.unique(root[ids]).tolist())
    for p in graph.producers:
        if p.module and isinstance(modules.get(p.module), nn.Linear) and int(root[p.ids[0]]) in out_roots:
            return p.module
    return None
