"""merge.py and reference.py are two independent readings of the spec's meaning: they must agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa_export.nets.arch import load_into
from spa_export.safety.errors import InputError
from spa_export.spa import LayerSpa, make_spa
from spa_export.stages.merge import merge
from spa_export.stages.reference import build_reference

ARCH = "spa_export.examples:tiny_resnet"


def _base() -> tuple[nn.Module, dict]:
    from spa_export.examples import tiny_resnet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = tiny_resnet().eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _spa(gen: torch.Generator):
    om = torch.ones(16, dtype=torch.bool)
    om[[1, 4, 9]] = False
    im = torch.ones(16, dtype=torch.bool)
    im[[0, 15]] = False
    dw_in = torch.ones(16, dtype=torch.bool)
    dw_in[[2, 3]] = False
    layers = [
        LayerSpa("layer1.0.conv1", out_mask=om, in_mask=im, lora_cols=torch.randn(13, 3, generator=gen),
                 lora_rows=torch.randn(3, 14, generator=gen)),
        LayerSpa("layer1.1.conv2", pointwise=torch.randn(16, 16, generator=gen)),
        LayerSpa("branch.3", in_mask=dw_in),  # depthwise: masks only (no adapter on grouped layers)
        LayerSpa("fc", out_mask=torch.tensor([True] * 9 + [False]), lora_cols=torch.randn(9, 2, generator=gen),
                 lora_rows=torch.randn(2, 32, generator=gen), adapter_bias=torch.randn(9, generator=gen)),
    ]
    return make_spa(layers, task="t", arch=ARCH)


def test_merge_matches_reference_weight_by_weight():
    model, state = _base()
    spa = _spa(torch.Generator().manual_seed(0))
    merged, report = merge(model, spa)
    reference = build_reference(ARCH, state, spa)
    ref_modules = dict(reference.named_modules())
    compared = 0
    for name, mod in merged.named_modules():
        for what in ("weight", "bias", "running_mean", "running_var"):
            a = getattr(mod, what, None)
            if isinstance(a, torch.Tensor):
                b = getattr(ref_modules[name], what)   # for SPA layers: W' and b', computed on access
                assert torch.allclose(a, b, rtol=0, atol=1e-6), (name, what)
                compared += 1
    assert compared == 25 + 13 + 2 * 12   # every weight, every bias (12 batch-norms and fc), bn statistics
    assert report.masked_out_channels == 4 and report.masked_in_channels == 4
    assert report.adapters == {"splora": 2, "sppara": 1}


def test_splora_lands_at_the_kernel_centre_only():
    model, state = _base()
    spa = _spa(torch.Generator().manual_seed(0))
    merged, _ = merge(model, spa)
    delta = merged.layer1[0].conv1.weight - model.layer1[0].conv1.weight
    kept = delta[:, :, 1, 1]
    off_centre = delta.clone()
    off_centre[:, :, 1, 1] = 0
    # Off the centre only masking changes weights (to zero): nothing is added there.
    assert torch.all((off_centre == 0) | (merged.layer1[0].conv1.weight == 0))
    expected = spa.layers["layer1.0.conv1"].lora_cols @ spa.layers["layer1.0.conv1"].lora_rows
    oi = torch.nonzero(spa.layers["layer1.0.conv1"].out_mask).flatten()
    ii = torch.nonzero(spa.layers["layer1.0.conv1"].in_mask).flatten()
    assert torch.allclose(kept[oi][:, ii], expected, atol=1e-5)


def test_depthwise_in_mask_zeroes_the_channel_filter():
    model, state = _base()
    spa = _spa(torch.Generator().manual_seed(0))
    merged, _ = merge(model, spa)
    w = merged.branch[3].weight
    assert torch.all(w[[2, 3]] == 0) and torch.all(w[[0, 1, 4]] != 0)


def test_merge_does_not_touch_the_callers_model():
    model, state = _base()
    merge(model, _spa(torch.Generator().manual_seed(0)))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_non_finite_merge_is_refused():
    model, state = _base()
    big = torch.full((16, 1), 3e38)
    spa = make_spa([LayerSpa("layer1.0.conv1", lora_cols=big, lora_rows=torch.full((1, 16), 3e38))])
    with pytest.raises(InputError, match="non-finite"):
        merge(model, spa)


def test_splopa_block_update():
    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 6)

        def forward(self, x):
            return self.fc(x)

    gen = torch.Generator().manual_seed(3)
    model = MLP().eval()
    layer = LayerSpa("fc", pos_weights=torch.randn(2, 3, 2, generator=gen),
                     proto_cols=torch.randn(2, 2, 1, generator=gen), proto_rows=torch.randn(2, 1, 4, generator=gen),
                     block_mask=torch.tensor([[True, False], [True, True], [False, True]]))
    merged, _ = merge(model, make_spa([layer]))
    d = sum(torch.kron(layer.pos_weights[k], layer.proto_cols[k] @ layer.proto_rows[k]) for k in range(2))
    mask = torch.kron(layer.block_mask.float(), torch.ones(2, 4))
    assert torch.allclose(merged.fc.weight, (model.fc.weight + d) * mask, atol=1e-6)


def test_load_into_names_missing_and_extra_keys():
    from spa_export.safety.errors import CheckpointError

    model, state = _base()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys 'fc.bias'.*unexpected keys 'extra.weight'"):
        load_into(model, state)


def test_reference_shares_the_base_and_never_writes_it():
    model, state = _base()
    before = {k: v.clone() for k, v in state.items()}
    reference = build_reference(ARCH, state, _spa(torch.Generator().manual_seed(0)))
    with torch.no_grad():
        reference(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(state[k], before[k]) for k in state)
    # nothing of the base is copied: W' is computed from the base's own tensor when the layer runs
    assert reference.layer1[0].bn1.running_mean.data_ptr() == state["layer1.0.bn1.running_mean"].data_ptr()
    original = reference.layer1[0].conv1.parametrizations.weight.original
    assert original.data_ptr() == state["layer1.0.conv1.weight"].data_ptr()
