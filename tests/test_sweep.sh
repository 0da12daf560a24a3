# scripts/sweep.py: the dry run lists exactly the grid; a small real sweep finishes, judges divergence
# (NaN, and loss above the first step's by the margin) and records its step; a rerun skips finished
# points; a point that keeps diverging is stopped while it runs; a changed config is refused.
# One thread: the runs are tiny, and a busy machine makes OpenMP's barriers slow.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source "$(dirname "$0")/e2e_common.sh"
python3 -c 'import matplotlib' 2>/dev/null || fail "matplotlib is not installed (pip install -r requirements.txt)"
prepare_test_data
write_tiny_config
# sweep.py runs train_gpt itself: through this wrapper, every run is on the CPU backend (--device cpu), also on a
# machine with a GPU.
cpu_train_gpt="$tmp/train_gpt_cpu"
printf '#!/bin/sh\nexec "%s" --device cpu "$@"\n' "$train_gpt" > "$cpu_train_gpt"
chmod +x "$cpu_train_gpt"
sweep() { python3 "$root/scripts/sweep.py" --train-gpt "$cpu_train_gpt" --base "$tmp/tiny.json" "$@"; }

# Dry run of a 2 x 2 x 2 grid: exactly its 8 points, one a line, and nothing written.
sweep --out "$tmp/dry" --policies fp32 mixed --seeds 1 2 --lrs 1e-3 2e-3 --dry-run > "$tmp/dry.txt" ||
  fail "dry run failed"
python3 - "$tmp/dry.txt" <<'PY' || fail "dry run does not list the grid"
import itertools, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 8, lines
names = [line.split()[0] for line in lines]
expected = [f"{p}_lr{lr}_seed{s}" for p, lr, s in itertools.product(["fp32", "mixed"], ["0.001", "0.002"], [1, 2])]
assert sorted(names) == sorted(expected), names
for line in lines:
    name, *fields = line.split()
    policy, lr, seed = name.split("_")
    assert fields == [f"policy={policy}", f"lr={lr[2:]}", f"seed={seed[4:]}"], line
PY
[ ! -e "$tmp/dry" ] || fail "the dry run wrote $tmp/dry"

# --help prints a literal "10%" (argparse leaves an epilog without %(prog) unformatted, so "%%" would show);
# a dry run piped into head ends quietly with status 0 (no BrokenPipeError traceback).
python3 "$root/scripts/sweep.py" --help > "$tmp/help.txt" || fail "sweep.py --help failed"
tr -s "\n " "  " < "$tmp/help.txt" | grep -q "last 10% of" || fail "--help: $(grep -n '%' "$tmp/help.txt")"
! grep -q "%%" "$tmp/help.txt" || fail "--help prints %%: $(grep -n '%%' "$tmp/help.txt")"
set +o pipefail
sweep --out "$tmp/dry" --policies fp32 mixed --seeds $(seq 1 5000) --dry-run 2> "$tmp/pipe_err.txt" | head -n 1 > "$tmp/head.txt"
status=${PIPESTATUS[0]}
set -o pipefail
[ "$status" = 0 ] || fail "dry run | head exited $status: $(cat "$tmp/pipe_err.txt")"
[ ! -s "$tmp/pipe_err.txt" ] || fail "dry run | head printed: $(head -5 "$tmp/pipe_err.txt")"
[ "$(wc -l < "$tmp/head.txt")" = 1 ] || fail "head did not get the first line"

# The bit-width preset: 8 matmul formats x its learning rates x its seeds, toward-zero rounding.
python3 "$root/scripts/sweep.py" --train-gpt "$cpu_train_gpt" --base "$root/configs/sweeps/bitwidth_base.json" \
  --grid "$root/configs/sweeps/bitwidth.json" --out "$tmp/bitwidth" --dry-run > "$tmp/bitwidth.txt" ||
  fail "bit-width dry run failed"
python3 - "$tmp/bitwidth.txt" "$root/configs/sweeps/bitwidth.json" <<'PY' || fail "bit-width grid"
import json, sys
grid = json.load(open(sys.argv[2]))
lines = open(sys.argv[1]).read().splitlines()
formats = ["e8m7", "e8m6", "e8m5", "e8m4", "e8m3", "e7m7", "e6m7", "e5m7"]
assert grid["matmuls"] == formats and grid["matmul_rounding"] == "bf16_truncate", grid
assert len(lines) == len(formats) * len(grid["lrs"]) * len(grid["seeds"]), len(lines)
assert all(f"matmul={f}" in " ".join(lines) for f in formats)
PY

