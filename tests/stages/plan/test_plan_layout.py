"""Channels that change layout: ``[N, C, H, W]`` to tokens ``[N, HW, C]`` or ``[N, H, W, C]`` and back.

Hybrid networks (PVT, Twins, CoaT, NesT, MaxViT...) run convolutions on ``[N, C, H, W]`` and linear
layers on tokens, moving features between the two with transposes, permutes and reshapes. The
planner follows a channel through such a move, so a convolution's channel and the linear layer that
reads it as a feature are one group; a reshape whose channel size is a number in the code is not
followed (it would be wrong once channels go), and the plan says so.
"""

from __future__ import annotations

import pytest
import torch
from test_plan_cases import _check_exact, _randomize_bn, _zero_in, _zero_out, core
from torch import nn

from spa_export.runtime.inputs import as_inputs
from spa_export.stages.apply import apply_plan
from spa_export.stages.plan import make_plan

SHAPE = (1, 3, 8, 8)


class Hybrid(nn.Module):
    """A convolution, a token MLP on its output (one of three ways to make tokens), a convolution."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = layout
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 8)
        self.out = nn.Conv2d(8, 4, 3, padding=1)

    def mlp(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(t)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        B, C, H, W = x.shape
        if self.layout == "tokens":           # [N, HW, C] (PVT, Twins, CoaT)
            t = self.mlp(x.flatten(2).transpose(1, 2))
            x = t.transpose(1, 2).reshape(B, -1, H, W)
        elif self.layout == "channels_last":  # [N, H, W, C] (ConvNeXt, NesT)
            x = self.mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif self.layout == "windows":        # 2x2 windows of tokens: the batch axis changes (Swin, MaxViT)
            t = x.permute(0, 2, 3, 1).reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 2, 4, 5)
            t = self.mlp(t.reshape(-1, 4, C))
            x = t.view(B, H // 2, W // 2, 2, 2, -1).permute(0, 5, 1, 3, 2, 4).reshape(B, -1, H, W)
        else:                                 # the channel count written in the code
            x = self.mlp(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, 8, H, W)
        return self.out(x)


def _net(layout: str) -> Hybrid:
    torch.manual_seed(0)
    net = Hybrid(layout).eval()
    _randomize_bn(net)
    _zero_out(net.conv, [1, 4, 6])     # output masks: constants after the batch-norm (folded into fc1)
    _zero_out(net.fc1, [0, 5, 9, 11])  # hidden features of the MLP
    _zero_in(net.out, [2, 3])          # fc2's outputs 2 and 3 are not read
    return net


@pytest.mark.parametrize("layout", ["tokens", "channels_last", "windows"])
def test_channels_moved_to_tokens_and_back_are_removed_exactly(layout: str) -> None:
    net = _net(layout)
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (pruned.conv.out_channels, pruned.bn.num_features, pruned.fc1.in_features) == (5, 5, 5)
    assert (pruned.fc1.out_features, pruned.fc2.in_features) == (8, 8)
    assert (pruned.fc2.out_features, pruned.out.in_channels) == (6, 6)
    assert net.conv.out_channels == 8 and net.fc2.out_features == 8    # the caller's network is unchanged


def test_a_reshape_to_a_channel_count_written_in_the_code_keeps_its_channels_and_says_so() -> None:
    net = _net("literal")
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (pruned.conv.out_channels, pruned.fc1.out_features) == (5, 8)   # what the reshape does not read goes
    assert (pruned.fc2.out_features, pruned.out.in_channels) == (8, 8)
    whole = plan.groups_kept_whole()
    assert [w["channels"] for w in whole if "reshape" in w["reason"]] == [8], whole


class CountElsewhere(nn.Module):
    """NextViT's attention: the channel count of its input reshapes its output, another tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.v, self.out = nn.Linear(8, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        B, C, H, W = x.shape
        t = torch.softmax(self.v(x.flatten(2).transpose(1, 2)), dim=-1)   # mixes its features: not followed
        return self.out(t.transpose(1, 2).reshape(B, C, H, W))


def test_a_channel_count_that_sizes_another_tensor_keeps_the_channels_it_counts() -> None:
    torch.manual_seed(0)
    net = CountElsewhere().eval()
    _randomize_bn(net)
    _zero_out(net.conv, [1, 4])   # constants the token layer reads: removable, but for the count
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (pruned.conv.out_channels, pruned.v.in_features) == (8, 8)
    assert any(w["id"] == "conv" and "channel count" in w["reason"] for w in plan.groups_kept_whole()), \
        plan.groups_kept_whole()


