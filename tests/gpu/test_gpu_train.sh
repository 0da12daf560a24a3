# End to end on the CUDA backend (run by `make test-gpu` on a machine with a GPU), for EVERY preset:
#   a. the GPU run against the CPU backend (configs/tiny_cpu.json, 20 steps, same seed and data);
#   b. determinism: a second GPU run gives the same bits (losses, model.bin, checkpoints);
#   c. resume on the GPU: 10 steps + resume to 20 = 20 steps straight, bit for bit;
#   d. cross-backend resume: a CPU checkpoint resumed on the GPU and a GPU checkpoint resumed on the CPU;
# then e. one rank under mpirun (the NCCL path), plain and with ZeRO-1, and with two micro-steps per step
# (the sums overlap the last one), against the plain GPU run, bit for bit, f. a clear error without a
# visible GPU, g. fp32 at 16 x 128 tokens (the LM head's logits in two chunks) against the CPU, and h. the
# fused attention against the materialized one (its fallback) on the GPU, under fp32 and mixed.
# Every run is configs/tiny_cpu.json (4 layers, 128 channels, 8 x 128 tokens) for 20 steps with a checkpoint
# every 10 steps, no evaluation and no samples. The CPU runs go in the background, in parallel, while the GPU
# runs one after another. Prints one line per check (ok / FAIL) and exits non-zero if any check failed.
# shellcheck source=tests/e2e_common.sh
source "$(dirname "$0")/../e2e_common.sh"
set +e  # every status is checked explicitly: one failing run must not hide the other checks

started=$(date +%s)
failures=0 checks=0
pass() { echo "ok   $*"; checks=$((checks + 1)); }
bad() { echo "FAIL $*"; checks=$((checks + 1)); failures=$((failures + 1)); }
presets="fp32 mixed mixed_nomaster bf16 collage_light collage_plus kahan sr fp8_sim dqt_int8 dqt_ternary"
# Per-step relative tolerance between the backends. fp32: both compute in fp32 and only the order of the fp32
# sums differs: 1e-4. The bf16 family (every other preset): bf16 roundings of slightly different fp32 results
# can land one ulp (2^-8) apart and the runs drift: 2e-2 over 20 steps. dqt_*: grid weights and cast operands
# are the same code on both backends (operand_cast.h, optimizer_element.h); the fp32 summation order differs,
# carried on through the bf16 gradients: 2e-2 too.
tolerance() { if [ "$1" = fp32 ]; then echo 1e-4; else echo 2e-2; fi; }
run_timeout=${LPGPT_RUN_TIMEOUT:-180}

# ---- data: the fortunes corpus, else the shards in $LPGPT_TEST_DATA, else a loud failure (never a pass) ----
if prepare_test_data 2>"$tmp/prepare.err"; then
  dir=$tmp/data vocab=257
  echo "data: fortunes corpus (byte-level), prepared in $dir"
elif [ -n "${LPGPT_TEST_DATA:-}" ]; then
  dir=$(cd "$LPGPT_TEST_DATA" && pwd) || { echo "FAIL LPGPT_TEST_DATA=$LPGPT_TEST_DATA is not a directory"; exit 1; }
  if ! compgen -G "$dir/*train*.bin" >/dev/null || ! compgen -G "$dir/*val*.bin" >/dev/null; then
    echo "FAIL LPGPT_TEST_DATA=$dir holds no *train*.bin and *val*.bin token shards"
    exit 1
  fi
  # The vocab: the tokenizer file's (header word 2), else one past the largest token in the shards.
  vocab=$(python3 - "$dir" <<'PY'
import glob, os, struct, sys
from array import array
d = sys.argv[1]
tok = os.path.join(d, "tokenizer.bin")
if os.path.exists(tok):
    print(max(257, struct.unpack("<256I", open(tok, "rb").read(1024))[2]))
    sys.exit()
top = 0
for path in glob.glob(os.path.join(d, "*train*.bin")) + glob.glob(os.path.join(d, "*val*.bin")):
    tokens = array("H")
    tokens.frombytes(open(path, "rb").read()[1024:])
    top = max(top, max(tokens, default=0))
print(max(257, top + 1))
PY
  ) || { echo "FAIL cannot read the shards in $dir"; exit 1; }
  echo "data: $dir (LPGPT_TEST_DATA, vocab $vocab)"
