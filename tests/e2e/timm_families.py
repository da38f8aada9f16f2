"""The smallest model of every timm architecture family (a model module of timm), for the timm zoo.

``python tests/e2e/timm_families.py`` builds every registered model on the meta device (no memory,
no initialisation), counts its parameters and writes ``timm_families.json``: per family, the
model with the fewest, with timm's version. The zoo test reads that file, so it runs the same
models until someone regenerates it (after changing the pinned timm version in pyproject.toml).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = HERE / "timm_families.json"


def smallest_per_family() -> dict:
    import timm
    import torch

    warnings.filterwarnings("ignore")
    out: dict[str, dict] = {}
    for module in timm.list_modules():
        best = None
        for name in timm.list_models(module=module):
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
            except Exception:   # a model that needs arguments or cannot be built on meta
                continue
            params = sum(p.numel() for p in model.parameters())
            if best is None or params < best[1]:
                best = (name, params)
        if best is not None:
            out[module] = {"model": best[0], "params": best[1]}
    return {"timm": timm.__version__, "families": out}


def load() -> dict:
    return json.loads(FAMILIES.read_text())


if __name__ == "__main__":
    FAMILIES.write_text(json.dumps(smallest_per_family(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FAMILIES}")
