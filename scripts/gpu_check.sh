#!/usr/bin/env bash
# The GPU path end to end, for a machine with an NVIDIA GPU (under 5 minutes): embed, fine-tune
# a TorchScript trunk, train a head over a frozen one, and embed with both checkpoints, on
# CUDA, each step timed; then the same fine-tuning on the CPU for comparison.
#   make build && scripts/gpu_check.sh            # prints one line per step
# Uses .venv's torch to script a small trunk; with .venv-bench present it exports ImageNet
# EfficientNet-Lite0 instead (scripts/export_backbone.py).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/tripmine
OUT=${OUT:-out/gpu-check}
rm -rf "$OUT" && mkdir -p "$OUT"
.venv/bin/python -c 'import torch; assert torch.cuda.is_available(), "libtorch sees no GPU"; print("gpu:", torch.cuda.get_device_name(0))'
if [ -x .venv-bench/bin/python ]; then
  .venv-bench/bin/python scripts/export_backbone.py --out "$OUT/trunk.pt" --input-size 64 >/dev/null
else
  .venv/bin/python -c 'import torch,sys; m=torch.nn.Sequential(torch.nn.Conv2d(3,32,3,padding=1),torch.nn.BatchNorm2d(32),torch.nn.ReLU(),torch.nn.Conv2d(32,64,3,stride=2,padding=1),torch.nn.ReLU()); torch.jit.script(m).save(sys.argv[1])' "$OUT/trunk.pt"
fi
step() {
  local name=$1 t0; shift
  t0=$(date +%s%N)
  "$@" >"$OUT/$name.log" 2>&1 || { echo "FAILED: $name (see $OUT/$name.log)"; exit 1; }
  printf '%-20s %8d ms\n' "$name" $(( ($(date +%s%N) - t0) / 1000000 ))
}
M=fixtures/manifest.csv
step embed-cuda        $BIN embed --corpus $M --backbone "$OUT/trunk.pt" --input-size 64 --device cuda --out "$OUT/emb"
step finetune-cuda     $BIN train --corpus $M --backbone "$OUT/trunk.pt" --input-size 64 --epochs 10 --device cuda --out "$OUT/ft"
step frozen-head-cuda  $BIN train --corpus $M --backbone "$OUT/trunk.pt" --freeze-backbone --input-size 64 --epochs 10 --device cuda --out "$OUT/fr"
step embed-finetuned   $BIN embed --corpus $M --model "$OUT/ft/best" --device cuda --out "$OUT/emb-ft"
step eval-finetuned    $BIN eval --corpus $M --model "$OUT/ft/best" --split test --device cuda
step finetune-cpu      $BIN train --corpus $M --backbone "$OUT/trunk.pt" --input-size 64 --epochs 10 --device cpu --out "$OUT/ft-cpu"
tail -n 2 "$OUT/finetune-cuda.log" "$OUT/eval-finetuned.log"
