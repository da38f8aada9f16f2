"""Blur pooling (timm's ``BlurPool2d``, anti-aliased downsampling): one fixed filter per channel.

``BlurPool2d`` pads each channel (reflect by default) and convolves it with a
binomial filter, channel by channel (``groups`` = channels), so it acts on
each channel by itself and a channel that goes takes its filter row with it.
Built with ``channels`` it holds one filter row per channel (``filt``:
``[C, 1, k, k]``) and reads ``channels`` in ``forward``: a pruned copy
(:mod:`spa_export.stages.apply`) keeps the kept channels' rows and their
count. Built without, it expands one row to whatever it is given and needs
no change.
"""

from __future__ import annotations

import torch
from torch import nn


def is_blur_pool(mod: nn.Module) -> bool:
    """Whether ``mod`` is timm's ``BlurPool2d`` (a per-channel filter, followed like an activation)."""
    kind = type(mod)
    if kind.__name__ != "BlurPool2d" or not kind.__module__.startswith("timm."):
        return False
    filt, channels = getattr(mod, "filt", None), getattr(mod, "channels", -1)
    return isinstance(filt, torch.Tensor) and filt.dim() == 4 and filt.shape[1] == 1 and (
        channels is None or (isinstance(channels, int) and filt.shape[0] == channels))


def sized(mod: nn.Module) -> bool:
    """Whether ``mod`` (a blur pool) holds one filter row per channel, so that its copy must shrink."""
    return mod.channels is not None
