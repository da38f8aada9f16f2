"""Convert a network adapted with the ``sp_adapters`` library into an SPA file.

The Python API of :mod:`spa_export.pack` under its earlier names; see there
(and :mod:`spa_export.pack.adapters`) for how the library's tensors map onto
the format.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from spa_export.pack import network_state, pack_model
from spa_export.pack.adapters import adapted_layers
from spa_export.pack.masks import MaskPair
from spa_export.spa import SpaFile


def base_state_from_sp_adapters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without adapter tensors, keyed like the original network.

    Adapted layers' biases are included as they are now (the library trains
    them): with this as the base, a converted SPA has no ``adapter_bias``.
    """
    return {k: v.clone() for k, v in network_state(model, adapted_layers(model), None).items()}


def from_sp_adapters(model: nn.Module, *, masks: Mapping[str, MaskPair] | None = None,
                     task: str | None = None, arch: str | None = None,
                     base_state: Mapping[str, torch.Tensor] | None = None) -> SpaFile:
    """The SPA file of a network adapted with ``sp_adapters`` (:func:`spa_export.pack.pack_model`).

    ``masks`` maps module names to ``(out_mask, in_mask)`` (either may be
    ``None``); adapter factors are then stored for kept channels only. With
    ``base_state`` (the original network's state dict) the SPA records
    ``spa.base_digest``, trained biases of adapted layers as ``adapter_bias``
    and every other differing entry as ``override.<key>``; without it the
    model's own non-adapter state is taken as the base.
    """
    return pack_model(model, base_state, masks=masks, task=task, arch=arch,
                      description="converted from sp_adapters").spa
