#!/usr/bin/env bash
# Tokens/s of configs/tiny_cpu.json under each policy: the median over several short runs.
# Usage: bench/bench.sh [RUNS] [STEPS]; POLICIES and DEVICE may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
steps=${2:-30}
policies=${POLICIES:-"fp32 mixed mixed_nomaster bf16 collage_light collage_plus kahan sr fp8_sim dqt_int8 dqt_ternary"}
device=${DEVICE:-auto}
[ -f data/fortunes/tokenizer.bin ] || python3 scripts/prepare_data.py >/dev/null

out=runs/bench
echo "lpgpt bench: configs/tiny_cpu.json, $steps steps, median of $runs runs, device $device"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-all}"
printf '%-16s %14s %14s\n' policy "tokens/s" "ms/step"
for policy in $policies; do
  rates=()
  for ((r = 0; r < runs; r++)); do
    ./train_gpt --config tiny_cpu.json --device "$device" --set precision.policy="$policy" \
      --set training.max_steps="$steps" --set training.warmup_steps=0 --set training.eval_every=0 --set training.sample_every=0 \
      --set training.sample_tokens=0 --set output.dir="$out/$policy" >/dev/null
    rates+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mean_tokens_per_s"])' "$out/$policy/summary.json")")
  done
  python3 - "$policy" "$(python3 -c 'import json; c=json.load(open("configs/tiny_cpu.json")); print(c["training"]["batch_size"]*c["training"]["seq_len"])')" "${rates[@]}" <<'PY'
import statistics, sys
policy, tokens = sys.argv[1], int(sys.argv[2])
median = statistics.median(float(r) for r in sys.argv[3:])
print(f"{policy:<16} {median:14.0f} {1000.0 * tokens / median:14.1f}")
PY
done
