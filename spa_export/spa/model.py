"""In-memory form of an SPA file (see ``docs/spa-format.md``).

:class:`LayerSpa` holds what one layer of the base network gets from the file,
:class:`SpaFile` the whole file. Both validate themselves on construction at
the *format* level (dtypes, ranks, shapes that the file alone determines);
checks against a base network live in :mod:`spa_export.stages.compat`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spa_export.safety.errors import SpaFormatError
from spa_export.spa.digest import safetensors_dtype_name

#: Dataclass attribute -> tensor field suffix in the file (``<module>.<suffix>``).
FIELD_SUFFIX: dict[str, str] = {
    "out_mask": "out_mask",
    "in_mask": "in_mask",
    "lora_cols": "adapter.cols",
    "lora_rows": "adapter.rows",
    "pointwise": "adapter",
    "adapter_bias": "adapter_bias",
    "pos_weights": "adapter.pos_weights",
    "proto_cols": "adapter.prototypes.cols",
    "proto_rows": "adapter.prototypes.rows",
    "block_mask": "block_mask",
}
SUFFIX_FIELD: dict[str, str] = {v: k for k, v in FIELD_SUFFIX.items()}
#: Known suffixes, longest first (module names contain dots: match the longest).
SUFFIXES_LONGEST_FIRST: tuple[str, ...] = tuple(sorted(SUFFIX_FIELD, key=len, reverse=True))
OVERRIDE_PREFIX = "override."

MASK_FIELDS = ("out_mask", "in_mask", "block_mask")
FLOAT_FIELDS = (
    "lora_cols",
    "lora_rows",
    "pointwise",
    "adapter_bias",
    "pos_weights",
    "proto_cols",
    "proto_rows",
)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SPLOPA_FIELDS = ("pos_weights", "proto_cols", "proto_rows")


def parse_tensor_name(name: str, path: object = None) -> tuple[str, str]:
    """Split a tensor name into ``("override", key)`` or ``(module, attribute)``.

    ``attribute`` is the :class:`LayerSpa` attribute (``lora_cols``, ...).
    """
    if name.startswith(OVERRIDE_PREFIX):
        key = name[len(OVERRIDE_PREFIX) :]
        if not key:
            raise SpaFormatError("override without a state-dict key", path=path, key=name)
        return "override", key
    for suffix in SUFFIXES_LONGEST_FIRST:
        if name.endswith("." + suffix):
            module = name[: -len(suffix) - 1]
            if module:
                return module, SUFFIX_FIELD[suffix]
    raise SpaFormatError(
        "unknown tensor name: expected '<module>.<field>' with field one of "
        + ", ".join(FIELD_SUFFIX.values())
        + ", or 'override.<state-dict key>'",
        path=path,
        key=name,
    )


def tensor_name(module: str, attribute: str) -> str:
    """The file's tensor name for ``attribute`` of layer ``module``."""
    return f"{module}.{FIELD_SUFFIX[attribute]}"


def _finite(t: torch.Tensor) -> bool:
    if t.numel() == 0:
        return True
    if t.is_complex():
        return bool(torch.isfinite(t).all())
    return bool(torch.isfinite(t.to(torch.float64)).all())


