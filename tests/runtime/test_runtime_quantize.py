"""ONNX Runtime's quantization as spa-export drives it: activation types, and 7-bit weights without VNNI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_onnx import make_conv

from spa_export.runtime import quantize


def _calibration() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize(("flags", "seven_bit"), [({"avx2", "avx512_vnni"}, False), ({"avx2"}, True)])
def test_u8s8_uses_7_bit_weights_only_where_vnni_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           flags: set, seven_bit: bool) -> None:
    monkeypatch.setattr(quantize, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(quantize.platform, "machine", lambda: "x86_64")
    src = make_conv(tmp_path / "m.onnx", 16)
    report = quantize.quantize_int8(src, tmp_path / "q.onnx", _calibration(), calibration_source="test")
    assert report.activations == "u8" and ("7-bit" in report.method) == seven_bit
    weights = [i for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    peak = max(int(np.abs(onnx.numpy_helper.to_array(w).astype(np.int32)).max()) for w in weights)
    assert peak <= 64 if seven_bit else peak > 64   # 7 bits: [-64, 63]; 8 bits use the whole range


def test_arm_gets_signed_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize.platform, "machine", lambda: "aarch64")
    assert quantize.choose_activations("auto")[0] == "s8"
    assert quantize.choose_activations("u8") == ("u8", "as asked (--int8-activations)")
