"""A package in the edge layout (``--layout edge``): the base once, each task as a delta.

Each task was built with its delta (:mod:`spa_export.stages.delta`), which
rebuilds its verified ``model.onnx`` byte for byte; here the base is written
once as ``base.safetensors`` (the tensors the deltas refer to, readable with
numpy) and every task's whole networks (``model.onnx``, ``dense.onnx``) leave
the package. The manifest keeps each verified file's sha256.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from spa_export.runtime.packaged import BASE_FILE, DELTA_FILE
from spa_export.safety.errors import BuildError


def to_edge_layout(root: Path, state: Mapping[str, torch.Tensor], folders: Iterable[Path]) -> None:
    """Write ``root/base.safetensors`` and drop each task's whole networks (its delta stays)."""
    from safetensors.torch import save

    bf16 = [k for k, v in state.items() if v.dtype == torch.bfloat16]
    if bf16:   # numpy, which the device reads the base with, has no bfloat16
        raise BuildError(f"--layout edge: the base holds bfloat16 tensors ('{bf16[0]}'), which a device reads "
                         "with numpy cannot: convert the base to float32 or float16")
    (root / BASE_FILE).write_bytes(save({k: v.detach().cpu().contiguous() for k, v in state.items()}))
    for folder in folders:
        if not (folder / DELTA_FILE).is_file():
            raise BuildError(f"{folder.name}: no delta was written")
        for name in ("model.onnx", "dense.onnx"):
            (folder / name).unlink(missing_ok=True)
