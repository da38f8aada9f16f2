"""``spa-export inspect``: what an SPA file holds, and with a base, what it would cost."""

from __future__ import annotations

import json
from pathlib import Path

import click

from spa_export.cli.options import ARCH_HELP, INPUT, INPUT_SHAPE, INPUT_SHAPE_HELP


@click.command("inspect")
@click.argument("spa_file", type=INPUT)
@click.option("--base", type=INPUT, help="Base checkpoint, for pruned parameter counts.")
@click.option("--arch", help=ARCH_HELP)
@click.option("--input-shape", type=INPUT_SHAPE, multiple=True,
              help="With --base: what the pruned network is traced at. " + INPUT_SHAPE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_(spa_file: Path, base: Path | None, arch: str | None, input_shape: tuple,
             as_json: bool) -> None:
    """Task, adapted layers, rank, kept channels and learned parameters of SPA_FILE."""
    from spa_export.safety.errors import shown
    from spa_export.stages.inspect import inspect_spa

    info = inspect_spa(spa_file, base=base, arch=arch, input_shape=input_shape)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    task, arch_ = (shown(info[k]) if info[k] is not None else None for k in ("task", "arch"))
    click.echo(f"{spa_file}: task {task!r}, arch {arch_!r}")
    click.echo(f"  learned parameters (paper's count): {info['learned_params']['total']:,}")
    for layer in info["layers"]:
        kept = f"out {layer['out_kept']}/{layer['out']}" if layer["out"] else "out width not in the file (give --base)"
        kept += f", in {layer['in_kept']}/{layer['in']}" if layer["in"] else ""
        click.echo(f"  {shown(layer['name'])}: {layer['kind'] or 'masks only'}"
                   f"{' rank ' + str(layer['rank']) if layer['rank'] else ''}; {kept}")
    if "pruned_params" in info:
        click.echo(f"  network parameters: dense {info['dense_params']:,}, pruned {info['pruned_params']:,}")
        click.echo(f"  learned / fine-tuning the whole network: {info['ratio_vs_finetune']:.4%}")
