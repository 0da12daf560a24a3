# End to end on the CUDA backend (run by `make test-gpu` on a machine with a GPU): every preset against the
# CPU backend, determinism, resume, one rank under mpirun (the NCCL path), and a clear error without a GPU.
# Prints one line per check and exits non-zero if any check failed.
# shellcheck source=tests/e2e_common.sh
source "$(dirname "$0")/../e2e_common.sh"

failures=0
pass() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failures=$((failures + 1)); }

# ---- data: the fortunes corpus, else the shards in $LPGPT_TEST_DATA, else a loud failure (never a pass) ----
data_args=()
if prepare_test_data 2>"$tmp/prepare.err"; then
  echo "data: fortunes corpus (byte-level)"
  vocab=257
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
  )
  data_args=(--set "data.train=$dir/*train*.bin" --set "data.val=$dir/*val*.bin" --set model.vocab_size="$vocab")
  if [ -f "$dir/tokenizer.bin" ]; then data_args+=(--set "data.tokenizer=$dir/tokenizer.bin")
  else data_args+=(--set data.tokenizer=); fi
  echo "data: $dir (LPGPT_TEST_DATA, vocab $vocab)"
else
  echo "FAIL no test data: the fortunes corpus could not be prepared ($(tail -n 1 "$tmp/prepare.err"))."
  echo "     Install Debian's fortunes package, or point LPGPT_TEST_DATA at a directory of llm.c token shards"
  echo "     (train_*.bin, val_*.bin), e.g. python3 scripts/synthetic_shard.py --out /tmp/syn --vocab 257"
  exit 1
fi
write_tiny_config

# One run of the tiny config: 20 steps, no evaluation, no samples. train DEVICE DIR [--set ...]
train() {
  local device=$1 dir=$2
  shift 2
  "$train_gpt" --config "$tmp/tiny.json" --device "$device" "${data_args[@]}" --set training.max_steps=20 \
    --set training.eval_every=0 --set training.sample_tokens=0 --set output.dir="$dir" "$@" \
    >"$dir.out" 2>&1 || { echo "     $device run $(basename "$dir") failed:"; tail -n 5 "$dir.out" | sed 's/^/     /'; return 1; }
  # A GPU run must really have run on the GPU (summary.json says which backend ran).
  [ "$device" = cpu ] || python3 - "$dir/summary.json" <<'PY' || { echo "     $(basename "$dir"): not a cuda run"; return 1; }
import json, sys
s = json.load(open(sys.argv[1]))
assert s.get("backend") == "cuda", s.get("backend")
PY
}

# Losses of two runs agree within a relative tolerance at every step (0 = bit for bit). close A B TOL [FROM]
close() {
  python3 - "$1/log.jsonl" "$2/log.jsonl" "$3" "${4:-1}" <<'PY'
import json, sys
a, b = ({r["step"]: r["loss"] for r in map(json.loads, open(p))} for p in sys.argv[1:3])
tol, first = float(sys.argv[3]), int(sys.argv[4])
steps = [s for s in sorted(a) if s >= first]
if sorted(a) != sorted(b) or not steps:
    sys.exit(f"steps differ: {sorted(a)} vs {sorted(b)}")
# Every step must pass (a NaN fails both tests); the report names the step furthest apart.
ok = all(a[s] == b[s] if tol == 0 else abs(a[s] - b[s]) <= tol * abs(a[s]) for s in steps)
worst = max(steps, key=lambda s: abs(a[s] - b[s]) / abs(a[s]))
rel = abs(a[worst] - b[worst]) / abs(a[worst])
print(f"max rel diff {rel:.2e} at step {worst} ({a[worst]!r} vs {b[worst]!r})")
sys.exit(0 if ok else 1)
PY
}

# ---- a. every preset on the GPU against the CPU backend, same seed and data ----
# fp32: both backends compute in fp32, and only the order of the fp32 sums differs: 1e-4 relative.
# The bf16 family: bf16 roundings of slightly different fp32 results can land one ulp (2^-8) apart and the
# runs drift; 2e-2 relative over 20 steps. dqt_*: the grid weights and the cast matmul operands are
# identical on both backends (the shared operand_cast.h / optimizer_element.h code), so the difference comes
# from the fp32 summation order only (matmuls, reductions), carried on through the bf16 gradients: 2e-2 too.
presets="fp32 mixed mixed_nomaster bf16 collage_light collage_plus kahan sr fp8_sim dqt_int8 dqt_ternary"
for policy in $presets; do
  tol=2e-2
  [ "$policy" = fp32 ] && tol=1e-4
  if train cuda "$tmp/gpu_$policy" --set precision.policy="$policy" &&
     train cpu "$tmp/cpu_$policy" --set precision.policy="$policy"; then
    if diff=$(close "$tmp/cpu_$policy" "$tmp/gpu_$policy" "$tol" 2>&1); then
      pass "a. $policy: GPU vs CPU losses within $tol relative ($diff)"
    else
      bad "a. $policy: GPU vs CPU losses beyond $tol relative ($diff)"
    fi
  else
    bad "a. $policy: a run failed"
  fi
done

