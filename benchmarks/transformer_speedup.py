"""Measured CPU speedup of a pruned vision transformer against its MAC reduction.

torchvision's ViT-B/16 (1,3,224,224) with a seeded random base and one SPA:
SPLoRA adapters (rank 8) on every encoder Linear layer, a new 10-class head, half of every MLP's
hidden channels masked (the first Linear's outputs and the second's inputs)
and a third of every attention's heads masked (their query, key and value rows
and the output projection's columns). The build removes them (heads, hidden
channels), verifies the result against the masked reference, and times
dense.onnx against model.onnx with ``bench="cpu"``. The same two files are then
timed side by side in one loop written here (plain onnxruntime, interleaved
rounds), next to the MACs ratio.

    .venv/bin/python benchmarks/transformer_speedup.py             # ViT-B/16, batches 1 and 8
    .venv/bin/python benchmarks/transformer_speedup.py --quick     # batch 1, short budgets, to /tmp
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import SMOKE_DIR, machine_info, machine_markdown, write_results
from pruning_speedup import independent_timing

HERE = Path(__file__).resolve().parent
ARCH = "torchvision:vit_b_16"
SHAPE = (1, 3, 224, 224)
PARTS = ("q_proj", "k_proj", "v_proj")


def make_spa(state: dict[str, Any], mlp_prune: float, head_prune: float, rank: int, seed: int) -> Any:
    """The SPA described in the module docstring, built from the base's own shapes."""
    import torch

    from spa_export.nets.arch import build_model
    from spa_export.spa import LayerSpa
    from spa_export.spa import make_spa as make
    from spa_export.spa.projections import with_projections

    model = build_model(ARCH)
    modules = with_projections(dict(model.named_modules()))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    out_masks: dict[str, np.ndarray] = {}
    in_masks: dict[str, np.ndarray] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.MultiheadAttention):
            heads = rng.choice(mod.num_heads, size=round(head_prune * mod.num_heads), replace=False)
            keep = ~np.isin(np.arange(mod.embed_dim) // mod.head_dim, heads)
            for part in PARTS:
                out_masks[f"{name}.{part}"] = keep
            in_masks[f"{name}.out_proj"] = keep
        elif name.endswith(".mlp"):
            hidden = mod[0].out_features
            keep = np.ones(hidden, dtype=bool)
            keep[rng.choice(hidden, size=round(mlp_prune * hidden), replace=False)] = False
            out_masks[f"{name}.0"] = keep
            in_masks[f"{name}.3"] = keep
    layers = []
    for name, mod in modules.items():
        if not name.startswith("encoder.layers") or not hasattr(mod, "out_features"):
            continue
        fields: dict[str, torch.Tensor] = {}
        om, im = out_masks.get(name), in_masks.get(name)
        if om is not None:
            fields["out_mask"] = torch.from_numpy(om)
        if im is not None:
            fields["in_mask"] = torch.from_numpy(im)
        out_kept = int(om.sum()) if om is not None else mod.out_features
        in_kept = int(im.sum()) if im is not None else mod.in_features
        fields["lora_cols"] = torch.randn(out_kept, rank, generator=gen) * 0.02
        fields["lora_rows"] = torch.randn(rank, in_kept, generator=gen) * 0.02
        layers.append(LayerSpa(name, **fields))
    # the task's own head (torchvision initialises ViT's head to zeros: a zero output would verify nothing)
    head = model.heads.head
    overrides = {"heads.head.weight": torch.randn(10, head.in_features, generator=gen) * 0.05,
                 "heads.head.bias": torch.randn(10, generator=gen) * 0.05}
    return make(layers, overrides, task=f"vit-mlp{mlp_prune:g}-heads{head_prune:.2g}", arch=ARCH,
                description=f"benchmark: MLP hidden {mlp_prune:.0%} and heads {head_prune:.0%} masked, "
                            f"SPLoRA rank {rank}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from safetensors.torch import save_file

    from spa_export.pack.synth import random_base
    from spa_export.spa import write_spa
    from spa_export.stages.pipeline import BuildOptions, build

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="spa-bench-vit-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    state = random_base(ARCH, SHAPE, seed=args.seed)
    base, spa = work / "base.safetensors", work / "task.spa"
    save_file(state, str(base))
    write_spa(make_spa(state, args.mlp_prune, args.head_prune, args.rank, args.seed), spa)
    out = work / "build"
    opts = BuildOptions(base=base, spa=spa, out=out, input_shape=SHAPE, arch=ARCH, bench="cpu",
                        bench_batches=tuple(args.batches), budget_s=args.budget, threads=args.threads,
                        seed=args.seed, quiet=True)
    start = time.perf_counter()
    report = build(opts).report
    build_s = time.perf_counter() - start
    macs, params = report["macs"], report["params"]
    macs_ratio = macs["dense"] / macs["pruned"]
    threads = report["latency"][0]["threads"]
    attention = report["plan"].get("attention", {})
    rows = []
    for s in report["speedup"]:
        indep = independent_timing({"dense": out / "dense.onnx", "pruned": out / "model.onnx"}, s["batch"],
                                   SHAPE, threads, args.indep_warmup, args.indep_runs, args.seed)
        speedup = indep["p50_ms"]["dense"] / indep["p50_ms"]["pruned"]
        rows.append({"batch": s["batch"], "report_dense_p50_ms": s["dense_p50_ms"],
                     "report_pruned_p50_ms": s["pruned_p50_ms"], "report_speedup": s["speedup"],
                     "dense_p50_ms": indep["p50_ms"]["dense"], "pruned_p50_ms": indep["p50_ms"]["pruned"],
                     "speedup": speedup, "speedup_over_macs_ratio": speedup / macs_ratio,
                     "runs": indep["runs"], "max_abs_diff_dense_vs_pruned": indep["max_abs_diff"]["pruned"]})
        print(f"batch {s['batch']}: x{speedup:.2f} measured, MACs x{macs_ratio:.2f}", file=sys.stderr)
    heads = sorted({(a["num_heads"], len(a["heads_kept"])) for a in attention.values()})
    return {
        "config": {"arch": ARCH, "input_shape": list(SHAPE), "mlp_prune": args.mlp_prune,
                   "head_prune": args.head_prune, "rank": args.rank, "batches": args.batches,
                   "budget_s": args.budget, "threads": threads, "seed": args.seed,
                   "indep_warmup": args.indep_warmup, "indep_runs": args.indep_runs, "work_dir": str(work)},
        "macs": macs, "params": params, "macs_ratio": macs_ratio,
        "params_ratio": params["dense"] / params["pruned"], "heads_before_after": heads,
        "verify": {"passed": report["verification"]["passed"], "worst": report["verification"]["worst"]},
        "bytes": {"dense": (out / "dense.onnx").stat().st_size, "pruned": (out / "model.onnx").stat().st_size},
        "build_s": build_s, "stages": report["stages"], "rows": rows, "latency": report["latency"],
        "machine": info,
    }


def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    heads = ", ".join(f"{a} -> {b}" for a, b in res["heads_before_after"])
    w = res["verify"]["worst"] or {}
    lines = [
        "# Transformer pruning speedup: measured (ONNX Runtime, CPU) vs MACs", "",
        f"{cfg['arch']} at {','.join(map(str, cfg['input_shape']))}, random base (seed {cfg['seed']}); "
        f"SPA: SPLoRA rank {cfg['rank']} on every encoder Linear, {cfg['mlp_prune']:.0%} of every MLP's "
        f"hidden channels and {cfg['head_prune']:.0%} of every attention's heads masked. "
        f"Heads per attention: {heads}. Verified against the masked reference: "
        f"{'passed' if res['verify']['passed'] else 'FAILED'} (worst error "
        f"{w.get('ratio', float('nan')):.3g} of the allowed).", "",
        "| | dense | pruned | ratio |", "|---|---:|---:|---:|",
        f"| MACs | {res['macs']['dense'] / 1e9:.2f} G | {res['macs']['pruned'] / 1e9:.2f} G | "
        f"{res['macs_ratio']:.2f} |",
        f"| parameters | {res['params']['dense'] / 1e6:.1f} M | {res['params']['pruned'] / 1e6:.1f} M | "
        f"{res['params_ratio']:.2f} |",
        f"| ONNX bytes | {res['bytes']['dense']} | {res['bytes']['pruned']} | "
        f"{res['bytes']['dense'] / res['bytes']['pruned']:.2f} |", "",
        "## Latency, side by side", "",
        f"dense.onnx and model.onnx timed in one plain onnxruntime loop ({cfg['threads']} intra-op threads, "
        f"{cfg['indep_runs']} timed runs per model in 6 interleaved rounds, {cfg['indep_warmup']} warm-up "
        "runs before each, median); `report` is the build's own bench stage (budget "
        f"{cfg['budget_s']} s per model and batch).", "",
        "| batch | dense p50 ms | pruned p50 ms | speedup | MACs ratio | speedup / MACs ratio | "
        "report speedup |", "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['batch']} | {r['dense_p50_ms']:.1f} | {r['pruned_p50_ms']:.1f} | "
                     f"{r['speedup']:.2f} | {res['macs_ratio']:.2f} | {r['speedup_over_macs_ratio']:.2f} | "
                     f"{r['report_speedup']:.2f} |")
    lines += ["", f"Build (load to report, bench included): {res['build_s']:.0f} s.", "",
              "## Machine", "", machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlp-prune", type=float, default=0.5)
    parser.add_argument("--head-prune", type=float, default=1 / 3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batches", type=lambda t: [int(x) for x in t.split(",") if x], default=None,
                        help="default 1,8 (1 with --quick)")
    parser.add_argument("--budget", type=float, default=None, help="default 3 (0.3 with --quick)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--indep-warmup", type=int, default=3)
    parser.add_argument("--indep-runs", type=int, default=None, help="default 30 (6 quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"default benchmarks/results ({SMOKE_DIR} with --quick)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 1, short budgets, to /tmp")
    args = parser.parse_args(argv)
    args.batches = args.batches or ([1] if args.quick else [1, 8])
    args.budget = args.budget if args.budget is not None else (0.3 if args.quick else 3.0)
    args.indep_runs = args.indep_runs or (6 if args.quick else 30)
    res = run(args)
    write_results("transformer_speedup", res, markdown(res), args.out_dir, args.quick, HERE / "results")


if __name__ == "__main__":
    main()
