"""``spa-export materialize``: a task's verified network from an edge package, without torch."""

from __future__ import annotations

from pathlib import Path

import click

from spa_export.cli.options import OUTPUT


@click.command("materialize")
@click.argument("package", type=click.Path(path_type=Path))
@click.argument("task")
@click.option("-o", "--out", "out_path", type=OUTPUT, required=True,
              help="Where to write the task's model.onnx.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def materialize(package: Path, task: str, out_path: Path, force: bool) -> None:
    """Rebuild TASK's model.onnx from PACKAGE's base and the task's delta (edge layout; other layouts
    hand out the file they hold). Needs numpy and onnx only. The file's sha256 is checked against the
    manifest's, the one of the file the build verified; a tampered, truncated or foreign delta or base
    is refused and nothing is written."""
    import hashlib

    from spa_export.runtime.packaged import open_package
    from spa_export.safety.ownership import check_out_file
    from spa_export.safety.publish import atomic_write_bytes

    pkg = open_package(package)
    pkg.task_entry(task)   # an unknown task, before anything is read
    target = check_out_file(out_path, inputs=[package], option="--out", force=force)
    data = pkg.model_bytes(task)
    atomic_write_bytes(target, data)
    click.echo(f"wrote {out_path} ({len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}..., "
               "as the build verified)")
