#!/usr/bin/env python3
"""An independent float64 reference of train_gpt's fp32 training, in NumPy: GPT-2's forward and backward
pass and AdamW, on llm.c model files and token shards.

    python3 scripts/reference.py CONFIG [--steps N] [--log FILE] [--out-model FILE]

CONFIG is a train_gpt config with every key resolved: the config.json that train_gpt writes into
output.dir, or the output of `./train_gpt --config X --print-config`. The reference reads from it:
model.init_from (required: the llm.c model file to start from; its header gives the shape), data.train,
and training.{batch_size, seq_len, tokens_per_step, max_steps, lr, min_lr, warmup_steps, schedule,
weight_decay, beta1, beta2, eps, grad_clip}. It trains --steps steps (default training.max_steps; the
learning-rate schedule always spans max_steps) and prints, and writes to --log, one JSON object per step
like train_gpt's log.jsonl: step (1-based, after the update), loss (before the update), lr, grad_norm.
--out-model writes the final weights as an fp32 llm.c model file.

The model (GPT-2 as llm.c and this project define it): token + position embeddings; per layer
x += attn_proj(causal_self_attention(layernorm_1(x))), x += fc_proj(gelu(fc(layernorm_2(x)))); a final
layernorm; logits = x @ wte^T over the padded vocabulary, of which only the first vocab_size columns enter
the softmax; the loss is the mean cross-entropy over all B*T positions. LayerNorm eps 1e-5, GELU the tanh
approximation, attention scaled by 1/sqrt(head size). Gradient accumulation over tokens_per_step /
(batch_size * seq_len) micro-batches averages the micro-batch losses.

The optimizer: global-norm gradient clipping (scale clip/norm when norm > clip and clip > 0), then per
element m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, p -= lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p),
with weight decay wd on the 2-D weights only (wte, wpe and the four block matrices). The learning rate at
0-based step s: lr (s+1)/warmup during warmup; then constant, or linear / cosine from lr to min_lr over
the remaining steps up to max_steps.

Data order (src/data.c, without shuffling): the shards matching data.train in sorted order; a batch is
B*T+1 consecutive tokens (inputs and the targets shifted by one) from the current position, which then
advances by B*T; when the next batch would not fit in the shard, the next shard (or the first again)
starts at position 0. That is train_gpt's order with data.shuffle = 0, which the config must say.

Everything is float64, so the reference differs from a correct fp32 run only by the fp32 run's rounding.
"""

import argparse
import glob
import json
import math
import sys

import numpy as np

from llmc_io import DECAYED, PARAM_NAMES, LlmcError, read_model, read_shard, write_model

LAYERNORM_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)


class ReferenceError(Exception):
    pass


# ---- the layers, each a forward that returns (output, cache) and a backward ----

def layernorm_forward(x, w, b):
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    rstd = 1.0 / np.sqrt((centered ** 2).mean(axis=-1, keepdims=True) + LAYERNORM_EPS)
    xhat = centered * rstd
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dout, cache):
    xhat, rstd, w = cache
    dw = (dout * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
    db = dout.reshape(-1, xhat.shape[-1]).sum(axis=0)
    dxhat = dout * w
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


def linear_forward(x, w, b):
    """x (..., in) @ w^T + b with w (out, in), llm.c's layout."""
    return x @ w.T + b, x


def linear_backward(dout, x, w):
    dout2 = dout.reshape(-1, dout.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    return dout @ w, dout2.T @ x2, dout2.sum(axis=0)


def gelu_forward(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_SCALE * (x + 0.044715 * x ** 3))), x


def gelu_backward(dout, x):
    t = np.tanh(GELU_SCALE * (x + 0.044715 * x ** 3))
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_SCALE * (1.0 + 3 * 0.044715 * x * x))


