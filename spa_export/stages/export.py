"""torch -> ONNX with a dynamic batch axis, then ``onnx.checker`` and onnxsim.

The TorchScript-based exporter is used by default: for convolutional networks
it is several times faster than the dynamo exporter and writes one
self-contained file. Where it cannot express an operation, the dynamo
exporter is tried; ``exporter="dynamo"`` selects it from the start.
onnxsim's own random-input check is off; :mod:`spa_export.stages.verify` checks the
result against the reference instead.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spa_export.runtime.inputs import Inputs
from spa_export.safety.errors import BuildError

DEFAULT_OPSET = 17


@dataclass
class ExportReport:
    opset: int
    exporter: str
    simplified: bool
    nodes_before: int
    nodes_after: int
    bytes: int

    def to_json(self) -> dict:
        return self.__dict__.copy()


def export_onnx(model: nn.Module, inputs: Inputs, path: Path, *, opset: int = DEFAULT_OPSET,
                exporter: str = "torchscript", simplify: bool = True, keep_batchnorm: bool = False) -> ExportReport:
    """Export ``model`` to ``path`` (dynamic batch) and simplify it.

    ``keep_batchnorm``: batch-norm stays a node of its own instead of being folded into the
    convolution before it, so every weight keeps its layer's name and its base's values (the edge
    layout's deltas refer to them; ONNX Runtime and TensorRT fold it again when they load the file).

    ``inputs``: every input of the network (InputSpecs); the file's inputs
    carry their names, each with a dynamic batch axis.
    """
    import onnx

    specs = inputs
    example = tuple(torch.from_numpy(s.example(s.shape[0])) for s in specs)
    names = [s.name for s in specs]
    with torch.no_grad():
        sample = model(*example)
    outputs = [sample] if isinstance(sample, torch.Tensor) else list(sample)
    output_names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    clash = set(names) & set(output_names)
    if clash:
        raise BuildError(f"an input is named like an output of the exported file ({', '.join(sorted(clash))}): "
                         "rename the input")
    try:
        proto = _export(model, example, names, output_names, opset, exporter, keep_batchnorm)
    except BuildError as first:
        if exporter != "torchscript":
            raise
        # Some operations (adaptive pooling to a size that is not a factor of its input) only the
        # dynamo exporter can express: fall back to it, and say so in the report.
        try:
            proto = _export(model, example, names, output_names, opset, "dynamo", keep_batchnorm)
        except BuildError:
            raise first from None
        exporter = "dynamo (torchscript failed)"
    nodes_before = len(proto.graph.node)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:
        raise BuildError(f"the exported ONNX model does not pass onnx.checker: {err}") from err
    simplified = False
    if simplify:
        from onnxsim import simplify as onnxsim_simplify

        try:
            candidate, ok = onnxsim_simplify(proto, check_n=0, skip_shape_inference=False,
                                             skip_fuse_bn=keep_batchnorm)
        except Exception as err:  # onnxsim is an optimisation: keep the checked model
            warnings.warn(f"onnxsim failed, keeping the unsimplified model: {err}", stacklevel=2)
        else:
            if ok:
                proto, simplified = candidate, True
    data = proto.SerializeToString()
    path.write_bytes(data)
    # The dynamo exporter may keep a newer opset where it cannot convert down: record the real one.
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    return ExportReport(opset, exporter, simplified, nodes_before, len(proto.graph.node), len(data))


def _export(model: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str],
            opset: int, exporter: str, keep_batchnorm: bool = False):
    import onnx

    buffer = io.BytesIO()
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if exporter == "torchscript":
                training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
                torch.onnx.export(model, example, buffer, dynamo=False, opset_version=opset, training=training,
                                  input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, do_constant_folding=True)
                return onnx.load_from_string(buffer.getvalue())
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=1024)
                # Its progress lines and version-converter complaints are not ours to print.
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    program = torch.onnx.export(model, example, dynamo=True, opset_version=opset,
                                                input_names=input_names, output_names=output_names,
                                                dynamic_shapes=tuple({0: batch} for _ in example),
                                                external_data=False,
                                                verbose=False)
                return program.model_proto
        except Exception as err:
            raise BuildError(f"torch.onnx.export failed: {type(err).__name__}: {str(err)[:300]}") from err
    raise BuildError(f"unknown exporter '{exporter}' (torchscript or dynamo)")
