#!/usr/bin/env bash
# scripts/reference.py, the float64 NumPy reference, against train_gpt's fp32 CPU training:
#   1. the reference's own gradients against central finite differences (float64), so that the reference is
#      checked by something other than the code it is compared with;
#   2. a tiny model written here with NumPy (not by train_gpt), trained 20 steps by train_gpt --device cpu
#      under the fp32 policy from model.init_from, and by the reference from the same file and data: every
#      step's loss, grad_norm and lr, and the exported model.bin's weights after the 20 steps.
# The run exercises warmup, the cosine schedule, weight decay, gradient clipping (clip 0.5 against norms
# around 0.6-0.8), gradient accumulation (tokens_per_step = 2 micro-batches) and the data wrap-around
# (3000 tokens, 256 per step).
# The train data is one shard read front to back (data.shuffle=0), as the reference reads it.
source "$(dirname "$0")/e2e_common.sh"
python3 -c 'import numpy' 2>/dev/null || fail "numpy is not installed (pip install -r requirements.txt)"
cd "$root"

# 1. Finite differences: every tensor, a few elements each, of a 2-layer model with random weights.
python3 - <<'PY' || fail "reference.py's gradients disagree with finite differences"
import sys
sys.path.insert(0, "scripts")
import numpy as np
import llmc_io, reference

rng = np.random.default_rng(0)
shape = dict(max_seq_len=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, padded_vocab_size=16)
params = {name: rng.normal(0, 0.3, s) for name, s in llmc_io.param_shapes(shape).items()}
inputs, targets = rng.integers(0, 11, (2, 5)), rng.integers(0, 11, (2, 5))
_, loss, cache = reference.forward(params, shape, inputs, targets)
grads = reference.backward(params, shape, cache)
# Rows 11..15 of wte are padding: no input uses them and their logits are outside the softmax.
assert not grads["wte"][11:].any() and not grads["wpe"][5:].any()
worst = 0.0
for name in llmc_io.PARAM_NAMES:
    p = params[name]
    for _ in range(6):
        index = tuple(int(rng.integers(0, d)) for d in p.shape)
        if name == "wte" and index[0] >= 11:
            continue
        old, h = p[index], 1e-5
        p[index] = old + h
        plus = reference.forward(params, shape, inputs, targets)[1]
        p[index] = old - h
        minus = reference.forward(params, shape, inputs, targets)[1]
        p[index] = old
        numeric, analytic = (plus - minus) / (2 * h), grads[name][index]
        # Central differences in float64 with h = 1e-5: truncation ~h^2 and cancellation ~1e-16/h, both
        # near 1e-10; 1e-8 absolute plus 1e-6 relative is far above them and far below any real error.
        error = abs(numeric - analytic)
        assert error <= 1e-8 + 1e-6 * abs(numeric), (name, index, numeric, analytic)
        worst = max(worst, error)
print(f"finite differences: ok (worst absolute error {worst:.2e})")
PY

# 2. A tiny model from NumPy: 2 layers, 4 heads, 32 channels, context 32, vocab 257 padded to 384 (the
# padding rows zero, as llm.c writes them), layernorm weights near 1 and small random biases.
python3 - "$tmp/init.bin" <<'PY' || fail "could not write the initial model"
import sys
sys.path.insert(0, "scripts")
import numpy as np
import llmc_io

rng = np.random.default_rng(1)
shape = dict(max_seq_len=32, vocab_size=257, n_layer=2, n_head=4, n_embd=32, padded_vocab_size=384)
params = {}
for name, s in llmc_io.param_shapes(shape).items():
    params[name] = 1 + rng.normal(0, 0.1, s) if name in ("ln1w", "ln2w", "lnfw") else rng.normal(0, 0.02, s)
params["wte"][257:] = 0
llmc_io.write_model(sys.argv[1], shape, params)
PY
python3 scripts/synthetic_shard.py --out "$tmp/data" --vocab 257 --tokens 3000 --val-tokens 600 --seed 3 >/dev/null

