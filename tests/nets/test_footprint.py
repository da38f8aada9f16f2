"""The meta-device pass: MACs equal a real forward pass's count; the batch-norm shortcut changes nothing."""

from __future__ import annotations

import pytest
from torch import nn

from spa_export.nets.arch import build_model, build_on_meta
from spa_export.nets.footprint import _measure, activation_footprint
from spa_export.nets.metrics import count_macs
from spa_export.runtime.inputs import as_inputs

SHAPE = (1, 3, 64, 64)


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "torchvision:mobilenet_v3_small",
                                  "torchvision:squeezenet1_1", "spa_export.examples:tiny_resnet"])
def test_meta_macs_equal_a_real_forward_pass(arch: str) -> None:
    footprint = activation_footprint(arch, {}, as_inputs(SHAPE))
    assert footprint is not None and footprint.macs is not None and footprint.macs > 0
    assert footprint.macs == count_macs(build_model(arch).eval(), as_inputs(SHAPE))


def test_batchnorm_shortcut_gives_the_same_footprint() -> None:
    fast = _measure(build_on_meta("torchvision:resnet18"), as_inputs(SHAPE))
    slow_model = build_on_meta("torchvision:resnet18")
    for m in slow_model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()          # the shortcut is for eval mode only: these run PyTorch's own meta kernel
    slow = _measure(slow_model, as_inputs(SHAPE))
    assert (fast.working, fast.total, fast.macs) == (slow.working, slow.total, slow.macs)
