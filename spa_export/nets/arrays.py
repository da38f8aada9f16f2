"""User arrays: ``.npy`` inputs to verify on and ``.npz`` evaluation sets, read without trusting them.

The ``.npy`` header is read and checked first (dtype, shape, and that the file
really holds that many bytes), so a file claiming a huge array is refused
before anything is allocated, and nothing is ever unpickled. Every problem is
an :class:`~spa_export.safety.errors.InputError` that names the file and says what
is wrong with the *input* (not with the network it was meant for).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from spa_export.runtime.inputs import InputSpec
from spa_export.safety.errors import InputError, require_file, shown

#: The largest array read (elements): above it, the memory check of the build decides anyway.
MAX_ELEMENTS = 1 << 31


def _numeric(dtype: np.dtype, where: str) -> None:
    if dtype.fields is not None:
        raise InputError(f"{where}: a structured array (fields {', '.join(map(shown, dtype.names or ()))}); "
                         "expected a plain numeric array")
    if dtype.kind not in "biuf":
        kinds = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers",
                 "M": "dates", "m": "time spans", "V": "raw bytes"}
        raise InputError(f"{where}: holds {kinds.get(dtype.kind, dtype.str)}; expected a numeric array")


def _header(fh: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a ``.npy`` header (a literal, never code)."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(fh)
        raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, SyntaxError) as err:
        raise InputError(f"{where}: not a .npy array ({shown(err)})") from None


def _payload(fh: BinaryIO, header: tuple[tuple[int, ...], bool, np.dtype], remaining: int,
             where: str) -> np.ndarray:
    """The array's data, once the header's claim is checked against the ``remaining`` bytes."""
    shape, fortran, dtype = header
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > MAX_ELEMENTS:
        raise InputError(f"{where}: claims {count} elements, more than the {MAX_ELEMENTS} an input may have")
    needed = count * dtype.itemsize
    if needed > remaining:
        raise InputError(f"{where}: claims shape {list(shape)} of {dtype} ({needed} bytes), "
                         f"but the file holds {remaining} bytes of data")
    data = fh.read(needed)
    if len(data) != needed:
        raise InputError(f"{where}: truncated: {len(data)} of {needed} bytes")
    arr = np.frombuffer(data, dtype=dtype)
    return (arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)).copy()


def _numeric_array(fh: BinaryIO, total: int, where: str) -> np.ndarray:
    header = _header(fh, where)
    _numeric(header[2], where)
    return _payload(fh, header, total - fh.tell(), where)


def read_npy(path: Path) -> np.ndarray:
    """The numeric array in the ``.npy`` file at ``path`` (never unpickled)."""
    require_file(path)
    if zipfile.is_zipfile(path):
        raise InputError(f"{path}: an .npz archive, not a .npy array: save one array per file "
                         "with numpy.save")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
            if head != b"\x93NUMPY":
                raise InputError(f"{path}: not a .npy array (it does not start with numpy's magic "
                                 "bytes); save it with numpy.save")
            fh.seek(0)
            arr = _numeric_array(fh, size, str(path))
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    return arr


def finite_float32(arr: np.ndarray, where: str) -> np.ndarray:
    """``arr`` as float32, refusing NaN, infinity and values float32 cannot hold."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = [int(i) for i in np.unravel_index(int(np.argmax(bad)), out.shape)]
        value = arr[tuple(idx)]
        raise InputError(f"{where}: the input holds a value float32 cannot use ({value}) at index {idx}; "
                         "inputs must be finite")
    return out


def read_inputs(path: Path, inputs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """An ``--input`` file for every input of the network (InputSpecs), by input name.

    One input: a ``.npy`` array (one sample or a batch). Several: an ``.npz``
    archive with one array per input name (``numpy.savez(path, ids=..., mask=...)``),
    every one with the same batch. Integer inputs must hold integers in their range.
    """
    arrays = read_npz(path, [s.name for s in inputs]) if zipfile.is_zipfile(path) else None
    if len(inputs) == 1 and not arrays:
        spec = inputs[0]   # (read_npy says what an archive without the input's array is)
        return {spec.name: _checked(read_npy(path), spec, str(path))}
    if arrays is None:
        raise InputError(f"{path}: the network takes {len(inputs)} inputs ({', '.join(s.name for s in inputs)}): "
                         "give an .npz archive with one array per input (numpy.savez)")
    missing = [s.name for s in inputs if s.name not in arrays]
    if missing:
        raise InputError(f"{path}: no array for input(s) {', '.join(missing)} (the archive's arrays are named "
                         "by input)")
    out = {s.name: _checked(arrays[s.name], s, f"{path}: array '{s.name}'") for s in inputs}
    batches = {len(a) for a in out.values()}
    if len(batches) != 1:
        raise InputError(f"{path}: the inputs' batch sizes differ ({sorted(batches)})")
    return out


def check_input(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """``arr`` as samples of input ``spec`` ([N, ...] or one sample): shape, dtype, finiteness and range checked."""
    return _checked(arr, spec, where)


def _checked(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    shape = spec.shape
    if arr.ndim == len(shape) - 1:
        arr = arr[None]
    if arr.ndim != len(shape) or tuple(arr.shape[1:]) != tuple(shape[1:]) or arr.shape[0] < 1:
        raise InputError(f"{where}: shape {list(arr.shape)} does not match input '{spec.name}' "
                         f"[N, {', '.join(map(str, shape[1:]))}]")
    if spec.is_float:
        return finite_float32(arr, where)
    if spec.dtype == "bool":
        if arr.dtype.kind != "b":
            raise InputError(f"{where}: input '{spec.name}' is bool, the array {arr.dtype}")
        return arr
    if arr.dtype.kind not in "iub":
        raise InputError(f"{where}: input '{spec.name}' is {spec.dtype}, the array {arr.dtype}")
    out_of_range = (arr < spec.low) | (arr >= spec.high)
    if out_of_range.any():
        idx = [int(i) for i in np.unravel_index(int(np.argmax(out_of_range)), arr.shape)]
        raise InputError(f"{where}: value {arr[tuple(idx)]} at index {idx} is outside input '{spec.name}''s "
                         f"range [{spec.low}, {spec.high})")
    return arr.astype(spec.numpy_dtype)


def read_npz(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Those of the arrays ``names`` that an ``.npz`` archive holds: numeric ones, or 0-d strings.

    Never unpickled; each member's size is the archive's real (uncompressed)
    size, bounded before it is read.
    """
    require_file(path)
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not an .npz archive (save it with numpy.savez)")
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            for name in names:
                info = infos.get(f"{name}.npy")
                if info is None:
                    continue
                where = f"{path}: array '{name}'"
                if info.file_size > MAX_ELEMENTS * 8:
                    raise InputError(f"{where}: claims {info.file_size} bytes")
                with z.open(info) as member:
                    buf = io.BytesIO(member.read(info.file_size + 1))
                total = len(buf.getbuffer())
                shape, fortran, dtype = _header(buf, where)
                if dtype.kind == "U" and shape == ():  # a label such as the data set's name
                    out[name] = _payload(buf, (shape, fortran, dtype), total - buf.tell(), where)
                    continue
                _numeric(dtype, where)
                out[name] = _payload(buf, (shape, fortran, dtype), total - buf.tell(), where)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: cannot read the archive ({shown(err)})") from None
    return out
