"""Package bytes, plain against edge layout, and the cost of materializing and switching tasks.

For ResNet-50 (torchvision, seeded random base) and 8 tasks of ``synth`` SPAs (SPLoRA rank 8,
group masks) at 30%, 50% and 70% pruning, one recipe per level built twice: ``--layout plain``
and ``--layout edge``. Recorded per level:

* every file's bytes of both packages; the payload (plain: the tasks' ``model.onnx``; edge: the
  base and the deltas); the SPA files and the deltas' graph skeletons;
* the bytes to add or update one task (plain: its ``model.onnx``; edge: its delta), each with
  its ``check.safetensors``, against its SPA;
* goals: edge payload <= base + 1.5 x the SPAs + the skeletons; one task's update <= 2 x its SPA.

At 50%, for the first task, interleaved ``--repeats`` times (medians):

* materialize, warm (the base already in memory, as on a device that switches tasks) and cold
  (the package opened and the base read from the page cache too);
* task switch: warm materialize + ``onnxruntime.InferenceSession`` from the bytes, against an
  ``InferenceSession`` of the prebuilt ``model.onnx`` file;
* peak memory (``ru_maxrss``) of a fresh process that materializes the task, against one that only
  imports what it needs.

    python benchmarks/edge_package.py            # full: ResNet-50 at 224, 8 tasks, 30/50/70%
    python benchmarks/edge_package.py --quick    # smoke: 64x64, 2 tasks, 50% only, to /tmp
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import (  # noqa: E402
    add_common_options,
    default_input_shape,
    machine_info,
    machine_markdown,
    write_results,
)

HERE = Path(__file__).resolve().parent
RANK = 8


def make_recipe(work: Path, arch: str, shape: str, prune: float, tasks: int, seed: int, base: Path) -> Path:
    """Write ``tasks`` SPAs at ``prune`` (seeds seed+1...) on the base, and a recipe of them."""
    from safetensors.torch import load_file

    from spa_export.pack.synth import synth_spa
    from spa_export.spa import write_spa

    state = load_file(base)
    level = work / f"p{int(prune * 100)}"
    level.mkdir()
    lines = [f"base: {base}", f"arch: '{arch}'", f"input_shape: {shape}", "bench: none", "tasks:"]
    for k in range(tasks):
        spa = synth_spa(arch, shape, prune=prune, rank=RANK, seed=seed + 1 + k, masks="groups", base_state=state,
                        task=f"task{k}")
        path = level / f"task{k}.spa"
        write_spa(spa, path)
        lines += [f"  - name: task{k}", f"    spa: {path}"]
    recipe = level / "recipe.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    return recipe


def build(recipe: Path, out: Path, layout: str) -> None:
    subprocess.run([sys.executable, "-m", "spa_export", "build", str(recipe), "--out", str(out), "--layout", layout,
                    "--bench", "none", "-q", "-j", "2"], check=True, stdout=subprocess.DEVNULL)


def sizes(pkg: Path) -> dict[str, int]:
    return {p.relative_to(pkg).as_posix(): p.stat().st_size for p in sorted(pkg.rglob("*")) if p.is_file()}


def level_bytes(recipe: Path, plain: Path, edge: Path) -> dict[str, Any]:
    from spa_export.release.recipe import load_recipe
    from spa_export.runtime.delta import SKELETON, read_delta

    ps, es = sizes(plain), sizes(edge)
    tasks = sorted({k.split("/")[0] for k in es if "/" in k})
    spa = {t.name: t.spa.stat().st_size for t in load_recipe(recipe).tasks}
    skeleton = {t: read_delta(edge / t / "delta.safetensors").tensors[SKELETON].nbytes for t in tasks}   # zlib
    plain_payload = sum(ps[f"{t}/model.onnx"] for t in tasks)
    edge_payload = es["base.safetensors"] + sum(es[f"{t}/delta.safetensors"] for t in tasks)
    bound = es["base.safetensors"] + 1.5 * sum(spa.values()) + sum(skeleton.values())
    t0 = tasks[0]
    update_plain = ps[f"{t0}/model.onnx"] + ps[f"{t0}/check.safetensors"]
    update_edge = es[f"{t0}/delta.safetensors"] + es[f"{t0}/check.safetensors"]
    return {
        "tasks": len(tasks), "base": es["base.safetensors"],
        "plain_total": sum(ps.values()), "edge_total": sum(es.values()),
        "plain_payload": plain_payload, "edge_payload": edge_payload,
        "spa_total": sum(spa.values()), "skeleton_total": sum(skeleton.values()),
        "deltas": {t: es[f"{t}/delta.safetensors"] for t in tasks}, "spas": spa,
        "edge_bound": bound, "edge_within_bound": edge_payload <= bound,
        "update": {"task": t0, "plain": update_plain, "edge": update_edge, "spa": spa[t0],
                   "edge_over_spa": update_edge / spa[t0], "within_2x_spa": update_edge <= 2 * spa[t0]},
    }


def timings(plain: Path, edge: Path, task: str, repeats: int) -> dict[str, Any]:
    import onnxruntime as ort

    from spa_export.runtime.packaged import open_package

    warm_pkg = open_package(edge)
    warm_pkg.base()
    prebuilt = plain / task / "model.onnx"
    want = warm_pkg.task_entry(task)["model_sha256"]
    rows: dict[str, list[float]] = {"materialize warm": [], "materialize cold": [], "switch (materialize + session)": [],
                                    "session from prebuilt model.onnx": []}
    for _ in range(repeats):
        t = time.perf_counter()
        data = warm_pkg.model_bytes(task)
        rows["materialize warm"].append(time.perf_counter() - t)
        t = time.perf_counter()
        cold = open_package(edge).model_bytes(task)
        rows["materialize cold"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ort.InferenceSession(warm_pkg.model_bytes(task), providers=["CPUExecutionProvider"])
        rows["switch (materialize + session)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ort.InferenceSession(str(prebuilt), providers=["CPUExecutionProvider"])
        rows["session from prebuilt model.onnx"].append(time.perf_counter() - t)
    assert data == cold  # the same bytes every time
    out = {k: {"median_s": statistics.median(v), "min_s": min(v), "runs": len(v)} for k, v in rows.items()}
    import hashlib

    out["sha256_equals_manifest"] = "sha256:" + hashlib.sha256(data).hexdigest() == want
    out["switch_over_prebuilt"] = (out["switch (materialize + session)"]["median_s"]
                                   / out["session from prebuilt model.onnx"]["median_s"])
    return out


# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into a child's ru_maxrss across exec
PEAK = """
import sys
from spa_export.runtime.packaged import open_package
import onnx, numpy, safetensors.numpy
if sys.argv[3] == "1":
    open_package(sys.argv[1]).model_bytes(sys.argv[2])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) / 1024)