else
  echo "FAIL no test data: the fortunes corpus could not be prepared ($(tail -n 1 "$tmp/prepare.err"))."
  echo "     Install Debian's fortunes package, or point LPGPT_TEST_DATA at a directory of llm.c token shards"
  echo "     (train_*.bin, val_*.bin), e.g. python3 scripts/synthetic_shard.py --out /tmp/syn --vocab 257"
  exit 1
fi
data_args=(--set "data.train=$dir/*train*.bin" --set "data.val=$dir/*val*.bin" --set model.vocab_size="$vocab")
if [ -f "$dir/tokenizer.bin" ]; then data_args+=(--set "data.tokenizer=$dir/tokenizer.bin")
else data_args+=(--set data.tokenizer=); fi
# configs/tiny_cpu.json for 20 steps (warm-up shortened to fit), checkpoints at 10 and 20.
base=(--config "$root/configs/tiny_cpu.json" "${data_args[@]}" --set training.max_steps=20
      --set training.warmup_steps=5 --set training.eval_every=0 --set training.sample_every=0
      --set training.sample_tokens=0 --set training.checkpoint_every=10)

# CPU runs in parallel: one OpenMP thread each (two on a large machine), leaving two cores to the GPU runs.
cores=$(nproc)
cpu_threads=$(( cores >= 32 ? 2 : 1 ))
cpu_jobs=$(( (cores - 2) / cpu_threads ))
(( cpu_jobs >= 1 )) || cpu_jobs=1

# A finished run must have run on DEVICE's backend, for 20 steps. checked_run NAME DEVICE: 0 or a reason.
checked_run() {
  local name=$1 device=$2
  python3 - "$tmp/$name" "$device" <<'PY'
import json, os, sys
run, device = sys.argv[1:]
try:
    summary = json.load(open(os.path.join(run, "summary.json")))
    # The training steps (the record of step 0, the evaluation before training, has no loss).
    steps = [r["step"] for r in map(json.loads, open(os.path.join(run, "log.jsonl"))) if "loss" in r]
except (OSError, ValueError, KeyError) as e:
    sys.exit(f"no complete outputs ({e})")
if summary.get("backend") != device:
    sys.exit(f"ran on the {summary.get('backend')} backend, not {device}")
if steps != list(range(1, 21)):
    sys.exit(f"log.jsonl has steps {steps[:3]}...{steps[-3:]}, not 1..20")
PY
}
# Why a run failed, for a FAIL line: its reason file, else the last lines of its output.
why() {
  if [ -s "$tmp/$1.why" ]; then cat "$tmp/$1.why"
  else tail -n 3 "$tmp/$1.out" 2>/dev/null | tr '\n' ' '; fi
}

