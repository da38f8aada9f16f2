"""Memory between stages: hand back what a dropped network held, and measure the peak.

A stage drops its network as soon as no later stage needs it. Two things keep
that memory from going back to the system: reference cycles (torch.fx graphs
point at the module they traced, and back) wait for the cyclic garbage
collector, and glibc keeps freed blocks in its heap. :func:`release` runs the
collector and asks glibc to return free pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from functools import cache


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


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
