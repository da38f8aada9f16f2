"""int8 against float32, dense against pruned: ResNet-50 and ViT-B/16 on ONNX Runtime's CPU kernels.

For each network (a seeded random torchvision base, a ``synth`` SPA: ResNet-50 with 50% group
masks; ViT-B/16 with half of every MLP's hidden channels and a third of the heads), one
``spa-export build --quantize int8`` gives ``dense.onnx``, ``model.onnx`` (pruned, float32) and
``model.int8.onnx`` (the activation type spa-export chooses for this processor). For the
convolutional network the other activation type is quantized too (S8S8 against U8S8), to show
why the choice is what it is. Then every file is timed side by side in one interleaved loop
(:func:`spa_export.runtime.bench.benchmark`) at batch 1 and 8.

Calibration uses random inputs (``--calibration random``): no image data ships here, and the
calibration's ranges do not change the kernels' speed; accuracy is not measured by this script
(the digits demo measures int8 accuracy on real data).

    python benchmarks/int8_speedup.py            # ResNet-50 and ViT-B/16 at 224
    python benchmarks/int8_speedup.py --quick    # ResNet-18 at 64, to /tmp
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, machine_markdown, write_results  # noqa: E402

HERE = Path(__file__).resolve().parent


def build_one(arch: str, shape: str, masks: str, work: Path, seed: int) -> tuple[Path, dict]:
    from safetensors.torch import save_file

    from spa_export import BuildOptions, build, synth_spa, write_spa
    from spa_export.pack.synth import random_base

    base = work / f"{arch.split(':')[-1]}.safetensors"
    state = random_base(arch, shape, seed=seed)
    save_file(state, base)
    spa = work / f"{arch.split(':')[-1]}.spa"
    write_spa(synth_spa(arch, shape, prune=0.5, rank=8, seed=seed + 1, masks=masks, base_state=state), spa)
    out = work / arch.split(":")[-1]
    report = build(BuildOptions(base=base, spa=spa, out=out, input_shape=shape, arch=arch, bench="cpu",
                                budget_s=0.05, bench_batches=(1,), quantize=("int8",), calibration="random",
                                max_accuracy_drop=100.0, max_disagreement=100.0, quiet=True)).report
    return out, report


def time_all(out: Path, report: dict, budget: float, other_activations: bool) -> dict[str, Any]:
    import numpy as np

    from spa_export.runtime.bench import benchmark
    from spa_export.runtime.inputs import as_inputs, random_arrays
    from spa_export.runtime.quantize import quantize_int8

    models = {"dense": out / "dense.onnx", "pruned": out / "model.onnx", "pruned-int8": out / "model.int8.onnx"}
    q = report["int8"]
    if other_activations and q["method"].startswith("static"):
        other = "s8" if q["activations"] == "u8" else "u8"
        specs = as_inputs(report["inputs"]["input_shape"])
        calib = random_arrays(specs, np.random.default_rng(1), 64)
        quantize_int8(out / "model.onnx", out / f"model.int8-{other}.onnx", calib, activations=other,
                      calibration_source="random")
        models[f"pruned-{other}-int8"] = out / f"model.int8-{other}.onnx"
    result = benchmark(models, device="cpu", batches=(1, 8), budget_s=budget)
    rows = {}
    for e in result["latency"]:
        rows.setdefault(e["batch"], {})[e["model"]] = e["p50_ms"]
    return {"int8": q, "p50_ms": rows, "macs": report["macs"], "params": report["params"],
            "stable": all(e.get("stable", True) for e in result["latency"]),
            "environment": result["environment"]}


def markdown(res: dict[str, Any]) -> str:
    lines = ["# int8 against float32, dense against pruned (ONNX Runtime, CPU)", "", machine_markdown(res["machine"]),
             f"- int8 instructions: {res['instructions']}", "",
             "One interleaved loop per network (median p50). `int8 pruned` is what `--quantize int8` ships; "
             "for ResNet-50 the other activation type is timed too. Calibration: random inputs (speed only).", ""]
    for name, r in res["networks"].items():
        q = r["int8"]
        lines += [f"## {name}", "", f"- params {r['params']['dense']:,} -> {r['params']['pruned']:,}; MACs ratio "
                  f"{r['macs']['dense'] / r['macs']['pruned']:.2f}",
                  f"- int8 as shipped: {q['method']}, activations {q['activations']} ({q['why']})",
                  f"- every timing settled: {r['stable']}", "",
                  "| batch | model | p50 ms | over fp32 dense | over fp32 pruned |", "|---:|---|---:|---:|---:|"]
        for batch, row in sorted(r["p50_ms"].items()):
            for model, ms in row.items():
                lines.append(f"| {batch} | {model} | {ms:.2f} | x{row['dense'] / ms:.2f} | x{row['pruned'] / ms:.2f} |")
        lines.append("")
    lines += ["Goal (issue 20): int8 pruned >= 1.8x float32 pruned at batch 8 and >= 1.5x at batch 1 on a CPU with "
              "VNNI.", ""]
    for name, r in res["networks"].items():
        g = {b: r["p50_ms"][b]["pruned"] / r["p50_ms"][b]["pruned-int8"] for b in r["p50_ms"]}
        lines.append(f"- {name}: int8 over float32 pruned x{g.get(1, 0):.2f} at batch 1, x{g.get(8, 0):.2f} at batch 8")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--no-vit", action="store_true")
    args = parser.parse_args()
    from spa_export.runtime.quantize import int8_instructions

    nets = ([("resnet18", "torchvision:resnet18", "1,3,64,64", "groups")] if args.quick else
            [("ResNet-50, 50% group masks", "torchvision:resnet50", "1,3,224,224", "groups")]
            + ([] if args.no_vit else [("ViT-B/16, MLP channels and heads", "torchvision:vit_b_16", "1,3,224,224",
                                        "groups")]))
    res: dict[str, Any] = {"machine": machine_info(), "instructions": int8_instructions(), "networks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch, shape, masks in nets:
            out, report = build_one(arch, shape, masks, Path(tmp), args.seed)
            res["networks"][name] = time_all(out, report, 0.3 if args.quick else args.budget, True)
            print(f"{name}: {res['networks'][name]['p50_ms']}", file=sys.stderr)
    write_results("int8_speedup", res, markdown(res), args.out_dir, args.quick, HERE / "results")


if __name__ == "__main__":
    main()