def check_finite(t: torch.Tensor, *, path: object, key: str) -> None:
    """Raise if a float/complex tensor holds NaN or infinity."""
    if (t.is_floating_point() or t.is_complex()) and not _finite(t):
        raise SpaFormatError("holds non-finite values (NaN or infinity)", path=path, key=key)


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def validate_layer(
    name: str, tensors: Mapping[str, torch.Tensor | None], path: object = None
) -> None:
    """Format-level checks of one layer's tensors (keyed by LayerSpa attribute).

    Raises :class:`SpaFormatError` naming the file and tensor.
    """
    if not isinstance(name, str) or not name:
        raise SpaFormatError(f"layer name must be a non-empty string, got {name!r}", path=path)
    if name == "override" or name.startswith(OVERRIDE_PREFIX):
        raise SpaFormatError(f"layer name '{name}' collides with the 'override.' prefix", path=path)
    t = {k: v for k, v in tensors.items() if v is not None}

    def key(attr: str) -> str:
        return tensor_name(name, attr)

    for attr, v in t.items():
        if not isinstance(v, torch.Tensor):
            raise SpaFormatError(
                f"expected a torch.Tensor, got {type(v).__name__}", path=path, key=key(attr)
            )
        if attr in MASK_FIELDS:
            if v.dtype != torch.bool:
                raise SpaFormatError(
                    f"expected dtype BOOL, got {_dtype_name(v.dtype)}", path=path, key=key(attr)
                )
            want = 2 if attr == "block_mask" else 1
            if v.dim() != want:
                raise SpaFormatError(
                    f"expected a {want}-D mask, got shape {_shape(v)}", path=path, key=key(attr)
                )
        else:
            if v.dtype not in FLOAT_DTYPES:
                raise SpaFormatError(
                    f"expected a float dtype (F32, F16, BF16, F64), got {_dtype_name(v.dtype)}",
                    path=path,
                    key=key(attr),
                )
            check_finite(v, path=path, key=key(attr))

    out_kept = int(t["out_mask"].sum()) if "out_mask" in t else None
    in_kept = int(t["in_mask"].sum()) if "in_mask" in t else None

    kinds = []
    if "lora_cols" in t or "lora_rows" in t:
        kinds.append("SPLoRA (adapter.cols/adapter.rows)")
    if "pointwise" in t:
        kinds.append("SPPaRA (adapter)")
    if any(a in t for a in SPLOPA_FIELDS):
        kinds.append("SPLoPA (adapter.pos_weights/adapter.prototypes.*)")
    if len(kinds) > 1:
        raise SpaFormatError(
            f"layer '{name}' has more than one adapter kind: " + " and ".join(kinds), path=path
        )

    def expect(attr: str, shape: list[int | None], what: str) -> None:
        got = _shape(t[attr])
        if len(got) != len(shape) or any(
            s is not None and s != g for s, g in zip(shape, got, strict=True)
        ):
            shown = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise SpaFormatError(
                f"expected shape {shown} ({what}), got {got}", path=path, key=key(attr)
            )

    out_adapter = out_kept  # out size seen by adapter_bias
    if "lora_cols" in t or "lora_rows" in t:
        for attr, other in (("lora_cols", "lora_rows"), ("lora_rows", "lora_cols")):
            if attr not in t:
                raise SpaFormatError(
                    f"'{key(other)}' is present but '{key(attr)}' is missing "
                    "(SPLoRA needs both factors)",
                    path=path,
                    key=key(attr),
                )
        cols, rows = t["lora_cols"], t["lora_rows"]
        if cols.dim() != 2:
            raise SpaFormatError(
                f"expected a 2-D [out_kept, r] tensor, got shape {_shape(cols)}",
                path=path,
                key=key("lora_cols"),
            )
        if rows.dim() != 2:
            raise SpaFormatError(
                f"expected a 2-D [r, in_kept] tensor, got shape {_shape(rows)}",
                path=path,
                key=key("lora_rows"),
            )
        r = cols.shape[1]
        expect("lora_cols", [out_kept, r], "out_kept, r")
        expect("lora_rows", [r, in_kept], f"r = {r} from adapter.cols, in_kept")
        out_adapter = cols.shape[0]
    if "pointwise" in t:
        expect("pointwise", [in_kept, out_kept], "in_kept, out_kept")
        out_adapter = t["pointwise"].shape[1]
    if any(a in t for a in SPLOPA_FIELDS):
        missing = [key(a) for a in SPLOPA_FIELDS if a not in t]
        if missing:
            raise SpaFormatError(
                "SPLoPA needs adapter.pos_weights, adapter.prototypes.cols and "
                "adapter.prototypes.rows together; missing " + ", ".join(f"'{m}'" for m in missing),
                path=path,
                key=key(next(a for a in SPLOPA_FIELDS if a in t)),
            )
        pw = t["pos_weights"]
        if pw.dim() != 3:
            raise SpaFormatError(
                f"expected a 3-D [P, out/p, in/q] tensor, got shape {_shape(pw)}",
                path=path,
                key=key("pos_weights"),
            )
        n_proto = pw.shape[0]
        expect("proto_cols", [n_proto, None, 1], f"P = {n_proto} from adapter.pos_weights, p, 1")
        expect("proto_rows", [n_proto, 1, None], f"P = {n_proto} from adapter.pos_weights, 1, q")
        if "block_mask" in t:
            expect(
                "block_mask", [pw.shape[1], pw.shape[2]], "out/p, in/q as in adapter.pos_weights"
            )
    if "adapter_bias" in t:
        expect("adapter_bias", [out_adapter], "out_kept")


