// The run configuration. One table, config_keys, describes every key: its JSON section and name, its C type
// and place in Config, its default and its allowed values. Defaults, JSON loading, --set overrides, range
// checks, JSON output and "did you mean" suggestions all walk that table, so a new key is one line there.
#include "config.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util.h"

typedef enum { KEY_INT, KEY_LONG, KEY_UINT64, KEY_FLOAT, KEY_STRING } KeyType;

// Which ends of [min, max] are allowed: most ranges are closed, but lr and eps must be > 0 and betas < 1.
typedef enum { CLOSED, MIN_EXCLUSIVE, MAX_EXCLUSIVE } RangeKind;

typedef struct {
    const char *section;
    const char *name;
    KeyType type;
    size_t offset;             // of the field in Config
    const char *default_text;  // read like a --set value
    double min, max;           // numbers: the allowed values; strings: the allowed length in bytes
    RangeKind range;
    const char *const *choices;  // strings: the allowed values (NULL = any)
} ConfigKey;

#define PATH_LEN (CONFIG_PATH_MAX - 1)
#define NAME_LEN (CONFIG_NAME_MAX - 1)

static const char *const schedules[] = {"cosine", "linear", "constant", NULL};
// Precision axes: "preset" keeps the preset's choice; policy.c gives the values their meaning.
static const char *const weight_choices[] = {"preset", "fp32", "bf16", "int2", "int3", "int4", "int5", "int6",
                                             "int7", "int8", "ternary", "bitnet", NULL};
static const char *const embedding_choices[] = {"preset", "grid", "fp32", "bf16", NULL};
static const char *const update_choices[] = {"preset", "exact", "master", "rne", "mcf", "kahan", "sr", "grid_sr", NULL};
static const char *const moment_choices[] = {"preset", "fp32", "bf16", "mcf", NULL};
static const char *const grad_choices[] = {"preset", "fp32", "bf16", NULL};
static const char *const activation_choices[] = {"preset", "fp32", "bf16", NULL};
static const char *const activation_quant_choices[] = {"none", "int8", NULL};
static const char *const attention_impl_choices[] = {"fused", "materialized", NULL};
static const char *const rounding_choices[] = {"nearest", "toward_zero", "bf16_truncate", NULL};
static const char *const scaling_choices[] = {"delayed", "current", NULL};
static const char *const export_choices[] = {"fp32", "bf16", "none", NULL};