"""


def peak_memory(edge: Path, task: str) -> dict[str, float]:
    def run(flag: str) -> float:
        done = subprocess.run([sys.executable, "-c", PEAK, str(edge), task, flag], check=True, capture_output=True,
                              text=True)
        return float(done.stdout.strip())
    return {"imports_only_mb": run("0"), "materialize_mb": run("1")}


def markdown(res: dict[str, Any]) -> str:
    mb = 1e6
    lines = [f"# Edge layout: package bytes and task switching ({res['arch']}, {res['input_shape']})", "",
             machine_markdown(res["machine"]), "",
             f"{res['tasks']} tasks per level, `synth` SPLoRA rank {RANK}, group masks; `spa-export build RECIPE "
             "--layout plain` against `--layout edge`. Payload: plain = the tasks' model.onnx; edge = base.safetensors "
             "+ the deltas. Bound (goal): base + 1.5 x the SPA files + the deltas' graph skeletons.", "",
             "| pruned | plain package | edge package | plain payload | edge payload | base | SPAs | skeletons "
             "| bound | within |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for level, b in res["levels"].items():
        lines.append(f"| {level} | {b['plain_total'] / mb:.2f} MB | {b['edge_total'] / mb:.2f} MB | "
                     f"{b['plain_payload'] / mb:.2f} MB | {b['edge_payload'] / mb:.2f} MB | {b['base'] / mb:.2f} MB | "
                     f"{b['spa_total'] / mb:.3f} MB | {b['skeleton_total'] / mb:.3f} MB | {b['edge_bound'] / mb:.2f} MB "
                     f"| {'yes' if b['edge_within_bound'] else 'no'} |")
    lines += ["", "Adding or updating one task (its network file and its check.safetensors):", "",
              "| pruned | plain | edge | its SPA | edge / SPA | within 2 x SPA |", "|---:|---:|---:|---:|---:|---|"]
    for level, b in res["levels"].items():
        u = b["update"]
        lines.append(f"| {level} | {u['plain'] / 1e3:.0f} KB | {u['edge'] / 1e3:.0f} KB | {u['spa'] / 1e3:.0f} KB | "
                     f"{u['edge_over_spa']:.2f} | {'yes' if u['within_2x_spa'] else 'no'} |")
    if "digits" in res:
        d = res["digits"]
        lines += ["", "The shipped digits demo (`recipes/digits.yaml`, 3 tasks; both packages also hold each task's "
                  "int8 file):", "",
                  "| plain package | edge package | plain payload | edge payload | base | SPAs | skeletons | bound "
                  "| within |", "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                  f"| {d['plain_total'] / 1e3:.0f} KB | {d['edge_total'] / 1e3:.0f} KB | {d['plain_payload'] / 1e3:.0f} KB "
                  f"| {d['edge_payload'] / 1e3:.0f} KB | {d['base'] / 1e3:.0f} KB | {d['spa_total'] / 1e3:.0f} KB | "
                  f"{d['skeleton_total'] / 1e3:.0f} KB | {d['edge_bound'] / 1e3:.0f} KB | "
                  f"{'yes' if d['edge_within_bound'] else 'no'} |",
                  "", "Updating one digits task: " + ", ".join(
                      f"{t}: edge {b / 1e3:.0f} KB against its SPA {d['spas'][t] / 1e3:.0f} KB"
                      for t, b in d["deltas"].items())]
    t = res["timing"]
    lines += ["", f"Timing at {res['timing_level']}, task `{res['timing_task']}` (median of {t['materialize warm']['runs']}"
              "; one process, interleaved):", "", "| what | median | min |", "|---|---:|---:|"]
    for k, v in t.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['median_s'] * 1e3:.1f} ms | {v['min_s'] * 1e3:.1f} ms |")
    lines += ["", f"- switch / prebuilt load: {t['switch_over_prebuilt']:.2f} (goal <= 2)",
              f"- materialized bytes' sha256 equals the manifest's (the verified file): {t['sha256_equals_manifest']}",
              "- the prebuilt file is the plain layout's model.onnx of the same task (batch-norm folded by the "
              "exporter; the edge layout keeps it as a node, which ONNX Runtime folds when it loads the file)",
              f"- peak RSS of a process that materializes: {res['peak']['materialize_mb']:.0f} MB "
              f"(imports alone: {res['peak']['imports_only_mb']:.0f} MB)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_options(parser)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    default_input_shape(args)
    levels = [0.5] if args.quick else [0.3, 0.5, 0.7]
    tasks = args.tasks or (2 if args.quick else 8)
    info = machine_info()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        from safetensors.torch import save_file

        from spa_export.pack.synth import random_base

        base = work / "base.safetensors"
        save_file(random_base(args.arch, args.input_shape, seed=args.seed), base)
        res: dict[str, Any] = {"arch": args.arch, "input_shape": args.input_shape, "tasks": tasks, "machine": info,
                               "levels": {}}
        built = {}
        for p in levels:
            recipe = make_recipe(work, args.arch, args.input_shape, p, tasks, args.seed, base)
            plain, edge = recipe.parent / "plain", recipe.parent / "edge"
            build(recipe, plain, "plain")
            build(recipe, edge, "edge")
            res["levels"][f"{int(p * 100)}%"] = level_bytes(recipe, plain, edge)
            built[p] = (plain, edge)
            print(f"{int(p * 100)}%: {json.dumps(res['levels'][f'{int(p * 100)}%']['update'])}", file=sys.stderr)
        digits = HERE.parent / "recipes" / "digits.yaml"
        if not args.quick:
            build(digits, work / "digits-plain", "plain")
            build(digits, work / "digits-edge", "edge")
            res["digits"] = level_bytes(digits, work / "digits-plain", work / "digits-edge")
        plain, edge = built[0.5]
        res["timing_level"], res["timing_task"] = "50%", "task0"
        res["timing"] = timings(plain, edge, "task0", args.repeats)
        res["peak"] = peak_memory(edge, "task0")
    write_results("edge_package", res, markdown(res), args.out_dir, args.quick, HERE / "results")


if __name__ == "__main__":
    main()
