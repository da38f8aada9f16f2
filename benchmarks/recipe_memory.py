"""Peak memory of a recipe build: four ResNet-50 tasks, one process (-j 1) against two workers (-j 2).

A recipe reads its base once and keeps it for every task; with ``-j N`` the
base goes to shared memory and N worker processes map it. Memory is summed
over the whole process tree (the build and its workers) as PSS, the
proportional set size from ``/proc/PID/smaps_rollup``: pages shared between
processes (the libraries, the shared base) count once, split between them.
The tree is sampled every 50 ms; the peak is the largest sum.

    python benchmarks/recipe_memory.py            # ResNet-50 at 224, 4 tasks, -j 1 and -j 2
    python benchmarks/recipe_memory.py --quick    # ResNet-18 at 64x64, results to /tmp
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import (
    add_common_options,
    default_input_shape,
    machine_info,
    machine_markdown,
    write_results,
)

HERE = Path(__file__).resolve().parent
PRUNES = (0.3, 0.5, 0.7, 0.5)


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return out


def _pss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


def measure(args: list[str]) -> tuple[float, float]:
    """Peak PSS of the process tree (MiB) and wall time (s) of ``spa-export ARGS``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "spa_export", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _pss_mb(proc.pid))
        time.sleep(0.05)
    if proc.returncode != 0:
        sys.exit(f"spa-export {' '.join(args)} failed:\n{proc.stderr.read() if proc.stderr else ''}")
    return round(peak, 1), round(time.perf_counter() - start, 1)


def run(a: argparse.Namespace) -> dict[str, Any]:
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="spa-bench-recipe-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    base = work / "base.safetensors"
    shape = a.input_shape
    for i, prune in enumerate(PRUNES):
        extra = ["--save-base", str(base)] if i == 0 else ["--base", str(base)]
        subprocess.run([sys.executable, "-m", "spa_export", "synth", "--arch", a.arch, "--input-shape", shape,
                        "--prune", str(prune), "--masks", "out-only", "--seed", str(a.seed + i),
                        "-o", str(work / f"t{i}.spa"), "--force", *extra], check=True, capture_output=True)
    tasks = "".join(f"  - name: t{i}\n    spa: t{i}.spa\n" for i in range(len(PRUNES)))
    (work / "recipe.yaml").write_text(f"base: base.safetensors\narch: {a.arch}\ninput_shape: {shape}\n"
                                      f"bench: none\ntasks:\n{tasks}")
    rows = []
    single_peak, single_s = measure(["build", "--base", str(base), "--spa", str(work / "t1.spa"),
                                     "--input-shape", shape, "--out", str(work / "single"), "-q"])
    rows.append({"what": "one task (spa-export build --base --spa)", "peak_pss_mb": single_peak,
                 "seconds": single_s})
    for jobs in (1, 2):
        peak, seconds = measure(["build", str(work / "recipe.yaml"), "-j", str(jobs), "--out",
                                 str(work / f"pkg-j{jobs}"), "-q"])
        rows.append({"what": f"{len(PRUNES)} tasks, -j {jobs}", "peak_pss_mb": peak, "seconds": seconds})
        print(f"-j {jobs}: peak {peak} MiB, {seconds} s", file=sys.stderr)
    base_mb = base.stat().st_size / 2**20
    return {"config": {"arch": a.arch, "input_shape": shape, "prunes": list(PRUNES), "masks": "out-only",
                       "seed": a.seed, "work_dir": str(work)},
            "base_checkpoint_mb": round(base_mb, 1), "rows": rows, "machine": info}


def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines = ["# Recipe build peak memory (PSS of the whole process tree)", "",
             f"{cfg['arch']} at {cfg['input_shape']}, base checkpoint {res['base_checkpoint_mb']} MiB; "
             f"`synth` SPAs pruned {', '.join(f'{p:.0%}' for p in cfg['prunes'])} ({cfg['masks']} masks); "
             "`--bench none`. Each row is a fresh `spa-export` process.", "",
             "| build | peak PSS MiB | x base | wall s |", "|---|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['what']} | {r['peak_pss_mb']} | {r['peak_pss_mb'] / res['base_checkpoint_mb']:.1f} | "
                     f"{r['seconds']} |")
    lines += ["", "PSS counts a page shared by several processes once, split between them (the libraries "
              "that every worker maps, the base in shared memory).", "", "## Machine", "",
              machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_options(parser)
    parser.add_argument("--quick", action="store_true", help="smoke run: ResNet-18 at 1,3,64,64, results to /tmp")
    a = parser.parse_args(argv)
    if a.quick and a.arch == "torchvision:resnet50":
        a.arch = "torchvision:resnet18"
    default_input_shape(a)
    res = run(a)
    write_results("recipe_memory", res, markdown(res), a.out_dir, a.quick, HERE / "results")


if __name__ == "__main__":
    main()
