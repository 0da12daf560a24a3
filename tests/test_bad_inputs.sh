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

# A checkpoint with one flipped byte is refused on resume, and the run directory is left as it was.
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=4 --set training.warmup_steps=2 --set output.dir="$tmp/out" >/dev/null
ckpt="$tmp/out/checkpoints/step_00000004.ckpt"
size=$(stat -c %s "$ckpt")
offset=$((size / 2))
byte=$(od -An -tu1 -j "$offset" -N1 "$ckpt" | tr -d ' ')
printf "$(printf '\\%03o' $(( byte ^ 0x10 )))" | dd of="$ckpt" bs=1 seek="$offset" conv=notrunc status=none
expect_error "flipped checkpoint byte" "step_00000004.ckpt.*\(checksum\|corrupt\)" --resume "$tmp/out" --set training.max_steps=8
echo ok
