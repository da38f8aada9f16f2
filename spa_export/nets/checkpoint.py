"""Base checkpoints, read without running code and without trusting their sizes.

``.safetensors`` files, or PyTorch state dicts (``.pt``/``.pth``) through
``torch.load(..., weights_only=True)``. Before anything is materialised, every
size a file claims is checked against the bytes it really holds:

* safetensors: the header alone is read and validated first (lengths, shapes
  and offsets against the file's size);
* PyTorch zip files: every entry must be stored uncompressed, as
  ``torch.save`` writes them, so no entry expands beyond the file's size;
* every tensor must be backed by its own data: a view that claims more
  elements than its storage holds (an expanded or overlapping view, 10^12
  elements over 16 bytes) is refused before it is copied.

A file can therefore never make spa-export allocate more than about its own
size while reading it.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from spa_export.safety.errors import (
    CheckpointError,
    SpaFormatError,
    first_line,
    require_file,
    shown,
)


def _zip_problem(p: Path) -> str | None:
    """Why the PyTorch zip file at ``p`` could expand beyond its size, or None."""
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"not a readable zip archive ({shown(err)})"
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        return (f"entry '{shown(packed[0])}' is compressed; torch.save writes checkpoints "
                "uncompressed, and a compressed entry could expand far beyond the file's size")
    claimed = sum(i.file_size for i in infos)
    if claimed > p.stat().st_size:
        return f"its entries claim {claimed} bytes, more than the file's {p.stat().st_size}"
    return None


def _view_problem(t: torch.Tensor) -> str | None:
    """Why ``t`` is not backed by data of its own size (checked before it is copied), or None."""
    if t.numel() == 0:
        return None
    storage = t.untyped_storage().nbytes()
    reach = t.storage_offset() + 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True))
    needed = t.numel() * t.element_size()
    if reach * t.element_size() > storage or needed > storage:
        return (f"claims {t.numel()} elements ({needed} bytes) over {storage} bytes of data "
                "(an expanded or overlapping view); a checkpoint's tensors hold their own data")
    return None


def _read(p: Path) -> object:
    with open(p, "rb") as fh:
        head = fh.read(16)
    is_zip = head[:4] == b"PK\x03\x04"
    is_pickle = head[:1] == b"\x80"
    if not is_zip and not is_pickle:
        from safetensors.torch import load_file

        from spa_export.spa.header import read_header

        try:
            read_header(p)
        except SpaFormatError as err:
            raise CheckpointError(f"cannot read as a safetensors file: {err}") from err
        try:
            return load_file(str(p))
        except Exception as err:
            raise CheckpointError(f"{p}: cannot read as a safetensors file: "
                                  f"{shown(first_line(err), 300)}") from err
    if is_zip:
        problem = _zip_problem(p)
        if problem is not None:
            raise CheckpointError(f"{p}: cannot read as a PyTorch checkpoint: {problem}")
    try:
        with warnings.catch_warnings():  # torch's loader warns on stderr about old or odd contents
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{p}: cannot read as a PyTorch checkpoint: "
                              f"{shown(first_line(err), 300)}") \
            from err


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a base checkpoint (``.safetensors``, or ``.pt``/``.pth`` state dict) without running code."""
    p = Path(path)
    require_file(p, CheckpointError)
    sd = _read(p)
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise CheckpointError(f"{p}: expected a state dict (a mapping of names to tensors)")
    for k, v in sd.items():  # a pickle may hold sparse, quantized or data-less (meta) tensors
        if v.layout != torch.strided or v.is_quantized or v.is_meta:
            kind = "a quantized" if v.is_quantized else "a meta" if v.is_meta else f"a {v.layout}"
            raise CheckpointError(f"{p}: '{shown(k)}' is {kind} tensor; expected dense tensors with data")
        problem = _view_problem(v)
        if problem is not None:
            raise CheckpointError(f"{p}: '{shown(k)}' {problem}")
    return {k: v.detach().to("cpu") for k, v in sd.items()}
