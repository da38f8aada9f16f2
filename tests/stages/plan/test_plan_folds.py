"""A removed constant channel's contribution, computed from its own weights, equals the layer's response."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spa_export.stages.plan.decide import _contribution


def _response(mod: nn.Module, values: torch.Tensor, pos: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    only = torch.zeros(shape)
    only[:, torch.as_tensor(pos)] = values
    with torch.no_grad():
        return (mod(only) - mod(torch.zeros(shape)))[0]


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(8, 6, 3, stride=2, padding=1),
    lambda: nn.Conv2d(8, 6, 3, padding=1, bias=False),
    lambda: nn.Conv2d(8, 6, 3, padding=1, padding_mode="reflect"),
    lambda: nn.Conv2d(8, 6, 3, padding=1, groups=2),          # grouped: the general path
    lambda: nn.Conv1d(8, 6, 5, dilation=2),
])
def test_convolutions(make) -> None:
    torch.manual_seed(0)
    mod = make().eval()
    shape = (1, 8, 9, 9) if isinstance(mod, nn.Conv2d) else (1, 8, 20)
    pos = np.array([1, 4, 5])
    values = torch.randn(1, len(pos), *shape[2:])
    with torch.no_grad():
        got = _contribution(mod, values, pos, shape)
    want = _response(mod, values, pos, shape)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.abs().max() > 0.1


def test_linear() -> None:
    torch.manual_seed(0)
    mod = nn.Linear(10, 3).eval()
    pos = np.array([0, 9])
    values = torch.randn(1, 2)
    with torch.no_grad():
        got = _contribution(mod, values, pos, (1, 10))
    assert torch.allclose(got, _response(mod, values, pos, (1, 10)), rtol=1e-5, atol=1e-6)
