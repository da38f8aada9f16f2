"""Build and write SPA files (exactly the spec's names and metadata, atomically)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save as _st_save

from spa_export.safety.errors import InputError, SpaFormatError
from spa_export.spa.model import OVERRIDE_PREFIX, LayerSpa, SpaFile, parse_tensor_name, tensor_name
from spa_export.spa.reader import SPA_FORMAT, SPA_VERSION, check_metadata


def make_spa(
    layers: Mapping[str, LayerSpa] | Iterable[LayerSpa],
    overrides: Mapping[str, torch.Tensor] | None = None,
    *,
    task: str | None = None,
    arch: str | None = None,
    base_digest: str | None = None,
    description: str | None = None,
) -> SpaFile:
    """An :class:`SpaFile` with ``spa.format``/``spa.version`` and the given metadata set."""
    if isinstance(layers, Mapping):
        by_name = dict(layers)
    else:
        by_name = {}
        for layer in layers:
            if not isinstance(layer, LayerSpa):
                raise SpaFormatError(f"expected LayerSpa objects, got {type(layer).__name__}")
            if layer.name in by_name:
                raise SpaFormatError(f"layer '{layer.name}' given twice")
            by_name[layer.name] = layer
    metadata = {"spa.format": SPA_FORMAT, "spa.version": SPA_VERSION}
    for key, value in (
        ("spa.task", task),
        ("spa.arch", arch),
        ("spa.base_digest", base_digest),
        ("spa.description", description),
    ):
        if value is not None:
            if not isinstance(value, str):
                raise SpaFormatError(f"{key} must be a string, got {type(value).__name__}")
            metadata[key] = value
    check_metadata(metadata)
    return SpaFile(metadata=metadata, layers=by_name, overrides=dict(overrides or {}))


def _file_tensors(spa: SpaFile) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for layer in spa.layers.values():
        for attr, t in layer.field_tensors().items():
            name = tensor_name(layer.name, attr)
            if parse_tensor_name(name) != (layer.name, attr):
                raise SpaFormatError(
                    f"tensor name would not read back as field {attr} of layer '{layer.name}'",
                    key=name,
                )
            out[name] = t
    for key, t in spa.overrides.items():
        out[OVERRIDE_PREFIX + key] = t
    # own, contiguous CPU memory: safetensors refuses tensors that share storage
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def spa_bytes(spa: SpaFile) -> bytes:
    """The bytes :func:`write_spa` writes for ``spa``: the same SPA, the same bytes, in any process."""
    metadata = dict(spa.metadata)
    metadata.setdefault("spa.format", SPA_FORMAT)
    metadata.setdefault("spa.version", SPA_VERSION)
    check_metadata(metadata, spa.path)
    return canonical_safetensors(_st_save(_file_tensors(spa), metadata=metadata))


def canonical_safetensors(data: bytes) -> bytes:
    """Safetensors bytes with the header's keys in sorted order.

    The safetensors library writes ``__metadata__`` from a hash map whose order
    changes from one process to the next, so the same tensors and metadata
    give different bytes (and file digests) on every run. Data offsets are
    relative to the data section, so re-serialising the header sorted (and
    padded to 8 bytes, as the format requires) leaves the data untouched.
    """
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def write_spa(spa: SpaFile, path: str | os.PathLike[str]) -> Path:
    """Write ``spa`` to ``path`` atomically (temp file in the same directory, fsync, rename).

    The caller decides whether ``path`` may be replaced
    (:func:`spa_export.safety.ownership.check_out_file`).
    """
    from spa_export.safety.publish import atomic_write_bytes

    target = Path(path)
    data = spa_bytes(spa)
    try:
        atomic_write_bytes(target, data)
    except OSError as e:
        raise InputError(f"{target}: cannot write: {e.strerror or e}") from e
    return target
