#!/usr/bin/env bash
# CPU: tokens/s of configs/tiny_cpu.json under each policy, the median over several short runs.
# GPU (DEVICE=cuda, or DEVICE=auto and nvidia-smi lists a GPU): GPT-2 124M at context 1024 under each policy:
# the largest micro-batch that fits, tokens/s, MFU, peak GPU memory and bytes per parameter.
# Usage: bench/bench.sh [RUNS] [STEPS]; POLICIES and DEVICE may be set in the environment; on the GPU, RUNS
# is not used, STEPS (or the second argument) is the steps per policy (default 20) and PEAK_FLOPS the peak
# that MFU is taken against (default 989e12).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
steps=${2:-30}
policies=${POLICIES:-"fp32 mixed mixed_nomaster bf16 collage_light collage_plus kahan sr fp8_sim dqt_int8 dqt_ternary"}
device=${DEVICE:-auto}

# ---- GPU mode ----
# GPT-2 124M (the model of configs/gpt125m_mixed.json) at context 1024, one micro-batch per optimizer step
# (tokens_per_step = 0): for each policy the largest micro-batch of 64 32 16 8 4 2 1 that survives a 2-step
# attempt (an out-of-memory exit means: try the next smaller), then a run of STEPS steps at that size.
gpu_bench() {
  local steps=$1 peak=${PEAK_FLOPS:-989e12} peak_name out=runs/bench_gpu data train val failed=0
  peak_name=$([ -n "${PEAK_FLOPS:-}" ] && echo "PEAK_FLOPS" || echo "H100 SXM dense bf16")
  ((steps >= 5)) || { echo "bench: STEPS must be at least 5 on the GPU (tokens/s is the mean after step 3)" >&2; exit 1; }

  # Data: the model needs tokens below 50257. The byte-level fortunes shards qualify; on a machine without
  # the fortunes package, uniformly random tokens (throughput does not depend on the token values).
  if [ -f data/fortunes/train_000000.bin ] || python3 scripts/prepare_data.py >/dev/null 2>&1; then
    train="data/fortunes/train_*.bin" val="data/fortunes/val_*.bin"
    data="data/fortunes (byte-level fortunes text)"
  else
    [ -f data/synthetic/train_000000.bin ] || python3 scripts/synthetic_shard.py --out data/synthetic --vocab 50257 >/dev/null
    train="data/synthetic/train_*.bin" val="data/synthetic/val_*.bin"
    data="data/synthetic (uniformly random tokens below 50257, scripts/synthetic_shard.py; no fortunes corpus here)"
  fi

  # One run: train DIR MICRO_BATCH STEPS POLICY; stdout and stderr in DIR.out. The checkpoint that every run
  # writes at its end is removed (gigabytes per run).
  train() {
    rm -rf "$1"
    local status=0
    ./train_gpt --config gpt125m_mixed.json --device cuda --set precision.policy="$4" \
      --set training.batch_size="$2" --set training.seq_len=1024 --set training.tokens_per_step=0 \
      --set training.max_steps="$3" --set training.warmup_steps=0 --set training.eval_every=0 \
      --set training.sample_every=0 --set training.sample_tokens=0 --set training.checkpoint_every=0 \
      --set output.export=none --set data.train="$train" --set data.val="$val" --set data.tokenizer= \
      --set output.dir="$1" >"$1.out" 2>&1 || status=$?
    rm -rf "$1/checkpoints"
    return "$status"
  }
  out_of_memory() {
    grep -Eqi 'out of memory|cudaErrorMemoryAllocation|ALLOC_FAILED|\bOOM\b|(not enough|insufficient) (device |GPU )?memory|does not fit' "$1"
  }

  mkdir -p "$out"
  echo "lpgpt bench (GPU): GPT-2 124M (configs/gpt125m_mixed.json's model), context 1024, one micro-batch per step, $steps steps"
  local gpu_name
  gpu_name=$(nvidia-smi -L 2>/dev/null | head -n 1 || true)
  echo "device: ${gpu_name:-unknown (nvidia-smi found no GPU)}"
  echo "commit $(git describe --always --dirty 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "data: $data"
  echo "tokens/s: mean over steps 4-$steps; MFU = tokens/s x (6N + 6LCT) / $peak ($peak_name)"
  printf '%-16s %6s %12s %7s %10s %10s\n' policy micro "tokens/s" MFU "peak GiB" "bytes/par"
  for policy in $policies; do
    local micro="" b
    for b in 64 32 16 8 4 2 1; do
      if train "$out/$policy.try" "$b" 2 "$policy"; then micro=$b; break; fi
      out_of_memory "$out/$policy.try.out" || break
    done
    if [ -z "$micro" ]; then
      if out_of_memory "$out/$policy.try.out"; then
        printf '%-16s out of memory even at micro-batch 1\n' "$policy"
      else
        printf '%-16s failed at micro-batch %s: %s\n' "$policy" "$b" "$(tail -n 1 "$out/$policy.try.out")"
      fi
      failed=1
      continue
    fi
    if ! train "$out/$policy" "$micro" "$steps" "$policy"; then
      printf '%-16s failed at micro-batch %s (%s steps): %s\n' "$policy" "$micro" "$steps" "$(tail -n 1 "$out/$policy.out")"
      failed=1
      continue
    fi
    python3 - "$policy" "$micro" "$peak" "$out/$policy" <<'PY' || failed=1
import json, sys
policy, micro, peak, run = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
summary = json.load(open(run + "/summary.json"))
config = json.load(open(run + "/config.json"))
if summary.get("backend") != "cuda":
    sys.exit(f"{policy:<16} ran on the {summary.get('backend')} backend, not cuda")
rates = [json.loads(line)["tokens_per_s"] for line in open(run + "/log.jsonl")][3:]
rate = sum(rates) / len(rates)
n = summary["num_params"]
L, C, T = config["model"]["n_layer"], config["model"]["n_embd"], config["training"]["seq_len"]
mfu = rate * (6 * n + 6 * L * C * T) / peak
mem = summary["peak_device_memory_bytes"]
print(f"{policy:<16} {micro:6d} {rate:12.0f} {100 * mfu:6.1f}% {mem / 2**30:10.2f} {mem / n:10.1f}")
PY
  done
  exit "$failed"
}

if [ "$device" = cuda ] || { [ "$device" = auto ] && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
  gpu_bench "${2:-${STEPS:-20}}"
fi

# ---- CPU mode ----
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
