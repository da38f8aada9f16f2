"""Masks on Torch-Pruning's dependency groups, and Torch-Pruning's own removal of the same channels.

An independent yardstick for how far a build shrinks a network: Torch-Pruning (autograd-graph
tracing, its own group logic) picks a fraction of every group's channels and removes them
physically; the parameter count it leaves is the *masks' minimum*. The same channels, as SPA masks
(output masks of the group's producers, input masks of its readers), go to spa-export, which must
get as close as exactness allows.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from spa_export.nets.arch import build_model, load_into
from spa_export.pack.synth import random_base
from spa_export.runtime.inputs import as_inputs
from spa_export.spa import LayerSpa, SpaFile, make_spa

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _sizes(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    return mod.out_channels, mod.in_channels


def _depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


def torch_pruning_masks(model: nn.Module, shape: tuple[int, ...], *, prune: float = 0.5, seed: int = 1
                        ) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """``(masks per layer, parameters left after Torch-Pruning removes the same channels)``."""
    model = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]   # the classifier keeps its classes
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(shape))
    rng = np.random.default_rng(seed)
    masks: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    chosen = []
    for group in graph.get_all_groups(ignored_layers=heads, root_module_types=list(_LAYERS)):
        root, handler = group[0].dep.target.module, group[0].dep.handler
        n = _sizes(root)[0]
        k = int(n * prune)
        if not 0 < k < n:
            continue
        idxs = sorted(rng.choice(n, k, replace=False).tolist())
        group = graph.get_pruning_group(root, handler, idxs)
        if not graph.check_pruning_group(group):
            continue
        chosen.append((names[root], handler, idxs))
        for item in group:
            mod = item.dep.target.module
            if names.get(mod) is None or not isinstance(mod, _LAYERS):
                continue
            which = getattr(item.dep.handler, "__name__", "")
            size_out, size_in = _sizes(mod)
            if "out" in which or _depthwise(mod):
                masks[names[mod]].setdefault("out_mask", torch.ones(size_out, dtype=torch.bool))[item.idxs] = False
            elif "in" in which:
                masks[names[mod]].setdefault("in_mask", torch.ones(size_in, dtype=torch.bool))[item.idxs] = False
    for name, handler, idxs in chosen:       # each root's own output indices are untouched by the others
        graph.get_pruning_group(model.get_submodule(name), handler, idxs).prune()
    return dict(masks), sum(p.numel() for p in model.parameters())


def build(arch: str, shape: tuple[int, ...], masker=torch_pruning_masks, **kw: object
          ) -> tuple[nn.Module, dict[str, torch.Tensor], SpaFile, int]:
    """A seeded random base of ``arch``, its SPA of masks, and the masks' minimum of parameters."""
    base = random_base(arch, as_inputs(shape), seed=0)
    model = build_model(arch)
    load_into(model, base)
    model.eval()
    masks, minimum = masker(model, shape, **kw)
    spa = make_spa([LayerSpa(name, **m) for name, m in sorted(masks.items())], task="tp", arch=arch)
    return model, base, spa, minimum
