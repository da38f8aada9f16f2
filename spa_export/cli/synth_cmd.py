"""``spa-export synth``: a random SPA (and optionally a random base) for any architecture."""

from __future__ import annotations

from pathlib import Path

import click

from spa_export.cli.options import ARCH_HELP, INPUT, INPUT_SHAPE, INPUT_SHAPE_HELP, OUTPUT


@click.command("synth")
@click.option("--arch", required=True, help=ARCH_HELP)
@click.option("--input-shape", type=INPUT_SHAPE, required=True, multiple=True, help=INPUT_SHAPE_HELP)
@click.option("--prune", type=float, default=0.5, show_default=True, help="Fraction of channels masked.")
@click.option("--rank", type=int, default=8, show_default=True, help="SPLoRA rank of the random adapters.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--masks", type=click.Choice(["groups", "out-only", "random"]), default="groups", show_default=True,
              help="groups: consistent input and output masks per dependency group; out-only: output "
                   "masks alone, as the paper's experiments make them; random: independent per layer.")
@click.option("--base", type=INPUT,
              help="A base checkpoint whose digest the SPA records.")
@click.option("--save-base", type=OUTPUT,
              help="Also write a seeded random base (.safetensors) and record its digest.")
@click.option("--num-classes", type=int, help="Add an override that resizes the classifier head.")
@click.option("--task", help="Task name stored in the file.")
@click.option("-o", "--output", type=OUTPUT, required=True, help="The SPA file to write.")
@click.option("--force", is_flag=True, help="Replace existing output files (never --base).")
def synth(arch: str, input_shape: tuple, prune: float, rank: int, seed: int, masks: str, base: Path | None,
          save_base: Path | None, num_classes: int | None, task: str | None, output: Path, force: bool) -> None:
    """Write an SPA with random adapters and masks (for tests and what-if questions)."""
    from safetensors.torch import save

    from spa_export.nets.checkpoint import load_state_dict_file
    from spa_export.pack.synth import random_base, synth_spa
    from spa_export.safety import validate
    from spa_export.safety.errors import InputError
    from spa_export.safety.ownership import check_out_file
    from spa_export.safety.publish import atomic_write_bytes
    from spa_export.spa import write_spa

    if base and save_base:
        raise InputError("give --base or --save-base, not both")
    if not 0.0 <= validate.number(prune, "--prune", minimum=0.0, maximum=1.0) < 1.0:
        raise InputError("--prune 1: must be below 1 (a network keeps at least one channel)")
    validate.integer(rank, "--rank", minimum=0, maximum=4096)
    validate.seed(seed, "--seed")
    if num_classes is not None:
        validate.integer(num_classes, "--num-classes", minimum=1, maximum=1_000_000)
    inputs = [base] if base else []
    output = check_out_file(output, inputs=inputs, option="-o", force=force)
    if save_base:
        save_base = check_out_file(save_base, inputs=[*inputs, output], option="--save-base", force=force)
    state = load_state_dict_file(base) if base else None
    if save_base:
        state = random_base(arch, input_shape, seed=seed)
    spa = synth_spa(arch, input_shape, prune=prune, rank=rank, seed=seed, masks=masks, base_state=state,
                    num_classes=num_classes, task=task)
    if save_base:
        atomic_write_bytes(save_base, save(state))
        click.echo(f"{save_base}: random base, {sum(v.numel() for v in state.values()):,} values")
    write_spa(spa, output)
    counts = spa.learned_parameter_count()
    click.echo(f"{output}: {len(spa.layers)} layers, {counts['total']:,} learned parameters")