// One row per key, fields as in ConfigKey. The order here is the order of config_to_json's output.
static const ConfigKey config_keys[] = {
    {"model", "n_layer", KEY_INT, offsetof(Config, model.n_layer), "4", 1, INFINITY, CLOSED, NULL},
    {"model", "n_head", KEY_INT, offsetof(Config, model.n_head), "4", 1, INFINITY, CLOSED, NULL},
    {"model", "n_embd", KEY_INT, offsetof(Config, model.n_embd), "128", 1, INFINITY, CLOSED, NULL},
    {"model", "block_size", KEY_INT, offsetof(Config, model.block_size), "256", 1, INFINITY, CLOSED, NULL},
    {"model", "vocab_size", KEY_INT, offsetof(Config, model.vocab_size), "257", 2, 65536, CLOSED, NULL},  // uint16 tokens
    {"model", "init_from", KEY_STRING, offsetof(Config, model.init_from), "", 0, PATH_LEN, CLOSED, NULL},
    {"data", "train", KEY_STRING, offsetof(Config, data.train), "data/fortunes/train_*.bin", 1, PATH_LEN, CLOSED, NULL},
    {"data", "val", KEY_STRING, offsetof(Config, data.val), "data/fortunes/val_*.bin", 0, PATH_LEN, CLOSED, NULL},
    {"data", "tokenizer", KEY_STRING, offsetof(Config, data.tokenizer), "data/fortunes/tokenizer.bin", 0, PATH_LEN, CLOSED, NULL},
    {"data", "shuffle", KEY_INT, offsetof(Config, data.shuffle), "1", 0, 1, CLOSED, NULL},  // train batches only
    {"training", "batch_size", KEY_INT, offsetof(Config, training.batch_size), "8", 1, INFINITY, CLOSED, NULL},
    {"training", "seq_len", KEY_INT, offsetof(Config, training.seq_len), "128", 1, INFINITY, CLOSED, NULL},
    {"training", "tokens_per_step", KEY_LONG, offsetof(Config, training.tokens_per_step), "0", 0, INFINITY, CLOSED, NULL},
    {"training", "max_steps", KEY_INT, offsetof(Config, training.max_steps), "200", 1, INFINITY, CLOSED, NULL},
    {"training", "lr", KEY_FLOAT, offsetof(Config, training.lr), "1e-3", 0, INFINITY, MIN_EXCLUSIVE, NULL},
    {"training", "min_lr", KEY_FLOAT, offsetof(Config, training.min_lr), "1e-4", 0, INFINITY, CLOSED, NULL},
    {"training", "warmup_steps", KEY_INT, offsetof(Config, training.warmup_steps), "20", 0, INFINITY, CLOSED, NULL},
    {"training", "schedule", KEY_STRING, offsetof(Config, training.schedule), "cosine", 1, NAME_LEN, CLOSED, schedules},
    {"training", "weight_decay", KEY_FLOAT, offsetof(Config, training.weight_decay), "0.1", 0, INFINITY, CLOSED, NULL},
    {"training", "beta1", KEY_FLOAT, offsetof(Config, training.beta1), "0.9", 0, 1, MAX_EXCLUSIVE, NULL},
    {"training", "beta2", KEY_FLOAT, offsetof(Config, training.beta2), "0.95", 0, 1, MAX_EXCLUSIVE, NULL},
    {"training", "eps", KEY_FLOAT, offsetof(Config, training.eps), "1e-8", 0, INFINITY, MIN_EXCLUSIVE, NULL},
    {"training", "grad_clip", KEY_FLOAT, offsetof(Config, training.grad_clip), "1.0", 0, INFINITY, CLOSED, NULL},  // 0 = off
    {"training", "seed", KEY_UINT64, offsetof(Config, training.seed), "1337", 0, INFINITY, CLOSED, NULL},
    {"training", "eval_every", KEY_INT, offsetof(Config, training.eval_every), "50", 0, INFINITY, CLOSED, NULL},
    {"training", "eval_batches", KEY_INT, offsetof(Config, training.eval_batches), "8", 1, INFINITY, CLOSED, NULL},
    {"training", "eval_at_start", KEY_INT, offsetof(Config, training.eval_at_start), "1", 0, 1, CLOSED, NULL},
    {"training", "sample_every", KEY_INT, offsetof(Config, training.sample_every), "0", 0, INFINITY, CLOSED, NULL},
    {"training", "sample_tokens", KEY_INT, offsetof(Config, training.sample_tokens), "64", 0, INFINITY, CLOSED, NULL},
    {"training", "checkpoint_every", KEY_INT, offsetof(Config, training.checkpoint_every), "0", 0, INFINITY, CLOSED, NULL},
    {"training", "zero", KEY_INT, offsetof(Config, training.zero), "0", 0, 1, CLOSED, NULL},  // ZeRO stage: 0 or 1
    {"training", "divergence_margin", KEY_FLOAT, offsetof(Config, training.divergence_margin), "1.0", 0, INFINITY, CLOSED, NULL},  // 0 = off
    {"precision", "policy", KEY_STRING, offsetof(Config, precision.policy), "fp32", 1, NAME_LEN, CLOSED, NULL},
    {"precision", "weights", KEY_STRING, offsetof(Config, precision.weights), "preset", 1, NAME_LEN, CLOSED, weight_choices},
    {"precision", "embeddings", KEY_STRING, offsetof(Config, precision.embeddings), "preset", 1, NAME_LEN, CLOSED, embedding_choices},
    {"precision", "dqt_rescale", KEY_INT, offsetof(Config, precision.dqt_rescale), "0", 0, 1, CLOSED, NULL},
    {"precision", "activation_quant", KEY_STRING, offsetof(Config, precision.activation_quant), "none", 1, NAME_LEN, CLOSED, activation_quant_choices},
    {"precision", "update", KEY_STRING, offsetof(Config, precision.update), "preset", 1, NAME_LEN, CLOSED, update_choices},
    {"precision", "adam_m", KEY_STRING, offsetof(Config, precision.adam_m), "preset", 1, NAME_LEN, CLOSED, moment_choices},
    {"precision", "adam_v", KEY_STRING, offsetof(Config, precision.adam_v), "preset", 1, NAME_LEN, CLOSED, moment_choices},
    {"precision", "grads", KEY_STRING, offsetof(Config, precision.grads), "preset", 1, NAME_LEN, CLOSED, grad_choices},
    {"precision", "matmul", KEY_STRING, offsetof(Config, precision.matmul), "preset", 1, NAME_LEN, CLOSED, NULL},
    {"precision", "attention", KEY_STRING, offsetof(Config, precision.attention), "preset", 1, NAME_LEN, CLOSED, NULL},
    {"precision", "attention_impl", KEY_STRING, offsetof(Config, precision.attention_impl), "fused", 1, NAME_LEN, CLOSED, attention_impl_choices},
    {"precision", "lm_head", KEY_STRING, offsetof(Config, precision.lm_head), "preset", 1, NAME_LEN, CLOSED, NULL},
    {"precision", "activations", KEY_STRING, offsetof(Config, precision.activations), "preset", 1, NAME_LEN, CLOSED, activation_choices},
    {"precision", "matmul_rounding", KEY_STRING, offsetof(Config, precision.matmul_rounding), "nearest", 1, NAME_LEN, CLOSED, rounding_choices},
    {"precision", "scaling", KEY_STRING, offsetof(Config, precision.scaling), "delayed", 1, NAME_LEN, CLOSED, scaling_choices},
    {"precision", "amax_history", KEY_INT, offsetof(Config, precision.amax_history), "16", 1, 1024, CLOSED, NULL},
    {"precision", "margin", KEY_INT, offsetof(Config, precision.margin), "0", 0, 64, CLOSED, NULL},
    {"precision", "allow_tf32", KEY_INT, offsetof(Config, precision.allow_tf32), "0", 0, 1, CLOSED, NULL},
    {"metrics", "every", KEY_INT, offsetof(Config, metrics.every), "0", 0, INFINITY, CLOSED, NULL},
    {"metrics", "sharpness", KEY_FLOAT, offsetof(Config, metrics.sharpness), "0", 0, 1, CLOSED, NULL},
    {"metrics", "sharpness_steps", KEY_INT, offsetof(Config, metrics.sharpness_steps), "5", 1, 1000, CLOSED, NULL},
    {"output", "dir", KEY_STRING, offsetof(Config, output.dir), "runs/default", 1, PATH_LEN, CLOSED, NULL},
    {"output", "export", KEY_STRING, offsetof(Config, output.export_format), "fp32", 1, NAME_LEN, CLOSED, export_choices},
    {"output", "final_checkpoint", KEY_INT, offsetof(Config, output.final_checkpoint), "1", 0, 1, CLOSED, NULL},
    {"output", "overwrite", KEY_INT, offsetof(Config, output.overwrite), "0", 0, 1, CLOSED, NULL},
};

