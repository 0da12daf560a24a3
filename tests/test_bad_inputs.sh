# Bad input: each case exits non-zero with one message on stderr naming the problem, and leaves the
# output directory exactly as it was (no new files, nothing changed).
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config

# expect_error NAME PATTERN ARGS...: train_gpt ARGS fails with PATTERN in its one-line stderr, and the
# output directory $tmp/out is unchanged.
expect_error() {
  local name=$1 pattern=$2; shift 2
  local before after status=0
  before=$(cd "$tmp" && find out -exec stat -c '%n %s %Y' {} + 2>/dev/null | sort || true)
  "$train_gpt" --device cpu "$@" --set output.dir="$tmp/out" >"$tmp/stdout" 2>"$tmp/stderr" || status=$?
  after=$(cd "$tmp" && find out -exec stat -c '%n %s %Y' {} + 2>/dev/null | sort || true)
  [ "$status" != 0 ] || fail "$name: exit status 0"
  [ "$(wc -l < "$tmp/stderr")" = 1 ] || fail "$name: expected one line on stderr, got: $(cat "$tmp/stderr")"
  grep -q -- "$pattern" "$tmp/stderr" || fail "$name: stderr does not match '$pattern': $(cat "$tmp/stderr")"
  [ "$before" = "$after" ] || fail "$name: the output directory changed"
  echo "$name: $(cat "$tmp/stderr")"
}

echo '{"model": {"n_layer": 2,}' > "$tmp/malformed.json"
expect_error "malformed JSON" "malformed.json:1:[0-9]*: malformed JSON" --config "$tmp/malformed.json"
expect_error "unknown key" 'training.lrr.*did you mean.*training.lr' --config "$tmp/tiny.json" --set training.lrr=1
python3 - "$tmp" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1] + "/tiny.json"))
cfg["training"]["batch_size"] = "four"
json.dump(cfg, open(sys.argv[1] + "/wrong_type.json", "w"))
cfg["training"]["batch_size"] = 4
cfg["training"]["lrr"] = 0.1
json.dump(cfg, open(sys.argv[1] + "/unknown_key.json", "w"))
PY
expect_error "unknown key in file" 'training.lrr.*did you mean' --config "$tmp/unknown_key.json"
expect_error "wrong type" 'training.batch_size' --config "$tmp/wrong_type.json"
expect_error "negative lr" 'training.lr' --config "$tmp/tiny.json" --set training.lr=-0.001
expect_error "unknown policy" 'precision.policy' --config "$tmp/tiny.json" --set precision.policy=fp7
expect_error "missing shard" "$tmp/nothing_" --config "$tmp/tiny.json" --set data.train="$tmp/nothing_*.bin"

mkdir -p "$tmp/bad"
cp "$tmp/data/train_000000.bin" "$tmp/bad/wrongmagic_000000.bin"
printf '\x01\x02\x03\x04' | dd of="$tmp/bad/wrongmagic_000000.bin" bs=1 seek=0 conv=notrunc status=none
expect_error "wrong magic" "wrongmagic_000000.bin.*magic" --config "$tmp/tiny.json" --set data.train="$tmp/bad/wrongmagic_*.bin"
head -c 5000 "$tmp/data/train_000000.bin" > "$tmp/bad/truncated_000000.bin"
expect_error "truncated shard" "truncated_000000.bin" --config "$tmp/tiny.json" --set data.train="$tmp/bad/truncated_*.bin"
expect_error "missing model file" "no_such_model.bin" --config "$tmp/tiny.json" --set model.init_from="$tmp/no_such_model.bin"

# A shard pattern that matches a FIFO: refused at once (opening it would wait for a writer forever).
mkfifo "$tmp/bad/fifo_000000.bin"
start=$(date +%s)
expect_error "FIFO shard" "fifo_000000.bin is not a regular file" --config "$tmp/tiny.json" --set data.train="$tmp/bad/fifo_*.bin"
[ $(( $(date +%s) - start )) -lt 10 ] || fail "the FIFO took seconds to refuse"

