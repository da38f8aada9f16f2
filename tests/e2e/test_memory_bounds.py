"""Files that claim huge tensors are refused before anything of that size is allocated.

Each hostile file goes to a real ``spa-export build`` process; its peak
resident memory (``wait4``'s ``ru_maxrss``) must stay within a small margin of
an ordinary refused build's (an SPA of an unknown version: the same imports,
the same base read), however much the file claims: terabytes of tensor,
gigabytes of header, a zip entry that inflates a thousandfold, a YAML alias
bomb. This is the promise in README, section "Memory".
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import EXAMPLE_BASE, EXAMPLE_SPA, cli_command, cli_env
from safetensors import safe_open
from safetensors.torch import save as st_save

#: How far above an ordinary refused build a hostile one may peak (MiB).
MARGIN_MB = 64


def _peak(args: list[str], work: Path) -> tuple[int, float, str]:
    """Exit code, peak RSS in MiB and stderr of ``spa-export ARGS`` in a fresh process."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*cli_command(), *args, "--out", str(work / "out"), "-q"], stdout=subprocess.DEVNULL,
                                stderr=err, env=cli_env(extra={"OMP_NUM_THREADS": "1"}))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, usage.ru_maxrss / 1024, err.read().decode()


def _build(base: Path = EXAMPLE_BASE, spa: Path = EXAMPLE_SPA, *extra: str) -> list[str]:
    return ["build", "--base", str(base), "--spa", str(spa), "--input-shape", "1,3,32,32", *extra]


def _sparse(path: Path, head: bytes, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def _hostile(root: Path) -> dict[str, tuple[list[str], str]]:
    """Case -> (arguments, a fragment of the expected error)."""
    with safe_open(str(EXAMPLE_SPA), "pt") as f:
        meta = dict(f.metadata())
    state = {}
    with safe_open(str(EXAMPLE_BASE), "pt") as f:
        for k in f.keys():  # noqa: SIM118
            state[k] = f.get_tensor(k)
    cases: dict[str, tuple[list[str], str]] = {}

    # an SPA whose header claims a 2^40 x 2^40 mask over 16 bytes
    header = json.dumps({"__metadata__": meta, "stem.0.out_mask": {
        "dtype": "BOOL", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}).encode()
    spa = root / "claims.spa"
    spa.write_bytes(struct.pack("<Q", len(header)) + header + b"\x01" * 16)
    cases["spa claims 2^80 elements"] = (_build(spa=spa), "needs")

    # a 3 GiB (sparse) SPA and base whose header length is 0
    cases["3 GiB SPA, header length 0"] = (
        _build(spa=_sparse(root / "sparse.spa", struct.pack("<Q", 0), 3 * 2**30)), "header length 0")
    cases["3 GiB base, header length 0"] = (
        _build(base=_sparse(root / "sparse.safetensors", struct.pack("<Q", 0), 3 * 2**30)), "header length 0")

    # a safetensors base whose header claims a 64 GiB tensor the file does not hold
    big = json.dumps({"w": {"dtype": "F32", "shape": [2**34], "data_offsets": [0, 2**36]}}).encode()
    base = root / "claims.safetensors"
    base.write_bytes(struct.pack("<Q", len(big)) + big + b"\x00" * 64)
    cases["base claims 64 GiB"] = (_build(base=base), "out of range")

    # a .pt whose tensor is a view of 10^12 elements over 16 bytes
    view = root / "view.pt"
    torch.save({**state, "fc.weight": torch.zeros(4).as_strided((10**6, 10**6), (0, 0))}, str(view))
    cases["base view of 10^12 elements"] = (_build(view, EXAMPLE_SPA, "--ignore-base-digest"), "claims")

    # a .pt zip whose one entry inflates from about 0.5 MiB to 512 MiB
    bomb = root / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z, \
            z.open("bomb/data/0", "w", force_zip64=True) as member:
        zeros = bytes(1 << 20)
        for _ in range(512):
            member.write(zeros)
    cases["zip entry inflating 1000x"] = (_build(base=bomb), "is compressed")

    # a .npy input whose header claims 10^5 images
    npy = root / "claims.npy"
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 3, 32, 32), }"
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    npy.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + b"\x00" * 64)
    cases["npy claims 10^5 images"] = (_build(EXAMPLE_BASE, EXAMPLE_SPA, "--input", str(npy)), "claims shape")

    # a YAML alias bomb: 1 KB that expands to 10^10 values
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    recipe = root / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    cases["YAML alias bomb"] = (["build", str(recipe)], "expands to more than")
    return cases


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, float, str]]:
    root = tmp_path_factory.mktemp("hostile")
    cases = _hostile(root)
    unknown = root / "v2.spa"
    with safe_open(str(EXAMPLE_SPA), "pt") as f:
        unknown.write_bytes(st_save({k: f.get_tensor(k) for k in f.keys()},  # noqa: SIM118
                                    metadata={**f.metadata(), "spa.version": "2"}))
    cases["baseline: an SPA of an unknown version"] = (_build(spa=unknown), "spa.version '2'")

    def run(item: tuple[str, tuple[list[str], str]]) -> tuple[str, tuple[int, float, str]]:
        name, (args, _) = item
        work = root / f"work-{abs(hash(name))}"
        work.mkdir()
        return name, _peak(args, work)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(run, cases.items()))
    return {name: (*results[name], cases[name][1]) for name in cases}  # type: ignore[misc]


def test_hostile_files_are_refused_within_the_memory_of_an_ordinary_refusal(
        measured: dict[str, tuple[int, float, str, str]]) -> None:
    baseline = measured["baseline: an SPA of an unknown version"]
    assert baseline[0] == 2, baseline[2]
    report = []
    for name, (code, peak, stderr, expect) in measured.items():
        assert code == 2, f"{name}: exit {code}\n{stderr}"
        assert expect in stderr, f"{name}: {stderr}"
        report.append(f"{name}: {peak:.0f} MiB")
        assert peak <= baseline[1] + MARGIN_MB, f"{name}: peak {peak:.0f} MiB, baseline {baseline[1]:.0f} MiB"
    print("\n".join(report))


def test_the_bomb_really_inflates(tmp_path: Path) -> None:
    """The zip bomb of the case above is what it claims: 512 MiB from a small file."""
    bomb = tmp_path / "b.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z, \
            z.open("x", "w", force_zip64=True) as member:
        for _ in range(16):
            member.write(bytes(1 << 20))
    with zipfile.ZipFile(bomb) as z:
        assert z.infolist()[0].file_size == 16 << 20
    assert bomb.stat().st_size < (16 << 20) // 500
    assert np.frombuffer(zipfile.ZipFile(bomb).read("x"), dtype=np.uint8).size == 16 << 20
