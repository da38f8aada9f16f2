"""Attention heads: removed whole, or narrowed, exactly, in torchvision's ViT and nn.TransformerEncoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa_export.examples import TokenEncoder, tiny_vit
from spa_export.nets.attention import PrunedAttention
from spa_export.nets.metrics import count_macs
from spa_export.runtime.inputs import as_inputs
from spa_export.stages.apply import apply_plan, prune_attention
from spa_export.stages.plan import make_plan
from spa_export.stages.plan.heads import AttentionPlan, plan_heads

VIT = (1, 3, 32, 32)
TOKENS = (1, 8, 6)


def _vit() -> nn.Module:
    torch.manual_seed(0)
    model = tiny_vit().eval()
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight)     # torchvision zeroes the head: nothing would be compared
    return model


def _encoder(norm_first: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return TokenEncoder(norm_first=norm_first).eval()


def _error(model: nn.Module, pruned: nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), pruned(x)
    assert want.abs().max() > 0
    return float((want - got).abs().max() / want.abs().max())


def _drop_values(attn: nn.MultiheadAttention, heads: list[int]) -> None:
    """An output mask on ``v_proj`` for whole heads: their value rows and biases are zero."""
    e, d = attn.embed_dim, attn.head_dim
    rows = [2 * e + h * d + j for h in heads for j in range(d)]
    with torch.no_grad():
        attn.in_proj_weight[rows] = 0
        attn.in_proj_bias[rows] = 0


def test_vit_head_unread_by_the_output_projection_goes_whole() -> None:
    model = _vit()
    attn = model.encoder.layers[0].self_attention
    with torch.no_grad():
        attn.out_proj.weight[:, 16:] = 0              # an input mask on out_proj: head 1's columns
    plan = make_plan(model, as_inputs(VIT))
    pruned = apply_plan(model, plan)
    assert _error(model, pruned, VIT) < 1e-5
    new = pruned.encoder.layers[0].self_attention
    assert isinstance(new, PrunedAttention) and new.num_heads == 1
    assert [m.weight.shape for m in (new.q_proj, new.k_proj, new.v_proj, new.out_proj)] == \
        [(16, 32), (16, 32), (16, 32), (32, 16)]
    assert isinstance(pruned.encoder.layers[1].self_attention, nn.MultiheadAttention)   # untouched
    assert plan.to_json()["attention"]["encoder.layers.encoder_layer_0.self_attention"]["heads_kept"] == [0]


def test_removing_a_head_the_network_uses_is_caught() -> None:
    """The exactness checks above can fail: dropping a live head changes the output."""
    model = _vit()
    attn = model.encoder.layers[0].self_attention
    wrong = AttentionPlan("a", 2, 16, [0], [list(range(16))], [list(range(16))])
    pruned = apply_plan(model, make_plan(model, as_inputs(VIT)))
    pruned.encoder.layers[0].self_attention = prune_attention(attn, wrong)
    assert _error(model, pruned, VIT) > 1e-3


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_heads_with_zero_values_go_and_the_mlp_shrinks(norm_first: bool) -> None:
    model = _encoder(norm_first)
    layer = model.encoder.layers[0]
    _drop_values(layer.self_attn, [1, 3])
    with torch.no_grad():
        layer.linear1.weight[:24] = 0                 # an output mask on the MLP's first layer
        layer.linear1.bias[:24] = 0
    plan = make_plan(model, as_inputs(TOKENS))
    pruned = apply_plan(model, plan)
    assert _error(model, pruned, TOKENS) < 1e-5
    new = pruned.encoder.layers[0].self_attn
    assert new.num_heads == 2 and new.heads.tolist() == [0, 2]
    assert (new.q_proj.out_features, new.v_proj.out_features, new.out_proj.in_features) == (16, 16, 16)
    assert (pruned.encoder.layers[0].linear1.out_features, pruned.encoder.layers[0].linear2.in_features) == (40, 40)
    assert count_macs(pruned, as_inputs(TOKENS)) < count_macs(model, as_inputs(TOKENS))


def test_partial_heads_narrow_value_and_query_key_dimensions() -> None:
    model = _encoder()
    attn = model.encoder.layers[1].self_attn
    e, d = attn.embed_dim, attn.head_dim
    with torch.no_grad():
        for h in range(4):
            attn.out_proj.weight[:, h * d: h * d + 3] = 0          # 3 value channels unread per head
            attn.in_proj_weight[h * d + 5: h * d + 7] = 0          # 2 query channels zero ...
            attn.in_proj_bias[h * d + 5: h * d + 7] = 0
        attn.in_proj_weight[e + 7] = 0                             # ... a key row zero, its bias not:
    plan = make_plan(model, as_inputs(TOKENS))                                # k_7 is constant, q_7 k_7 is not zero
    pruned = apply_plan(model, plan)
    assert _error(model, pruned, TOKENS) < 1e-5
    new = pruned.encoder.layers[1].self_attn
    assert (new.num_heads, new.v_proj.out_features, new.q_proj.out_features, new.k_proj.out_features) == \
        (4, 4 * 5, 4 * 6, 4 * 6)
    assert plan.attention["encoder.layers.1.self_attn"].summary() == \
        "4 of 4 heads, query/key dimension 6 and value dimension 5 of 8"


def test_uneven_heads_keep_the_widest_dimension() -> None:
    model = _encoder()
    attn = model.encoder.layers[0].self_attn
    with torch.no_grad():
        attn.out_proj.weight[:, 0:6] = 0              # head 0 keeps 2 value channels, the others 8
    plan = make_plan(model, as_inputs(TOKENS))
    pruned = apply_plan(model, plan)
    assert _error(model, pruned, TOKENS) < 1e-5
    assert isinstance(pruned.encoder.layers[0].self_attn, nn.MultiheadAttention)   # nothing to gain
    said = plan.to_json()["attention"]["encoder.layers.0.self_attn"]["kept_beyond_masks"]   # and it says why
    assert (said["value"], said["query_key"]) == (6, 0) and said["why"].startswith("kept heads share one")


def test_attention_weights_that_are_read_keep_every_head() -> None:
    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, weights = self.attn(x, x, x)
            return self.out(y).mean(1) + weights.sum((1, 2))[:, None]

    torch.manual_seed(0)
    model = Reads().eval()
    with torch.no_grad():
        model.attn.out_proj.weight[:, 4:] = 0
    plan = make_plan(model, as_inputs((1, 5, 8)))
    assert plan.attention["attn"].heads == [0, 1]
    assert "attention weights" in plan.attention["attn"].reason
    assert any("attention weights" in g["reason"] for g in plan.groups_kept_whole())


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_attention_takes_masks_as_multihead_attention_does(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.out_proj.weight[:, 4:8] = 0                       # head 1 unread
    plan = plan_heads("m", mha, weights_read=False)
    assert plan.heads == [0, 2, 3]
    new = prune_attention(mha, plan)
    n, t = 2, 5
    x = torch.randn((n, t, 16) if batch_first else (t, n, 16))
    causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    per_head = torch.randn(n * 4, t, t)
    padding = torch.zeros(n, t, dtype=torch.bool)
    padding[1, -2:] = True
    with torch.no_grad():
        for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": per_head}, {"key_padding_mask": padding},
                       {"attn_mask": causal, "key_padding_mask": padding}):
            want = mha(x, x, x, need_weights=False, **kwargs)[0]
            got = new(x, x, x, need_weights=False, **kwargs)[0]
            assert (want - got).abs().max() < 1e-5, kwargs


@pytest.mark.parametrize("model", ["vit", "encoder"])
def test_the_residual_stream_is_reported_once_per_model(model: str) -> None:
    net, shape = (_vit(), VIT) if model == "vit" else (_encoder(), TOKENS)
    layers = [b for b in net.modules() if isinstance(b, nn.Linear) and b.out_features == 32
              and b.in_features == 64]                  # every block's second MLP layer writes the stream
    assert len(layers) == 2
    with torch.no_grad():
        for layer in layers:                              # output masks on the stream's features
            layer.weight[:5] = 0
            layer.bias[:5] = 0
    plan = make_plan(net, as_inputs(shape))
    whole = plan.groups_kept_whole()
    stream = [g for g in whole if g["reason"].startswith("the residual stream")]
    assert len(stream) == 1 and stream[0]["id"].startswith("residual stream"), whole
    pruned = apply_plan(net, plan)
    assert all(pruned.get_submodule(n).out_features == 32 for n, m in net.named_modules() if m in layers)
    assert _error(net, pruned, shape) < 1e-5


def test_timm_attention_loses_whole_heads_through_the_whole_build(tmp_path) -> None:
    """timm's Attention (one fused qkv Linear reshaped into heads): a head whose value rows are masked,
    and one whose proj columns are, go whole; the build verifies the ONNX file against the reference."""
    pytest.importorskip("timm", reason="timm is in the test extra")
    import json

    from safetensors.torch import save_file

    from spa_export import BuildOptions, LayerSpa, build, make_spa, write_spa
    from spa_export.pack.synth import random_base

    arch, shape = "timm.models.vision_transformer:test_vit", (1, 3, 160, 160)
    base = random_base(arch, as_inputs(shape), seed=0)
    d = 32                                    # test_vit: 2 heads of 32 per block, width 64
    v_rows = torch.ones(192, dtype=torch.bool)
    v_rows[128 + d:128 + 2 * d] = False       # head 1's value rows of block 0
    proj_cols = torch.ones(64, dtype=torch.bool)
    proj_cols[:d] = False                     # head 0's columns of block 1's output projection
    spa = make_spa([LayerSpa("blocks.0.attn.qkv", out_mask=v_rows), LayerSpa("blocks.1.attn.proj", in_mask=proj_cols)],
                   task="heads", arch=arch)
    save_file(base, str(tmp_path / "base.safetensors"))
    write_spa(spa, tmp_path / "heads.spa")
    report = build(BuildOptions(base=tmp_path / "base.safetensors", spa=tmp_path / "heads.spa",
                                out=tmp_path / "out", input_shape=shape, arch=arch, quiet=True)).report
    assert report["verification"]["passed"]
    heads = report["plan"]["attention"]
    assert heads["blocks.0.attn"]["heads_kept"] == [0] and heads["blocks.1.attn"]["heads_kept"] == [1]
    import onnx

    dims = [list(i.dims) for i in onnx.load(tmp_path / "out" / "model.onnx").graph.initializer]
    # the two pruned blocks: qkv 64 -> 96 (3 x one head), proj 32 -> 64; the other four keep 192 and 64
    assert dims.count([64, 96]) == 2 and dims.count([32, 64]) == 2, json.dumps(dims)
    assert report["params"]["pruned"] < report["params"]["dense"]


def test_timm_attention_narrows_its_heads_to_one_width_through_the_whole_build(tmp_path) -> None:
    """timm's Attention keeps both heads of block 0 but narrows them: query rows masked (so the
    score's channels go, with their keys) and value rows masked, to one width for query, key and
    value (12: the most any head needs); its scale stays that of the original width (32), and the
    build verifies the ONNX file against the reference."""
    pytest.importorskip("timm", reason="timm is in the test extra")
    import onnx
    from safetensors.torch import save_file

    from spa_export import BuildOptions, LayerSpa, build, make_spa, write_spa
    from spa_export.pack.synth import random_base

    arch, shape = "timm.models.vision_transformer:test_vit", (1, 3, 160, 160)
    base = random_base(arch, as_inputs(shape), seed=0)
    rows = torch.ones(192, dtype=torch.bool)       # q 0-63, k 64-127, v 128-191; heads of 32
    rows[0:20] = rows[32:52] = False                 # 20 query channels of each head
    rows[128:148] = rows[160 + 12:192] = False       # 20 value channels of each head
    spa = make_spa([LayerSpa("blocks.0.attn.qkv", out_mask=rows)], task="narrow", arch=arch)
    save_file(base, str(tmp_path / "base.safetensors"))
    write_spa(spa, tmp_path / "narrow.spa")
    report = build(BuildOptions(base=tmp_path / "base.safetensors", spa=tmp_path / "narrow.spa",
                                out=tmp_path / "out", input_shape=shape, arch=arch, quiet=True)).report
    assert report["verification"]["passed"]
    heads = report["plan"]["attention"]["blocks.0.attn"]
    assert (heads["heads_kept"], heads["qk_dim"], heads["v_dim"]) == ([0, 1], 12, 12), heads
    assert "kept_beyond_masks" not in heads
    dims = [list(i.dims) for i in onnx.load(tmp_path / "out" / "model.onnx").graph.initializer]
    assert dims.count([64, 72]) == 1 and dims.count([24, 64]) == 1, dims   # qkv 3 x 2 x 12, proj reads 24


@pytest.mark.parametrize(("qk_norm", "width"), [(False, 12), (True, 32)])
def test_timm_attention_with_query_key_norm_keeps_its_head_width(qk_norm: bool, width: int) -> None:
    """A norm over each head's query and key channels mixes them: those heads keep their width."""
    pytest.importorskip("timm", reason="timm is in the test extra")
    from timm.layers.attention import Attention

    torch.manual_seed(0)
    att = Attention(64, num_heads=2, qk_norm=qk_norm, norm_layer=nn.LayerNorm).eval()
    with torch.no_grad():
        att.qkv.weight[0:20] = att.qkv.weight[32:52] = 0       # query channels of both heads
        att.qkv.weight[128:148] = att.qkv.weight[172:192] = 0  # value channels of both heads
    plan = plan_heads("att", att, weights_read=False)
    assert plan.heads == [0, 1] and len(plan.qk[0]) == len(plan.v[0]) == width
    assert (plan.kept_beyond_masks is None) == (not qk_norm)
    pruned = prune_attention(att, plan)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        assert torch.allclose(att(x), pruned(x), atol=1e-5)


