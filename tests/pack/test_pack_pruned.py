"""Networks still pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``, not removed).

Prune keeps ``weight`` as an attribute computed before each forward pass. A state dict loaded into
a rebuilt network, or weights changed after the last forward pass (an optimiser step), leave it
stale; pack must read ``weight_orig * weight_mask`` as it is now, every time, to the same bytes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune

sp_adapters = pytest.importorskip("sp_adapters")
torchvision = pytest.importorskip("torchvision")

from spa_export.pack import pack_checkpoint, pack_model  # noqa: E402
from spa_export.pack.synth import random_base  # noqa: E402
from spa_export.spa import spa_bytes  # noqa: E402

ARCH, SHAPE = "torchvision:resnet18", (1, 3, 32, 32)


def _pruned(base: dict) -> nn.Module:
    """SPLoRA rank 8 on a ResNet-18, half of every convolution's rows pruned, the adapters' rows zeroed
    too: the network is exactly its masks."""
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(base)
    lib = sp_adapters.SPLoRA(net, rank=8).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in lib.named_parameters():
            if ".adapter" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    for mod in lib.modules():
        if isinstance(mod, nn.Conv2d):
            prune.ln_structured(mod, "weight", 0.5, n=1, dim=0)
            rows = mod.weight_mask.flatten(1).sum(1) == 0
            with torch.no_grad():
                mod.adapter.cols[:, rows] = 0
    return lib


def test_a_saved_state_dict_still_pruned_packs_exactly_and_the_same_every_time(tmp_path: Path) -> None:
    base = random_base(ARCH, SHAPE, seed=0)
    save_file({k: v.contiguous() for k, v in base.items()}, str(tmp_path / "base.safetensors"))
    torch.save(_pruned(base).state_dict(), tmp_path / "adapted.pt")
    first, second = (pack_checkpoint(ARCH, tmp_path / "base.safetensors", tmp_path / "adapted.pt",
                                     input_shape=SHAPE) for _ in range(2))
    check = first.report["check"]
    assert check["vs_masked_network"]["max_err_over_scale"] == 0.0 and check["vs_own_forward"]["passed"]
    assert len(first.report["masks"]) == 20 and all(m["out"]["kept"] * 2 == m["out"]["of"] for m in first.report["masks"])
    assert all(m["out"]["source"] == "its prune weight_mask" for m in first.report["masks"]), first.report["masks"][0]
    assert spa_bytes(first.spa) == spa_bytes(second.spa)


def test_a_live_network_whose_weights_changed_after_its_last_forward_pass(tmp_path: Path) -> None:
    base = random_base(ARCH, SHAPE, seed=0)
    lib = _pruned(base)
    with torch.no_grad():          # an optimiser step on the frozen weight, no forward pass since
        lib.layer1[0].conv1.weight_orig.mul_(1.5)
    stale = lib.layer1[0].conv1.weight.clone()
    result = pack_model(lib, base, arch=ARCH, input_shape=SHAPE)
    assert result.report["check"]["vs_own_forward"]["passed"]
    assert torch.equal(lib.layer1[0].conv1.weight, stale)     # the caller's network is not changed
    again = pack_model(copy.deepcopy(lib), base, arch=ARCH, input_shape=SHAPE)
    assert spa_bytes(again.spa) == spa_bytes(result.spa)