# run NAME DEVICE [ARGS...]: 20 steps of tiny_cpu into $tmp/NAME ($tmp/NAME.out); status 0 only for a complete
# run on DEVICE's backend. resume NAME FROM DEVICE: $tmp/NAME is what FROM left after step 10 (config.json, the
# step-10 checkpoint, the log up to step 10), continued to step 20 on DEVICE.
run() {
  local name=$1 device=$2
  shift 2
  rm -rf "$tmp/$name" "$tmp/$name.why"
  if [ "$device" = cpu ]; then export OMP_NUM_THREADS=$cpu_threads; fi
  timeout "$run_timeout" "$train_gpt" "${base[@]}" --device "$device" --set output.dir="$tmp/$name" "$@" \
    >"$tmp/$name.out" 2>&1
  local status=$?
  if ((status)); then echo "exit status $status$( ((status == 124)) && echo " (timed out after ${run_timeout} s)"): $(
    tail -n 2 "$tmp/$name.out" | tr '\n' ' ')" >"$tmp/$name.why"; return 1; fi
  checked_run "$name" "$device" 2>"$tmp/$name.why"
}
resume() {
  local name=$1 from=$2 device=$3
  rm -rf "$tmp/$name" "$tmp/$name.why"
  if ! [ -f "$tmp/$from/checkpoints/step_00000010.ckpt" ]; then
    echo "$from left no checkpoint at step 10" >"$tmp/$name.why"; return 1; fi
  mkdir -p "$tmp/$name/checkpoints"
  cp "$tmp/$from/config.json" "$tmp/$name/"
  cp "$tmp/$from/checkpoints/step_00000010.ckpt" "$tmp/$name/checkpoints/"
  python3 -c 'import json, sys
for line in open(sys.argv[1]):
    if json.loads(line)["step"] <= 10: print(line, end="")' "$tmp/$from/log.jsonl" >"$tmp/$name/log.jsonl"
  if [ "$device" = cpu ]; then export OMP_NUM_THREADS=$cpu_threads; fi
  timeout "$run_timeout" "$train_gpt" --resume "$tmp/$name" --device "$device" >"$tmp/$name.out" 2>&1
  local status=$?
  if ((status)); then echo "--resume exit status $status: $(tail -n 2 "$tmp/$name.out" | tr '\n' ' ')" \
    >"$tmp/$name.why"; return 1; fi
  checked_run "$name" "$device" 2>"$tmp/$name.why"
}
# In the background, at most cpu_jobs at once; the status lands in $tmp/NAME.rc. background FUNCTION NAME ...
background() {
  while (( $(jobs -rp | wc -l) >= cpu_jobs )); do wait -n; done
  local name=$2
  rm -f "$tmp/$name.rc"
  ( "$@"; echo $? >"$tmp/$name.rc" ) &
}
ok_run() { [ "$(cat "$tmp/$1.rc" 2>/dev/null)" = 0 ]; }  # a run's status
gpu_runs=0
fg_run() { gpu_runs=$((gpu_runs + 1)); "$@"; echo $? >"$tmp/$2.rc"; }
# The CPU runs, each queue one background job (so the GPU runs start at once) that runs its runs in parallel.
cpu_straight_runs() { for p in $presets; do background run "cpu_$p" cpu --set precision.policy="$p"; done; wait; }
cpu_resume_runs() {
  for p in $presets; do if ok_run "gpu_$p"; then background resume "gpu_to_cpu_$p" "gpu_$p" cpu; fi; done
  wait
}

# Losses of two runs, steps FROM..20 (both logs must hold exactly steps 1..20), agree within a relative
# tolerance at every step (0 = bit for bit; a NaN fails). close A B TOL [FROM]; prints the worst step.
close() {
  python3 - "$tmp/$1/log.jsonl" "$tmp/$2/log.jsonl" "$3" "${4:-1}" <<'PY'
import json, sys
a, b = ({r["step"]: r["loss"] for r in map(json.loads, open(p)) if "loss" in r} for p in sys.argv[1:3])
tol, first = float(sys.argv[3]), int(sys.argv[4])
if sorted(a) != list(range(1, 21)) or sorted(b) != list(range(1, 21)):
    sys.exit(f"steps are not 1..20: {sorted(a)} vs {sorted(b)}")
steps = list(range(first, 21))
ok = all(a[s] == b[s] if tol == 0 else abs(a[s] - b[s]) <= tol * abs(a[s]) for s in steps)
rel = lambda s: abs(a[s] - b[s]) / abs(a[s]) if a[s] else abs(b[s])
worst = max(steps, key=lambda s: float("inf") if rel(s) != rel(s) else rel(s))
print(f"steps {first}-20, max rel diff {rel(worst):.2e} at step {worst}: {a[worst]!r} vs {b[worst]!r}")
sys.exit(0 if ok else 1)
PY
}
same_file() { cmp -s "$tmp/$1/$3" "$tmp/$2/$3"; }
file_word() { if same_file "$@"; then echo "$3 same"; else echo "$3 DIFFERS"; fi; }

# ---- the runs ----
echo "runs: configs/tiny_cpu.json, 20 steps; CPU runs $cpu_jobs at a time with $cpu_threads thread(s) each ($cores cores)"
cpu_straight_runs &
for p in $presets; do
  fg_run run "gpu_$p" cuda --set precision.policy="$p"
  fg_run run "gpu2_$p" cuda --set precision.policy="$p"
  if ok_run "gpu_$p"; then fg_run resume "resumed_$p" "gpu_$p" cuda; fi
done
gpu_seconds=$(( $(date +%s) - started ))
wait
cpu_resume_runs &
for p in $presets; do
  if ok_run "cpu_$p"; then fg_run resume "cpu_to_gpu_$p" "cpu_$p" cuda; fi
done

