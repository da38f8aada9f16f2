"""Channel counts a network reads from shapes, and what it does with them.

``B, C, H, W = x.shape`` reads a count of channels that pruning changes. The
pruned network reads the new count, which is right where the count sizes the
same channels (``x.reshape(B, C, H * W)``, ``y.view(B, C, 1, 1)`` of channels
that go with ``x``'s: the planner unites them) or cuts them into equal parts
(``torch.split(x, C // 2, 1)``). Used for anything else (``x.reshape(B, N, C)``
of another tensor, as NextViT's attention sizes its output by its input;
``C // heads``; ``torch.zeros(B, C)``), it would be wrong once channels go: the
channels it counts stay.
"""

from __future__ import annotations

import operator

import numpy as np
import torch.fx as fx


class ChannelCounts:
    """The count and shape reads of one traced graph, the uses that were paired, and what stays."""

    def __init__(self) -> None:
        self.counts: dict[str, np.ndarray] = {}                # node -> the channels it counts
        self.shapes: dict[str, tuple[np.ndarray, int]] = {}    # node -> (channels, channel dimension)
        self.paired: set[tuple[str, str]] = set()              # (user, count node) that size the same channels
        self.uses: list[tuple[str, str, np.ndarray, str]] = []  # (user, count or shape node, channels, reason)

    def read(self, n: fx.Node, name: str, ids: np.ndarray, cdim: int, rank: int) -> None:
        """Note node ``n`` (``x.shape``, ``x.size()``, ``x.size(d)``) of a tensor whose followed channels
        ``ids`` lie on dimension ``cdim``."""
        args = n.args
        dim = (args[1] if len(args) > 1 else n.kwargs.get("dim")) if name == "size" else None
        if (name == "size" and dim is None) or (n.target is getattr and args[1:] == ("shape",)):
            self.shapes[n.name] = (ids, cdim)
        elif isinstance(dim, int) and dim % rank == cdim:
            self.counts[n.name] = ids

    def index(self, n: fx.Node, rank: int) -> list[tuple[np.ndarray, str]]:
        """Note node ``n``, an index into a shape read before (``shape[1]``); returns what must stay at once
        (a slice of the shape that holds the channel count)."""
        src, index = n.args[0], n.args[1]
        if n.target is not operator.getitem or src.name not in self.shapes:
            return []
        ids, cdim = self.shapes[src.name]
        if isinstance(index, int):
            if index % rank == cdim:
                self.counts[n.name] = ids
            return []
        if isinstance(index, slice) and cdim in range(rank)[index]:
            return [(ids, f"its channel count is read by '{n.name}' (a slice of its shape)")]
        return []

    def note_uses(self, n: fx.Node) -> None:
        """Note where ``n`` uses a channel count or a whole shape (settled once the graph has run)."""
        for a in n.all_input_nodes:
            if a.name in self.counts:
                self.uses.append((n.name, a.name, self.counts[a.name],
                                  f"its channel count, read by '{a.name}', is used by '{n.name}' for another size"))
            if a.name in self.shapes and not (n.op == "call_function" and n.target is operator.getitem):
                self.uses.append((n.name, a.name, self.shapes[a.name][0],
                                  f"its shape, read by '{a.name}', is used by '{n.name}'"))

    def pair(self, user: fx.Node, size: fx.Node, channels: int) -> np.ndarray | None:
        """The channels ``size`` counts, where ``user`` reshapes ``channels`` channels to it (then paired)."""
        counted = self.counts.get(size.name)
        if counted is None or len(counted) != channels:
            return None
        self.paired.add((user.name, size.name))
        return counted

    def split_by_count(self, size: object, ids: np.ndarray, parts: int) -> bool:
        """Whether ``size`` is ``C // parts`` of ``C`` counted from these very channels (then paired)."""
        if not (isinstance(size, fx.Node) and size.target is operator.floordiv and size.args[1] == parts):
            return False
        count = size.args[0]
        if not isinstance(count, fx.Node) or not np.array_equal(self.counts.get(count.name, ()), ids):
            return False
        self.paired.add((size.name, count.name))
        return True

    def settle(self) -> list[tuple[np.ndarray, str]]:
        """What stays: the channels whose count or shape is used other than to size the same channels."""
        return [(ids, reason) for user, count, ids, reason in self.uses if (user, count) not in self.paired]
