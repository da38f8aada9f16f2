"""Base digest: checked against an independent, literal implementation of the spec text."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spa_export.safety.errors import InputError
from spa_export.spa import file_sha256, safetensors_dtype_name, state_dict_digest


def test_digest_matches_hand_computation() -> None:
    sd = {
        "b": torch.tensor([1.0, -2.5], dtype=torch.float32),
        "A": torch.tensor([[1, 2], [3, -4]], dtype=torch.int64),
        "ä.scale": torch.tensor(3.5, dtype=torch.float16),  # scalar: empty shape
        "m": torch.tensor([True, False, True]),
        "h": torch.tensor([1.0, -2.0], dtype=torch.bfloat16),
    }
    # code point order: "A" (65) < "b" (98) < "h" (104) < "m" (109) < "ä" (228)
    h = hashlib.sha256()
    h.update(b"A|I64|2,2\n" + struct.pack("<4q", 1, 2, 3, -4))
    h.update(b"b|F32|2\n" + struct.pack("<2f", 1.0, -2.5))
    h.update(b"h|BF16|2\n" + bytes([0x80, 0x3F, 0x00, 0xC0]))  # bf16: upper halves of the f32s
    h.update(b"m|BOOL|3\n" + bytes([1, 0, 1]))
    h.update("ä.scale|F16|\n".encode() + struct.pack("<e", 3.5))
    assert state_dict_digest(sd) == "sha256:" + h.hexdigest()


def test_digest_of_empty_state_dict() -> None:
    assert state_dict_digest({}) == "sha256:" + hashlib.sha256().hexdigest()


def _small_net_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)
    )
    net(torch.randn(2, 3, 3, 3))  # BN statistics and num_batches_tracked (an I64 scalar) move
    return net.state_dict()


def test_same_digest_from_safetensors_and_torch_save(tmp_path: Path) -> None:
    sd = _small_net_state()
    assert sd["1.num_batches_tracked"].shape == ()
    save_file(sd, tmp_path / "base.safetensors")
    torch.save(sd, tmp_path / "base.pt")
    from_st = load_file(tmp_path / "base.safetensors")
    from_pt = torch.load(tmp_path / "base.pt", weights_only=True)
    d = state_dict_digest(sd)
    assert state_dict_digest(from_st) == d
    assert state_dict_digest(from_pt) == d
    # insertion order does not matter
    assert state_dict_digest(dict(reversed(list(sd.items())))) == d
    # the file hashes differ, the digest does not
    assert file_sha256(tmp_path / "base.safetensors") != file_sha256(tmp_path / "base.pt")


def test_digest_sensitivity() -> None:
    sd = _small_net_state()
    d = state_dict_digest(sd)
    changed = dict(sd)
    changed["4.bias"] = sd["4.bias"].clone()
    changed["4.bias"][0] += 1e-3
    assert state_dict_digest(changed) != d
    renamed = {("x" + k if k == "4.bias" else k): v for k, v in sd.items()}
    assert state_dict_digest(renamed) != d
    as_f64 = {k: (v.double() if k == "4.bias" else v) for k, v in sd.items()}
    assert state_dict_digest(as_f64) != d
    reshaped = {k: (v.reshape(1, -1) if k == "4.bias" else v) for k, v in sd.items()}
    assert state_dict_digest(reshaped) != d


def test_non_contiguous_tensor_hashes_in_c_order() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    h = hashlib.sha256()
    h.update(b"w|F32|3,2\n" + struct.pack("<6f", 0, 3, 1, 4, 2, 5))
    assert state_dict_digest({"w": t.t()}) == "sha256:" + h.hexdigest()
    assert state_dict_digest({"w": t.t()}) == state_dict_digest({"w": t.t().contiguous()})


@pytest.mark.parametrize(
    "dtype,name",
    [
        (torch.float32, "F32"),
        (torch.float16, "F16"),
        (torch.bfloat16, "BF16"),
        (torch.float64, "F64"),
        (torch.int64, "I64"),
        (torch.int32, "I32"),
        (torch.int8, "I8"),
        (torch.uint8, "U8"),
        (torch.bool, "BOOL"),
        (torch.float8_e4m3fn, "F8_E4M3"),
    ],
)
def test_safetensors_dtype_name(dtype: torch.dtype, name: str) -> None:
    assert safetensors_dtype_name(dtype) == name


def test_unknown_dtype_name() -> None:
    with pytest.raises(InputError, match="dtype torch.complex128 has no safetensors name"):
        safetensors_dtype_name(torch.complex128)


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # more than one read chunk
    path.write_bytes(data)
    assert file_sha256(path) == "sha256:" + hashlib.sha256(data).hexdigest()
