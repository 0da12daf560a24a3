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

# GPT-2 tokenizer: a clear message without tiktoken; a round trip where its encoding is available offline.
if ! python3 -c 'import tiktoken' 2>/dev/null; then
  if python3 scripts/prepare_data.py --source "$src" --out "$work/g" --tokenizer gpt2 2>"$work/err"; then
    fail "gpt2 without tiktoken should fail"
  fi
  grep -q "pip install tiktoken" "$work/err" || fail "missing tiktoken message: $(cat "$work/err")"
elif python3 -c 'import tiktoken; tiktoken.get_encoding("gpt2")' 2>/dev/null; then
  python3 scripts/prepare_data.py --source "$src" --out "$work/g" --tokenizer gpt2 --seed 5 >/dev/null
  check_output "$work/g" 50257 50256 10000000 "$work/expected_text"
fi

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
