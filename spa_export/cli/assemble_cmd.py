"""``spa-export assemble``: the parts of a sharded recipe build, merged into one package."""

from __future__ import annotations

from pathlib import Path

import click

from spa_export.cli.options import INPUT, OUTPUT


@click.command("assemble")
@click.argument("parts", nargs=-1, required=True, type=INPUT)
@click.option("--out", type=OUTPUT, required=True,
              help="The package folder: created, or replaced when it is empty or a previous spa-export output.")
def assemble(parts: tuple[Path, ...], out: Path) -> None:
    """Merge PARTS (the --out folders of 'spa-export build RECIPE --shard i/n') into one package.

    Every part must be intact and built from the same recipe, base, spa-export
    and library versions; together they must hold every task once. The
    package equals a single machine's build of the whole recipe.
    """
    from spa_export.release.assemble import assemble as run

    manifest = run(list(parts), out)
    tasks = manifest["content"]["tasks"]
    click.echo(f"package: {out} ({len(tasks)} tasks from {len(parts)} parts; content {manifest['content_sha256']})")
    click.echo(f"summary: {out / 'summary.md'}")
