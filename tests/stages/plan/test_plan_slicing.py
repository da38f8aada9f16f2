"""Channels taken by basic indexing with numbers written in the code (``x[:, :k]``, ``x[:, k:]``).

GhostNet keeps the first ``out_chs`` channels of a concatenation (all of them, where the two halves
add up to ``out_chs``); ReXNet adds its shortcut to the first ``in_channels`` channels and passes the
rest on. The numbers stay in the code once channels go, so a slice is followed where the channels
before its end (its start, where it runs to the end) stay.
"""

from __future__ import annotations

import pytest
import torch
from test_plan_cases import _check_exact, _randomize_bn, _zero_in, _zero_out, core
from torch import nn

from spa_export.runtime.inputs import as_inputs
from spa_export.stages.apply import apply_plan
from spa_export.stages.plan import make_plan
from spa_export.stages.plan.slicing import Cut, channel_slice

SHAPE = (1, 3, 8, 8)


class Ghost(nn.Module):
    """Two halves concatenated and cut back to ``keep`` channels (GhostNet's module; its cheap half is
    a pointwise convolution here, so that the halves' channels are not tied)."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.primary, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.cheap, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.out = nn.Conv2d(keep, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(self.primary(x)))
        b = torch.relu(self.bn2(self.cheap(a)))
        return self.out(torch.cat([a, b], dim=1)[:, :self.keep, :, :])


class PartialResidual(nn.Module):
    """A shortcut added to the first 4 of 8 channels, the rest passed on (ReXNet's block)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.expand, self.bn1 = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn0(self.stem(x)))
        y = self.bn1(self.expand(s))
        y = torch.cat([y[:, 0:4] + s, y[:, 4:]], dim=1)
        return self.out(torch.relu(y))


def _plan(net: nn.Module) -> tuple[object, nn.Module]:
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    return plan, pruned


def test_a_slice_that_takes_every_channel_passes_them_on_and_they_shrink() -> None:
    torch.manual_seed(0)
    net = Ghost(keep=8).eval()
    _randomize_bn(net)
    _zero_out(net.primary, [1])      # a constant channel of the first half (folded into `cheap` and `out`)
    _zero_in(net.out, [0, 5, 6])     # `out` reads neither channel 0 (`cheap` does) nor the cheap half's 1 and 2
    plan, pruned = _plan(net)
    assert core(pruned.primary).out_channels == 3 and core(pruned.cheap).out_channels == 2
    assert core(pruned.out).in_channels == 5
    assert not any("indexed" in why for g in plan.groups for why in g.kept_reasons)


def test_a_slice_that_leaves_the_last_channels_removes_them_and_keeps_the_first_in_place() -> None:
    torch.manual_seed(0)
    net = Ghost(keep=6).eval()        # the cheap half's last two channels are never read
    _randomize_bn(net)
    _zero_in(net.out, [5])
    _zero_out(net.primary, [2])
    plan, pruned = _plan(net)
    # channels 0..5 keep their places (the slice's numbers stay), 6 and 7 are read by nothing: they go
    assert core(pruned.primary).out_channels == 4 and core(pruned.cheap).out_channels == 2
    assert core(pruned.out).in_channels == 6
    held = {why for g in plan.groups for why in g.kept_reasons}
    assert any("indexed by" in why and "keep their places" in why for why in held), held


def test_a_partial_residual_keeps_the_added_channels_and_shrinks_the_rest() -> None:
    torch.manual_seed(0)
    net = PartialResidual().eval()
    _randomize_bn(net)
    _zero_out(net.expand, [1, 5, 6])  # 1 is added to the shortcut (stays); 5 and 6 are passed on (go)
    _zero_in(net.out, [7])
    plan, pruned = _plan(net)
    assert core(pruned.expand).out_channels == 5 and pruned.bn1.num_features == 5
    assert core(pruned.out).in_channels == 5 and core(pruned.stem).out_channels == 4


class ClassToken(nn.Module):
    """Tokens ``[N, T, C]``; the head reads the first token's features (a ViT's class token)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).flatten(2).transpose(1, 2)
        t = self.fc2(torch.relu(self.fc1(t)))
        return self.head(t[:, 0])


def test_a_token_taken_by_an_integer_keeps_its_features_followed() -> None:
    torch.manual_seed(0)
    net = ClassToken().eval()
    _zero_out(net.fc2, [2, 4])       # features of the tokens: zero in the class token too
    _zero_in(net.head, [2, 4])
    plan, pruned = _plan(net)
    assert pruned.fc2.out_features == 4 and pruned.head.in_features == 4


@pytest.mark.parametrize(("index", "expected"), [
    ((slice(None), slice(None, 6)), Cut(0, 6, 1, 6)),
    ((slice(None), slice(None, 99)), Cut(0, 8, 1, 0)),
    ((slice(None), slice(3, None)), Cut(3, 8, 1, 3)),
    ((Ellipsis, slice(2, 5), slice(None), slice(None)), Cut(2, 5, 1, 5)),
    ((slice(None), slice(None), 0), Cut(0, 8, 1, 0)),
    ((slice(None), slice(-2, None)), None),          # from the end: other channels once some go
    ((slice(None), slice(None, None, 2)), None),     # a step
    ((slice(None), 3), None),                        # one channel
    ((0, slice(None)), None),                        # the batch axis
    ((slice(None), None), None),                     # a new axis
])
def test_channel_slice_reads_what_an_index_takes_along_the_channels(index: object, expected: Cut | None) -> None:
    assert channel_slice(index, 4, 1, 8) == expected
