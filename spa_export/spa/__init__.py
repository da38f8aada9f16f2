"""The SPA file format alone: data model, reader, writer and base digest (docs/spa-format.md).

What it holds: ``model`` (an SPA file in memory: ``SpaFile``, ``LayerSpa``), ``header`` (the
safetensors header, parsed strictly), ``reader`` and ``writer`` (canonical bytes), ``digest`` (the
base checkpoint's digest an SPA names) and ``projections`` (an attention's q/k/v as SPA layers).

May import: spa_export.safety
"""

from __future__ import annotations

from spa_export.spa.digest import file_sha256, safetensors_dtype_name, state_dict_digest
from spa_export.spa.model import LayerSpa, SpaFile
from spa_export.spa.reader import parse_spa_bytes, read_spa
from spa_export.spa.writer import make_spa, spa_bytes, write_spa

__all__ = [
    "LayerSpa",
    "SpaFile",
    "file_sha256",
    "make_spa",
    "parse_spa_bytes",
    "read_spa",
    "safetensors_dtype_name",
    "spa_bytes",
    "state_dict_digest",
    "write_spa",
]
