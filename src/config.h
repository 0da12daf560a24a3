// The run configuration: JSON sections of DESIGN.md, one table of keys with types, defaults and ranges.
#ifndef LP_CONFIG_H
#define LP_CONFIG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CONFIG_PATH_MAX 512
#define CONFIG_NAME_MAX 64

typedef struct {
    struct {
        int n_layer, n_head, n_embd, block_size, vocab_size;
        char init_from[CONFIG_PATH_MAX];  // llm.c GPT-2 model file to start from ("" = random init)
    } model;
    struct {
        char train[CONFIG_PATH_MAX];      // glob pattern of train shards
        char val[CONFIG_PATH_MAX];        // glob pattern of val shards
        char tokenizer[CONFIG_PATH_MAX];  // llm.c tokenizer file for decoding samples ("" = none)
        int shuffle;                      // 1: train batches in a per-epoch permuted order (data.h)
    } data;
    struct {
        int batch_size, seq_len;
        long tokens_per_step;  // 0 = batch_size * seq_len (no accumulation)
        int max_steps;
        float lr, min_lr;
        int warmup_steps;
        char schedule[CONFIG_NAME_MAX];  // "cosine" | "linear" | "constant"
        float weight_decay, beta1, beta2, eps, grad_clip;
        uint64_t seed;
        int eval_every, eval_batches, sample_every, sample_tokens, checkpoint_every;
        int eval_at_start;  // 1: the validation loss before the first step, logged as step 0 (not on resume)
        int zero;  // 1: ZeRO-1, the optimizer state sharded across ranks (docs/distributed.md)
        float divergence_margin;  // stop as diverged when the loss's moving average exceeds the first loss by this (0 = off)
    } training;
    struct {
        char policy[CONFIG_NAME_MAX];  // preset name
        // Axis overrides; "preset" keeps the preset's choice (see policy.h for the meanings).
        char weights[CONFIG_NAME_MAX];    // fp32 | bf16 | int2 .. int8 | ternary | bitnet
        char embeddings[CONFIG_NAME_MAX]; // grid | fp32 | bf16: wte, wpe under grid or bitnet weights
        int dqt_rescale;                  // 1: the grid's scale follows the weights every step
        char activation_quant[CONFIG_NAME_MAX];  // none | int8: block linear inputs under grid or bitnet weights
        char update[CONFIG_NAME_MAX];     // exact | master | rne | mcf | kahan | sr | grid_sr
        char adam_m[CONFIG_NAME_MAX];     // fp32 | bf16 | mcf
        char adam_v[CONFIG_NAME_MAX];     // fp32 | bf16 | mcf
        char grads[CONFIG_NAME_MAX];      // fp32 | bf16
        char matmul[CONFIG_NAME_MAX];     // fp32 | bf16 | fp8 | eXmY
        char attention[CONFIG_NAME_MAX];  // fp32 | bf16 | fp8 | eXmY: attention products QK^T and PV
        char attention_impl[CONFIG_NAME_MAX];  // fused | materialized: how attention is computed (policy.h)
        char lm_head[CONFIG_NAME_MAX];    // fp32 | bf16 | fp8 | eXmY: the LM head's product
        char activations[CONFIG_NAME_MAX];  // fp32 | bf16: tensors stored between ops
        char matmul_rounding[CONFIG_NAME_MAX];  // eXmY matmuls: nearest | toward_zero | bf16_truncate
        char scaling[CONFIG_NAME_MAX];          // fp8 matmuls: delayed | current
        int amax_history;                       // fp8 delayed scaling: history length in steps
        int margin;                             // fp8: scale = (fmt_max / amax) / 2^margin
        int allow_tf32;                         // 1: fp32 products may use TF32 (CUDA backend only)
    } precision;
    struct {
        int every;            // update-quality metrics every N steps (0 = off)
        float sharpness;      // epsilon of the logit sharpness at eval (0 = off)
        int sharpness_steps;  // its projected gradient-ascent steps
    } metrics;
    struct {
        char dir[CONFIG_PATH_MAX];
        char export_format[CONFIG_NAME_MAX];  // model.bin at the end: fp32 (llm.c version 3) | bf16 (5) | none
        int final_checkpoint;                 // 1: a checkpoint at max_steps (0: only every checkpoint_every)
        int overwrite;                        // 1: a new run into a directory holding a run deletes its outputs
    } output;
} Config;

void config_defaults(Config *cfg);
// What a run did for the keys added to the program after it started: the defaults, except where a key's
// default is not what the program did before the key existed. precision.attention_impl is one: its default
// is fused, while every earlier run computed attention materialized. (A checkpoint's identity lacking a key
// resumes only with that key at this value: trainer.c, run_identity_check.)
void config_before_new_keys(Config *cfg);
// Resets cfg to the defaults and loads a JSON file over them. `name` is a path, or a file name looked up in
// configs/ (with or without ".json"). Exits through fatal() with file and JSON path on malformed JSON,
// unknown keys (suggesting the nearest valid key), wrong types and out-of-range values. The path actually
// read is copied to resolved_path (CONFIG_PATH_MAX bytes) when it is not NULL.
void config_load(Config *cfg, const char *name, char *resolved_path);
// Applies one "section.key=value" override with the same checks.
void config_set(Config *cfg, const char *assignment);
// Cross-field checks (n_embd divisible by n_head, seq_len <= block_size, tokens_per_step a multiple of
// batch_size*seq_len, ...); fatal() on the first violation.
void config_validate(const Config *cfg);
// The resolved configuration as pretty-printed JSON; the caller frees it.
char *config_to_json(const Config *cfg);
// The run's identity as far as the config fixes it: "section.key = value" lines for every key that a resumed
// run may not change (all but the resumable keys). The caller frees it.
char *config_identity_text(const Config *cfg);

#ifdef __cplusplus
}
#endif

#endif
