// The CPU backend's decode_step (src/cpu/kv_cache.c) against the full forward, its reference: at every
// position of a sequence the logits must be the same bits, because the cached path runs the very same
// products, casts and reductions on one row (each op sums every output in a fixed order that does not
// depend on the row count: ops.h). Then sample_tokens through the cache against sample_tokens rerunning
// the forward, across window jumps, with temperature and top-k.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "model.h"
#include "policy.h"
#include "sample.h"
#include "testing.h"

#define L 2
#define NH 2
#define C 32
#define CONTEXT 24
#define V 67

typedef struct {
    ParamTable table;
    Policy policy;
    float *init;
} Setup;

static Setup make_setup(const char *const *assignments) {
    Setup s;
    Config cfg;
    config_defaults(&cfg);
    for (int i = 0; assignments[i]; i++) config_set(&cfg, assignments[i]);
    s.policy = policy_from_config(&cfg);
    ModelShape shape = {L, NH, C, CONTEXT, V, 0};
    param_table_init(&s.table, &shape);
    s.init = malloc(s.table.num_params * sizeof(float));
    gpt_init_params(&s.table, s.init, 11);
    return s;
}

// The tests' own tokens, independent of the code under test.
static void random_tokens(int *tokens, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) tokens[i] = (int)(splitmix64_next(&seed) % V);
}

// Logits at every position: a forward over all CONTEXT tokens, then one decode step per token; twice, the
// second sequence restarting the cache at position 0.
static void check_logits(const char *name, const char *const *assignments) {
    Setup s = make_setup(assignments);
    Backend *b = cpu_backend.create(&s.table, &s.policy, 1, CONTEXT, s.init);
    int Vp = s.table.shape.padded_vocab;
    float *full = malloc((size_t)CONTEXT * Vp * sizeof(float));
    for (int sequence = 0; sequence < 2; sequence++) {
        int tokens[CONTEXT];
        random_tokens(tokens, CONTEXT, 100 + sequence);
        cpu_backend.forward(b, tokens, NULL, 1, CONTEXT);
        for (int t = 0; t < CONTEXT; t++) memcpy(full + (size_t)t * Vp, cpu_backend.logits(b, t), Vp * sizeof(float));
        int differing = 0;
        float worst = 0.0f;
        for (int t = 0; t < CONTEXT; t++) {
            const float *step = cpu_backend.decode_step(b, tokens[t], t);
            for (int v = 0; v < V; v++) {
                float d = fabsf(step[v] - full[(size_t)t * Vp + v]);
                if (bits_of_float(step[v]) != bits_of_float(full[(size_t)t * Vp + v])) differing++;
                if (d > worst) worst = d;
            }
        }
        CHECK(differing == 0, "%s, sequence %d: %d logits differ from the full forward's (by up to %g)", name,
              sequence, differing, worst);
    }
    free(full);
    cpu_backend.destroy(b);
    free(s.init);
}

// The same tokens through the cache and through forward over the window (the CUDA backend's way); 60 tokens
// after a 5-token prompt in a context of 16 cross several window jumps.
static void check_sampling(void) {
    Setup s = make_setup((const char *const[]){"precision.policy=mixed", NULL});
    Backend *b = cpu_backend.create(&s.table, &s.policy, 1, CONTEXT, s.init);
    BackendOps rerun = cpu_backend;
    rerun.decode_step = NULL;
    int prompt[5];
    random_tokens(prompt, 5, 7);
    enum { N = 60 };
    SampleSettings settings[] = {
        {N, 1.0f, 0, 16, {1, 2, 3}},
        {N, 0.7f, 5, 16, {1, 2, 3}},
        {N, 0.0f, 0, 16, {1, 2, 3}},  // greedy
        {N, 1.3f, 1, 16, {4, 5, 6}},  // top-1: greedy whatever the temperature and draws
    };
    int tokens[4][N], reference[N];
    for (int i = 0; i < 4; i++) {
        sample_tokens(&cpu_backend, b, V, prompt, 5, &settings[i], tokens[i]);
        sample_tokens(&rerun, b, V, prompt, 5, &settings[i], reference);
        CHECK(memcmp(tokens[i], reference, sizeof reference) == 0, "settings %d: cached and rerun samples differ", i);
        for (int j = 0; j < N; j++) CHECK(tokens[i][j] >= 0 && tokens[i][j] < V, "token %d", tokens[i][j]);
    }
    CHECK(memcmp(tokens[2], tokens[3], sizeof tokens[2]) == 0, "top-1 sampling is not greedy");
    CHECK(memcmp(tokens[0], tokens[2], sizeof tokens[0]) != 0, "sampling at temperature 1 gave the greedy tokens");
    int again[N];
    sample_tokens(&cpu_backend, b, V, prompt, 5, &settings[1], again);
    CHECK(memcmp(again, tokens[1], sizeof again) == 0, "the same key gave other tokens");
    // The top 5 of each step: every token drawn under top-k 5 is among the 5 largest logits of its window.
    // Greedy's first token is the argmax after the prompt, which a forward over the prompt gives directly.
    cpu_backend.forward(b, prompt, NULL, 1, 5);
    const float *logits = cpu_backend.logits(b, 4);
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    CHECK(tokens[2][0] == best, "greedy's first token %d, the argmax is %d", tokens[2][0], best);
    cpu_backend.destroy(b);
    free(s.init);
}

int main(void) {
    check_logits("fp32", (const char *const[]){"precision.policy=fp32", NULL});
    check_logits("mixed (bf16 weights and products)", (const char *const[]){"precision.policy=mixed", NULL});
    check_logits("collage_plus", (const char *const[]){"precision.policy=collage_plus", NULL});
    check_logits("dqt_int8", (const char *const[]){"precision.policy=dqt_int8", NULL});
    check_logits("e4m3 toward zero", (const char *const[]){"precision.policy=mixed", "precision.matmul=e4m3",
                                                          "precision.matmul_rounding=toward_zero", NULL});
    check_logits("fp32 products, bf16 attention", (const char *const[]){"precision.policy=fp32",
                                                                        "precision.attention=bf16", NULL});
    check_sampling();
    return test_summary("test_kv_cache");
}
