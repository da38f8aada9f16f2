"""Malformed SPA files: each is refused with a SpaFormatError naming the file and key."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from spa_export.safety.errors import SpaFormatError
from spa_export.spa import parse_spa_bytes, read_spa

META = {"spa.format": "spa", "spa.version": "1"}
L = "layer1.0.conv1"


def raw(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    """Hand-made safetensors bytes: length, JSON header, data."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data


def good(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A valid safetensors container (bypassing the SPA writer's checks)."""
    return st_save(tensors, metadata=META if metadata is None else metadata)


def valid_file() -> bytes:
    return good(
        {
            f"{L}.out_mask": torch.tensor([True, False, True, True]),
            f"{L}.adapter.cols": torch.ones(3, 2),
            f"{L}.adapter.rows": torch.ones(2, 5),
        }
    )


def f32_entry(shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


def meta_header(**tensors: object) -> dict[str, object]:
    return {"__metadata__": META, **tensors}


def _nan_cols() -> dict[str, torch.Tensor]:
    cols = torch.ones(3, 2)
    cols[1, 1] = float("nan")
    return {f"{L}.adapter.cols": cols, f"{L}.adapter.rows": torch.ones(2, 5)}


# (id, bytes, regex the message must match after "<path>: ")
CASES: list[tuple[str, bytes, str]] = [
    (
        "not_safetensors",
        b"PK\x03\x04 this is a zip, not safetensors",
        r"not a safetensors file: header length \d+ exceeds the limit",
    ),
    ("empty", b"", r"empty file"),
    ("too_short", b"\x05\x00\x00", r"3 bytes, too short"),
    ("truncated", valid_file()[:-7], r"tensor '[^']+': data_offsets \[\d+, \d+\] out of range"),
    (
        "header_len_past_end",
        raw({"a": 1}, length=500),
        r"header length 500 exceeds the 8 bytes after",
    ),
    (
        "header_len_huge",
        raw(b"{}", length=2**40),
        r"header length 1099511627776 exceeds the limit of 104857600",
    ),
    ("header_len_one", raw(b"{}", length=1), r"header length 1 is too small"),
    ("header_not_utf8", raw(b'{"\xff\xfe": 1}'), r"header is not UTF-8"),
    ("header_not_json", raw(b"{this is not json}"), r"header is not valid JSON"),
    ("header_not_object", raw([1, 2, 3]), r"header is a JSON list, expected an object"),
    (
        "header_duplicate_key",
        raw(b'{"__metadata__": {}, "__metadata__": {}}'),
        r"duplicate key '__metadata__'",
    ),
    (
        "entry_not_object",
        raw(meta_header(**{f"{L}.out_mask": [1, 2]})),
        rf"tensor '{L}.out_mask': header entry must be an object",
    ),
    (
        "entry_no_offsets",
        raw(meta_header(x={"dtype": "F32", "shape": [1]}), b"\0" * 4),
        r"tensor 'x': header entry has no 'data_offsets'",
    ),
    (
        "bad_dtype",
        raw(meta_header(x={"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}), b"\0" * 4),
        r"tensor 'x': unknown dtype \"F33\"",
    ),
    (
        "negative_dim",
        raw(meta_header(x=f32_entry([-1], 0, 4)), b"\0" * 4),
        r"tensor 'x': shape must be a list of non-negative integers, got \[-1\]",
    ),
    (
        "bool_dim",
        raw(meta_header(x=f32_entry([True], 0, 4)), b"\0" * 4),
        r"tensor 'x': shape must be a list of non-negative integers",
    ),
    (
        "absurd_shape",
        raw(meta_header(x=f32_entry([2**40, 2**40], 0, 16)), b"\0" * 16),
        r"tensor 'x': shape \[1099511627776, 1099511627776\] of dtype F32 needs 4835703278458516698824704 bytes, data_offsets \[0, 16\] give 16",
    ),
    (
        "too_many_dims",
        raw(meta_header(x=f32_entry([1] * 40, 0, 4)), b"\0" * 4),
        r"tensor 'x': absurd shape",
    ),
    (
        "offsets_out_of_range",
        raw(meta_header(x=f32_entry([4], 0, 16)), b"\0" * 8),
        r"tensor 'x': data_offsets \[0, 16\] out of range: need 0 <= begin <= end <= 8",
    ),
    (
        "offsets_reversed",
        raw(meta_header(x=f32_entry([0], 4, 0)), b"\0" * 4),
        r"tensor 'x': data_offsets \[4, 0\] out of range",
    ),
    (
        "offsets_not_ints",
        raw(meta_header(x={"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}), b"\0" * 4),
        r"tensor 'x': data_offsets must be \[begin, end\] integers",
    ),
    (
        "offsets_overlap",
        raw(meta_header(a=f32_entry([2], 0, 8), b=f32_entry([2], 4, 12)), b"\0" * 12),
        r"tensor 'b': data_offsets \[4, 12\] overlap those of tensor 'a' \[0, 8\]",
    ),
    (
        "offsets_gap",
        raw(meta_header(a=f32_entry([1], 0, 4), b=f32_entry([1], 8, 12)), b"\0" * 12),
        r"tensor 'b': data_offsets \[8, 12\] leave the bytes \[4, 8\) of the data section unused",
    ),
    (
        "trailing_bytes",
        raw(meta_header(a=f32_entry([1], 0, 4)), b"\0" * 9),
        r"the tensors cover 4 bytes of the data section, which has 9 bytes",
    ),
    (
        "metadata_not_object",
        raw({"__metadata__": ["spa"]}),
        r"__metadata__ must be an object of strings, got a JSON list",
    ),
    (
        "metadata_value_not_str",
        raw({"__metadata__": {"spa.format": "spa", "spa.version": 1}}),
        r"__metadata__ value of 'spa.version' must be a string, got 1",
    ),
    (
        "no_metadata",
        raw({}),
        r"not an SPA file: metadata has no spa.format, expected spa.format 'spa'",
    ),
    (
        "missing_format",
        good({}, {"spa.version": "1"}),
        r"not an SPA file: metadata has no spa.format, expected spa.format 'spa'",
    ),
    (
        "wrong_format",
        good({}, {"spa.format": "onnx", "spa.version": "1"}),
        r"not an SPA file: metadata has spa.format 'onnx', expected spa.format 'spa'",
    ),
    (
        "unknown_version",
        good({}, {"spa.format": "spa", "spa.version": "2"}),
        r"unsupported SPA version: metadata has spa.version '2', this reader knows spa.version '1'",
    ),
    (
        "missing_version",
        good({}, {"spa.format": "spa"}),
        r"metadata has no spa.version, this reader knows spa.version '1'",
    ),
    (
        "bad_digest",
        good({}, {**META, "spa.base_digest": "md5:abc"}),
        r"spa.base_digest 'md5:abc' is not 'sha256:' followed by 64",
    ),
    (
        "mask_wrong_dtype",
        good({f"{L}.out_mask": torch.ones(4)}),
        rf"tensor '{L}.out_mask': expected dtype BOOL, got F32$",
    ),
    (
        "mask_2d",
        good({f"{L}.in_mask": torch.ones(2, 2, dtype=torch.bool)}),
        rf"tensor '{L}.in_mask': expected a 1-D mask, got shape \[2, 2\]",
    ),
    (
        "block_mask_1d",
        good({"fc.block_mask": torch.ones(4, dtype=torch.bool)}),
        r"tensor 'fc.block_mask': expected a 2-D mask, got shape \[4\]",
    ),
    (
        "bool_byte_2",
        good({f"{L}.out_mask": torch.tensor([0, 2], dtype=torch.uint8).view(torch.bool)}),
        rf"tensor '{L}.out_mask': BOOL tensor holds bytes other than 0 and 1",
    ),
    (
        "adapter_int_dtype",
        good({f"{L}.adapter": torch.ones(2, 2, dtype=torch.int64)}),
        rf"tensor '{L}.adapter': expected a float dtype \(F32, F16, BF16, F64\), got I64",
    ),
    ("adapter_nan", good(_nan_cols()), rf"tensor '{L}.adapter.cols': holds non-finite values"),
    (
        "override_inf",
        good({"override.fc.bias": torch.tensor([1.0, float("inf")])}),
        r"tensor 'override.fc.bias': holds non-finite values",
    ),
    (
        "cols_without_rows",
        good({f"{L}.adapter.cols": torch.ones(3, 2)}),
        rf"tensor '{L}.adapter.rows': '{L}.adapter.cols' is present but '{L}.adapter.rows' is missing",
    ),
    (
        "rank_mismatch",
        good({f"{L}.adapter.cols": torch.ones(3, 2), f"{L}.adapter.rows": torch.ones(4, 5)}),
        rf"tensor '{L}.adapter.rows': expected shape \[2, \*\] \(r = 2 from adapter.cols, in_kept\), got \[4, 5\]",
    ),
    (
        "cols_vs_out_mask",
        good(
            {
                f"{L}.out_mask": torch.tensor([True, False, True]),
                f"{L}.adapter.cols": torch.ones(3, 2),
                f"{L}.adapter.rows": torch.ones(2, 5),
            }
        ),
        rf"tensor '{L}.adapter.cols': expected shape \[2, 2\] \(out_kept, r\), got \[3, 2\]",
    ),
    (
        "pointwise_wrong_shape",
        good(
            {
                f"{L}.in_mask": torch.tensor([True, True, False]),
                f"{L}.out_mask": torch.tensor([True] * 4),
                f"{L}.adapter": torch.ones(4, 2),
            }
        ),
        rf"tensor '{L}.adapter': expected shape \[2, 4\] \(in_kept, out_kept\), got \[4, 2\]",
    ),
    (
        "adapter_bias_wrong",
        good({f"{L}.adapter": torch.ones(4, 3), f"{L}.adapter_bias": torch.ones(4)}),
        rf"tensor '{L}.adapter_bias': expected shape \[3\] \(out_kept\), got \[4\]",
    ),
    (
        "two_kinds",
        good(
            {
                f"{L}.adapter": torch.ones(4, 3),
                f"{L}.adapter.cols": torch.ones(3, 2),
                f"{L}.adapter.rows": torch.ones(2, 4),
            }
        ),
        rf"layer '{L}' has more than one adapter kind: SPLoRA",
    ),
    (
        "splopa_partial",
        good({"fc.adapter.pos_weights": torch.ones(2, 3, 4)}),
        r"tensor 'fc.adapter.pos_weights': SPLoPA needs .* missing 'fc.adapter.prototypes.cols', 'fc.adapter.prototypes.rows'",
    ),
    (
        "splopa_p_mismatch",
        good(
            {
                "fc.adapter.pos_weights": torch.ones(2, 3, 4),
                "fc.adapter.prototypes.cols": torch.ones(3, 5, 1),
                "fc.adapter.prototypes.rows": torch.ones(2, 1, 6),
            }
        ),
        r"tensor 'fc.adapter.prototypes.cols': expected shape \[2, \*, 1\]",
    ),
    (
        "block_mask_vs_pos",
        good(
            {
                "fc.adapter.pos_weights": torch.ones(2, 3, 4),
                "fc.adapter.prototypes.cols": torch.ones(2, 5, 1),
                "fc.adapter.prototypes.rows": torch.ones(2, 1, 6),
                "fc.block_mask": torch.ones(4, 3, dtype=torch.bool),
            }
        ),
        r"tensor 'fc.block_mask': expected shape \[3, 4\]",
    ),
    (
        "unknown_field",
        good({f"{L}.weight": torch.ones(2)}),
        rf"tensor '{L}.weight': unknown tensor name: expected '<module>.<field>'",
    ),
    (
        "bare_field",
        good({"out_mask": torch.ones(2, dtype=torch.bool)}),
        r"tensor 'out_mask': unknown tensor name",
    ),
    (
        "empty_override_key",
        good({"override.": torch.ones(2)}),
        r"tensor 'override.': override without a state-dict key",
    ),
]


@pytest.mark.parametrize("data,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_bytes_refused(tmp_path: Path, data: bytes, pattern: str) -> None:
    path = tmp_path / "model.spa"
    path.write_bytes(data)
    with pytest.raises(SpaFormatError) as info:
        read_spa(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert re.search(pattern, message[len(str(path)) + 2 :]), message
    # the same from bytes, with the name given
    with pytest.raises(SpaFormatError) as info2:
        parse_spa_bytes(data, path="given.spa")
    assert str(info2.value) == message.replace(str(path), "given.spa")


def test_enough_distinct_cases() -> None:
    assert len({c[1] for c in CASES}) == len(CASES) >= 40


def test_error_key_attribute_names_the_tensor() -> None:
    with pytest.raises(SpaFormatError) as info:
        parse_spa_bytes(good({f"{L}.out_mask": torch.ones(4)}), path="model.spa")
    assert info.value.key == f"{L}.out_mask"
    assert str(info.value) == f"model.spa: tensor '{L}.out_mask': expected dtype BOOL, got F32"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.spa"
    with pytest.raises(SpaFormatError, match=re.escape(f"{path}: no such file")):
        read_spa(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SpaFormatError, match=re.escape(f"{tmp_path}: is a directory")):
        read_spa(tmp_path)


def test_too_large_file_refused_without_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spa_export.spa.reader as reader

    path = tmp_path / "big.spa"
    path.write_bytes(valid_file())
    monkeypatch.setattr(reader, "MAX_FILE_BYTES", 100)
    with pytest.raises(
        SpaFormatError, match=r"big.spa: file is \d+ bytes, more than the 100 bytes"
    ):
        read_spa(path)


def test_valid_file_reads() -> None:
    spa = parse_spa_bytes(valid_file(), path="ok.spa")
    layer = spa.layers[L]
    assert layer.rank == 2
    assert layer.out_kept(4) == 3
    assert spa.path == Path("ok.spa")


def test_all_false_mask_allowed() -> None:
    data = good(
        {
            f"{L}.out_mask": torch.zeros(3, dtype=torch.bool),
            f"{L}.adapter.cols": torch.ones(0, 2),
            f"{L}.adapter.rows": torch.ones(2, 5),
        }
    )
    layer = parse_spa_bytes(data).layers[L]
    assert layer.out_kept(3) == 0
    assert layer.kept_out_index(3).tolist() == []
