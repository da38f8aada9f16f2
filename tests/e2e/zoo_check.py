"""The check every zoo makes of one model: merge, plan, apply, then compare with the reference."""

from __future__ import annotations

import copy

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
    seeded inputs, every element within 1e-4 of the output's scale; where float32 cannot tell (a
    random network's huge activations), in float64: pruned against merged within 1e-9 (1e-6 where the
    plan folds constants into a bias, a float32 value of its own), merged
    against the reference within 1e-3 (each weight's float32 rounding, amplified)."""
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
        if _close(_first(reference(x)), _first(pruned(x)), 1e-4):
            return merged, plan, pruned
        # A random network's activations can grow until float32's rounding decides (LeViT,
        # EfficientViT: outputs of 1e4 and more). In float64 (on copies: ``pruned`` is returned in
        # float32), the pruned network must compute what the merged one computes to 1e-9 (the plan's
        # exactness: they share every float32 weight), and the merged one the reference to 1e-3 (the
        # merge's float32 rounding of each weight, as the network amplifies it). Where the plan folds
        # removed constant channels into the next layer's bias, that bias is a float32 value of its own
        # (rounded once, 6e-8 of it): 1e-6 then (LeViT: 1.8e-9 with two folds; a channel wrongly removed
        # or folded differs by its whole contribution).
        expected, dense, got = (_first(copy.deepcopy(net).double()(x.double())) for net in (reference, merged, pruned))
    rtol = 1e-6 if plan.folds else 1e-9
    assert _close(dense, got, rtol), f"{arch}: not exact (the pruned network differs from the merged one in float64)"
    assert _close(expected, dense, 1e-3), f"{arch}: the merged network differs from the reference in float64"
    return merged, plan, pruned


def _close(expected: torch.Tensor, got: torch.Tensor, rtol: float) -> bool:
    """Every element within ``rtol`` of the output's scale (a finite, non-zero output)."""
    scale = float(expected.abs().max())
    if not (scale > 0 and torch.isfinite(expected).all()):
        return False
    return float((expected - got).abs().max()) <= rtol * scale


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
