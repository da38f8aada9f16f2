"""The check every zoo makes of one model: merge, plan, apply, then compare with the reference."""

from __future__ import annotations

import torch
from torch import nn

from spa_export.nets.arch import build_model, load_into, resize_for_overrides
from spa_export.runtime.inputs import as_inputs
from spa_export.spa import SpaFile
from spa_export.stages.apply import apply_plan
from spa_export.stages.merge import merge
from spa_export.stages.plan import PrunePlan, make_plan
from spa_export.stages.reference import build_reference


def _first(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def prune_and_compare(arch: str, base: dict[str, torch.Tensor], spa: SpaFile, shape: tuple[int, ...],
                      model: nn.Module | None = None) -> tuple[nn.Module, PrunePlan, nn.Module]:
    """``(merged, plan, pruned)`` of ``arch`` with ``base`` and ``spa``; fails unless the pruned network
    computes what the reference (the spec's masked network, built without the plan) computes on two
    seeded inputs, every element within 1e-4 of the output's scale."""
    if model is None:
        model = build_model(arch)
        resize_for_overrides(model, spa.overrides)
        load_into(model, base)
    merged, _ = merge(model, spa)
    plan = make_plan(merged, as_inputs(shape))
    pruned = apply_plan(merged, plan)
    reference = build_reference(arch, base, spa)
    x = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, got = _first(reference(x)), _first(pruned(x))
    scale = float(expected.abs().max())
    assert scale > 0 and torch.isfinite(expected).all()
    assert float((expected - got).abs().max()) <= 1e-4 * scale, f"{arch}: not exact"
    return merged, plan, pruned


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
