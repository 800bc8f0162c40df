#!/usr/bin/env bash
# The CPU-scale experiments quoted in README.md: the alpha-loss (Eq. 9-10) against plain cross-entropy with
# the robustness suite (Table 1), TIC-based pruning (Fig. 7), early exit and time-window deficits (Fig. 2).
# Setting: the demo's (convnet, 500 Fashion-MNIST images, T=6, tau=2, SGD lr 0.1 cosine, 60 epochs, B=25).
# Usage: examples/cpu_scale.sh [OUT_DIR]   (SEEDS="0 1 2" for more seeds; about 15 minutes per seed on 2 idle cores)
set -euo pipefail
out=${1:-runs/cpu-scale}
st=${SPIKETIDE:-spiketide}
common=(--model convnet --dataset fashion-mnist --subset 500 --test-subset 500 --no-augment -T 6 --tau 2
        --epochs 60 -b 25 --lr 0.1 --device cpu --no-progress --fisher-every 20 --fisher-samples 128
        --checkpoint-epochs 0,5,20,40)
for seed in ${SEEDS:-0}; do
  [ -f "$out/ce-s$seed/checkpoints/last.pt" ] || $st train "${common[@]}" --seed "$seed" --out "$out/ce-s$seed"
  for alpha in ${ALPHAS:-0.1 0.3}; do
    $st train "${common[@]}" --seed "$seed" --loss alpha --alpha "$alpha" --out "$out/alpha$alpha-s$seed"
  done
done
for run in "$out"/*-s[0-9]; do
  $st robustness "$run" --samples 500 --no-progress --name "$(basename "$run")"
done
$st robustness "$out/ce-s0" --samples 500 --eps-sweep --window-k 2 --no-progress --out "$out/ce-s0/robustness-sweep.json"
$st deficits "$out/ce-s0" --window 3 --samples 500 --no-progress
$st early-exit "$out/ce-s0" --samples 500
$st prune "$out/ce-s0" --rounds 3 --rate 0.5 --retrain-epochs 5 --t-retrain 1,2,3,6 --no-progress
$st prune "$out/ce-s0" --rounds 3 --rate 0.5 --retrain-epochs 5 --t-retrain auto --out "$out/ce-s0/pruning-auto" --no-progress
# README.md's operation counts (the early-exit rows with SOPs and energy, `spiketide stats`, SpikingJelly's counters)
# are measured on the CPU-scale reproduction's half-width base run instead (needs Ray: pip install -e ".[sweep]"):
#   spiketide reproduce fig1 --scale cpu --seeds 0 --out experiments
#   run=experiments/runs/convnet-fashion-mnist-34649354ca
#   spiketide early-exit $run --samples 500; spiketide stats $run
#   python examples/op_counters.py $run/checkpoints/last.pt --samples 256
