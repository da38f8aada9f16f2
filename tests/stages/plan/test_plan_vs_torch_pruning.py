"""Our dependency groups against Torch-Pruning's DependencyGraph, on real torchvision networks.

Two independent tracers (torch.fx here, autograd graphs there) must agree on
which layers are coupled: for each group, the layers whose outputs form it
(convolutions, linear layers, batch-norm) and the layers reading it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from spa_export.runtime.inputs import as_inputs
from spa_export.stages.plan.decide import dependency_groups
from spa_export.stages.plan.trace import trace_channels

SHAPE = (1, 3, 32, 32)


def _ours(model: nn.Module) -> dict[str, set[tuple[str, str]]]:
    graph = trace_channels(model, as_inputs(SHAPE))
    n = len(graph.uf)
    root = np.fromiter((graph.uf.find(i) for i in range(n)), dtype=np.int64, count=n)
    present = np.unique(root[np.concatenate([p.ids for p in graph.producers])])
    out: dict[str, set[tuple[str, str]]] = {}
    for idx, roots in dependency_groups(graph, root, present):
        producers = [graph.producers[i].module for i in idx if graph.producers[i].module]
        if not producers:
            continue
        members = {(p, "out") for p in producers}
        rs = set(roots.tolist())
        members |= {(c.module, "in") for c in graph.consumers if set(root[c.ids].tolist()) & rs}
        members |= {(m.module, "out") for m in graph.members if set(root[m.ids].tolist()) & rs}
        for p in producers:
            out[p] = members
    return out


def _theirs(model: nn.Module, graph: tp.DependencyGraph, name: str) -> set[tuple[str, str]]:
    names = {mod: n for n, mod in model.named_modules()}
    layer = model.get_submodule(name)
    handler = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
    members = set()
    for dep, _ in graph.get_pruning_group(layer, handler, idxs=[0]):
        module_name = names.get(dep.target.module)
        if module_name is None:
            continue  # Torch-Pruning's nodes for additions, concatenations, flatten
        module = dep.target.module
        kind = "in" if "in_channels" in dep.handler.__name__ else "out"
        if isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1:
            kind = "out"  # a depthwise convolution follows its channels: one entry in our plan
        members.add((module_name, kind))
    return members


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "densenet121"])
def test_groups_agree_with_torch_pruning(arch):
    model = getattr(torchvision.models, arch)(weights=None).eval()
    ours = _ours(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(SHAPE))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    checked = 0
    for name in convs[:: max(1, len(convs) // 12)]:  # a dozen producers spread through the network
        theirs = _theirs(model, graph, name)
        mine = ours[name]
        if arch == "densenet121":
            # Torch-Pruning couples a DenseNet layer's output with the whole of every later concatenation
            # reader; ours with the channels it actually feeds. Compare the layers named, not the roles.
            assert {n for n, _ in mine} <= {n for n, _ in theirs} | {name}, name
        else:
            assert mine == theirs, f"{arch} {name}: ours - theirs {mine - theirs}, theirs - ours {theirs - mine}"
        checked += 1
    assert checked >= 6
