"""``--round-to auto``: the channel multiple the target runtime and processor favour.

Pruning keeps exactly the channels the masks ask for; rounding a group up to a
multiple keeps a few more (never fewer, so exactness holds) where the runtime's
kernels work on blocks of channels:

* ONNX Runtime on x86 (MLAS) runs convolutions in its blocked NCHWc layout
  only when a convolution's input channels are a multiple of the block (or
  fewer than one block); the output channels are padded to the block anyway.
  The block is 16 float32 lanes with AVX-512F, 8 with AVX/AVX2. Counts that
  are multiples of nothing cost up to 40% of the speedup on ResNet-50 and make
  the demo's pruned tasks slower than dense. Measured on an AVX-512 machine
  (``benchmarks/results/pruning_speedup.md``, models timed interleaved in one
  loop), multiples of 16 run as fast as multiples of 8 at batch 1 and faster
  at batch 8, although at 70% pruning they keep 21% more MACs: ``auto`` takes
  the block.
* TensorRT and cuDNN use tensor cores in fp16 when channel counts are multiples
  of 8 (NVIDIA's documented alignment; not measured here, no GPU was available).

Elsewhere (ARM CPUs, where ONNX Runtime has no blocked layout) the multiple is 1.

With ``auto``, a group that keeps fewer channels than one block stays as the
masks ask: ONNX Runtime takes a convolution input narrower than its block
unblocked, and doubling a small layer's width would cost more than it saves.
A number given by the user applies to every group. ``auto:N`` is auto's rule with the multiple
pinned to N: what ``auto`` gives on a machine whose block is N, on any machine (a CI job matrix
whose runners differ pins it so, and its parts assemble).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from spa_export.runtime.environment import cpu_flags

GPU_MULTIPLE = 8


@dataclass(frozen=True)
class Rounding:
    """The multiple every prunable group is rounded up to, and why."""

    requested: str  # "auto" or the number the user gave
    multiple: int
    why: str
    # False for 'auto': a group that keeps fewer channels than one block stays as the masks ask
    # (ONNX Runtime reads a convolution input narrower than its block unblocked, as is)
    round_small: bool = True

    def to_dict(self) -> dict:
        return {"requested": self.requested, "multiple": self.multiple, "why": self.why,
                "groups_below_one_multiple": "rounded" if self.round_small else "left as the masks ask"}


def cpu_block(machine: str | None = None, flags: set[str] | None = None) -> tuple[int, str]:
    """The multiple ONNX Runtime's CPU convolutions favour on this processor, with the reason."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return 1, f"ONNX Runtime has no blocked convolution layout on {machine or 'this processor'}"
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return 16, "ONNX Runtime's CPU convolutions work on blocks of 16 channels with AVX-512F"
    if "avx" in flags or "avx2" in flags:
        return 8, "ONNX Runtime's CPU convolutions work on blocks of 8 channels with AVX/AVX2"
    return 1, "no AVX on this processor: ONNX Runtime's convolutions are not blocked"


def resolve(requested: int | str, bench: str, *, machine: str | None = None,
            flags: set[str] | None = None) -> Rounding:
    """The multiple for ``--round-to requested`` when the build targets ``bench``."""
    if isinstance(requested, str) and requested.startswith("auto:"):
        multiple = int(requested.split(":", 1)[1])
        return Rounding(requested, multiple, f"auto's rule with the multiple pinned to {multiple} (the same "
                        "models on every machine)", round_small=False)
    if requested != "auto":
        return Rounding(str(requested), int(requested), "given by the user")
    block, why = cpu_block(machine, flags)
    gpu = f"fp16 tensor cores want multiples of {GPU_MULTIPLE} (TensorRT, cuDNN)"
    if bench == "gpu":
        return Rounding("auto", GPU_MULTIPLE, f"the build targets the GPU: {gpu}", round_small=False)
    if bench == "all":  # powers of two: the larger multiple serves both
        return Rounding("auto", max(block, GPU_MULTIPLE), f"{why}; {gpu}", round_small=False)
    return Rounding("auto", block, why, round_small=False)
