#!/usr/bin/env bash
# CPU: tokens/s of configs/tiny_cpu.json under each policy, the median over several short runs.
# GPU (DEVICE=cuda, or DEVICE=auto and nvidia-smi lists a GPU): GPT-2 124M at context 1024 under each policy:
# the largest micro-batch that fits, tokens/s, MFU, peak GPU memory and bytes per parameter.
# Usage: bench/bench.sh [RUNS] [STEPS]; RUNS, STEPS, POLICIES and DEVICE may also be set in the environment.
# CPU: RUNS runs (default 3) of STEPS steps (default 30) per policy. GPU: RUNS is not used; one run of STEPS
# steps (default 8) per policy, tokens/s the mean after the first 3; PEAK_FLOPS is the peak that MFU is taken
# against (default 989e12), BENCH_BUDGET_S the seconds after which no further policy is started (default 480).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-${RUNS:-3}}
steps=${2:-${STEPS:-}}
policies=${POLICIES:-"fp32 mixed mixed_nomaster bf16 collage_light collage_plus kahan sr fp8_sim dqt_int8 dqt_ternary"}
device=${DEVICE:-auto}

# ---- GPU mode ----
# GPT-2 124M (the model of configs/gpt125m_mixed.json) at context 1024, one micro-batch per optimizer step
# (tokens_per_step = 0). For each policy the micro-batch is the largest power of two whose memory plan
# (`--device cuda --dry-run`) fits the GPU's free memory with a margin; a run that still runs out of memory is
# repeated at half the micro-batch.
gpu_bench() {
  local steps=$1 skip=3 peak=${PEAK_FLOPS:-989e12} budget=${BENCH_BUDGET_S:-480} peak_name out=runs/bench_gpu
  local data train val failed=0 start=$SECONDS
  peak_name=$([ -n "${PEAK_FLOPS:-}" ] && echo "PEAK_FLOPS" || echo "H100/H200 SXM dense bf16")
  ((steps > skip)) || { echo "bench: STEPS must be more than $skip on the GPU (tokens/s is the mean after step $skip)" >&2; exit 1; }

  # Data: fortunes shards, or random tokens (bench/gpu_data.sh).
  source bench/gpu_data.sh
  choose_gpu_data

  # The GPU's free memory (MiB): total - used of the first visible GPU.
  local gpu_index=0 smi total used free_mib
  [[ "${CUDA_VISIBLE_DEVICES:-}" =~ ^[0-9]+ ]] && gpu_index=${BASH_REMATCH[0]}
  smi=$(nvidia-smi -i "$gpu_index" --query-gpu=memory.total,memory.used --format=csv,noheader,nounits 2>&1) ||
    { echo "bench: nvidia-smi cannot read the memory of GPU $gpu_index: $smi" >&2; exit 1; }
  IFS=', ' read -r total used <<<"$(head -n 1 <<<"$smi")"
  [[ "$total" =~ ^[0-9]+$ && "$used" =~ ^[0-9]+$ ]] || { echo "bench: unexpected nvidia-smi output: $smi" >&2; exit 1; }
  free_mib=$((total - used))
  # A plan fits when plan x 1.05 + the reserve (CUDA context, cuBLASLt workspace, fragmentation) <= free memory.
  local reserve=${BENCH_RESERVE_MIB:-2048}

  local common=(--config gpt125m_mixed.json --device cuda --set training.seq_len=1024
    --set training.tokens_per_step=0 --set training.warmup_steps=0 --set training.eval_every=0
    --set training.sample_every=0 --set training.sample_tokens=0 --set training.checkpoint_every=0
    --set output.export=none --set data.train="$train" --set data.val="$val" --set data.tokenizer=)
  # output.final_checkpoint=0: no checkpoint at the last step (gigabytes per run). A build without the key
  # writes it, and the run's checkpoints/ is removed after the run instead.
  local no_ckpt=(--set output.final_checkpoint=0)
  ./train_gpt "${common[@]}" "${no_ckpt[@]}" --print-config >/dev/null 2>&1 || no_ckpt=()

  # plan_mib POLICY MICRO: the dry run's planned total (MiB), or nothing.
  plan_mib() {
    { ./train_gpt "${common[@]}" --set precision.policy="$1" --set training.batch_size="$2" --dry-run 2>/dev/null ||
        true; } | sed -n 's/^  total  *\([0-9.][0-9.]*\) MiB.*/\1/p'
  }
  fits() { python3 -c 'import sys; p, r, f = map(float, sys.argv[1:]); sys.exit(0 if p * 1.05 + r <= f else 1)' "$@"; }
  # One run: train DIR MICRO_BATCH POLICY [STEPS]; stdout and stderr in DIR.out.
  train() {
    rm -rf "$1"
    local status=0
    ./train_gpt "${common[@]}" "${no_ckpt[@]}" --set precision.policy="$3" --set training.batch_size="$2" \
      --set training.max_steps="${4:-$steps}" --set output.dir="$1" >"$1.out" 2>&1 || status=$?
    rm -rf "$1/checkpoints"
    return "$status"
  }
  # The program's out-of-memory messages: cuda_malloc_checked's "out of memory on the GPU allocating ...",
  # CUDA's "out of memory" from another call (CUDA error at ...: out of memory), and a cuBLAS allocation
  # failure ("cuBLAS error at ...: ... (3)", CUBLAS_STATUS_ALLOC_FAILED). Another cuBLAS error is a failure,
  # not a reason to try a smaller micro-batch.
  out_of_memory() {
    grep -Eqi 'out of memory|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED|cuBLAS error at .*(alloc.*fail.*|\(3\))$' "$1"
  }

  mkdir -p "$out"
  local smi_list gpu_name
  smi_list=$(nvidia-smi -L 2>/dev/null) || smi_list=""
  gpu_name=$(head -n 1 <<<"$smi_list")
  echo "lpgpt bench (GPU): GPT-2 124M (configs/gpt125m_mixed.json's model), context 1024, one micro-batch per step, $steps steps"
  echo "device: ${gpu_name:-unknown (nvidia-smi -L listed no GPU)}; ${free_mib} MiB free of ${total} MiB"
  echo "commit $(git describe --always --dirty 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "data: $data"
  echo "micro-batch: the largest power of two with dry-run plan x 1.05 + ${reserve} MiB <= free memory; halved on out of memory"
  echo "tokens/s: mean over steps $((skip + 1))-$steps; MFU = tokens/s x (6N + 6LCT) / $peak ($peak_name)"
  printf '%-16s %6s %12s %7s %10s %10s %10s\n' policy micro "tokens/s" MFU "peak GiB" "plan GiB" "bytes/par"
  for policy in $policies; do
    if ((SECONDS - start > budget)); then
      printf '%-16s skipped: the bench has run %d s, over BENCH_BUDGET_S=%d\n' "$policy" $((SECONDS - start)) "$budget"
      failed=1
      continue
    fi
    local micro="" b plan=""
    for b in 512 256 128 64 32 16 8 4 2 1; do
      plan=$(plan_mib "$policy" "$b")
      [ -n "$plan" ] || break
      if fits "$plan" "$reserve" "$free_mib"; then micro=$b; break; fi
    done
    if [ -z "$plan" ]; then
      printf '%-16s failed: the dry run printed no memory plan: %s\n' "$policy" "$(./train_gpt "${common[@]}" \
        --set precision.policy="$policy" --set training.batch_size="$b" --dry-run 2>&1 | tail -n 1)"
      failed=1
      continue
    fi
    if [ -z "$micro" ]; then
      printf '%-16s does not fit: %s MiB planned at micro-batch 1, %s MiB free\n' "$policy" "$plan" "$free_mib"
      failed=1
      continue
    fi
    local ran=0
    while ((micro >= 1)); do
      if train "$out/$policy" "$micro" "$policy"; then ran=1; break; fi
      out_of_memory "$out/$policy.out" || break
      echo "  $policy: out of memory at micro-batch $micro ($(grep -Eim1 'out of memory|cuBLAS error' "$out/$policy.out" | cut -c1-160)); halving" >&2
      micro=$((micro / 2))
      ((micro >= 1)) && plan=$(plan_mib "$policy" "$micro")
    done
    if ((!ran)); then
      if ((micro < 1)); then printf '%-16s out of memory even at micro-batch 1\n' "$policy"
      else printf '%-16s failed at micro-batch %s: %s\n' "$policy" "$micro" "$(grep -m1 'error' "$out/$policy.out" ||
        tail -n 1 "$out/$policy.out")"; fi
      failed=1
      continue
    fi
    python3 - "$policy" "$micro" "$peak" "$out/$policy" "$skip" "$steps" "${plan:-0}" <<'PY' || failed=1
