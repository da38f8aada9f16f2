"""One thread for the computations whose results go into the exported files.

torch's matrix products and convolutions split their sums differently with
the number of threads (and pick other kernels), so the last bit of a result
can depend on the machine's core count. A merged weight or a folded constant
computed that way would make the same recipe give other bytes on another
machine, or in a ``-j`` worker that runs fewer threads. These few, small
computations run on one thread instead; everything else keeps all cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread while the block runs (restored after, also on error)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
