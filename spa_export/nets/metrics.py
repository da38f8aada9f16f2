"""Parameter and multiply-accumulate counts of a network, for one sample."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from spa_export.runtime.inputs import Inputs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def counting_macs(model: nn.Module) -> Iterator[list[int]]:
    """While the block runs ``model``, ``total[0]`` adds up the MACs of its convolutions, linear
    layers and multi-head attention (projections and the products of every head).

    Only shapes are read, so it counts on the meta device too. Attention written
    out of plain operations (Swin's windows) counts its linear layers only.
    """
    from spa_export.nets.attention import PrunedAttention, attention_macs

    total = [0]

    def conv_hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        total[0] += int(output[0].numel()) * int(mod.weight[0].numel())

    def linear_hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        total[0] += int(output[0].numel()) * mod.in_features

    def attention_hook(mod: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        given = dict(zip(("query", "key", "value"), args, strict=False)) | kwargs
        total[0] += attention_macs(mod, given["query"], given["key"], given["value"])

    handles = []
    for mod in model.modules():
        if isinstance(mod, (nn.MultiheadAttention, PrunedAttention)):
            handles.append(mod.register_forward_hook(attention_hook, with_kwargs=True))
        elif isinstance(mod, nn.modules.conv._ConvNd):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def checked_macs(model: nn.Module, inputs: Inputs, arch: str) -> int:
    """:func:`count_macs`, or an InputError saying that the inputs do not fit the network ``arch``."""
    from spa_export.runtime.inputs import as_option
    from spa_export.safety.errors import InputError, error_line

    try:
        return count_macs(model, inputs)
    except Exception as err:
        raise InputError(f"{as_option(inputs)} does not fit '{arch}': "
                         f"{error_line(err)}") from err


@torch.no_grad()
def count_macs(model: nn.Module, inputs: Inputs) -> int:
    """MACs of convolutions, linear layers and attention for one sample of ``inputs``."""
    from spa_export.runtime.inputs import example_tensors

    with counting_macs(model) as total:
        model.eval()(*example_tensors(inputs))
    return total[0]