# ---- e. one rank under mpirun: the NCCL path (and ZeRO-1's reduce + broadcast) against the plain GPU run ----
# Also with two micro-steps per step (tokens_per_step 2048 = 2 x 8 x 128): the sums overlap the last one.
accumulate=(--set training.tokens_per_step=2048)
fg_run run gpu_accum_collage_plus cuda --set precision.policy=collage_plus "${accumulate[@]}"
mpi_presets="mixed collage_plus"
have_mpirun=0
mpirun_path=$(command -v mpirun 2>/dev/null)
if [ -f "$mpirun_path" ] && [ -x "$mpirun_path" ]; then
  have_mpirun=1
  mpi=(mpirun -np 1)
  [ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}  # NCCL's own warnings land in the run's output
  for p in $mpi_presets; do
    for zero in 0 1; do
      name="mpi_${p}_zero$zero"
      rm -rf "$tmp/$name" "$tmp/$name.why"
      gpu_runs=$((gpu_runs + 1))
      if timeout "$run_timeout" "${mpi[@]}" "$train_gpt" "${base[@]}" --device cuda --set precision.policy="$p" \
           --set training.zero="$zero" --set output.dir="$tmp/$name" >"$tmp/$name.out" 2>&1; then
        checked_run "$name" cuda 2>"$tmp/$name.why"
        echo $? >"$tmp/$name.rc"
      else
        echo "mpirun exit status $?: $(grep -m1 'error' "$tmp/$name.out" || tail -n 3 "$tmp/$name.out" | tr '\n' ' ')" \
          >"$tmp/$name.why"
        echo 1 >"$tmp/$name.rc"
      fi
    done
  done
  name=mpi_accum_collage_plus
  rm -rf "$tmp/$name" "$tmp/$name.why"
  gpu_runs=$((gpu_runs + 1))
  if timeout "$run_timeout" "${mpi[@]}" "$train_gpt" "${base[@]}" --device cuda --set precision.policy=collage_plus \
       "${accumulate[@]}" --set output.dir="$tmp/$name" >"$tmp/$name.out" 2>&1; then
    checked_run "$name" cuda 2>"$tmp/$name.why"
    echo $? >"$tmp/$name.rc"
  else
    echo "mpirun exit status $?: $(tail -n 3 "$tmp/$name.out" | tr '\n' ' ')" >"$tmp/$name.why"
    echo 1 >"$tmp/$name.rc"
  fi
fi

# ---- g. fp32 activations at B*T = 2048: the LM head's logits in two chunks of 1024 rows, against the CPU ----
chunked=(--set precision.policy=fp32 --set training.batch_size=16)
background run cpu_chunked_fp32 cpu "${chunked[@]}"
fg_run run gpu_chunked_fp32 cuda "${chunked[@]}"

# ---- h. materialized attention (the fused kernels' fallback) on the GPU, against the fused runs of a. ----
for p in fp32 mixed; do fg_run run "gpu_materialized_$p" cuda --set precision.policy="$p" \
  --set precision.attention_impl=materialized; done

# ---- f. --device cuda with no visible GPU: a non-zero exit that says so ----
gpu_runs=$((gpu_runs + 1))
CUDA_VISIBLE_DEVICES="" timeout "$run_timeout" "$train_gpt" "${base[@]}" --device cuda \
  --set output.dir="$tmp/nogpu" >"$tmp/nogpu.out" 2>&1
nogpu_status=$?
wait
run_seconds=$(( $(date +%s) - started ))
cpu_runs=0
for p in $presets; do for name in "cpu_$p" "gpu_to_cpu_$p"; do [ -f "$tmp/$name.rc" ] && cpu_runs=$((cpu_runs + 1)); done; done

# ---- the checks, one line each ----
for p in $presets; do
  tol=$(tolerance "$p")
  if ok_run "gpu_$p" && ok_run "cpu_$p"; then
    if diff=$(close "cpu_$p" "gpu_$p" "$tol" 2>&1); then pass "a. $p: GPU vs CPU losses within $tol relative ($diff)"
    else bad "a. $p: GPU vs CPU losses beyond $tol relative ($diff)"; fi
  else
    bad "a. $p: a run failed (gpu: $(ok_run "gpu_$p" && echo ok || why "gpu_$p"); cpu: $(ok_run "cpu_$p" && echo ok || why "cpu_$p"))"
  fi
