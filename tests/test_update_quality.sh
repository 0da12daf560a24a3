# Every precision policy end to end through train_gpt: each preset learns; at a learning rate too small for
# bf16 weights, the update-quality metrics of the read weight and of the stored value show which policies
# lose the updates, which keep them in their extra state, and which take them in expectation; resumes of compensated, stochastic and DQT runs are bit-identical.
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config

# Every preset: 30 steps of the tiny config end lower (mean of the last 5 steps) than they start. The
# slowest, dqt_ternary, drops by about 0.8; the others by about 1.4.
presets="fp32 mixed mixed_nomaster bf16 collage_light collage_plus kahan sr fp8_sim dqt_int8 dqt_ternary"
for p in $presets; do
  "$train_gpt" --device cpu --config "$tmp/tiny.json" --set precision.policy=$p --set training.max_steps=30 \
    --set output.dir="$tmp/learn_$p" >/dev/null || fail "$p: train_gpt failed"
  python3 - "$tmp/learn_$p/log.jsonl" <<'PY' || fail "$p does not learn"
import json, sys
loss = [r["loss"] for r in map(json.loads, open(sys.argv[1])) if "loss" in r]  # not the step-0 evaluation
assert len(loss) == 30, len(loss)
last = sum(loss[-5:]) / 5
assert last < loss[0] - 0.5, f"loss {loss[0]:.4f} -> {last:.4f}"
PY
done

# Update quality at lr 1e-6, constant, metrics at each of 5 steps: Adam's steps (at most lr per element) are
# far below half a bf16 ulp of most weights (|w| ~ 0.02: 3e-5 to 6e-5; LayerNorm gains of 1: 2e-3), and
# above half an fp32 ulp of every weight (1 at most: 6e-8). The read weight (what forward reads) and the
# stored value (update_metrics.h) tell the policies apart:
# - fp32: one value, both exact up to fp32 rounding (measured edq_rel 0.99996..1.00000, lost_frac 3e-4).
# - bf16: one value, most updates lost (measured edq_rel 0.04, lost_frac 0.97).
# - kahan, collage_light, collage_plus: c and lo start at 0 (Collage's released code: zeros_like of the bf16
#   parameter), the weight on the bf16 grid: the read weight moves only where an accumulated compensation
#   crosses half an ulp (measured edq_rel 0.05 rising to 0.24 by step 5, 0.135 on average), while θ − c or
#   hi + lo keeps the update (edq_rel_state within 4e-4 of 1 at every step): the paper's point, visible only
#   when the read weight is measured.
# - mixed: the fp32 master sits anywhere inside the bf16 read weight's rounding interval, so the read weight
#   jumps a whole ulp with probability |Δ|/ulp: about 95% of its updates are lost (lost_frac 0.947), yet it
#   takes Δ in expectation (edq_rel 0.96..1.04 per step, 1.01 on average, like SR's); the master keeps the
#   update up to fp32 rounding.
# - sr: one value, Δ in expectation, most single elements do not move (edq_rel 0.99, lost_frac 0.947).
policies="fp32 bf16 mixed collage_light collage_plus kahan sr"
for p in $policies; do
  "$train_gpt" --device cpu --config "$tmp/tiny.json" --set precision.policy=$p --set training.max_steps=5 \
    --set training.lr=1e-6 --set training.min_lr=1e-6 --set training.schedule=constant \
    --set training.warmup_steps=0 --set training.eval_every=0 --set metrics.every=1 \
    --set output.dir="$tmp/quality_$p" >/dev/null || fail "$p: train_gpt failed"
done
python3 - "$tmp" $policies <<'PY' || fail "update quality"
import json, math, sys
quantities = ("edq", "edq_rel", "edq_rel_state", "lost_frac", "lost_frac_state")
groups = ["embeddings", "block0", "block1", "head"]
def metric_rows(policy):
    log = [json.loads(l) for l in open(f"{sys.argv[1]}/quality_{policy}/log.jsonl")]
    rows = [l for l in log if "edq" in l]
    assert [r["step"] for r in rows] == list(range(1, 6)), "metrics at every step"
    compensated = policy in ("collage_light", "collage_plus", "kahan")
    for r in rows:
        assert list(r["groups"]) == groups, list(r["groups"])
        for fields in [r] + list(r["groups"].values()):
            assert ("comp_norm" in fields and "comp_proj" in fields) == compensated, (policy, fields)
            assert "flip_rate" not in fields, fields
            assert all(isinstance(fields[k], (int, float)) and math.isfinite(fields[k]) for k in quantities), fields
    return rows
def mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)
for policy in sys.argv[2:]:
    rows = metric_rows(policy)
    read, state = mean(rows, "edq_rel"), mean(rows, "edq_rel_state")
    lost, lost_state = mean(rows, "lost_frac"), mean(rows, "lost_frac_state")
    print(f"{policy:14s} edq_rel {read:.6f}  edq_rel_state {state:.6f}  lost_frac {lost:.4f}  "
          f"lost_frac_state {lost_state:.4f}")
    if policy in ("fp32", "bf16", "sr"):  # no state beyond the read weight: the two measures are the same numbers
        assert all(r["edq_rel"] == r["edq_rel_state"] and r["lost_frac"] == r["lost_frac_state"] for r in rows), policy
    if policy == "fp32":
        assert all(abs(r["edq_rel"] - 1) < 1e-3 for r in rows) and lost < 0.01, (policy, read, lost)
    elif policy == "bf16":
        assert read < 0.1 and lost > 0.9, (policy, read, lost)
    elif policy in ("kahan", "collage_light", "collage_plus"):
        assert read < 0.5 and lost > 0.9, (policy, read, lost)
        assert all(abs(r["edq_rel_state"] - 1) < 0.002 for r in rows) and lost_state < 0.01, (policy, state, lost_state)
    else:  # mixed, sr: the read weight takes Δ in expectation, rarely
        assert abs(read - 1) < 0.1 and lost > 0.9, (policy, read, lost)
    if policy == "mixed":
        assert all(abs(r["edq_rel_state"] - 1) < 1e-3 for r in rows) and lost_state < 0.01, (policy, state, lost_state)
PY

# Resume: 20 steps straight, or 10 + resume + 10, give the same losses, metrics, checkpoint and weights,
# for a compensated (collage_plus), a stochastic (sr) and a DQT (dqt_ternary) policy.
for p in collage_plus sr dqt_ternary; do
  "$train_gpt" --device cpu --config "$tmp/tiny.json" --set precision.policy=$p --set training.checkpoint_every=10 \
    --set metrics.every=5 --set output.dir="$tmp/straight_$p" >/dev/null || fail "$p: train_gpt failed"
  cp -r "$tmp/straight_$p" "$tmp/resumed_$p"
  rm "$tmp/resumed_$p/checkpoints/step_00000020.ckpt" "$tmp/resumed_$p/model.bin" "$tmp/resumed_$p/summary.json"
  "$train_gpt" --device cpu --resume "$tmp/resumed_$p" >/dev/null || fail "$p: resume failed"
  python3 - "$tmp/straight_$p/log.jsonl" "$tmp/resumed_$p/log.jsonl" <<'PY' || fail "$p: resumed log differs"
import json, sys
def fields(path):  # everything but the timings
    return [{k: v for k, v in json.loads(l).items() if k not in ("tokens_per_s", "ms", "time_s")} for l in open(path)]
a, b = fields(sys.argv[1]), fields(sys.argv[2])
assert len(a) == len(b) == 21 and a == b  # the step-0 evaluation and 20 steps
assert "dqt" not in sys.argv[1] or "flip_rate" in a[20], "DQT metrics carry flip_rate"
PY
  cmp -s "$tmp/straight_$p/checkpoints/step_00000020.ckpt" "$tmp/resumed_$p/checkpoints/step_00000020.ckpt" ||
    fail "$p: resumed final checkpoint differs"
  cmp -s "$tmp/straight_$p/model.bin" "$tmp/resumed_$p/model.bin" || fail "$p: resumed final weights differ"
done
echo "ok"