import json, sys
policy, micro, peak, run, skip, steps, plan = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], \
    int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
summary = json.load(open(run + "/summary.json"))
config = json.load(open(run + "/config.json"))
if summary.get("backend") != "cuda":
    sys.exit(f"{policy:<16} ran on the {summary.get('backend')} backend, not cuda")
log = [json.loads(line) for line in open(run + "/log.jsonl")]
if [r["step"] for r in log] != list(range(1, steps + 1)):
    sys.exit(f"{policy:<16} log.jsonl holds steps {[r['step'] for r in log]}, not 1..{steps}")
rates = [r["tokens_per_s"] for r in log[skip:]]
rate = sum(rates) / len(rates)
n = summary["num_params"]
L, C, T = config["model"]["n_layer"], config["model"]["n_embd"], config["training"]["seq_len"]
mfu = rate * (6 * n + 6 * L * C * T) / peak
mem = summary["peak_device_memory_bytes"]
print(f"{policy:<16} {micro:6d} {rate:12.0f} {100 * mfu:6.1f}% {mem / 2**30:10.2f} {plan / 1024:10.2f} "
      f"{summary['bytes_per_param']:10d}")
PY
  done
  # The memory target: collage_plus's peak below mixed's by at least 6 bytes per parameter, at the same
  # micro-batch (the runs above may have chosen different ones: then mixed again at collage_plus's).
  if [ -f "$out/mixed/summary.json" ] && [ -f "$out/collage_plus/summary.json" ]; then
    local micro_of
    micro_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["training"]["batch_size"])' "$1"; }
    local mixed_run=$out/mixed m_mixed m_collage
    m_mixed=$(micro_of "$out/mixed/config.json")
    m_collage=$(micro_of "$out/collage_plus/config.json")
    if [ "$m_mixed" != "$m_collage" ]; then
      mixed_run=$out/mixed_at_collage_micro
      train "$mixed_run" "$m_collage" mixed 2 || { echo "memory: mixed at micro-batch $m_collage failed"; failed=1; }
    fi
    python3 - "$mixed_run" "$out/collage_plus" <<'PY' || failed=1