class Chunked(nn.Module):
    """Channels cut in two: each half to its own convolution (``chunk``, ``split`` by a shape, or by numbers)."""

    def __init__(self, cut: str) -> None:
        super().__init__()
        self.cut = cut
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        if self.cut == "chunk":
            x1, x2 = x.chunk(2, dim=1)
        elif self.cut == "split by shape":
            x1, x2 = torch.split(x, x.shape[1] // 2, dim=1)
        else:
            x1, x2 = torch.split(x, [8, 8], dim=1)
        return torch.cat([self.a(x1), self.b(x2)], dim=1)


@pytest.mark.parametrize("cut", ["chunk", "split by shape"])
def test_channels_cut_into_equal_parts_go_in_equal_numbers_per_part(cut: str) -> None:
    torch.manual_seed(0)
    net = Chunked(cut).eval()
    _randomize_bn(net)
    _zero_out(net.conv, [1, 2, 3, 9])   # three in the first half, one in the second
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (pruned.conv.out_channels, pruned.a.in_channels, pruned.b.in_channels) == (14, 7, 7)
    reasons = {why for g in plan.groups for why in g.kept_reasons}
    assert any("2 groups of" in why and "stay equal" in why for why in reasons), reasons


def test_a_split_into_sizes_written_in_the_code_keeps_its_channels_and_says_so() -> None:
    torch.manual_seed(0)
    net = Chunked("split by numbers").eval()
    _randomize_bn(net)
    _zero_out(net.conv, [1, 2, 3, 9])
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (pruned.conv.out_channels, pruned.a.in_channels) == (16, 8)
    assert any("sizes are written in the code" in w["reason"] for w in plan.groups_kept_whole())


class Gated(nn.Module):
    """gMLP's gate on tokens: one linear layer's features cut in two, one half gating the other."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 24, bias=False), nn.Linear(12, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = nn.functional.gelu(self.fc1(x)).chunk(2, dim=-1)
        return self.fc2(u * v)


def test_a_gate_on_tokens_loses_the_pairs_whose_product_is_zero() -> None:
    torch.manual_seed(0)
    net = Gated().eval()
    _zero_out(net.fc1, [0, 12, 5])     # 0 and 12 pair up; 5 is zero, so its product with 17 is too
    shape = (1, 5, 8)
    plan = make_plan(net, as_inputs(shape))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, shape)
    assert (pruned.fc1.out_features, pruned.fc2.in_features) == (20, 10)


class TokenMixer(nn.Module):
    """MLP-Mixer's token mixing: a linear layer over the tokens of each channel, then one over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.tokens, self.fc = nn.Linear(64, 64), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).flatten(2)      # [N, C, HW]
        return self.fc(self.tokens(x).transpose(1, 2))       # tokens mixed per channel, then channels


def test_a_linear_layer_over_each_channels_tokens_passes_the_channels_through() -> None:
    torch.manual_seed(0)
    net = TokenMixer().eval()
    _randomize_bn(net)
    _zero_out(net.conv, [1, 4])
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (pruned.conv.out_channels, core(pruned.fc).in_features) == (6, 6)
    assert (pruned.tokens.in_features, pruned.tokens.out_features) == (64, 64)


@pytest.mark.parametrize(("name", "args", "shape", "channel_dim", "expected"), [
    ("transpose", (1, 2), (2, 8, 16), 1, 2),            # [N, C, T] -> [N, T, C]
    ("permute", ((0, 2, 3, 1),), (2, 8, 4, 4), 1, 3),    # channels last
    ("movedim", (3, 1), (2, 4, 4, 8), 3, 1),             # channels first again
    ("flatten", (2,), (2, 8, 4, 4), 1, 1),               # spatial axes merged
    ("unflatten", (1, (4, 4)), (2, 16, 8), 2, 3),        # tokens to a grid, features last
    ("reshape", (2, 2, 2, 2, 2, -1), (2, 4, 4, 8), 3, 5),  # windows: the channels stay last
    ("reshape", (2, 8, 16), (2, 8, 4, 4), 1, None),      # a channel count written in the code
    ("view", (2, 4, 2, 16), (2, 8, 4, 4), 1, None),      # channels split: not followed
])
def test_where_a_layout_change_puts_the_channels(name: str, args: tuple, shape: tuple, channel_dim: int,
                                                 expected: int | None) -> None:
    from spa_export.stages.plan.layout import moved_to

    value = torch.zeros(shape)
    method = getattr(value, name)
    result = method(*args)
    assert moved_to(name, args, {}, value, result, channel_dim, type(None)) == expected


class LinearNorm(nn.Module):
    """LeViT's linear layer on tokens with a batch-norm over every token's features:
    ``bn(x.flatten(0, 1)).reshape_as(x)``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear, self.bn = nn.Linear(cin, cout), nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.a, self.b = LinearNorm(8, 12), LinearNorm(12, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.head(self.b(torch.relu(self.a(t))).mean(1))


def test_a_reshape_to_the_shape_of_a_tensor_with_the_same_channels_is_followed() -> None:
    torch.manual_seed(0)
    net = TokenNet().eval()
    _randomize_bn(net)
    for bn in (net.a.bn, net.b.bn):
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1)
    _zero_out(net.a.linear, [0, 5, 9])   # constants after the batch-norm: folded into b's linear
    _zero_in(net.head, [1, 6])           # the head reads neither: b's linear and batch-norm lose them
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (core(pruned.a.linear).out_features, pruned.a.bn.num_features) == (9, 9)
    assert (core(pruned.b.linear).in_features, core(pruned.b.linear).out_features) == (9, 6)
    assert pruned.b.bn.num_features == 6 and pruned.head.in_features == 6


class TokenPool(nn.Module):
    """Token features pooled over groups of tokens (Hiera's ``x.view(B, s, -1, C).amax(dim=1)``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 2, stride=2)
        self.fc = nn.Linear(8, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.fc(self.conv(x).flatten(2).transpose(1, 2)))   # [N, 16, 10]
        B, _, C = t.shape
        groups = t.view(B, 4, -1, C)
        pooled = getattr(groups, self.how)(dim=1)                           # [N, 4, 10]
        return self.head(pooled.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("how", ["amax", "amin", "mean"])
def test_pooling_over_tokens_follows_the_features(how: str) -> None:
    torch.manual_seed(0)
    net = TokenPool(how).eval()
    _zero_out(net.fc, [1, 7])           # zero after the ReLU: constants, folded into the head
    _zero_in(net.head, [4])             # the head does not read feature 4
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert core(pruned.fc).out_features == 7 and core(pruned.head).in_features == 7
