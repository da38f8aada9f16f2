"""``spa-export check``: every task of a package on this device's runtime, against the build's reference."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("check")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--task", "tasks", multiple=True, help="Only this task (repeat for several) [default: all].")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="cpu: ONNX Runtime's CPU provider. gpu: its CUDA provider where installed, and TensorRT "
                   "fp32 and fp16 engines built here where TensorRT is installed.")
def check(package: Path, tasks: tuple[str, ...], device: str) -> None:
    """Run each task of PACKAGE (any layout; edge tasks are materialized in memory) on this device and
    compare its outputs with what the build's independent reference computed for the stored
    verification cases, under the build's tolerances. Prints a table; exits 1 if any task fails.
    Needs no torch: the acceptance test to run on the target after installing a release."""
    from spa_export.runtime.check import check_task, read_cases
    from spa_export.runtime.onnxrt import cuda_provider_available
    from spa_export.runtime.packaged import CHECK_FILE, open_package
    from spa_export.safety.errors import InputError

    pkg = open_package(package)
    names = list(tasks) or pkg.tasks
    for name in names:
        pkg.task_entry(name)
    if device == "gpu" and not cuda_provider_available():
        from spa_export.runtime.tensorrt import gpu_unavailable_reason

        reason = gpu_unavailable_reason()
        if reason is not None:
            raise InputError(f"--device gpu: this ONNX Runtime has no CUDA execution provider (pip install "
                             f"onnxruntime-gpu), and TensorRT cannot run here: {reason}")
    rows = []
    for name in names:
        rel, sha = pkg.artefact_sha(name, CHECK_FILE)
        if sha is None:
            raise InputError(f"{pkg.root}: task '{name}' has no stored verification cases (built before "
                             "spa-export stored them: rebuild the package)")
        cases = read_cases(str(pkg.root / rel), pkg.read(rel, sha))
        rows += check_task(name, pkg.model_bytes(name), cases, device=device)
    if not rows:
        raise InputError(f"--device {device}: no runtime here could run the tasks")
    width = max(len(r.task) for r in rows)
    click.echo(f"{'task':<{width}}  {'runtime':<16}  {'precision':<9}  cases  worst/allowed  result")
    for r in rows:
        click.echo(f"{r.task:<{width}}  {r.runtime:<16}  {r.precision:<9}  {r.cases:>5}  {r.worst_ratio:>13.3g}  "
                   f"{'pass' if r.passed else 'FAIL: ' + r.detail}")
    failed = list(dict.fromkeys(r.task for r in rows if not r.passed))
    tasks_run = list(dict.fromkeys(r.task for r in rows))
    if failed:
        click.echo(f"error: {len(failed)} of {len(tasks_run)} tasks differ from the build's reference: "
                   f"{', '.join(failed)}", err=True)
        sys.exit(1)
    click.echo(f"{len(tasks_run)} of {len(tasks_run)} tasks match the build's reference"
               + (f" ({len(rows)} runtime and precision rows)" if len(rows) != len(tasks_run) else ""))
