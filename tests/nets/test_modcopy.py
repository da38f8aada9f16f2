"""copy_leaving: a deep copy without the tensors the caller replaces; check_complete finds any left."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa_export.nets.modcopy import check_complete, copy_leaving
from spa_export.safety.errors import BuildError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_a_whole_module_is_left_and_the_rest_copied() -> None:
    net = _net()
    before = _snapshot(net)
    copy = copy_leaving(net, [("1", None)])
    assert copy[1].weight.is_meta and copy[1].running_mean.is_meta and copy[1].num_batches_tracked.is_meta
    assert copy[1].weight.shape == net[1].weight.shape and isinstance(copy[1].weight, nn.Parameter)
    for i in (0, 2):
        for name, t in copy[i].state_dict().items():
            original = net[i].state_dict()[name]
            assert not t.is_meta and t.data_ptr() != original.data_ptr() and torch.equal(t, original)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())   # the caller's: untouched
    assert not any(t.is_meta for t in net.state_dict().values())


def test_one_attribute_is_left_and_the_module_keeps_the_others() -> None:
    net = _net()
    copy = copy_leaving(net, [("0", "weight")])
    assert copy[0].weight.is_meta
    assert not copy[0].bias.is_meta and torch.equal(copy[0].bias, net[0].bias)


def test_check_complete_names_what_is_left() -> None:
    copy = copy_leaving(_net(), [("2", "bias")])
    with pytest.raises(BuildError, match=r"internal error: the test left '2\.bias' without data"):
        check_complete(copy, "the test")
    copy[2].bias = nn.Parameter(torch.zeros(2))
    check_complete(copy, "the test")


def test_a_tied_tensor_is_copied_for_the_module_that_keeps_it() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    copy = copy_leaving(net, [("0", None)])
    assert not copy[1].weight.is_meta and torch.equal(copy[1].weight, net[0].weight)
    assert copy[0].weight is copy[1].weight          # still tied in the copy
    assert copy[0].bias.is_meta                      # not shared: left
