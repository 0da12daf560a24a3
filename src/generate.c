// Text generation from a trained model: what to load (config, weights, tokenizer), the prompt's tokens,
// and the print-out; the sampling itself is sample.c's.
#include "generate.h"

#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend_choice.h"
#include "checkpoint.h"
#include "config.h"
#include "llmc_model.h"
#include "policy.h"
#include "sample.h"
#include "tokenizer.h"
#include "util.h"

#define GENERATE_RNG_TENSOR 0x6E6Eu

// What --generate names: the weights (an llm.c model file or our checkpoint) and the config beside them.
typedef struct {
    char model[CONFIG_PATH_MAX + 64];   // llm.c model file, or "" when the weights come from a checkpoint
    char checkpoint[CONFIG_PATH_MAX + 64];
    char config[CONFIG_PATH_MAX + 16];  // the run's config.json, or "" when there is none
} GenerateSource;

static int is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

// The run's newest checkpoint of rank 0 (step_N.ckpt; names sort by step, zero-padded), or "".
static void newest_checkpoint(const char *run_dir, char *path, size_t len) {
    char pattern[CONFIG_PATH_MAX + 64];
    snprintf(pattern, sizeof pattern, "%s/checkpoints/step_*.ckpt", run_dir);
    path[0] = '\0';
    glob_t found;
    if (glob(pattern, 0, NULL, &found) != 0) return;
    for (size_t i = found.gl_pathc; i-- > 0;) {
        if (!strstr(found.gl_pathv[i], ".rank")) {
            snprintf(path, len, "%s", found.gl_pathv[i]);
            break;
        }
    }
    globfree(&found);
}

static GenerateSource find_source(const char *arg) {
    GenerateSource src;
    memset(&src, 0, sizeof src);
    char dir[CONFIG_PATH_MAX];
    if (is_directory(arg)) {
        snprintf(dir, sizeof dir, "%s", arg);
        snprintf(src.model, sizeof src.model, "%s/model.bin", arg);
        if (!file_exists(src.model)) {
            src.model[0] = '\0';
            newest_checkpoint(arg, src.checkpoint, sizeof src.checkpoint);
            if (!src.checkpoint[0]) {
                fatal("--generate %s: the run has no model.bin and no checkpoints/step_*.ckpt", arg);
            }
        }
    } else if (file_exists(arg)) {
        snprintf(src.model, sizeof src.model, "%s", arg);
        const char *slash = strrchr(arg, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - arg) : 1, slash ? arg : ".");
    } else {
        fatal("--generate %s: no such run directory or model file", arg);
    }
    snprintf(src.config, sizeof src.config, "%s/config.json", dir);
    if (!file_exists(src.config)) {
        if (is_directory(arg)) fatal("--generate %s: the run has no config.json", arg);
        src.config[0] = '\0';
    }
    return src;
}

// --config, else the run's config.json, else the defaults; then --set; a model file fixes the shape.
static void load_config(Config *cfg, const CliOptions *opt, const GenerateSource *src) {
    config_defaults(cfg);
    if (opt->config) config_load(cfg, opt->config, NULL);
    else if (src->config[0]) config_load(cfg, src->config, NULL);
    for (int i = 0; i < opt->num_sets; i++) config_set(cfg, opt->sets[i]);
    if (src->model[0]) {
        ModelShape shape = llmc_model_read_shape(src->model);
        cfg->model.n_layer = shape.n_layer;
        cfg->model.n_head = shape.n_head;
        cfg->model.n_embd = shape.n_embd;
        cfg->model.block_size = shape.block_size;
        cfg->model.vocab_size = shape.vocab_size;
        // Training keys do not matter here, but must still pass validation against the file's context.
        if (cfg->training.seq_len > shape.block_size) cfg->training.seq_len = shape.block_size;
    }
    config_validate(cfg);
}

// A model file holds the weights as the run's forward read them: stored as fp32, they stay exactly those
// (storing them again in the policy's format could move them: a DQT grid's scale would be recomputed).
// Only the policy's products and casts remain.
static Policy forward_policy(const Policy *policy) {
    Policy p = *policy;
    p.weights = WEIGHTS_FP32;
    p.update = UPDATE_EXACT;
    p.adam_m = STATE_FP32;
    p.adam_v = STATE_FP32;
    p.grads = GRADS_FP32;
    return p;
}

// The backend holding the weights. With decode_step it needs no activations for a whole window.
static Backend *load_backend(const BackendOps *ops, const ParamTable *table, const Policy *policy,
                             const GenerateSource *src) {
    int T = ops->decode_step ? 1 : table->shape.block_size;
    float *params = xmalloc(table->num_params * sizeof(float));
    Backend *backend;
    if (src->model[0]) {
        llmc_model_load(src->model, table, params);
        Policy p = forward_policy(policy);
        backend = ops->create(table, &p, 1, T, params);
    } else {
        // The policy's own storage, read from the checkpoint's sections of it (not the trainer's).
        gpt_init_params(table, params, 0);
        backend = ops->create(table, policy, 1, T, params);
        BackendState *state = ops->state_save(backend);
        checkpoint_read_named(src->checkpoint, state->sections, state->count);
        ops->state_load(backend);
    }
    free(params);
    return backend;
}

