"""--round-to auto: the multiple chosen for the processor and target, and how groups round."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from spa_export.runtime.environment import cpu_flags
from spa_export.runtime.inputs import as_inputs
from spa_export.safety.errors import InputError
from spa_export.safety.validate import round_to
from spa_export.stages.apply import apply_plan
from spa_export.stages.plan import make_plan
from spa_export.stages.plan.rounding import GPU_MULTIPLE, cpu_block, resolve


@pytest.mark.parametrize(("machine", "flags", "block"), [
    ("x86_64", {"sse2", "avx", "avx2", "avx512f"}, 16),
    ("x86_64", {"sse2", "avx", "avx2"}, 8),
    ("AMD64", {"avx"}, 8),
    ("x86_64", {"sse2", "sse4_2"}, 1),
    ("aarch64", {"neon", "avx512f"}, 1),  # no blocked layout off x86, whatever the flags say
])
def test_cpu_block(machine: str, flags: set[str], block: int) -> None:
    got, why = cpu_block(machine, flags)
    assert got == block and why


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\nbugs\t: x\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "absent") == set()


def test_resolve_for_each_target() -> None:
    avx512 = {"avx2", "avx512f"}
    assert resolve(8, "cpu").multiple == 8 and resolve(8, "cpu").round_small
    cpu = resolve("auto", "cpu", machine="x86_64", flags=avx512)
    assert (cpu.multiple, cpu.round_small, cpu.requested) == (16, False, "auto")
    assert "AVX-512F" in cpu.why
    assert resolve("auto", "none", machine="x86_64", flags={"avx2"}).multiple == 8
    gpu = resolve("auto", "gpu", machine="x86_64", flags=avx512)
    assert gpu.multiple == GPU_MULTIPLE == 8 and "tensor cores" in gpu.why
    assert resolve("auto", "all", machine="x86_64", flags=avx512).multiple == 16
    assert resolve("auto", "all", machine="aarch64", flags=set()).multiple == 8
    assert resolve("auto", "cpu", machine="aarch64", flags=set()).multiple == 1
    assert cpu.to_dict()["groups_below_one_multiple"] == "left as the masks ask"
    # auto's rule pinned: the same on any machine, and what auto gives where the block is 16
    for machine, flags in (("x86_64", avx512), ("x86_64", {"avx2"}), ("aarch64", set())):
        pinned = resolve("auto:16", "cpu", machine=machine, flags=flags)
        assert (pinned.multiple, pinned.round_small, pinned.requested) == (16, False, "auto:16")


def test_a_pinned_auto_gives_the_models_auto_gives_where_the_block_is_that_wide() -> None:
    """round_to 16 rounds a group narrower than 16 up; auto (16) and auto:16 leave it as the masks ask."""
    shape = [1, 3, 4, 4]
    auto = make_plan(_two_groups(), as_inputs(shape), round_to=resolve("auto", "cpu", machine="x86_64",
                                                                       flags={"avx512f"}).multiple, round_small=False)
    pinned_rule = resolve("auto:16", "cpu", machine="aarch64", flags=set())
    pinned = make_plan(_two_groups(), as_inputs(shape), round_to=pinned_rule.multiple,
                       round_small=pinned_rule.round_small)
    plain = make_plan(_two_groups(), as_inputs(shape), round_to=16)
    kept = [sorted(g.kept for g in p.groups if g.channels == 32) for p in (auto, pinned, plain)]
    assert kept == [[5, 32], [5, 32], [16, 32]]


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("8", 8), (16, 16),
                                                 ("auto:16", "auto:16"), ("Auto: 8", "auto:8")])
def test_round_to_values(value: object, expected: object) -> None:
    assert round_to(value, "--round-to") == expected


@pytest.mark.parametrize(("value", "message"), [
    ("fast", "--round-to: expected 'auto', 'auto:N' or an integer, got a string 'fast'"),
    ("0", "--round-to 0: must be between 1 and 1024"),
    ("auto:0", "--round-to 0: must be between 1 and 1024"),
    ("auto:x", "--round-to: expected 'auto', 'auto:N' or an integer, got a string 'auto:x'"),
    (2.5, "--round-to: expected 'auto', 'auto:N' or an integer, got float 2.5"),
    (True, "--round-to: expected 'auto', 'auto:N' or an integer, got a boolean (true)"),
])
def test_round_to_refused(value: object, message: str) -> None:
    with pytest.raises(InputError) as err:
        round_to(value, "--round-to")
    assert str(err.value) == message


def _two_groups() -> nn.Module:
    """Two prunable groups: 32 channels keeping 20, and 32 channels keeping 5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(),
                          nn.Conv2d(32, 4, 1)).eval()
    with torch.no_grad():
        for conv, kept in ((model[0], 20), (model[2], 5)):
            conv.weight[kept:] = 0
            conv.bias[kept:] = 0
    return model


def test_auto_leaves_groups_narrower_than_one_multiple() -> None:
    shape = [1, 3, 4, 4]
    exact = make_plan(_two_groups(), as_inputs(shape), round_to=1)
    every = make_plan(_two_groups(), as_inputs(shape), round_to=16)
    auto = make_plan(_two_groups(), as_inputs(shape), round_to=16, round_small=False)
    assert sorted(g.kept for g in exact.groups if g.channels == 32) == [5, 20]
    assert sorted(g.kept for g in every.groups if g.channels == 32) == [16, 32]
    assert sorted(g.kept for g in auto.groups if g.channels == 32) == [5, 32]
    assert every.rounding_extra() == 11 + 12 and auto.rounding_extra() == 12


def _grouped(groups: int, width: int, kept_per_group: int) -> nn.Module:
    """1x1 conv -> grouped 3x3 conv -> 1x1 conv; the first conv's output masks keep ``kept_per_group``
    channels in each group of the grouped one (a RegNet or ResNeXt bottleneck)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, groups=groups),
                          nn.ReLU(), nn.Conv2d(width, 4, 1)).eval()
    per = width // groups
    pruned = [j * per + i for j in range(groups) for i in range(kept_per_group, per)]
    with torch.no_grad():
        model[0].weight[pruned] = 0
        model[0].bias[pruned] = 0
    return model


@pytest.mark.parametrize(("groups", "width", "kept", "rounded"), [
    (6, 48, 4, 24),    # 24 -> 32 cannot be split into 6 equal groups; 48 would undo the pruning: stays 24
    (4, 32, 3, 16),    # 12 -> 16 is 4 equal groups of 4: rounded, one channel more in each group
    (2, 64, 13, 32),   # 26 -> 32: 16 in each of 2 groups
])
def test_rounding_a_grouped_layer_never_undoes_its_pruning(groups: int, width: int, kept: int, rounded: int) -> None:
    shape = [1, 3, 6, 6]
    model = _grouped(groups, width, kept)
    for round_small in (True, False):
        plan = make_plan(model, as_inputs(shape), round_to=16, round_small=round_small)
        first = plan.modules["0"].out_keep
        want = rounded if round_small or groups * kept >= 16 else groups * kept   # auto: narrower than a block stays
        assert len(first) == want, (groups, round_small, len(first))
        per = width // groups
        assert len({sum(1 for c in first if c // per == j) for j in range(groups)}) == 1   # equal groups
        assert plan.rounding_extra() == want - groups * kept
        x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            assert torch.allclose(model(x), apply_plan(model, plan)(x), rtol=1e-5, atol=1e-5)