#define NUM_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

// The keys a resumed run may change (README, "Runs and resume"): how long and how fast it trains from here,
// what it reports, where its data files lie (their contents are checked instead) and how it writes outputs.
// Every other key is part of the run's identity, recorded in its checkpoints.
static const char *const resumable_keys[] = {
    "model.init_from",          // the checkpoint, not the model file, holds the weights
    "data.train", "data.val", "data.tokenizer",
    "training.max_steps", "training.lr", "training.min_lr", "training.warmup_steps", "training.schedule",
    "training.eval_every", "training.eval_batches", "training.sample_every", "training.sample_tokens",
    "training.checkpoint_every", "training.divergence_margin",
    "metrics.every", "metrics.sharpness", "metrics.sharpness_steps",
    "output.dir",               // a run directory may move: --resume DIR names where it is now
    "output.export", "output.final_checkpoint", "output.overwrite",
    NULL,
};

// JSON numbers are doubles, which hold every integer exactly only up to 2^53 - 1.
#define MAX_EXACT_INTEGER 9007199254740991.0

// Room for an error location: a file path plus a JSON path, or a --set argument.
#define WHERE_MAX (CONFIG_PATH_MAX + 256)

// ---------------------------------------------------------------------------------------------------------
// Looking keys up, and suggesting the nearest one for a typo

