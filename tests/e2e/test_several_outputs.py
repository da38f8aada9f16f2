"""A network with several outputs builds exactly: every output is verified."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file

from spa_export.pack.synth import random_base, synth_spa
from spa_export.spa import write_spa
from spa_export.stages.pipeline import BuildOptions, build
from spa_export.stages.reference import build_reference

ARCH = "spa_export.examples:two_heads"
SHAPE = (1, 3, 16, 16)


def test_two_outputs_are_both_exact(tmp_path):
    base = random_base(ARCH, SHAPE, seed=0)
    save_file(base, str(tmp_path / "base.safetensors"))
    spa = synth_spa(ARCH, SHAPE, prune=0.5, rank=2, seed=3, masks="out-only", base_state=base)
    write_spa(spa, tmp_path / "t.spa")
    report = build(BuildOptions(base=tmp_path / "base.safetensors", spa=tmp_path / "t.spa", out=tmp_path / "out",
                                input_shape=SHAPE, quiet=True)).report
    assert report["verification"]["passed"]
    assert {c["output"] for c in report["verification"]["cases"]} == {"output0", "output1"}
    # The trunk's first conv loses half its channels; the second feeds both heads and shrinks too.
    assert any(g["id"] == "trunk.0" and g["kept"] == 8 for g in report["groups"])
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, *SHAPE[1:])).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        expected = build_reference(ARCH, base, spa)(torch.from_numpy(x))
    assert len(got) == 2
    for g, e in zip(got, expected, strict=True):
        assert np.abs(g - e.numpy()).max() <= 1e-4 * np.abs(e.numpy()).max()
