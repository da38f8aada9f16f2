"""A package as an NVIDIA Triton Inference Server model repository (``--layout triton``).

Each task's folder becomes a model: ``<task>/1/model.onnx`` (version 1) and
``<task>/config.pbtxt`` naming the ONNX Runtime backend, the inputs and outputs
(shapes without the batch axis) and dynamic batching up to
:data:`MAX_BATCH_SIZE`. The reports stay in the task's folder, which Triton
ignores, and the package's manifest and summary at the top, likewise. A task
built with ``--quantize int8`` gets a second model beside it, ``<task>-int8``
(``<task>-int8/1/model.onnx`` and its ``config.pbtxt``): clients choose the
precision by model name, and both load at once.
"""

from __future__ import annotations

from pathlib import Path

MAX_BATCH_SIZE = 64

#: ONNX element type -> Triton data type.
_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
          6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
          12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}


def _tensor(value_info: object) -> str:
    t = value_info.type.tensor_type  # type: ignore[attr-defined]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in list(t.shape.dim)[1:]]
    name = value_info.name  # type: ignore[attr-defined]
    return (f'  {{\n    name: "{name}"\n    data_type: {_TYPES.get(t.elem_type, "TYPE_FP32")}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}')


def config_pbtxt(model_path: Path, name: str) -> str:
    """Triton's model configuration for the ONNX file at ``model_path`` (batch axis first, dynamic)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initialisers]
    sep = ",\n"
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
            f"input [\n{sep.join(_tensor(v) for v in inputs)}\n]\n"
            f"output [\n{sep.join(_tensor(v) for v in graph.output)}\n]\n"
            "dynamic_batching { }\n")


def to_triton_layout(folder: Path, name: str) -> None:
    """Turn a built task's folder into a Triton model: ``1/model.onnx`` and ``config.pbtxt``."""
    version = folder / "1"
    version.mkdir()
    (folder / "model.onnx").rename(version / "model.onnx")
    (folder / "config.pbtxt").write_text(config_pbtxt(version / "model.onnx", name), encoding="utf-8")
    int8 = folder / "model.int8.onnx"
    if int8.is_file():
        twin = int8_folder(folder)
        (twin / "1").mkdir(parents=True)
        int8.rename(twin / "1" / "model.onnx")
        (twin / "config.pbtxt").write_text(config_pbtxt(twin / "1" / "model.onnx", twin.name), encoding="utf-8")


def int8_folder(folder: Path) -> Path:
    """The Triton model folder of a task's int8 network: ``<task>-int8`` beside ``<task>``."""
    return folder.with_name(f"{folder.name}-int8")
