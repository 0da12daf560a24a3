# Run-directory ownership: a new run never writes into another run's directory (unless told to overwrite
# it), a live run holds a lock that a second run respects, a file where checkpoints/ belongs is an error at
# start, and temporary files of a killed checkpoint write are removed at the next start.
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config

run() { "$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=6 --set training.warmup_steps=2 "$@"; }
# snapshot DIR: every file's name, size and checksum.
snapshot() { (cd "$1" && find . -type f ! -name .lock -exec md5sum {} + | sort); }

# A finished run with checkpoints at 3 and 6.
run --set training.checkpoint_every=3 --set output.dir="$tmp/run" >/dev/null
before=$(snapshot "$tmp/run")

# A new run into it is refused before anything is written, naming the directory and the ways out.
if run --set training.seed=7 --set output.dir="$tmp/run" >"$tmp/out" 2>"$tmp/err"; then fail "new run into a run dir accepted"; fi
[ "$(wc -l < "$tmp/err")" = 1 ] || fail "expected one error line: $(cat "$tmp/err")"
for word in "$tmp/run" "--resume" "output.dir" "output.overwrite=1"; do
  grep -q -- "$word" "$tmp/err" || fail "the refusal does not mention $word: $(cat "$tmp/err")"
done
[ "$before" = "$(snapshot "$tmp/run")" ] || fail "the refused run changed the old run's files"

# output.overwrite=1 removes the old run's outputs first: none of its checkpoints survive, so a later
# --resume continues the new run (steps 1..4), not the old one.
run --set training.max_steps=4 --set training.seed=7 --set output.overwrite=1 --set output.dir="$tmp/run" >"$tmp/out"
grep -q "removed the previous run's outputs" "$tmp/out" || fail "overwrite did not say what it removed"
[ "$(cd "$tmp/run/checkpoints" && echo *)" = "step_00000004.ckpt" ] ||
  fail "overwrite left $(cd "$tmp/run/checkpoints" && echo *)"
"$train_gpt" --device cpu --resume "$tmp/run" --set training.max_steps=6 >/dev/null
python3 - "$tmp/run" <<'PY' || fail "after overwrite"
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1] + "/log.jsonl")]
assert steps == [0, 1, 2, 3, 4, 5, 6], steps  # step 0: the evaluation before training
assert json.load(open(sys.argv[1] + "/config.json"))["training"]["seed"] == 7
PY

# A second live run on the same directory is refused at once, even with output.overwrite=1; the first run
# goes on undisturbed. The first run is slowed down (many steps) so that it is still alive.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=100000 --set output.dir="$tmp/live" \
  >/dev/null 2>&1 &
first=$!
for _ in $(seq 100); do [ -s "$tmp/live/log.jsonl" ] && break; sleep 0.1; done
[ -s "$tmp/live/log.jsonl" ] || fail "the first run did not start"
for extra in "" "--set output.overwrite=1"; do
  start=$(date +%s%N)
  # shellcheck disable=SC2086
  if run --set output.dir="$tmp/live" $extra >/dev/null 2>"$tmp/err"; then fail "second live run accepted ($extra)"; fi
  elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  grep -q "in use by another live run (process $first" "$tmp/err" || fail "unhelpful refusal ($extra): $(cat "$tmp/err")"
  echo "second run refused in ${elapsed_ms} ms ($extra)"
done
kill -0 "$first" 2>/dev/null || fail "the first run died"
kill -KILL "$first"; wait "$first" 2>/dev/null || true
# The lock dies with its process: the directory can be resumed or overwritten now.
run --set output.overwrite=1 --set output.dir="$tmp/live" >/dev/null || fail "the lock outlived its process"

# A regular file where checkpoints/ should be: an error at start, nothing written.
mkdir "$tmp/blocked"
echo "not a directory" > "$tmp/blocked/checkpoints"
if run --set output.dir="$tmp/blocked" >/dev/null 2>"$tmp/err"; then fail "file at checkpoints/ accepted"; fi
grep -q "blocked/checkpoints exists but is not a directory" "$tmp/err" || fail "unhelpful: $(cat "$tmp/err")"
[ "$(cd "$tmp/blocked" && ls -A)" = "checkpoints" ] || fail "wrote into $tmp/blocked: $(ls -A "$tmp/blocked")"

# Temporary files of a killed checkpoint write (NAME.tmp.PID) are removed at the next start, and said so.
head -c 100000 /dev/zero > "$tmp/run/checkpoints/step_00000008.ckpt.tmp.12345"
head -c 100 /dev/zero > "$tmp/run/summary.json.tmp.12345"
"$train_gpt" --device cpu --resume "$tmp/run" --set training.max_steps=8 >"$tmp/out"
grep -q "removed 2 temporary file(s)" "$tmp/out" || fail "stale temporary files not reported: $(cat "$tmp/out")"
[ -z "$(find "$tmp/run" -name '*.tmp.*')" ] || fail "stale temporary files left: $(find "$tmp/run" -name '*.tmp.*')"
echo ok
