// Config tests: defaults, JSON loading, --set overrides, validation, the JSON round trip, and the error paths.
// An error exits the process, so each error case runs in a forked child whose exit status and stderr are checked.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "testing.h"

// Every test file lives in a fresh temporary directory, which is also the working directory (for configs/).
#define TEST_JSON "c.json"
#define NAMED_JSON "configs/named.json"

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static int configs_equal(const Config *a, const Config *b) { return memcmp(a, b, sizeof(Config)) == 0; }

// ---------------------------------------------------------------------------------------------------------
// Running code that is expected to fail

// Each action takes its argument as a string (passed through run_in_child's void *).
typedef void (*ChildAction)(void *arg);

static void load_test_json(void *unused) {
    Config cfg;
    config_load(&cfg, TEST_JSON, NULL);
}

static void load_named(void *name) {
    Config cfg;
    config_load(&cfg, name, NULL);
}

// arg: space-separated SECTION.KEY=VALUE assignments, applied over the defaults, then validated.
static void set_then_validate(void *arg) {
    Config cfg;
    config_defaults(&cfg);
    char *copy = strdup(arg);
    for (char *assignment = strtok(copy, " "); assignment; assignment = strtok(NULL, " ")) {
        config_set(&cfg, assignment);
    }
    free(copy);
    config_validate(&cfg);
}

// Checks that action(arg) exits with status 1 and one "train_gpt: error:" line containing needle (and
// also_needle when it is not NULL).
static void expect_error(ChildAction action, const char *arg, const char *needle, const char *also_needle) {
    ChildResult r = run_in_child(action, (void *)arg);
    CHECK(r.exit_status == 1, "%s: exit status %d, stderr: %s", arg, r.exit_status, r.message);
    CHECK(strncmp(r.message, "train_gpt: error: ", 18) == 0, "%s: stderr: %s", arg, r.message);
    CHECK(strstr(r.message, needle) != NULL, "%s: expected \"%s\" in: %s", arg, needle, r.message);
    if (also_needle) {
        CHECK(strstr(r.message, also_needle) != NULL, "%s: expected \"%s\" in: %s", arg, also_needle, r.message);
    }
}

static void expect_json_error(const char *json, const char *needle, const char *also_needle) {
    write_file(TEST_JSON, json);
    expect_error(load_test_json, json, needle, also_needle);
}

static void expect_success(ChildAction action, const char *arg) {
    ChildResult r = run_in_child(action, (void *)arg);
    CHECK(r.exit_status == 0 && r.message[0] == '\0', "%s: exit status %d, stderr: %s", arg, r.exit_status,
          r.message);
}

// ---------------------------------------------------------------------------------------------------------
// The tests

