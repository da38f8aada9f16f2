"""Read and validate SPA files (format level; see :mod:`spa_export.stages.compat` for base checks)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load as _st_load

from spa_export.safety.errors import SpaFormatError, shown
from spa_export.spa.header import parse_header, read_header
from spa_export.spa.model import (
    OVERRIDE_PREFIX,
    LayerSpa,
    SpaFile,
    parse_tensor_name,
    validate_layer,
    validate_overrides,
)

MAX_FILE_BYTES = 4 * 1024**3
SPA_FORMAT = "spa"
SPA_VERSION = "1"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def read_spa(path: str | os.PathLike[str]) -> SpaFile:
    """Read, validate and return the SPA file at ``path``.

    Raises :class:`SpaFormatError` (naming the file and tensor) for anything
    that does not follow the format.
    """
    p = Path(path)
    try:
        if not p.exists():
            raise SpaFormatError("no such file", path=p)
        if p.is_dir():
            raise SpaFormatError("is a directory, expected an SPA file", path=p)
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpaFormatError(
                f"file is {size} bytes, more than the {MAX_FILE_BYTES} bytes an SPA file may have",
                path=p,
            )
        if size == 0:
            raise SpaFormatError("empty file, not a safetensors file", path=p)
        # The header alone first: a file whose header is nonsense, or claims more data than the
        # file holds, is refused before its data is read into memory.
        header = read_header(p)
        check_metadata(header.metadata, p)
        with open(p, "rb") as f:
            data = f.read(size + 1)
    except OSError as e:
        raise SpaFormatError(f"cannot read: {e.strerror or e}", path=p) from None
    if len(data) != size:
        raise SpaFormatError("the file changed while it was read", path=p)
    return parse_spa_bytes(data, path=p)


def check_metadata(metadata: dict[str, str], path: object = None) -> None:
    """Refuse metadata whose spa.format/spa.version this reader does not know."""
    fmt = metadata.get("spa.format")
    ver = metadata.get("spa.version")
    if fmt != SPA_FORMAT:
        found = "no spa.format" if fmt is None else f"spa.format '{shown(fmt, 60)}'"
        raise SpaFormatError(
            f"not an SPA file: metadata has {found}, expected spa.format '{SPA_FORMAT}'",
            path=path,
        )
    if ver != SPA_VERSION:
        found = "no spa.version" if ver is None else f"spa.version '{shown(ver, 60)}'"
        raise SpaFormatError(
            f"unsupported SPA version: metadata has {found}, this reader knows "
            f"spa.version '{SPA_VERSION}'",
            path=path,
        )
    digest = metadata.get("spa.base_digest")
    if digest is not None and not _DIGEST_RE.fullmatch(digest):
        raise SpaFormatError(
            f"spa.base_digest '{shown(digest, 80)}' is not 'sha256:' followed by 64 lowercase hex digits",
            path=path,
        )


def parse_spa_bytes(data: bytes, path: object = None) -> SpaFile:
    """Parse and validate the bytes of an SPA file (``path`` only names it in errors)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SpaFormatError(f"expected bytes, got {type(data).__name__}", path=path)
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > MAX_FILE_BYTES:
        raise SpaFormatError(
            f"{len(data)} bytes, more than the {MAX_FILE_BYTES} bytes an SPA file may have",
            path=path,
        )
    if not data:
        raise SpaFormatError("empty file, not a safetensors file", path=path)
    header = parse_header(data, path)
    check_metadata(header.metadata, path)

    # Classify names before touching the data: unknown fields fail early.
    layer_fields: dict[str, dict[str, str]] = {}  # module -> attribute -> tensor name
    override_names: dict[str, str] = {}  # key -> tensor name
    for name in header.tensors:
        module, attr = parse_tensor_name(name, path)
        if name.startswith(OVERRIDE_PREFIX):
            override_names[attr] = name
        else:
            layer_fields.setdefault(module, {})[attr] = name

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = _st_load(data)
    except Exception as e:  # the loader's errors vary by version; all mean a bad file
        raise SpaFormatError(f"safetensors could not load the file: {e}", path=path) from None
    if set(raw) != set(header.tensors):
        raise SpaFormatError("safetensors returned other tensors than the header lists", path=path)

    tensors: dict[str, torch.Tensor] = {}
    for name, t in raw.items():
        entry = header.tensors[name]
        if tuple(t.shape) != entry.shape:
            raise SpaFormatError(
                f"loaded shape {list(t.shape)} differs from header shape {list(entry.shape)}",
                path=path,
                key=name,
            )
        # check the raw bytes: copying a bool tensor would silently normalize them
        if t.dtype == torch.bool and t.numel() and bool((t.view(torch.uint8) > 1).any()):
            raise SpaFormatError("BOOL tensor holds bytes other than 0 and 1", path=path, key=name)
        t = t.clone()  # own, writable memory (the loader's may alias the input bytes)
        tensors[name] = t

    layers: dict[str, LayerSpa] = {}
    for module in sorted(layer_fields):
        fields = {attr: tensors[name] for attr, name in layer_fields[module].items()}
        validate_layer(module, fields, path)
        try:
            layers[module] = LayerSpa(name=module, **fields)
        except SpaFormatError as e:  # not expected after validate_layer; keep the path anyway
            raise SpaFormatError(str(e), path=path) from None

    overrides = {key: tensors[name] for key, name in sorted(override_names.items())}
    validate_overrides(overrides, path)
    p = Path(path) if isinstance(path, (str, os.PathLike)) else None
    return SpaFile(metadata=dict(header.metadata), layers=layers, overrides=overrides, path=p)
