"""Wall time of a full ``spa-export`` build against a bare ``torch.onnx.export``.

For one architecture and input shape (default torchvision ResNet-50 at 1,3,224,224):

* **build**: :func:`spa_export.stages.pipeline.build` of a ``synth`` SPA (output-only masks,
  50% by default) with ``bench="none"`` (load, reference, merge, plan, apply, export +
  check + simplify, verify, report), with its per-stage times from ``report["stages"]``;
* **bare (default)**: ``torch.onnx.export(model, (x,), path)`` of the dense network with
  torch's default arguments (the dynamo exporter in torch >= 2.9);
* **bare (dynamo=False)**: the same with ``dynamo=False`` (the TorchScript exporter);
* **dense via export_onnx**: :func:`spa_export.stages.export.export_onnx` of the dense network
  (TorchScript export, full onnx.checker and onnxsim), to tell export cost from the rest.

All run in this process, interleaved, ``--repeats`` times; ratios use medians. Between
contenders the cyclic garbage collector runs, untimed, so that none pays for what another
left behind (the dynamo exporter leaves about 150 MB of cycles, which the build's own
first collection would otherwise free on its clock). The base
and SPA are made beforehand in a subprocess (``spa-export synth``) so that this
process's peak RSS is the build's: the first build runs before anything else, and
its ``peak_rss_mb`` (the process's ``ru_maxrss``) is the one recorded.

    /work/venv/bin/python benchmarks/build_time.py                # full: ResNet-50, 224
    /work/venv/bin/python benchmarks/build_time.py --quick        # smoke: 64x64, to /tmp
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from machine import (
    add_common_options,
    default_input_shape,
    machine_info,
    machine_markdown,
    make_inputs,
    write_results,
)

from spa_export.runtime.inputs import as_inputs
from spa_export.safety.memory import peak_rss_mb

HERE = Path(__file__).resolve().parent
BARE = ("bare_default", "bare_dynamo_false", "dense_export_onnx")
LABELS = {
    "build": "spa_export build (bench none)",
    "bare_default": "torch.onnx.export, default args",
    "bare_dynamo_false": "torch.onnx.export, dynamo=False",
    "dense_export_onnx": "dense via spa_export.stages.export.export_onnx",
}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _exporters(dense: Any, shape: tuple[int, ...]) -> dict[str, Callable[[Path], Any]]:
    """The three ways of exporting the dense network, by key of ``BARE``."""
    import torch

    from spa_export.stages.export import export_onnx

    example = torch.zeros(shape)
    return {
        "bare_default": lambda p: torch.onnx.export(dense, (example,), p),
        "bare_dynamo_false": lambda p: torch.onnx.export(dense, (example,), p, dynamo=False),
        "dense_export_onnx": lambda p: export_onnx(dense, as_inputs(shape), p),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from spa_export.nets.arch import build_model
    from spa_export.nets.checkpoint import load_state_dict_file
    from spa_export.stages.pipeline import BuildOptions, build, parse_input_shape

    shape = parse_input_shape(args.input_shape)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="spa-bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    base, spa = make_inputs(args.arch, args.input_shape, args.prune, args.seed, work)
    rss_before = peak_rss_mb()

    dense = None
    exporters: dict[str, Callable[[Path], Any]] = {}
    times: dict[str, list[float]] = {k: [] for k in ("build", *BARE)}
    stages: list[list[dict[str, Any]]] = []
    sizes: dict[str, int] = {}
    first_report: dict[str, Any] = {}
    for rep in range(args.repeats):
        out = work / f"build-{rep}"
        opts = BuildOptions(base=base, spa=spa, out=out, input_shape=shape, arch=args.arch,
                            bench="none", quiet=True, seed=args.seed)
        seconds, result = _timed(functools.partial(build, opts))
        times["build"].append(seconds)
        stages.append(result.report["stages"])
        if rep == 0:
            first_report = result.report
            sizes["model.onnx (pruned)"] = (out / "model.onnx").stat().st_size
        if dense is None:  # built after the first build, so that its RSS is the build's alone
            dense = build_model(args.arch)
            dense.load_state_dict(load_state_dict_file(base))
            dense.eval()
            exporters = _exporters(dense, shape)
        for key in BARE:
            target = work / f"{key}-{rep}"
            target.mkdir()
            path = target / "dense.onnx"
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                seconds, _ = _timed(functools.partial(exporters[key], path))
            times[key].append(seconds)
            gc.collect()  # what it left for the collector is not charged to the next contender
            if rep == 0:
                sizes[f"{key} (all files)"] = _dir_bytes(target)
        print(f"repeat {rep + 1}/{args.repeats}: "
              + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr)

    median = {k: statistics.median(v) for k, v in times.items()}
    stage_names = [s["name"] for s in stages[0]]
    stage_median = {n: statistics.median(next(s["seconds"] for s in rep if s["name"] == n)
                                         for rep in stages) for n in stage_names}
    return {
        "config": {"arch": args.arch, "input_shape": list(shape), "prune": args.prune,
                   "masks": "out-only", "seed": args.seed, "repeats": args.repeats,
                   "bench": "none", "work_dir": str(work)},
        "times_s": times,
        "median_s": median,
        "ratio_build_over_bare": {k: median["build"] / median[k] for k in BARE},
        "stages_s": stages,
        "stages_median_s": stage_median,
        "stages_sum_median_s": sum(stage_median.values()),
        "export_record": first_report.get("export"),
        "macs": first_report.get("macs"),
        "params": first_report.get("params"),
        "peak_rss_mb": {"build_report": first_report.get("peak_rss_mb"),
                        "before_first_build": rss_before, "end_of_run": peak_rss_mb()},
        "bytes": {"base_checkpoint": base.stat().st_size, "spa": spa.stat().st_size, **sizes},
        "machine": info,
    }


def markdown(res: dict[str, Any]) -> str:
    cfg, med, times = res["config"], res["median_s"], res["times_s"]
    shape = ",".join(map(str, cfg["input_shape"]))
    lines = [
        "# Build time: spa-export build vs bare torch.onnx.export", "",
        f"{cfg['arch']} at {shape}, synth SPA {cfg['prune']:.0%} ({cfg['masks']} masks), "
        f"bench none, {cfg['repeats']} repeat(s) interleaved in one process.", "",
        "| what | median s | first s | all s | build / this |", "|---|---:|---:|---:|---:|",
    ]
    for key, label in LABELS.items():
        ratio = "1.00" if key == "build" else f"{res['ratio_build_over_bare'][key]:.2f}"
        all_s = ", ".join(f"{t:.2f}" for t in times[key])
        lines.append(f"| {label} | {med[key]:.2f} | {times[key][0]:.2f} | {all_s} | {ratio} |")
    lines += ["", "## Build stages (report[\"stages\"], median over repeats)", "",
              "| stage | s | % of build |", "|---|---:|---:|"]
    for name, sec in res["stages_median_s"].items():
        lines.append(f"| {name} | {sec:.2f} | {100 * sec / med['build']:.0f} |")
    other = med["build"] - res["stages_sum_median_s"]
    lines += [f"| (outside stages: imports at the top of _run, validate, staging, publish) | {other:.2f} | "
              f"{100 * other / med['build']:.0f} |", "",
              "`reference` builds the masked network from base and SPA and runs the verification "
              "batches (1 and 4) through it in one pass; `export` includes onnx.checker (full) and "
              "onnxsim; `verify` runs ONNX Runtime at batch 1 and 4 against those outputs.", "",
              "Between contenders the garbage collector runs untimed (see the module's docstring).", ""]
    rss, size = res["peak_rss_mb"], res["bytes"]
    lines += ["## Memory and sizes", "",
              f"- build peak RSS (report `peak_rss_mb`, process ru_maxrss): {rss['build_report']} MB "
              f"(process before the first build: {rss['before_first_build']} MB; "
              f"end of run: {rss['end_of_run']} MB)"]
    lines += [f"- {k}: {v / 1e6:.1f} MB" for k, v in size.items()]
    macs = res.get("macs") or {}
    if macs:
        lines.append(f"- MACs dense / pruned: {macs['dense'] / 1e9:.3f} G / "
                     f"{macs['pruned'] / 1e9:.3f} G")
    lines += ["", "## Machine", "", machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (1 with --quick)")
    add_common_options(parser)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1,3,64,64, one repeat, results to /tmp "
                             "(explicit options win)")
    args = parser.parse_args(argv)
    default_input_shape(args)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    res = run(args)
    write_results("build_time", res, markdown(res), args.out_dir, args.quick, HERE / "results")


if __name__ == "__main__":
    main()
