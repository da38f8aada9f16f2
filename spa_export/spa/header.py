"""Safe pre-parse of a safetensors header.

Everything a hostile file could use against the safetensors loader (absurd
sizes, overlapping or out-of-range offsets, odd JSON) is refused here, with a
message naming the file and the tensor, before the bytes go any further.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spa_export.safety.errors import SpaFormatError, shown

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_NDIM = 32
MAX_DIM = 1 << 48

#: safetensors dtype name -> bytes per element (the dtypes safetensors.torch loads).
DTYPE_ITEMSIZE: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2": 1,
    "F8_E5M2FNUZ": 1,
    "C64": 8,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header: dtype name, shape and byte range in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Header:
    """A validated safetensors header."""

    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int  # offset of the data section in the file
    data_len: int


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key '{shown(k)}' in header JSON")
        out[k] = v
    return out


def header_length(prefix: bytes, total: int, path: object = None) -> int:
    """The header length ``n`` from a file's first 8 bytes, checked against the file's ``total`` size."""
    if total < 8 or len(prefix) < 8:
        raise SpaFormatError(
            f"not a safetensors file: {total} bytes, too short for the 8-byte header length",
            path=path,
        )
    (n,) = struct.unpack("<Q", prefix[:8])
    if n < 2:
        raise SpaFormatError(f"not a safetensors file: header length {n} is too small", path=path)
    if n > MAX_HEADER_BYTES:
        raise SpaFormatError(
            f"not a safetensors file: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes",
            path=path,
        )
    if n > total - 8:
        raise SpaFormatError(
            f"truncated or not a safetensors file: header length {n} exceeds the "
            f"{total - 8} bytes after the length field",
            path=path,
        )
    return n


def read_header(path: Path) -> Header:
    """Validate the header of the safetensors file at ``path``, reading the header alone.

    Sizes, shapes and offsets are checked against the file's real size, so a
    file whose header claims more than it holds is refused before a byte of
    its data is read.
    """
    total = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = header_length(prefix, total, path)
        prefix += f.read(n)
    return parse_header(prefix, path, total=total)


def parse_header(data: bytes, path: object = None, *, total: int | None = None) -> Header:
    """Validate and decode the header of safetensors bytes ``data``.

    ``data`` is the whole file, or its first bytes up to the end of the header
    with ``total`` the whole file's size.
    """
    total = len(data) if total is None else total
    n = header_length(data, total, path)
    if len(data) < 8 + n:
        raise SpaFormatError("truncated header", path=path)
    try:
        text = data[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpaFormatError(
            f"not a safetensors file: header is not UTF-8 ({e.reason})", path=path
        ) from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        raise SpaFormatError(
            f"not a safetensors file: header is not valid JSON ({shown(e)})", path=path
        ) from None
    if not isinstance(obj, dict):
        raise SpaFormatError(
            f"not a safetensors file: header is a JSON {type(obj).__name__}, expected an object",
            path=path,
        )
    data_start = 8 + n
    data_len = total - data_start

    meta_raw = obj.pop("__metadata__", {})
    if not isinstance(meta_raw, dict):
        raise SpaFormatError(
            f"__metadata__ must be an object of strings, got a JSON {type(meta_raw).__name__}",
            path=path,
        )
    for k, v in meta_raw.items():
        if not isinstance(v, str):
            raise SpaFormatError(
                f"__metadata__ value of '{shown(k)}' must be a string, got {shown(json.dumps(v), 60)}",
                path=path,
            )
    metadata: dict[str, str] = dict(meta_raw)

    entries: dict[str, TensorEntry] = {}
    for name, info in obj.items():
        entries[name] = _entry(name, info, data_len, path)

    spans = sorted(entries.values(), key=lambda e: (e.begin, e.end))
    pos = 0
    prev: TensorEntry | None = None
    for cur in spans:
        if prev is not None and cur.begin < pos:
            raise SpaFormatError(
                f"data_offsets [{cur.begin}, {cur.end}] overlap those of tensor "
                f"'{prev.name}' [{prev.begin}, {prev.end}]",
                path=path,
                key=cur.name,
            )
        if cur.begin > pos:
            raise SpaFormatError(
                f"data_offsets [{cur.begin}, {cur.end}] leave the bytes [{pos}, {cur.begin}) "
                "of the data section unused (safetensors data must be contiguous)",
                path=path,
                key=cur.name,
            )
        pos, prev = cur.end, cur
    if pos != data_len:
        raise SpaFormatError(
            f"the tensors cover {pos} bytes of the data section, which has {data_len} bytes "
            "(trailing bytes or truncated file)",
            path=path,
        )
    return Header(metadata=metadata, tensors=entries, data_start=data_start, data_len=data_len)


def _entry(name: str, info: Any, data_len: int, path: object) -> TensorEntry:
    if not name:
        raise SpaFormatError("empty tensor name in header", path=path)
    if not isinstance(info, dict):
        raise SpaFormatError(
            f"header entry must be an object with dtype, shape, data_offsets; got a JSON {type(info).__name__}",
            path=path,
            key=name,
        )
    for field in ("dtype", "shape", "data_offsets"):
        if field not in info:
            raise SpaFormatError(f"header entry has no '{field}'", path=path, key=name)
    dtype = info["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_ITEMSIZE:
        raise SpaFormatError(
            f"unknown dtype {json.dumps(dtype)[:40]} (known: {', '.join(DTYPE_ITEMSIZE)})",
            path=path,
            key=name,
        )
    shape = info["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SpaFormatError(
            f"shape must be a list of non-negative integers, got {json.dumps(shape)[:80]}",
            path=path,
            key=name,
        )
    if len(shape) > MAX_NDIM or any(d > MAX_DIM for d in shape):
        raise SpaFormatError(
            f"absurd shape {json.dumps(shape)[:80]} (at most {MAX_NDIM} dimensions of at most {MAX_DIM})",
            path=path,
            key=name,
        )
    offsets = info["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise SpaFormatError(
            f"data_offsets must be [begin, end] integers, got {json.dumps(offsets)[:80]}",
            path=path,
            key=name,
        )
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise SpaFormatError(
            f"data_offsets [{begin}, {end}] out of range: need 0 <= begin <= end <= {data_len} "
            "(the size of the data section)",
            path=path,
            key=name,
        )
    entry = TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)
    nbytes = entry.numel * DTYPE_ITEMSIZE[dtype]
    if nbytes != end - begin:
        raise SpaFormatError(
            f"shape {list(shape)} of dtype {dtype} needs {nbytes} bytes, "
            f"data_offsets [{begin}, {end}] give {end - begin}",
            path=path,
            key=name,
        )
    return entry
