from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from spa_export.nets.arch import build_loaded, build_model, load_into
from spa_export.nets.checkpoint import load_state_dict_file
from spa_export.safety.errors import ArchitectureError, CheckpointError


def test_safetensors_without_version_metadata_loads_into_version_checking_modules(tmp_path):
    """MNASNet refuses state dicts without its version metadata; safetensors never carry it."""
    model = build_model("torchvision:mnasnet0_5")
    state = {k: v.clone() + 0.5 for k, v in model.state_dict().items() if v.is_floating_point()}
    state.update({k: v for k, v in model.state_dict().items() if not v.is_floating_point()})
    save_file(state, str(tmp_path / "m.safetensors"))
    fresh = build_model("torchvision:mnasnet0_5")
    load_into(fresh, load_state_dict_file(tmp_path / "m.safetensors"))
    key = "layers.0.weight"
    assert torch.equal(fresh.state_dict()[key], state[key])


def test_pt_state_dict_loads_with_weights_only(tmp_path):
    model = build_model("spa_export.examples:tiny_resnet")
    torch.save(model.state_dict(), tmp_path / "b.pt")
    loaded = load_state_dict_file(tmp_path / "b.pt")
    assert set(loaded) == set(model.state_dict())


@pytest.mark.parametrize("spec, message", [
    ("torchvision:no_such_net", "unknown torchvision classification model 'no_such_net'"),
    ("resnet50", "is not of the form"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("spa_export.examples:nothing", "has no callable 'nothing'"),
])
def test_bad_architectures(spec, message):
    with pytest.raises(ArchitectureError, match=message):
        build_model(spec)


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read as a safetensors file"):
        load_state_dict_file(tmp_path / "x.safetensors")


@pytest.mark.parametrize("spec", ["spa_export.examples:tiny_resnet", "torchvision:mobilenet_v3_small",
                                  "torchvision:efficientnet_b0"])
def test_build_loaded_shares_the_state_and_computes_the_same(spec):
    torch.manual_seed(0)
    model = build_model(spec)
    state = model.state_dict()
    loaded = build_loaded(spec, state)
    for key, tensor in loaded.state_dict().items():
        assert tensor.data_ptr() == state[key].data_ptr(), key   # no copy of the weights
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("factory", ["plain_tensor_attribute", "reads_data_while_built", "non_persistent_buffer"])
def test_build_loaded_builds_for_real_what_the_meta_device_cannot(factory):
    spec = f"factories_arch:{factory}"
    torch.manual_seed(0)
    model = build_model(spec)
    loaded = build_loaded(spec, model.state_dict())
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_build_loaded_names_missing_and_extra_keys():
    state = build_model("spa_export.examples:tiny_resnet").state_dict()
    state["extra.weight"] = state.pop("fc.weight")
    with pytest.raises(CheckpointError, match=r"missing keys 'fc.weight'.*unexpected keys 'extra.weight'"):
        build_loaded("spa_export.examples:tiny_resnet", state, source="b.safetensors")
