# Data-parallel training on the CPU backend under mpirun (docs/distributed.md): 2 ranks x batch B against
# 1 rank x 2B, ZeRO-1 against no sharding, multi-rank resume, a resume on another rank count, ranks with
# different configs, and a failed or killed rank stopping the whole job.
source "$(dirname "$0")/e2e_common.sh"
command -v mpirun >/dev/null || fail "mpirun not found: install Open MPI (Debian: openmpi-bin libopenmpi-dev)"
export OMP_NUM_THREADS=1
mpi_flags=(--oversubscribe)
[ "$(id -u)" = 0 ] && mpi_flags+=(--allow-run-as-root)
mpi=(mpirun -np 2 "${mpi_flags[@]}")
mpi3=(mpirun -np 3 "${mpi_flags[@]}")
prepare_test_data
write_tiny_config

# The collectives themselves on 3 ranks: rank-ordered sums, bit for bit, over uneven and empty ranges.
"${mpi3[@]}" "$root/build/tests/test_collectives" >/dev/null || fail "collectives on 3 ranks"

# 10 steps of batch 4 per rank, checkpoints at 5 and 10.
run2() { "${mpi[@]}" "$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.batch_size=4 --set training.max_steps=10 \
  --set training.eval_every=5 --set training.checkpoint_every=5 "$@" >/dev/null; }
# log.jsonl without the timings, which differ from run to run.
steps() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l); r.pop("ms", None); r.pop("tokens_per_s", None); r.pop("time_s", None); print(json.dumps(r))' "$1/log.jsonl"; }
same_run() { cmp -s <(steps "$1") <(steps "$2") && cmp -s "$1/model.bin" "$2/model.bin"; }

# 2 ranks x 4 rows = 1 rank x 8 rows: the same data, losses within 1e-6 (only the order of sums differs).
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.batch_size=8 --set training.max_steps=10 --set training.eval_every=5 \
  --set output.dir="$tmp/one" >/dev/null
run2 --set output.dir="$tmp/two"
python3 - "$tmp/one" "$tmp/two" <<'PY' || fail "2 ranks x B vs 1 rank x 2B"
import json, struct, sys
one, two = ([json.loads(l) for l in open(d + "/log.jsonl")] for d in sys.argv[1:])
assert len(one) == len(two) == 11  # the step-0 evaluation and 10 steps
for a, b in zip(one, two):
    for key in ("loss", "val_loss", "grad_norm"):
        if key in a:
            assert abs(a[key] - b[key]) <= 1e-6 * abs(a[key]), (a["step"], key, a[key], b[key])
w1, w2 = (open(d + "/model.bin", "rb").read() for d in sys.argv[1:])
n = (len(w1) - 1024) // 4
diff = max(abs(x - y) for x, y in zip(struct.unpack(f"<{n}f", w1[1024:]), struct.unpack(f"<{n}f", w2[1024:])))
assert diff < 1e-5, f"weights differ by up to {diff}"
PY
[ -f "$tmp/two/checkpoints/step_00000010.ckpt" ] && [ ! -e "$tmp/two/checkpoints/step_00000010.rank1.ckpt" ] ||
  fail "without ZeRO only rank 0 writes a checkpoint"

# ZeRO-1 on 2 ranks: the same bits as no sharding (losses, update metrics, weights), per policy.
for policy in fp32 mixed collage_plus dqt_int8; do
  for zero in 0 1; do
    run2 --set precision.policy=$policy --set training.zero=$zero --set metrics.every=3 --set output.dir="$tmp/${policy}_$zero"
  done
  same_run "$tmp/${policy}_0" "$tmp/${policy}_1" || fail "$policy: ZeRO-1 differs from no sharding"
done
# 3 ranks (uneven shards; DQT's codes split apart from its 1-D parameters).
for zero in 0 1; do
  "${mpi3[@]}" "$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.batch_size=2 --set training.max_steps=10 \
    --set precision.policy=dqt_int8 --set training.zero=$zero --set metrics.every=3 --set output.dir="$tmp/three_$zero" >/dev/null
done
same_run "$tmp/three_0" "$tmp/three_1" || fail "3 ranks: ZeRO-1 differs from no sharding"
[ -f "$tmp/mixed_1/checkpoints/step_00000010.rank1.ckpt" ] || fail "ZeRO-1: rank 1 wrote no shard checkpoint"
python3 - "$tmp/mixed_1/log.jsonl" <<'PY' || fail "ZeRO-1 metrics"
import json, sys
log = {r["step"]: r for r in map(json.loads, open(sys.argv[1]))}
# The read weight (the bf16 copy) takes Δ on average; the fp32 master takes it up to fp32 rounding.
assert 0 < log[3]["edq_rel"] <= 1.1 and "groups" in log[3], log[3]
assert abs(log[3]["edq_rel_state"] - 1) < 1e-3 and log[3]["lost_frac_state"] < 0.01, log[3]
PY

