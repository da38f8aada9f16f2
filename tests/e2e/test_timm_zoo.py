"""timm's networks build exactly, and shrink as far as the masks allow.

The whole zoo (``-m slow``) takes the smallest model of every timm architecture family
(``timm_families.json``, made by ``timm_families.py`` for the pinned timm version) at a small input
(the model's own where it is fixed), from a seeded random base, in three mask modes:

* ``groups``: masks on Torch-Pruning's dependency groups at 50% (an independent tracer), whose own
  physical removal of the same channels gives the *masks' minimum* of parameters;
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
from tp_masks import build, torch_pruning_masks  # noqa: E402
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
            yardstick = f"Torch-Pruning: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
            masks = "groups (synth)"
    if minimum is None:
        base = random_base(arch, as_inputs(shape), seed=0)
        spa = synth_spa(arch, as_inputs(shape), prune=0.5, rank=2, seed=1, masks=masks.split(" ")[0],
                        base_state=base)
        model = None
    merged, plan, pruned = prune_and_compare(arch, base, spa, shape, model)
    row = {"family": family, "model": FAMILIES[family]["model"], "masks": masks, "input": size,
           "dense": params(merged), "pruned": params(pruned), "minimum": minimum, "reason": _reason(plan),
           "no_minimum": yardstick}
    record = os.environ.get("SPA_ZOO_RECORD")
    if record:
        with open(record, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


@pytest.mark.parametrize("family", CI_SUBSET)
def test_timm_subset_builds_exactly_and_shrinks_to_the_masks_minimum(family: str) -> None:
    row = _check(family, "groups")
    assert row["pruned"] <= 1.1 * row["minimum"] < 0.6 * row["dense"], row


@pytest.mark.slow
@pytest.mark.parametrize("masks", ["groups", "out-only", "random"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_timm_zoo_builds_exactly(family: str, masks: str) -> None:
    _check(family, masks)
