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
