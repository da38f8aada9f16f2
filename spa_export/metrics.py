"""Parameter and multiply-accumulate counts of a network, for one sample."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of convolutions and linear layers for one sample of ``input_shape``."""
    total = 0

    def conv_hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_out = mod.weight[0].numel()
        total += int(output[0].numel()) * int(per_out)

    def linear_hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += int(output[0].numel()) * mod.in_features

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.modules.conv._ConvNd):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *input_shape[1:])))
    finally:
        for h in handles:
            h.remove()
    return total