static const ConfigKey *find_key(const char *section, const char *name) {
    for (size_t i = 0; i < NUM_KEYS; i++) {
        if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].name, name) == 0) {
            return &config_keys[i];
        }
    }
    return NULL;
}

static int is_section(const char *name) {
    for (size_t i = 0; i < NUM_KEYS; i++) {
        if (strcmp(config_keys[i].section, name) == 0) return 1;
    }
    return 0;
}

// True for the table entry that introduces its section (sections are listed once, in table order).
static int first_of_section(size_t index) {
    for (size_t i = 0; i < index; i++) {
        if (strcmp(config_keys[i].section, config_keys[index].section) == 0) return 0;
    }
    return 1;
}

// Levenshtein distance, ignoring case.
static size_t edit_distance(const char *a, const char *b) {
    size_t n = strlen(b);
    size_t *prev = xmalloc((n + 1) * sizeof(size_t));
    size_t *cur = xmalloc((n + 1) * sizeof(size_t));
    for (size_t j = 0; j <= n; j++) prev[j] = j;
    for (size_t i = 1; a[i - 1]; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= n; j++) {
            int same = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]);
            size_t best = prev[j - 1] + (same ? 0 : 1);
            if (prev[j] + 1 < best) best = prev[j] + 1;
            if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
            cur[j] = best;
        }
        size_t *swap = prev;
        prev = cur;
        cur = swap;
    }
    size_t distance = prev[n];
    free(prev);
    free(cur);
    return distance;
}

// How many edits still count as a typo; beyond that a suggestion would name an unrelated key.
static size_t typo_budget(const char *typed) {
    size_t budget = strlen(typed) / 3;
    return budget > 2 ? budget : 2;
}

// The key nearest to section.name: keys of that section by the edit distance of their names, keys of other
// sections one edit further (so "training.n_layer" finds "model.n_layer"). section may be NULL or unknown.
static const ConfigKey *nearest_key(const char *section, const char *name) {
    const ConfigKey *best = NULL;
    size_t best_score = typo_budget(name) + 1;
    for (size_t i = 0; i < NUM_KEYS; i++) {
        int same_section = section && strcmp(config_keys[i].section, section) == 0;
        size_t score = edit_distance(name, config_keys[i].name) + (same_section ? 0 : 1);
        if (score < best_score) {
            best = &config_keys[i];
            best_score = score;
        }
    }
    return best;
}

static const char *nearest_section(const char *name) {
    const char *best = NULL;
    size_t best_score = typo_budget(name) + 1;
    for (size_t i = 0; i < NUM_KEYS; i++) {
        size_t score = edit_distance(name, config_keys[i].section);
        if (score < best_score) {
            best = config_keys[i].section;
            best_score = score;
        }
    }
    return best;
}

static const char *nearest_choice(const char *const *choices, const char *value) {
    const char *best = NULL;
    size_t best_score = typo_budget(value) + 1;
    for (size_t i = 0; choices[i]; i++) {
        size_t score = edit_distance(value, choices[i]);
        if (score < best_score) {
            best = choices[i];
            best_score = score;
        }
    }
    return best;
}

// Appends item to a ", "-separated list in buf (truncating quietly: it only feeds an error message).
static void append_to_list(char *buf, size_t size, const char *item) {
    size_t used = strlen(buf);
    snprintf(buf + used, size - used, "%s%s", used ? ", " : "", item);
}

_Noreturn static void fail_unknown_key(const char *where, const char *section, const char *name) {
    char typed[WHERE_MAX];
    snprintf(typed, sizeof(typed), "%s%s%s", section ? section : "", section ? "." : "", name);
    const ConfigKey *near = nearest_key(section, name);
    if (near) fatal("%s: unknown key \"%s\" (did you mean \"%s.%s\"?)", where, typed, near->section, near->name);
    char list[1024] = "";
    if (section && is_section(section)) {
        for (size_t i = 0; i < NUM_KEYS; i++) {
            if (strcmp(config_keys[i].section, section) == 0) append_to_list(list, sizeof(list), config_keys[i].name);
        }
        fatal("%s: unknown key \"%s\" (the keys of %s are: %s)", where, typed, section, list);
    }
    for (size_t i = 0; i < NUM_KEYS; i++) {
        if (first_of_section(i)) append_to_list(list, sizeof(list), config_keys[i].section);
    }
    fatal("%s: unknown key \"%s\" (keys are SECTION.KEY, with SECTION one of: %s)", where, typed, list);
}