"$train_gpt" --device cpu --config tiny_cpu.json --set model.init_from="$tmp/init.bin" \
  --set data.train="$tmp/data/train_000000.bin" --set data.val= --set data.tokenizer= \
  --set training.batch_size=4 --set training.seq_len=32 --set training.tokens_per_step=256 \
  --set training.max_steps=20 --set training.warmup_steps=5 --set training.schedule=cosine \
  --set training.lr=1e-3 --set training.min_lr=1e-4 --set training.weight_decay=0.1 --set training.grad_clip=0.5 \
  --set training.eval_every=0 --set training.sample_every=0 --set training.checkpoint_every=0 --set data.shuffle=0 \
  --set precision.policy=fp32 --set output.export=fp32 --set output.dir="$tmp/run" >"$tmp/train.txt" 2>&1 \
  || fail "train_gpt failed: $(tail -3 "$tmp/train.txt")"
python3 scripts/reference.py "$tmp/run/config.json" --log "$tmp/reference.jsonl" --out-model "$tmp/reference.bin" \
  >/dev/null || fail "reference.py failed"

python3 - "$tmp" <<'PY' || fail "train_gpt and reference.py disagree"
import json, sys
sys.path.insert(0, "scripts")
import numpy as np
import llmc_io

tmp = sys.argv[1]
ours = [json.loads(line) for line in open(f"{tmp}/run/log.jsonl")]
ref = [json.loads(line) for line in open(f"{tmp}/reference.jsonl")]
ours = [r for r in ours if "loss" in r]  # (a step-0 evaluation record, were there one, has no loss)
assert [r["step"] for r in ours] == [r["step"] for r in ref] == list(range(1, 21)), "steps differ"
# fp32 against float64: each op rounds to ~6e-8 relative, and after 20 steps the losses agree to ~1e-7
# relative when both sides are right (measured: at most 5e-8 here). 1e-5 leaves two orders of magnitude of
# margin while catching any real difference in the model or optimizer (a wrong GELU, layernorm eps,
# schedule step or missing bias correction moves the loss by 1e-4 or more within a few steps).
clipped = 0
for a, b in zip(ours, ref):
    for key in ("loss", "grad_norm", "lr"):
        assert abs(a[key] - b[key]) <= 1e-5 * abs(b[key]), (a["step"], key, a[key], b[key])
    clipped += b["grad_norm"] > 0.5
assert clipped >= 10, f"clipping was active in only {clipped} steps: the test does not exercise it"
assert ref[-1]["loss"] != ref[0]["loss"]

# The weights after 20 steps. Per tensor, the largest difference must be below 1e-3 of the largest
# movement from the initial weights (the optimizer's effect), plus 4 ulps of the largest weight (the fp32
# rounding of weights near 1). Measured: below 1e-4 of the movement. A missing decay, a decay on the 1-D
# parameters or a wrong lr changes the movement by a percent or more.
# The key biases (the middle third of qkvb) are left out: their exact gradient is zero (adding a constant
# to every score of a query does not change its softmax), so both programs move them by Adam-normalised
# rounding noise, which has no reference value. The query and value biases are compared.
_, init = llmc_io.read_model(f"{tmp}/init.bin")
_, trained = llmc_io.read_model(f"{tmp}/run/model.bin")
_, expected = llmc_io.read_model(f"{tmp}/reference.bin")
C = 32
for name in llmc_io.PARAM_NAMES:
    a, b, i = (x[name].astype(np.float64) for x in (trained, expected, init))
    if name == "qkvb":
        keep = np.r_[0:C, 2 * C:3 * C]
        a, b, i = a[:, keep], b[:, keep], i[:, keep]
    movement = np.abs(b - i).max()
    tolerance = 1e-3 * movement + 4 * np.spacing(np.float32(np.abs(b).max()))
    assert movement > 0 or name == "wte", name
    difference = np.abs(a - b).max()
    assert difference <= tolerance, (name, difference, tolerance, movement)
assert not trained["wte"][257:].any() and not expected["wte"][257:].any(), "padding rows of wte changed"
print(f"20 steps: losses, grad norms, lr and weights agree (clipped in {clipped} steps)")
PY
echo "test_reference: ok"
