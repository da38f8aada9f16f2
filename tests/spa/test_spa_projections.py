"""``<attention>.q_proj``, ``.k_proj``, ``.v_proj``: nn.MultiheadAttention's projections as SPA layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa_export.safety.errors import SpaCompatibilityError
from spa_export.spa import LayerSpa, make_spa
from spa_export.spa.projections import split_name, with_projections
from spa_export.stages.compat import check_compatible
from spa_export.stages.merge import merge
from spa_export.stages.reference import build_reference

ARCH = "spa_export.examples:token_encoder"


def _base() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from spa_export.nets.arch import build_model

    torch.manual_seed(0)
    model = build_model(ARCH).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.MultiheadAttention):
                nn.init.normal_(mod.in_proj_bias)          # PyTorch starts them at zero
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _spa() -> object:
    g = torch.Generator().manual_seed(3)
    keep = torch.ones(32, dtype=torch.bool)
    keep[8:16] = False                                   # head 1
    return make_spa([
        LayerSpa("encoder.layers.0.self_attn.q_proj", out_mask=keep,
                 lora_cols=torch.randn(24, 2, generator=g), lora_rows=torch.randn(2, 32, generator=g),
                 adapter_bias=torch.randn(24, generator=g)),
        LayerSpa("encoder.layers.0.self_attn.v_proj", out_mask=keep,
                 lora_cols=torch.randn(24, 2, generator=g), lora_rows=torch.randn(2, 32, generator=g)),
        LayerSpa("encoder.layers.0.self_attn.out_proj", in_mask=keep),
    ], {}, arch=ARCH)


def test_names_resolve_to_rows_of_the_fused_projection() -> None:
    model, _ = _base()
    modules = dict(model.named_modules())
    assert split_name("encoder.layers.0.self_attn.k_proj", modules) == ("encoder.layers.0.self_attn", 1)
    assert split_name("encoder.layers.0.self_attn.out_proj", modules) is None     # a real module
    assert split_name("encoder.layers.0.linear1.q_proj", modules) is None         # not attention
    views = with_projections(modules)
    attn = modules["encoder.layers.0.self_attn"]
    v = views["encoder.layers.0.self_attn.v_proj"]
    assert torch.equal(v.weight, attn.in_proj_weight[64:96]) and torch.equal(v.bias, attn.in_proj_bias[64:96])
    assert v.weight.data_ptr() == attn.in_proj_weight[64:96].data_ptr()         # a view, not a copy


def test_merge_and_reference_agree_and_apply_the_spec_to_the_rows() -> None:
    model, base = _base()
    spa = _spa()
    check_compatible(spa, model, base)
    merged, report = merge(model, spa)
    assert report.layers == 3
    attn = merged.encoder.layers[0].self_attn
    e = 32
    assert (attn.in_proj_weight[8:16] == 0).all() and (attn.in_proj_bias[8:16] == 0).all()      # q rows
    assert (attn.in_proj_weight[2 * e + 8: 2 * e + 16] == 0).all()                              # v rows
    assert torch.equal(attn.in_proj_weight[e:2 * e], base["encoder.layers.0.self_attn.in_proj_weight"][e:2 * e])
    assert not torch.equal(attn.in_proj_weight[:8], base["encoder.layers.0.self_attn.in_proj_weight"][:8])
    assert torch.equal(model.state_dict()["encoder.layers.0.self_attn.in_proj_weight"],
                       base["encoder.layers.0.self_attn.in_proj_weight"])                       # caller's untouched
    reference = build_reference(ARCH, base, spa)
    x = torch.randn(2, 8, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference(x), merged(x)
    assert (want - got).abs().max() <= 1e-5 * want.abs().max()
    with torch.no_grad():
        plain = model(x)
    assert (want - plain).abs().max() > 1e-3 * want.abs().max()     # the SPA does change the function


def test_separate_key_and_value_widths() -> None:
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x[..., :8], x[..., 8:14], x[..., 8:14], need_weights=False)[0]

    torch.manual_seed(0)
    model = Cross().eval()
    with torch.no_grad():
        nn.init.normal_(model.attn.in_proj_bias)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    views = with_projections(dict(model.named_modules()))
    assert views["attn.k_proj"].in_features == 6 and views["attn.q_proj"].in_features == 8
    keep = torch.tensor([True] * 4 + [False] * 4)
    spa = make_spa([LayerSpa("attn.k_proj", in_mask=torch.tensor([True, False] * 3)),
                    LayerSpa("attn.v_proj", out_mask=keep)], {})
    check_compatible(spa, model, base)
    merged, _ = merge(model, spa)
    assert (merged.attn.k_proj_weight[:, 1::2] == 0).all() and (merged.attn.v_proj_weight[4:] == 0).all()
    assert (merged.attn.in_proj_bias[20:] == 0).all() and (merged.attn.in_proj_bias[16:20] != 0).any()


@pytest.mark.parametrize(("layer", "message"), [
    (LayerSpa("encoder.layers.0.self_attn.v_proj", out_mask=torch.ones(31, dtype=torch.bool)), "expected length 32"),
    (LayerSpa("encoder.layers.0.self_attn.x_proj", out_mask=torch.ones(32, dtype=torch.bool)), "has no module"),
])
def test_bad_projection_layers_are_refused(layer: LayerSpa, message: str) -> None:
    model, base = _base()
    with pytest.raises(SpaCompatibilityError, match=message):
        check_compatible(make_spa([layer], {}), model, base)
