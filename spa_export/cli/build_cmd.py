"""``spa-export build``: base + SPA -> pruned, verified ONNX; or a recipe's tasks -> a release package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from spa_export.cli.options import ARCH_HELP, INPUT, INPUT_SHAPE, INPUT_SHAPE_HELP, OUTPUT

if TYPE_CHECKING:
    from spa_export.release.package import PackageResult
    from spa_export.stages.pipeline import BuildResult

#: Command-line option -> BuildOptions field, for the options a recipe may also set.
_SETTINGS = {"arch": "arch", "bench": "bench", "batches": "bench_batches", "threads": "threads",
             "budget": "budget_s", "opset": "opset", "round_to": "round_to", "rtol": "rtol",
             "atol": "atol_scale", "exporter": "exporter", "seed": "seed",
             "ignore_base_digest": "ignore_base_digest", "inputs": "inputs", "quantize": "quantize",
             "calibration": "calibration", "max_accuracy_drop": "max_accuracy_drop",
             "max_disagreement": "max_disagreement", "int8_activations": "int8_activations"}


@click.command("build")
@click.argument("recipe_arg", metavar="[RECIPE]", required=False, type=INPUT)
@click.option("--recipe", type=INPUT,
              help="A YAML recipe: one base, many tasks (the same as giving RECIPE).")
@click.option("--base", type=INPUT, help="Base checkpoint (.safetensors, .pt, .pth).")
@click.option("--spa", "spa", type=INPUT, help="The task's SPA file (without a recipe).")
@click.option("--arch", help=ARCH_HELP)
@click.option("--input-shape", type=INPUT_SHAPE, multiple=True, help=INPUT_SHAPE_HELP)
@click.option("--out", type=OUTPUT,
              help="Output folder: created, or replaced when it is empty or a previous spa-export output "
                   "(never anything else); published whole or not at all.")
@click.option("--task", "tasks", multiple=True, help="With a recipe: build only this task (repeatable).")
@click.option("--shard", help="With a recipe: build part i of n (i/n, e.g. 2/4), for a CI job matrix; "
                              "'spa-export assemble' merges the parts.")
@click.option("-j", "--jobs", type=int, default=1, show_default=True,
              help="With a recipe: tasks built side by side in this many processes.")
@click.option("--layout", type=click.Choice(["plain", "triton", "edge"]), default=None,
              help="With a recipe: 'triton' makes the package a Triton Inference Server model repository.")
@click.option("--eval", "eval_data", type=INPUT,
              help="Without a recipe: an .npz evaluation set (x, y) for held-out accuracy.")
@click.option("--bench", type=click.Choice(["none", "cpu", "gpu", "all"]), default=None,
              help="Time dense against pruned [default: none].")
@click.option("--batch", "batches", type=int, multiple=True, help="Benchmark batch sizes [default: 1, 8].")
@click.option("--threads", type=int, help="CPU threads for benchmarking [default: physical cores].")
@click.option("--budget", type=float, default=None, help="Seconds of timing per configuration [default: 2].")
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17].")
@click.option("--round-to", default=None, metavar="auto|auto:N|N",
              help="Round every pruned group's channel count up to a multiple of N; extra channels keep "
                   "what the masked network computes, so the build stays exact. 'auto' [default]: the "
                   "multiple the target favours (16 on x86 CPUs with AVX-512, 8 with AVX2 and on GPUs, "
                   "1 elsewhere; groups narrower than one multiple stay as the masks ask), recorded in the "
                   "report. 'auto:N': auto's rule with the multiple pinned to N, the same models on every "
                   "machine (for CI job matrices).")
@click.option("--input", "inputs", type=INPUT, multiple=True,
              help="A .npy input to verify on, besides seeded random ones (repeatable); for a network of "
                   "several inputs an .npz with one array per input name.")
@click.option("--rtol", type=float, default=None,
              help="Verification relative tolerance, 0 (exact) to 1 [default: 1e-4].")
@click.option("--atol", type=float, default=None,
              help="Verification absolute tolerance, as a fraction of the output's scale, 0 to 1 [default: 1e-4].")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default=None,
              help="torch.onnx exporter [default: torchscript].")
@click.option("--ignore-base-digest", is_flag=True, help="Go on although the SPA names another base.")
@click.option("--seed", type=int, default=None, help="Seed of the verification inputs, 0 or more [default: 0].")
@click.option("--quantize", multiple=True, metavar="int8",
              help="Also build model.int8.onnx (ONNX Runtime's static QDQ quantization, per-channel weights; "
                   "dynamic MatMul quantization for transformers), checked against float32.")
@click.option("--calibration", metavar="DATA.npz|random",
              help="int8 calibration inputs (.npz with x, or one array per input; .npy), 16 samples or more; "
                   "'random' only when asked for (the report says so).")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="int8 gate: accuracy points it may lose on the evaluation set [default: 1]; over it: exit 1.")
@click.option("--max-disagreement", type=float, default=None,
              help="int8 gate without an evaluation set: top-1 disagreement with float32 on the calibration "
                   "inputs, percent [default: 5]. Exit 1 over it.")
@click.option("--int8-activations", type=click.Choice(["auto", "u8", "s8"]), default=None,
              help="int8 activation type; auto: the fastest for this processor (u8 on x86, s8 on ARM).")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def build(recipe_arg: Path | None, recipe: Path | None, tasks: tuple[str, ...], shard: str | None, jobs: int,
          layout: str | None, eval_data: Path | None, **given: Any) -> None:
    """Merge, prune exactly, export ONNX, verify against the masked network.

    \b
    One task:  spa-export build --base B --spa S --input-shape 1,3,224,224 --out DIR
               writes DIR/model.onnx, report.json, report.md (and dense.onnx,
               latency.png with --bench).
    A recipe:  spa-export build RECIPE.yaml [--out DIR]
               writes DIR/<task>/... for every task, DIR/manifest.json and
               DIR/summary.md.

    Flags override the recipe's values. Exit 1 when verification fails;
    nothing is published then.
    """
    from spa_export.safety.errors import InputError
    from spa_export.safety.interrupts import InterruptedAfterPublish

    if recipe_arg is not None and recipe is not None:
        raise InputError("give the recipe once: as RECIPE or as --recipe")
    recipe = recipe_arg or recipe
    result: BuildResult | PackageResult | None = None
    try:
        if recipe is not None:
            result = _build_recipe(recipe, tasks, shard, jobs, layout, eval_data, given)
            _summarise_package(result)
        else:
            for flag, value in (("--task", tasks), ("--shard", shard), ("--layout", layout)):
                if value:
                    raise InputError(f"{flag} needs a recipe (spa-export build RECIPE.yaml {flag} ...)")
            if jobs != 1:
                raise InputError("-j needs a recipe: a single task is built in one process")
            result = _build_one(eval_data, given)
            _summarise(result, given.get("bench") or "none")
    except KeyboardInterrupt as stop:
        if result is None or isinstance(stop, InterruptedAfterPublish):
            raise
        raise InterruptedAfterPublish(result.out, getattr(stop, "signum", 2)) from None


def _settings(given: dict[str, Any]) -> dict[str, Any]:
    """The BuildOptions fields the user gave on the command line (None, () and an unset flag: not given).

    Compared by identity: 0 is a value the user gave (``--round-to 0`` is refused, ``--rtol 0``
    honoured), never "not given".
    """
    out = {}
    for option, target in _SETTINGS.items():
        value = given.get(option)
        if value is None or value is False or (isinstance(value, tuple) and not value):
            continue
        out[target] = tuple(value) if isinstance(value, tuple) else value
    return out


def _build_one(eval_data: Path | None, given: dict[str, Any]) -> BuildResult:
    from spa_export.safety.errors import InputError
    from spa_export.stages.pipeline import BuildOptions
    from spa_export.stages.pipeline import build as run_build

    for key in ("base", "spa", "out", "input_shape"):
        if given.get(key) is None or given.get(key) == ():
            raise InputError(f"missing --{key.replace('_', '-')} (or give a recipe; see spa-export build --help)")
    opts = BuildOptions(base=given["base"], spa=given["spa"], out=given["out"],
                        input_shape=given["input_shape"], eval_data=eval_data, quiet=bool(given.get("quiet")),
                        **_settings(given))
    return run_build(opts)


def _build_recipe(path: Path, tasks: tuple[str, ...], shard: str | None, jobs: int, layout: str | None,
                  eval_data: Path | None, given: dict[str, Any]) -> PackageResult:
    from dataclasses import replace

    from spa_export.release.package import PackageOptions, build_package, parse_shard
    from spa_export.release.recipe import load_recipe
    from spa_export.safety import validate
    from spa_export.safety.errors import InputError

    if given.get("spa") is not None:
        raise InputError("--spa with a recipe: the recipe lists its tasks; use --task NAME to build one")
    if eval_data is not None:
        raise InputError("--eval with a recipe: give each task's eval: in the recipe")
    r = load_recipe(path)
    changes: dict[str, Any] = {}
    if given.get("base") is not None:
        changes["base"] = given["base"]
    if given.get("input_shape"):
        from spa_export.runtime.inputs import as_inputs

        changes["input_shape"] = as_inputs(given["input_shape"])
    if layout is not None:
        changes["layout"] = layout
    r = replace(r, **changes)
    out = given.get("out") or r.out
    if out is None:
        raise InputError(f"{path}: no out: in the recipe; pass --out")
    part = parse_shard(shard) if shard else None
    if given.get("out") is None and (part or tasks):
        # a part must never replace the whole package the recipe names (nor another part)
        if part is None:
            raise InputError(f"--task without --out would replace the package {out} with part of it; "
                             "pass --out for the part (and merge parts with spa-export assemble)")
        out = Path(f"{Path(out)}-part-{part[0]}-of-{part[1]}")
    opts = PackageOptions(recipe=r, out=Path(out), tasks=tasks, shard=part,
                          jobs=validate.jobs(jobs, "-j"), quiet=bool(given.get("quiet")),
                          overrides=_settings(given))
    return build_package(opts)


def _summarise(result: BuildResult, bench: str) -> None:
    """The build's one-line result (and speed-ups) on stdout."""
    r = result.report
    ver = r["verification"]
    click.echo(
        f"{result.out}/model.onnx: params {r['params']['dense']:,} -> {r['params']['pruned']:,} "
        f"({r['params']['pruned'] / max(r['params']['dense'], 1):.1%}), MACs {r['macs']['dense']:,} -> "
        f"{r['macs']['pruned']:,} ({r['macs']['pruned'] / max(r['macs']['dense'], 1):.1%}); "
        f"verified: worst relative error {max((c.get('max_rel_err', 0) for c in ver['cases']), default=0):.2e}"
    )
    if r.get("accuracy"):
        a = r["accuracy"]
        click.echo(f"  accuracy on {a['dataset']} ({a['split']}, {a['n']}): reference {a['reference']:.2%}, "
                   f"exported {a['exported']:.2%}")
    for s in r.get("speedup", []):
        int8 = (f", int8 {s['int8_p50_ms']:.3f} ms (x{s['int8_over_pruned']:.2f} over pruned)"
                if "int8_p50_ms" in s else "")
        click.echo(f"  {s['device']} {s['runtime']} batch {s['batch']}: {s['dense_p50_ms']:.3f} ms -> "
                   f"{s['pruned_p50_ms']:.3f} ms (x{s['speedup']:.2f}){int8}")
    if r.get("int8"):
        q, gate = r["int8"], r["int8"].get("gate") or {}
        value = f" {gate['value']:.2f} (limit {gate['limit']:g})" if "value" in gate else ""
        click.echo(f"  int8 ({q['method']}, activations {q['activations']}): {gate.get('kind')}{value}: "
                   f"{'passed' if gate.get('passed') else 'failed'}")
    for warning in ver.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)
    gpu = r.get("gpu")
    if gpu and gpu.get("status") == "skipped" and bench in ("gpu", "all"):
        click.echo(f"  gpu: skipped ({gpu.get('reason')})")


def _summarise_package(result: PackageResult) -> None:
    """One line per task, then where the package and its summary are."""
    for name, r in result.reports.items():
        acc = r.get("accuracy")
        int8 = f", int8 {acc['int8']:.2%}" if acc and isinstance(acc.get("int8"), float) else ""
        accuracy = f", accuracy {acc['reference']:.2%} (exported {acc['exported']:.2%}{int8})" if acc else ""
        speed = next((s for s in r.get("speedup", []) if s["batch"] == min(x["batch"] for x in r["speedup"])), None)
        timing = f", x{speed['speedup']:.2f} at batch {speed['batch']} ({speed['device']})" if speed else ""
        click.echo(f"  {name}: params {r['params']['pruned'] / max(r['params']['dense'], 1):.1%} of dense, "
                   f"MACs {r['macs']['pruned'] / max(r['macs']['dense'], 1):.1%}{accuracy}{timing}; verified")
    part = result.manifest.get("part")
    kind = f"package part ({len(part['tasks'])} of {len(part['of'])} tasks)" if part else "package"
    click.echo(f"{kind}: {result.out}")
    click.echo(f"summary: {result.out / 'summary.md'}")
