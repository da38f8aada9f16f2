"""The edge layout's stage: a verified ``model.onnx`` as a delta on the base.

Every weight of the exported file is matched with where it came from: a base
tensor (or the SPA's override of it), merged with its layer's adapter and
masks where the SPA adapts the layer, and sliced to the channels the plan
keeps. A weight is described that way only where the description gives its
bytes exactly; any other (folded constants, biases that absorbed them,
attention projections, grouped convolutions) is stored as it is. The delta is
accepted only once :func:`spa_export.runtime.delta.materialize` has rebuilt
the verified file from it byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spa_export.runtime.delta import (
    FORMAT,
    RECIPES,
    SKELETON,
    VERSION,
    Delta,
    deflate,
    delta_bytes,
    make_weight,
    materialize,
)
from spa_export.safety.errors import BuildError
from spa_export.safety.ownership import sha256_bytes
from spa_export.spa import SpaFile
from spa_export.stages.plan.model import PrunePlan


@dataclass
class DeltaReport:
    weights: int
    from_base: int
    stored: int
    stored_elements: int
    bytes: int
    model_bytes: int

    def to_json(self) -> dict:
        return self.__dict__.copy()


def numpy_state(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The base's tensors as numpy arrays (views where the dtype allows), as a device reads them."""
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16:
            out[k] = v.detach().cpu().contiguous().numpy()
    return out


def make_delta(model_path: Path, plan: PrunePlan, base: Mapping[str, np.ndarray], spa: SpaFile, *,
               base_digest: str, task: str) -> tuple[bytes, DeltaReport]:
    """The delta file's bytes for the verified ``model_path``; checked to rebuild it exactly."""
    import onnx
    from onnx import numpy_helper

    data = model_path.read_bytes()
    model = onnx.load_from_string(data)
    overrides = {k: v.detach().cpu().numpy() for k, v in spa.overrides.items()}
    tensors: dict[str, np.ndarray] = {}
    indices: dict[bytes, str] = {}
    recipes = []
    stored_elements = 0
    for init in model.graph.initializer:
        want = numpy_helper.to_array(init)
        recipe = _describe(init.name, want, plan, base, overrides, spa, tensors, indices)
        if recipe is None:
            little = want.astype(want.dtype.newbyteorder("<"), copy=False)
            recipe = {"name": init.name, "from": "raw", "dtype": little.dtype.str, "shape": list(want.shape)}
            tensors[f"raw/{init.name}"] = deflate(np.ascontiguousarray(little).tobytes())
            stored_elements += want.size
        recipes.append(recipe)
        init.ClearField("raw_data")
    tensors = _referenced(tensors, recipes)
    tensors[SKELETON] = deflate(model.SerializeToString())
    tensors[RECIPES] = deflate(json.dumps(recipes, sort_keys=True, separators=(",", ":")).encode())
    meta = {"format": FORMAT, "version": VERSION, "task": task, "base_digest": base_digest,
            "model_sha256": sha256_bytes(data), "weights": len(recipes)}
    delta = Delta(meta, tensors)
    rebuilt = materialize(delta, base, where=f"delta of task '{task}'")
    if rebuilt != data:
        raise BuildError(f"task '{task}': the delta does not rebuild the verified model.onnx byte for byte "
                         f"({sha256_bytes(rebuilt)} against {meta['model_sha256']})")
    out = delta_bytes(delta)
    from_base = sum(r["from"] == "base" for r in recipes)
    return out, DeltaReport(len(recipes), from_base, len(recipes) - from_base, stored_elements, len(out), len(data))


def _describe(name: str, want: np.ndarray, plan: PrunePlan, base: Mapping[str, np.ndarray],
              overrides: Mapping[str, np.ndarray], spa: SpaFile, tensors: dict[str, np.ndarray],
              indices: dict[bytes, str]) -> dict | None:
    """How the weight ``name`` is made from the base, or None where no description gives its bytes."""
    key = next((k for k in (name, name.replace(".module.", ".")) if k in base or k in overrides), None)
    if key is None or "." not in key:
        return None
    module, param = key.rsplit(".", 1)
    source = overrides.get(key, base.get(key))
    recipe: dict = {"name": name, "from": "base", "key": key}
    layer = spa.layers.get(module)
    if layer is not None and param in ("weight", "bias"):
        weight_key = f"{module}.weight"
        weight = overrides.get(weight_key, base.get(weight_key))
        if weight is None or weight.ndim < 2:
            return None
        bias_key = f"{module}.bias" if (f"{module}.bias" in base or f"{module}.bias" in overrides) else None
        groups = layer.in_mask.numel() // weight.shape[1] if layer.in_mask is not None else 1
        recipe.update(layer=module, weight=weight_key, bias=bias_key, groups=int(groups))
    mp = plan.modules.get(module)
    axes: list[list[int] | None] = [None] * source.ndim
    if mp is not None and source.ndim >= 1:
        axes[0] = mp.out_keep
        if source.ndim >= 2 and mp.kind in ("conv", "linear"):
            axes[1] = mp.in_keep
    recipe["index"] = [None if keep is None else _index_name(keep, tensors, indices) for keep in axes]
    for k, v in _layer_tensors(recipe.get("layer"), spa).items():
        tensors.setdefault(k, v)
    for k in (recipe["key"], recipe.get("weight"), recipe.get("bias")):
        if k is not None and k in overrides:
            tensors.setdefault(f"override/{k}", np.ascontiguousarray(overrides[k]))
    try:
        got = make_weight(recipe, tensors, base, "build")
    except Exception:   # a description that does not even run: the weight is stored as it is
        return None
    if got.shape != want.shape or np.ascontiguousarray(got.astype(want.dtype)).tobytes() != want.tobytes():
        return None
    return recipe


def _referenced(tensors: dict[str, np.ndarray], recipes: list[dict]) -> dict[str, np.ndarray]:
    """The tensors some recipe reads (a description tried and given up leaves its tensors behind)."""
    used = set()
    for r in recipes:
        if r["from"] == "raw":
            used.add(f"raw/{r['name']}")
            continue
        used.update(f"index/{i}" for i in r["index"] if i is not None)
        used.update(f"override/{k}" for k in (r["key"], r.get("weight"), r.get("bias")) if k is not None)
    layers = {f"layer/{r['layer']}/" for r in recipes if r.get("layer")}
    return {k: v for k, v in tensors.items() if k in used or k[:k.rfind("/") + 1] in layers}


def _index_name(keep: list[int], tensors: dict[str, np.ndarray], indices: dict[bytes, str]) -> str:
    array = np.asarray(keep, dtype=np.int64)
    digest = hashlib.sha256(array.tobytes()).digest()
    if digest not in indices:
        indices[digest] = str(len(indices))
        tensors[f"index/{indices[digest]}"] = array
    return indices[digest]


def _layer_tensors(module: str | None, spa: SpaFile) -> dict[str, np.ndarray]:
    if module is None:
        return {}
    out = {}
    for f, v in spa.layers[module].field_tensors().items():
        array = v.detach().cpu().numpy()
        out[f"layer/{module}/{f}"] = array.astype(np.uint8) if array.dtype == np.bool_ else array
    return out
