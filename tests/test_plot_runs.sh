# scripts/plot_runs.py on real runs: the figures are PNG files, and the summary table's numbers are the
# logs' (computed here independently); a run that died is tabulated as diverged at the step after its log.
# One thread: the runs are tiny, and a busy machine makes OpenMP's barriers slow.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source "$(dirname "$0")/e2e_common.sh"
python3 -c 'import matplotlib' 2>/dev/null || fail "matplotlib is not installed (pip install -r requirements.txt)"
prepare_test_data
write_tiny_config

# Two fp32 runs (seeds 42 and 43) and a mixed one, with update-quality metrics every 5 steps.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set metrics.every=5 --set output.dir="$tmp/fp32_a" >/dev/null
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set metrics.every=5 --set training.seed=43 \
  --set output.dir="$tmp/fp32_b" >/dev/null
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set metrics.every=5 --set precision.policy=mixed \
  --set output.dir="$tmp/mixed" >/dev/null
# A run that died after step 12: its log stops there and it has no summary.json.
cp -r "$tmp/fp32_a" "$tmp/died"
sed '/"step": 13,/,$d' "$tmp/fp32_a/log.jsonl" > "$tmp/died/log.jsonl"
rm "$tmp/died/summary.json"
# A log with a NaN loss at step 8 (JSON has no NaN, but Python's reader takes the token).
cp -r "$tmp/fp32_a" "$tmp/nan"
sed -i '/"step": 8,/s/"loss": [^,]*/"loss": NaN/' "$tmp/nan/log.jsonl"
grep -q '"step": 8, "loss": NaN' "$tmp/nan/log.jsonl" || fail "could not write the NaN log"

python3 "$root/scripts/plot_runs.py" "$tmp/fp32_a" "$tmp/fp32_b" "$tmp/mixed" "$tmp/died" "$tmp/nan" \
  --out "$tmp/plots" --smooth 3 --log-x > "$tmp/stdout.txt" || fail "plot_runs.py failed"

python3 - "$tmp" <<'PY' || fail "figures or table"
import json, os, sys
tmp = sys.argv[1]
plots = os.path.join(tmp, "plots")

def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"

logs = {name: [json.loads(l) for l in open(os.path.join(tmp, name, "log.jsonl"))]
        for name in ["fp32_a", "fp32_b", "mixed", "died", "nan"]}
expected = ["loss.png", "val_loss.png", "lr.png"]
if any("edq_rel" in r or "lost_frac" in r for log in logs.values() for r in log):
    expected.append("update_quality.png")
for name in expected:
    path = os.path.join(plots, name)
    assert os.path.getsize(path) > 1000 and is_png(path), f"{name} is not a PNG"

# The table, as written and as printed.
text = open(os.path.join(plots, "summary.md")).read()
assert text in open(os.path.join(tmp, "stdout.txt")).read(), "summary.md is not what was printed"
lines = [l for l in text.splitlines() if l.startswith("|")]
header = [c.strip() for c in lines[0].strip("|").split("|")]
rows = {}
for line in lines[2:]:
    cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
    rows[cells["run"]] = cells
assert sorted(rows) == sorted(logs), sorted(rows)
labels = {name: rows[name]["policy"] for name in rows}
assert labels["mixed"] == "mixed", labels
assert labels["fp32_a"] == "fp32 [fp32_a]" and labels["fp32_b"] == "fp32 [fp32_b]", labels

for name, log in logs.items():
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    final, best = float(rows[name]["final val loss"]), float(rows[name]["best val loss"])
    assert abs(final - vals[-1]) < 6e-5, (name, final, vals)
    assert abs(best - min(vals)) < 6e-5, (name, best, vals)
for name in ["fp32_a", "fp32_b", "mixed"]:
    assert rows[name]["diverged"] == "no", rows[name]
    summary = json.load(open(os.path.join(tmp, name, "summary.json")))
    assert rows[name]["bytes/param"] == str(summary["bytes_per_param"]), rows[name]
    assert rows[name]["peak memory"].endswith("MiB"), rows[name]
    # Update quality over the last 20% of the steps (the metric steps among them), from the log.
    log = logs[name]
    last = log[-1]["step"]
    for key in ["edq_rel", "edq_rel_state", "lost_frac", "lost_frac_state"]:
        column = f"{key} (last 20%)"
        late = [r[key] for r in log if key in r and r["step"] > 0.8 * last]
        assert late and abs(float(rows[name][column]) - sum(late) / len(late)) < 6e-5, (name, column, late)
