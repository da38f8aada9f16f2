from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spa_export.runtime.inputs import as_inputs
from spa_export.stages.export import export_onnx
from spa_export.stages.verify import expected_outputs, verify, verify_against


def _net(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5)).eval()


def test_exact_export_passes_with_explicit_tolerances(tmp_path):
    net = _net(0)
    export_onnx(net, as_inputs((1, 3, 8, 8)), tmp_path / "m.onnx")
    report = verify(net, tmp_path / "m.onnx", as_inputs((1, 3, 8, 8)), batches=(1, 4))
    assert report.passed and report.rtol == 1e-4 and report.atol_scale == 1e-4
    assert [c["batch"] for c in report.cases] == [1, 4]
    assert all(c["max_rel_err"] < 1e-5 for c in report.cases)


def test_wrong_network_fails_and_names_the_worst_element(tmp_path):
    net = _net(0)
    export_onnx(net, as_inputs((1, 3, 8, 8)), tmp_path / "m.onnx")
    wrong = _net(0)
    with torch.no_grad():
        wrong[3].bias[2] += 1.0
    report = verify(wrong, tmp_path / "m.onnx", as_inputs((1, 3, 8, 8)), batches=(2,))
    assert not report.passed
    assert report.worst["index"][1] == 2
    assert abs(report.worst["expected"] - report.worst["got"] - 1.0) < 1e-4
    assert report.cases[0]["mismatches"] == 2  # both samples, output 2


def test_user_inputs_are_checked(tmp_path):
    net = _net(1)
    export_onnx(net, as_inputs((1, 3, 8, 8)), tmp_path / "m.onnx")
    x = np.full((2, 3, 8, 8), 0.5, dtype=np.float32)
    report = verify(net, tmp_path / "m.onnx", as_inputs((1, 3, 8, 8)), batches=(), inputs=[("mine", x)])
    assert report.passed and report.cases[0]["name"] == "mine" and report.cases[0]["batch"] == 2


def test_dynamic_batch_axis(tmp_path):
    import onnx

    export_onnx(_net(0), as_inputs((1, 3, 8, 8)), tmp_path / "m.onnx")
    dim = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"


class _Cancelling(nn.Module):
    """``(x + 1e4) - 1e4``: x itself, but float32 rounds it to steps of ~1e-3 (1e-4 x the output scale of ~4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1e4) - 1e4


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def test_a_float32_reference_that_rounds_badly_gets_a_float64_second_opinion(tmp_path):
    export_onnx(_Identity(), as_inputs((1, 3, 8, 8)), tmp_path / "exact.onnx")
    reference = _Cancelling()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32))
    rounding = float((reference(x) - x).abs().max()) / float(x.abs().max())
    assert rounding > 1e-4            # the float32 reference alone would fail the exact file
    report = verify(reference, tmp_path / "exact.onnx", as_inputs((1, 3, 8, 8)), batches=(1, 4))
    assert report.passed
    assert [c["reference"] for c in report.cases] == ["float64", "float64"]
    assert all(c["max_rel_err"] < 1e-6 for c in report.cases)
    assert next(reference.parameters(), None) is None and reference(x).dtype == torch.float32  # not changed


def test_a_wrong_file_fails_against_both_references(tmp_path):
    class _Off(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 1.001

    export_onnx(_Off(), as_inputs((1, 3, 8, 8)), tmp_path / "off.onnx")
    report = verify(_Cancelling(), tmp_path / "off.onnx", as_inputs((1, 3, 8, 8)), batches=(2,))
    assert not report.passed
    assert report.cases[0]["reference"] == "float32"   # no better judgement: the first one is kept
    assert report.cases[0]["mismatches"] > 0


def test_exact_cases_never_build_the_float64_reference(tmp_path, monkeypatch):
    import copy

    net = _net(0)
    export_onnx(net, as_inputs((1, 3, 8, 8)), tmp_path / "m.onnx")
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: (_ for _ in ()).throw(AssertionError("copied")))
    report = verify(net, tmp_path / "m.onnx", as_inputs((1, 3, 8, 8)), batches=(1, 4))
    assert report.passed and {c["reference"] for c in report.cases} == {"float32"}


class _Counting(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return self.net(x)


def test_the_random_batches_go_through_the_reference_in_one_pass(tmp_path):
    net = _net(2)
    counting = _Counting(net)
    expected = expected_outputs(counting, as_inputs((1, 3, 8, 8)), batches=(1, 4), seed=3,
                                inputs=[("mine", np.ones((2, 3, 8, 8), np.float32))])
    assert counting.batches == [5, 2]                       # 1 + 4 together, then the user's input
    assert [name for name, _ in expected.cases] == ["random batch 1", "random batch 4", "mine"]
    assert [o[0].shape[0] for o in expected.outputs] == [1, 4, 2]
    with torch.no_grad():                                   # each sample's output is its own
        for (_, x), outputs in zip(expected.cases, expected.outputs, strict=True):
            alone = net(torch.from_numpy(x["input"])).numpy()   # cases hold arrays by input name
            assert np.allclose(outputs[0], alone, rtol=1e-5, atol=1e-6)


def test_verify_against_asks_for_the_float64_reference_once_and_only_on_failure(tmp_path):
    export_onnx(_Identity(), as_inputs((1, 3, 8, 8)), tmp_path / "exact.onnx")
    expected = expected_outputs(_Cancelling(), as_inputs((1, 3, 8, 8)), batches=(1, 4))
    asked = []

    def reference64() -> nn.Module:
        asked.append(1)
        return _Cancelling().double()

    report = verify_against(expected, tmp_path / "exact.onnx", reference64=reference64)
    assert report.passed and asked == [1]                   # two failing cases, one network
    assert [c["reference"] for c in report.cases] == ["float64", "float64"]
    exact = expected_outputs(_Identity(), as_inputs((1, 3, 8, 8)), batches=(1, 4))
    assert verify_against(exact, tmp_path / "exact.onnx", reference64=reference64).passed and asked == [1]
    assert not verify_against(expected, tmp_path / "exact.onnx").passed   # no second opinion to ask


def test_an_output_that_is_zero_in_every_case_is_a_warning_not_a_silent_pass(tmp_path):
    net = _net(0)
    with torch.no_grad():
        net[-1].weight.zero_()          # the head as torchvision initialises ViT's: all zeros
        net[-1].bias.zero_()
    export_onnx(net, as_inputs((1, 3, 8, 8)), tmp_path / "zero.onnx")
    report = verify(net, tmp_path / "zero.onnx", as_inputs((1, 3, 8, 8)))
    assert report.passed and len(report.warnings) == 1
    assert report.warnings[0].startswith("output 'output' of the masked network is zero in every case")
    assert report.to_json()["warnings"] == report.warnings
    export_onnx(_net(0), as_inputs((1, 3, 8, 8)), tmp_path / "fine.onnx")
    fine = verify(_net(0), tmp_path / "fine.onnx", as_inputs((1, 3, 8, 8)))
    assert fine.passed and fine.warnings == [] and "warnings" not in fine.to_json()
