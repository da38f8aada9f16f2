"""Architectures that cannot be built on the meta device, for ``build_loaded``'s fallback."""

from __future__ import annotations

import torch
from torch import nn


class _Scaled(nn.Module):
    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = scale            # a plain tensor attribute: not in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


def plain_tensor_attribute() -> nn.Module:
    return _Scaled(torch.tensor(2.0))


def reads_data_while_built() -> nn.Module:
    fc = nn.Linear(4, 3)
    if float(fc.weight.abs().sum()) < 0:   # reading a value: impossible on the meta device
        raise AssertionError("unreachable")
    return nn.Sequential(fc)


def non_persistent_buffer() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 3))
    model.register_buffer("offset", torch.full((3,), 0.5), persistent=False)
    return model