import json, sys
mixed, collage = (json.load(open(run + "/summary.json")) for run in sys.argv[1:3])
micro = json.load(open(sys.argv[2] + "/config.json"))["training"]["batch_size"]
saved = (mixed["peak_device_memory_bytes"] - collage["peak_device_memory_bytes"]) / mixed["num_params"]
verdict = "meets" if saved >= 6 else "MISSES"
print(f"memory: collage_plus's peak is {saved:.2f} bytes/param below mixed's at micro-batch {micro} ({verdict} the target of 6)")
PY
  fi
  echo "bench: $((SECONDS - start)) s"
  exit "$failed"
}

gpu_listed() {
  local smi
  smi=$(nvidia-smi -L 2>/dev/null) || return 1
  grep -q '^GPU ' <<<"$smi"
}
if [ "$device" = cuda ] || { [ "$device" = auto ] && gpu_listed; }; then
  gpu_bench "${steps:-8}"
fi

# ---- CPU mode ----
steps=${steps:-30}
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
      --set training.sample_tokens=0 --set output.overwrite=1 --set output.dir="$out/$policy" >/dev/null
    rates+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mean_tokens_per_s"])' "$out/$policy/summary.json")")
  done
  python3 - "$policy" "$(python3 -c 'import json; c=json.load(open("configs/tiny_cpu.json")); print(c["training"]["batch_size"]*c["training"]["seq_len"])')" "${rates[@]}" <<'PY'
import statistics, sys
policy, tokens = sys.argv[1], int(sys.argv[2])
median = statistics.median(float(r) for r in sys.argv[3:])
print(f"{policy:<16} {median:14.0f} {1000.0 * tokens / median:14.1f}")
PY
done