def _hieradet(dim: int) -> nn.Module:
    from timm.models.hieradet_sam2 import MultiScaleAttention

    return MultiScaleAttention(dim, dim, num_heads=4, q_pool=nn.MaxPool2d(2))


def _hiera_global(dim: int) -> nn.Module:
    from timm.models.hiera import MaskUnitAttention

    return MaskUnitAttention(dim, dim, heads=4, q_stride=4, window_size=0, use_mask_unit_attn=False)


def _hiera_units(dim: int) -> nn.Module:
    from timm.models.hiera import MaskUnitAttention

    return MaskUnitAttention(dim, dim, heads=4, q_stride=1, window_size=4, use_mask_unit_attn=True)


@pytest.mark.parametrize(("make", "shape"), [(_hieradet, (2, 4, 4, 32)), (_hiera_global, (2, 16, 32)),
                                             (_hiera_units, (2, 16, 32))])
@pytest.mark.parametrize("fused", [True, False])
def test_timm_attention_classes_with_the_fused_layout_lose_heads_and_narrow(make, shape, fused: bool) -> None:
    """Hiera's and SAM2-Hiera's attention (``qkv`` rows of query, key and value, heads x width; the
    head count, width and their product read from attributes): head 2 goes whole (its values are
    masked) and the others narrow to the widest need (value channels 0-2 of every head masked)."""
    pytest.importorskip("timm", reason="timm is in the test extra")
    torch.manual_seed(0)
    att = make(32).eval()
    att.fused_attn = fused
    d = 8
    with torch.no_grad():
        att.qkv.weight[64 + 2 * d:64 + 3 * d] = 0          # head 2's value rows
        att.qkv.bias[64 + 2 * d:64 + 3 * d] = 0
        for h in range(4):
            att.qkv.weight[64 + h * d:64 + h * d + 3] = 0  # value channels 0-2 of every head
            att.qkv.bias[64 + h * d:64 + h * d + 3] = 0
            att.qkv.weight[h * d:h * d + 4] = 0            # query channels 0-3 of every head
            att.qkv.bias[h * d:h * d + 4] = 0
    plan = plan_heads("att", att, weights_read=False)
    assert plan.heads == [0, 1, 3] and len(plan.qk[0]) == len(plan.v[0]) == 5   # max(8 - 4, 8 - 3)
    pruned = prune_attention(att, plan)
    assert pruned.qkv.out_features == 3 * 3 * 5 and pruned.proj.in_features == 15 and att.qkv.out_features == 96
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), att(x), rtol=1e-5, atol=1e-5)