// "1,2,3" as ids below vocab_size; returns the count.
static int parse_ids(const char *text, int vocab_size, int *ids, int max_ids) {
    int n = 0;
    for (const char *p = text; *p;) {
        char *end;
        long id = strtol(p, &end, 10);
        if (end == p || (*end != ',' && *end != '\0')) {
            fatal("--prompt-ids %s: expected comma-separated token ids", text);
        }
        if (id < 0 || id >= vocab_size) {
            fatal("--prompt-ids: id %ld (number %d) is not below the vocab size %d", id, n + 1, vocab_size);
        }
        if (n == max_ids) fatal("--prompt-ids: more than the model's context of %d tokens", max_ids);
        ids[n++] = (int)id;
        p = *end ? end + 1 : end;
    }
    return n;
}

// The prompt's tokens after the end-of-text token that starts every document (prepare_data.py), or, with
// no tokenizer, the ids alone. Returns the count, the end-of-text token included.
static int prompt_tokens(const CliOptions *opt, const Config *cfg, const Tokenizer *tok, int *ids) {
    int context = cfg->model.block_size, n = 0;
    if (tok) ids[n++] = tokenizer_eot(tok);
    if (opt->prompt) {
        if (!tok) fatal("--prompt: the run has no tokenizer (data.tokenizer is empty): give --prompt-ids");
        if (!tokenizer_is_byte_level(tok)) {
            fatal("--prompt: %s is not a byte-level tokenizer (GPT-2 BPE?), which train_gpt cannot encode: use "
                  "--prompt-ids $(python3 scripts/encode_prompt.py --tokenizer gpt2 \"TEXT\")", cfg->data.tokenizer);
        }
        if ((long)strlen(opt->prompt) + n > context) {
            fatal("--prompt: %zu tokens and the end-of-text token exceed the model's context of %d tokens",
                  strlen(opt->prompt), context);
        }
        tokenizer_encode_bytes(tok, opt->prompt, ids + n);
        return n + (int)strlen(opt->prompt);
    }
    if (opt->prompt_ids) n += parse_ids(opt->prompt_ids, cfg->model.vocab_size, ids + n, context - n);
    if (n == 0) {
        fatal("--generate: the run has no tokenizer (data.tokenizer is empty) to start from end-of-text: give "
              "--prompt-ids");
    }
    return n;
}

static void print_ids(const char *label, const int *ids, int n) {
    printf("%s", label);
    for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
    printf("\n");
}

int generate_main(const CliOptions *opt, const BackendOps *cuda_ops, int cuda_devices) {
    GenerateSource src = find_source(opt->generate);
    Config cfg;
    load_config(&cfg, opt, &src);
    Policy policy = policy_from_config(&cfg);
    Tokenizer *tok = cfg.data.tokenizer[0] ? tokenizer_load(cfg.data.tokenizer) : NULL;
    if (tok && tokenizer_vocab_size(tok) != cfg.model.vocab_size) {
        fatal("%s has %d tokens, the model %d: not the run's tokenizer", cfg.data.tokenizer,
              tokenizer_vocab_size(tok), cfg.model.vocab_size);
    }
    int *prompt = xmalloc((size_t)cfg.model.block_size * sizeof(int));
    int prompt_len = prompt_tokens(opt, &cfg, tok, prompt);
    const BackendOps *ops = choose_backend(opt->device, cuda_ops, cuda_devices, 0);
    ModelShape shape = {cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size,
                        cfg.model.vocab_size, padded_vocab_size(cfg.model.vocab_size)};
    ParamTable table;
    param_table_init(&table, &shape);
    Backend *backend = load_backend(ops, &table, &policy, &src);

    uint64_t seed = opt->seed ? strtoull(opt->seed, NULL, 10) : cfg.training.seed;
    SampleSettings settings = {opt->tokens, opt->temperature, opt->top_k, cfg.model.block_size,
                               {seed, 0, GENERATE_RNG_TENSOR}};
    int *continuation = xmalloc((size_t)(opt->tokens > 0 ? opt->tokens : 1) * sizeof(int));
    sample_tokens(ops, backend, cfg.model.vocab_size, prompt, prompt_len, &settings, continuation);
    if (tok) {
        char *prompt_text = tokenizer_decode_all(tok, prompt + 1, prompt_len - 1);  // without the end-of-text
        char *text = tokenizer_decode_all(tok, continuation, opt->tokens);
        printf("%s%s\n", prompt_text, text);
        free(prompt_text);
        free(text);
    } else {
        print_ids("prompt: ", prompt, prompt_len);
        print_ids("continuation: ", continuation, opt->tokens);
    }
    ops->destroy(backend);
    tokenizer_free(tok);
    free(continuation);
    free(prompt);
    return 0;
}