assert rows["died"]["diverged"] == "yes (step 13)", rows["died"]
assert rows["died"]["bytes/param"] == "—", rows["died"]
assert rows["nan"]["diverged"] == "yes (step 8)", rows["nan"]
print("table ok:", ", ".join(f"{n} {rows[n]['final val loss']}" for n in sorted(rows)))
PY

# Errors: a directory that is not a run.
mkdir "$tmp/empty"
if python3 "$root/scripts/plot_runs.py" "$tmp/empty" --out "$tmp/plots2" 2> "$tmp/err.txt"; then
  fail "plot_runs.py accepted a directory without a log"
fi
grep -q "no log.jsonl" "$tmp/err.txt" || fail "unhelpful error: $(cat "$tmp/err.txt")"

# --baseline, --group-by, line styles and a step-0 validation loss, on made-up logs whose numbers are
# worked out by hand below.
python3 - "$tmp/made" <<'PY' || fail "could not write the made-up runs"
import json, os, sys
out = sys.argv[1]
def run(name, policy, lr, seed, records):
    os.makedirs(f"{out}/{name}")
    config = {"training": {"batch_size": 2, "seq_len": 5, "lr": lr, "seed": seed}, "precision": {"policy": policy}}
    json.dump(config, open(f"{out}/{name}/config.json", "w"))
    with open(f"{out}/{name}/log.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    json.dump({"policy": policy, "steps": records[-1]["step"], "tokens": 10 * records[-1]["step"],
               "final_val_loss": None, "best_val_loss": None}, open(f"{out}/{name}/summary.json", "w"))
# The baseline: losses 5, 4, 3, 2.5, 2, 1.8 at steps 1..6, and a step-0 evaluation (val 5.5).
base = [5.0, 4.0, 3.0, 2.5, 2.0, 1.8]
run("base", "fp32", 1e-3, 1, [{"step": 0, "val_loss": 5.5}] +
    [{"step": s, "loss": l, "lr": 1e-3} for s, l in enumerate(base, 1)])
# Run "a": the baseline plus 0.1, 0.2, (step 3 missing), 0.1, 0.0, -0.1.
run("a", "bf16", 1e-3, 1, [{"step": s, "loss": base[s - 1] + d, "lr": 1e-3}
                            for s, d in [(1, 0.1), (2, 0.2), (4, 0.1), (5, 0.0), (6, -0.1)]])
# Three seeds of bf16 at lr 2e-3: losses at step 1 are 3, 4, 5 and at step 2 all 2; seed 3 also logs
# step 3 (not common to the group) and val losses 1, 2, 3 at step 0.
for seed, first in [(1, 3.0), (2, 4.0), (3, 5.0)]:
    records = [{"step": 0, "val_loss": float(seed)}, {"step": 1, "loss": first, "lr": 2e-3},
               {"step": 2, "loss": 2.0, "lr": 2e-3}]
    if seed == 3:
        records.append({"step": 3, "loss": 1.0, "lr": 2e-3})
    run(f"seed{seed}", "bf16", 2e-3, seed, records)
PY
m="$tmp/made"
python3 "$root/scripts/plot_runs.py" "$m/base" "$m/a" --baseline "$m/base" --smooth 2 --out "$tmp/p1" >"$tmp/p1.txt" \
  || fail "plot_runs.py --baseline failed"
python3 "$root/scripts/plot_runs.py" "$m/seed1" "$m/seed2" "$m/seed3" "$m/base" --group-by lr --out "$tmp/p2" \
  >/dev/null || fail "plot_runs.py --group-by lr failed"
python3 "$root/scripts/plot_runs.py" "$m/seed1" "$m/seed2" "$m/seed3" "$m/a" --group-by training.seed --log-x \
  --baseline "$m/base" --out "$tmp/p3" >/dev/null || fail "plot_runs.py --group-by training.seed --baseline failed"
python3 - "$tmp" "$root" <<'PY' || fail "baseline, groups or styles"
import csv, os, sys
tmp, root = sys.argv[1], sys.argv[2]
def rows(path):
    return list(csv.DictReader(open(path)))
def close(a, b):
    return abs(float(a) - b) < 1e-12

