"""Measured CPU speedup of group-pruned networks against their MAC reduction.

For one architecture and input shape (default torchvision ResNet-50 at 1,3,224,224),
a seeded random base, and ``synth`` SPAs with ``masks="groups"`` at 30%, 50% and 70%:
each is built with ``round_to`` 1 and 8 and ``bench="cpu"`` (dense.onnx against
model.onnx, ONNX Runtime, batches 1 and 8, ``--budget`` seconds per model and batch).
The table compares the report's measured speedup (dense p50 / pruned p50) with the
MACs ratio (dense / pruned).

Independent check: for the 50% builds, ``dense.onnx`` and ``model.onnx`` are timed again
with a minimal onnxruntime loop written here (not spa_export.runtime), with the report's
thread count: warm-up, then N runs alternating the two models, median. Its p50s are
compared with the report's; the target is agreement within 25%.

    /work/venv/bin/python benchmarks/pruning_speedup.py              # full (long)
    /work/venv/bin/python benchmarks/pruning_speedup.py --quick      # smoke: 64x64, to /tmp
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import (
    add_common_options,
    default_input_shape,
    machine_info,
    machine_markdown,
    write_results,
)

HERE = Path(__file__).resolve().parent
AGREEMENT = 0.25


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def make_inputs(arch: str, shape: tuple[int, ...], prunes: list[float], seed: int,
                work: Path) -> tuple[Path, dict[float, Path]]:
    """A random base checkpoint and one ``groups`` SPA per prune fraction."""
    from safetensors.torch import save_file

    from spa_export.spa import write_spa
    from spa_export.synth import random_base, synth_spa

    state = random_base(arch, shape, seed=seed)
    base = work / "base.safetensors"
    save_file(state, str(base))
    spas = {}
    for prune in prunes:
        spa = synth_spa(arch, shape, prune=prune, seed=seed, masks="groups", base_state=state)
        spas[prune] = work / f"groups-{prune:g}.spa"
        write_spa(spa, spas[prune])
    return base, spas


def independent_timing(dense: Path, pruned: Path, batch: int, shape: tuple[int, ...],
                       threads: int, warmup: int, runs: int, seed: int) -> dict[str, Any]:
    """Median latency (ms) of both files with plain onnxruntime: each model in consecutive runs.

    Two rounds (dense, pruned, dense, pruned), each a warm-up then ``runs // 2`` timed runs of
    one model: switching model on every run would evict each model's weights from the caches
    and penalise both, which is not how either is deployed.
    """
    import onnxruntime as ort

    sessions = {}
    for label, path in (("dense", dense), ("pruned", pruned)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions[label] = ort.InferenceSession(str(path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).standard_normal((batch, *shape[1:]), dtype=np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    outputs = {k: s.run(None, feeds[k])[0] for k, s in sessions.items()}
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(2):
        for k, s in sessions.items():
            for _ in range(warmup):
                s.run(None, feeds[k])
            for _ in range(max(1, runs // 2)):
                start = time.perf_counter()
                s.run(None, feeds[k])
                samples[k].append((time.perf_counter() - start) * 1e3)
    p50 = {k: float(np.median(v)) for k, v in samples.items()}
    return {"batch": batch, "threads": threads, "warmup": warmup, "runs": runs,
            "dense_p50_ms": p50["dense"], "pruned_p50_ms": p50["pruned"],
            "speedup": p50["dense"] / p50["pruned"],
            "max_abs_diff_dense_vs_pruned": float(np.max(np.abs(outputs["dense"] - outputs["pruned"])))}


def _rows(report: dict[str, Any], prune: float, round_to: int) -> list[dict[str, Any]]:
    macs, params = report["macs"], report["params"]
    macs_ratio = macs["dense"] / macs["pruned"]
    entries = {(e["model"], e["batch"]): e for e in report["latency"]}
    rows = []
    for s in report["speedup"]:
        rows.append({
            "prune": prune, "round_to": round_to, "macs_dense": macs["dense"],
            "macs_pruned": macs["pruned"], "macs_ratio": macs_ratio,
            "params_ratio": params["dense"] / params["pruned"], "batch": s["batch"],
            "dense_p50_ms": s["dense_p50_ms"], "pruned_p50_ms": s["pruned_p50_ms"],
            "speedup": s["speedup"], "speedup_over_macs_ratio": s["speedup"] / macs_ratio,
            "threads": entries[("dense", s["batch"])]["threads"],
            "stable": [entries[(m, s["batch"])]["stable"] for m in ("dense", "pruned")],
        })
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from spa_export.pipeline import BuildOptions, build, parse_input_shape

    shape = parse_input_shape(args.input_shape)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="spa-bench-speedup-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    base, spas = make_inputs(args.arch, shape, args.prunes, args.seed, work)
    rows: list[dict[str, Any]] = []
    builds: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for prune in args.prunes:
        for round_to in args.round_to:
            out = work / f"build-{prune:g}-r{round_to}"
            opts = BuildOptions(base=base, spa=spas[prune], out=out, input_shape=shape,
                                arch=args.arch, bench="cpu", round_to=round_to,
                                bench_batches=tuple(args.batches), budget_s=args.budget,
                                threads=args.threads, seed=args.seed, quiet=True)
            start = time.perf_counter()
            report = build(opts).report
            seconds = time.perf_counter() - start
            new = _rows(report, prune, round_to)
            rows += new
            builds.append({"prune": prune, "round_to": round_to, "out": str(out),
                           "build_s": seconds, "stages": report["stages"],
                           "latency": report["latency"], "bench_config": report["config"]})
            print(f"prune {prune:g} round_to {round_to}: build {seconds:.1f} s, "
                  + ", ".join(f"b{r['batch']} x{r['speedup']:.2f} (MACs x{r['macs_ratio']:.2f})"
                              for r in new), file=sys.stderr)
            if abs(prune - 0.5) < 1e-9:
                for row in new:
                    indep = independent_timing(out / "dense.onnx", out / "model.onnx", row["batch"],
                                               shape, row["threads"], args.indep_warmup,
                                               args.indep_runs, args.seed)
                    agree = {k: indep[k] / row[k]
                             for k in ("dense_p50_ms", "pruned_p50_ms", "speedup")}
                    checks.append({"prune": prune, "round_to": round_to, "independent": indep,
                                   "report": {k: row[k] for k in agree},
                                   "independent_over_report": agree,
                                   "within_25pct": all(abs(v - 1) <= AGREEMENT
                                                       for v in agree.values())})
    return {
        "config": {"arch": args.arch, "input_shape": list(shape), "masks": "groups",
                   "prunes": args.prunes, "round_to": args.round_to, "batches": args.batches,
                   "budget_s": args.budget, "threads": args.threads, "seed": args.seed,
                   "indep_warmup": args.indep_warmup, "indep_runs": args.indep_runs,
                   "work_dir": str(work)},
        "rows": rows, "independent_check": checks, "builds": builds, "machine": info,
    }


def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    shape = ",".join(map(str, cfg["input_shape"]))
    lines = [
        "# Pruning speedup: measured (ONNX Runtime, CPU) vs MACs", "",
        f"{cfg['arch']} at {shape}, synth SPAs with `groups` masks, `bench=cpu`, budget "
        f"{cfg['budget_s']} s per model and batch. Ratios are dense / pruned; "
        "`speedup / MACs` of 1.0 means latency fell as much as MACs did.", "",
        "| prune | round-to | MACs dense | MACs pruned | MACs ratio | params ratio | batch | "
        "dense p50 ms | pruned p50 ms | speedup | speedup / MACs ratio | threads | stable |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        stable = "/".join("y" if s else "n" for s in r["stable"])
        lines.append(
            f"| {r['prune']:.0%} | {r['round_to']} | {r['macs_dense'] / 1e9:.3f} G | "
            f"{r['macs_pruned'] / 1e9:.3f} G | {r['macs_ratio']:.2f} | {r['params_ratio']:.2f} | "
            f"{r['batch']} | {r['dense_p50_ms']:.2f} | {r['pruned_p50_ms']:.2f} | "
            f"{r['speedup']:.2f} | {r['speedup_over_macs_ratio']:.2f} | {r['threads']} | {stable} |")
    lines += ["", "`stable`: whether the report's timing of dense/pruned converged before the "
              "budget ran out.", "",
              "## Independent timing check (50%)", "",
              f"Plain onnxruntime loop (not spa_export.runtime): same files and thread count, "
              f"{cfg['indep_runs']} timed runs per model in two rounds of consecutive runs (dense, "
              f"pruned, dense, pruned; {cfg['indep_warmup']} warm-up runs before each), median. "
              f"Target: within {AGREEMENT:.0%} of the report.", "",
              "| round-to | batch | dense p50 ms (indep / report) | pruned p50 ms (indep / report) "
              "| speedup (indep / report) | indep/report dense, pruned, speedup | within 25% |",
              "|---:|---:|---:|---:|---:|---:|---|"]
    for c in res["independent_check"]:
        i, rep, a = c["independent"], c["report"], c["independent_over_report"]
        lines.append(
            f"| {c['round_to']} | {i['batch']} | {i['dense_p50_ms']:.2f} / {rep['dense_p50_ms']:.2f} "
            f"| {i['pruned_p50_ms']:.2f} / {rep['pruned_p50_ms']:.2f} | {i['speedup']:.2f} / "
            f"{rep['speedup']:.2f} | {a['dense_p50_ms']:.2f}, {a['pruned_p50_ms']:.2f}, "
            f"{a['speedup']:.2f} | {'yes' if c['within_25pct'] else 'NO'} |")
    lines += ["", "## Build times", "", "| prune | round-to | build s (incl. bench) |",
              "|---:|---:|---:|"]
    lines += [f"| {b['prune']:.0%} | {b['round_to']} | {b['build_s']:.1f} |" for b in res["builds"]]
    lines += ["", "## Machine", "", machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prunes", type=_floats, default=[0.3, 0.5, 0.7])
    parser.add_argument("--round-to", type=_ints, default=[1, 8])
    parser.add_argument("--batches", type=_ints, default=[1, 8])
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed runs per model and batch (BuildOptions.budget_s); "
                             "default 3 (0.3 with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: the pipeline's, physical cores)")
    parser.add_argument("--indep-warmup", type=int, default=5)
    parser.add_argument("--indep-runs", type=int, default=None, help="default 50 (20 quick)")
    add_common_options(parser)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1,3,64,64, budget 0.3 s, 20 independent runs, to /tmp "
                             "(explicit options win; add --prunes 0.5 for a shorter one)")
    args = parser.parse_args(argv)
    default_input_shape(args)
    if args.budget is None:
        args.budget = 0.3 if args.quick else 3.0
    if args.indep_runs is None:
        args.indep_runs = 20 if args.quick else 50
    res = run(args)
    write_results("pruning_speedup", res, markdown(res), args.out_dir, args.quick, HERE / "results")


if __name__ == "__main__":
    main()
