"""The largest activation of one sample of an ONNX model, from its shapes alone (no torch).

ONNX's shape inference gives every intermediate tensor's shape with the batch
axis symbolic; the largest one per sample bounds what a batch needs
(:func:`spa_export.safety.memory.check_fits`). Models whose shapes cannot be
inferred give no estimate.
"""

from __future__ import annotations

from pathlib import Path

from spa_export.safety.memory import Footprint

_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _per_sample(value_info: object) -> int:
    t = value_info.type.tensor_type  # type: ignore[attr-defined]
    dims = list(t.shape.dim)
    if not dims:
        return 0
    n = 1
    for i, d in enumerate(dims):
        if d.HasField("dim_value"):
            if i == 0:
                continue  # a fixed batch: per sample, as for a symbolic one
            n *= d.dim_value
        elif i != 0:
            return 0  # a dynamic axis besides the batch: unknown
    return n * _ITEMSIZE.get(t.elem_type, 4)


def activation_footprint(path: Path) -> Footprint | None:
    """The activation footprint per sample of the model at ``path``; None if unknown."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model ONNX cannot read or infer is reported by the runtime itself
        return None
    graph = inferred.graph
    sizes = [_per_sample(v) for v in [*graph.input, *graph.value_info, *graph.output]]
    if not sizes or not max(sizes):
        return None
    return Footprint(working=2 * max(sizes), total=sum(sizes))
