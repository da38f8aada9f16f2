"""Basic indexing (``x[:, a:b]``, ``x[:, 0]``, ``x[..., 1:, :]``): which channels it takes, and where.

An index made of slices and integers takes, along the channel axis, the
channels of one slice ``a:b`` (step 1) and acts on every other axis
position by position, so it acts on each channel by itself. Its numbers are
written in the code, and stay what they are once channels go: the slice
still takes what it took where every channel before its end stays (before
its start, where it runs to the end of the channels). ``x[:, :k]`` with
``k`` at least the number of channels takes them all, before and after
(GhostNet's ``out[:, :self.out_chs]``); ``x[:, k:]`` takes those after the
first ``k``, which stay (ReXNet's partial residual).

Not followed: an integer, a negative bound or a step on the channel axis, an
integer on the batch axis, ``None``, tensors and lists (advanced indexing).
"""

from __future__ import annotations

from typing import NamedTuple


class Cut(NamedTuple):
    """Channels ``start:stop`` of the input, on dimension ``channel_dim`` of the result; the first
    ``fixed`` channels of the input keep their places (they stay)."""

    start: int
    stop: int
    channel_dim: int
    fixed: int


def _entries(index: object, ndim: int) -> list[object] | None:
    """``index`` as one entry per dimension (``slice(None)`` where it says nothing), or None."""
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(i is Ellipsis for i in items) > 1 or not all(
            i is Ellipsis or isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool))
            for i in items):
        return None
    given = len(items) - (Ellipsis in items)
    if given > ndim:
        return None
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + [slice(None)] * (ndim - given) + items[at + 1:]
    return items + [slice(None)] * (ndim - len(items))


def _bound(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def channel_slice(index: object, ndim: int, channel_dim: int, size: int) -> Cut | None:
    """What ``x[index]`` does to the ``size`` channels on ``channel_dim`` of an ``ndim``-D ``x``."""
    entries = _entries(index, ndim)
    if entries is None or channel_dim == 0 or isinstance(entries[0], int):
        return None
    cut = entries[channel_dim]
    if not isinstance(cut, slice) or cut.step not in (None, 1) or not (_bound(cut.start) and _bound(cut.stop)):
        return None
    for e in entries:
        if isinstance(e, slice) and not all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                                            for v in (e.start, e.stop, e.step)):
            return None   # a bound read from a tensor's shape: not a number written in the code
    start = min(cut.start or 0, size)
    stop = size if cut.stop is None else min(max(cut.stop, start), size)
    fixed = start if stop == size else stop
    new_dim = channel_dim - sum(isinstance(e, int) for e in entries[:channel_dim])
    return Cut(start, stop, new_dim, fixed)