def test_tnt_attention_with_separate_query_key_and_value_projections_loses_heads_and_narrows() -> None:
    """TNT's attention: ``qk`` holds query and key rows, ``v`` the values; the same plan as above."""
    pytest.importorskip("timm", reason="timm is in the test extra")
    from timm.models.tnt import Attention

    torch.manual_seed(0)
    att = Attention(32, 32, num_heads=4, qkv_bias=True).eval()
    d = 8
    with torch.no_grad():
        att.v.weight[2 * d:3 * d] = 0                      # head 2's value rows
        att.v.bias[2 * d:3 * d] = 0
        for h in range(4):
            att.v.weight[h * d:h * d + 3] = 0              # value channels 0-2 of every head
            att.v.bias[h * d:h * d + 3] = 0
            att.qk.weight[32 + h * d:32 + h * d + 4] = 0   # key channels 0-3 of every head
            att.qk.bias[32 + h * d:32 + h * d + 4] = 0
    plan = plan_heads("att", att, weights_read=False)
    assert plan.heads == [0, 1, 3] and len(plan.qk[0]) == len(plan.v[0]) == 5
    pruned = prune_attention(att, plan)
    assert (pruned.qk.out_features, pruned.v.out_features, pruned.proj.in_features) == (30, 15, 15)
    assert (pruned.num_heads, pruned.head_dim, att.num_heads) == (3, 5, 4)
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), att(x), rtol=1e-5, atol=1e-5)
