"""Memory between stages: hand back what a dropped network held, and measure the peak.

A stage drops its network as soon as no later stage needs it. Two things keep
that memory from going back to the system: reference cycles (torch.fx graphs
point at the module they traced, and back) wait for the cyclic garbage
collector, and glibc keeps freed blocks in its heap. :func:`release` runs the
collector and asks glibc to return free pages.

A full collection walks every object the process holds, and after importing
torch, ONNX and ONNX Runtime that is over a million of them: 0.17 s per call
(0.3 s in a process that also imported the dynamo exporter), a tenth of a
ResNet-50 build. :func:`young_heap` (around a task's stages) collects the
young generations, then freezes what is alive, so that each later collection
walks only what the task made.

The one thing this gives up: cyclic garbage that had already reached the
oldest generation before the task began is freed after the task, not before
it. A command line build has none (it starts in a fresh process), nor has a
recipe's next task (each task ends by collecting what it made); a Python
caller holding much of it can call ``gc.collect()`` first. (A full collection
on entry cost 0.2 to 0.3 s on every task, whether there was garbage or not.)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_frozen_depth = 0


@cache
def _malloc_trim() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release() -> None:
    """Free unreachable objects now and return free heap pages to the system (glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextlib.contextmanager
def young_heap() -> Iterator[None]:
    """While the block runs, :func:`release` collects only objects created in it.

    Young garbage from before is collected first; what is alive then (the
    libraries' modules, classes and caches) is moved aside with :func:`gc.freeze`
    and put back on exit, also on error. Nested blocks share the outermost one.
    """
    global _frozen_depth
    if _frozen_depth == 0:
        gc.collect(1)  # recent garbage is freed, not frozen; the oldest generation is not walked
        gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.collect()  # what the block left (cheap: the heap from before is still frozen)
            gc.unfreeze()


def settle() -> None:
    """Inside :func:`young_heap`: move aside what is alive now, without collecting.

    For what a task imports after the block began (a command line run imports torch,
    ONNX and ONNX Runtime inside its first stage): left in the young heap, they
    would make every later :func:`release` walk them, 0.15 s each.
    """
    if _frozen_depth:
        gc.freeze()


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


#: A forward pass holds a few activations at once besides a layer's own input and output
#: (a residual branch, a concatenation's parts): its peak is taken as this many working sets.
LIVE_ACTIVATIONS = 2


@dataclass(frozen=True)
class Footprint:
    """Activation memory of one sample, in bytes.

    ``working``: the largest input plus output of one layer, what a forward
    pass needs at once; ``total``: every activation together, what tracing
    (planning, export) may hold at once.
    """

    working: int
    total: int
    macs: int | None = None  # the network's multiply-accumulates per sample, where counted


def available_bytes() -> int | None:
    """Memory this process can still take: the system's available memory, less under a cgroup limit."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_fits(footprint: Footprint | None, runs: dict[str, int], subject: str, *, traced: int = 0) -> None:
    """Refuse batches whose activations cannot fit in the memory available now.

    ``runs``: what runs a forward pass at which batch size ("verification":
    4, "--batch": 64), named in the message; ``traced``: the batch at which
    the network is traced (planning and export hold every activation).
    ``subject`` is what sets the size (``--input-shape 1,3,224,224``). With no
    footprint (unknown) nothing is checked.
    """
    available = available_bytes()
    if footprint is None or available is None:
        return
    needs = {what: batch * LIVE_ACTIVATIONS * footprint.working for what, batch in runs.items()}
    if traced:
        needs[f"tracing at batch {traced} (plan, export)"] = traced * footprint.total
    what, needed = max(needs.items(), key=lambda kv: kv[1])
    if needed > available:
        from spa_export.safety.errors import InputError

        raise InputError(f"{subject}: {what} needs about {_gib(needed)} of activations, more than the "
                         f"{_gib(available)} available on this machine; use a smaller input shape or batch size")
