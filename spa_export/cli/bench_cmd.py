"""``spa-export bench``: time one ONNX file (or TensorRT engine), or two side by side.

Imports no torch: runs next to onnxruntime or TensorRT alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from spa_export.cli.options import INPUT, OUTPUT
from spa_export.safety.errors import InputError, require_file


def _fmt(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _runtime(entry: Mapping[str, Any]) -> str:
    text = str(entry["runtime"])
    return f"{text} {entry['precision']}" if entry.get("precision") else text


def _render(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i >= 3 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(result: Mapping[str, Any], labels: Sequence[str]) -> str:
    """The table ``spa-export bench`` prints (latencies in milliseconds)."""
    latency = result.get("latency") or []
    if not latency:
        return "no latency measured"
    if list(labels) == ["dense", "pruned"]:
        by_key: dict[tuple, dict[str, Mapping[str, Any]]] = {}
        for e in latency:
            by_key.setdefault((e["device"], _runtime(e), e["batch"]), {})[e["model"]] = e
        rows = [["device", "runtime", "batch", "dense p50", "p90", "p99",
                 "pruned p50", "p90", "p99", "speedup"]]
        for (device, runtime, batch), pair in by_key.items():
            d, p = pair.get("dense", {}), pair.get("pruned", {})
            speed = (d["p50_ms"] / p["p50_ms"]) if d and p and p["p50_ms"] > 0 else None
            rows.append([device, runtime, str(batch),
                         *(_fmt(d.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms")),
                         *(_fmt(p.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms")),
                         f"x{speed:.2f}" if speed else "-"])
    else:
        rows = [["device", "runtime", "model", "batch", "p50", "p90", "p99", "mean",
                 "runs", "items/s"]]
        for e in latency:
            rows.append([e["device"], _runtime(e), str(e["model"]), str(e["batch"]),
                         *(_fmt(e.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")),
                         str(e["iterations"]), f"{e['throughput_per_s']:.1f}"])
    return _render(rows) + "\n(latencies in ms)"


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=INPUT)
@click.option("--batch", "batches", multiple=True, type=int, default=(1, 8), show_default=True,
              help="Batch size to time (repeat the option for several).")
@click.option("--device", type=click.Choice(["cpu", "gpu", "all"]), default="cpu",
              show_default=True, help="Where to time; 'all' skips a missing GPU with a note.")
@click.option("--threads", type=int, default=None,
              help="ONNX Runtime intra-op threads, at most the CPUs this process may use "
                   "[default: physical cores].")
@click.option("--budget", "budget_s", type=float, default=2.0, show_default=True,
              help="Seconds of timing per model and batch size, unless stable earlier (at most 3600).")
@click.option("--precision", type=click.Choice(["both", "fp32", "fp16"]), default="both",
              show_default=True, help="TensorRT engine precisions to time on the GPU.")
@click.option("--opt-level", type=click.Choice(["disable", "basic", "extended", "layout", "all"]),
              default="all", show_default=True, help="ONNX Runtime graph optimisation level.")
@click.option("--json", "json_out", type=OUTPUT,
              default=None, help="Write the full results as JSON here (never over a model).")
@click.option("--force", is_flag=True, help="Replace an existing --json file.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def bench(
    models: tuple[Path, ...], batches: tuple[int, ...], device: str, threads: int | None,
    budget_s: float, precision: str, opt_level: str, json_out: Path | None, force: bool, quiet: bool,
) -> None:
    """Time MODEL (an .onnx file, or a TensorRT .engine on the GPU); given MODEL and
    MODEL2, time them alternately as dense and pruned and print the speedup."""
    from spa_export.runtime.bench import benchmark
    from spa_export.runtime.footprint import activation_footprint
    from spa_export.safety import validate
    from spa_export.safety.memory import check_fits
    from spa_export.safety.ownership import check_out_file

    if len(models) > 2:
        raise InputError(f"give one or two models, got {len(models)}")
    for path in models:
        require_file(path)
    batches = validate.batches(batches, "--batch")
    threads = validate.threads(threads, "--threads")
    budget_s = validate.budget(budget_s, "--budget")
    if json_out is not None:
        json_out = check_out_file(json_out, inputs=models, option="--json", force=force)
    for path in models:
        if path.suffix == ".onnx":
            check_fits(activation_footprint(path), {f"--batch {max(batches)}": max(batches)}, str(path))
    labels = ["dense", "pruned"] if len(models) == 2 else [models[0].stem]
    show = not quiet and sys.stderr.isatty()

    def progress(message: str) -> None:
        click.echo(message, err=True)

    fp16 = {"both": None, "fp32": False, "fp16": True}[precision]
    result = benchmark(dict(zip(labels, models, strict=True)), device=device, batches=batches,
                       threads=threads, budget_s=budget_s, fp16=fp16, opt_level=opt_level,
                       progress=progress if show else None)
    result["models"] = {label: str(path) for label, path in zip(labels, models, strict=True)}
    click.echo(format_table(result, labels))
    gpu = result.get("gpu") or {}
    if device != "cpu" and gpu.get("status") == "skipped":
        click.echo(f"GPU skipped: {gpu.get('reason')}")
    for row in result.get("gpu_numerics") or []:
        verdict = "ok" if row["passed"] else "OUTSIDE TOLERANCE"
        click.echo(f"TensorRT {row['precision']} vs ONNX Runtime, {row['model']} batch "
                   f"{row['batch']}: max abs err {row['max_abs_err']:.3g} ({verdict})")
    if json_out is not None:
        from spa_export.safety.publish import atomic_write_bytes

        atomic_write_bytes(json_out, (json.dumps(result, indent=2) + "\n").encode())
        if show:
            click.echo(f"wrote {json_out}", err=True)