# --baseline: a's differences at the common steps 1, 2, 4, 5, 6 and their 2-step trailing means.
diff = [r for r in rows(f"{tmp}/p1/loss_diff.csv") if r["run"] != "fp32"]
assert [int(r["step"]) for r in diff] == [1, 2, 4, 5, 6], diff
for r, d, m in zip(diff, [0.1, 0.2, 0.1, 0.0, -0.1], [0.1, 0.15, 0.15, 0.05, -0.05]):
    assert close(r["diff"], d) and close(r["smoothed"], m), (r, d, m)
assert not [r for r in rows(f"{tmp}/p1/loss_diff.csv") if r["run"] == "fp32"], "the baseline minus itself"
# The table's column: the mean difference over the last 20% of the common steps (step > 4.8: 0.0 and -0.1).
table = open(f"{tmp}/p1/summary.md").read().splitlines()
header = [c.strip() for c in table[0].strip("|").split("|")]
cells = {r[0]: dict(zip(header, r)) for r in ([c.strip() for c in l.strip("|").split("|")] for l in table[2:])}
assert cells["a"]["loss − baseline (last 20%)"] == "-0.0500", cells["a"]
assert os.path.getsize(f"{tmp}/p1/loss_diff.png") > 1000

# --group-by lr: the 2e-3 group's loss is mean 4, std 1 (sample: sqrt((1 + 0 + 1) / 2)) at step 1 and
# mean 2, std 0 at step 2; step 3 is not common to the group; its step-0 val losses 1, 2, 3: mean 2, std 1.
g = rows(f"{tmp}/p2/groups.csv")
two = [r for r in g if r["group"] == "lr=0.002 (3 runs)"]
loss = [(int(r["step"]), float(r["mean"]), float(r["std"])) for r in two if r["key"] == "loss"]
assert loss == [(1, 4.0, 1.0), (2, 2.0, 0.0)], loss
val = [(int(r["step"]), float(r["mean"]), float(r["std"])) for r in two if r["key"] == "val_loss"]
assert val == [(0, 2.0, 1.0)], val
one = [r for r in g if r["group"] == "lr=0.001 (1 run)" and r["key"] == "loss"]
assert [float(r["mean"]) for r in one] == [5.0, 4.0, 3.0, 2.5, 2.0, 1.8] and all(float(r["std"]) == 0 for r in one)
assert all(r["runs"] == "3" for r in two)

# --group-by training.seed with --baseline: seed 1 holds seed1 and a; the group means minus the baseline.
d3 = rows(f"{tmp}/p3/loss_diff.csv")
seed1 = [(int(r["step"]), float(r["diff"])) for r in d3 if r["run"] == "training.seed=1 (2 runs)"]
# step 1: mean(3, 5.1) - 5 = -0.95; step 2: mean(2, 4.2) - 4 = -0.9 (a lacks step 3, so only steps 1, 2).
assert [s for s, _ in seed1] == [1, 2] and abs(seed1[0][1] + 0.95) < 1e-12 and abs(seed1[1][1] + 0.9) < 1e-12, seed1
for name in ("loss.png", "val_loss.png", "loss_diff.png"):
    assert os.path.getsize(f"{tmp}/p3/{name}") > 1000, name

# Line styles: 40 curves, all (colour, dash) pairs distinct; the first ten solid in ten colours.
sys.path.insert(0, f"{root}/scripts")
import plot_runs
styles = [(s["color"], s["linestyle"]) for s in map(plot_runs.line_style, range(40))]
assert len(set(styles)) == 40 and len({c for c, _ in styles[:10]}) == 10 and {d for _, d in styles[:10]} == {"-"}
# The step-0 evaluation is drawn at 0 tokens, or at half a step (5 of 10 tokens) on a log axis.
base = plot_runs.load_run(f"{tmp}/made/base")
steps, values = plot_runs.series(base, "val_loss")
assert (steps, values) == ([0], [5.5]), (steps, values)
assert plot_runs.tokens_axis(base, [0, 1, 3], False) == [0, 10, 30]
assert plot_runs.tokens_axis(base, [0, 1, 3], True) == [5.0, 10, 30]
print("baseline, groups, styles and step 0 ok")
PY
# A group-by key that a run's config lacks: one clear line.
if python3 "$root/scripts/plot_runs.py" "$m/a" --group-by training.nonexistent --out "$tmp/p4" 2>"$tmp/err.txt"; then
  fail "plot_runs.py accepted a missing group-by key"
fi
grep -q "no training.nonexistent" "$tmp/err.txt" || fail "unhelpful error: $(cat "$tmp/err.txt")"
echo "ok"
