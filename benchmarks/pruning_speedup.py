"""Measured CPU speedup of group-pruned networks against their MAC reduction.

For one architecture and input shape (default torchvision ResNet-50 at 1,3,224,224),
a seeded random base, and ``synth`` SPAs with ``masks="groups"`` at 30%, 50% and 70%:
each is built with ``round_to`` 1, 16 and ``auto`` (the default: the multiple this
processor's ONNX Runtime kernels favour) and ``bench="cpu"`` (dense.onnx against
model.onnx, ONNX Runtime, batches 1 and 8, ``--budget`` seconds per model and batch).
The table compares the report's measured speedup (dense p50 / pruned p50) with the
MACs ratio (dense / pruned).

Side by side: per prune level and batch, ``dense.onnx`` and every rounding's
``model.onnx`` are timed again in one loop written here (not spa_export.runtime),
with the report's thread count, interleaved in rounds: the table to compare
roundings by, since separate builds drift apart on a shared machine.

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


def _roundings(text: str) -> list[int | str]:
    return [x if x == "auto" else int(x) for x in text.split(",") if x]


def make_inputs(arch: str, shape: tuple[int, ...], prunes: list[float], seed: int,
                work: Path) -> tuple[Path, dict[float, Path]]:
    """A random base checkpoint and one ``groups`` SPA per prune fraction."""
    from safetensors.torch import save_file

    from spa_export.pack.synth import random_base, synth_spa
    from spa_export.spa import write_spa

    state = random_base(arch, shape, seed=seed)
    base = work / "base.safetensors"
    save_file(state, str(base))
    spas = {}
    for prune in prunes:
        spa = synth_spa(arch, shape, prune=prune, seed=seed, masks="groups", base_state=state)
        spas[prune] = work / f"groups-{prune:g}.spa"
        write_spa(spa, spas[prune])
    return base, spas


def independent_timing(models: dict[str, Path], batch: int, shape: tuple[int, ...], threads: int,
                       warmup: int, runs: int, seed: int, rounds: int = 6) -> dict[str, Any]:
    """Median latency (ms) of every file with plain onnxruntime, side by side in one loop.

    ``rounds`` rounds; in each, every model gets a warm-up and then ``runs // rounds`` timed
    runs in a row (switching model on every run would evict each model's weights from the
    caches, which is not how any of them is deployed). Interleaving the rounds spreads the
    machine's drift over all models alike.
    """
    import onnxruntime as ort

    sessions = {}
    for label, path in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions[label] = ort.InferenceSession(str(path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).standard_normal((batch, *shape[1:]), dtype=np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    outputs = {k: s.run(None, feeds[k])[0] for k, s in sessions.items()}
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(warmup):
                s.run(None, feeds[k])
            for _ in range(max(1, runs // rounds)):
                start = time.perf_counter()
                s.run(None, feeds[k])
                samples[k].append((time.perf_counter() - start) * 1e3)
    first = next(iter(outputs.values()))
    return {"batch": batch, "runs": {k: len(v) for k, v in samples.items()},
            "p50_ms": {k: float(np.median(v)) for k, v in samples.items()},
            "max_abs_diff": {k: float(np.max(np.abs(o - first))) for k, o in outputs.items()}}


def offline_optimised(model: Path, batch: int, shape: tuple[int, ...], threads: int, runs: int,
                      seed: int, work: Path) -> dict[str, Any]:
    """Load time and p50 of ``model`` optimised when loaded, against a copy saved optimised.

    The saved copy is what ONNX Runtime writes with ``optimized_model_filepath`` at
    ORT_ENABLE_ALL (NCHWc layout for this processor's block size); it is loaded with
    graph optimisations off, as an edge deployment would.
    """
    import onnxruntime as ort

    saved = work / f"{model.stem}.ort-optimised.onnx"

    def session(path: Path, level: Any, save: Path | None = None) -> tuple[Any, float]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = level
        options.log_severity_level = 3  # the saved copy is processor-specific: said in the results
        if save is not None:
            options.optimized_model_filepath = str(save)
        start = time.perf_counter()
        s = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return s, (time.perf_counter() - start) * 1e3

    session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, saved)
    x = np.random.default_rng(seed).standard_normal((batch, *shape[1:]), dtype=np.float32)
    out: dict[str, Any] = {"batch": batch}
    results = {}
    for label, path, level in (("online", model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                               ("offline", saved, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        loads = []
        for _ in range(5):
            s, ms = session(path, level)
            loads.append(ms)
        feed = {s.get_inputs()[0].name: x}
        results[label] = s.run(None, feed)[0]
        for _ in range(5):
            s.run(None, feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            s.run(None, feed)
            times.append((time.perf_counter() - start) * 1e3)
        out[label] = {"load_ms": float(np.median(loads)), "p50_ms": float(np.median(times))}
    out["max_abs_diff"] = float(np.max(np.abs(results["online"] - results["offline"])))
    out["offline_bytes"] = saved.stat().st_size
    out["model_bytes"] = model.stat().st_size
    return out


def _label(report: dict[str, Any]) -> str:
    """'16 (auto)' for the default, '8' for a number the benchmark gave."""
    r = report["rounding"]
    return f"{r['multiple']} (auto)" if r["requested"] == "auto" else str(r["multiple"])


def _rows(report: dict[str, Any], prune: float, round_to: str) -> list[dict[str, Any]]:
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
    from spa_export.stages.pipeline import BuildOptions, build, parse_input_shape

    shape = parse_input_shape(args.input_shape)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="spa-bench-speedup-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    base, spas = make_inputs(args.arch, shape, args.prunes, args.seed, work)
    rows: list[dict[str, Any]] = []
    builds: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    offline: list[dict[str, Any]] = []
    for prune in args.prunes:
        built: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
        for round_to in args.round_to:
            out = work / f"build-{prune:g}-r{round_to}"
            opts = BuildOptions(base=base, spa=spas[prune], out=out, input_shape=shape,
                                arch=args.arch, bench="cpu", round_to=round_to,
                                bench_batches=tuple(args.batches), budget_s=args.budget,
                                threads=args.threads, seed=args.seed, quiet=True)
            start = time.perf_counter()
            report = build(opts).report
            seconds = time.perf_counter() - start
            label = _label(report)
            new = _rows(report, prune, label)
            rows += new
            builds.append({"prune": prune, "round_to": label, "out": str(out),
                           "build_s": seconds, "stages": report["stages"],
                           "latency": report["latency"], "bench_config": report["config"]})
            print(f"prune {prune:g} round_to {round_to}: build {seconds:.1f} s, "
                  + ", ".join(f"b{r['batch']} x{r['speedup']:.2f} (MACs x{r['macs_ratio']:.2f})"
                              for r in new), file=sys.stderr)
            if abs(prune - 0.5) < 1e-9 and report["rounding"]["requested"] == "auto":
                offline.append({"prune": prune, "round_to": label, **offline_optimised(
                    out / "model.onnx", 1, shape, new[0]["threads"], args.indep_runs, args.seed, work)})
            built[label] = (out, new)
        # every rounding of this prune level, timed side by side in one loop
        first_out, first_rows = next(iter(built.values()))
        for i, batch in enumerate(args.batches):
            models = {"dense": first_out / "dense.onnx"} | {k: o / "model.onnx" for k, (o, _) in built.items()}
            indep = independent_timing(models, batch, shape, first_rows[i]["threads"], args.indep_warmup,
                                       args.indep_runs, args.seed)
            dense = indep["p50_ms"]["dense"]
            for label, (_, report_rows) in built.items():
                row = next(r for r in report_rows if r["batch"] == batch)
                speedup = dense / indep["p50_ms"][label]
                checks.append({"prune": prune, "round_to": label, "batch": batch,
                               "macs_ratio": row["macs_ratio"], "dense_p50_ms": dense,
                               "pruned_p50_ms": indep["p50_ms"][label], "speedup": speedup,
                               "speedup_over_macs_ratio": speedup / row["macs_ratio"],
                               "report_speedup": row["speedup"], "runs": indep["runs"][label],
                               "max_abs_diff_vs_dense": indep["max_abs_diff"][label],
                               "within_25pct": abs(speedup / row["speedup"] - 1) <= AGREEMENT})
    return {
        "config": {"arch": args.arch, "input_shape": list(shape), "masks": "groups",
                   "prunes": args.prunes, "round_to": args.round_to, "batches": args.batches,
                   "budget_s": args.budget, "threads": args.threads, "seed": args.seed,
                   "indep_warmup": args.indep_warmup, "indep_runs": args.indep_runs,
                   "work_dir": str(work)},
        "rows": rows, "independent_check": checks, "offline_optimised": offline, "builds": builds, "machine": info,
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
              "## Side by side in one loop (independent of spa_export.runtime)", "",
              "Builds on a shared 2-core machine differ from run to run by up to 20% at batch 1, "
              "more than the roundings differ from each other; so per prune level and batch, the "
              "dense file and every rounding's model.onnx are timed together with a plain "
              f"onnxruntime loop: {cfg['indep_runs']} timed runs per model in 6 interleaved "
              f"rounds ({cfg['indep_warmup']} warm-up runs before each), median. This is the "
              "table to compare roundings by; `report` is the build's own speedup from the table "
              f"above (agreement within {AGREEMENT:.0%}: y/n).", "",
              "| prune | batch | round-to | MACs ratio | dense p50 ms | pruned p50 ms | speedup | "
              "speedup / MACs ratio | report | agree |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in res["independent_check"]:
        lines.append(
            f"| {c['prune']:.0%} | {c['batch']} | {c['round_to']} | {c['macs_ratio']:.2f} | "
            f"{c['dense_p50_ms']:.2f} | {c['pruned_p50_ms']:.2f} | {c['speedup']:.2f} | "
            f"{c['speedup_over_macs_ratio']:.2f} | {c['report_speedup']:.2f} | "
            f"{'y' if c['within_25pct'] else 'n'} |")
    if res.get("offline_optimised"):
        lines += ["", "## ONNX Runtime's offline-optimised model (50%, default rounding, batch 1)", "",
                  "`online`: model.onnx, optimised by ONNX Runtime when loaded (ORT_ENABLE_ALL), as "
                  "spa-export ships it. `offline`: the copy ONNX Runtime saves after optimising "
                  "(optimized_model_filepath), loaded with optimisations off. Load: median of 5 session "
                  "creations. ONNX Runtime warns that such a copy holds layouts for this processor "
                  "(NCHWc block size) and should run only where it was made.", "",
                  "| variant | load ms | p50 ms | file bytes |", "|---|---:|---:|---:|"]
        for o in res["offline_optimised"]:
            lines.append(f"| online | {o['online']['load_ms']:.1f} | {o['online']['p50_ms']:.2f} | "
                         f"{o['model_bytes']} |")
            lines.append(f"| offline | {o['offline']['load_ms']:.1f} | {o['offline']['p50_ms']:.2f} | "
                         f"{o['offline_bytes']} |")
            lines.append("")
            lines.append(f"Largest difference between the two outputs: {o['max_abs_diff']:.2e}.")
    lines += ["", "## Build times", "", "| prune | round-to | build s (incl. bench) |",
              "|---:|---:|---:|"]
    lines += [f"| {b['prune']:.0%} | {b['round_to']} | {b['build_s']:.1f} |" for b in res["builds"]]
    lines += ["", "## Machine", "", machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prunes", type=_floats, default=[0.3, 0.5, 0.7])
    parser.add_argument("--round-to", type=_roundings, default=[1, 16, "auto"],
                        help="multiples to compare; 'auto' is the default build's choice")
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
