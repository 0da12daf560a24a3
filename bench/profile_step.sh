#!/usr/bin/env bash
# GPU: where a training step's time goes, against the step model. Trains GPT-2 124M (configs/gpt125m_mixed.json:
# micro-batch 64 x 1024, 8 accumulation steps) under Nsight Systems twice, STEPS and BASE_STEPS optimizer
# steps, takes each kernel's GPU time from `nsys stats --report cuda_gpu_kern_sum`, and prints per op group
# the measured ms per micro-step (the difference of the two profiles: start-up and the first step's warm-up
# cancel) beside the modelled ms of the same config's `--device cuda --dry-run` (scripts/step_profile.py).
# Usage: bench/profile_step.sh [--set SECTION.KEY=VALUE ...]    e.g. --set precision.policy=collage_plus
# Environment: STEPS (default 4), BASE_STEPS (default 2), CONFIG (default gpt125m_mixed.json), PROFILE_DIR
# (default runs/profile_step), NSYS (the nsys binary; default: nsys on the PATH or under /usr/local/cuda*,
# /opt/nvidia). On an H200 (nvidia-smi's name) the step model's bandwidth is 4.8e12 bytes/s unless
# LPGPT_BANDWIDTH says otherwise; the other LPGPT_* peaks of src/step_model.h pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-4} base_steps=${BASE_STEPS:-2} config=${CONFIG:-gpt125m_mixed.json} out=${PROFILE_DIR:-runs/profile_step}

die() { echo "profile_step: $*" >&2; exit 1; }
((base_steps >= 1 && steps > base_steps)) || die "need STEPS > BASE_STEPS >= 1 (got STEPS=$steps BASE_STEPS=$base_steps)"

find_nsys() {
  if [ -n "${NSYS:-}" ]; then echo "$NSYS"; return; fi
  command -v nsys 2>/dev/null && return
  local candidate
  for candidate in /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda*/nsight-systems-*/bin/nsys; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  return 1
}
nsys=$(find_nsys) || die "nsys (Nsight Systems) not found: put it on the PATH or set NSYS=/path/to/nsys"
gpu_name=$(nvidia-smi -L 2>/dev/null | head -n 1) || true
[[ "$gpu_name" == GPU* ]] || die "nvidia-smi lists no GPU"
[ -x ./train_gpt ] || die "./train_gpt is missing: run make first"
if [[ "$gpu_name" == *H200* && -z "${LPGPT_BANDWIDTH:-}" ]]; then
  export LPGPT_BANDWIDTH=4.8e12  # HBM3e; the step model's default is the H100 SXM's 3.35e12
fi

source bench/gpu_data.sh
choose_gpu_data
mkdir -p "$out"
# What the step model covers and nothing else: no evaluation, sampling, checkpoints, export or update metrics.
common=(--config "$config" --device cuda --set training.warmup_steps=0 --set training.eval_every=0
  --set training.sample_every=0 --set training.sample_tokens=0 --set training.checkpoint_every=0
  --set metrics.every=0 --set output.export=none --set output.final_checkpoint=0 --set output.overwrite=1
  --set data.train="$train" --set data.val="$val" --set data.tokenizer= "$@")

./train_gpt "${common[@]}" --dry-run > "$out/dryrun.txt" 2>&1 || die "the dry run failed: $(tail -n 1 "$out/dryrun.txt")"

# profile N: train N optimizer steps under nsys, then write the kernel summary to $out/steps_N.csv.
profile() {
  local n=$1 report="$out/steps_$1"
  rm -f "$report".nsys-rep "$report".sqlite "$report"_*.csv
  "$nsys" profile --trace=cuda --sample=none --stats=false -o "$report" \
    ./train_gpt "${common[@]}" --set training.max_steps="$n" --set output.dir="$out/run_$n" > "$report.out" 2>&1 ||
    die "the profiled run of $n steps failed ($report.out): $(grep -m1 -i error "$report.out" || tail -n 1 "$report.out")"
  # nsys 2023 and later name the report cuda_gpu_kern_sum, earlier ones gpukernsum; either writes
  # PREFIX_<report>.csv.
  local name
  for name in cuda_gpu_kern_sum gpukernsum; do
    "$nsys" stats --report "$name" --format csv --output "$report" "$report.nsys-rep" >> "$report.out" 2>&1 || continue
    [ -f "${report}_$name.csv" ] && { mv "${report}_$name.csv" "$report.csv"; return; }
  done
  die "nsys stats wrote no kernel summary for $report.nsys-rep ($report.out): $(tail -n 1 "$report.out")"
}

echo "lpgpt step profile: $config $*, profiles of $base_steps and $steps optimizer steps (their difference)"
echo "device: $gpu_name; step model bandwidth ${LPGPT_BANDWIDTH:-3.35e12 (H100 SXM default)} bytes/s"
echo "commit $(git describe --always --dirty 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ), $("$nsys" --version 2>&1 | head -n 1)"
echo "data: $data"
profile "$base_steps"
profile "$steps"
python3 scripts/step_profile.py --dry-run "$out/dryrun.txt" --kernels "$out/steps_$steps.csv" --optimizer-steps "$steps" \
  --baseline-kernels "$out/steps_$base_steps.csv" --baseline-optimizer-steps "$base_steps" --json "$out/step_profile.json"
# Beside it the wall clock: the kernels' time per optimizer step against the runs' logged ms per step (after
# the first); the gap is what the kernel sums cannot see: launch gaps, host work, memsets and copies.
python3 - "$out/step_profile.json" "$out/run_$steps/log.jsonl" <<'PY'
import json, sys
profile = json.load(open(sys.argv[1]))
log = [json.loads(line) for line in open(sys.argv[2])]
later = [r["ms"] for r in log if r.get("step", 0) > 1 and "ms" in r]
kernels = profile["micro_step"]["measured_ms"] * profile["accumulation_steps"]
if later:
    wall = sum(later) / len(later)
    print(f"  per optimizer step: kernels {kernels:.1f} ms, wall clock {wall:.1f} ms under nsys (log.jsonl, mean of "
          f"steps 2-{log[-1]['step']}): the kernels fill {100 * kernels / wall:.0f}% of it")
PY
