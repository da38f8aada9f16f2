"""A task as a delta on the base: the edge layout's per-task file, and materializing it.

A delta (``<task>/delta.safetensors``, format in ``docs/spa-format.md``, "Edge
packages") holds what one task's pruned network needs beyond the base: the
graph without weights (an ONNX *skeleton*, zlib-compressed), the SPA tensors of the layers it
adapts, the index lists of the channels each layer keeps, the tensors that
exist only for this task (folded constants, overrides, a new head), and, per
weight of the network, how it is made: ``base`` (a base tensor, merged with
the layer's adapter and masks by :mod:`spa_export.runtime.merge_math`, then
sliced to the kept channels) or ``raw`` (stored as is).

:func:`materialize` rebuilds the ``model.onnx`` bytes with numpy and onnx
alone. The build writes a delta only once materializing it has given the
very bytes it verified, so a device that materializes a task gets the
verified file, sha256 for sha256.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spa_export.runtime.merge_math import merge_kept
from spa_export.safety.errors import InputError

FORMAT = "spa-export-delta"
VERSION = 1
META_KEY = "spa_export.delta"
SKELETON = "skeleton"
RECIPES = "recipes"
#: the most bytes a compressed part may inflate to (a skeleton, the recipes): a bomb stops here
MAX_INFLATED = 1 << 30


@dataclass
class Delta:
    """One task's delta: the header (``meta``) and its tensors by name."""

    meta: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def skeleton(self) -> bytes:
        """The ONNX model without weights (stored zlib-compressed)."""
        return inflate(self.tensors[SKELETON].tobytes(), MAX_INFLATED, "the graph skeleton")

    @property
    def recipes(self) -> list[dict]:
        """How each weight is made, in the graph's order (stored as zlib-compressed JSON)."""
        return json.loads(inflate(self.tensors[RECIPES].tobytes(), MAX_INFLATED, "the recipes"))


def deflate(data: bytes) -> np.ndarray:
    """``data`` zlib-compressed (level 9, the same bytes for the same data), as a U8 tensor."""
    return np.frombuffer(zlib.compress(data, 9), dtype=np.uint8)


def inflate(data: bytes, limit: int, what: str) -> bytes:
    """Decompress at most ``limit`` bytes; a truncated or oversized stream is an InputError."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error as err:
        raise InputError(f"{what} does not decompress ({err})") from None
    if d.unconsumed_tail or not d.eof:
        raise InputError(f"{what}: truncated, or larger than {limit} bytes")
    return out


def delta_bytes(delta: Delta) -> bytes:
    """The file's bytes: safetensors, tensors in name order, the header as one JSON metadata entry."""
    from safetensors.numpy import save

    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(delta.tensors.items())}
    return save(tensors, metadata={META_KEY: json.dumps(delta.meta, sort_keys=True, separators=(",", ":"))})


def read_delta(path: str | Path, data: bytes | None = None) -> Delta:
    """Read and check a delta file; any fault is an InputError naming the file."""
    path = Path(path)
    try:
        raw = data if data is not None else path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the delta: {err.strerror or err}") from None
    from safetensors.numpy import load

    try:
        tensors = load(raw)
        meta = json.loads(safetensors_metadata(raw).get(META_KEY, "null"))
    except Exception as err:   # a truncated or tampered file: safetensors' own error types
        raise InputError(f"{path}: not a readable delta file ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path}: not an spa-export delta (no '{META_KEY}' header of format {FORMAT})")
    if meta.get("version") != VERSION:
        raise InputError(f"{path}: delta format version {meta.get('version')!r}; this spa-export reads "
                         f"version {VERSION} (upgrade spa-export, or rebuild the package)")
    missing = [k for k in (SKELETON, RECIPES) if k not in tensors]
    if missing:
        raise InputError(f"{path}: the delta has no {' and no '.join(missing)}")
    return Delta(meta, tensors)


def safetensors_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header."""
    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError("header longer than the file")
    return json.loads(raw[8:8 + n].decode("utf-8")).get("__metadata__") or {}


def materialize(delta: Delta, base: Mapping[str, np.ndarray], *, where: str = "delta") -> bytes:
    """The task's ``model.onnx`` bytes, from its delta and the base's tensors."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load_from_string(delta.skeleton)
        recipes = {r["name"]: r for r in delta.recipes}
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    for init in model.graph.initializer:
        recipe = recipes.get(init.name)
        if recipe is None:
            raise InputError(f"{where}: the skeleton has a weight '{init.name}' that the delta does not describe")
        array = make_weight(recipe, delta.tensors, base, where)
        want = helper.tensor_dtype_to_np_dtype(init.data_type)
        if tuple(array.shape) != tuple(init.dims):
            raise InputError(f"{where}: weight '{init.name}' comes out {list(array.shape)}, the graph wants "
                             f"{list(init.dims)} (a delta for another base?)")
        init.raw_data = np.ascontiguousarray(array.astype(want.newbyteorder("<"), copy=False)).tobytes()
    return model.SerializeToString()


def make_weight(recipe: dict, tensors: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
                where: str) -> np.ndarray:
    """One weight of the network, as its recipe (an entry of the delta's ``recipes``) makes it."""
    if recipe["from"] == "raw":   # stored as it is: zlib-compressed little-endian bytes
        dtype, shape = np.dtype(recipe["dtype"]), tuple(recipe["shape"])
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = inflate(tensors[f"raw/{recipe['name']}"].tobytes(), size, f"{where}: weight '{recipe['name']}'")
        if len(data) != size:
            raise InputError(f"{where}: weight '{recipe['name']}' holds {len(data)} bytes, not {size}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    def source(key: str | None) -> np.ndarray | None:
        if key is None:
            return None
        if f"override/{key}" in tensors:
            return tensors[f"override/{key}"]
        if key not in base:
            raise InputError(f"{where}: the base has no tensor '{key}' (a delta for another base?)")
        return base[key]

    array = source(recipe["key"])
    index = [None if name is None else tensors[f"index/{name}"] for name in recipe["index"]]
    layer = recipe.get("layer")
    if layer is not None:   # a weight or bias of an adapted layer: the merge formula, on the kept channels only
        prefix = f"layer/{layer}/"
        fields = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        weight = recipe["key"] == recipe["weight"]
        w, b = merge_kept(source(recipe["weight"]), source(recipe.get("bias")), fields, out_keep=index[0],
                          in_keep=index[1] if weight and len(index) > 1 else None, groups=recipe["groups"])
        array = w if weight else b
        index = [None, None] if weight else [None]
    for axis, keep in enumerate(index):
        if keep is not None:
            array = np.take(array, keep, axis=axis)
    return array
