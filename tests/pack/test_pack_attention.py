"""From training to a verified build: an ``sp_adapters`` ViT with ``SPLoRAMultiheadAttention``.

SPLoRA of rank 4 on every Linear layer and attention of a small torchvision
VisionTransformer (the library adapts an attention's query, key and value
projections as SPLoRA layers of their own). One head of every attention is
pruned the way the channel experiments prune (its query, key and value rows
zeroed with ``torch.nn.utils.prune``, adapter rows and biases zeroed), and
half of every MLP's hidden channels. The state dict goes through ``spa-export
pack``; the build must be exact against the library network's own forward
pass, with the pruned heads and channels gone from the ONNX file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

sp_adapters = pytest.importorskip("sp_adapters")

from bad_inputs import invoke  # noqa: E402
from onnx_shapes import max_rel_error, onnx_weight_shapes  # noqa: E402

from spa_export.examples import prune_output_channels  # noqa: E402
from spa_export.pack import pack_model  # noqa: E402
from spa_export.pack.synth import random_base  # noqa: E402
from spa_export.spa import read_spa, spa_bytes  # noqa: E402

ARCH = "spa_export.examples:tiny_vit"
SHAPE = (1, 3, 32, 32)
LAYERS = ("encoder_layer_0", "encoder_layer_1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module, dict]:
    from spa_export.nets.arch import build_model

    root = tmp_path_factory.mktemp("vit")
    base = random_base(ARCH, SHAPE, seed=0)
    gen = torch.Generator().manual_seed(1)
    for key in base:
        if key.endswith(("in_proj_bias", "heads.head.weight")):     # PyTorch starts these at zero
            base[key] = torch.randn(base[key].shape, generator=gen) * 0.1
    net = build_model(ARCH)
    net.load_state_dict(base)
    lib = sp_adapters.SPLoRA(net, rank=4, init_range=0.1)
    with torch.no_grad():
        for name, p in lib.named_parameters():
            if ".adapter" in name:             # adapters as training leaves them: not small
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    for layer in LAYERS:
        attn = lib.encoder.layers.get_submodule(layer).self_attention
        assert type(attn).__name__ == "SPLoRAMultiheadAttention"
        with torch.no_grad():
            norms = attn.v_proj.adapted_weight.abs().sum(1).reshape(2, 16).sum(1)
        head = int(norms.argmin())             # the weaker of the two heads goes
        keep = torch.ones(32, dtype=torch.bool)
        keep[head * 16:(head + 1) * 16] = False
        for part in ("q_proj", "k_proj", "v_proj"):
            prune_output_channels(getattr(attn, part), keep)
        with torch.no_grad():
            attn.in_proj_bias.view(3, 32)[:, ~keep] = 0
        mlp = lib.encoder.layers.get_submodule(layer).mlp[0]
        with torch.no_grad():
            norms = mlp.adapted_weight.abs().sum(1)
        hidden = torch.zeros(64, dtype=torch.bool)
        hidden[torch.argsort(norms, descending=True)[:32]] = True
        prune_output_channels(mlp, hidden)
    lib.eval()
    save_file({k: v.contiguous() for k, v in base.items()}, str(root / "base.safetensors"))
    torch.save(lib.state_dict(), root / "adapted.pt")
    return root, lib, base


@pytest.fixture(scope="module")
def packed(trained: tuple[Path, nn.Module, dict]) -> tuple[Path, dict]:
    root, _, _ = trained
    result = invoke(["pack", "--arch", ARCH, "--base", str(root / "base.safetensors"), "--adapted",
                     str(root / "adapted.pt"), "--input-shape", "1,3,32,32", "--task", "vit",
                     "-o", str(root / "task.spa"), "--json", str(root / "pack.json")])
    assert result.exit_code == 0, result.stderr
    return root / "task.spa", json.loads((root / "pack.json").read_text())


def test_attention_projections_are_packed_as_layers(trained, packed) -> None:
    _, lib, base = trained
    spa_path, report = packed
    spa = read_spa(spa_path)
    for layer in LAYERS:
        prefix = f"encoder.layers.{layer}.self_attention"
        for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert spa.layers[f"{prefix}.{part}"].rank == 4
        for part in ("q_proj", "k_proj", "v_proj"):
            assert int(spa.layers[f"{prefix}.{part}"].out_mask.sum()) == 16
        assert spa.layers[f"{prefix}.q_proj"].adapter_bias is not None    # in_proj_bias was trained
    assert report["overrides"] == []                # the frozen in_proj_weight is the base's but for masks
    assert report["check"]["vs_masked_network"]["passed"] and report["check"]["vs_own_forward"]["passed"]
    assert spa_bytes(pack_model(lib, base, task="vit", arch=ARCH, input_shape=SHAPE).spa) == spa_path.read_bytes()


def test_the_build_is_exact_against_the_library_networks_own_forward_pass(trained, packed) -> None:
    root, lib, _ = trained
    spa_path, _ = packed
    out = root / "out"
    result = invoke(["build", "--base", str(root / "base.safetensors"), "--spa", str(spa_path),
                     "--input-shape", "1,3,32,32", "--out", str(out), "-q", "--round-to", "1"])
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert all(a["heads_kept"] and len(a["heads_kept"]) == 1 for a in report["plan"]["attention"].values())
    # q, k, v of one head (16 rows) and out_proj's 16 columns; MLPs with 32 hidden channels of 64
    assert onnx_weight_shapes(out / "model.onnx") == {(16, 32): 6, (32, 16): 2, (32, 32): 4, (32, 3, 8, 8): 1,
                                                      (10, 32): 1}
    per_layer = (3 * 16 * 32 + 3 * 16 + 32 * 16) + (32 * 32 + 32 + 32 * 32)    # a head, 32 hidden channels
    assert report["params"]["dense"] - report["params"]["pruned"] == 2 * per_layer
    weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(out / "model.onnx")).graph.initializer)
    assert weights <= report["params"]["pruned"]
    # the exported file against the library's own network, on new inputs (a zero output fails: nan)
    assert max_rel_error(out / "model.onnx", lib.eval(), (1, 3, 32, 32), seed=5) <= 1e-4
