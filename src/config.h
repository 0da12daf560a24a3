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
    } training;
    struct {
        char policy[CONFIG_NAME_MAX];  // preset name
    } precision;
    struct {
        int every;  // update-quality metrics every N steps (0 = off)
    } metrics;
    struct {
        char dir[CONFIG_PATH_MAX];
    } output;
} Config;

void config_defaults(Config *cfg);
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

#ifdef __cplusplus
}
#endif

#endif
