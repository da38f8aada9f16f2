"""Writing and reading SPA files: exact names, metadata, round trips, atomic writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from spa_export.safety.errors import InputError, SpaFormatError
from spa_export.spa import (
    LayerSpa,
    SpaFile,
    make_spa,
    parse_spa_bytes,
    read_spa,
    spa_bytes,
    write_spa,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


def full_spa() -> SpaFile:
    g = torch.Generator().manual_seed(1)
    layers = [
        LayerSpa(
            "layer1.0.conv1",
            out_mask=torch.tensor([True, False, True, True, False]),
            in_mask=torch.tensor([False, True, True, True]),
            lora_cols=torch.randn(3, 2, generator=g),
            lora_rows=torch.randn(2, 3, generator=g),
            adapter_bias=torch.randn(3, generator=g),
        ),
        LayerSpa("features.3", pointwise=torch.randn(4, 6, generator=g)),
        LayerSpa(
            "classifier.1",
            pos_weights=torch.randn(2, 3, 4, generator=g),
            proto_cols=torch.randn(2, 5, 1, generator=g),
            proto_rows=torch.randn(2, 1, 2, generator=g),
            block_mask=torch.tensor([[True, False, True, True]] * 3),
        ),
        LayerSpa("layer2.0.downsample.0", out_mask=torch.tensor([True, False])),
    ]
    overrides = {
        "fc.weight": torch.randn(3, 8, generator=g),
        "fc.bias": torch.randn(3, generator=g).half(),
        "bn1.num_batches_tracked": torch.tensor(12),
        "bn1.running_var": torch.rand(4, generator=g).to(torch.bfloat16),
        "mask_buffer": torch.tensor([True, False]),
    }
    return make_spa(
        layers,
        overrides,
        task="cifar10",
        arch="torchvision:resnet18",
        base_digest=DIGEST,
        description="test file",
    )


def test_round_trip_every_field_kind(tmp_path: Path) -> None:
    spa = full_spa()
    path = write_spa(spa, tmp_path / "task.spa")
    assert path == tmp_path / "task.spa"
    back = read_spa(path)
    assert back == spa
    assert back.path == path
    assert back.overrides["fc.bias"].dtype == torch.float16
    assert back.overrides["bn1.running_var"].dtype == torch.bfloat16
    assert back.overrides["bn1.num_batches_tracked"].shape == ()
    assert back.overrides["bn1.num_batches_tracked"].item() == 12
    assert [back.layers[k].kind for k in sorted(back.layers)] == [
        "splopa",
        "sppara",
        "splora",
        None,
    ]


def test_file_holds_exactly_the_spec_names_and_metadata(tmp_path: Path) -> None:
    path = write_spa(full_spa(), tmp_path / "task.spa")
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        metadata = f.metadata()
        dtypes = {k: f.get_tensor(k).dtype for k in names}
    assert names == {
        "layer1.0.conv1.out_mask",
        "layer1.0.conv1.in_mask",
        "layer1.0.conv1.adapter.cols",
        "layer1.0.conv1.adapter.rows",
        "layer1.0.conv1.adapter_bias",
        "features.3.adapter",
        "classifier.1.adapter.pos_weights",
        "classifier.1.adapter.prototypes.cols",
        "classifier.1.adapter.prototypes.rows",
        "classifier.1.block_mask",
        "layer2.0.downsample.0.out_mask",
        "override.fc.weight",
        "override.fc.bias",
        "override.bn1.num_batches_tracked",
        "override.bn1.running_var",
        "override.mask_buffer",
    }
    assert metadata == {
        "spa.format": "spa",
        "spa.version": "1",
        "spa.task": "cifar10",
        "spa.arch": "torchvision:resnet18",
        "spa.base_digest": DIGEST,
        "spa.description": "test file",
    }
    assert dtypes["layer1.0.conv1.out_mask"] == torch.bool
    assert dtypes["classifier.1.block_mask"] == torch.bool
    assert dtypes["features.3.adapter"] == torch.float32


def test_metadata_properties_and_minimal_metadata() -> None:
    spa = full_spa()
    assert (spa.task, spa.arch, spa.base_digest) == ("cifar10", "torchvision:resnet18", DIGEST)
    bare = make_spa({})
    assert bare.metadata == {"spa.format": "spa", "spa.version": "1"}
    assert (bare.task, bare.arch, bare.base_digest) == (None, None, None)
    assert parse_spa_bytes(spa_bytes(bare)) == bare


def test_unknown_metadata_keys_are_kept(tmp_path: Path) -> None:
    data = st_save(
        {"fc.out_mask": torch.tensor([True, False])},
        metadata={"spa.format": "spa", "spa.version": "1", "trainer.epochs": "30"},
    )
    spa = parse_spa_bytes(data)
    assert spa.metadata["trainer.epochs"] == "30"
    back = read_spa(write_spa(spa, tmp_path / "a.spa"))
    assert back.metadata == {"spa.format": "spa", "spa.version": "1", "trainer.epochs": "30"}


def test_half_precision_adapters_become_float32() -> None:
    layer = LayerSpa(
        "fc",
        lora_cols=torch.ones(2, 1, dtype=torch.float16),
        lora_rows=torch.full((1, 3), 0.5, dtype=torch.bfloat16),
    )
    assert layer.lora_cols.dtype == torch.float32
    assert layer.lora_rows.dtype == torch.float32
    assert layer.lora_rows.tolist() == [[0.5, 0.5, 0.5]]
    data = st_save(
        {"fc.adapter": torch.full((2, 2), 0.25, dtype=torch.float16)},
        metadata={"spa.format": "spa", "spa.version": "1"},
    )
    read = parse_spa_bytes(data).layers["fc"].pointwise
    assert read.dtype == torch.float32
    assert read.tolist() == [[0.25, 0.25], [0.25, 0.25]]


def test_non_contiguous_and_shared_tensors_are_written(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    layer = LayerSpa("fc", lora_cols=base.t()[:, :2], lora_rows=base[:2, :])  # views of one storage
    spa = make_spa([layer])
    back = read_spa(write_spa(spa, tmp_path / "v.spa"))
    assert back.layers["fc"].lora_cols.tolist() == base.t()[:, :2].tolist()
    assert back == spa


def test_write_failure_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "task.spa"
    write_spa(make_spa([LayerSpa("fc", out_mask=torch.tensor([True]))]), path)
    before = path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(
        InputError, match=re.escape(f"{path}: cannot write: No space left on device")
    ):
        write_spa(full_spa(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task.spa"]


def test_write_into_missing_directory_creates_it(tmp_path: Path) -> None:
    write_spa(full_spa(), tmp_path / "missing" / "x.spa")
    assert read_spa(tmp_path / "missing" / "x.spa") == full_spa()


def test_failed_write_removes_the_folders_it_created(tmp_path: Path) -> None:
    blocked = tmp_path / "ro"
    blocked.mkdir()
    (blocked / "a").write_bytes(b"a file where a folder is needed")
    with pytest.raises(InputError, match="cannot write"):
        write_spa(full_spa(), blocked / "a" / "b" / "x.spa")
    with pytest.raises(InputError, match="cannot write"):
        write_spa(full_spa(), tmp_path / "new" / "deeper" / ("x" * 300 + ".spa"))  # name too long
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]


def test_writer_refuses_unknown_version() -> None:
    spa = SpaFile(metadata={"spa.format": "spa", "spa.version": "2"}, layers={}, overrides={})
    with pytest.raises(
        SpaFormatError, match="metadata has spa.version '2', this reader knows spa.version '1'"
    ):
        spa_bytes(spa)


def test_writer_fills_missing_format_keys() -> None:
    spa = SpaFile(metadata={"spa.task": "x"}, layers={}, overrides={})
    assert parse_spa_bytes(spa_bytes(spa)).metadata == {
        "spa.task": "x",
        "spa.format": "spa",
        "spa.version": "1",
    }


def test_make_spa_refuses_bad_input() -> None:
    layer = LayerSpa("fc", out_mask=torch.tensor([True]))
    with pytest.raises(SpaFormatError, match="layer 'fc' given twice"):
        make_spa([layer, layer])
    with pytest.raises(SpaFormatError, match="key 'head' holds layer 'fc'"):
        make_spa({"head": layer})
    with pytest.raises(SpaFormatError, match="spa.base_digest 'abc' is not 'sha256:'"):
        make_spa([layer], base_digest="abc")
    with pytest.raises(SpaFormatError, match=r"tensor 'override.fc.bias': holds non-finite"):
        make_spa([layer], {"fc.bias": torch.tensor([float("nan")])})


def test_layer_name_colliding_with_override_prefix() -> None:
    with pytest.raises(
        SpaFormatError, match="layer name 'override.fc' collides with the 'override.' prefix"
    ):
        LayerSpa("override.fc", out_mask=torch.tensor([True]))
