"""Fuzzing the reader: mutated SPA bytes parse or raise SpaFormatError, nothing else."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spa_export.safety.errors import SpaFormatError
from spa_export.spa import LayerSpa, make_spa, parse_spa_bytes, spa_bytes


def _seed_file() -> bytes:
    g = torch.Generator().manual_seed(0)
    layers = [
        LayerSpa(
            "layer1.0.conv1",
            out_mask=torch.tensor([True, False, True, True]),
            in_mask=torch.tensor([True, True, False]),
            lora_cols=torch.randn(3, 2, generator=g),
            lora_rows=torch.randn(2, 2, generator=g),
            adapter_bias=torch.randn(3, generator=g),
        ),
        LayerSpa("features.3", pointwise=torch.randn(2, 3, generator=g)),
        LayerSpa(
            "head.fc",
            pos_weights=torch.randn(2, 2, 3, generator=g),
            proto_cols=torch.randn(2, 2, 1, generator=g),
            proto_rows=torch.randn(2, 1, 2, generator=g),
            block_mask=torch.tensor([[True, False, True], [False, True, True]]),
        ),
    ]
    overrides = {
        "fc.weight": torch.randn(2, 3, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    return spa_bytes(make_spa(layers, overrides, task="fuzz", base_digest="sha256:" + "ab" * 32))


SEED = _seed_file()
HEADER_END = 8 + struct.unpack("<Q", SEED[:8])[0]
HEADER = json.loads(SEED[8:HEADER_END])
NAMES = sorted(HEADER)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2, 3, 4, 8, 12, 24, 2**31, 2**63, 2**64])
    | st.floats(allow_nan=False)
    | st.sampled_from(
        ["F32", "F16", "BOOL", "I64", "BF16", "U8", "F8_E4M3", "C64", "spa", "1", "2"]
    )
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _apply(data: bytes, mutation: tuple) -> bytes:
    kind = mutation[0]
    if kind == "flip":
        _, pos, bit = mutation
        pos %= len(data) or 1
        if not data:
            return data
        return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]
    if kind == "truncate":
        return data[: mutation[1] % (len(data) + 1)]
    if kind == "insert":
        _, pos, chunk = mutation
        pos %= len(data) + 1
        return data[:pos] + chunk + data[pos:]
    if kind == "overwrite":
        _, pos, chunk = mutation
        pos %= len(data) + 1
        return data[:pos] + chunk + data[pos + len(chunk) :]
    # "json": replace one field of one header entry and re-frame the header
    _, name, field, value = mutation
    if len(data) < 8:
        return data
    n = struct.unpack("<Q", data[:8])[0]
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return data
    if not isinstance(header, dict):
        return data
    entry = header.get(name)
    if isinstance(entry, dict):
        entry[field] = value
    else:
        header[name] = value
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


header_pos = st.integers(min_value=0, max_value=HEADER_END)
any_pos = st.integers(min_value=0, max_value=len(SEED))
data_pos = st.integers(min_value=HEADER_END, max_value=len(SEED) - 1)
mutations = st.one_of(
    st.tuples(st.just("flip"), data_pos, st.integers(0, 7)),
    st.tuples(st.just("flip"), header_pos | any_pos, st.integers(0, 7)),
    st.tuples(st.just("truncate"), any_pos),
    st.tuples(st.just("insert"), header_pos | any_pos, st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("overwrite"), header_pos | any_pos, st.binary(min_size=1, max_size=8)),
    st.tuples(
        st.just("json"),
        st.sampled_from([*NAMES, "override.x", "a.out_mask", "__metadata__"]),
        st.sampled_from(
            ["dtype", "shape", "data_offsets", "spa.format", "spa.version", "spa.base_digest"]
        ),
        json_values,
    ),
)


def _check(mutation_list: list[tuple]) -> None:
    data = SEED
    for m in mutation_list:
        data = _apply(data, m)
    try:
        spa = parse_spa_bytes(data, path="fuzz.spa")
    except SpaFormatError as e:
        assert str(e).startswith("fuzz.spa: "), str(e)
        return
    # whatever parses must survive a write/read round trip unchanged
    again = parse_spa_bytes(spa_bytes(spa), path="again.spa")
    assert again == spa


def test_seed_file_parses() -> None:
    spa = parse_spa_bytes(SEED)
    assert sorted(spa.layers) == ["features.3", "head.fc", "layer1.0.conv1"]
    assert spa.layers["head.fc"].kind == "splopa"


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(mutations, min_size=1, max_size=3))
def test_mutated_bytes_only_raise_spa_format_error(mutation_list: list[tuple]) -> None:
    _check(mutation_list)


@pytest.mark.slow
@settings(
    max_examples=20000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(mutations, min_size=1, max_size=4))
def test_mutated_bytes_only_raise_spa_format_error_at_scale(mutation_list: list[tuple]) -> None:
    _check(mutation_list)
