# Resume keeps a run directory's history linear and whole: a resume from an older checkpoint starts a branch
# (newer checkpoints kept under superseded/, log.jsonl and samples.txt cut), a plain --resume continues the
# branch, a finished run is left alone, summary.json covers the whole run, a checkpoint file from elsewhere
# continues in the output.dir of --config, and under ZeRO-1 the newest step complete on every rank is used.
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config

train() { "$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.checkpoint_every=4 --set training.sample_every=4 "$@"; }
log_steps() { python3 -c 'import json, sys; print(" ".join(str(json.loads(l)["step"]) for l in open(sys.argv[1])))' "$1/log.jsonl"; }
sample_steps() { grep -o '^--- step [0-9]* ---$' "$1/samples.txt" | awk '{printf "%s%s", sep, $3; sep=" "}'; }
snapshot() { (cd "$1" && find . -type f ! -name .lock -exec md5sum {} + | sort); }

# 12 steps, checkpoints kept at 8 and 12; a branch from step 8 to 16, then a plain resume continues it to 20.
train --set training.max_steps=12 --set output.dir="$tmp/run" >/dev/null
"$train_gpt" --device cpu --resume "$tmp/run/checkpoints/step_00000008.ckpt" --set training.max_steps=16 >"$tmp/out"
grep -q "starts a branch: 1 newer checkpoint file(s) moved to .*superseded/ (kept)" "$tmp/out" ||
  fail "the branch was not announced: $(cat "$tmp/out")"
[ -f "$tmp/run/checkpoints/superseded/step_00000012.ckpt" ] || fail "step 12 was not kept under superseded/"
[ "$(log_steps "$tmp/run")" = "$(seq -s ' ' 0 16)" ] || fail "branch log steps: $(log_steps "$tmp/run")"
[ "$(sample_steps "$tmp/run")" = "4 8 12 16" ] || fail "branch samples: $(sample_steps "$tmp/run")"
"$train_gpt" --device cpu --resume "$tmp/run" --set training.max_steps=20 >/dev/null
[ "$(log_steps "$tmp/run")" = "$(seq -s ' ' 0 20)" ] || fail "log steps after the branch: $(log_steps "$tmp/run")"
[ "$(sample_steps "$tmp/run")" = "4 8 12 16 20" ] || fail "samples after the branch: $(sample_steps "$tmp/run")"
[ "$(cd "$tmp/run/checkpoints" && echo step_*)" = "step_00000016.ckpt step_00000020.ckpt" ] ||
  fail "checkpoints after the branch: $(cd "$tmp/run/checkpoints" && echo *)"

# A branch continues from its checkpoint's state: branching again from step 16 to 20 gives the weights that
# the plain resume from 16 gave, bit for bit.
cp "$tmp/run/model.bin" "$tmp/model_20.bin"
"$train_gpt" --device cpu --resume "$tmp/run/checkpoints/step_00000016.ckpt" --set training.max_steps=20 >/dev/null
cmp -s "$tmp/model_20.bin" "$tmp/run/model.bin" || fail "branching from 16 again gave other weights"
[ -f "$tmp/run/checkpoints/superseded/step_00000020.ckpt" ] || fail "the second branch did not keep step 20"

# A finished run: --resume says so, says how to extend it, exits 0 and changes no file.
before=$(snapshot "$tmp/run")
"$train_gpt" --device cpu --resume "$tmp/run" >"$tmp/out" 2>"$tmp/err" || fail "resume of a finished run failed"
grep -q "is complete.*--set training.max_steps=" "$tmp/out" || fail "no completion message: $(cat "$tmp/out")"
[ "$before" = "$(snapshot "$tmp/run")" ] || fail "resuming a finished run changed files"
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$tmp/run/summary.json" || fail "summary.json is not JSON"

# summary.json after a resume describes the whole run: all steps and tokens, the best val loss of the log,
# the training time of both processes.
train --set training.max_steps=20 --set output.dir="$tmp/whole" >/dev/null
cp -r "$tmp/whole" "$tmp/split"
rm "$tmp/split/checkpoints/step_00000020.ckpt"
sleep 1  # the resumed process alone would run for less time than the whole run took
"$train_gpt" --device cpu --resume "$tmp/split" >/dev/null
python3 - "$tmp/whole" "$tmp/split" <<'PY' || fail "summary after resume"
import json, sys
whole, split = (json.load(open(d + "/summary.json")) for d in sys.argv[1:])
log = [json.loads(l) for l in open(sys.argv[2] + "/log.jsonl")]
vals = [r["val_loss"] for r in log if "val_loss" in r]
assert split["steps"] == whole["steps"] == 20 and split["tokens"] == whole["tokens"], (split, whole)
assert split["best_val_loss"] == whole["best_val_loss"] == min(vals), (split, whole, vals)
assert split["final_val_loss"] == whole["final_val_loss"] == vals[-1], (split, whole, vals)
assert split["final_loss"] == whole["final_loss"] == log[-1]["loss"]
# seconds: the first process's time (the copied log's step 16) plus the resumed process's own.
assert split["seconds"] >= log[15]["time_s"] and split["seconds"] >= log[-1]["time_s"] - 1e-3, split
timed = [r["tokens_per_s"] for r in log if r["step"] > 1]
assert abs(split["mean_tokens_per_s"] - sum(timed) / len(timed)) <= 0.1, (split["mean_tokens_per_s"], timed)
assert split["interrupted"] is False and split["diverged"] is False
PY

# A checkpoint file outside a run's checkpoints/: it needs --config, and the run continues in its output.dir.
mkdir "$tmp/loose"
cp "$tmp/whole/checkpoints/step_00000016.ckpt" "$tmp/loose/"
if "$train_gpt" --device cpu --resume "$tmp/loose/step_00000016.ckpt" >/dev/null 2>"$tmp/err"; then
  fail "a loose checkpoint without --config was accepted"
fi
grep -q "give --config FILE" "$tmp/err" || fail "unhelpful: $(cat "$tmp/err")"
"$train_gpt" --device cpu --resume "$tmp/loose/step_00000016.ckpt" --config "$tmp/tiny.json" \
  --set training.checkpoint_every=4 --set training.sample_every=4 --set output.dir="$tmp/continued" >/dev/null
[ "$(ls -A "$tmp/loose")" = "step_00000016.ckpt" ] || fail "wrote beside the loose checkpoint: $(ls -A "$tmp/loose")"
[ "$(log_steps "$tmp/continued")" = "17 18 19 20" ] || fail "continued log: $(log_steps "$tmp/continued")"
cmp -s "$tmp/continued/model.bin" "$tmp/whole/model.bin" || fail "continued weights differ from the whole run's"

# ZeRO-1 on 2 ranks, each rank writing its own file: a job killed between the ranks' writes of step 12
# (rank 1's file missing) resumes from step 8, the newest step complete on both ranks, and ends as a run
# without the kill does.
command -v mpirun >/dev/null || fail "mpirun not found: install Open MPI (Debian: openmpi-bin libopenmpi-dev)"
mpi=(mpirun -np 2 --oversubscribe)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
zero() { OMP_NUM_THREADS=1 "${mpi[@]}" "$train_gpt" --device cpu "$@"; }
zero --config "$tmp/tiny.json" --set training.batch_size=4 --set training.zero=1 --set training.checkpoint_every=4 \
  --set training.max_steps=12 --set output.dir="$tmp/zero" >/dev/null
cp -r "$tmp/zero" "$tmp/zero_killed"
rm "$tmp/zero_killed/checkpoints/step_00000012.rank1.ckpt" "$tmp/zero_killed/model.bin" "$tmp/zero_killed/summary.json"
zero --resume "$tmp/zero_killed" >"$tmp/out" || fail "ZeRO-1 resume after a partial checkpoint failed"
grep -q "resumed from .*step_00000008.ckpt" "$tmp/out" || fail "did not resume from step 8: $(cat "$tmp/out")"
[ -f "$tmp/zero_killed/checkpoints/superseded/step_00000012.ckpt" ] || fail "the partial step 12 was not set aside"
cmp -s "$tmp/zero/model.bin" "$tmp/zero_killed/model.bin" || fail "ZeRO-1 resumed weights differ"
[ "$(log_steps "$tmp/zero_killed")" = "$(seq -s ' ' 0 12)" ] || fail "ZeRO-1 log: $(log_steps "$tmp/zero_killed")"
echo ok