_Noreturn static void fail_unknown_section(const char *where, const char *name) {
    const char *near = nearest_section(name);
    if (near) fatal("%s: unknown section \"%s\" (did you mean \"%s\"?)", where, name, near);
    const ConfigKey *key = nearest_key(NULL, name);
    if (key) {
        fatal("%s: unknown section \"%s\" (did you mean the key \"%s.%s\"? keys go inside their section)", where,
              name, key->section, key->name);
    }
    char list[1024] = "";
    for (size_t i = 0; i < NUM_KEYS; i++) {
        if (first_of_section(i)) append_to_list(list, sizeof(list), config_keys[i].section);
    }
    fatal("%s: unknown section \"%s\" (the sections are: %s)", where, name, list);
}

// ---------------------------------------------------------------------------------------------------------
// Checking and storing one value

static void *field_of(Config *cfg, const ConfigKey *key) { return (char *)cfg + key->offset; }
static const void *const_field_of(const Config *cfg, const ConfigKey *key) {
    return (const char *)cfg + key->offset;
}

static const char *expected_kind(KeyType type) {
    switch (type) {
    case KEY_INT:
    case KEY_LONG:
    case KEY_UINT64: return "an integer";
    case KEY_FLOAT: return "a number";
    case KEY_STRING: return "a string";
    }
    return "?";
}

static void integer_limits(KeyType type, double *lo, double *hi) {
    if (type == KEY_INT) {
        *lo = INT_MIN;
        *hi = INT_MAX;
        return;
    }
    *lo = type == KEY_UINT64 ? 0 : -MAX_EXACT_INTEGER;
    *hi = MAX_EXACT_INTEGER;
}

static int in_range(const ConfigKey *key, double value) {
    if (value < key->min || value > key->max) return 0;
    if (key->range == MIN_EXCLUSIVE && value == key->min) return 0;
    if (key->range == MAX_EXCLUSIVE && value == key->max) return 0;
    return 1;
}

// The allowed range as inequalities, e.g. "lr > 0" or "0 <= beta1 < 1".
static void describe_range(const ConfigKey *key, char *buf, size_t size) {
    const char *lower = key->range == MIN_EXCLUSIVE ? "<" : "<=";
    const char *upper = key->range == MAX_EXCLUSIVE ? "<" : "<=";
    if (isinf(key->max)) {
        snprintf(buf, size, "%s %s %g", key->name, key->range == MIN_EXCLUSIVE ? ">" : ">=", key->min);
    } else {
        snprintf(buf, size, "%g %s %s %s %g", key->min, lower, key->name, upper, key->max);
    }
}

// Checks that value can be stored in the key's type and lies in its range. where names it in errors.
static void check_number(const ConfigKey *key, double value, const char *where) {
    if (!isfinite(value)) fatal("%s: expected a finite number, got %g", where, value);
    double stored = value;
    if (key->type == KEY_FLOAT) {
        if (fabs(value) > FLT_MAX) fatal("%s: %.15g is too large for a float", where, value);
        stored = (float)value;
    } else {
        if (value != floor(value)) fatal("%s: expected an integer, got %.15g", where, value);
        double lo, hi;
        integer_limits(key->type, &lo, &hi);
        if (value < lo || value > hi) {
            fatal("%s: %.15g is outside the integers this key holds (%.0f to %.0f)", where, value, lo, hi);
        }
    }
    if (!in_range(key, stored)) {
        char range[128], as_float[64] = "";
        describe_range(key, range, sizeof(range));
        // Say so when only the rounding to float put the value out of range (beta1 = 0.99999999 is 1.0f).
        if (in_range(key, value)) snprintf(as_float, sizeof(as_float), " (%.9g as a float)", stored);
        fatal("%s: %.15g%s is out of range (allowed: %s)", where, value, as_float, range);
    }
}