done
for p in $presets; do
  if ok_run "gpu_$p" && ok_run "gpu2_$p"; then
    if diff=$(close "gpu_$p" "gpu2_$p" 0 2>&1) && same_file "gpu_$p" "gpu2_$p" model.bin &&
       same_file "gpu_$p" "gpu2_$p" checkpoints/step_00000010.ckpt &&
       same_file "gpu_$p" "gpu2_$p" checkpoints/step_00000020.ckpt; then
      pass "b. $p: two GPU runs bit-identical (losses 1-20, model.bin, checkpoints at 10 and 20)"
    else
      bad "b. $p: two GPU runs differ ($diff; $(file_word "gpu_$p" "gpu2_$p" model.bin); $(
        file_word "gpu_$p" "gpu2_$p" checkpoints/step_00000020.ckpt))"
    fi
  else
    bad "b. $p: a GPU run failed: $(ok_run "gpu_$p" && why "gpu2_$p" || why "gpu_$p")"
  fi
done
for p in $presets; do
  if ok_run "gpu_$p" && ok_run "resumed_$p"; then
    if diff=$(close "gpu_$p" "resumed_$p" 0 11 2>&1) && same_file "gpu_$p" "resumed_$p" model.bin &&
       same_file "gpu_$p" "resumed_$p" checkpoints/step_00000020.ckpt; then
      pass "c. $p: GPU resume at step 10 bit-identical to the straight run (losses 11-20, model.bin, step-20 checkpoint)"
    else
      bad "c. $p: GPU resume differs from the straight run ($diff; $(file_word "gpu_$p" "resumed_$p" model.bin); $(
        file_word "gpu_$p" "resumed_$p" checkpoints/step_00000020.ckpt))"
    fi
  else
    bad "c. $p: $(ok_run "gpu_$p" && why "resumed_$p" || echo "the straight GPU run failed: $(why "gpu_$p")")"
  fi
done
# Cross-backend: steps 11-20 on the other backend, within the per-family tolerance of both straight runs.
for p in $presets; do
  tol=$(tolerance "$p")
  for dir in cpu_to_gpu gpu_to_cpu; do
    from=${dir%%_to_*} to=${dir##*_to_}
    label="d. $p: a ${from^^} checkpoint (step 10) resumed on the ${to^^}"
    name="${dir}_$p"
    if ok_run "gpu_$p" && ok_run "cpu_$p" && ok_run "$name"; then
      if d1=$(close "${from}_$p" "$name" "$tol" 11 2>&1) && d2=$(close "${to}_$p" "$name" "$tol" 11 2>&1); then
        pass "$label: within $tol of the ${from^^} run ($d1) and of the ${to^^} run ($d2)"
      else
        bad "$label: beyond $tol (vs the ${from^^} run: $(close "${from}_$p" "$name" "$tol" 11 2>&1); vs the ${to^^} run: $(
          close "${to}_$p" "$name" "$tol" 11 2>&1))"
      fi
    else
      bad "$label: $(if ! ok_run "${from}_$p"; then echo "the ${from^^} run failed: $(why "${from}_$p")"
        elif ! ok_run "${to}_$p"; then echo "the ${to^^} run failed: $(why "${to}_$p")"; else why "$name"; fi)"
    fi
  done
done
tol=$(tolerance fp32)
if ok_run gpu_chunked_fp32 && ok_run cpu_chunked_fp32; then
  if diff=$(close cpu_chunked_fp32 gpu_chunked_fp32 "$tol" 2>&1); then
    pass "g. fp32 at batch 16 (logits in chunks on the GPU): GPU vs CPU losses within $tol relative ($diff)"
  else bad "g. fp32 at batch 16 (logits in chunks on the GPU): GPU vs CPU losses beyond $tol relative ($diff)"; fi
else
  bad "g. fp32 at batch 16: a run failed (gpu: $(ok_run gpu_chunked_fp32 && echo ok || why gpu_chunked_fp32); cpu: $(
    ok_run cpu_chunked_fp32 && echo ok || why cpu_chunked_fp32))"
fi
for p in fp32 mixed; do
  tol=$(tolerance "$p")
  if ok_run "gpu_$p" && ok_run "gpu_materialized_$p"; then
    if diff=$(close "gpu_$p" "gpu_materialized_$p" "$tol" 2>&1); then
      pass "h. $p: fused vs materialized attention on the GPU within $tol relative ($diff)"
    else bad "h. $p: fused vs materialized attention on the GPU beyond $tol relative ($diff)"; fi
  else
    bad "h. $p: a run failed (fused: $(ok_run "gpu_$p" && echo ok || why "gpu_$p"); materialized: $(
      ok_run "gpu_materialized_$p" && echo ok || why "gpu_materialized_$p"))"
  fi
