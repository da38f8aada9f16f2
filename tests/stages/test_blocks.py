"""SPLoPA block masks on a ViT's MLP: whole block rows and columns become channel removal, exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from onnx_shapes import max_rel_error, onnx_weight_shapes  # noqa: E402

from spa_export.pack.synth import random_base  # noqa: E402
from spa_export.report.markdown import block_summary  # noqa: E402
from spa_export.spa import LayerSpa, make_spa, write_spa  # noqa: E402
from spa_export.stages.pipeline import BuildOptions, build  # noqa: E402
from spa_export.stages.reference import build_reference  # noqa: E402

ARCH = "spa_export.examples:tiny_vit"
SHAPE = (1, 3, 32, 32)
MLP = "encoder.layers.encoder_layer_0.mlp"


def _splopa(out: int, in_: int, p: int, q: int, mask: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pos_weights": torch.randn(3, out // p, in_ // q, generator=g) * 0.1,
            "proto_cols": torch.randn(3, p, 1, generator=g), "proto_rows": torch.randn(3, 1, q, generator=g),
            "block_mask": mask}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict, object]:
    root = tmp_path_factory.mktemp("splopa")
    base = random_base(ARCH, SHAPE, seed=0)
    base["heads.head.weight"] = torch.randn(base["heads.head.weight"].shape, generator=torch.Generator().manual_seed(2))
    first = torch.rand(16, 4, generator=torch.Generator().manual_seed(3)) > 0.3   # blocks of 4 x 8
    first[:6] = False          # hidden channels 0..23: a whole row of blocks pruned (their bias stays)
    second = torch.rand(4, 16, generator=torch.Generator().manual_seed(4)) > 0.3  # blocks of 8 x 4
    second[:, 14:] = False     # hidden channels 56..63: no block of the second layer reads them
    second[:, :6] = True
    spa = make_spa([LayerSpa(f"{MLP}.0", **_splopa(64, 32, 4, 8, first, 5)),
                    LayerSpa(f"{MLP}.3", **_splopa(32, 64, 8, 4, second, 6))], {}, arch=ARCH)
    save_file(base, str(root / "base.safetensors"))
    write_spa(spa, root / "task.spa")
    report = build(BuildOptions(base=root / "base.safetensors", spa=root / "task.spa", out=root / "out",
                                input_shape=SHAPE, round_to=1, quiet=True)).report
    return root / "out", report, base, spa


def test_whole_block_rows_and_columns_are_removed_exactly(built) -> None:
    out, report, base, spa = built
    assert report["verification"]["passed"]
    assert max_rel_error(out / "model.onnx", build_reference(ARCH, base, spa), SHAPE) < 1e-4
    # both the zero rows (a constant GELU(bias), folded into the next bias) and the unread columns go
    gone = _gone(spa)
    assert gone[:24].all() and gone[56:].all()
    hidden = 64 - int(gone.sum())
    shapes = onnx_weight_shapes(out / "model.onnx")
    assert shapes[(hidden, 32)] == 1 and shapes[(32, hidden)] == 1
    assert shapes[(64, 32)] == 1 and shapes[(32, 64)] == 1         # the other layer's MLP stays whole
    assert report["plan"]["constant_folds"][0]["module"] == f"{MLP}.3"


def _gone(spa: object) -> torch.Tensor:
    """Hidden channels whose blocks the first layer prunes whole (rows) or the second never reads (columns)."""
    rows = ~spa.layers[f"{MLP}.0"].block_mask.any(1)
    cols = ~spa.layers[f"{MLP}.3"].block_mask.any(0)
    return rows.repeat_interleave(4) | cols.repeat_interleave(4)


def test_the_report_gives_block_density_and_removal(built) -> None:
    _, report, _, spa = built
    rows = {r["layer"]: r for r in report["blocks"]}
    first, second = rows[f"{MLP}.0"], rows[f"{MLP}.3"]
    assert first["blocks_kept"] == int(spa.layers[f"{MLP}.0"].block_mask.sum())
    assert first["density"] == pytest.approx(first["blocks_kept"] / 64)
    gone = int(_gone(spa).sum())
    assert (first["block_rows_pruned"], first["out_removed"], first["in_removed"]) == \
        (int((~spa.layers[f"{MLP}.0"].block_mask.any(1)).sum()), gone, 0)
    assert (second["block_cols_pruned"], second["in_removed"], second["out_removed"]) == \
        (int((~spa.layers[f"{MLP}.3"].block_mask.any(0)).sum()), gone, 0)
    text = block_summary(report["blocks"])
    assert text.startswith("2 block-masked layer(s)") and f"{2 * gone} channel(s) of these layers removed" in text
    assert "Block masks" in (Path(built[0]) / "report.md").read_text()