static void check_string(const ConfigKey *key, const char *value, const char *where) {
    size_t len = strlen(value);
    if (len < key->min) fatal("%s: must not be empty", where);  // the minimum length is 0 or 1
    if (len > key->max) fatal("%s: too long (%zu bytes, at most %.0f)", where, len, key->max);
    if (!key->choices) return;
    for (size_t i = 0; key->choices[i]; i++) {
        if (strcmp(value, key->choices[i]) == 0) return;
    }
    char list[256] = "";
    for (size_t i = 0; key->choices[i]; i++) append_to_list(list, sizeof(list), key->choices[i]);
    const char *near = nearest_choice(key->choices, value);
    if (near) fatal("%s: \"%s\" is not one of %s (did you mean \"%s\"?)", where, value, list, near);
    fatal("%s: \"%s\" is not one of %s", where, value, list);
}

static double read_number(const Config *cfg, const ConfigKey *key) {
    const void *field = const_field_of(cfg, key);
    switch (key->type) {
    case KEY_INT: return *(const int *)field;
    case KEY_LONG: return (double)*(const long *)field;
    case KEY_UINT64: return (double)*(const uint64_t *)field;
    case KEY_FLOAT: return *(const float *)field;
    case KEY_STRING: break;
    }
    return 0;
}

static void set_number(Config *cfg, const ConfigKey *key, double value, const char *where) {
    check_number(key, value, where);
    void *field = field_of(cfg, key);
    switch (key->type) {
    case KEY_INT: *(int *)field = (int)value; break;
    case KEY_LONG: *(long *)field = (long)value; break;
    case KEY_UINT64: *(uint64_t *)field = (uint64_t)value; break;
    case KEY_FLOAT: *(float *)field = (float)value; break;
    case KEY_STRING: break;
    }
}

static void set_string(Config *cfg, const ConfigKey *key, const char *value, const char *where) {
    check_string(key, value, where);
    char *field = field_of(cfg, key);
    // Clear the whole buffer so that equal configs are equal byte for byte.
    memset(field, 0, (size_t)key->max + 1);
    memcpy(field, value, strlen(value));
}

// A value written as text (--set, the table's defaults): numbers in C syntax, strings verbatim.
static void set_from_text(Config *cfg, const ConfigKey *key, const char *text, const char *where) {
    if (key->type == KEY_STRING) {
        set_string(cfg, key, text, where);
        return;
    }
    char *end;
    double value = strtod(text, &end);
    if (end == text || *end != '\0') fatal("%s: expected %s", where, expected_kind(key->type));
    set_number(cfg, key, value, where);
}

static const char *json_kind(const cJSON *item) {
    if (cJSON_IsNull(item)) return "null";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsArray(item)) return "an array";
    if (cJSON_IsObject(item)) return "an object";
    return "an invalid value";
}

static void set_from_json(Config *cfg, const ConfigKey *key, const cJSON *item, const char *where) {
    if (key->type == KEY_STRING) {
        if (!cJSON_IsString(item)) fatal("%s: expected a string, got %s", where, json_kind(item));
        set_string(cfg, key, item->valuestring, where);
    } else {
        if (!cJSON_IsNumber(item)) fatal("%s: expected %s, got %s", where, expected_kind(key->type), json_kind(item));
        set_number(cfg, key, item->valuedouble, where);
    }
}

// ---------------------------------------------------------------------------------------------------------
// The public functions

void config_defaults(Config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NUM_KEYS; i++) {
        const ConfigKey *key = &config_keys[i];
        char where[WHERE_MAX];
        snprintf(where, sizeof(where), "internal: default of %s.%s", key->section, key->name);
        set_from_text(cfg, key, key->default_text, where);
    }
}

void config_before_new_keys(Config *cfg) {
    config_defaults(cfg);
    snprintf(cfg->precision.attention_impl, sizeof cfg->precision.attention_impl, "materialized");
}

static int is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// The file `name` refers to: itself if it is a file, else configs/<name>, else configs/<name>.json.
static void resolve_config_path(const char *name, char path[CONFIG_PATH_MAX]) {
    const char *prefixes[] = {"", "configs/", "configs/"};
    const char *suffixes[] = {"", "", ".json"};
    for (size_t i = 0; i < 3; i++) {
        int len = snprintf(path, CONFIG_PATH_MAX, "%s%s%s", prefixes[i], name, suffixes[i]);
        if (len < CONFIG_PATH_MAX && is_regular_file(path)) return;
    }
    fatal("config %s not found (also looked for configs/%s and configs/%s.json)", name, name, name);
}

