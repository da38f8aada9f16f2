"""inspect: what an SPA file holds, with the widths of its layers even without the base."""

from __future__ import annotations

from pathlib import Path

import torch

from spa_export.spa import LayerSpa, make_spa, write_spa
from spa_export.stages.inspect import inspect_spa


def test_widths_come_from_masks_or_adapters_without_the_base(tmp_path: Path) -> None:
    spa = make_spa([
        LayerSpa("head", lora_cols=torch.ones(10, 2), lora_rows=torch.ones(2, 64)),           # a head: no masks
        LayerSpa("conv", pointwise=torch.ones(8, 6), out_mask=torch.tensor([True] * 6 + [False] * 2)),
        LayerSpa("bias_only", adapter_bias=torch.ones(5)),
        LayerSpa("masks_only", in_mask=torch.tensor([True, False, True])),
    ], task="t")
    write_spa(spa, tmp_path / "t.spa")
    layers = {row["name"]: row for row in inspect_spa(tmp_path / "t.spa")["layers"]}
    assert (layers["head"]["out"], layers["head"]["out_kept"], layers["head"]["in"]) == (10, 10, 64)
    assert (layers["conv"]["out"], layers["conv"]["out_kept"], layers["conv"]["in"]) == (8, 6, 8)
    assert (layers["bias_only"]["out"], layers["bias_only"]["in"]) == (5, None)
    assert (layers["masks_only"]["out"], layers["masks_only"]["in"], layers["masks_only"]["in_kept"]) == (None, 3, 2)