def attention_forward(qkv, n_head):
    """Causal self-attention of qkv (B, T, 3C), whose last axis is q, k, v, each split into heads."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for i in range(3))
    scale = 1.0 / math.sqrt(hs)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    y = probs @ v  # (B, NH, T, hs)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C), (q, k, v, probs, scale)


def attention_backward(dout, cache):
    q, k, v, probs, scale = cache
    B, NH, T, hs = q.shape
    dy = dout.reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    dprobs = dy @ v.transpose(0, 1, 3, 2)
    dv = probs.transpose(0, 1, 3, 2) @ dy
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))  # masked entries have probs 0
    dq = (dscores @ k) * scale
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale
    merge = lambda d: d.transpose(0, 2, 1, 3).reshape(B, T, NH * hs)
    return np.concatenate([merge(dq), merge(dk), merge(dv)], axis=-1)


# ---- the model ----

def forward(params, shape, inputs, targets=None):
    """(logits over the padded vocabulary (B, T, Vp), mean loss or None, cache for backward).
    params: name -> float64 array in llm.c's shapes; inputs, targets: int arrays (B, T)."""
    B, T = inputs.shape
    if T > shape["max_seq_len"]:
        raise ReferenceError(f"sequence length {T} exceeds the model's max_seq_len {shape['max_seq_len']}")
    L, n_head, V = shape["n_layer"], shape["n_head"], shape["vocab_size"]
    x = params["wte"][inputs] + params["wpe"][:T]
    layers = []
    for l in range(L):
        p = {name: params[name][l] for name in PARAM_NAMES[2:14]}
        ln1, ln1_cache = layernorm_forward(x, p["ln1w"], p["ln1b"])
        qkv, qkv_in = linear_forward(ln1, p["qkvw"], p["qkvb"])
        att, att_cache = attention_forward(qkv, n_head)
        proj, proj_in = linear_forward(att, p["attprojw"], p["attprojb"])
        x = x + proj
        ln2, ln2_cache = layernorm_forward(x, p["ln2w"], p["ln2b"])
        fc, fc_in = linear_forward(ln2, p["fcw"], p["fcb"])
        act, gelu_in = gelu_forward(fc)
        fcproj, fcproj_in = linear_forward(act, p["fcprojw"], p["fcprojb"])
        x = x + fcproj
        layers.append((ln1_cache, qkv_in, att_cache, proj_in, ln2_cache, fc_in, gelu_in, fcproj_in))
    lnf, lnf_cache = layernorm_forward(x, params["lnfw"], params["lnfb"])
    logits = lnf @ params["wte"].T
    cache = {"inputs": inputs, "targets": targets, "layers": layers, "lnf": lnf, "lnf_cache": lnf_cache}
    if targets is None:
        return logits, None, cache
    z = logits[:, :, :V]
    zmax = z.max(axis=-1, keepdims=True)
    exp = np.exp(z - zmax)
    sums = exp.sum(axis=-1, keepdims=True)
    log_probs_target = np.take_along_axis(z - zmax, targets[..., None], axis=-1) - np.log(sums)
    cache["probs"] = exp / sums
    return logits, float(-log_probs_target.mean()), cache


