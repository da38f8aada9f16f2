"""Every torchvision classification model builds exactly, pruned as far as the spec allows.

The CI subset covers the patterns the build must handle beyond the six
networks of test_build_torchvision.py: grouped convolutions, squeeze-and-
excitation with hard-sigmoid, channel shuffle, layer norm over channels,
concatenations of branches, attention. The whole zoo runs with ``-m slow``.
Each case compares the pruned PyTorch network against the reference (the
spec's masked network, built independently of the plan).
"""

from __future__ import annotations

import json
import os

import pytest
import torchvision
from zoo_check import params, prune_and_compare

from spa_export.pack.synth import random_base, synth_spa

LARGE_INPUT = {"inception_v3": 96, "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224,
               "vit_h_14": 224, "swin_t": 64, "swin_s": 64, "swin_b": 64, "swin_v2_t": 64, "swin_v2_s": 64,
               "swin_v2_b": 64, "maxvit_t": 224}
CI_SUBSET = ["mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "googlenet", "regnet_x_400mf",
             "regnet_y_400mf", "mnasnet0_5", "convnext_tiny", "resnext50_32x4d", "inception_v3"]
ALL = sorted(torchvision.models.list_models(module=torchvision.models))


def _check(name: str, masks: str, default_size: int = 32) -> tuple[int, int]:
    arch = f"torchvision:{name}"
    size = LARGE_INPUT.get(name, default_size)
    shape = (1, 3, size, size)
    base = random_base(arch, shape, seed=0)
    spa = synth_spa(arch, shape, prune=0.5, rank=2, seed=1, masks=masks, base_state=base)
    merged, plan, pruned = prune_and_compare(arch, base, spa, shape)
    dense, kept = params(merged), params(pruned)
    record = os.environ.get("SPA_ZOO_RECORD")   # a JSON-lines file for ZOO_RESULTS.md's removal table
    if record:
        heads = [(ap.num_heads, len(ap.heads)) for ap in plan.attention.values()]
        with open(record, "a") as fh:
            fh.write(json.dumps({"model": name, "masks": masks, "input": size, "dense": dense, "pruned": kept,
                                 "heads": sum(h for h, _ in heads), "heads_kept": sum(k for _, k in heads)}) + "\n")
    return dense, kept


@pytest.mark.parametrize("name", CI_SUBSET)
def test_patterns_build_exactly(name):
    dense, pruned = _check(name, "out-only")
    # ConvNeXt normalises over channels (LayerNorm) everywhere: its groups are kept whole, exactly.
    if name != "convnext_tiny":
        assert pruned < dense, f"{name}: nothing was removed"


@pytest.mark.slow
@pytest.mark.parametrize("masks", ["groups", "out-only", "random"])
@pytest.mark.parametrize("name", ALL)
def test_whole_zoo_builds_exactly(name, masks):
    _check(name, masks, default_size=64)  # 64: the smallest input every convolutional network accepts
