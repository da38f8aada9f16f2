"""timm's networks build exactly, and shrink as far as the masks allow.

The whole zoo (``-m slow``) takes the smallest model of every timm architecture family
(``timm_families.json``, made by ``timm_families.py`` for the pinned timm version) at a small input
(the model's own where it is fixed), from a seeded random base, in three mask modes:

* ``groups``: masks on Torch-Pruning's dependency groups at 50% (an independent tracer), whose own
  physical removal of the same channels gives the *masks' minimum* of parameters (``minimum``;
  ``spec_minimum`` leaves the groups that a layer norm reads, which the spec keeps); where
  Torch-Pruning cannot prune the network, ``synth``'s group masks on every group, held ones
  included, and their ``mask_minimum`` of convolution and linear weights (``pruned_layers`` is the
  build's count of the same);
* ``out-only`` and ``random``: ``synth``'s masks, as in the torchvision zoo.

Every pruned network is compared with the reference (the spec's masked network, built without the
plan) on two seeded inputs. ``SPA_ZOO_RECORD`` names a JSON-lines file that collects, per model
and mode, the parameters kept, the masks' minimum and the main reason for what stays.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is in the test extra")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages" / "plan"))
from timm_families import load  # noqa: E402
from tp_masks import (  # noqa: E402
    all_group_masks,
    build,
    layer_weights,
    mask_minimum,
    silenced,
    torch_pruning_masks,
)
from zoo_check import params, prune_and_compare  # noqa: E402

from spa_export.nets.arch import build_model  # noqa: E402
from spa_export.pack.synth import random_base, synth_spa  # noqa: E402
from spa_export.runtime.inputs import as_inputs  # noqa: E402

FAMILIES = load()["families"]
SMALL = 64
#: a few families at every CI run: norm-activation layers, squeeze-excite, timm's Linear, RepVGG-style
#: blocks (RegNet's grouped convolutions are in test_rounding: Torch-Pruning cannot prune them)
CI_SUBSET = ["efficientnet", "mobilenetv3", "byobnet", "resnet"]


def _arch(family: str) -> str:
    return f"timm.models.{family}:{FAMILIES[family]['model']}"


def _size(arch: str) -> int:
    """SMALL, or the model's own input size where it is fixed or the model does not take SMALL."""
    model = build_model(arch)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = int(cfg.get("input_size", (3, 224, 224))[-1])
    if cfg.get("fixed_input_size"):
        return own
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, SMALL, SMALL))
    except Exception:   # position embeddings or attention of a fixed grid (byoanet, ...)
        return own
    return SMALL


def _reason(plan: object) -> str:
    reasons: collections.Counter = collections.Counter()
    for g in plan.groups:
        for why, n in g.kept_reasons.items():
            reasons[why] += n
    if plan.untraced:
        return plan.untraced
    return reasons.most_common(1)[0][0] if reasons else ""