# A real sweep of 3 points, 10 steps: lr 1e-3 learns; lr 1e6 without clipping makes the loss non-finite
# (train_gpt stops); lr 10 keeps the loss far above its start (judged after the run: 10 steps are fewer
# than the live window of 20).
run_small() {
  sweep --out "$tmp/sweep" --policies fp32 --seeds 1 --lrs 1e-3 1e6 10 --steps 10 \
    --set training.grad_clip=0 --set training.eval_every=5 "$@"
}
run_small > "$tmp/first.txt" || { cat "$tmp/first.txt"; fail "sweep failed"; }
grep -q "ETA" "$tmp/first.txt" || fail "no progress/ETA lines: $(cat "$tmp/first.txt")"
points="$tmp/sweep/points"
grep -q "not finite" "$points/fp32_lr1e06_seed1/stderr.txt" || fail "lr 1e6 did not make the loss non-finite"
for f in results.csv results.md heatmap_fp32.png; do [ -s "$tmp/sweep/$f" ] || fail "missing $f"; done
python3 - "$tmp/sweep" <<'PY' || fail "results"
import csv, json, os, sys
out = sys.argv[1]
rows = {r["name"]: r for r in csv.DictReader(open(os.path.join(out, "results.csv")))}
assert sorted(rows) == ["fp32_lr0.001_seed1", "fp32_lr10_seed1", "fp32_lr1e06_seed1"], sorted(rows)

def log(name):
    return [json.loads(l) for l in open(os.path.join(out, "points", name, "log.jsonl"))]

def step_records(name):  # without the step-0 evaluation (training.eval_at_start), which has no loss
    return [r for r in log(name) if "loss" in r]

good = rows["fp32_lr0.001_seed1"]
assert good["status"] == "finished" and good["diverged"] == "False", good
val = [r["val_loss"] for r in log("fp32_lr0.001_seed1") if "val_loss" in r][-1]
assert abs(float(good["final_val_loss"]) - val) < 1e-6, (good, val)

nan = rows["fp32_lr1e06_seed1"]
assert nan["status"] == "diverged" and nan["diverged"] == "True", nan
# train_gpt logs the non-finite step (its loss or norm as null) and stops there, with a summary that says so.
nan_log = step_records("fp32_lr1e06_seed1")
assert int(nan["diverged_step"]) == len(nan_log) <= 10, nan
assert nan_log[-1]["loss"] is None or nan_log[-1]["grad_norm"] is None, nan_log[-1]
summary = json.load(open(os.path.join(out, "points", "fp32_lr1e06_seed1", "summary.json")))
assert summary["diverged"] is True and summary["diverged_step"] == len(nan_log), summary

high = rows["fp32_lr10_seed1"]
losses = [r["loss"] for r in step_records("fp32_lr10_seed1")]
assert losses[-1] > losses[0] + 0.5, losses
assert high["status"] == "diverged" and high["diverged"] == "True" and "last 10%" in high["reason"], high
step = int(high["diverged_step"])
assert all(l > losses[0] + 0.5 for l in losses[step - 1:]) and losses[step - 2] <= losses[0] + 0.5, (step, losses)

