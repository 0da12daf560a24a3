"""Reads and writes llm.c's GPT-2 model files and token shards with NumPy (docs/checkpoint-format.md).

Model file: a header of 256 little-endian int32 — [0] magic 20240326, [1] version (3: fp32 parameters,
5: bf16), [2] max_seq_len, [3] vocab_size, [4] n_layer, [5] n_head, [6] n_embd, [7] padded_vocab_size —
then the 16 parameter tensors below, in this order, with no padding. Token shard: 256 int32 (magic
20240520, version 1, token count), then the tokens as uint16.

    from llmc_io import read_model, write_model, read_shard, LlmcError
    shape, params = read_model("runs/tiny_cpu/model.bin")   # params: name -> float32 array, llm.c's shapes
"""

import os

import numpy as np

MODEL_MAGIC = 20240326
VERSION_FP32 = 3
VERSION_BF16 = 5
SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
# Tensor names (as in src/model.c) in file order. Matrices are (out, in), as llm.c stores them.
PARAM_NAMES = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b",
               "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]
# The 2-D weights, which AdamW's weight decay applies to (the embeddings included, as in src/model.c).
DECAYED = {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"}


class LlmcError(Exception):
    pass


def param_shapes(shape):
    """name -> the tensor's shape for a model shape dict (n_layer, n_head, n_embd, max_seq_len,
    vocab_size, padded_vocab_size)."""
    L, C, Vp, maxT = shape["n_layer"], shape["n_embd"], shape["padded_vocab_size"], shape["max_seq_len"]
    return {"wte": (Vp, C), "wpe": (maxT, C), "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C),
            "qkvb": (L, 3 * C), "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C), "ln2b": (L, C),
            "fcw": (L, 4 * C, C), "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
            "lnfw": (C,), "lnfb": (C,)}


def bf16_bits_to_float32(bits):
    """uint16 bf16 bit patterns -> float32 (bf16 is the high half of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_bytes(path, what):
    """The whole file; LlmcError naming `what` it is when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise LlmcError(f"cannot read {what} {path}: {error.strerror}") from None


def read_model(path):
    """(shape, params) of an llm.c GPT-2 model file; params maps each name to a float32 array. Raises
    LlmcError for a missing, short or corrupt file."""
    data = read_bytes(path, "model file")
    if len(data) < HEADER_BYTES:
        raise LlmcError(f"{path} is {len(data)} bytes, too short for llm.c's {HEADER_BYTES}-byte header")
    header = np.frombuffer(data, dtype="<i4", count=HEADER_INTS)
    if header[0] != MODEL_MAGIC:
        raise LlmcError(f"{path} is not an llm.c GPT-2 model file (magic {header[0]}, expected {MODEL_MAGIC})")
    version = int(header[1])
    if version not in (VERSION_FP32, VERSION_BF16):
        raise LlmcError(f"{path} has version {version}; versions {VERSION_FP32} (fp32) and {VERSION_BF16} (bf16) "
                        "are supported")
    shape = {"version": version, "max_seq_len": int(header[2]), "vocab_size": int(header[3]),
             "n_layer": int(header[4]), "n_head": int(header[5]), "n_embd": int(header[6]),
             "padded_vocab_size": int(header[7])}
    if shape["padded_vocab_size"] == 0 and version == VERSION_FP32:  # llm.c's older version-3 writers
        shape["padded_vocab_size"] = (shape["vocab_size"] + 127) // 128 * 128
    if min(shape[k] for k in ("max_seq_len", "vocab_size", "n_layer", "n_head", "n_embd")) <= 0 \
            or shape["n_embd"] % shape["n_head"] or shape["padded_vocab_size"] < shape["vocab_size"]:
        raise LlmcError(f"{path} has a nonsensical shape {shape}")
    shapes = param_shapes(shape)
    count = sum(int(np.prod(s)) for s in shapes.values())
    width = 4 if version == VERSION_FP32 else 2
    if len(data) != HEADER_BYTES + count * width:
        raise LlmcError(f"{path} is {len(data)} bytes, but its header (version {version}, {count} parameters) "
                        f"needs {HEADER_BYTES + count * width}: truncated or corrupt")
    if version == VERSION_FP32:
        flat = np.frombuffer(data, dtype="<f4", offset=HEADER_BYTES).astype(np.float32)
    else:
        flat = bf16_bits_to_float32(np.frombuffer(data, dtype="<u2", offset=HEADER_BYTES))
    params, at = {}, 0
    for name in PARAM_NAMES:
        n = int(np.prod(shapes[name]))
        params[name] = flat[at:at + n].reshape(shapes[name])
        at += n
    return shape, params


def write_model(path, shape, params):
    """Writes params (name -> array, any float dtype) as an fp32 (version 3) llm.c model file, atomically."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = [MODEL_MAGIC, VERSION_FP32, shape["max_seq_len"], shape["vocab_size"], shape["n_layer"],
                  shape["n_head"], shape["n_embd"], shape["padded_vocab_size"]]
    shapes = param_shapes(shape)
    temp = path + ".tmp"
    with open(temp, "wb") as f:
        f.write(header.tobytes())
        for name in PARAM_NAMES:
            array = np.asarray(params[name])
            if array.shape != shapes[name]:
                raise LlmcError(f"{name} has shape {array.shape}, the model needs {shapes[name]}")
            f.write(array.astype("<f4").tobytes())
    os.replace(temp, path)


def read_shard(path):
    """The tokens of an llm.c token shard as a uint16 array."""
    data = read_bytes(path, "token shard")
    if len(data) < HEADER_BYTES:
        raise LlmcError(f"{path} is too short to be a token shard")
    magic, version, count = np.frombuffer(data, dtype="<i4", count=3)
    if magic != SHARD_MAGIC or version != SHARD_VERSION:
        raise LlmcError(f"{path} is not a token shard (magic {magic}, version {version})")
    if len(data) != HEADER_BYTES + 2 * int(count):
        raise LlmcError(f"{path}: its header announces {count} tokens, but it has {len(data)} bytes")
    return np.frombuffer(data, dtype="<u2", offset=HEADER_BYTES).copy()
