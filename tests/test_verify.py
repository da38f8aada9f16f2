from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spa_export.export import export_onnx
from spa_export.verify import verify


def _net(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5)).eval()


def test_exact_export_passes_with_explicit_tolerances(tmp_path):
    net = _net(0)
    export_onnx(net, (1, 3, 8, 8), tmp_path / "m.onnx")
    report = verify(net, tmp_path / "m.onnx", (1, 3, 8, 8), batches=(1, 4))
    assert report.passed and report.rtol == 1e-4 and report.atol_scale == 1e-4
    assert [c["batch"] for c in report.cases] == [1, 4]
    assert all(c["max_rel_err"] < 1e-5 for c in report.cases)


def test_wrong_network_fails_and_names_the_worst_element(tmp_path):
    net = _net(0)
    export_onnx(net, (1, 3, 8, 8), tmp_path / "m.onnx")
    wrong = _net(0)
    with torch.no_grad():
        wrong[3].bias[2] += 1.0
    report = verify(wrong, tmp_path / "m.onnx", (1, 3, 8, 8), batches=(2,))
    assert not report.passed
    assert report.worst["index"][1] == 2
    assert abs(report.worst["expected"] - report.worst["got"] - 1.0) < 1e-4
    assert report.cases[0]["mismatches"] == 2  # both samples, output 2


def test_user_inputs_are_checked(tmp_path):
    net = _net(1)
    export_onnx(net, (1, 3, 8, 8), tmp_path / "m.onnx")
    x = np.full((2, 3, 8, 8), 0.5, dtype=np.float32)
    report = verify(net, tmp_path / "m.onnx", (1, 3, 8, 8), batches=(), inputs=[("mine", x)])
    assert report.passed and report.cases[0]["name"] == "mine" and report.cases[0]["batch"] == 2


def test_dynamic_batch_axis(tmp_path):
    import onnx

    export_onnx(_net(0), (1, 3, 8, 8), tmp_path / "m.onnx")
    dim = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
