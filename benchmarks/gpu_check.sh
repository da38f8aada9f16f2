#!/usr/bin/env bash
# The GPU half, settled once on a machine with an NVIDIA GPU (no GPU has been lent to this project yet).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, in the environment of `pip install -e '.[test]'`
#                                           # (+ '.[tensorrt]' and/or onnxruntime-gpu where you have them)
#
# 1. runs every GPU test (`pytest -m gpu -rs`): TensorRT engines fp32/fp16/int8, PyTorch CUDA timing,
#    `spa-export check --device gpu`; the skip lines say what this machine lacks;
# 2. builds ResNet-50 at 224 with 30/50/70% group masks (`synth`, seeded), `--bench gpu` (TensorRT fp32 and fp16
#    where installed, else PyTorch CUDA; ONNX Runtime CUDA where installed) and `--quantize int8`, and where
#    TensorRT works an INT8 engine of the QDQ model, timed against the fp32 ones (`spa-export bench --device gpu`);
# 3. writes everything under benchmarks/results/gpu/ (reports, logs, nvidia-smi): commit that folder.
#
# Nothing here fakes a result: where a runtime is missing, its step says so and the next one runs.
set -u
OUT=${OUT:-benchmarks/results/gpu}
ARCH=${ARCH:-torchvision:resnet50}       # ARCH=torchvision:resnet18 SHAPE=1,3,64,64 OUT=/tmp/gpu: a quick smoke run
SHAPE=${SHAPE:-1,3,224,224}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
PY=${PYTHON:-python}
{ date -u; nvidia-smi || echo "nvidia-smi: not found"; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

"$PY" -m pytest -m gpu -rs -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu.txt"

"$PY" -m spa_export synth --arch "$ARCH" --input-shape "$SHAPE" --prune 0.5 --masks groups \
    --seed 0 --save-base "$WORK/base.safetensors" -o "$WORK/first.spa" > /dev/null
for p in 30 50 70; do
    "$PY" -m spa_export synth --arch "$ARCH" --input-shape "$SHAPE" --prune "0.$p" --masks groups \
        --seed 1 --base "$WORK/base.safetensors" -o "$WORK/p$p.spa" > /dev/null
    mkdir -p "$OUT/resnet50-p$p"
    "$PY" -m spa_export build --base "$WORK/base.safetensors" --spa "$WORK/p$p.spa" --input-shape "$SHAPE" \
        --bench all --batch 1 --batch 8 --quantize int8 --calibration random --max-accuracy-drop 100 \
        --max-disagreement 100 --out "$WORK/p$p" 2>&1 | tee "$OUT/resnet50-p$p/build.txt"
    cp "$WORK/p$p/report.json" "$WORK/p$p/report.md" "$OUT/resnet50-p$p/" 2>/dev/null
    cp "$WORK/p$p/latency.png" "$OUT/resnet50-p$p/" 2>/dev/null
    if "$PY" -m spa_export engine "$WORK/p$p/model.int8.onnx" --int8 --batch 1 --batch 8 \
            --out "$WORK/p$p/int8.engine" > "$OUT/resnet50-p$p/engine-int8.txt" 2>&1; then
        cat "$OUT/resnet50-p$p/engine-int8.txt"
        "$PY" -m spa_export engine "$WORK/p$p/model.onnx" --batch 1 --batch 8 --out "$WORK/p$p/fp32.engine" > /dev/null
        "$PY" -m spa_export engine "$WORK/p$p/dense.onnx" --batch 1 --batch 8 --out "$WORK/p$p/dense.engine" > /dev/null
        "$PY" -m spa_export bench "$WORK/p$p/dense.engine" "$WORK/p$p/fp32.engine" --device gpu --batch 1 --batch 8 \
            --json "$OUT/resnet50-p$p/trt-fp32.json" 2>&1 | tee "$OUT/resnet50-p$p/trt-fp32.txt"
        "$PY" -m spa_export bench "$WORK/p$p/fp32.engine" "$WORK/p$p/int8.engine" --device gpu --batch 1 --batch 8 \
            --json "$OUT/resnet50-p$p/trt-int8-vs-fp32.json" 2>&1 | tee "$OUT/resnet50-p$p/trt-int8-vs-fp32.txt"
    fi
done
echo "results: $OUT (commit them, with machine.txt)"
