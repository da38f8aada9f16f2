"""From training to a verified build: a real ``sp_adapters`` ResNet-18, masked the experiments' way.

SPLoRA of rank 8 on every layer of a torchvision ResNet-18, a new 10-class
head, and half of every convolution's output channels pruned as the paper's
channel experiments prune them (``torch.nn.utils.prune`` on the frozen
weight's rows, then ``prune.remove``; the adapter's rows zeroed; an
``output_mask`` on the layer). The state dict goes through ``spa-export
pack``; the SPA file must be under 5% of the base, and its build exact
against the library network's own forward pass, with the pruned weights gone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

sp_adapters = pytest.importorskip("sp_adapters")
torchvision = pytest.importorskip("torchvision")

from bad_inputs import invoke  # noqa: E402
from onnx_shapes import max_rel_error  # noqa: E402

from spa_export.examples import prune_output_channels  # noqa: E402
from spa_export.pack import pack_model  # noqa: E402
from spa_export.pack.synth import random_base  # noqa: E402
from spa_export.spa import read_spa, spa_bytes  # noqa: E402

ARCH = "torchvision:resnet18"
SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module, dict]:
    root = tmp_path_factory.mktemp("resnet18")
    base = random_base(ARCH, SHAPE, seed=0)
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(base)
    lib = sp_adapters.SPLoRA(net, rank=8, init_range=0.1)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lib.named_parameters():
            if ".adapter" in name:             # adapters as training leaves them: not small
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    lib.fc = nn.Linear(512, 10)                 # the task's head
    for mod in lib.modules():
        if isinstance(mod, nn.Conv2d):
            with torch.no_grad():
                norms = mod.adapted_weight.abs().flatten(1).sum(1)
            keep = torch.zeros(len(norms), dtype=torch.bool)
            keep[torch.argsort(norms, descending=True)[: len(norms) // 2]] = True
            prune_output_channels(mod, keep)
    lib.eval()
    save_file({k: v.contiguous() for k, v in base.items()}, str(root / "base.safetensors"))
    torch.save(lib.state_dict(), root / "adapted.pt")
    return root, root / "base.safetensors", lib, base


@pytest.fixture(scope="module")
def packed(trained: tuple[Path, Path, nn.Module, dict]) -> tuple[Path, dict]:
    root, base_path, _, _ = trained
    result = invoke(["pack", "--arch", ARCH, "--base", str(base_path), "--adapted", str(root / "adapted.pt"),
                     "--input-shape", "1,3,32,32", "--task", "r18", "-o", str(root / "task.spa"),
                     "--json", str(root / "pack.json")])
    assert result.exit_code == 0, result.stderr
    (root / "pack.out").write_text(result.stdout)
    return root / "task.spa", json.loads((root / "pack.json").read_text())


def test_pack_prints_counts_and_the_report_lists_every_entry(trained, packed) -> None:
    root = trained[0]
    lines = (root / "pack.out").read_text().splitlines()
    assert len(lines) == 3, lines          # the file, the counts, the check: not one line per mask or override
    assert lines[1] == ("  masks on 20 layer(s), 2,400 of 4,800 channels kept; 2 override(s) (a resized head: 2); "
                        "0 entry(ies) not stored (every one: --verbose or --json)"), lines[1]
    assert len(packed[1]["masks"]) == 20 and len(packed[1]["overrides"]) == 2


def test_the_spa_file_is_under_five_percent_of_the_base(trained, packed) -> None:
    _, base_path, _, _ = trained
    spa_path, report = packed
    assert spa_path.stat().st_size < 0.05 * base_path.stat().st_size, report["overrides"]
    # nothing of the frozen base is stored again: only the new head
    assert {o["key"]: o["reason"] for o in report["overrides"]} == {
        "fc.weight": "resized from [1000, 512] to [10, 512] (a new head)",
        "fc.bias": "resized from [1000] to [10] (a new head)"}
    assert len(report["masks"]) == 20
    assert all(m["out"]["source"] == "rows zeroed in its weight" and m["out"]["kept"] * 2 == m["out"]["of"]
               for m in report["masks"])
    assert report["check"]["vs_own_forward"]["passed"]
    spa = read_spa(spa_path)
    assert spa.layers["layer1.0.conv1"].rank == 8 and tuple(spa.layers["layer1.0.conv1"].lora_cols.shape) == (32, 8)


def test_the_api_writes_the_same_bytes_as_the_cli(trained, packed) -> None:
    _, _, lib, base = trained
    spa_path, _ = packed
    api = pack_model(lib, base, task="r18", arch=ARCH, input_shape=SHAPE)
    assert spa_bytes(api.spa) == spa_path.read_bytes()


def test_the_build_is_exact_against_the_library_networks_own_forward_pass(trained, packed) -> None:
    root, base_path, lib, _ = trained
    spa_path, _ = packed
    out = root / "out"
    result = invoke(["build", "--base", str(base_path), "--spa", str(spa_path), "--input-shape", "1,3,32,32",
                     "--out", str(out), "-q", "--bench", "cpu", "--batch", "1", "--budget", "0.05"])
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    # the pruned weights are gone, not zero: far fewer parameters in the file than in the dense one
    def weights(path: Path) -> int:
        return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)

    assert weights(out / "model.onnx") < 0.75 * weights(out / "dense.onnx")
    assert report["params"]["pruned"] < 0.75 * report["params"]["dense"]
    # the exported file against the library's own network, on new inputs (a zero output fails: nan)
    assert max_rel_error(out / "model.onnx", lib.eval(), (1, 3, 32, 32), seed=5) <= 1e-4
