#!/usr/bin/env python3
"""Writes token shards of uniformly random tokens, in llm.c's format, for benchmarks and tests that need
data of the right shape but not real text (a GPU machine without the fortunes corpus or FineWeb).

    python3 scripts/synthetic_shard.py --out DIR [--vocab 50257] [--tokens 2000000] [--val-tokens 200000]
                                       [--seed 0]

Writes DIR/train_000000.bin and DIR/val_000000.bin: a 256 int32 header (magic 20240520, version 1, token
count) and then the tokens as uint16, drawn uniformly from [0, vocab). No tokenizer file is written: run
with `--set data.tokenizer=` (no samples). A model trained on this data cannot beat ln(vocab).
"""

import argparse
import os
import random
import struct
import sys
from array import array

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256


def write_shard(path, num_tokens, vocab, rng):
    tokens = array("H", (rng.randrange(vocab) for _ in range(num_tokens)))
    if sys.byteorder != "little":
        tokens.byteswap()
    header = [0] * HEADER_INTS
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, num_tokens
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack(f"<{HEADER_INTS}i", *header))
        f.write(tokens.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--vocab", type=int, default=50257, help="tokens are drawn from [0, vocab) (default 50257)")
    parser.add_argument("--tokens", type=int, default=2_000_000, help="tokens in the train shard")
    parser.add_argument("--val-tokens", type=int, default=200_000, help="tokens in the val shard")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.vocab <= 65536:
        parser.error(f"--vocab {args.vocab}: tokens are uint16, so the vocab must be in 1..65536")
    for name in ("tokens", "val_tokens"):
        if not 1 <= getattr(args, name) <= 2**31 - 1:
            parser.error(f"--{name.replace('_', '-')} must be in 1..2^31-1 (the header's count is an int32)")
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    write_shard(os.path.join(args.out, "train_000000.bin"), args.tokens, args.vocab, rng)
    write_shard(os.path.join(args.out, "val_000000.bin"), args.val_tokens, args.vocab, rng)
    print(f"wrote {args.tokens} train and {args.val_tokens} val random tokens below {args.vocab} to {args.out}")


if __name__ == "__main__":
    main()