// Parses the whole text as one JSON value; on malformed JSON, fails naming the line, column and byte, and
// quoting the text around the error.
static cJSON *parse_json(const char *text, const char *path) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (root) return root;
    const char *at = end ? end : text;
    const char *line_start = text;
    int line = 1;
    for (const char *p = text; p < at; p++) {
        if (*p == '\n') {
            line++;
            line_start = p + 1;
        }
    }
    int column = (int)(at - line_start) + 1;
    size_t byte = (size_t)(at - text);
    if (*at == '\0') fatal("%s:%d:%d: malformed JSON (byte %zu, the end of the file)", path, line, column, byte);
    const char *quote = at - line_start > 30 ? at - 30 : line_start;
    size_t quote_len = strcspn(quote, "\r\n");
    if (quote_len > 60) quote_len = 60;
    fatal("%s:%d:%d: malformed JSON (byte %zu, near \"%.*s\")", path, line, column, byte, (int)quote_len, quote);
}

// Fails if an earlier member of the same object has item's name: cJSON keeps both, the last would win.
static void check_not_duplicate(const cJSON *first, const cJSON *item, const char *where) {
    for (const cJSON *other = first; other != item; other = other->next) {
        if (strcmp(other->string, item->string) == 0) fatal("%s: appears more than once", where);
    }
}

static void apply_section(Config *cfg, const cJSON *section, const char *path) {
    char where[WHERE_MAX];
    snprintf(where, sizeof(where), "%s: %s", path, section->string);
    if (!cJSON_IsObject(section)) fatal("%s: expected an object, got %s", where, json_kind(section));
    for (const cJSON *item = section->child; item; item = item->next) {
        const ConfigKey *key = find_key(section->string, item->string);
        if (!key) fail_unknown_key(path, section->string, item->string);
        snprintf(where, sizeof(where), "%s: %s.%s", path, key->section, key->name);
        check_not_duplicate(section->child, item, where);
        set_from_json(cfg, key, item, where);
    }
}

void config_load(Config *cfg, const char *name, char *resolved_path) {
    char path[CONFIG_PATH_MAX];
    resolve_config_path(name, path);
    size_t nbytes;
    char *text = read_whole_file(path, &nbytes);
    // cJSON stops at a NUL byte; whatever follows it would be ignored without a word.
    if (strlen(text) != nbytes) fatal("%s: a NUL byte at byte offset %zu: a config is JSON text", path, strlen(text));
    cJSON *root = parse_json(text, path);
    if (!cJSON_IsObject(root)) fatal("%s: expected a JSON object at the top level, got %s", path, json_kind(root));
    config_defaults(cfg);
    for (const cJSON *section = root->child; section; section = section->next) {
        if (!is_section(section->string)) fail_unknown_section(path, section->string);
        char where[WHERE_MAX];
        snprintf(where, sizeof(where), "%s: %s", path, section->string);
        check_not_duplicate(root->child, section, where);
        apply_section(cfg, section, path);
    }
    cJSON_Delete(root);
    free(text);
    if (resolved_path) memcpy(resolved_path, path, CONFIG_PATH_MAX);
}

void config_set(Config *cfg, const char *assignment) {
    char where[WHERE_MAX];
    snprintf(where, sizeof(where), "--set %s", assignment);
    if (!strchr(assignment, '=')) fatal("%s: expected SECTION.KEY=VALUE", where);
    char *copy = xstrdup(assignment);
    char *value = strchr(copy, '=');
    *value++ = '\0';
    char *dot = strchr(copy, '.');
    if (!dot) fail_unknown_key(where, NULL, copy);
    *dot = '\0';
    const ConfigKey *key = find_key(copy, dot + 1);
    if (!key) fail_unknown_key(where, copy, dot + 1);
    set_from_text(cfg, key, value, where);
    free(copy);
}

