#!/usr/bin/env bash
# Everything a session with a GPU should run, in order of importance, in about 10 minutes on one H200:
#   bash benchmarks/gpu_session.sh OUT_DIR
# 1. end to end: `ols train --cuda-graph` (2 epochs, then --resume to 3) against eager mode on
#    synthetic-cifar with ResNet-56 + OLS, a graphed Mixup/CutMix run with resume, OLS with
#    update_every graphed and eager; 2. benchmarks/gpu.py, its sections in
#    four processes (a failed capture cannot spoil the rest), each under its own time limit; the last
#    captures DDP's all-reduce on a one-rank NCCL group.
# Rows land in OUT_DIR/gpu.jsonl as they are measured; logs in OUT_DIR/*.log.
set -u
OUT=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONPATH=src
T=$(mktemp -d)
S=$(date +%s)
nvidia-smi -L
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
run() {
  echo "\$ $*" >> "$OUT/e2e.log"
  local t0; t0=$(date +%s)
  "$@" >> "$OUT/e2e.log" 2>&1
  echo "rc=$? in $(( $(date +%s) - t0 )) s" >> "$OUT/e2e.log"
}
COMMON="--dataset synthetic-cifar --model resnet56 --loss ols --batch-size 128 --no-progress"
run python -m ols train $COMMON --epochs 2 --cuda-graph --out "$T/graph"
run python -m ols train --resume "$T/graph" --epochs 3 --no-progress
run python -m ols train $COMMON --epochs 2 --out "$T/eager"
MIX="--mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-mode elem --mix-off-epoch 3"
run python -m ols train $COMMON $MIX --epochs 2 --cuda-graph --out "$T/mixup"
run python -m ols train --resume "$T/mixup" --epochs 3 --no-progress
run python -m ols train $COMMON $MIX --epochs 2 --out "$T/mixup-eager"
run python -m ols train $COMMON --epochs 1 --cuda-graph --loss-arg update_every=20 --out "$T/period"
run python -m ols train $COMMON --epochs 1 --loss-arg update_every=20 --out "$T/period-eager"
cp "$T/period/metrics.jsonl" "$OUT/period_graph_metrics.jsonl" 2>/dev/null
cp "$T/period-eager/metrics.jsonl" "$OUT/period_eager_metrics.jsonl" 2>/dev/null
cp "$T/mixup/metrics.jsonl" "$OUT/mixup_graph_metrics.jsonl" 2>/dev/null
cp "$T/mixup-eager/metrics.jsonl" "$OUT/mixup_eager_metrics.jsonl" 2>/dev/null
cp "$T/graph/metrics.jsonl" "$OUT/graph_metrics.jsonl" 2>/dev/null
cp "$T/eager/metrics.jsonl" "$OUT/eager_metrics.jsonl" 2>/dev/null
echo "end to end: $(( $(date +%s) - S )) s" | tee -a "$OUT/e2e.log"
timeout 200 python benchmarks/gpu.py --sections syncs steps equality resnet50 --out "$OUT/gpu.jsonl" \
  > "$OUT/gpu1.log" 2>&1
timeout 150 python benchmarks/gpu.py --sections topk loss folder --out "$OUT/gpu.jsonl" > "$OUT/gpu2.log" 2>&1
timeout 130 python benchmarks/gpu.py --sections compile --out "$OUT/gpu.jsonl" > "$OUT/gpu3.log" 2>&1
timeout 60 python benchmarks/gpu.py --sections ddp --out "$OUT/gpu.jsonl" > "$OUT/gpu4.log" 2>&1
echo "total: $(( $(date +%s) - S )) s"
