"""``spa-export pack``: an SPA file from a network adapted and pruned with ``sp_adapters``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from spa_export.cli.options import ARCH_HELP, INPUT, INPUT_SHAPE, INPUT_SHAPE_HELP, OUTPUT


@click.command("pack")
@click.option("--arch", "--base-arch", "arch", required=True, help=ARCH_HELP)
@click.option("--base", type=INPUT, required=True, help="The frozen base checkpoint the task was trained on.")
@click.option("--adapted", type=INPUT, required=True,
              help="The adapted network's state dict (model.state_dict() of the sp_adapters network, "
                   ".pt or .safetensors; read without running code).")
@click.option("--masks", type=INPUT, default=None,
              help="Masks: a safetensors file of '<layer>.out_mask' / '<layer>.in_mask' (bool or 0/1). "
                   "Masks kept in the network itself (output_mask, prune weight_mask, zeroed rows) are "
                   "found without it.")
@click.option("--input-shape", type=INPUT_SHAPE, required=True, multiple=True,
              help="What the SPA is checked against the adapted network at. " + INPUT_SHAPE_HELP)
@click.option("--task", help="Task name stored in the file (spa.task).")
@click.option("-o", "--output", type=OUTPUT, required=True, help="The SPA file to write.")
@click.option("--json", "json_out", type=OUTPUT, default=None, help="Also write the pack report as JSON here.")
@click.option("--force", is_flag=True, help="Replace existing output files (never an input).")
@click.option("--accept-masks", is_flag=True,
              help="Ship the masks' meaning where the trained network still writes masked channels (its "
                   "adapters' pruned rows are not zero): recorded in the SPA's description. Without it, "
                   "such a mismatch fails (exit 1) and nothing is written.")
@click.option("-v", "--verbose", is_flag=True,
              help="List every mask, override and entry not stored (the pack report, --json, always has them).")
def pack(arch: str, base: Path, adapted: Path, masks: Path | None, input_shape: tuple, task: str | None,
         output: Path, json_out: Path | None, force: bool, accept_masks: bool, verbose: bool) -> None:
    """Write the task's SPA file: adapters for kept channels, masks, and only the overrides that
    really differ from the base; then check it against the adapted network's forward pass."""
    from spa_export.pack import pack_checkpoint
    from spa_export.safety import validate
    from spa_export.safety.ownership import check_out_file
    from spa_export.safety.publish import atomic_write_bytes
    from spa_export.spa import write_spa

    inputs = [base, adapted, *([masks] if masks else [])]
    output = check_out_file(output, inputs=inputs, option="-o", force=force)
    if json_out is not None:
        json_out = check_out_file(json_out, inputs=[*inputs, output], option="--json", force=force)
    if task is not None:
        validate.task_name(task, "--task")
    result = pack_checkpoint(arch, base, adapted, masks=masks, task=task, input_shape=input_shape,
                             accept_masks=accept_masks)
    write_spa(result.spa, output)
    r = result.report
    click.echo(f"{output}: {r['spa_bytes']:,} bytes, {r['fraction_of_base']:.2%} of the base "
               f"({r['base_bytes']:,} bytes); {r['learned_params']['total']:,} learned parameters")
    if verbose:
        for m in r["masks"]:
            sides = [f"{side} {m[side]['kept']}/{m[side]['of']} kept ({m[side]['source']})"
                     for side in ("out", "in") if side in m]
            click.echo(f"  mask {m['layer']}: {'; '.join(sides)}")
        for o in r["overrides"]:
            click.echo(f"  override {o['key']}: {o['reason']} ({o['elements']:,} values)")
        for s in r["not_stored"]:
            click.echo(f"  not stored {s['key']}: {s['reason']}")
    else:
        click.echo(_summary(r))
    c = r["check"]
    own = c["vs_own_forward"]
    click.echo(f"  check: the SPA's masked network equals the adapted network with its masks "
               f"(worst {c['vs_masked_network']['max_err_over_scale']:.2e} of the output's scale); "
               + ("and its own forward pass" if own["passed"] else
                  f"not its own forward pass (worst {own['max_err_over_scale']:.2e}): {c['accepted']}"))
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(r, indent=2) + "\n").encode())


def _counted(rows: list[dict], what: str) -> str:
    """``3 overrides (batch-norm statistics: 2, a new head: 1)``: how many, by reason."""
    reasons: dict[str, int] = {}
    for row in rows:
        reason = row["reason"].split(" (")[0] if "resized" not in row["reason"] else "a resized head"
        reasons[reason] = reasons.get(reason, 0) + 1
    by = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return f"{len(rows)} {what}" + (f" ({by})" if by else "")


def _summary(r: dict) -> str:
    """Masks, overrides and what was not stored, counted (the lists: --verbose, or the --json report)."""
    kept = sum(m[s]["kept"] for m in r["masks"] for s in ("out", "in") if s in m)
    total = sum(m[s]["of"] for m in r["masks"] for s in ("out", "in") if s in m)
    masks = f"masks on {len(r['masks'])} layer(s), {kept:,} of {total:,} channels kept" if r["masks"] else "no masks"
    return (f"  {masks}; {_counted(r['overrides'], 'override(s)')}; "
            f"{_counted(r['not_stored'], 'entry(ies) not stored')} (every one: --verbose or --json)")
