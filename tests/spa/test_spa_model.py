"""LayerSpa / SpaFile: properties, validation on construction, parameter counts, equality."""

from __future__ import annotations

import pytest
import torch

from spa_export.safety.errors import SpaFormatError
from spa_export.spa import LayerSpa, make_spa
from spa_export.spa.model import parse_tensor_name


def mask(bits: str) -> torch.Tensor:
    return torch.tensor([b == "1" for b in bits])


def test_kind_rank_and_kept_indices() -> None:
    layer = LayerSpa(
        "a.b", out_mask=mask("10110"), lora_cols=torch.ones(3, 4), lora_rows=torch.ones(4, 6)
    )
    assert layer.kind == "splora"
    assert layer.rank == 4
    assert layer.out_kept(5) == 3
    assert layer.in_kept(6) == 6
    assert layer.kept_out_index(5).tolist() == [0, 2, 3]
    assert layer.kept_out_index(5).dtype == torch.int64
    assert layer.kept_in_index(6).tolist() == [0, 1, 2, 3, 4, 5]
    assert layer.block_size is None
    with pytest.raises(
        SpaFormatError, match=r"tensor 'a.b.out_mask': mask has 5 entries, the layer has 4 channels"
    ):
        layer.out_kept(4)

    pw = LayerSpa("c", in_mask=mask("011"), pointwise=torch.ones(2, 7))
    assert (pw.kind, pw.rank, pw.in_kept(3), pw.kept_in_index(3).tolist()) == (
        "sppara",
        None,
        2,
        [1, 2],
    )

    lopa = LayerSpa(
        "d",
        pos_weights=torch.ones(3, 2, 4),
        proto_cols=torch.ones(3, 5, 1),
        proto_rows=torch.ones(3, 1, 7),
    )
    assert (lopa.kind, lopa.rank, lopa.block_size) == ("splopa", None, (5, 7))
    assert LayerSpa("e", out_mask=mask("1")).kind is None


def test_learned_parameter_count() -> None:
    spa = make_spa(
        [
            # adapter 40*4 + 4*32 = 288, bias 40, mask bits 64 + 32
            LayerSpa(
                "l1",
                out_mask=torch.tensor([True] * 40 + [False] * 24),
                in_mask=torch.ones(32, dtype=torch.bool),
                lora_cols=torch.ones(40, 4),
                lora_rows=torch.ones(4, 32),
                adapter_bias=torch.ones(40),
            ),
            LayerSpa("l2", pointwise=torch.ones(16, 10)),  # 160
            # 3*4*8 + 3*5 + 3*4 = 123, mask bits 32
            LayerSpa(
                "l3",
                pos_weights=torch.ones(3, 4, 8),
                proto_cols=torch.ones(3, 5, 1),
                proto_rows=torch.ones(3, 1, 4),
                block_mask=torch.ones(4, 8, dtype=torch.bool),
            ),
        ],
        {"fc.weight": torch.ones(10, 16), "fc.bias": torch.ones(10)},
    )
    assert spa.learned_parameter_count() == {
        "adapter": 288 + 160 + 123,
        "adapter_bias": 40,
        "overrides": 170,
        "mask_bits": 128,
        "total": 288 + 160 + 123 + 40 + 170 + 4,
    }


def test_mask_bits_round_up() -> None:
    spa = make_spa([LayerSpa("x", out_mask=torch.ones(33, dtype=torch.bool))])
    assert spa.learned_parameter_count() == {
        "adapter": 0,
        "adapter_bias": 0,
        "overrides": 0,
        "mask_bits": 33,
        "total": 2,
    }


def test_tensors_flat_names() -> None:
    spa = make_spa(
        [LayerSpa("m.0", out_mask=mask("10"), pointwise=torch.ones(3, 1))],
        {"m.1.weight": torch.ones(2)},
    )
    assert sorted(spa.tensors()) == ["m.0.adapter", "m.0.out_mask", "override.m.1.weight"]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("layer1.0.conv1.adapter.cols", ("layer1.0.conv1", "lora_cols")),
        ("layer1.0.conv1.adapter", ("layer1.0.conv1", "pointwise")),
        ("x.adapter.adapter", ("x.adapter", "pointwise")),
        ("x.adapter.adapter.rows", ("x.adapter", "lora_rows")),
        ("fc.adapter.prototypes.cols", ("fc", "proto_cols")),
        ("fc.adapter.pos_weights", ("fc", "pos_weights")),
        ("fc.adapter_bias", ("fc", "adapter_bias")),
        ("features.3.block_mask", ("features.3", "block_mask")),
        ("override.layer1.0.bn1.running_mean", ("override", "layer1.0.bn1.running_mean")),
        ("override.fc.out_mask", ("override", "fc.out_mask")),
    ],
)
def test_parse_tensor_name(name: str, expected: tuple[str, str]) -> None:
    assert parse_tensor_name(name) == expected


def test_construction_validates() -> None:
    with pytest.raises(
        SpaFormatError, match=r"^tensor 'fc.out_mask': expected dtype BOOL, got I64$"
    ):
        LayerSpa("fc", out_mask=torch.tensor([1, 0]))
    with pytest.raises(
        SpaFormatError,
        match=r"^tensor 'fc.adapter': expected shape \[1, 2\] \(in_kept, out_kept\), got \[2, 2\]$",
    ):
        LayerSpa("fc", out_mask=mask("110"), in_mask=mask("010"), pointwise=torch.ones(2, 2))
    with pytest.raises(
        SpaFormatError,
        match=r"^tensor 'fc.adapter.cols': expected a 2-D \[out_kept, r\] tensor, got shape \[3\]$",
    ):
        LayerSpa("fc", lora_cols=torch.ones(3), lora_rows=torch.ones(1, 2))
    with pytest.raises(SpaFormatError, match=r"^tensor 'fc.adapter.pos_weights': expected a 3-D"):
        LayerSpa(
            "fc",
            pos_weights=torch.ones(3, 2),
            proto_cols=torch.ones(3, 1, 1),
            proto_rows=torch.ones(3, 1, 1),
        )
    with pytest.raises(
        SpaFormatError,
        match=r"^tensor 'fc.adapter_bias': expected shape \[2\] \(out_kept\), got \[3\]$",
    ):
        LayerSpa("fc", out_mask=mask("101"), adapter_bias=torch.ones(3))
    with pytest.raises(SpaFormatError, match="layer name must be a non-empty string"):
        LayerSpa("", out_mask=mask("1"))


def test_equality() -> None:
    a = LayerSpa("fc", out_mask=mask("10"), pointwise=torch.ones(3, 1))
    b = LayerSpa("fc", out_mask=mask("10"), pointwise=torch.ones(3, 1))
    c = LayerSpa("fc", out_mask=mask("10"), pointwise=torch.full((3, 1), 2.0))
    d = LayerSpa("fc", out_mask=mask("01"), pointwise=torch.ones(3, 1))
    assert a == b
    assert a != c
    assert a != d
    assert make_spa([a], {"k": torch.ones(2)}) == make_spa([b], {"k": torch.ones(2)})
    assert make_spa([a], {"k": torch.ones(2)}) != make_spa(
        [a], {"k": torch.ones(2, dtype=torch.float64)}
    )
    assert make_spa([a], task="x") != make_spa([a], task="y")