def _dtype_name(dtype: torch.dtype) -> str:
    try:
        return safetensors_dtype_name(dtype)
    except Exception:
        return str(dtype)


def _tensors_equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))


@dataclass(frozen=True, eq=False)
class LayerSpa:
    """What the SPA file holds for one layer (tensors stored compact, see the spec)."""

    name: str
    out_mask: torch.Tensor | None = None
    in_mask: torch.Tensor | None = None
    lora_cols: torch.Tensor | None = None
    lora_rows: torch.Tensor | None = None
    pointwise: torch.Tensor | None = None
    adapter_bias: torch.Tensor | None = None
    pos_weights: torch.Tensor | None = None
    proto_cols: torch.Tensor | None = None
    proto_rows: torch.Tensor | None = None
    block_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        validate_layer(self.name, self.field_tensors())
        for attr in FLOAT_FIELDS:
            v = getattr(self, attr)
            if v is not None and v.dtype != torch.float32:
                object.__setattr__(self, attr, v.to(torch.float32))

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerSpa):
            return NotImplemented
        return self.name == other.name and all(
            _tensors_equal(getattr(self, a), getattr(other, a)) for a in FIELD_SUFFIX
        )

    def field_tensors(self) -> dict[str, torch.Tensor]:
        """Present tensors keyed by attribute name."""
        return {a: getattr(self, a) for a in FIELD_SUFFIX if getattr(self, a) is not None}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Present tensors keyed by their file name (``<name>.<field>``)."""
        return {tensor_name(self.name, a): v for a, v in self.field_tensors().items()}

    @property
    def kind(self) -> str | None:
        """``"splora"``, ``"sppara"``, ``"splopa"`` or ``None`` (no adapter)."""
        if self.lora_cols is not None:
            return "splora"
        if self.pointwise is not None:
            return "sppara"
        if self.pos_weights is not None:
            return "splopa"
        return None

    @property
    def rank(self) -> int | None:
        """The rank ``r`` of an SPLoRA adapter, else ``None``."""
        return int(self.lora_cols.shape[1]) if self.lora_cols is not None else None

    @property
    def block_size(self) -> tuple[int, int] | None:
        """``(p, q)`` of an SPLoPA adapter, else ``None``."""
        if self.proto_cols is None or self.proto_rows is None:
            return None
        return int(self.proto_cols.shape[1]), int(self.proto_rows.shape[2])

    def _kept(self, mask: torch.Tensor | None, size: int, attr: str) -> int:
        if mask is None:
            return int(size)
        if mask.numel() != size:
            raise SpaFormatError(
                f"mask has {mask.numel()} entries, the layer has {size} channels",
                key=tensor_name(self.name, attr),
            )
        return int(mask.sum())

    def out_kept(self, out: int) -> int:
        """Number of kept output channels of a layer with ``out`` outputs."""
        return self._kept(self.out_mask, out, "out_mask")

    def in_kept(self, in_: int) -> int:
        """Number of kept input channels of a layer with ``in_`` inputs."""
        return self._kept(self.in_mask, in_, "in_mask")

    def _index(self, mask: torch.Tensor | None, size: int, attr: str) -> torch.Tensor:
        self._kept(mask, size, attr)
        if mask is None:
            return torch.arange(size, dtype=torch.long)
        return torch.nonzero(mask.cpu(), as_tuple=False).flatten().to(torch.long)

    def kept_out_index(self, out: int) -> torch.Tensor:
        """Indices (int64, ascending) of the kept output channels."""
        return self._index(self.out_mask, out, "out_mask")

    def kept_in_index(self, in_: int) -> torch.Tensor:
        """Indices (int64, ascending) of the kept input channels."""
        return self._index(self.in_mask, in_, "in_mask")


def validate_overrides(overrides: Mapping[str, Any], path: object = None) -> None:
    """Overrides: tensors of any dtype, with non-empty keys, finite if float."""
    for k, v in overrides.items():
        name = OVERRIDE_PREFIX + str(k)
        if not isinstance(k, str) or not k:
            raise SpaFormatError(f"override key must be a non-empty string, got {k!r}", path=path)
        if not isinstance(v, torch.Tensor):
            raise SpaFormatError(
                f"expected a torch.Tensor, got {type(v).__name__}", path=path, key=name
            )
        check_finite(v, path=path, key=name)


@dataclass(frozen=True, eq=False)
class SpaFile:
    """A whole SPA file: metadata, adapted/pruned layers, overrides."""

    metadata: dict[str, str]
    layers: dict[str, LayerSpa]
    overrides: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.metadata, Mapping)
            or not isinstance(self.layers, Mapping)
            or not isinstance(self.overrides, Mapping)
        ):
            raise SpaFormatError("metadata, layers and overrides must be mappings", path=self.path)
        for k, v in self.metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise SpaFormatError(
                    f"metadata must map strings to strings, got {k!r}: {v!r}", path=self.path
                )
        for k, layer in self.layers.items():
            if not isinstance(layer, LayerSpa):
                raise SpaFormatError(
                    f"layers['{k}'] is a {type(layer).__name__}, expected LayerSpa", path=self.path
                )
            if layer.name != k:
                raise SpaFormatError(
                    f"layers are keyed by module name: key '{k}' holds layer '{layer.name}'",
                    path=self.path,
                )
        validate_overrides(self.overrides, self.path)

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        """Same metadata, layers and overrides (``path`` is not compared)."""
        if not isinstance(other, SpaFile):
            return NotImplemented
        return (
            self.metadata == other.metadata
            and self.layers.keys() == other.layers.keys()
            and all(self.layers[k] == other.layers[k] for k in self.layers)
            and self.overrides.keys() == other.overrides.keys()
            and all(_tensors_equal(self.overrides[k], other.overrides[k]) for k in self.overrides)
        )

    @property
    def task(self) -> str | None:
        return self.metadata.get("spa.task")

    @property
    def arch(self) -> str | None:
        return self.metadata.get("spa.arch")

    @property
    def base_digest(self) -> str | None:
        return self.metadata.get("spa.base_digest")

    @property
    def description(self) -> str | None:
        return self.metadata.get("spa.description")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat safetensors names -> tensors, exactly as the file stores them."""
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers.values():
            out.update(layer.tensors())
        for k, v in self.overrides.items():
            out[OVERRIDE_PREFIX + k] = v
        return out

    def learned_parameter_count(self) -> dict[str, int]:
        """The paper's learned-parameter count of this task.

        ``adapter``: adapter weight elements; ``adapter_bias``; ``overrides``:
        override elements; ``mask_bits``: mask entries; ``total``: the sum of the
        first three plus ``ceil(mask_bits / 32)`` (a mask bit is 1/32 parameter).
        """
        adapter = bias = bits = 0
        for layer in self.layers.values():
            for attr in (
                "lora_cols",
                "lora_rows",
                "pointwise",
                "pos_weights",
                "proto_cols",
                "proto_rows",
            ):
                v = getattr(layer, attr)
                if v is not None:
                    adapter += v.numel()
            if layer.adapter_bias is not None:
                bias += layer.adapter_bias.numel()
            for attr in MASK_FIELDS:
                v = getattr(layer, attr)
                if v is not None:
                    bits += v.numel()
        overrides = sum(v.numel() for v in self.overrides.values())
        return {
            "adapter": adapter,
            "adapter_bias": bias,
            "overrides": overrides,
            "mask_bits": bits,
            "total": adapter + bias + overrides + math.ceil(bits / 32),
        }


__all__ = [
    "FIELD_SUFFIX",
    "LayerSpa",
    "SpaFile",
    "parse_tensor_name",
    "tensor_name",
    "validate_layer",
    "validate_overrides",
]