static void test_defaults(void) {
    Config cfg;
    config_defaults(&cfg);
    CHECK(cfg.model.n_layer == 4 && cfg.model.n_head == 4 && cfg.model.n_embd == 128, "model sizes");
    CHECK(cfg.model.block_size == 256 && cfg.model.vocab_size == 257, "block_size %d vocab_size %d",
          cfg.model.block_size, cfg.model.vocab_size);
    CHECK(strcmp(cfg.model.init_from, "") == 0, "init_from \"%s\"", cfg.model.init_from);
    CHECK(strcmp(cfg.data.train, "data/fortunes/train_*.bin") == 0, "train \"%s\"", cfg.data.train);
    CHECK(strcmp(cfg.data.val, "data/fortunes/val_*.bin") == 0, "val \"%s\"", cfg.data.val);
    CHECK(strcmp(cfg.data.tokenizer, "data/fortunes/tokenizer.bin") == 0, "tokenizer \"%s\"", cfg.data.tokenizer);
    CHECK(cfg.data.shuffle == 1, "shuffle %d", cfg.data.shuffle);
    CHECK(cfg.training.batch_size == 8 && cfg.training.seq_len == 128, "batch %d x %d", cfg.training.batch_size,
          cfg.training.seq_len);
    CHECK(cfg.training.tokens_per_step == 0 && cfg.training.max_steps == 200, "tokens_per_step %ld max_steps %d",
          cfg.training.tokens_per_step, cfg.training.max_steps);
    CHECK(cfg.training.lr == 1e-3f && cfg.training.min_lr == 1e-4f, "lr %g min_lr %g", cfg.training.lr,
          cfg.training.min_lr);
    CHECK(cfg.training.warmup_steps == 20, "warmup_steps %d", cfg.training.warmup_steps);
    CHECK(strcmp(cfg.training.schedule, "cosine") == 0, "schedule \"%s\"", cfg.training.schedule);
    CHECK(cfg.training.weight_decay == 0.1f && cfg.training.beta1 == 0.9f && cfg.training.beta2 == 0.95f,
          "weight_decay %g beta1 %g beta2 %g", cfg.training.weight_decay, cfg.training.beta1, cfg.training.beta2);
    CHECK(cfg.training.eps == 1e-8f && cfg.training.grad_clip == 1.0f, "eps %g grad_clip %g", cfg.training.eps,
          cfg.training.grad_clip);
    CHECK(cfg.training.seed == 1337, "seed %llu", (unsigned long long)cfg.training.seed);
    CHECK(cfg.training.eval_every == 50 && cfg.training.eval_batches == 8, "eval %d %d", cfg.training.eval_every,
          cfg.training.eval_batches);
    CHECK(cfg.training.sample_every == 0 && cfg.training.sample_tokens == 64, "sample %d %d",
          cfg.training.sample_every, cfg.training.sample_tokens);
    CHECK(cfg.training.checkpoint_every == 0, "checkpoint_every %d", cfg.training.checkpoint_every);
    CHECK(cfg.training.eval_at_start == 1, "eval_at_start %d", cfg.training.eval_at_start);
    CHECK(strcmp(cfg.precision.policy, "fp32") == 0, "policy \"%s\"", cfg.precision.policy);
    CHECK(cfg.metrics.every == 0, "metrics.every %d", cfg.metrics.every);
    CHECK(strcmp(cfg.output.dir, "runs/default") == 0, "output.dir \"%s\"", cfg.output.dir);
    expect_success(set_then_validate, "");
}

// A file overrides exactly the keys it names; everything else keeps its default.
static void test_load_overrides(void) {
    write_file(TEST_JSON,
               "{\n"
               "  \"model\": {\"n_layer\": 6},\n"
               "  \"training\": {\"lr\": 3e-4, \"schedule\": \"linear\", \"seed\": 42, \"tokens_per_step\": 2048},\n"
               "  \"output\": {\"dir\": \"runs/x\"},\n"
               "  \"metrics\": {}\n"
               "}\n");
    Config loaded, expected;
    char resolved[CONFIG_PATH_MAX];
    config_load(&loaded, TEST_JSON, resolved);
    config_defaults(&expected);
    expected.model.n_layer = 6;
    expected.training.lr = 3e-4f;
    expected.training.seed = 42;
    expected.training.tokens_per_step = 2048;
    config_set(&expected, "training.schedule=linear");  // not strcpy: the bytes after the string count too
    config_set(&expected, "output.dir=runs/x");
    CHECK(configs_equal(&loaded, &expected), "loaded config differs from the defaults plus the file's keys");
    CHECK(strcmp(resolved, TEST_JSON) == 0, "resolved path \"%s\"", resolved);
}

// A name that is not a file is looked up in configs/, with and without ".json".
static void test_configs_lookup(void) {
    mkdir("configs", 0755);
    write_file(NAMED_JSON, "{\"model\": {\"n_head\": 2}}");
    const char *names[] = {"named", "named.json", NAMED_JSON};
    for (int i = 0; i < 3; i++) {
        Config cfg;
        char resolved[CONFIG_PATH_MAX];
        config_load(&cfg, names[i], resolved);
        CHECK(cfg.model.n_head == 2, "%s: n_head %d", names[i], cfg.model.n_head);
        CHECK(strcmp(resolved, NAMED_JSON) == 0, "%s: resolved path \"%s\"", names[i], resolved);
    }
    expect_error(load_named, "no_such_config", "config no_such_config not found", "configs/no_such_config.json");
}

