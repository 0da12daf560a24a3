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
    for key, column in [("edq_rel", "edq_rel (last 20%)"), ("lost_frac", "lost_frac (last 20%)")]:
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
echo "ok"
