"""Where a tensor's channels go when its layout changes.

Vision transformers and hybrids move features between ``[N, C, H, W]`` (a
convolution's layout) and ``[N, T, C]`` or ``[N, H, W, C]`` (a linear layer's):
``x.flatten(2).transpose(1, 2)``, ``x.permute(0, 2, 3, 1)``,
``x.reshape(B, H, W, C)``, window partitions. Such an operation keeps every
channel whole and moves it to another axis; the planner follows it when the
channels land on one of the two axes it tracks (1, or the last) and the
operation would compute the same thing on fewer channels:

* a permutation (``transpose``, ``permute``, ``movedim``) always would;
* a reshape (``view``, ``reshape``, ``flatten``, ``unflatten``) keeps each
  element's channel where the channel axis keeps its size and either stays
  the last axis (channel = flat index modulo C, whatever happens to the
  axes before it) or stays axis 1 with the batch axis unchanged (channel =
  index within a sample divided by the size of the axes after it). Its
  target size on the channel axis must come from the tensor (``-1``, or a
  size read from the shape of a tensor whose channels go with these): a
  number written in the code (``x.view(B, 96, H, W)``) would be wrong once
  channels go. (The planner unites the channels a size counts with those it
  reshapes, and keeps the channels whose count is used for anything else.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PERMUTATIONS = {"transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis"}
RESHAPES = {"view", "reshape", "flatten", "unflatten"}
#: a reshape to another tensor's shape: its channel size is that tensor's channel count
RESHAPES_AS = {"reshape_as", "view_as"}


def moved_to(name: str, args: Sequence[object], kwargs: dict, value: torch.Tensor, result: torch.Tensor,
             channel_dim: int, is_node: type) -> int | None:
    """The dimension of ``result`` that holds ``value``'s channels (on ``channel_dim``), or None.

    ``args`` are the call's arguments after the tensor; ``is_node`` is the
    graph's node type (a size given by a node is read from a tensor's shape).
    """
    if name in PERMUTATIONS:
        order = _order(name, args, kwargs, value.dim())
        return None if order is None else order.index(channel_dim)
    if name not in RESHAPES:
        return None
    c = value.shape[channel_dim]
    last = channel_dim == value.dim() - 1
    if name == "unflatten":
        dim = args[0] if args else kwargs.get("dim")
        if not isinstance(dim, int) or dim % value.dim() == channel_dim:
            return None
    elif name in ("view", "reshape"):
        sizes = _target_sizes(args, kwargs)
        if len(sizes) != result.dim():
            return None
        at = result.dim() - 1 if last and result.shape[-1] == c else 1
        if at >= len(sizes) or not (sizes[at] == -1 or isinstance(sizes[at], is_node)):
            return None
    if last and result.dim() >= 2 and result.shape[-1] == c:
        return result.dim() - 1
    if channel_dim == 1 and result.dim() >= 2 and tuple(result.shape[:2]) == tuple(value.shape[:2]):
        return 1
    return None


def size_at(name: str, args: Sequence[object], kwargs: dict, dim: int) -> object:
    """The target size a ``view``/``reshape`` gives dimension ``dim`` (None for other operations)."""
    if name not in ("view", "reshape"):
        return None
    sizes = _target_sizes(args, kwargs)
    return sizes[dim] if dim < len(sizes) else None


def _target_sizes(args: Sequence[object], kwargs: dict) -> list:
    """A ``view``/``reshape`` call's target sizes: given one by one, as one sequence, or by keyword."""
    sizes = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
    return sizes or list(kwargs.get("shape", kwargs.get("size", ())))


def _order(name: str, args: Sequence[object], kwargs: dict, rank: int) -> list[int] | None:
    """``result``'s dimensions as ``value``'s: result dimension ``j`` is ``value``'s ``order[j]``."""
    order = list(range(rank))
    try:
        if name in ("transpose", "swapaxes", "swapdims"):
            a, b = (args[0], args[1]) if len(args) >= 2 else (kwargs["dim0"], kwargs["dim1"])
            a, b = a % rank, b % rank
            order[a], order[b] = order[b], order[a]
        elif name == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args or kwargs["dims"]
            order = [int(d) % rank for d in dims]
        else:   # movedim: one source to one destination
            src, dst = (args[0], args[1]) if len(args) >= 2 else (kwargs["source"], kwargs["destination"])
            if not (isinstance(src, int) and isinstance(dst, int)):
                return None
            order.remove(src % rank)
            order.insert(dst % rank, src % rank)
    except (KeyError, IndexError, TypeError):
        return None
    return order if sorted(order) == list(range(rank)) else None
