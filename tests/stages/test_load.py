"""The load stage (spa_export.stages.load): what a build reads, and reading the base again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spa_export.safety.errors import InputError
from spa_export.stages.load import load_inputs, reread_base

REPO = Path(__file__).resolve().parents[2]
BASE, SPA = REPO / "models" / "tiny_resnet.safetensors", REPO / "models" / "tiny_resnet-example.spa"


def test_the_task_network_shares_the_base_tensors() -> None:
    loaded = load_inputs(BASE, SPA)
    weight = loaded.model.get_submodule("stem.0").weight
    assert weight.data_ptr() == loaded.base_state["stem.0.weight"].data_ptr()   # no copy


def test_reread_base_gives_the_same_state_once_dropped(tmp_path: Path) -> None:
    base = tmp_path / "base.safetensors"
    shutil.copy(BASE, base)
    loaded = load_inputs(base, SPA)
    kept = {k: v.clone() for k, v in loaded.base_state.items()}
    assert reread_base(loaded) is loaded.base_state            # still held: nothing read
    loaded.base_state = None
    again = reread_base(loaded)
    assert again.keys() == kept.keys() and all(torch.equal(again[k], kept[k]) for k in kept)


def test_reread_base_refuses_a_base_that_changed_during_the_build(tmp_path: Path) -> None:
    base = tmp_path / "base.safetensors"
    shutil.copy(BASE, base)
    loaded = load_inputs(base, SPA)
    changed = {k: v.clone() for k, v in loaded.base_state.items()}
    changed["fc.bias"] += 1.0
    loaded.base_state = None
    save_file(changed, str(base))
    with pytest.raises(InputError, match=f"{base}: the file changed while the build ran"):
        reread_base(loaded)


def test_an_spa_of_a_network_with_auxiliary_heads_builds_without_them(tmp_path: Path) -> None:
    """Training GoogLeNet with the library adapts and masks its auxiliary heads too; the deployed
    network has none: their tensors are left out, with a line in the report, and the rest builds."""
    from safetensors.torch import save_file

    from spa_export import BuildOptions, LayerSpa, build, make_spa, write_spa
    from spa_export.pack.synth import random_base

    arch, shape = "torchvision:googlenet", (1, 3, 64, 64)
    base = random_base(arch, shape, seed=0)
    keep = torch.ones(64, dtype=torch.bool)
    keep[::2] = False
    spa = make_spa([LayerSpa("conv1.conv", out_mask=keep),
                    LayerSpa("aux1.conv.conv", lora_cols=torch.ones(128, 2), lora_rows=torch.ones(2, 512))],
                   {"aux2.fc2.weight": torch.zeros(10, 1024), "aux2.fc2.bias": torch.zeros(10)}, task="t", arch=arch)
    save_file(base, str(tmp_path / "base.safetensors"))
    write_spa(spa, tmp_path / "t.spa")
    report = build(BuildOptions(base=tmp_path / "base.safetensors", spa=tmp_path / "t.spa", out=tmp_path / "out",
                                input_shape=shape, quiet=True)).report
    assert report["verification"]["passed"] and report["params"]["pruned"] < report["params"]["dense"]
    dropped = report["inputs"]["spa"]["dropped"]
    assert dropped["entries"] == 3 and dropped["first"] == ["aux1.conv.conv", "override.aux2.fc2.bias",
                                                           "override.aux2.fc2.weight"]
    assert "auxiliary classifier heads" in dropped["why"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| SPA file: left out | 3 entries (aux1.conv.conv, override.aux2.fc2.bias, override.aux2.fc2.weight): " \
           "layers and overrides of the auxiliary classifier heads" in text, text[:2000]
