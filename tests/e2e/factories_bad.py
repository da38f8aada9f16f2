"""Architectures for the bad-input corpus (imported as ``factories_bad:NAME`` by the CLI).

The directory holding this file goes on PYTHONPATH of the subprocesses that use it.
"""

from __future__ import annotations

from torch import nn


def even_kernel_net() -> nn.Module:
    """A small network whose first layer is a 2x2 convolution (no kernel centre)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 2, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