static void test_set(void) {
    Config cfg;
    config_defaults(&cfg);
    config_set(&cfg, "model.n_layer=12");
    config_set(&cfg, "model.n_embd=0x300");  // numbers in C syntax
    config_set(&cfg, "training.tokens_per_step=524288");
    config_set(&cfg, "training.seed=1234567890123");
    config_set(&cfg, "training.lr=6e-4");
    config_set(&cfg, "training.schedule=constant");
    config_set(&cfg, "data.train=shards/a=b *.bin");  // a value is everything after the first '='
    config_set(&cfg, "model.init_from=");
    CHECK(cfg.model.n_layer == 12, "n_layer %d", cfg.model.n_layer);
    CHECK(cfg.model.n_embd == 768, "n_embd %d", cfg.model.n_embd);
    CHECK(cfg.training.tokens_per_step == 524288, "tokens_per_step %ld", cfg.training.tokens_per_step);
    CHECK(cfg.training.seed == 1234567890123ULL, "seed %llu", (unsigned long long)cfg.training.seed);
    CHECK(cfg.training.lr == 6e-4f, "lr %g", cfg.training.lr);
    CHECK(strcmp(cfg.training.schedule, "constant") == 0, "schedule \"%s\"", cfg.training.schedule);
    CHECK(strcmp(cfg.data.train, "shards/a=b *.bin") == 0, "train \"%s\"", cfg.data.train);
    CHECK(strcmp(cfg.model.init_from, "") == 0, "init_from \"%s\"", cfg.model.init_from);
}

// config_to_json, loaded back, gives the identical Config; floats print short where that is exact.
static void test_json_round_trip(void) {
    Config cfg;
    config_defaults(&cfg);
    const char *sets[] = {"training.lr=0.000333333333", "training.min_lr=0", "training.beta2=0.999",
                          "training.eps=1e-10", "training.grad_clip=0", "training.seed=9007199254740991",
                          "training.tokens_per_step=4096", "data.val=dir with \"quotes\"\\and\ttab/*.bin",
                          "precision.policy=collage_plus", "metrics.every=10", "model.vocab_size=65536"};
    for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) config_set(&cfg, sets[i]);
    char *json = config_to_json(&cfg);
    CHECK(strstr(json, "\"weight_decay\":\t0.1,") != NULL, "weight_decay not printed as 0.1:\n%s", json);
    CHECK(strstr(json, "\"seed\":\t9007199254740991") != NULL, "seed not printed as a number:\n%s", json);
    CHECK(strstr(json, "\"model\"") < strstr(json, "\"data\"") && strstr(json, "\"data\"") < strstr(json, "\"output\""),
          "sections out of table order:\n%s", json);
    write_file(TEST_JSON, json);
    Config loaded;
    config_load(&loaded, TEST_JSON, NULL);
    CHECK(configs_equal(&cfg, &loaded), "round trip changed the config:\n%s", json);
    free(json);

    config_defaults(&cfg);
    json = config_to_json(&cfg);
    write_file(TEST_JSON, json);
    config_load(&loaded, TEST_JSON, NULL);
    CHECK(configs_equal(&cfg, &loaded), "round trip changed the defaults:\n%s", json);
    free(json);
}

