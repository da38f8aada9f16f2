"""End-to-end builds of torchvision models: exact against the masked network, and as small as the masks say.

For each architecture: a seeded random base with realistic batch-norm
statistics, then SPA files from ``synth`` in the three mask modes, each built
through the whole pipeline (ONNX export, onnxsim, verification). The tests
check the result independently of the pipeline's own verification: ONNX
Runtime against the reference network, and the exported weight shapes
against what the masks remove.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx_shapes import mask_weight_shapes, max_rel_error, onnx_weight_shapes
from safetensors.torch import save_file

from spa_export.nets.arch import build_model, resize_for_overrides
from spa_export.pack.synth import random_base, synth_spa
from spa_export.spa import write_spa
from spa_export.stages.pipeline import BuildOptions, build
from spa_export.stages.reference import build_reference

TOLERANCE = 1e-4

ARCHS = {
    "resnet18": (1, 3, 32, 32),
    "resnet50": (1, 3, 32, 32),
    "vgg16_bn": (1, 3, 32, 32),
    "mobilenet_v2": (1, 3, 32, 32),
    "densenet121": (1, 3, 32, 32),
    "efficientnet_b0": (1, 3, 32, 32),
}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch_case(request, tmp_path_factory):
    name = request.param
    arch, shape = f"torchvision:{name}", ARCHS[name]
    root = tmp_path_factory.mktemp(name)
    base = random_base(arch, shape, seed=0)
    base_path = root / "base.safetensors"
    save_file(base, str(base_path))
    return arch, shape, base, base_path, root, {}


def _build(arch_case, masks: str, **synth_kw):
    """Synthesize and build once per architecture and mask mode (cached across tests)."""
    arch, shape, base, base_path, root, cache = arch_case
    if masks not in cache:
        cache[masks] = _build_uncached(arch, shape, base, base_path, root, masks, **synth_kw)
    return cache[masks]


def _build_uncached(arch, shape, base, base_path, root, masks: str, **synth_kw):
    spa = synth_spa(arch, shape, prune=0.5, rank=4, seed=1, masks=masks, base_state=base, **synth_kw)
    spa_path = root / f"{masks}.spa"
    write_spa(spa, spa_path)
    out = root / f"out-{masks}"
    # round_to 1: the widths the masks ask for, exactly (the default rounds to the processor's block)
    report = build(BuildOptions(base=base_path, spa=spa_path, out=out, input_shape=shape, round_to=1,
                                quiet=True)).report
    reference = build_reference(arch, base, spa)
    return spa, out, report, reference


def _model_for(arch: str, spa):
    model = build_model(arch)
    resize_for_overrides(model, spa.overrides)
    return model


def test_group_masks_exact_and_shrunk(arch_case):
    arch, shape, *_ = arch_case
    spa, out, report, reference = _build(arch_case, "groups", num_classes=10)
    assert spa.overrides, "the head is resized by an override"
    assert report["verification"]["passed"]
    assert max_rel_error(out / "model.onnx", reference, shape) < TOLERANCE
    assert onnx_weight_shapes(out / "model.onnx") == mask_weight_shapes(_model_for(arch, spa), spa)
    assert report["params"]["pruned"] < 0.5 * report["params"]["dense"]


def test_output_masks_only_as_small_as_group_masks(arch_case):
    """The paper's masks: output masks alone leave batch-norm shifts behind (spec case 3)."""
    arch, shape, *_ = arch_case
    spa_g, out_g, _, _ = _build(arch_case, "groups", num_classes=10)
    spa, out, report, reference = _build(arch_case, "out-only", num_classes=10)
    assert all(layer.in_mask is None for layer in spa.layers.values())
    assert report["verification"]["passed"]
    assert max_rel_error(out / "model.onnx", reference, shape) < TOLERANCE
    assert onnx_weight_shapes(out / "model.onnx") == onnx_weight_shapes(out_g / "model.onnx")
    assert sum(g["removed_constant"] for g in report["groups"]) > 0
    assert report["plan"]["constant_folds"], "output-only masks must fold constants into consumers"


def test_random_masks_exact_but_less_shrunk(arch_case):
    arch, shape, *_ = arch_case
    if "vgg" in arch:
        pytest.skip("VGG's groups have one producer and one consumer each, so per-layer masks cannot "
                    "disagree within a group; its exactness with random masks is checked by the slow zoo "
                    "run (tests/e2e/test_zoo.py -m slow), not in CI, to spare a 130M-parameter build")
    spa, out, report, reference = _build(arch_case, "random")
    assert report["verification"]["passed"]
    assert max_rel_error(out / "model.onnx", reference, shape) < TOLERANCE
    assert report["params"]["pruned"] < report["params"]["dense"]
    if "vgg" not in arch:  # VGG's groups have one producer and one consumer: nothing can disagree
        kept = sum(n for g in report["groups"] for r, n in g["kept_reasons"].items()
                   if "depends on the input" in r)
        assert kept > 0, "channels whose masks disagree within a group must stay"


def test_report_contents(arch_case):
    _, out, report, _ = _build(arch_case, "groups", num_classes=10)
    assert report["schema_version"] == 1
    assert report["inputs"]["base"]["digest"].startswith("sha256:")
    assert report["inputs"]["spa"]["sha256"].startswith("sha256:")
    assert {s["name"] for s in report["stages"]} >= {"load", "reference", "merge", "plan", "apply", "export", "verify"}
    assert report["macs"]["pruned"] < report["macs"]["dense"]
    assert (out / "report.md").read_text().startswith("# spa-export report")
    assert Path(out / "model.onnx").stat().st_size > 0


@pytest.mark.parametrize(("name", "shape"), [("googlenet", (1, 3, 64, 64)), ("inception_v3", (1, 3, 80, 80))])
def test_checkpoint_of_the_default_constructor_with_auxiliary_heads(name: str, shape: tuple, tmp_path: Path) -> None:
    """torchvision's default GoogLeNet and Inception-v3 add training-only auxiliary heads: accepted,
    their entries dropped and listed in the report."""
    import torch
    import torchvision

    arch = f"torchvision:{name}"
    with torch.device("meta"):
        default = torchvision.models.get_model(name, weights=None)    # aux_logits=True, as users save it
    aux = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) if v.is_floating_point()
           else torch.zeros(v.shape, dtype=v.dtype)
           for k, v in default.state_dict().items() if k.startswith(("aux1.", "aux2.", "AuxLogits."))}
    assert aux
    state = {**random_base(arch, shape, seed=0), **aux}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "base.safetensors"))
    write_spa(synth_spa(arch, shape, prune=0.5, rank=4, seed=1, masks="out-only", base_state=state),
              tmp_path / "task.spa")
    report = build(BuildOptions(base=tmp_path / "base.safetensors", spa=tmp_path / "task.spa",
                                out=tmp_path / "out", input_shape=shape, quiet=True)).report
    dropped = report["inputs"]["base"]["dropped"]
    assert dropped["keys"] == len(aux) and dropped["why"].startswith("auxiliary classifier heads")
    assert report["verification"]["passed"] and report["params"]["pruned"] < report["params"]["dense"]
    import onnxruntime as ort  # the verification meant something: the output depends on the input

    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(3)).numpy()
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert abs(out[0] - out[1]).max() > 1e-3 * abs(out).max()
