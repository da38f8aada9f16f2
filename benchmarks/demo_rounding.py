"""The shipped demo (recipes/digits.yaml) built with --round-to 1, 8 and auto, timed side by side.

The digits network is narrow (32 and 64 channels) and its trained masks keep
counts such as 23 or 45: what ONNX Runtime does with such counts decides
whether pruning pays at all. Every build times dense.onnx against model.onnx
in one run (ONNX Runtime, CPU, batches 1 and 64).

    python benchmarks/demo_rounding.py             # budget 2 s per model and batch
    python benchmarks/demo_rounding.py --quick     # budget 0.3 s, results to /tmp
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from machine import machine_info, machine_markdown, write_results
from pruning_speedup import independent_timing

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "digits.yaml"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from spa_export.release.package import PackageOptions, build_package
    from spa_export.release.recipe import load_recipe

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="spa-bench-demo-"))
    info = machine_info()
    rows = []
    files: dict[str, dict[str, Path]] = {}
    for round_to in args.round_to:
        recipe = load_recipe(RECIPE)
        out = work / f"digits-r{round_to}"
        result = build_package(PackageOptions(recipe=recipe, out=out, quiet=True, overrides={
            "round_to": round_to, "budget_s": args.budget, "bench": "cpu", "bench_batches": (1, 64)}))
        for task, report in result.reports.items():
            r = report["rounding"]
            macs_ratio = report["macs"]["dense"] / report["macs"]["pruned"]
            label = f"{r['multiple']} (auto)" if r["requested"] == "auto" else str(r["multiple"])
            files.setdefault(task, {"dense": out / task / "dense.onnx"})[label] = out / task / "model.onnx"
            for s in report["speedup"]:
                rows.append({"task": task, "round_to": label, "extra_channels": r["extra_channels"],
                             "macs_ratio": macs_ratio,
                             "params_ratio": report["params"]["dense"] / report["params"]["pruned"],
                             "batch": s["batch"], "dense_p50_ms": s["dense_p50_ms"],
                             "pruned_p50_ms": s["pruned_p50_ms"], "speedup": s["speedup"]})
        print(f"round_to {round_to}: done", file=sys.stderr)
    side = []
    for task, models in files.items():
        for batch in (1, 64):
            t = independent_timing(models, batch, (1, 1, 8, 8), 2, 5, args.runs, 0)
            for label in models:
                if label != "dense":
                    side.append({"task": task, "batch": batch, "round_to": label,
                                 "dense_p50_ms": t["p50_ms"]["dense"], "pruned_p50_ms": t["p50_ms"][label],
                                 "speedup": t["p50_ms"]["dense"] / t["p50_ms"][label]})
    return {"config": {"recipe": "recipes/digits.yaml", "round_to": args.round_to, "budget_s": args.budget,
                       "batches": [1, 64], "side_by_side_runs": args.runs},
            "rows": rows, "side_by_side": side, "machine": info}


def markdown(res: dict[str, Any]) -> str:
    lines = ["# The demo's tasks: channel rounding against speed", "",
             f"recipes/digits.yaml (digits CNN, 1x8x8 inputs), each task built with the round-to "
             f"given, `bench=cpu`, budget {res['config']['budget_s']} s per model and batch. "
             "Ratios are dense / pruned; a speedup below 1 means the pruned network is slower.", "",
             "| task | round-to | channels kept beyond the masks | MACs ratio | params ratio | batch | "
             "dense p50 ms | pruned p50 ms | speedup |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(res["rows"], key=lambda r: (r["task"], r["batch"])):
        lines.append(f"| {r['task']} | {r['round_to']} | {r['extra_channels']} | {r['macs_ratio']:.2f} | "
                     f"{r['params_ratio']:.2f} | {r['batch']} | {r['dense_p50_ms']:.4f} | "
                     f"{r['pruned_p50_ms']:.4f} | {r['speedup']:.2f} |")
    lines += ["", "## Side by side in one loop", "",
              "The table above comes from separate builds; on this shared machine identical files "
              "built twice can differ by more than the roundings do. Here, per task and batch, the "
              f"dense file and every rounding's model.onnx are timed together: "
              f"{res['config']['side_by_side_runs']} runs each in 6 interleaved rounds, median "
              "(`benchmarks/pruning_speedup.py`'s loop).", "",
              "| task | batch | round-to | dense p50 ms | pruned p50 ms | speedup |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in res["side_by_side"]:
        lines.append(f"| {r['task']} | {r['batch']} | {r['round_to']} | {r['dense_p50_ms']:.4f} | "
                     f"{r['pruned_p50_ms']:.4f} | {r['speedup']:.2f} |")
    lines += ["", "## Machine", "", machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-to", type=lambda t: [x if x == "auto" else int(x) for x in t.split(",")],
                        default=[1, 8, "auto"])
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--runs", type=int, default=600, help="side-by-side timed runs per model")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 0.3 if args.quick else 2.0
    res = run(args)
    write_results("demo_rounding", res, markdown(res), args.out_dir, args.quick, HERE / "results")


if __name__ == "__main__":
    main()
