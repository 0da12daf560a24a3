# Checkpoint identity: a resume continues only the run that wrote the checkpoint. A change of any key outside
# README's list of resumable keys, of the data behind the same path, or of the ranks is refused with one line
# naming the key and both values, and nothing is written; the resumable keys may change. Ranks whose data
# differs behind the same path are refused too.
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config

"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=4 --set training.warmup_steps=2 \
  --set precision.policy=bf16 --set output.dir="$tmp/run" >/dev/null
snapshot() { (cd "$1" && find . -type f ! -name .lock -exec md5sum {} + | sort); }
before=$(snapshot "$tmp/run")

# refused PATTERN ARGS...: --resume with ARGS fails naming PATTERN; the run directory is unchanged.
refused() {
  local pattern=$1; shift
  if "$train_gpt" --device cpu --resume "$tmp/run" --set training.max_steps=8 "$@" >/dev/null 2>"$tmp/err"; then
    fail "accepted a resume with $*"
  fi
  [ "$(wc -l < "$tmp/err")" = 1 ] || fail "$*: expected one error line: $(cat "$tmp/err")"
  grep -q -- "$pattern" "$tmp/err" || fail "$*: stderr does not match '$pattern': $(cat "$tmp/err")"
  [ "$before" = "$(snapshot "$tmp/run")" ] || fail "$*: the refused resume changed the run directory"
  echo "refused: $(cut -c1-160 "$tmp/err")"
}
# Same parameter count, other model: 2 heads -> 4.
refused "model.n_head = 2, but this run has model.n_head = 4" --set model.n_head=4
refused "precision.policy = bf16, but this run has precision.policy = sr" --set precision.policy=sr
refused "precision.adam_v = preset, but this run has precision.adam_v = fp32" --set precision.adam_v=fp32
refused "training.seed = 42, but this run has training.seed = 43" --set training.seed=43
refused "training.batch_size = 8, but this run has training.batch_size = 4" --set training.batch_size=4
refused "training.beta2" --set training.beta2=0.99

# The same path with other data behind it: the shard's fingerprint changes.
mkdir "$tmp/data_saved" && cp "$tmp/data"/train_* "$tmp/data_saved/"
python3 - "$tmp/data/train_000000.bin" <<'PY'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
data[1024 + 2 * 100] ^= 1  # one token in the fingerprinted head: still below the vocab size
open(path, "wb").write(data)
PY
refused "data.train shard 0 = train_000000.bin, .* tokens, head [0-9a-f]*, but this run has data.train shard 0" \
  --set training.seed=42
cp "$tmp/data_saved"/train_* "$tmp/data/"

# The keys README lists as resumable may change, the data may move: the run continues.
mkdir "$tmp/moved" && cp "$tmp/data"/* "$tmp/moved/"
"$train_gpt" --device cpu --resume "$tmp/run" --set training.max_steps=8 --set training.lr=5e-4 \
  --set training.min_lr=5e-5 --set training.eval_every=3 --set training.checkpoint_every=2 \
  --set data.train="$tmp/moved/train_*.bin" --set data.val="$tmp/moved/val_*.bin" --set output.export=bf16 \
  --set metrics.every=2 >/dev/null || fail "a resume with resumable changes was refused"
python3 -c 'import json, sys; assert [json.loads(l)["step"] for l in open(sys.argv[1])] == list(range(0, 9))' \
  "$tmp/run/log.jsonl" || fail "the resumed run's log (step 0 is the evaluation before training)"

# Ranks with different data behind the same (relative) path: each rank starts in its own directory.
command -v mpirun >/dev/null || fail "mpirun not found: install Open MPI (Debian: openmpi-bin libopenmpi-dev)"
for r in 0 1; do
  mkdir -p "$tmp/rank$r/data" && cp "$tmp/data"/* "$tmp/rank$r/data/"
done
python3 - "$tmp/rank1/data/train_000000.bin" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[1024 + 2 * 5] ^= 1
open(sys.argv[1], "wb").write(data)
PY
cat > "$tmp/in_rank_dir.sh" <<SH
#!/usr/bin/env bash
cd "$tmp/rank\${OMPI_COMM_WORLD_RANK:-0}" && exec "\$@"
SH
chmod +x "$tmp/in_rank_dir.sh"
mpi=(mpirun -np 2 --oversubscribe)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
if OMP_NUM_THREADS=1 "${mpi[@]}" "$tmp/in_rank_dir.sh" "$train_gpt" --device cpu --config "$tmp/tiny.json" \
  --set training.batch_size=4 --set training.max_steps=2 --set training.warmup_steps=1 \
  --set data.train='data/train_*.bin' --set data.val='data/val_*.bin' --set output.dir="$tmp/ranks" \
  >/dev/null 2>"$tmp/err"; then
  fail "ranks with different data trained"
fi
grep -q "rank 1's training data differs from rank 0's" "$tmp/err" || fail "unhelpful: $(cat "$tmp/err")"
[ ! -e "$tmp/ranks" ] || fail "ranks with different data wrote $tmp/ranks"
echo ok