static void test_suggestions(void) {
    expect_error(set_then_validate, "training.lrr=1", "unknown key \"training.lrr\" (did you mean \"training.lr\"?)",
                 NULL);
    expect_error(set_then_validate, "training.n_layer=2", "did you mean \"model.n_layer\"?", NULL);
    expect_error(set_then_validate, "lr=0.1", "unknown key \"lr\" (did you mean \"training.lr\"?)", NULL);
    expect_error(set_then_validate, "trainng.warmup_steps=1", "did you mean \"training.warmup_steps\"?", NULL);
    expect_error(set_then_validate, "training.Batch_Size=1", "did you mean \"training.batch_size\"?", NULL);
    expect_error(set_then_validate, "training.zzzzzzzzzz=1", "the keys of training are: batch_size, seq_len", NULL);
    expect_error(set_then_validate, "zzzzzzzzzz.zzzzzzzzzz=1", "SECTION one of: model, data, training", NULL);
    expect_json_error("{\"trainig\": {}}", "c.json: unknown section \"trainig\" (did you mean \"training\"?)", NULL);
    expect_json_error("{\"lr\": 0.1}", "unknown section \"lr\" (did you mean the key \"training.lr\"?", NULL);
    expect_json_error("{\"zzzzzzzzzz\": {}}", "the sections are: model, data, training, precision, metrics, output",
                      NULL);
    expect_json_error("{\"training\": {\"lrr\": 1}}", "c.json: unknown key \"training.lrr\" (did you mean \"training.lr\"?)",
                      NULL);
    expect_json_error("{\"training\": {\"schedule\": \"cosin\"}}",
                      "training.schedule: \"cosin\" is not one of cosine, linear, constant (did you mean \"cosine\"?)",
                      NULL);
}

static void test_json_errors(void) {
    expect_json_error("{\n  \"model\": {\n    \"n_layer\": 4,\n  }\n}\n", "c.json:4:4: malformed JSON (byte 36, near \"  }\")", NULL);
    expect_json_error("{\"model\": {\"n_layer\": 4}\n\"data\": {}}", "c.json:2:1: malformed JSON", "near \"\"data\"");
    expect_json_error("", "c.json:1:1: malformed JSON (byte 0, the end of the file)", NULL);
    expect_json_error("{\"model\": {\"n_layer\": 4}", "c.json:1:25: malformed JSON (byte 24, the end of the file)", NULL);
    expect_json_error("{} {}", "c.json:1:4: malformed JSON", NULL);
    expect_json_error("[1, 2]", "c.json: expected a JSON object at the top level, got an array", NULL);
    expect_json_error("{\"training\": 5}", "c.json: training: expected an object, got a number", NULL);
    expect_json_error("{\"training\": {\"lr\": \"abc\"}}", "c.json: training.lr: expected a number, got a string", NULL);
    expect_json_error("{\"training\": {\"lr\": null}}", "training.lr: expected a number, got null", NULL);
    expect_json_error("{\"model\": {\"n_layer\": true}}", "model.n_layer: expected an integer, got a boolean", NULL);
    expect_json_error("{\"data\": {\"train\": 5}}", "data.train: expected a string, got a number", NULL);
    expect_json_error("{\"model\": {\"n_layer\": 2.5}}", "model.n_layer: expected an integer, got 2.5", NULL);
    expect_json_error("{\"model\": {\"n_layer\": 3e9}}", "model.n_layer: 3000000000 is outside the integers", NULL);
    expect_json_error("{\"training\": {\"lr\": -1}}", "training.lr: -1 is out of range (allowed: lr > 0)", NULL);
    expect_json_error("{\"training\": {\"lr\": 0}}", "training.lr: 0 is out of range (allowed: lr > 0)", NULL);
    expect_json_error("{\"training\": {\"lr\": 1e-60}}", "(0 as a float) is out of range", NULL);
    expect_json_error("{\"training\": {\"lr\": 1e300}}", "training.lr: 1e+300 is too large for a float", NULL);
    expect_json_error("{\"training\": {\"beta2\": 1}}", "training.beta2: 1 is out of range (allowed: 0 <= beta2 < 1)",
                      NULL);
    expect_json_error("{\"training\": {\"beta1\": 0.99999999}}", "(1 as a float) is out of range", NULL);
    expect_json_error("{\"model\": {\"vocab_size\": 70000}}", "allowed: 2 <= vocab_size <= 65536", NULL);
    expect_json_error("{\"model\": {\"n_head\": 0}}", "model.n_head: 0 is out of range (allowed: n_head >= 1)", NULL);
    expect_json_error("{\"training\": {\"seed\": -1}}", "training.seed: -1 is out", NULL);
    expect_json_error("{\"training\": {\"seed\": 1e17}}", "training.seed: 1e+17 is outside the integers", NULL);
    expect_json_error("{\"training\": {\"eval_every\": -5}}", "allowed: eval_every >= 0", NULL);
    expect_json_error("{\"precision\": {\"policy\": \"\"}}", "c.json: precision.policy: must not be empty", NULL);
    expect_json_error("{\"training\": {\"lr\": 1e-3, \"lr\": 2e-3}}", "c.json: training.lr: appears more than once",
                      NULL);
    expect_json_error("{\"model\": {}, \"model\": {}}", "c.json: model: appears more than once", NULL);
}

