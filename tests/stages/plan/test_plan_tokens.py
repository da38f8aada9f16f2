"""Features on the last axis: a transformer's MLP on ``[N, T, D]`` tokens.

A linear layer over tokens reads and writes features on the last axis; its
hidden features are removed like a convolution's channels, exactly, and
never mixed with channels traced along dimension 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spa_export.runtime.inputs import as_inputs
from spa_export.stages.apply import AddConstant, apply_plan
from spa_export.stages.plan import ConstantFold, PrunePlan, make_plan
from spa_export.stages.plan.decide import _contribution

SHAPE = (1, 5, 8)   # 5 tokens of 8 features


class Block(nn.Module):
    """Pre-norm MLP block with a residual connection, as in ViT."""

    def __init__(self, dim: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


def _block(seed: int = 0) -> Block:
    torch.manual_seed(seed)
    return Block().eval()


def _exact(model: nn.Module, pruned: nn.Module) -> None:
    x = torch.randn(3, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), pruned(x)
    assert (want - got).abs().max() <= 1e-5 * want.abs().max()


def test_masked_hidden_features_are_removed_from_both_linear_layers() -> None:
    model = _block()
    with torch.no_grad():
        model.mlp[0].weight[[1, 4, 9]] = 0          # an output mask: rows and bias
        model.mlp[0].bias[[1, 4, 9]] = 0
    plan = make_plan(model, as_inputs(SHAPE))
    pruned = apply_plan(model, plan)
    _exact(model, pruned)
    assert (pruned.mlp[0].out_features, pruned.mlp[3].in_features) == (13, 13)
    assert pruned.mlp[3].out_features == 8 and pruned.norm.normalized_shape == (8,)   # the stream stays


def test_unread_hidden_features_go_from_the_first_layer_too() -> None:
    model = _block()
    with torch.no_grad():
        model.mlp[3].weight[:, [0, 15]] = 0         # an input mask on the second layer
    pruned = apply_plan(model, make_plan(model, as_inputs(SHAPE)))
    _exact(model, pruned)
    assert (pruned.mlp[0].out_features, pruned.mlp[3].in_features) == (14, 14)


def test_a_constant_hidden_feature_is_folded_into_the_next_bias() -> None:
    model = _block()
    with torch.no_grad():
        model.mlp[0].weight[[2, 3]] = 0             # rows masked, biases kept: GELU(b) on every token
    plan = make_plan(model, as_inputs(SHAPE))
    pruned = apply_plan(model, plan)
    _exact(model, pruned)
    assert pruned.mlp[0].out_features == 14
    assert plan.folds["mlp.3"].bias is not None and plan.folds["mlp.3"].tensor is None


def test_features_on_the_last_axis_never_join_channels_on_dimension_one() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + x                     # [N, 4, 4]: the same sizes, different axes

    torch.manual_seed(0)
    model = Mixed().eval()
    with torch.no_grad():
        model.fc.weight[1] = 0
        model.fc.bias[1] = 0
    plan = make_plan(model, as_inputs((1, 4, 4)))
    pruned = apply_plan(model, plan)
    x = torch.randn(2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(model(x), pruned(x))
    assert pruned.fc.out_features == 4
    # the input's features are not followed along the last axis: added to them, fc's features stay
    assert any(reason.startswith("the residual stream") for g in plan.groups for reason in g.kept_reasons)


def test_a_linear_layer_over_tokens_contributes_per_token() -> None:
    torch.manual_seed(0)
    fc = nn.Linear(6, 3).eval()
    pos = np.array([1, 5])
    values = torch.randn(1, 4, 2)
    with torch.no_grad():
        got = _contribution(fc, values, pos, (1, 4, 6), 2)
        only = torch.zeros(1, 4, 6)
        only[..., torch.as_tensor(pos)] = values
        want = (fc(only) - fc(torch.zeros(1, 4, 6)))[0]
    assert got.shape == (4, 3) and torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_constant_tensor_with_features_last_is_added_after_the_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3)).eval()
    plan = PrunePlan(inputs={"input_shape": [1, 4, 6]})
    constant = torch.randn(4, 3)
    plan.folds["0"] = ConstantFold("0", 1, tensor=constant, channel_axis=-1)
    pruned = apply_plan(model, plan)
    assert isinstance(pruned[0], AddConstant)
    x = torch.randn(2, 4, 6)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x) + constant)
    assert plan.folds["0"].to_json()["channel_axis"] == -1


@pytest.mark.parametrize("masks", ["groups", "out-only", "random"])
def test_torchvision_vision_transformer(masks: str) -> None:
    from spa_export.nets.arch import build_model, load_into
    from spa_export.pack.synth import random_base, synth_spa
    from spa_export.stages.merge import merge
    from spa_export.stages.reference import build_reference

    arch, shape = "spa_export.examples:tiny_vit", (1, 3, 32, 32)
    base = random_base(arch, shape, seed=0)
    spa = synth_spa(arch, shape, prune=0.5, rank=2, seed=1, masks=masks, base_state=base)
    model = build_model(arch)
    load_into(model, base)
    merged, _ = merge(model, spa)
    pruned = apply_plan(merged, make_plan(merged, as_inputs(shape)))
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = build_reference(arch, base, spa)(x), pruned(x)
    assert (want - got).abs().max() <= 1e-4 * want.abs().max()
    for name in ("encoder.layers.encoder_layer_0.mlp", "encoder.layers.encoder_layer_1.mlp"):
        out_mask, in_mask = spa.layers[f"{name}.0"].out_mask, spa.layers[f"{name}.3"].in_mask
        # a hidden feature goes when the first layer's mask zeroes it or the second's leaves it unread
        kept = int((torch.ones(64, dtype=torch.bool) if out_mask is None else out_mask)
                   .logical_and(torch.ones(64, dtype=torch.bool) if in_mask is None else in_mask).sum())
        assert pruned.get_submodule(f"{name}.0").out_features == kept < 64
        assert pruned.get_submodule(f"{name}.3").in_features == kept
