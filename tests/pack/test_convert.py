"""``spa_export.pack.convert`` against the real ``sp_adapters`` library."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sp_adapters = pytest.importorskip("sp_adapters")
torchvision = pytest.importorskip("torchvision")

from spa_export.nets.arch import set_submodule  # noqa: E402
from spa_export.pack.convert import base_state_from_sp_adapters, from_sp_adapters  # noqa: E402
from spa_export.pack.synth import random_base  # noqa: E402
from spa_export.safety.errors import InputError  # noqa: E402
from spa_export.spa import state_dict_digest, write_spa  # noqa: E402
from spa_export.stages.reference import build_reference  # noqa: E402

ARCH = "torchvision:resnet18"
SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    return random_base(ARCH, SHAPE, seed=0)


def _adapt(kind: str, base: dict[str, torch.Tensor], seed: int = 1) -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(base)
    if kind == "splora":
        lib = sp_adapters.SPLoRA(model, rank=4, init_range=0.1)
    else:
        lib = sp_adapters.SPPaRA(model, init_range=0.1)
    _fill(lib, seed, 0.1 if kind == "splora" else 0.03)
    return lib.eval()


def _fill(model: nn.Module, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _x(shape: tuple[int, ...] = (2, 3, 32, 32), seed: int = 7) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    err, scale = float((got - want).abs().max()), float(want.abs().max())
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol} x output scale {scale:.3g}"


def _assert_differs(a: torch.Tensor, b: torch.Tensor) -> None:
    """The adapters matter: a test that ignored them would fail."""
    assert float((a - b).abs().max()) > 1e-2 * float(b.abs().max())


@pytest.mark.parametrize("kind", ["splora", "sppara"])
def test_resnet_matches_library(kind: str, base: dict[str, torch.Tensor]) -> None:
    lib = _adapt(kind, base)
    with torch.no_grad():  # the task trained the head's bias and a batch-norm
        lib.fc.bias.add_(torch.randn(1000, generator=torch.Generator().manual_seed(3)))
        lib.bn1.weight.mul_(1.5)
    spa = from_sp_adapters(lib, task="t", arch=ARCH, base_state=base)
    convs = [n for n, m in lib.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20
    assert sorted(spa.layers) == sorted(convs + (["fc"] if kind == "splora" else []))
    assert set(spa.overrides) == ({"bn1.weight"} if kind == "splora" else {"bn1.weight", "fc.bias"})
    assert spa.base_digest == state_dict_digest(base)
    if kind == "splora":
        assert spa.layers["fc"].adapter_bias is not None
        assert spa.layers["layer2.0.downsample.0"].rank == 4
    else:
        assert tuple(spa.layers["layer2.0.downsample.0"].pointwise.shape) == (64, 128)
    x = _x()
    with torch.no_grad():
        want = lib(x)
        got = build_reference(ARCH, base, spa)(x)
        plain = torchvision.models.resnet18(weights=None)
        plain.load_state_dict(base)
        _assert_differs(plain.eval()(x), want)
    _assert_close(got, want)


def test_splopa_mlp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from factories_convert import mlp

    torch.manual_seed(0)
    model = mlp()
    lib = sp_adapters.SPLoPA(model, num_prototypes=3, block_shape=(4, 4), prototype_rank=2)
    _fill(lib, 5, 0.5)
    lib.eval()
    spa = from_sp_adapters(lib, arch="factories_convert:mlp")
    layer = spa.layers["0"]
    assert tuple(layer.pos_weights.shape) == (6, 8, 4)  # 3 rank-2 prototypes -> 6 rank-1
    assert layer.block_size == (4, 4)
    x = _x((5, 16))
    with torch.no_grad():
        want = lib(x)
        got = build_reference("factories_convert:mlp", base_state_from_sp_adapters(lib), spa)(x)
        _assert_differs(model.eval()(x), want)
    _assert_close(got, want)


OUT_MASK = torch.ones(64, dtype=torch.bool)
OUT_MASK[[0, 3, 5, 8, 13, 21, 34, 55]] = False
IN_MASK = torch.ones(64, dtype=torch.bool)
IN_MASK[[3, 5, 7, 11, 40, 63]] = False
MASKS = {"layer1.0.conv1": (OUT_MASK, None), "layer1.0.conv2": (None, IN_MASK)}


def _masked_library(lib: nn.Module) -> nn.Module:
    """The library model with masked rows/columns of its adapted weights zeroed (no spa_export)."""
    out = copy.deepcopy(lib)
    with torch.no_grad():
        conv1 = out.layer1[0].conv1.to_module()
        conv1.weight[~OUT_MASK] = 0
        conv2 = out.layer1[0].conv2.to_module()
        conv2.weight[:, ~IN_MASK] = 0
    set_submodule(out, "layer1.0.conv1", conv1)
    set_submodule(out, "layer1.0.conv2", conv2)
    return out.eval()


def test_masks(base: dict[str, torch.Tensor]) -> None:
    lib = _adapt("splora", base)
    spa = from_sp_adapters(lib, masks=MASKS, arch=ARCH)
    assert tuple(spa.layers["layer1.0.conv1"].lora_cols.shape) == (56, 4)
    assert tuple(spa.layers["layer1.0.conv2"].lora_rows.shape) == (4, 58)
    assert torch.equal(spa.layers["layer1.0.conv1"].out_mask, OUT_MASK)
    x = _x()
    with torch.no_grad():
        want = _masked_library(lib)(x)
        got = build_reference(ARCH, base_state_from_sp_adapters(lib), spa)(x)
        _assert_differs(lib(x), want)
    _assert_close(got, want)


def test_build_end_to_end(base: dict[str, torch.Tensor], tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from safetensors.torch import save_file

    from spa_export.stages.pipeline import BuildOptions, build

    lib = _adapt("splora", base)
    base_state = base_state_from_sp_adapters(lib)
    save_file(base_state, tmp_path / "base.safetensors")
    write_spa(from_sp_adapters(lib, masks=MASKS, task="conv", arch=ARCH, base_state=base_state),
              tmp_path / "task.spa")
    result = build(BuildOptions(base=tmp_path / "base.safetensors", spa=tmp_path / "task.spa",
                                out=tmp_path / "out", input_shape=SHAPE, round_to=1, quiet=True))
    assert result.report["verification"]["passed"]
    # out-masked channels leave a batch-norm constant (spec case 3), in-masked ones are unread
    # by their only consumer (case 1): both kinds go
    removed = (~OUT_MASK) | (~IN_MASK)
    plan = result.report["plan"]["modules"]["layer1.0.conv1"]
    assert plan["out_keep"] == torch.nonzero(~removed).flatten().tolist()
    x = _x((1, 3, 32, 32), seed=11)
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = _masked_library(lib)(x)
    _assert_close(torch.from_numpy(np.asarray(got)), want, rtol=1e-4)


def test_grouped_adapter_is_stored_merged() -> None:
    """Version 1 has no grouped adapter: the library's update is kept exactly, as the merged weight."""
    grouped = sp_adapters.SPLoRA(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), rank=1, init_range=0.5).eval()
    base = {"0.weight": grouped[0].weight.detach().clone(), "0.bias": grouped[0].bias.detach().clone()}
    spa = from_sp_adapters(grouped, base_state=base)
    assert not spa.layers and torch.equal(spa.overrides["0.weight"], grouped[0].adapted_weight.detach())
    assert not torch.equal(spa.overrides["0.weight"], base["0.weight"])


def test_refuses_what_the_spec_cannot_hold() -> None:
    attention = sp_adapters.SPLoRA(nn.Sequential(nn.MultiheadAttention(8, 2)), rank=1)
    # the library's attention adapter has an SPA form: one layer per projection
    assert sorted(from_sp_adapters(attention).layers) == ["0.k_proj", "0.out_proj", "0.q_proj", "0.v_proj"]
    linear = sp_adapters.SPLoRA(nn.Sequential(nn.Linear(4, 4)), rank=1)
    with pytest.raises(InputError, match="no Linear or ConvNd"):
        from_sp_adapters(linear, masks={"nope": (None, None)})
    with pytest.raises(InputError, match=r"expected a mask of 4 entries \(1-D\), got shape \[3\]"):
        from_sp_adapters(linear, masks={"0": (torch.ones(3, dtype=torch.bool), None)})