static void test_set_errors(void) {
    expect_error(set_then_validate, "training.lr=abc", "--set training.lr=abc: expected a number", NULL);
    expect_error(set_then_validate, "training.lr=1e-3x", "--set training.lr=1e-3x: expected a number", NULL);
    expect_error(set_then_validate, "training.lr=", "--set training.lr=: expected a number", NULL);
    expect_error(set_then_validate, "training.lr=nan", "expected a finite number", NULL);
    expect_error(set_then_validate, "training.batch_size=2.5", "--set training.batch_size=2.5: expected an integer",
                 NULL);
    expect_error(set_then_validate, "training.lr", "--set training.lr: expected SECTION.KEY=VALUE", NULL);
    expect_error(set_then_validate, "training.lr=-3e-4", "--set training.lr=-3e-4: -0.0003 is out of range", NULL);
    expect_error(set_then_validate, "training.schedule=step", "\"step\" is not one of cosine, linear, constant", NULL);
    expect_error(set_then_validate, "precision.policy=", "--set precision.policy=: must not be empty", NULL);
    char long_path[700] = "model.init_from=";
    memset(long_path + strlen(long_path), 'a', 600);
    expect_error(set_then_validate, long_path, "too long (600 bytes, at most 511)", NULL);
}

static void test_validate(void) {
    expect_error(set_then_validate, "model.n_embd=130", "model.n_embd (130) must be divisible by model.n_head (4)",
                 NULL);
    expect_error(set_then_validate, "training.seq_len=512",
                 "training.seq_len (512) must not exceed model.block_size (256)", NULL);
    expect_error(set_then_validate, "training.tokens_per_step=1000",
                 "training.tokens_per_step (1000) must be 0 or a multiple of", "(8 * 128 = 1024)");
    expect_error(set_then_validate, "training.min_lr=0.01", "training.min_lr (0.00999999978) must not exceed", NULL);
    // Warm-up longer than the run is allowed (short smoke runs; the trainer prints a note).
    expect_success(set_then_validate, "training.warmup_steps=300");
    expect_success(set_then_validate, "training.tokens_per_step=3072 training.min_lr=1e-3 training.warmup_steps=200");
    expect_success(set_then_validate, "model.n_embd=96 model.n_head=3 training.seq_len=256");
}

int main(void) {
    char dir[] = "/tmp/lpgpt_test_config_XXXXXX";
    if (!mkdtemp(dir) || chdir(dir) != 0) {
        perror(dir);
        return 2;
    }
    test_defaults();
    test_load_overrides();
    test_configs_lookup();
    test_set();
    test_json_round_trip();
    test_suggestions();
    test_json_errors();
    test_set_errors();
    test_validate();
    unlink(TEST_JSON);
    unlink(NAMED_JSON);
    rmdir("configs");
    if (chdir("/") != 0 || rmdir(dir) != 0) perror(dir);
    return test_summary("test_config");
}
