"""The order of a task's stages: the reference runs first, while the base is in memory.

Verification compares the exported files with outputs computed before any
merging or pruning code ran. Only a case that fails against the float32
reference needs the base again (for the float64 second opinion): it is read
again and must be the file that was read first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from spa_export.safety.errors import InputError
from spa_export.stages import verify as verify_module
from spa_export.stages.pipeline import BuildOptions, build

MODELS = Path(__file__).resolve().parents[2] / "models"
SHAPE = (1, 3, 32, 32)


def _options(tmp_path: Path) -> BuildOptions:
    base = tmp_path / "base.safetensors"
    shutil.copyfile(MODELS / "tiny_resnet.safetensors", base)
    return BuildOptions(base=base, spa=MODELS / "tiny_resnet-example.spa", out=tmp_path / "out",
                        input_shape=SHAPE, quiet=True)


def _float32_always_fails(monkeypatch: pytest.MonkeyPatch, then=None) -> list[str]:
    """Every float32 comparison fails (as on a badly conditioned network); ``then()`` runs at the first."""
    real, seen = verify_module._compare_outputs, []

    def judged(case, expected, got, rtol, atol_scale, reference):
        out = real(case, expected, got, rtol, atol_scale, reference)
        if reference == "float32":
            if not seen and then is not None:
                then()
            seen.append(case)
            for c in out:
                c["passed"] = False
        return out

    monkeypatch.setattr(verify_module, "_compare_outputs", judged)
    return seen


def test_stages_in_order_with_the_reference_before_the_merge(tmp_path: Path) -> None:
    report = build(_options(tmp_path)).report
    assert [s["name"] for s in report["stages"]] == ["load", "reference", "merge", "plan", "apply", "export",
                                                     "verify", "report"]
    assert [c["reference"] for c in report["verification"]["cases"]] == ["float32", "float32"]


def test_a_failing_float32_case_reads_the_base_again_for_the_float64_reference(tmp_path, monkeypatch) -> None:
    seen = _float32_always_fails(monkeypatch)
    report = build(_options(tmp_path)).report
    assert seen == ["random batch 1", "random batch 4"]
    assert report["verification"]["passed"]
    assert [c["reference"] for c in report["verification"]["cases"]] == ["float64", "float64"]


def test_a_base_changed_before_the_second_reading_is_refused(tmp_path, monkeypatch) -> None:
    opts = _options(tmp_path)

    def change_the_base() -> None:
        state = load_file(opts.base)
        key = sorted(state)[0]
        state[key] = state[key] + 1
        save_file(state, opts.base)

    _float32_always_fails(monkeypatch, then=change_the_base)
    with pytest.raises(InputError, match="the file changed while the build ran"):
        build(opts)
    assert not opts.out.exists()
