"""check_compatible: an SPA against a real base network (torchvision resnet18, mobilenet_v2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from spa_export.safety.errors import SpaCompatibilityError
from spa_export.spa import LayerSpa, SpaFile, make_spa
from spa_export.stages.compat import check_compatible

PATH = Path("task.spa")


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = torchvision.models.resnet18(weights=None)
    return model, model.state_dict()


def at(spa: SpaFile) -> SpaFile:
    """The same SPA, named as if read from PATH (so messages name the file)."""
    return SpaFile(metadata=spa.metadata, layers=spa.layers, overrides=spa.overrides, path=PATH)


def refuse(spa: SpaFile, model: nn.Module, sd: dict[str, torch.Tensor], message: str) -> None:
    with pytest.raises(SpaCompatibilityError) as info:
        check_compatible(at(spa), model, sd)
    assert str(info.value) == f"{PATH}: {message}"


def ones(n: int, keep: int | None = None) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[: n if keep is None else keep] = True
    return m


def good_resnet_spa() -> SpaFile:
    return make_spa(
        [
            LayerSpa(
                "layer1.0.conv1",
                out_mask=ones(64, 40),
                in_mask=ones(64),
                lora_cols=torch.zeros(40, 4),
                lora_rows=torch.zeros(4, 64),
            ),
            LayerSpa("layer1.0.conv2", in_mask=ones(64, 40), pointwise=torch.zeros(40, 64)),
            LayerSpa("layer2.0.downsample.0", out_mask=ones(128, 100)),  # 1x1 conv, masks only
            LayerSpa(
                "fc",
                out_mask=ones(10, 7),
                lora_cols=torch.zeros(7, 2),
                lora_rows=torch.zeros(2, 512),
                adapter_bias=torch.zeros(7),
            ),
        ],
        {
            "fc.weight": torch.zeros(10, 512),
            "fc.bias": torch.zeros(10),
            "bn1.running_mean": torch.zeros(64),
        },
    )


def test_good_spa_with_resized_head_accepted(resnet: tuple[nn.Module, dict]) -> None:
    model, sd = resnet
    check_compatible(at(good_resnet_spa()), model, sd)
    assert model.fc.out_features == 1000  # the base is not modified


def test_resized_head_needs_new_mask_length(resnet: tuple[nn.Module, dict]) -> None:
    model, sd = resnet
    spa = make_spa(
        [LayerSpa("fc", out_mask=ones(1000))],
        {"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)},
    )
    refuse(
        spa, model, sd, "tensor 'fc.out_mask': expected length 10 ('fc' has 10 outputs), got 1000"
    )


def test_unknown_layer(resnet: tuple[nn.Module, dict]) -> None:
    spa = make_spa([LayerSpa("layer9.0.conv1", out_mask=ones(64))])
    refuse(
        spa,
        *resnet,
        "tensor 'layer9.0.conv1.out_mask': the base network has no module 'layer9.0.conv1'",
    )


def test_wrong_module_type(resnet: tuple[nn.Module, dict]) -> None:
    spa = make_spa([LayerSpa("layer1.0.bn1", out_mask=ones(64))])
    refuse(
        spa,
        *resnet,
        "tensor 'layer1.0.bn1.out_mask': 'layer1.0.bn1' is a BatchNorm2d, expected Linear or ConvNd",
    )


def test_wrong_mask_lengths(resnet: tuple[nn.Module, dict]) -> None:
    refuse(
        make_spa([LayerSpa("layer1.0.conv1", out_mask=ones(32))]),
        *resnet,
        "tensor 'layer1.0.conv1.out_mask': expected length 64 ('layer1.0.conv1' has 64 outputs), got 32",
    )
    refuse(
        make_spa([LayerSpa("layer2.0.conv1", in_mask=ones(128))]),
        *resnet,
        "tensor 'layer2.0.conv1.in_mask': expected length 64 ('layer2.0.conv1' has 64 inputs), got 128",
    )


def test_adapter_shapes_against_base(resnet: tuple[nn.Module, dict]) -> None:
    refuse(
        make_spa(
            [LayerSpa("layer1.0.conv1", lora_cols=torch.zeros(63, 2), lora_rows=torch.zeros(2, 64))]
        ),
        *resnet,
        "tensor 'layer1.0.conv1.adapter.cols': expected shape [64, 2] (out_kept of 'layer1.0.conv1', r), got [63, 2]",
    )
    refuse(
        make_spa([LayerSpa("fc", pointwise=torch.zeros(512, 999))]),
        *resnet,
        "tensor 'fc.adapter': expected shape [512, 1000] (in_kept, out_kept of 'fc'), got [512, 999]",
    )


def test_adapter_on_depthwise_conv() -> None:
    model = torchvision.models.mobilenet_v2(weights=None)
    sd = model.state_dict()
    name = "features.1.conv.0.0"
    assert model.get_submodule(name).groups == 32
    # masks on a depthwise conv are fine, with the full in_channels
    check_compatible(
        make_spa([LayerSpa(name, out_mask=ones(32, 20), in_mask=ones(32, 20))]), model, sd
    )
    refuse(
        make_spa([LayerSpa(name, lora_cols=torch.zeros(32, 2), lora_rows=torch.zeros(2, 32))]),
        model,
        sd,
        f"tensor '{name}.adapter.cols': '{name}' is a grouped convolution (groups=32); "
        "SPLoRA adapters apply to layers with groups == 1 only",
    )


def test_even_kernel() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Conv2d(4, 4, (3, 1)))
    sd = model.state_dict()
    check_compatible(make_spa([LayerSpa("2", pointwise=torch.zeros(4, 4))]), model, sd)
    refuse(
        make_spa([LayerSpa("0", pointwise=torch.zeros(3, 4))]),
        model,
        sd,
        "tensor '0.adapter': '0' has kernel size (2, 2); SPPaRA adapters need odd kernel sizes "
        "(the update sits at the kernel centre)",
    )


def test_adapter_bias_on_biasless_conv(resnet: tuple[nn.Module, dict]) -> None:
    refuse(
        make_spa([LayerSpa("layer1.0.conv1", adapter_bias=torch.zeros(64))]),
        *resnet,
        "tensor 'layer1.0.conv1.adapter_bias': 'layer1.0.conv1' has no bias (Conv2d with bias=False); adapter_bias needs one",
    )
    refuse(
        make_spa([LayerSpa("fc", adapter_bias=torch.zeros(10))]),
        *resnet,
        "tensor 'fc.adapter_bias': expected shape [1000] (out_kept of 'fc'), got [10]",
    )


def test_unknown_override_key(resnet: tuple[nn.Module, dict]) -> None:
    refuse(
        make_spa([], {"fc.scale": torch.zeros(3)}),
        *resnet,
        "tensor 'override.fc.scale': override of unknown key 'fc.scale': the base state dict has no such entry",
    )


def test_override_resizing_bn_refused(resnet: tuple[nn.Module, dict]) -> None:
    refuse(
        make_spa([], {"bn1.weight": torch.zeros(32)}),
        *resnet,
        "tensor 'override.bn1.weight': shape [32] differs from the base's [64]; only dimension 0 "
        "of a Linear/ConvNd weight and its bias may change ('bn1' is a BatchNorm2d)",
    )


def test_override_resizing_other_dims_refused(resnet: tuple[nn.Module, dict]) -> None:
    refuse(
        make_spa([], {"fc.weight": torch.zeros(10, 256), "fc.bias": torch.zeros(10)}),
        *resnet,
        "tensor 'override.fc.weight': shape [10, 256] differs from the base's [1000, 512]; only dimension 0 "
        "of a Linear/ConvNd weight and its bias may change",
    )


def test_weight_and_bias_resized_together(resnet: tuple[nn.Module, dict]) -> None:
    refuse(
        make_spa([], {"fc.bias": torch.zeros(10)}),
        *resnet,
        "tensor 'override.fc.bias': has 10 entries but 'fc.weight' (the base weight) has 1000 outputs; "
        "a weight and its bias must be resized together",
    )
    refuse(
        make_spa([], {"fc.weight": torch.zeros(10, 512)}),
        *resnet,
        "tensor 'override.fc.weight': resizes 'fc' to 10 outputs but 'fc.bias' is not overridden "
        "and keeps the base's 1000 entries; override both",
    )
    refuse(
        make_spa([], {"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(12)}),
        *resnet,
        "tensor 'override.fc.bias': has 12 entries but 'fc.weight' (its override) has 10 outputs; "
        "a weight and its bias must be resized together",
    )
    # a bias-less conv may be resized through its weight alone
    model, sd = resnet
    check_compatible(
        make_spa(
            [LayerSpa("conv1", out_mask=ones(32))], {"conv1.weight": torch.zeros(32, 3, 7, 7)}
        ),
        model,
        sd,
    )


def test_override_dtype_kind(resnet: tuple[nn.Module, dict]) -> None:
    refuse(
        make_spa([], {"bn1.num_batches_tracked": torch.tensor(1.0)}),
        *resnet,
        "tensor 'override.bn1.num_batches_tracked': dtype F32 does not fit the base entry's dtype I64 "
        "(float and non-float do not mix)",
    )


def splopa(p: int, q: int, a: int, b: int, block: bool = False) -> LayerSpa:
    return LayerSpa(
        "fc",
        pos_weights=torch.zeros(3, a, b),
        proto_cols=torch.zeros(3, p, 1),
        proto_rows=torch.zeros(3, 1, q),
        block_mask=torch.ones(a, b, dtype=torch.bool) if block else None,
    )


def test_splopa(resnet: tuple[nn.Module, dict]) -> None:
    model, sd = resnet
    check_compatible(make_spa([splopa(10, 16, 100, 32, block=True)]), model, sd)
    refuse(
        make_spa([splopa(7, 16, 100, 32)]),
        model,
        sd,
        "tensor 'fc.adapter.prototypes.cols': block size 7x16 does not divide the 1000x512 weight of 'fc'",
    )
    refuse(
        make_spa([splopa(10, 16, 50, 32)]),
        model,
        sd,
        "tensor 'fc.adapter.pos_weights': expected shape [3, 100, 32] (P, out/p, in/q), got [3, 50, 32]",
    )
    conv = LayerSpa(
        "conv1",
        pos_weights=torch.zeros(1, 8, 3),
        proto_cols=torch.zeros(1, 8, 1),
        proto_rows=torch.zeros(1, 1, 1),
    )
    refuse(
        make_spa([conv]),
        model,
        sd,
        "tensor 'conv1.adapter.pos_weights': SPLoPA adapters apply to Linear layers only; 'conv1' is a Conv2d",
    )


def test_block_mask_alone(resnet: tuple[nn.Module, dict]) -> None:
    model, sd = resnet
    check_compatible(
        make_spa([LayerSpa("fc", block_mask=torch.ones(100, 32, dtype=torch.bool))]), model, sd
    )
    refuse(
        make_spa([LayerSpa("fc", block_mask=torch.ones(3, 32, dtype=torch.bool))]),
        model,
        sd,
        "tensor 'fc.block_mask': a [3, 32] block grid does not divide the 1000x512 weight of 'fc'",
    )


def test_messages_name_layer_without_path(resnet: tuple[nn.Module, dict]) -> None:
    model, sd = resnet
    with pytest.raises(
        SpaCompatibilityError,
        match=re.escape("tensor 'nope.in_mask': the base network has no module 'nope'"),
    ):
        check_compatible(make_spa([LayerSpa("nope", in_mask=ones(3))]), model, sd)
