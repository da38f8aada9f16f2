"""The spec's removal cases on small hand-made networks.

Each network is built with some weights zeroed as masks would zero them; the
pruned network must compute the same function, and the channel counts must be
exactly what the case allows.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa_export.runtime.inputs import as_inputs
from spa_export.stages.apply import AddConstant, apply_plan
from spa_export.stages.plan import make_plan

SHAPE = (1, 4, 8, 8)


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


def _check_exact(model: nn.Module, pruned: nn.Module, shape=SHAPE) -> None:
    x = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), pruned(x)
    scale = expected.abs().max()
    assert scale > 0
    assert (expected - got).abs().max() <= 1e-5 * scale


def _zero_out(conv: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = 0


def _zero_in(conv: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        conv.weight[:, channels] = 0


def core(m: nn.Module) -> nn.Module:
    """The layer inside an AddConstant (a consumer with a constant tensor added back)."""
    return m.module if isinstance(m, AddConstant) else m


def _prune(model: nn.Module, shape=SHAPE, **kw) -> tuple[nn.Module, object]:
    model.eval()
    plan = make_plan(model, as_inputs(shape), **kw)
    pruned = apply_plan(model, plan)
    _check_exact(model, pruned, shape)
    return pruned, plan


def test_case1_unread_channels_go_from_producer_and_consumer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1))
    _randomize_bn(model)
    _zero_in(model[3], [1, 2, 5])
    pruned, plan = _prune(model)
    assert pruned[0].out_channels == 5 and pruned[1].num_features == 5 and pruned[3].in_channels == 5
    assert not plan.folds  # nothing reaches a consumer: nothing to add back


def test_case2_zero_channels_through_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1))
    _zero_out(model[0], [0, 7])
    pruned, _ = _prune(model)
    assert pruned[0].out_channels == 6 and pruned[2].in_channels == 6


@pytest.mark.parametrize("padding, expect_tensor", [(1, True), (0, False)])
def test_case3_batchnorm_shift_is_folded(padding, expect_tensor):
    """Output masks alone: batch-norm turns a zero channel into a constant that must be added back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=padding, bias=False), nn.BatchNorm2d(6), nn.ReLU())
    _randomize_bn(model)
    _zero_out(model[0], [2, 3, 4])
    pruned, plan = _prune(model)
    assert pruned[0].out_channels == 5
    # Zero padding makes the contribution differ at the border: a tensor, added after the batch-norm
    # that follows the consumer (so that runtimes can still fuse that batch-norm into the conv);
    # unpadded it is uniform: a bias of the consumer itself.
    target = "4" if expect_tensor else "3"
    assert set(plan.folds) == {target}
    assert isinstance(pruned[4], AddConstant) is expect_tensor
    assert isinstance(pruned[4].module if expect_tensor else pruned[4], nn.BatchNorm2d)
    assert (plan.folds[target].tensor is not None) is expect_tensor


