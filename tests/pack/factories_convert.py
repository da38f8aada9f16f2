"""A tiny architecture for the converter tests (``factories_convert:mlp``)."""

from __future__ import annotations

from torch import nn


def mlp() -> nn.Module:
    """16 -> 32 -> 8, block-divisible by 4 for SPLoPA."""
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
