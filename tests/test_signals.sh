# Signals and divergence. SIGTERM or SIGINT: the run finishes its step, writes a checkpoint (even with
# checkpoint_every=0), log and summary ("interrupted": true), and exits 128 + the signal; --resume then ends
# as an uninterrupted run, bit for bit. A second signal ends it at once, leaving no temporary file. A run
# whose loss diverges stops with exit status 3 and a valid summary.json that says so.
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config

# The tiny config writes no checkpoint of its own (checkpoint_every 0); 300 steps take long enough to stop.
args=(--device cpu --config "$tmp/tiny.json" --set training.max_steps=300 --set training.checkpoint_every=0
      --set training.eval_every=50)
"$train_gpt" "${args[@]}" --set output.dir="$tmp/straight" >/dev/null

# interrupt SIGNAL DIR: starts the run, sends SIGNAL once it has logged 5 steps, returns its exit status.
interrupt() {
  "$train_gpt" "${args[@]}" --set output.dir="$2" >"$2.out" 2>&1 &
  local pid=$! status=0
  for _ in $(seq 300); do [ "$(wc -l 2>/dev/null < "$2/log.jsonl" || echo 0)" -ge 5 ] && break; sleep 0.05; done
  kill -"$1" "$pid"
  wait "$pid" || status=$?
  echo "$status"
}
for sig in TERM INT; do
  dir="$tmp/stopped_$sig"
  status=$(interrupt "$sig" "$dir")
  expected=$([ "$sig" = TERM ] && echo 143 || echo 130)
  [ "$status" = "$expected" ] || fail "SIG$sig: exit status $status, expected $expected: $(cat "$dir.out")"
  grep -q "interrupted by SIG$sig after step [0-9]*: checkpoint written; continue with --resume" "$dir.out" ||
    fail "SIG$sig: no message: $(cat "$dir.out")"
  python3 - "$dir" <<'PY' || fail "SIG$sig: outputs of the interrupted run"
import glob, json, os, sys
d = sys.argv[1]
summary = json.load(open(d + "/summary.json"))
steps = [json.loads(l)["step"] for l in open(d + "/log.jsonl")]  # step 0: the evaluation before training
assert summary["interrupted"] is True and summary["diverged"] is False, summary
assert steps == list(range(len(steps))) and summary["steps"] == steps[-1] < 300, (steps, summary)
assert [os.path.basename(p) for p in glob.glob(d + "/checkpoints/*")] == [f"step_{steps[-1]:08d}.ckpt"]
assert not os.path.exists(d + "/model.bin"), "an interrupted run exports no final model"
PY
  "$train_gpt" --device cpu --resume "$dir" >/dev/null || fail "SIG$sig: resume failed"
  cmp -s <(losses "$tmp/straight") <(losses "$dir") || fail "SIG$sig: resumed losses differ"
  cmp -s "$tmp/straight/model.bin" "$dir/model.bin" || fail "SIG$sig: resumed weights differ"
  cmp -s "$tmp/straight/checkpoints/step_00000300.ckpt" "$dir/checkpoints/step_00000300.ckpt" ||
    fail "SIG$sig: resumed final checkpoint differs"
  echo "SIG$sig: stopped, saved and resumed bit for bit"
done

# A second signal: gone at once, no summary, no temporary file. A larger model makes a step long enough
# for the second signal to arrive inside it.
big=(--set model.n_embd=256 --set model.n_head=4 --set training.seq_len=64)
"$train_gpt" "${args[@]}" "${big[@]}" --set output.dir="$tmp/twice" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 300); do [ -s "$tmp/twice/log.jsonl" ] && break; sleep 0.05; done
kill -TERM "$pid"; sleep 0.05; kill -TERM "$pid"
status=0; wait "$pid" || status=$?
[ "$status" = 143 ] || fail "second signal: exit status $status"
[ ! -e "$tmp/twice/summary.json" ] || fail "second signal: the run went on to write its summary"
[ -z "$(find "$tmp/twice" -name '*.tmp.*')" ] || fail "second signal left $(find "$tmp/twice" -name '*.tmp.*')"

# Divergence: lr 10 without clipping drives the loss far above its start. train_gpt stops the run with exit
# status 3, a one-line reason, and a summary.json that is valid JSON saying where it diverged.
status=0
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.lr=10 --set training.min_lr=1 --set training.grad_clip=0 \
  --set training.max_steps=100 --set output.dir="$tmp/diverged" >/dev/null 2>"$tmp/err" || status=$?
[ "$status" = 3 ] || fail "lr 10: exit status $status: $(cat "$tmp/err")"
grep -q "step [0-9]*: the loss's moving average (.*) exceeds the first loss (.*) by more than training.divergence_margin (1): the run diverged" "$tmp/err" ||
  fail "lr 10: unhelpful message: $(cat "$tmp/err")"
python3 - "$tmp/diverged" <<'PY' || fail "lr 10: summary"
import json, sys
d = sys.argv[1]
summary = json.load(open(d + "/summary.json"))  # strict: NaN or Infinity would not parse
log = [r for r in map(json.loads, open(d + "/log.jsonl")) if "loss" in r]  # the steps, not the step-0 eval
assert summary["diverged"] is True and summary["diverged_step"] == log[-1]["step"] == len(log) < 100, summary
# The rule, recomputed here: a moving average (weight 0.1 on the newest loss) above the first loss + 1.
avg = first = log[0]["loss"]
for r in log[1:]:
    avg = 0.9 * avg + 0.1 * r["loss"]
assert avg > first + 1 - 1e-3, (avg, first)
print(f"lr 10 diverged at step {summary['diverged_step']}: average {avg:.2f} vs first {first:.2f}")
PY

# A healthy run is not flagged.
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["diverged"] is False' "$tmp/straight/summary.json" ||
  fail "a healthy run was flagged as diverged"

# A non-finite loss: lr 1e6 without clipping. The step is logged with null, the run stops with status 3.
status=0
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.lr=1e6 --set training.min_lr=1 --set training.grad_clip=0 \
  --set training.divergence_margin=0 --set output.dir="$tmp/nan" >/dev/null 2>"$tmp/err" || status=$?
[ "$status" = 3 ] || fail "lr 1e6: exit status $status: $(cat "$tmp/err")"
grep -q "is not finite: the run diverged" "$tmp/err" || fail "lr 1e6: $(cat "$tmp/err")"
python3 - "$tmp/nan" <<'PY' || fail "lr 1e6: summary"
import json, sys
summary = json.load(open(sys.argv[1] + "/summary.json"))
last = [json.loads(l) for l in open(sys.argv[1] + "/log.jsonl")][-1]
assert summary["diverged"] is True and summary["diverged_step"] == last["step"], summary
assert last["loss"] is None or last["grad_norm"] is None, last
PY
echo ok