def backward(params, shape, cache, loss_scale=1.0):
    """Gradients (name -> float64 array) of loss_scale * the mean loss of the forward that made cache."""
    inputs, targets = cache["inputs"], cache["targets"]
    B, T = inputs.shape
    V = shape["vocab_size"]
    grads = {name: np.zeros_like(params[name]) for name in PARAM_NAMES}
    dz = cache["probs"].copy()
    np.put_along_axis(dz, targets[..., None], np.take_along_axis(dz, targets[..., None], axis=-1) - 1.0, axis=-1)
    dz *= loss_scale / (B * T)  # (B, T, V): the padded columns get no gradient
    grads["wte"][:V] += dz.reshape(-1, V).T @ cache["lnf"].reshape(-1, shape["n_embd"])
    dlnf = dz @ params["wte"][:V]
    dx, grads["lnfw"], grads["lnfb"] = layernorm_backward(dlnf, cache["lnf_cache"])
    for l in reversed(range(shape["n_layer"])):
        ln1_cache, qkv_in, att_cache, proj_in, ln2_cache, fc_in, gelu_in, fcproj_in = cache["layers"][l]
        dact, grads["fcprojw"][l], grads["fcprojb"][l] = linear_backward(dx, fcproj_in, params["fcprojw"][l])
        dfc = gelu_backward(dact, gelu_in)
        dln2, grads["fcw"][l], grads["fcb"][l] = linear_backward(dfc, fc_in, params["fcw"][l])
        dres, grads["ln2w"][l], grads["ln2b"][l] = layernorm_backward(dln2, ln2_cache)
        dx = dx + dres
        datt, grads["attprojw"][l], grads["attprojb"][l] = linear_backward(dx, proj_in, params["attprojw"][l])
        dqkv = attention_backward(datt, att_cache)
        dln1, grads["qkvw"][l], grads["qkvb"][l] = linear_backward(dqkv, qkv_in, params["qkvw"][l])
        dres, grads["ln1w"][l], grads["ln1b"][l] = layernorm_backward(dln1, ln1_cache)
        dx = dx + dres
    np.add.at(grads["wte"], inputs.reshape(-1), dx.reshape(-1, shape["n_embd"]))
    grads["wpe"][:T] += dx.sum(axis=0)
    return grads


# ---- data, schedule, optimizer ----

class Batches:
    """Batches of (inputs, targets) in src/data.c's order for one rank, without shard shuffling."""

    def __init__(self, pattern, B, T, vocab_size):
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise ReferenceError(f"no shard files match '{pattern}'")
        self.shards = [read_shard(path) for path in paths]
        for path, tokens in zip(paths, self.shards):
            if len(tokens) < B * T + 1:
                raise ReferenceError(f"{path} has {len(tokens)} tokens, fewer than one batch needs ({B * T + 1})")
            if tokens.max() >= vocab_size:
                raise ReferenceError(f"{path} has token {tokens.max()}, not below the vocab size {vocab_size}")
        self.B, self.T, self.shard, self.position = B, T, 0, 0

    def next(self):
        n = self.B * self.T
        chunk = self.shards[self.shard][self.position:self.position + n + 1].astype(np.int64)
        self.position += n
        if self.position + n + 1 > len(self.shards[self.shard]):
            self.shard, self.position = (self.shard + 1) % len(self.shards), 0
        return chunk[:-1].reshape(self.B, self.T), chunk[1:].reshape(self.B, self.T)


def learning_rate(training, step):
    lr, min_lr, warmup, max_steps = training["lr"], training["min_lr"], training["warmup_steps"], training["max_steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    if training["schedule"] == "constant" or max_steps <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (max_steps - warmup))
    if training["schedule"] == "linear":
        return lr - (lr - min_lr) * progress
    if training["schedule"] == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ReferenceError(f"unknown schedule {training['schedule']!r}")


class AdamW:
    def __init__(self, params, training):
        self.t = training
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}

    def step(self, params, grads, step):
        """Applies 0-based step `step`; returns (lr, gradient norm before clipping)."""
        t = self.t
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        scale = t["grad_clip"] / norm if t["grad_clip"] > 0 and norm > t["grad_clip"] else 1.0
        lr = learning_rate(t, step)
        bc1, bc2 = 1.0 - t["beta1"] ** (step + 1), 1.0 - t["beta2"] ** (step + 1)
        for name, p in params.items():
            g = grads[name] * scale
            m, v = self.m[name], self.v[name]
            m *= t["beta1"]
            m += (1.0 - t["beta1"]) * g
            v *= t["beta2"]
            v += (1.0 - t["beta2"]) * g * g
            decay = t["weight_decay"] if name in DECAYED else 0.0
            p -= lr * ((m / bc1) / (np.sqrt(v / bc2) + t["eps"]) + decay * p)
        return lr, norm


