"""``spa-export engine``: build a TensorRT engine on this machine.

Imports no torch; tensorrt and polygraphy are imported when the build runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from spa_export.cli.options import INPUT, OUTPUT
from spa_export.safety.errors import InputError, require_file


@click.command("engine")
@click.argument("model", type=INPUT)
@click.option("--fp16", is_flag=True, help="Allow float16 kernels (default float32).")
@click.option("--int8", is_flag=True,
              help="An INT8 engine of an explicitly quantized model (model.int8.onnx of build --quantize int8): "
                   "the scales come from its QDQ nodes, no calibrator runs.")
@click.option("--batch", "batches", multiple=True, type=int, default=(1, 8), show_default=True,
              help="Batch size the engine must accept (repeat); one profile covers min..max.")
@click.option("--out", "out_path", type=OUTPUT, default=None,
              help="Engine path (.engine is added when missing) "
                   "[default: MODEL's stem + .fp16/.fp32.engine].")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT timing cache to reuse and update.")
@click.option("--workspace-mb", type=click.IntRange(min=1, max=1 << 20), default=2048, show_default=True,
              help="Builder workspace limit in MiB.")
@click.option("--force", is_flag=True, help="Replace an existing engine file (never MODEL itself).")
def engine(
    model: Path, fp16: bool, int8: bool, batches: tuple[int, ...], out_path: Path | None,
    timing_cache: Path | None, workspace_mb: int, force: bool,
) -> None:
    """Build a TensorRT engine of MODEL.onnx for this machine's GPU, with its
    metadata (TensorRT version, GPU, precision, batches, ONNX sha256) beside it."""
    from spa_export.runtime.engine import build_engine, engine_path_for
    from spa_export.runtime.tensorrt import metadata_path
    from spa_export.safety import validate
    from spa_export.safety.ownership import check_out_file

    require_file(model)
    if model.suffix != ".onnx":
        raise InputError(f"{model}: expected an ONNX file (.onnx)")
    batches = validate.batches(batches, "--batch")
    if int8:
        from spa_export.runtime.engine import require_qdq

        require_qdq(model)   # before anything else: a float model cannot give an INT8 engine here
    if out_path is None:
        precision = "int8" if int8 else "fp16" if fp16 else "fp32"
        out_path = model.with_name(f"{model.stem}.{precision}.engine")
    inputs = [model, *([timing_cache] if timing_cache is not None else [])]
    target = engine_path_for(out_path)
    check_out_file(target, inputs=inputs, option="--out", force=force)
    check_out_file(metadata_path(target), inputs=inputs, option="--out (its metadata file)", force=force)

    def progress(message: str) -> None:
        click.echo(message, err=True)

    built = build_engine(model, out_path, fp16=fp16, int8=int8, batches=list(batches),
                         timing_cache=timing_cache, workspace_mb=workspace_mb, progress=progress)
    click.echo(f"wrote {built}")
    click.echo(f"wrote {metadata_path(built)}")
