"""Where the time goes in a pruned edge network: ONNX Runtime's own profile, per kind of operator.

For the issue's edge families (timm efficientnet_b0 and mobilenetv3_large_100 at 224, 50% group
masks, default rounding), the dense and the pruned network are run under ONNX Runtime's profiler
(``enable_profiling``), alternating, and every kernel's time is summed by kind: depthwise
convolutions (weight ``[C, 1, k, k]``), other convolutions (pointwise and full), and everything else
(activations, squeeze-excite's pooling and products, additions). The MACs ratio is all
convolution; the table shows how far each kind's time falls with pruning.

    .venv/bin/python benchmarks/edge_profile.py [--arch A ...] [--batch 1 8] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from machine import machine_info, machine_markdown, write_results

HERE = Path(__file__).resolve().parent
ARCHS = ["timm.models.efficientnet:efficientnet_b0", "timm.models.mobilenetv3:mobilenetv3_large_100"]


def build(arch: str, work: Path) -> Path:
    """A seeded random base, a 50% ``groups`` SPA, and the build (default rounding, no bench)."""
    from safetensors.torch import save_file

    from spa_export import BuildOptions, build, synth_spa, write_spa
    from spa_export.pack.synth import random_base

    shape = (1, 3, 224, 224)
    base = random_base(arch, shape, seed=0)
    spa = synth_spa(arch, shape, prune=0.5, rank=8, seed=1, masks="groups", base_state=base)
    save_file(base, str(work / "base.safetensors"))
    write_spa(spa, work / "task.spa")
    out = work / "out"
    build(BuildOptions(base=work / "base.safetensors", spa=work / "task.spa", out=out, input_shape=shape,
                       arch=arch, quiet=True, bench="cpu", budget_s=0.2, bench_batches=(1,)))   # keeps dense.onnx
    return out


def _kind(event: dict) -> str:
    op = event["args"].get("op_name", "")
    if "Conv" not in op:
        return "other (activations, squeeze-excite, additions...)"
    shapes = event["args"].get("input_type_shape", [])
    weight = next(iter(shapes[1].values())) if len(shapes) > 1 else []
    return "depthwise convolution" if len(weight) == 4 and weight[1] == 1 else "other convolutions"


def profile(paths: dict[str, Path], batch: int, runs: int, work: Path) -> dict[str, dict[str, float]]:
    """Median per-run time of each kind, per model: the models alternate run by run."""
    import onnxruntime as ort

    sessions = {}
    for label, path in paths.items():
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(work / f"profile-{label}-{batch}")
        sessions[label] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for _ in range(5):
        for s in sessions.values():
            s.run(None, {s.get_inputs()[0].name: x})
    for _ in range(runs):
        for s in sessions.values():
            s.run(None, {s.get_inputs()[0].name: x})
    out = {}
    for label, s in sessions.items():
        events = json.loads(Path(s.end_profiling()).read_text())
        per_run: dict[str, list[float]] = defaultdict(list)
        run_total: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        run = -1
        for e in events:
            if e.get("cat") == "Session" and e.get("name") == "model_run":
                run += 1
            elif e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and run >= 0:
                run_total[run][_kind(e)] += e["dur"] / 1000.0
        for r in sorted(run_total)[5:]:     # the timed runs, after the warm-up
            for kind, ms in run_total[r].items():
                per_run[kind].append(ms)
        out[label] = {kind: float(np.median(v)) for kind, v in per_run.items()}
    return out


def markdown(res: dict) -> str:
    lines = ["# Where the time goes: dense against pruned, by kind of operator", "",
             "ONNX Runtime's profiler (kernel times, summed per run, median over the timed runs; dense "
             "and pruned alternate run by run). 224x224, 50% `groups` masks, default `--round-to auto`.",
             ""]
    for arch, by_batch in res["archs"].items():
        lines += [f"## {arch}", "", f"MACs ratio (dense / pruned): {by_batch['macs_ratio']:.2f}", "",
                  "| batch | kind | dense ms | pruned ms | ratio | share of dense time |",
                  "|---:|---|---:|---:|---:|---:|"]
        for batch, prof in by_batch["batches"].items():
            total = sum(prof["dense"].values())
            kinds = sorted(prof["dense"], key=lambda k: -prof["dense"][k])
            for kind in kinds:
                d, p = prof["dense"][kind], prof["pruned"].get(kind, 0.0)
                lines.append(f"| {batch} | {kind} | {d:.2f} | {p:.2f} | {d / p:.2f} | {d / total:.0%} |")
            pt = sum(prof["pruned"].values())
            lines.append(f"| {batch} | **all kernels** | {total:.2f} | {pt:.2f} | {total / pt:.2f} | |")
        lines.append("")
    lines += ["## Machine", "", machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=ARCHS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    res: dict = {"machine": machine_info(), "archs": {}}
    for arch in args.arch:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            out = build(arch, work)
            report = json.loads((out / "report.json").read_text())
            macs = report["macs"]
            entry = {"macs_ratio": macs["dense"] / macs["pruned"], "batches": {}}
            for batch in args.batch:
                entry["batches"][str(batch)] = profile({"dense": out / "dense.onnx", "pruned": out / "model.onnx"},
                                                       batch, args.runs, work)
            res["archs"][arch] = entry
    write_results("edge_profile", res, markdown(res), args.out_dir, False, HERE / "results")


if __name__ == "__main__":
    main()
