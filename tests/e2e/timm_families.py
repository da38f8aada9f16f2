"""The smallest model of every timm architecture family (a model module of timm), for the timm zoo.

``python tests/e2e/timm_families.py`` builds every registered model on the meta device (no memory,
no initialisation), counts its parameters and writes ``timm_families.json``: per family, the
model with the fewest, with timm's version. The zoo test reads that file, so it runs the same
models until someone regenerates it (after changing the pinned timm version in pyproject.toml).

A family whose smallest model cannot be judged from a random base takes the model ``INSTEAD`` names,
with the reason, in the file too.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = HERE / "timm_families.json"

#: family -> (model, why the smallest is not the zoo's): a random base must be decidable (its float32
#: output close to its float64 one), or no comparison with the reference can tell exact from not
INSTEAD = {
    "byoanet": ("botnet26t_256", "halonet_h1 (the smallest) and lambda_resnet26t are chaotic from a random "
                "base: outputs of 1e13 to 1e19 that float32's rounding of the weights changes by 50%, in "
                "float64 too; botnet26t_256's float32 output is within 1e-6 of its float64 one"),
}


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
        if module in INSTEAD:
            name, why = INSTEAD[module]
            with torch.device("meta"):
                params = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
            out[module] = {"model": name, "params": params, "instead_of": best[0] if best else None, "why": why}
        elif best is not None:
            out[module] = {"model": best[0], "params": best[1]}
    return {"timm": timm.__version__, "families": out}


def load() -> dict:
    return json.loads(FAMILIES.read_text())


if __name__ == "__main__":
    FAMILIES.write_text(json.dumps(smallest_per_family(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FAMILIES}")
