# End to end on the CPU backend: loss at init, learning, determinism, resume, llm.c export, mixed policy.
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config

# 200 steps: the validation loss before the first step (training.eval_at_start, logged as step 0) and the
# first loss are ln(vocab) within 2%; the validation loss ends below the corpus's unigram entropy (what a
# model that ignores context can reach) by a fixed margin. Samples at steps 100 and 200, once each.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=200 --set training.sample_every=100 \
  --set output.dir="$tmp/long" >/dev/null
python3 - "$tmp/long/log.jsonl" "$tmp/data/val_000000.bin" <<'PY' || fail "init loss / learning"
import collections, json, math, struct, sys
records = [json.loads(l) for l in open(sys.argv[1])]
assert sorted(records[0]) == ["step", "val_loss"] and records[0]["step"] == 0, records[0]
start_val = records[0]["val_loss"]
assert abs(start_val - math.log(257)) / math.log(257) < 0.02, f"val loss at init {start_val}"
log = records[1:]
assert [r["step"] for r in log] == list(range(1, 201)), "one record per step after step 0"
first = log[0]["loss"]
assert abs(first - math.log(257)) / math.log(257) < 0.02, f"loss at init {first} vs ln(257) {math.log(257)}"
shard = open(sys.argv[2], "rb").read()
tokens = struct.unpack(f"<{(len(shard) - 1024) // 2}H", shard[1024:])
counts = collections.Counter(tokens)
unigram = -sum(c / len(tokens) * math.log(c / len(tokens)) for c in counts.values())
val = log[-1]["val_loss"]
assert val < unigram - 0.25, f"final val loss {val} vs unigram entropy {unigram}"
assert "val_loss" in log[9] and "val_loss" not in log[10], "val loss on eval steps only"
print(f"loss {first:.4f} -> val {val:.4f} (unigram entropy {unigram:.4f})")
PY
for f in config.json summary.json samples.txt model.bin; do [ -s "$tmp/long/$f" ] || fail "missing $f"; done
[ "$(grep -c '^--- step' "$tmp/long/samples.txt")" = 2 ] && grep -q '^--- step 100 ---' "$tmp/long/samples.txt" &&
  grep -q '^--- step 200 ---' "$tmp/long/samples.txt" || fail "samples.txt: $(grep '^--- step' "$tmp/long/samples.txt")"

# Same seed, same losses; another seed, other losses.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set output.dir="$tmp/a" >/dev/null
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set output.dir="$tmp/b" >/dev/null
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set output.dir="$tmp/c" --set training.seed=43 >/dev/null
cmp -s <(losses "$tmp/a") <(losses "$tmp/b") || fail "two runs with the same seed differ"
cmp -s <(losses "$tmp/a") <(losses "$tmp/c") && fail "a different seed gave the same losses"
# training.sample_every = 0 (the tiny config's): no sample, not even at the end.
[ -e "$tmp/a/samples.txt" ] && fail "sample_every=0 wrote samples.txt"
# data.shuffle (on by default) changes the batches: unshuffled, the same seed gives other losses.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set data.shuffle=0 --set output.dir="$tmp/unshuffled" >/dev/null
cmp -s <(losses "$tmp/a") <(losses "$tmp/unshuffled") && fail "data.shuffle=0 gave the shuffled losses"

# Warm-up longer than the run is allowed, with a note; training.eval_at_start=0 logs no step 0.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=3 --set training.warmup_steps=10 \
  --set training.eval_at_start=0 --set output.dir="$tmp/short" > "$tmp/short.txt"
grep -q "note: training.warmup_steps (10) exceeds training.max_steps (3)" "$tmp/short.txt" || fail "no warm-up note"
python3 - "$tmp/short/log.jsonl" <<'PY' || fail "short warm-up run"
import json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
assert [r["step"] for r in log] == [1, 2, 3], [r["step"] for r in log]
assert all(abs(r["lr"] - 1e-3 * r["step"] / 10) < 1e-9 for r in log), [r["lr"] for r in log]  # lr * step / warmup
PY

# Resume: 20 steps straight, or 10 steps + resume + 10 steps, give the same bits (with the shuffled batch
# order: the checkpoint's data position continues it); the step-0 evaluation is not repeated.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.checkpoint_every=10 --set output.dir="$tmp/straight" >/dev/null
cp -r "$tmp/straight" "$tmp/resumed"
rm "$tmp/resumed/checkpoints/step_00000020.ckpt" "$tmp/resumed/model.bin" "$tmp/resumed/summary.json"
"$train_gpt" --device cpu --resume "$tmp/resumed" >/dev/null
cmp -s <(losses "$tmp/straight") <(losses "$tmp/resumed") || fail "resumed losses differ"
[ "$(wc -l < "$tmp/resumed/log.jsonl")" = 21 ] || fail "resumed log does not have step 0 and 20 steps"
[ "$(head -1 "$tmp/resumed/log.jsonl")" = "$(head -1 "$tmp/straight/log.jsonl")" ] || fail "step-0 record changed"
cmp -s "$tmp/straight/checkpoints/step_00000020.ckpt" "$tmp/resumed/checkpoints/step_00000020.ckpt" ||
  fail "resumed final checkpoint differs"