def _check(family: str, masks: str) -> dict:
    arch = _arch(family)
    size = _size(arch)
    shape = (1, 3, size, size)
    minimum, yardstick = None, None
    if masks == "groups":
        try:
            model, base, spa, minimum = build(arch, shape, torch_pruning_masks)
        except Exception as err:   # Torch-Pruning's own limits (RegNet's grouped convolutions...)
            line = "its dependency groups outgrew 6 GiB" if isinstance(err, MemoryError) else str(err).split("\n")[0]
            yardstick = f"Torch-Pruning: {type(err).__name__}: {line[:120]}"
            masks = "groups (synth)"
        if minimum is not None and silenced(model, spa, shape):
            minimum, yardstick, masks = None, "Torch-Pruning's masks make the output zero", "groups (synth)"
    if minimum is None:
        base = random_base(arch, as_inputs(shape), seed=0)
        if masks == "groups (synth)":
            spa = all_group_masks(arch, shape, base)
        else:
            spa = synth_spa(arch, as_inputs(shape), prune=0.5, rank=2, seed=1, masks=masks, base_state=base)
        model = None
    merged, plan, pruned = prune_and_compare(arch, base, spa, shape, model)
    row = {"family": family, "model": FAMILIES[family]["model"], "masks": masks, "input": size,
           "dense": params(merged), "pruned": params(pruned), "reason": _reason(plan), "no_minimum": yardstick,
           "minimum": minimum.tp if minimum else None, "spec_minimum": minimum.spec if minimum else None}
    if masks == "groups (synth)":
        row.update(mask_minimum=mask_minimum(merged, spa), pruned_layers=layer_weights(pruned))
    record = os.environ.get("SPA_ZOO_RECORD")
    if record:
        with open(record, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


@pytest.mark.parametrize("family", CI_SUBSET)
def test_timm_subset_builds_exactly_and_shrinks_to_the_masks_minimum(family: str) -> None:
    row = _check(family, "groups")
    assert row["minimum"] == row["spec_minimum"], row   # no layer norm in these families
    assert row["pruned"] <= 1.1 * row["spec_minimum"] < 0.6 * row["dense"], row


def test_regnety_002_shrinks_to_its_group_masks_minimum_exactly() -> None:
    """Torch-Pruning cannot prune RegNet's grouped convolutions; masks on every dependency group at
    50% (equal in each group of a grouped convolution) are the yardstick, and ``--round-to 1``
    (the planner's default) keeps no more of the convolution and linear weights than they leave."""
    arch, shape = "timm.models.regnet:regnety_002", (1, 3, SMALL, SMALL)
    base = random_base(arch, as_inputs(shape), seed=0)
    spa = all_group_masks(arch, shape, base)
    merged, plan, pruned = prune_and_compare(arch, base, spa, shape)
    minimum, dense = mask_minimum(merged, spa), layer_weights(merged)
    assert not plan.opaque and plan.round_to == 1
    assert layer_weights(pruned) <= 1.1 * minimum < 0.35 * dense, (layer_weights(pruned), minimum, dense)
    grouped = [n for n, m in merged.named_modules() if isinstance(m, torch.nn.Conv2d) and 1 < m.groups < m.in_channels]
    assert grouped and all(pruned.get_submodule(n).groups == merged.get_submodule(n).groups for n in grouped)


def test_mobilevit_xxs_is_traced_on_its_shapes_its_convolutions_shrink_and_layer_norm_holds_its_stream() -> None:
    """MobileViT's blocks branch on their input's shape (torch.fx cannot trace them): they are traced
    on the probe's shapes, so their convolutions, attention heads and MLPs shrink; the transformer's
    residual stream (layer norm) and the unfold's reshape keep theirs, and the plan says so."""
    from spa_export.stages.plan.model import STREAM_REASON

    arch, shape = "timm.models.mobilevit:mobilevit_xxs", (1, 3, SMALL, SMALL)
    base = random_base(arch, as_inputs(shape), seed=0)
    spa = all_group_masks(arch, shape, base, made=False)
    merged, plan, pruned = prune_and_compare(arch, base, spa, shape)
    assert not plan.untraced and not plan.opaque
    block = "stages.3.1"
    for name, axis, dense, kept in [("conv_kxk.conv", 0, 64, 32), ("conv_1x1", 1, 64, 32),
                                    ("transformer.0.attn.qkv", 0, 240, 120), ("transformer.0.mlp.fc1", 0, 160, 80),
                                    ("conv_proj.conv", 0, 64, 32), ("conv_fusion.conv", 0, 64, 32)]:
        before, after = (m.get_submodule(f"{block}.{name}").weight.shape[axis] for m in (merged, pruned))
        assert (before, after) == (dense, kept), name
    assert pruned.get_submodule(f"{block}.conv_1x1").out_channels == 80            # read by the unfold
    assert pruned.get_submodule(f"{block}.transformer.0.norm1").normalized_shape == (80,)
    whole = plan.groups_kept_whole()
    assert any(w["reason"].startswith(STREAM_REASON) and "normalised" in w["reason"] and w["channels"] == 240
               for w in whole), whole
    assert any(w["id"] == f"{block}.conv_1x1" and "reshape" in w["reason"] for w in whole), whole
    assert params(pruned) < 0.45 * params(merged)


@pytest.mark.slow
@pytest.mark.parametrize("masks", ["groups", "out-only", "random"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_timm_zoo_builds_exactly(family: str, masks: str) -> None:
    _check(family, masks)