# A config with bytes after a NUL: JSON parsers stop at the NUL, and the rest would be ignored silently.
python3 - "$tmp" <<'PY'
import sys
text = open(sys.argv[1] + "/tiny.json", "rb").read()
open(sys.argv[1] + "/nul.json", "wb").write(text + b"\0{\"training\": {\"lr\": 10}}")
PY
expect_error "NUL in config" "nul.json: a NUL byte at byte offset $(stat -c %s "$tmp/tiny.json")" --config "$tmp/nul.json"

# A dry run of a shape whose parameter count does not fit the counters: refused, not wrapped around.
expect_error "parameter count overflow" "more than the 2^50" --config "$tmp/tiny.json" --set model.n_embd=1073741824 \
  --set model.n_head=1 --set model.n_layer=100000 --dry-run
expect_error "activation overflow" "activations of this model would exceed 2^50" --config "$tmp/tiny.json" \
  --set model.block_size=1000000 --set training.seq_len=1000000 --set training.batch_size=1000000 --dry-run

# An llm.c model file whose header disagrees with its size: said before any data is validated (the shard
# pattern here matches nothing, which would be the next error).
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=2 --set training.warmup_steps=1 \
  --set output.dir="$tmp/for_model" >/dev/null
python3 - "$tmp/for_model/model.bin" "$tmp/bad" <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
header = list(struct.unpack("<256i", data[:1024]))
header[4] = 3  # n_layer 2 -> 3: the file is now a layer short
open(sys.argv[2] + "/short_model.bin", "wb").write(struct.pack("<256i", *header) + data[1024:])
data[1024 + 4 * 17] = 0xff; data[1024 + 4 * 17 + 1] = 0xff  # wte element 17: the bits of a NaN
data[1024 + 4 * 17 + 2] = 0xc0; data[1024 + 4 * 17 + 3] = 0x7f
open(sys.argv[2] + "/nan_model.bin", "wb").write(data)
PY
expect_error "model header vs size" "short_model.bin is .* bytes, but its header .* needs" --config "$tmp/tiny.json" \
  --set model.init_from="$tmp/bad/short_model.bin" --set data.train="$tmp/nothing_*.bin"
# NaN in the weights to start from: an import error naming the tensor, before the run directory is touched.
expect_error "NaN in init_from" "tensor wte holds nan at element 17" --config "$tmp/tiny.json" \
  --set model.init_from="$tmp/bad/nan_model.bin"

# A tokenizer that knows fewer tokens than the model: a warning at start (samples would lack those ids).
python3 - "$tmp/data/tokenizer.bin" "$tmp/bad/small_tokenizer.bin" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
header = list(struct.unpack("<256I", data[:1024]))
vocab, body, pos = header[2], data[1024:], 0
for _ in range(200):  # keep the first 200 tokens
    pos += 1 + body[pos]
header[2], header[3] = 200, 199  # vocab size, end-of-text id
open(sys.argv[2], "wb").write(struct.pack("<256I", *header) + body[:pos])
PY
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=1 --set training.warmup_steps=1 \
  --set data.tokenizer="$tmp/bad/small_tokenizer.bin" --set output.dir="$tmp/small_tok" > "$tmp/stdout" ||
  fail "a small tokenizer stopped the run"
grep -q "warning: the tokenizer .*small_tokenizer.bin knows 200 tokens, fewer than model.vocab_size = 257" "$tmp/stdout" ||
  fail "no warning for a small tokenizer: $(head -3 "$tmp/stdout")"
# A checkpoint with one flipped byte is refused on resume, and the run directory is left as it was.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=4 --set training.warmup_steps=2 --set output.dir="$tmp/out" >/dev/null
ckpt="$tmp/out/checkpoints/step_00000004.ckpt"
size=$(stat -c %s "$ckpt")
offset=$((size / 2))
byte=$(od -An -tu1 -j "$offset" -N1 "$ckpt" | tr -d ' ')
printf "$(printf '\\%03o' $(( byte ^ 0x10 )))" | dd of="$ckpt" bs=1 seek="$offset" conv=notrunc status=none
expect_error "flipped checkpoint byte" "step_00000004.ckpt.*\(checksum\|corrupt\)" --resume "$tmp/out" --set training.max_steps=8
echo ok