with open(os.path.join(out, "heatmap_fp32.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
md = open(os.path.join(out, "results.md")).read()
assert "| fp32_lr1e06_seed1 | fp32 | — | 1e+06 | 1 | div | yes |" in md, md
PY

# A rerun skips every point: nothing is run again, nothing rewritten.
stamp() { stat -c %Y.%s "$points"/*/log.jsonl "$points"/*/result.json; }
before=$(stamp)
cp "$tmp/sweep/results.csv" "$tmp/results_before.csv"
sleep 1
run_small > "$tmp/second.txt" || fail "rerun failed"
[ "$(grep -c ": skip" "$tmp/second.txt")" = 3 ] || fail "rerun did not skip the 3 points: $(cat "$tmp/second.txt")"
grep -q "running" "$tmp/second.txt" && fail "rerun ran a point again"
[ "$before" = "$(stamp)" ] || fail "rerun rewrote a point's files"
cmp -s "$tmp/results_before.csv" "$tmp/sweep/results.csv" || fail "the rerun's results.csv differs"

# The same points with another step count: refused before anything runs.
if run_small --steps 12 > "$tmp/changed.txt" 2>&1; then fail "a changed config was not refused"; fi
grep -q "training.max_steps" "$tmp/changed.txt" || fail "unhelpful message: $(cat "$tmp/changed.txt")"

# --stall-above: the same finished points judged again; the one that learnt (lr 1e-3, final val loss ≈ 3.4)
# is stalled against a bar of 1.0 nats and finished against 10; the diverged ones stay diverged.
for bar in 1.0 10; do
  run_small --stall-above "$bar" > "$tmp/stall.txt" || fail "stall rerun failed: $(cat "$tmp/stall.txt")"
  python3 - "$tmp/sweep/results.csv" "$bar" <<'PY' || fail "stall_above $bar"
import csv, sys
rows = {r["name"]: r for r in csv.DictReader(open(sys.argv[1]))}
good, bar = rows["fp32_lr0.001_seed1"], float(sys.argv[2])
expected = "stalled" if float(good["final_val_loss"]) > bar else "finished"
assert good["status"] == expected and good["diverged"] == "False", (bar, good)
assert rows["fp32_lr1e06_seed1"]["status"] == "diverged", rows["fp32_lr1e06_seed1"]
PY
done

# --matmul-sites: a point's format goes to every product named (the block linears, attention, LM head).
sweep --out "$tmp/sites" --policies mixed --seeds 1 --lrs 1e-3 --steps 2 --matmuls e8m6 --matmul-rounding bf16_truncate \
  --matmul-sites matmul attention lm_head --set training.eval_every=0 > "$tmp/sites.txt" ||
  fail "sites sweep failed: $(cat "$tmp/sites.txt")"
python3 - "$tmp/sites/points"/*/config.json <<'PY' || fail "matmul sites"
import json, sys
precision = json.load(open(sys.argv[1]))["precision"]
assert [precision[k] for k in ("matmul", "attention", "lm_head")] == ["e8m6"] * 3, precision
PY
if sweep --out "$tmp/sites2" --policies mixed --matmuls e8m6 --matmul-sites matmul lm_head \
  --set precision.lm_head=bf16 --dry-run > "$tmp/sites2.txt" 2>&1; then fail "a swept lm_head was also --set"; fi
grep -q "precision.lm_head is both set" "$tmp/sites2.txt" || fail "unhelpful: $(cat "$tmp/sites2.txt")"

# Stopped while running: lr 10 for 1000 steps, stopped once 5 losses in a row exceed the first + 0.5.
sweep --out "$tmp/live" --policies fp32 --seeds 1 --lrs 10 --steps 1000 --divergence-window 5 \
  --poll-seconds 0.1 --set training.grad_clip=0 --set training.eval_every=0 > "$tmp/live.txt" ||
  fail "live sweep failed: $(cat "$tmp/live.txt")"
python3 - "$tmp/live" <<'PY' || fail "live stop"
import csv, json, os, sys
out = sys.argv[1]
row = next(csv.DictReader(open(os.path.join(out, "results.csv"))))
point = os.path.join(out, "points", row["name"])
log = [json.loads(l) for l in open(os.path.join(point, "log.jsonl"))]
assert row["status"] == "diverged" and "stopped" in row["reason"], row
assert 5 <= len(log) < 1000, len(log)
# SIGTERM: train_gpt finished its step, saved and wrote a summary that says it was interrupted.
summary = json.load(open(os.path.join(point, "summary.json")))
assert summary["interrupted"] is True and summary["steps"] == len(log), summary
first = log[0]["loss"]
step = int(row["diverged_step"])
assert all(r["loss"] > first + 0.5 for r in log[step - 1:step + 4]), (step, [r["loss"] for r in log])
print(f"stopped after {len(log)} of 1000 steps; diverged at step {step}")
PY

# --mpirun N runs each point as `mpirun -np N train_gpt --config ...` (a stand-in mpirun records that).
mkdir "$tmp/bin"
cat > "$tmp/bin/mpirun" <<'SH'
#!/usr/bin/env bash
echo "$@" > "$(dirname "$0")/mpirun_args.txt"
shift 2
exec "$@"
SH
chmod +x "$tmp/bin/mpirun"
PATH="$tmp/bin:$PATH" sweep --out "$tmp/mpi" --policies fp32 --seeds 1 --lrs 1e-3 --steps 5 --mpirun 2 \
  > "$tmp/mpi.txt" || fail "sweep --mpirun failed: $(cat "$tmp/mpi.txt")"
[ "$(cat "$tmp/bin/mpirun_args.txt")" = "-np 2 $cpu_train_gpt --config $tmp/mpi/points/fp32_lr0.001_seed1/config.json" ] ||
  fail "mpirun got: $(cat "$tmp/bin/mpirun_args.txt")"
[ -s "$tmp/mpi/points/fp32_lr0.001_seed1/summary.json" ] || fail "the point run under mpirun did not finish"
echo "ok"