# ---- b. determinism: a second GPU run gives the same bits (losses and model.bin) ----
for policy in mixed collage_plus; do
  if [ -s "$tmp/gpu_$policy/model.bin" ] && train cuda "$tmp/gpu2_$policy" --set precision.policy="$policy"; then
    if close "$tmp/gpu_$policy" "$tmp/gpu2_$policy" 0 >/dev/null 2>&1 &&
       cmp -s "$tmp/gpu_$policy/model.bin" "$tmp/gpu2_$policy/model.bin"; then
      pass "b. $policy: two GPU runs bit-identical (losses, model.bin)"
    else
      bad "b. $policy: two GPU runs differ ($(close "$tmp/gpu_$policy" "$tmp/gpu2_$policy" 0 2>&1); model.bin $(
        cmp -s "$tmp/gpu_$policy/model.bin" "$tmp/gpu2_$policy/model.bin" && echo same || echo differs))"
    fi
  else
    bad "b. $policy: a run failed"
  fi
done

# ---- c. resume on the GPU: 20 steps straight vs 10 steps + resume to 20 (checkpoints every 10) ----
# The resumed directory keeps only what a run stopped after step 10 would have: log lines 1-10 and
# checkpoints/step_00000010.ckpt; steps 11-20 and the weights must then come out bit for bit the same.
for policy in mixed collage_plus sr; do
  straight="$tmp/straight_$policy" resumed="$tmp/resumed_$policy"
  if train cuda "$straight" --set precision.policy="$policy" --set training.checkpoint_every=10 &&
     [ -f "$straight/checkpoints/step_00000010.ckpt" ]; then
    mkdir -p "$resumed/checkpoints"
    cp "$straight/config.json" "$resumed/"
    cp "$straight/checkpoints/step_00000010.ckpt" "$resumed/checkpoints/"
    head -n 10 "$straight/log.jsonl" > "$resumed/log.jsonl"
    if "$train_gpt" --resume "$resumed" --device cuda >"$resumed.out" 2>&1; then
      if diff=$(close "$straight" "$resumed" 0 11 2>&1) && cmp -s "$straight/model.bin" "$resumed/model.bin" &&
         [ "$(wc -l < "$resumed/log.jsonl")" = 20 ]; then
        pass "c. $policy: GPU resume at step 10 bit-identical (losses 11-20, model.bin)"
      else
        bad "c. $policy: GPU resume differs (losses: $diff; model.bin $(cmp -s "$straight/model.bin" \
          "$resumed/model.bin" && echo same || echo differs); $(wc -l < "$resumed/log.jsonl") log lines)"
      fi
    else
      bad "c. $policy: --resume failed: $(tail -n 1 "$resumed.out")"
    fi
  else
    bad "c. $policy: the 20-step run failed or left no checkpoint at step 10"
  fi
done

# ---- d. one rank under mpirun (gradients through NCCL) against the plain GPU run ----
# One rank sums one copy, so bit-identical losses are expected; the check requires 1e-6 relative.
if ! command -v mpirun >/dev/null; then
  bad "d. mpirun not found: install Open MPI (Debian: openmpi-bin libopenmpi-dev) and rebuild for the NCCL path"
else
  mpi=(mpirun -np 1)
  [ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  for policy in mixed collage_plus; do
    dir="$tmp/mpi_$policy"
    if "${mpi[@]}" "$train_gpt" --config "$tmp/tiny.json" --device cuda "${data_args[@]}" --set training.max_steps=20 \
         --set training.eval_every=0 --set training.sample_tokens=0 --set precision.policy="$policy" \
         --set output.dir="$dir" >"$dir.out" 2>&1 &&
       python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["backend"] == "cuda"' "$dir/summary.json" \
         2>/dev/null; then
      if diff=$(close "$tmp/gpu_$policy" "$dir" 1e-6 2>&1); then
        pass "d. $policy: mpirun -np 1 --device cuda matches the plain GPU run within 1e-6 ($diff)"
      else
        bad "d. $policy: mpirun -np 1 differs from the plain GPU run ($diff)"
      fi
    else
      bad "d. $policy: mpirun -np 1 --device cuda failed or did not run on cuda: $(tail -n 2 "$dir.out" | tr '\n' ' ')"
    fi
  done
fi

# ---- e. --device cuda with no visible GPU: a non-zero exit that says so ----
if CUDA_VISIBLE_DEVICES="" "$train_gpt" --config "$tmp/tiny.json" --device cuda "${data_args[@]}" \
     --set output.dir="$tmp/nogpu" >"$tmp/nogpu.out" 2>&1; then
  bad "e. --device cuda with CUDA_VISIBLE_DEVICES=\"\" exited 0"
elif grep -Eqi 'no (cuda )?gpu|gpu.*(not |in)visible' "$tmp/nogpu.out"; then
  pass "e. --device cuda without a visible GPU: non-zero exit ($(grep -Eim1 'gpu' "$tmp/nogpu.out"))"
else
  bad "e. --device cuda without a visible GPU: non-zero exit, but no message about a missing GPU: $(tail -n 1 "$tmp/nogpu.out")"
fi

if ((failures)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all GPU checks passed"
