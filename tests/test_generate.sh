# train_gpt --generate: the same seed gives the same text, from model.bin or from the newest checkpoint
# alike; greedy decoding ignores the seed and equals top-1; beyond the context the window moves on; bad
# requests fail with one line on stderr and leave the run as it was.
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config
run="$tmp/run"
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set precision.policy=mixed --set training.checkpoint_every=10 \
  --set output.dir="$run" >/dev/null
gen() { "$train_gpt" --device cpu --generate "$@"; }

gen "$run" --prompt "Q: Why" --tokens 40 --seed 3 > "$tmp/a.txt"
gen "$run" --prompt "Q: Why" --tokens 40 --seed 3 > "$tmp/b.txt"
gen "$run" --prompt "Q: Why" --tokens 40 --seed 4 > "$tmp/c.txt"
cmp -s "$tmp/a.txt" "$tmp/b.txt" || fail "the same seed gave other text"
cmp -s "$tmp/a.txt" "$tmp/c.txt" && fail "another seed gave the same text"
[ "$(head -c 6 "$tmp/a.txt")" = "Q: Why" ] || fail "the output does not start with the prompt: $(head -c 40 "$tmp/a.txt")"
# The ids of the byte-level prompt (after end-of-text, 256) give the same text as the prompt itself.
gen "$run" --prompt-ids 81,58,32,87,104,121 --tokens 40 --seed 3 | cmp -s - "$tmp/a.txt" ||
  fail "--prompt-ids of the prompt's bytes gave other text than --prompt"
# The model file (an llm.c file) and, without it, the newest checkpoint (step 20: mixed stores bf16 weights,
# which model.bin holds exactly) give the same text; so does the model file named directly.
gen "$run/model.bin" --prompt "Q: Why" --tokens 40 --seed 3 | cmp -s - "$tmp/a.txt" || fail "the model file named directly"
mv "$run/model.bin" "$tmp/model.bin"
gen "$run" --prompt "Q: Why" --tokens 40 --seed 3 | cmp -s - "$tmp/a.txt" || fail "the checkpoint gave other text"
mv "$tmp/model.bin" "$run/model.bin"

# Greedy: the seed does not matter, and top-1 at any temperature is greedy.
gen "$run" --prompt "A" --tokens 30 --temperature 0 --seed 1 > "$tmp/g1.txt"
gen "$run" --prompt "A" --tokens 30 --temperature 0 --seed 2 | cmp -s - "$tmp/g1.txt" || fail "greedy depends on the seed"
gen "$run" --prompt "A" --tokens 30 --temperature 1.5 --top-k 1 --seed 5 | cmp -s - "$tmp/g1.txt" || fail "top-1 is not greedy"

# Without a tokenizer the ids are printed; 150 tokens run past the context of 64 (the window moves on).
gen "$run" --set data.tokenizer= --prompt-ids 256,65 --tokens 150 > "$tmp/ids.txt"
python3 - "$tmp/ids.txt" <<'PY' || fail "ids output"
import sys
lines = open(sys.argv[1]).read().splitlines()
assert lines[0] == "prompt: 256,65", lines[0]
ids = [int(x) for x in lines[1].removeprefix("continuation: ").split(",")]
assert len(ids) == 150 and all(0 <= i < 257 for i in ids), ids
PY

# expect_error NAME PATTERN ARGS...: --generate ARGS fails with PATTERN in its one-line stderr; the run is unchanged.
expect_error() {
  local name=$1 pattern=$2; shift 2
  local before after status=0
  before=$(cd "$tmp" && find run -exec stat -c '%n %s %Y' {} + | sort)
  "$train_gpt" --device cpu "$@" >"$tmp/stdout" 2>"$tmp/stderr" || status=$?
  after=$(cd "$tmp" && find run -exec stat -c '%n %s %Y' {} + | sort)
  [ "$status" != 0 ] || fail "$name: exit status 0"
  [ "$(wc -l < "$tmp/stderr")" = 1 ] || fail "$name: expected one line on stderr, got: $(cat "$tmp/stderr")"
  grep -q -- "$pattern" "$tmp/stderr" || fail "$name: stderr does not match '$pattern': $(cat "$tmp/stderr")"
  [ "$before" = "$after" ] || fail "$name: the run directory changed"
  echo "$name: $(cat "$tmp/stderr")"
}
expect_error "missing run" "no such run directory or model file" --generate "$tmp/nothing"
mkdir -p "$tmp/empty_run"
expect_error "run without weights" "no model.bin and no checkpoints" --generate "$tmp/empty_run"
long=$(printf 'x%.0s' $(seq 64))
expect_error "prompt longer than the context" "context of 64 tokens" --generate "$run" --prompt "$long"
expect_error "id beyond the vocabulary" "id 257 (number 2)" --generate "$run" --prompt-ids 1,257
expect_error "both prompts" "give one of them" --generate "$run" --prompt a --prompt-ids 1
expect_error "prompt without --generate" "goes with --generate" --config "$tmp/tiny.json" --prompt a
# A tokenizer that is not byte-level (here numbered pieces, as GPT-2's BPE is not bytes in id order).
python3 - "$tmp/numbered.bin" <<'PY'
import struct, sys
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256I", 20240328, 2, 257, 256, *([0] * 252)))
    for i in range(257):
        piece = f"t{i}".encode()
        f.write(bytes([len(piece)]) + piece)
PY
expect_error "BPE prompt" "encode_prompt.py --tokenizer gpt2" --generate "$run" --set data.tokenizer="$tmp/numbered.bin" --prompt hi
echo ok