# ---- training ----

REQUIRED_TRAINING = ["batch_size", "seq_len", "tokens_per_step", "max_steps", "lr", "min_lr", "warmup_steps",
                     "schedule", "weight_decay", "beta1", "beta2", "eps", "grad_clip"]


def read_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ReferenceError(f"cannot read config {path}: {error}") from None
    training = config.get("training", {})
    missing = [f"training.{k}" for k in REQUIRED_TRAINING if k not in training]
    missing += [f"{s}.{k}" for s, k in (("model", "init_from"), ("data", "train")) if not config.get(s, {}).get(k)]
    if missing:
        raise ReferenceError(f"{path} lacks {', '.join(missing)}: pass a resolved config (the config.json in a run's "
                             "output.dir, or ./train_gpt --config X --print-config)")
    if config.get("data", {}).get("shuffle", 0):
        raise ReferenceError(f"{path} has data.shuffle = 1: the reference reads the train data front to back, "
                             "as train_gpt does with --set data.shuffle=0")
    return config


def train(config, steps=None, on_step=None):
    """Trains from config's model.init_from; returns (shape, float64 params, list of step records)."""
    t = config["training"]
    shape, params32 = read_model(config["model"]["init_from"])
    params = {name: p.astype(np.float64) for name, p in params32.items()}
    B, T = t["batch_size"], t["seq_len"]
    micro = 1 if not t["tokens_per_step"] else t["tokens_per_step"] // (B * T)
    if t["tokens_per_step"] and t["tokens_per_step"] != micro * B * T:
        raise ReferenceError(f"tokens_per_step {t['tokens_per_step']} is not a multiple of {B} x {T}")
    batches = Batches(config["data"]["train"], B, T, shape["vocab_size"])
    optimizer = AdamW(params, t)
    records = []
    for step in range(t["max_steps"] if steps is None else steps):
        grads = {name: np.zeros_like(p) for name, p in params.items()}
        loss_sum = 0.0
        for _ in range(micro):
            inputs, targets = batches.next()
            _, loss, cache = forward(params, shape, inputs, targets)
            loss_sum += loss
            for name, g in backward(params, shape, cache, 1.0 / micro).items():
                grads[name] += g
        lr, norm = optimizer.step(params, grads, step)
        record = {"step": step + 1, "loss": loss_sum / micro, "lr": lr, "grad_norm": norm}
        records.append(record)
        if on_step:
            on_step(record)
    return shape, params, records


def main(argv):
    parser = argparse.ArgumentParser(
        description="Float64 NumPy reference of train_gpt's fp32 training: GPT-2 forward/backward and AdamW "
                    "from model.init_from on data.train, per-step losses like log.jsonl.",
        epilog="CONFIG: a resolved train_gpt config (a run's config.json, or ./train_gpt --config X "
               "--print-config > resolved.json) with model.init_from set and data.shuffle = 0 (the reference "
               "reads the train data front to back).")
    parser.add_argument("config", metavar="CONFIG", help="resolved train_gpt config (JSON)")
    parser.add_argument("--steps", type=int, help="steps to train (default: training.max_steps)")
    parser.add_argument("--log", metavar="FILE", help="write the per-step records here, one JSON object a line")
    parser.add_argument("--out-model", metavar="FILE", help="write the final weights as an fp32 llm.c model file")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 0:
        parser.error("--steps must be at least 0")
    try:
        config = read_config(args.config)
        log = open(args.log, "w", encoding="utf-8") if args.log else None

        def on_step(record):
            line = json.dumps(record)
            print(line, flush=True)
            if log:
                log.write(line + "\n")

        shape, params, _ = train(config, args.steps, on_step)
        if log:
            log.close()
        if args.out_model:
            write_model(args.out_model, shape, params)
    except (ReferenceError, LlmcError, OSError) as error:
        print(f"reference.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