void config_validate(const Config *cfg) {
    // Every key on its own (cfg may have been changed in code since it was loaded)...
    for (size_t i = 0; i < NUM_KEYS; i++) {
        const ConfigKey *key = &config_keys[i];
        char where[WHERE_MAX];
        snprintf(where, sizeof(where), "%s.%s", key->section, key->name);
        if (key->type != KEY_STRING) {
            check_number(key, read_number(cfg, key), where);
        } else {
            const char *value = const_field_of(cfg, key);
            if (memchr(value, '\0', (size_t)key->max + 1) == NULL) fatal("%s: string is not terminated", where);
            check_string(key, value, where);
        }
    }
    // ...then the keys that constrain each other.
    if (cfg->model.n_embd % cfg->model.n_head != 0) {
        fatal("model.n_embd (%d) must be divisible by model.n_head (%d)", cfg->model.n_embd, cfg->model.n_head);
    }
    if (cfg->training.seq_len > cfg->model.block_size) {
        fatal("training.seq_len (%d) must not exceed model.block_size (%d)", cfg->training.seq_len,
              cfg->model.block_size);
    }
    long long micro_tokens = (long long)cfg->training.batch_size * cfg->training.seq_len;
    if (cfg->training.tokens_per_step % micro_tokens != 0) {
        fatal("training.tokens_per_step (%ld) must be 0 or a multiple of training.batch_size * training.seq_len "
              "(%d * %d = %lld)", cfg->training.tokens_per_step, cfg->training.batch_size, cfg->training.seq_len,
              micro_tokens);
    }
    if (cfg->training.min_lr > cfg->training.lr) {
        fatal("training.min_lr (%.9g) must not exceed training.lr (%.9g)", cfg->training.min_lr, cfg->training.lr);
    }
}

// The shortest %g text that reads back (through a double, as the loader reads it) as the same float, so the
// JSON is exact and still readable: 0.1f prints as 0.1.
static void format_float(float value, char *buf, size_t size) {
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, size, "%.*g", digits, value);
        if ((float)strtod(buf, NULL) == value) return;
    }
}

static void format_number(const Config *cfg, const ConfigKey *key, char *buf, size_t size) {
    const void *field = const_field_of(cfg, key);
    switch (key->type) {
    case KEY_INT: snprintf(buf, size, "%d", *(const int *)field); break;
    case KEY_LONG: snprintf(buf, size, "%ld", *(const long *)field); break;
    case KEY_UINT64: snprintf(buf, size, "%" PRIu64, *(const uint64_t *)field); break;
    case KEY_FLOAT: format_float(*(const float *)field, buf, size); break;
    case KEY_STRING: break;
    }
}

char *config_to_json(const Config *cfg) {
    cJSON *root = cJSON_CreateObject();
    for (size_t i = 0; i < NUM_KEYS; i++) {
        const ConfigKey *key = &config_keys[i];
        cJSON *section = cJSON_GetObjectItemCaseSensitive(root, key->section);
        if (!section) section = cJSON_AddObjectToObject(root, key->section);
        if (key->type == KEY_STRING) {
            cJSON_AddStringToObject(section, key->name, const_field_of(cfg, key));
        } else {
            // Raw text, because cJSON would print a float through a double (0.1f as 0.10000000149011612).
            char number[64];
            format_number(cfg, key, number, sizeof(number));
            cJSON_AddRawToObject(section, key->name, number);
        }
    }
    char *printed = cJSON_Print(root);
    cJSON_Delete(root);
    if (!printed) fatal("out of memory printing the config as JSON");
    char *json = xstrdup(printed);  // the caller frees with free(), whatever allocator cJSON was given
    cJSON_free(printed);
    return json;
}

static int is_resumable(const ConfigKey *key) {
    char name[2 * CONFIG_NAME_MAX];
    snprintf(name, sizeof name, "%s.%s", key->section, key->name);
    for (size_t i = 0; resumable_keys[i]; i++) {
        if (strcmp(resumable_keys[i], name) == 0) return 1;
    }
    return 0;
}

char *config_identity_text(const Config *cfg) {
    size_t cap = NUM_KEYS * (2 * CONFIG_NAME_MAX + CONFIG_PATH_MAX + 4), used = 0;
    char *text = xmalloc(cap);
    text[0] = '\0';
    for (size_t i = 0; i < NUM_KEYS; i++) {
        const ConfigKey *key = &config_keys[i];
        if (is_resumable(key)) continue;
        char number[64];
        const char *value = number;
        if (key->type == KEY_STRING) value = const_field_of(cfg, key);
        else format_number(cfg, key, number, sizeof number);
        used += (size_t)snprintf(text + used, cap - used, "%s.%s = %s\n", key->section, key->name, value);
    }
    return text;
}
