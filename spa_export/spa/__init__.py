"""The SPA file format: data model, reader, writer and base digest."""

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