# Multi-rank resume, with and without ZeRO-1: 5 steps + resume + 5 steps = 10 steps straight, bit for bit.
for run in fp32_0 mixed_1; do
  cp -r "$tmp/$run" "$tmp/${run}_resumed"
  rm "$tmp/${run}_resumed"/checkpoints/step_00000010* "$tmp/${run}_resumed/model.bin"
  "${mpi[@]}" "$train_gpt" --device cpu --resume "$tmp/${run}_resumed" >/dev/null
  same_run "$tmp/$run" "$tmp/${run}_resumed" || fail "$run: resumed run differs"
  for f in "$tmp/$run"/checkpoints/step_00000010*; do
    cmp -s "$f" "$tmp/${run}_resumed/checkpoints/$(basename "$f")" || fail "$run: resumed $(basename "$f") differs"
  done
done

# A resume on another number of ranks is refused, naming both counts.
if "$train_gpt" --device cpu --resume "$tmp/fp32_0" --set training.max_steps=20 >/dev/null 2>"$tmp/err"; then
  fail "a 2-rank checkpoint resumed on 1 rank"
fi
grep -q "a run with ranks = 2, but this run has ranks = 1" "$tmp/err" || fail "unclear rank-count error: $(cat "$tmp/err")"

# An error on one rank stops the job: rank 1's shard file is truncated, rank 0 would wait for it forever.
rm "$tmp/mixed_1_resumed"/checkpoints/step_00000010*
truncate -s 100 "$tmp/mixed_1_resumed/checkpoints/step_00000005.rank1.ckpt"
if timeout 60 "${mpi[@]}" "$train_gpt" --device cpu --resume "$tmp/mixed_1_resumed" >/dev/null 2>"$tmp/err"; then
  fail "a job with a failing rank succeeded"
fi
[ "$?" != 124 ] || fail "a failing rank left the job hanging"
grep -q "error (rank 1 of 2): checkpoint .*step_00000005.rank1.ckpt" "$tmp/err" || fail "the error does not name rank 1: $(cat "$tmp/err")"

# Ranks with different settings are refused before training: rank 1 gets another learning rate.
cat > "$tmp/other_lr.sh" <<SH
#!/bin/bash
[ "\$OMPI_COMM_WORLD_RANK" = 1 ] && exec "$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.lr=2e-3 --set output.dir="$tmp/other_lr"
exec "$train_gpt" --device cpu --config "$tmp/tiny.json" --set output.dir="$tmp/other_lr"
SH
chmod +x "$tmp/other_lr.sh"
if timeout 60 "${mpi[@]}" "$tmp/other_lr.sh" >/dev/null 2>"$tmp/err"; then fail "ranks with different configs trained"; fi
grep -q "error (rank [01] of 2): rank 1's configuration differs from rank 0's" "$tmp/err" ||
  fail "unclear config-mismatch error: $(head -3 "$tmp/err")"

# A rank killed mid-run (kill -9) ends the job, non-zero, within 60 s, naming the rank.
"${mpi[@]}" "$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.batch_size=4 --set training.max_steps=100000 \
  --set training.eval_every=0 --set output.dir="$tmp/killed" >"$tmp/killed.out" 2>&1 &
job=$!
for _ in $(seq 300); do
  [ "$(cat "$tmp/killed/log.jsonl" 2>/dev/null | wc -l)" -ge 3 ] && break
  sleep 0.1
done
# Rank 1 is the process under mpirun (a child, or a launcher daemon's child) whose environment says so.
descendants() { for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done; }
rank1=""
for pid in $(descendants "$job"); do
  tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && rank1=$pid
done
[ -n "$rank1" ] || { kill "$job"; fail "rank 1's process not found among mpirun's children"; }
kill -9 "$rank1"
killed_at=$(date +%s)
for _ in $(seq 600); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$job" 2>/dev/null; then kill "$job"; fail "the job still runs 60 s after rank 1 was killed"; fi
status=0
wait "$job" || status=$?
[ "$status" != 0 ] || fail "the job exited 0 after rank 1 was killed"
grep -q "rank 1 .*Killed" "$tmp/killed.out" || fail "no message names the killed rank: $(tail -5 "$tmp/killed.out")"
echo "killed rank 1: the job ended in $(( $(date +%s) - killed_at )) s with status $status"

# The dry run's memory plan: under ZeRO-1 each rank holds half of the optimizer state.
state_mib() { "${mpi[@]}" "$train_gpt" --device cpu --config "$tmp/tiny.json" --set precision.policy=mixed "$@" --dry-run |
  sed -n 's/.*optimizer state *\([0-9.]*\) MiB.*/\1/p'; }
full=$(state_mib --set training.zero=0)
sharded=$(state_mib --set training.zero=1)
python3 -c "import sys; assert float(sys.argv[2]) < float(sys.argv[1]), sys.argv[1:]" "$full" "$sharded" ||
  fail "dry run: $sharded MiB under ZeRO-1 vs $full MiB without"
# Only rank 0 prints.
[ "$("${mpi[@]}" "$train_gpt" --device cpu --config "$tmp/tiny.json" --dry-run | grep -c "memory plan")" = 1 ] ||
  fail "more than one rank printed the dry run"
echo "ok"
