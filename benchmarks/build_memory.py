"""Peak memory of a build, over what the libraries themselves take.

The bound: a ResNet-50 build's peak resident memory stays below about three
times the base checkpoint, on top of the runtimes. Each configuration runs in
a fresh process that

1. imports torchvision and builds the shipped tiny example (``models/``),
   which loads the rest: its peak RSS is **the runtimes** (torch,
   torchvision, ONNX, onnxsim and ONNX Runtime loaded and warmed up);
2. then builds the measured network: its peak RSS is **the build's**.

``over runtimes = build peak - runtimes peak``, and ``x base`` is that over
the base checkpoint's size. The base and SPA come from ``spa-export synth``
(output-only masks). ``--bench cpu`` also writes and times ``dense.onnx``,
whose export of the full-width network costs more.

    python benchmarks/build_memory.py            # ResNet-50 at 224, bench none and cpu
    python benchmarks/build_memory.py --quick    # ResNet-18 at 64x64, results to /tmp
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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

from spa_export.safety.memory import peak_rss_mb

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torchvision.models  # noqa: F401  (the architectures' library is one of the runtimes)

    from spa_export.stages.pipeline import BuildOptions, build, parse_input_shape

    work = Path(config["work"])
    build(BuildOptions(base=MODELS / "tiny_resnet.safetensors", spa=MODELS / "tiny_resnet-example.spa",
                       out=work / f"tiny-{config['name']}", input_shape=(1, 3, 32, 32), bench=config["bench"],
                       bench_batches=(1,), budget_s=0.2, quiet=True))
    runtimes = peak_rss_mb()
    result = build(BuildOptions(base=Path(config["base"]), spa=Path(config["spa"]), out=work / config["name"],
                                input_shape=parse_input_shape(config["shape"]), bench=config["bench"],
                                bench_batches=(1,), budget_s=0.2, quiet=True))
    return {"runtimes_peak_mb": runtimes, "build_peak_mb": peak_rss_mb(),
            "report_peak_rss_mb": result.report["peak_rss_mb"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="spa-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    base, spa = make_inputs(args.arch, args.input_shape, args.prune, args.seed, work)
    base_mb = base.stat().st_size / 2**20
    rows = []
    for bench in args.bench:
        config = {"name": f"build-{bench}", "base": str(base), "spa": str(spa), "shape": args.input_shape,
                  "bench": bench, "work": str(work)}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"measurement {config['name']} failed:\n{proc.stderr}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        over = got["build_peak_mb"] - got["runtimes_peak_mb"]
        rows.append({"bench": bench, **got, "over_runtimes_mb": round(over, 1),
                     "over_runtimes_x_base": round(over / base_mb, 2)})
        print(f"bench {bench}: peak {got['build_peak_mb']} MB, runtimes {got['runtimes_peak_mb']} MB, "
              f"over runtimes {over:.0f} MB = x{over / base_mb:.2f} the base", file=sys.stderr)
    return {"config": {"arch": args.arch, "input_shape": args.input_shape, "prune": args.prune,
                       "masks": "out-only", "seed": args.seed, "work_dir": str(work)},
            "base_checkpoint_mb": round(base_mb, 1), "spa_mb": round(spa.stat().st_size / 2**20, 2),
            "rows": rows, "machine": info}


def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines = [
        "# Build peak memory over the runtimes", "",
        f"{cfg['arch']} at {cfg['input_shape']}, synth SPA {cfg['prune']:.0%} ({cfg['masks']} masks); "
        f"base checkpoint {res['base_checkpoint_mb']} MiB, SPA {res['spa_mb']} MiB. One fresh process per row.",
        "",
        "| --bench | runtimes peak MiB | build peak MiB | report `peak_rss_mb` | over runtimes MiB | x base |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['bench']} | {r['runtimes_peak_mb']} | {r['build_peak_mb']} | "
                     f"{r['report_peak_rss_mb']} | {r['over_runtimes_mb']} | {r['over_runtimes_x_base']} |")
    lines += ["", "Runtimes: the same process after importing everything and building the shipped tiny "
              "example with the same `--bench`. `--bench cpu` exports the full-width `dense.onnx` too "
              "(timed with a 0.2 s budget, batch 1).", "", "## Machine", "", machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--bench", nargs="+", default=["none", "cpu"], choices=["none", "cpu"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_common_options(parser)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: ResNet-18 at 1,3,64,64, results to /tmp")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick and args.arch == "torchvision:resnet50":
        args.arch = "torchvision:resnet18"
    default_input_shape(args)
    res = run(args)
    write_results("build_memory", res, markdown(res), args.out_dir, args.quick, HERE / "results")


if __name__ == "__main__":
    main()
