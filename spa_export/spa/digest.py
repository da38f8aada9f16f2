"""Base digest (spec section "Base digest") and file hashing."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping

import torch

from spa_export.safety.errors import InputError

#: torch dtype -> safetensors dtype name (only dtypes torch has in this build).
_DTYPE_NAMES: dict[torch.dtype, str] = {}
for _attr, _name in (
    ("float64", "F64"),
    ("float32", "F32"),
    ("float16", "F16"),
    ("bfloat16", "BF16"),
    ("int64", "I64"),
    ("int32", "I32"),
    ("int16", "I16"),
    ("int8", "I8"),
    ("uint8", "U8"),
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
    ("bool", "BOOL"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2", "F8_E5M2"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
    ("float8_e8m0fnu", "F8_E8M0"),
    ("complex64", "C64"),
):
    _dt = getattr(torch, _attr, None)
    if isinstance(_dt, torch.dtype):
        _DTYPE_NAMES[_dt] = _name

_CHUNK = 1 << 20


def safetensors_dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``F32``, ``F16``, ``BF16``, ``I64``, ``BOOL``...)."""
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        raise InputError(f"dtype {dtype} has no safetensors name") from None


def _le_bytes(t: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of ``t`` in C order, without copying where possible."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    itemsize = flat.element_size()
    raw = flat.view(torch.uint8).numpy()
    if sys.byteorder == "big" and itemsize > 1:
        raw = raw.reshape(-1, itemsize)[:, ::-1].copy().reshape(-1)
    return memoryview(raw)


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` digest of a state dict, exactly as the spec defines it.

    Keys in code point order; per key the line ``key|DTYPE|d0,d1,...\\n`` in
    UTF-8 then the tensor's raw little-endian bytes in C order.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            raise InputError(f"state dict entry '{key}' is a {type(t).__name__}, not a tensor")
        shape = ",".join(str(int(d)) for d in t.shape)
        h.update(f"{key}|{safetensors_dtype_name(t.dtype)}|{shape}\n".encode())
        h.update(_le_bytes(t))
    return "sha256:" + h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
