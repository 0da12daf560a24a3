#!/usr/bin/env python3
"""Exports an llm.c GPT-2 model file as a Hugging Face transformers GPT2LMHeadModel directory.

    python3 scripts/export_hf.py RUN_DIR|MODEL_BIN OUT_DIR [--eot-id N]

RUN_DIR is a train_gpt output directory (its model.bin is read); MODEL_BIN an llm.c model file of version
3 (fp32) or 5 (bf16), such as train_gpt's model.bin. OUT_DIR receives:

  model.safetensors   float32 tensors named as GPT2LMHeadModel's state dict: transformer.wte.weight (cut
                      from the padded vocabulary to vocab_size rows), transformer.wpe.weight, and per layer N
                      transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}.{weight,
                      bias}, transformer.ln_f.{weight, bias}. The block matrices are transposed to Conv1D's
                      (in, out) layout (llm.c stores (out, in)). lm_head.weight is not written: it is tied to
                      transformer.wte.weight (tie_word_embeddings), as Hugging Face itself saves GPT-2.
  config.json         model_type gpt2, the shape, activation gelu_new (GPT-2's tanh GELU), layer_norm_epsilon
                      1e-5, no dropout, bos/eos = the end-of-text id (default vocab_size - 1: 50256 for GPT-2's
                      BPE, 256 for the byte tokenizer; --eot-id to change it).

Then, with transformers and torch installed:
    from transformers import GPT2LMHeadModel; model = GPT2LMHeadModel.from_pretrained("OUT_DIR")
No tokenizer files are written (GPT-2's BPE is the `gpt2` tokenizer of transformers; the byte tokenizer
has no Hugging Face equivalent). Needs numpy and safetensors (pip install -r requirements.txt), not torch.
"""

import argparse
import json
import os
import sys

import numpy as np

from llmc_io import LlmcError, read_model


class ExportError(Exception):
    pass


def hf_tensors(shape, params):
    """GPT2LMHeadModel state-dict names -> contiguous float32 arrays."""
    V, L = shape["vocab_size"], shape["n_layer"]
    out = {"transformer.wte.weight": params["wte"][:V], "transformer.wpe.weight": params["wpe"],
           "transformer.ln_f.weight": params["lnfw"], "transformer.ln_f.bias": params["lnfb"]}
    # (HF name, llm.c name, whether it is a matrix that Conv1D wants as (in, out))
    per_layer = [("ln_1.weight", "ln1w", False), ("ln_1.bias", "ln1b", False),
                 ("attn.c_attn.weight", "qkvw", True), ("attn.c_attn.bias", "qkvb", False),
                 ("attn.c_proj.weight", "attprojw", True), ("attn.c_proj.bias", "attprojb", False),
                 ("ln_2.weight", "ln2w", False), ("ln_2.bias", "ln2b", False),
                 ("mlp.c_fc.weight", "fcw", True), ("mlp.c_fc.bias", "fcb", False),
                 ("mlp.c_proj.weight", "fcprojw", True), ("mlp.c_proj.bias", "fcprojb", False)]
    for layer in range(L):
        for hf_name, name, transpose in per_layer:
            tensor = params[name][layer]
            out[f"transformer.h.{layer}.{hf_name}"] = tensor.T if transpose else tensor
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in out.items()}


def hf_config(shape, eot_id):
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": shape["vocab_size"],
        "n_positions": shape["max_seq_len"],
        "n_ctx": shape["max_seq_len"],
        "n_embd": shape["n_embd"],
        "n_layer": shape["n_layer"],
        "n_head": shape["n_head"],
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def export(source, out_dir, eot_id=None):
    """Writes model.safetensors and config.json for source (a run directory or a model file) into out_dir;
    returns (shape, the written paths)."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise ExportError("the export needs safetensors: pip install safetensors (or pip install -r "
                          "requirements.txt)") from None
    if os.path.isdir(source):
        path = os.path.join(source, "model.bin")
        if not os.path.isfile(path):
            raise ExportError(f"{source} is a directory without model.bin: not a finished train_gpt run "
                              "(output.export must not be none)")
        source = path
    elif not os.path.exists(source):
        raise ExportError(f"{source} does not exist (pass a train_gpt run directory or an llm.c model file)")
    shape, params = read_model(source)
    if eot_id is None:
        eot_id = shape["vocab_size"] - 1
    if not 0 <= eot_id < shape["vocab_size"]:
        raise ExportError(f"--eot-id {eot_id} is not below the vocab size {shape['vocab_size']}")
    os.makedirs(out_dir, exist_ok=True)
    weights_path = os.path.join(out_dir, "model.safetensors")
    config_path = os.path.join(out_dir, "config.json")
    save_file(hf_tensors(shape, params), weights_path + ".tmp", metadata={"format": "pt"})
    os.replace(weights_path + ".tmp", weights_path)
    with open(config_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(hf_config(shape, eot_id), f, indent=2)
        f.write("\n")
    os.replace(config_path + ".tmp", config_path)
    return shape, [weights_path, config_path]


def main(argv):
    parser = argparse.ArgumentParser(
        description="Export an llm.c GPT-2 model file (train_gpt's model.bin, version 3 fp32 or 5 bf16) as a "
                    "Hugging Face GPT2LMHeadModel directory: model.safetensors and config.json.",
        epilog="Load it with transformers: GPT2LMHeadModel.from_pretrained(OUT_DIR). Needs numpy and "
               "safetensors, not torch.")
    parser.add_argument("source", metavar="RUN_DIR|MODEL_BIN",
                        help="a train_gpt output directory (its model.bin) or an llm.c model file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where model.safetensors and config.json go")
    parser.add_argument("--eot-id", type=int, metavar="N",
                        help="end-of-text token id for bos/eos_token_id (default: vocab_size - 1)")
    args = parser.parse_args(argv)
    try:
        shape, paths = export(args.source, args.out_dir, args.eot_id)
    except (ExportError, LlmcError, OSError) as error:
        print(f"export_hf.py: error: {error}", file=sys.stderr)
        return 1
    print(f"exported {args.source} (version {shape['version']}, {shape['n_layer']} layers, {shape['n_head']} "
          f"heads, {shape['n_embd']} channels, vocab {shape['vocab_size']}): {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