def test_case3_naive_removal_would_be_wrong():
    """Removing the channels without the constant changes the output: the fold is what makes it exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 1, bias=False)).eval()
    _randomize_bn(model)
    _zero_out(model[0], [1, 6])
    plan = make_plan(model, as_inputs(SHAPE))
    plan.folds.clear()
    naive = apply_plan(model, plan)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert (model(x) - naive(x)).abs().max() > 1e-3


def test_sigmoid_constant_is_folded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Sigmoid(), nn.Conv2d(8, 3, 1))
    _zero_out(model[0], [0, 1, 2])
    pruned, plan = _prune(model)
    assert pruned[0].out_channels == 5 and "2" in plan.folds


class _SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.out = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * s)


def test_squeeze_excitation_keeps_constant_channels_scaled_by_the_input():
    torch.manual_seed(0)
    model = _SE()
    _randomize_bn(model)
    _zero_out(model.conv, [0, 1, 2])
    with torch.no_grad():  # positive constants: ReLU keeps them, so they are not zero
        model.bn.bias[:3] = model.bn.running_mean[:3] * model.bn.weight[:3] + 2.0
    pruned, plan = _prune(model)
    assert pruned.conv.out_channels == 8
    reasons = [r for g in plan.groups for r in g.kept_reasons]
    assert any("'out' reads it and it depends on the input" in r for r in reasons)


def test_squeeze_excitation_with_masked_excitation_is_removed():
    torch.manual_seed(0)
    model = _SE()
    _randomize_bn(model)
    _zero_out(model.conv, [0, 1, 2])
    _zero_out(model.fc2, [0, 1, 2])  # sigmoid(0) = 0.5: a constant scale, the product is constant
    pruned, _ = _prune(model)
    assert pruned.conv.out_channels == 5 and pruned.fc2.out_channels == 5


class _Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.b(y)


def test_channel_shuffle_is_kept_whole_and_said_why():
    torch.manual_seed(0)
    model = _Shuffle()
    _zero_out(model.a, [0, 5])
    pruned, plan = _prune(model)
    assert pruned.a.out_channels == 8
    whole = plan.groups_kept_whole()
    assert any(g["id"] == "a" and "view" in g["reason"] for g in whole)


class _LN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.norm = nn.GroupNorm(1, 8)
        self.b = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


def test_norm_over_channels_is_a_barrier():
    model = _LN()
    _zero_out(model.a, [0, 1])
    pruned, plan = _prune(model)
    assert pruned.a.out_channels == 8
    assert any("GroupNorm" in g["reason"] for g in plan.groups_kept_whole())


def test_grouped_conv_groups_stay_equal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 3, 1))
    with torch.no_grad():  # input channels 0, 1, 2 (group 0) and 5 (group 1, position 1) unread
        model[2].weight[:4, [0, 1, 2]] = 0
        model[2].weight[4:, 1] = 0
    pruned, plan = _prune(model)
    assert core(pruned[2]).groups == 2 and core(pruned[2]).in_channels == 6 and pruned[0].out_channels == 6
    reasons = [r for g in plan.groups for r in g.kept_reasons]
    assert any("groups of '2' stay equal" in r for r in reasons)


def test_depthwise_follows_its_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 4, 1))
    _randomize_bn(model)
    _zero_out(model[0], [1, 3, 4])
    pruned, _ = _prune(model)
    assert core(pruned[3]).groups == 5 and core(pruned[3]).out_channels == 5 and core(pruned[6]).in_channels == 5


def test_every_channel_masked_keeps_one():
    model = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))
    _randomize_bn(model)
    _zero_out(model[0], list(range(8)))
    pruned, _ = _prune(model)
    assert pruned[0].out_channels == 1


class _Dense(nn.Module):
    """Feature reuse: every layer reads the concatenation of all earlier outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(4, 6, 1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c1 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.c2 = nn.Conv2d(12, 6, 3, padding=1)
        self.head = nn.Linear(18, 2)

    def forward(self, x):
        f0 = self.c0(x)
        f1 = self.c1(torch.relu(self.bn1(f0)))
        cat1 = torch.cat([f0, f1], 1)
        f2 = self.c2(torch.relu(self.bn2(cat1)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.cat([cat1, f2], 1), 1), 1))


def test_concatenation_with_feature_reuse():
    torch.manual_seed(0)
    model = _Dense()
    _randomize_bn(model)
    _zero_out(model.c0, [0, 1])
    _zero_out(model.c1, [2, 3, 4])
    pruned, plan = _prune(model)
    assert (pruned.c0.out_channels, core(pruned.c1).out_channels, core(pruned.c2).in_channels) == (4, 3, 7)
    assert pruned.bn2.num_features == 7 and pruned.head.in_features == 13
    assert {"c1", "c2", "head"} <= set(plan.folds)


def test_flatten_into_linear_folds_into_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 36, 5))
    _randomize_bn(model)
    _zero_out(model[0], [2, 5])
    pruned, plan = _prune(model)
    assert pruned[4].in_features == 4 * 36
    assert plan.folds["4"].bias is not None


def test_round_to_keeps_multiples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 1), nn.ReLU(), nn.Conv2d(16, 3, 1))
    _zero_out(model[0], list(range(11)))
    pruned, plan = _prune(model, round_to=4)
    assert pruned[0].out_channels == 8
    assert plan.round_to == 4


def test_caller_model_is_not_modified():
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 3, 1)).eval()
    _zero_out(model[0], [0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _prune(model)
    assert model[0].out_channels == 8 and model[1].inplace
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.b = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            y = y * 2
        return self.b(y)


def test_untraceable_network_keeps_everything_and_says_why():
    model = _Untraceable().eval()
    _zero_out(model.a, [0, 1])
    pruned, plan = _prune(model)
    assert pruned.a.out_channels == 8 and not plan.modules
    assert plan.groups_kept_whole()[0]["reason"].startswith("the network cannot be traced with torch.fx")