done
if ((have_mpirun)); then
  links=$(ldd "$train_gpt" 2>/dev/null)
  linked="train_gpt links $(grep -q libnccl <<<"$links" && echo NCCL || echo "no NCCL"), $(
    grep -q libmpi <<<"$links" && echo MPI || echo "no MPI")"
  for p in $mpi_presets; do
    for zero in 0 1; do
      name="mpi_${p}_zero$zero" label="e. $p: mpirun -np 1 --device cuda$( ((zero)) && echo " --set training.zero=1")"
      if ! ok_run "$name"; then bad "$label: failed: $(why "$name")"; continue; fi
      ranks=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("nccl_ranks", "absent"))' \
        "$tmp/$name/summary.json" 2>&1)
      if [ "$ranks" != 1 ]; then
        bad "$label: summary.json's nccl_ranks is $ranks, not 1: NCCL or MPI was not built in ($linked); the run did not go through NCCL"
      elif ! ok_run "gpu_$p"; then
        bad "$label: the plain GPU run to compare with failed: $(why "gpu_$p")"
      elif diff=$(close "gpu_$p" "$name" 0 2>&1) && same_file "gpu_$p" "$name" model.bin; then
        pass "$label: nccl_ranks 1, bit-identical to the plain GPU run (losses 1-20, model.bin)"
      else
        bad "$label: differs from the plain GPU run ($diff; $(file_word "gpu_$p" "$name" model.bin))"
      fi
    done
  done
  label="e. collage_plus: mpirun -np 1 --device cuda, 2 micro-steps per step"
  if ! ok_run mpi_accum_collage_plus || ! ok_run gpu_accum_collage_plus; then
    bad "$label: a run failed (mpirun: $(ok_run mpi_accum_collage_plus && echo ok || why mpi_accum_collage_plus); plain: $(
      ok_run gpu_accum_collage_plus && echo ok || why gpu_accum_collage_plus))"
  elif diff=$(close gpu_accum_collage_plus mpi_accum_collage_plus 0 2>&1) &&
       same_file gpu_accum_collage_plus mpi_accum_collage_plus model.bin; then
    pass "$label: bit-identical to the plain GPU run with the same accumulation (losses 1-20, model.bin)"
  else
    bad "$label: differs from the plain GPU run ($diff; $(file_word gpu_accum_collage_plus mpi_accum_collage_plus model.bin))"
  fi
else
  bad "e. mpirun not found, so the NCCL path was not tested. On a bare GPU machine carry Open MPI: run
     scripts/gpu_verify.sh --fetch where there is network (it downloads Open MPI's .deb files into .deps/),
     carry .deps/ and run scripts/gpu_verify.sh test there (it unpacks and relocates them, puts mpirun on the
     PATH and rebuilds with MPI); elsewhere install Open MPI (Debian: openmpi-bin libopenmpi-dev) and rebuild"
fi
if ((nogpu_status == 0)); then
  bad "f. --device cuda with CUDA_VISIBLE_DEVICES=\"\" exited 0"
elif grep -Eqi 'no (cuda )?gpu|gpu.*(not |in)visible' "$tmp/nogpu.out"; then
  pass "f. --device cuda without a visible GPU: non-zero exit ($(grep -Eim1 'gpu' "$tmp/nogpu.out"))"
else
  bad "f. --device cuda without a visible GPU: non-zero exit, but no message about a missing GPU: $(tail -n 1 "$tmp/nogpu.out")"
fi

expected=$(( 5 * $(wc -w <<<"$presets") + ( have_mpirun ? 2 * $(wc -w <<<"$mpi_presets") + 1 : 1 ) + 1 ))
echo "$gpu_runs GPU runs and $cpu_runs CPU runs in ${run_seconds} s (the first $((3 * $(wc -w <<<"$presets"))) GPU runs took ${gpu_seconds} s); $checks checks"
if ((checks != expected)); then
  echo "FAIL $checks checks reported, $expected expected"
  exit 1
fi
if ((failures)); then
  echo "$failures of $checks GPU checks failed"
  exit 1
fi
echo "all $checks GPU checks passed"
