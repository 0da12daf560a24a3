#!/usr/bin/env python3
"""Prints the text of a token shard (llm.c format), to inspect what train_gpt will read.

    python3 scripts/decode.py FILE.bin [--tokenizer PATH] [--max-tokens N]

The tokenizer defaults to tokenizer.bin beside FILE.bin. Tokens are decoded to their bytes and written
as they are, so the end-of-text token shows as <|endoftext|> before each document.
"""

import argparse
import os
import struct
import sys

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
TOKENIZER_MAGIC = 20240328
TOKENIZER_VERSION = 2
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class DecodeError(Exception):
    pass


def read_header(f, path, fmt, what):
    data = f.read(HEADER_BYTES)
    if len(data) < HEADER_BYTES:
        raise DecodeError(f"{path} is too short to be a {what}: {len(data)} bytes, the header alone is {HEADER_BYTES}")
    return struct.unpack(f"<{HEADER_INTS}{fmt}", data)


def load_tokenizer(path):
    """Returns the list of every token's bytes."""
    with open(path, "rb") as f:
        header = read_header(f, path, "I", "tokenizer file")
        if header[0] != TOKENIZER_MAGIC:
            raise DecodeError(f"{path} is not a tokenizer file: magic {header[0]}, expected {TOKENIZER_MAGIC}")
        if header[1] != TOKENIZER_VERSION:
            raise DecodeError(f"{path} has tokenizer version {header[1]}, expected {TOKENIZER_VERSION}")
        pieces = []
        for token in range(header[2]):
            length = f.read(1)
            piece = f.read(length[0]) if length else b""
            if not length or len(piece) != length[0]:
                raise DecodeError(f"{path} is truncated: it ends in token {token} of {header[2]}")
            pieces.append(piece)
    return pieces


def read_tokens(path, max_tokens):
    with open(path, "rb") as f:
        header = read_header(f, path, "i", "token shard")
        if header[0] != SHARD_MAGIC:
            raise DecodeError(f"{path} is not a token shard: magic {header[0]}, expected {SHARD_MAGIC}")
        if header[1] != SHARD_VERSION:
            raise DecodeError(f"{path} has shard version {header[1]}, expected {SHARD_VERSION}")
        count = header[2] if max_tokens is None else min(header[2], max_tokens)
        data = f.read(2 * count)
    if len(data) != 2 * count:
        raise DecodeError(f"{path} is truncated: its header announces {header[2]} tokens")
    return struct.unpack(f"<{count}H", data)


def decode(tokens, pieces, path):
    out = bytearray()
    for i, token in enumerate(tokens):
        if token >= len(pieces):
            raise DecodeError(f"{path}: token {token} at byte offset {HEADER_BYTES + 2 * i} is not below "
                              f"the vocab size {len(pieces)}")
        out += pieces[token]
    return bytes(out)


def main(argv):
    parser = argparse.ArgumentParser(description="Print the text of a token shard.")
    parser.add_argument("shard", metavar="FILE.bin")
    parser.add_argument("--tokenizer", help="tokenizer file (default: tokenizer.bin beside FILE.bin)")
    parser.add_argument("--max-tokens", type=int, help="decode only the first N tokens")
    args = parser.parse_args(argv)
    if args.max_tokens is not None and args.max_tokens < 0:
        parser.error(f"--max-tokens must not be negative, got {args.max_tokens}")
    tokenizer = args.tokenizer or os.path.join(os.path.dirname(args.shard), "tokenizer.bin")
    try:
        text = decode(read_tokens(args.shard, args.max_tokens), load_tokenizer(tokenizer), args.shard)
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (head, less) stopped early: not an error. Point stdout at /dev/null so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (DecodeError, OSError) as error:
        print(f"decode: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