cmp -s "$tmp/straight/model.bin" "$tmp/resumed/model.bin" || fail "resumed final weights differ"

# output.final_checkpoint=0: only the checkpoint_every ones (steps 7 and 14 of 20), and the same training.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.checkpoint_every=7 --set output.final_checkpoint=0 \
  --set output.dir="$tmp/no_final" >/dev/null
[ "$(cd "$tmp/no_final/checkpoints" && echo *)" = "step_00000007.ckpt step_00000014.ckpt" ] ||
  fail "final_checkpoint=0 left $(cd "$tmp/no_final/checkpoints" && echo *), not the checkpoints of steps 7 and 14"
cmp -s <(losses "$tmp/straight") <(losses "$tmp/no_final") || fail "final_checkpoint=0 changed the losses"

# llm.c model file: start from the exported weights, train on; the shape comes from the file.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set model.init_from="$tmp/straight/model.bin" --set model.n_layer=1 \
  --set training.max_steps=5 --set output.dir="$tmp/imported" >/dev/null
python3 - "$tmp/imported" "$tmp/straight" <<'PY' || fail "init_from"
import json, sys
cfg = json.load(open(sys.argv[1] + "/config.json"))
assert cfg["model"]["n_layer"] == 2, cfg["model"]
first = [json.loads(l) for l in open(sys.argv[1] + "/log.jsonl")][1]["loss"]  # after the step-0 evaluation
straight_last = [json.loads(l) for l in open(sys.argv[2] + "/log.jsonl")][-1]["loss"]
assert first < straight_last + 0.3, f"imported model starts at {first}, trained one ended at {straight_last}"
PY

# output.export: bf16 writes an llm.c version 5 file holding the nearest bf16 of each fp32 weight (the same
# run exported in fp32: run "a"); none writes no model file.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set output.export=bf16 --set output.dir="$tmp/a_bf16" >/dev/null
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set output.export=none --set output.dir="$tmp/a_none" >/dev/null
[ -e "$tmp/a_none/model.bin" ] && fail "output.export=none wrote model.bin"
python3 - "$tmp/a/model.bin" "$tmp/a_bf16/model.bin" <<'PY' || fail "bf16 export"
import struct, sys
fp32, bf16 = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
h32, h16 = struct.unpack("<256i", fp32[:1024]), struct.unpack("<256i", bf16[:1024])
assert h32[1] == 3 and h16[1] == 5 and h32[2:8] == h16[2:8], (h32[:8], h16[:8])
words = struct.unpack(f"<{(len(fp32) - 1024) // 4}I", fp32[1024:])
halves = struct.unpack(f"<{(len(bf16) - 1024) // 2}H", bf16[1024:])
assert len(words) == len(halves)
def nearest_even(w):  # the upper 16 bits, rounded to nearest, ties to even (the weights are finite)
    upper, rest = w >> 16, w & 0xFFFF
    return upper + (rest > 0x8000 or (rest == 0x8000 and upper & 1))
assert all(nearest_even(w) == h for w, h in zip(words, halves)), "bf16 export is not RNE of the fp32 weights"
PY

# mixed: learns, and the weights it trains are bf16 values (low 16 bits of every fp32 zero).
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set precision.policy=mixed --set training.max_steps=60 \
  --set output.dir="$tmp/mixed" >/dev/null
python3 - "$tmp/mixed" <<'PY' || fail "mixed"
import json, struct, sys
log = [json.loads(l) for l in open(sys.argv[1] + "/log.jsonl")][1:]  # the steps, after the step-0 evaluation
assert log[-1]["loss"] < log[0]["loss"] - 1.0, (log[0]["loss"], log[-1]["loss"])
data = open(sys.argv[1] + "/model.bin", "rb").read()
header = struct.unpack("<256i", data[:1024])
assert header[0] == 20240326 and header[1] == 3, header[:2]
words = struct.unpack(f"<{(len(data) - 1024) // 4}I", data[1024:])
assert all(w & 0xFFFF == 0 for w in words), "mixed weights are not bf16 values"
PY
cmp -s <(losses "$tmp/a") <(losses "$tmp/mixed" | head -20) && fail "mixed gave the fp32 losses"
# Logit sharpness: logged on eval steps only, positive for eps > 0, and growing with eps.
for eps in 0.01 0.05; do
  "$train_gpt" --device cpu --config "$tmp/tiny.json" --set metrics.sharpness=$eps --set output.dir="$tmp/sharp_$eps" >/dev/null
done
python3 - "$tmp/sharp_0.01/log.jsonl" "$tmp/sharp_0.05/log.jsonl" "$tmp/a/log.jsonl" <<'PY' || fail "sharpness"
import json, sys
small, large, off = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
assert [r["step"] for r in small if "sharpness" in r] == [0, 10, 20], "sharpness on eval steps (and step 0)"
assert all(r["sharpness"] > 0 for r in small if "sharpness" in r)
assert all(b["sharpness"] > a["sharpness"] for a, b in zip(small, large) if "sharpness" in a)
assert not any("sharpness" in r for r in off), "no sharpness when metrics.sharpness = 0"
PY
echo "ok"
