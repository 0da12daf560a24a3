// Policy presets and overrides: bytes per parameter against DESIGN.md's table (written out here by hand),
// axis overrides, aliases, and the refused combinations.
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "model.h"
#include "param_storage.h"
#include "policy.h"
#include "testing.h"

static Policy policy_with(const char *preset, const char *assignments[]) {
    Config cfg;
    config_defaults(&cfg);
    char set[128];
    snprintf(set, sizeof set, "precision.policy=%s", preset);
    config_set(&cfg, set);
    for (int i = 0; assignments && assignments[i]; i++) config_set(&cfg, assignments[i]);
    return policy_from_config(&cfg);
}

// DESIGN.md, "Precision policies": bytes/param (W+G+opt) per preset.
static void test_bytes_per_param(void) {
    struct {
        const char *preset;
        size_t bytes;
    } table[] = {{"fp32", 16}, {"mixed", 18}, {"fp32_master", 18}, {"mixed_nomaster", 12}, {"bf16", 8},
                 {"collage_light", 10}, {"collage_plus", 12}, {"kahan", 10}, {"sr", 8}, {"fp8_sim", 18},
                 {"dqt_int8", 1 + 2 + 8}, {"dqt_int3", 1 + 2 + 8}, {"dqt_ternary", 1 + 2 + 8}, {"bitnet", 16}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        Policy p = policy_with(table[i].preset, NULL);
        CHECK(policy_bytes_per_param(&p) == table[i].bytes, "%s: %zu bytes/param, DESIGN.md says %zu",
              table[i].preset, policy_bytes_per_param(&p), table[i].bytes);
    }
    // The embeddings axis: DQT's fp32 embeddings are 4 + 2 (bf16 grads) + 8, bf16 ones 2 + 2 + 8, grid ones
    // as the block; bitnet's are fp32 latent weights like the rest, 16.
    const char *fp32_emb[] = {NULL}, *bf16_emb[] = {"precision.embeddings=bf16", NULL},
               *grid_emb[] = {"precision.embeddings=grid", NULL};
    Policy dqt_fp32 = policy_with("dqt_int8", fp32_emb), dqt_bf16 = policy_with("dqt_ternary", bf16_emb);
    Policy dqt_grid_emb = policy_with("dqt_int8", grid_emb), bitnet = policy_with("bitnet", NULL);
    Policy mixed = policy_with("mixed", NULL);
    CHECK(policy_embedding_bytes_per_param(&dqt_fp32) == 4 + 2 + 8, "dqt_int8 embeddings %zu",
          policy_embedding_bytes_per_param(&dqt_fp32));
    CHECK(policy_embedding_bytes_per_param(&dqt_bf16) == 2 + 2 + 8, "bf16 embeddings %zu",
          policy_embedding_bytes_per_param(&dqt_bf16));
    CHECK(policy_embedding_bytes_per_param(&dqt_grid_emb) == 1 + 2 + 8, "grid embeddings %zu",
          policy_embedding_bytes_per_param(&dqt_grid_emb));
    CHECK(policy_embedding_bytes_per_param(&bitnet) == 16, "bitnet embeddings");
    CHECK(policy_embedding_bytes_per_param(&mixed) == 18, "mixed embeddings as the weights");
}

static void test_presets_and_overrides(void) {
    Policy mixed = policy_with("fp32_master", NULL);
    CHECK(strcmp(mixed.name, "mixed") == 0, "alias resolves to %s", mixed.name);
    CHECK(mixed.weights == WEIGHTS_BF16 && mixed.update == UPDATE_FP32_MASTER && mixed.matmul.format == MATMUL_BF16,
          "mixed axes");

    Policy plus_m = policy_with("collage_plus", (const char *[]){"precision.adam_m=mcf", NULL});
    CHECK(plus_m.adam_m == STATE_MCF && plus_m.adam_v == STATE_MCF && plus_m.update == UPDATE_MCF_GROW,
          "collage_plus with MCF first moments");
    CHECK(strcmp(plus_m.name, "collage_plus+overrides") == 0, "name %s", plus_m.name);
    CHECK(policy_bytes_per_param(&plus_m) == 14, "collage_plus + MCF m: %zu", policy_bytes_per_param(&plus_m));

    Policy fp8_current = policy_with("fp8_sim", (const char *[]){"precision.scaling=current", NULL});
    CHECK(fp8_current.matmul.format == MATMUL_FP8 && fp8_current.matmul.scaling == SCALING_CURRENT, "fp8 current");

    Policy sr_fp32 = policy_with("sr", (const char *[]){"precision.adam_m=fp32", "precision.adam_v=fp32", NULL});
    CHECK(sr_fp32.update == UPDATE_SR && sr_fp32.adam_m == STATE_FP32 && policy_bytes_per_param(&sr_fp32) == 12,
          "sr with fp32 moments");

    Policy sweep = policy_with("bf16", (const char *[]){"precision.matmul=e8m3", "precision.matmul_rounding=toward_zero", NULL});
    CHECK(sweep.matmul.format == MATMUL_EXMY && sweep.matmul.exp_bits == 8 && sweep.matmul.man_bits == 3 &&
          sweep.matmul.rounding == ROUND_TOWARD_ZERO, "e8m3 toward zero");

    Policy ternary = policy_with("dqt_int8", (const char *[]){"precision.weights=ternary", NULL});
    CHECK(ternary.weights == WEIGHTS_INT_GRID && ternary.grid_bits == 0, "ternary override");
    Policy int4 = policy_with("dqt_int8", (const char *[]){"precision.weights=int4", NULL});
    CHECK(int4.grid_bits == 4, "int4 override: %d", int4.grid_bits);
    for (int bits = 2; bits <= 8; bits++) {
        char set[64];
        snprintf(set, sizeof set, "precision.weights=int%d", bits);
        Policy p = policy_with("dqt_ternary", (const char *[]){set, NULL});
        CHECK(p.weights == WEIGHTS_INT_GRID && p.grid_bits == bits, "int%d override: %d", bits, p.grid_bits);
    }
    Policy bitnet = policy_with("bitnet", NULL);
    CHECK(bitnet.weights == WEIGHTS_BITNET && bitnet.update == UPDATE_EXACT && bitnet.grads == GRADS_FP32 &&
          bitnet.matmul.format == MATMUL_BF16 && bitnet.embeddings == EMBEDDINGS_FP32, "bitnet preset");
    Policy dqt = policy_with("dqt_int3", NULL);
    CHECK(dqt.grid_bits == 3 && dqt.embeddings == EMBEDDINGS_FP32 && !dqt.dqt_rescale, "dqt_int3 preset");
    Policy rescaled = policy_with("dqt_int8", (const char *[]){"precision.dqt_rescale=1", NULL});
    CHECK(rescaled.dqt_rescale && strstr(rescaled.name, "+overrides"), "dqt_rescale: %s", rescaled.name);
}

static void policy_from_sets(void *arg) {
    const char **assignments = arg;
    policy_with(assignments[0], assignments + 1);
}

static void expect_refused(const char *sets[], const char *needle) {
    ChildResult r = run_in_child(policy_from_sets, sets);
    CHECK(r.exit_status == 1 && strstr(r.message, needle) != NULL, "%s: status %d, message %s", sets[0],
          r.exit_status, r.message);
}

static void test_refused(void) {
    expect_refused((const char *[]){"fp7", NULL}, "unknown policy \"fp7\"");
    expect_refused((const char *[]){"bf16", "precision.update=exact", NULL}, "update \"exact\"");
    expect_refused((const char *[]){"fp32", "precision.update=kahan", NULL}, "update \"exact\"");
    expect_refused((const char *[]){"dqt_int8", "precision.update=sr", NULL}, "grid_sr");
    expect_refused((const char *[]){"bf16", "precision.weights=int8", NULL}, "grid_sr");
    expect_refused((const char *[]){"bf16", "precision.matmul=e9m3", NULL}, "precision.matmul");
    expect_refused((const char *[]){"bf16", "precision.adam_v=fp16", NULL}, "precision.adam_v");
    expect_refused((const char *[]){"bf16", "precision.weights=int9", NULL}, "precision.weights");
    expect_refused((const char *[]){"mixed", "precision.embeddings=fp32", NULL}, "precision.embeddings = fp32 applies");
    expect_refused((const char *[]){"bitnet", "precision.embeddings=bf16", NULL}, "precision.embeddings = bf16");
    expect_refused((const char *[]){"bitnet", "precision.dqt_rescale=1", NULL}, "precision.dqt_rescale");
    expect_refused((const char *[]){"bitnet", "precision.update=sr", NULL}, "update \"exact\"");
    expect_refused((const char *[]){"mixed", "precision.activation_quant=int8", NULL},
                   "precision.activation_quant = int8 applies");
    expect_refused((const char *[]){"fp32", "precision.activation_quant=int8", NULL}, "precision.activation_quant");
}

// precision.activation_quant: none by default; int8 taken by the bitnet and DQT policies (grid weights set
// through the weights axis too), and named in the policy's overrides.
static void test_activation_quant(void) {
    const char *int8[] = {"precision.activation_quant=int8", NULL};
    CHECK(policy_with("dqt_int8", NULL).activation_quant == ACTIVATION_QUANT_NONE, "activation_quant default");
    Policy bitnet = policy_with("bitnet", int8), ternary = policy_with("dqt_ternary", int8);
    CHECK(bitnet.activation_quant == ACTIVATION_QUANT_INT8 && strcmp(bitnet.name, "bitnet+overrides") == 0,
          "bitnet takes activation_quant = int8 (%s)", bitnet.name);
    CHECK(ternary.activation_quant == ACTIVATION_QUANT_INT8, "dqt_ternary takes activation_quant = int8");
    Policy int4 = policy_with("fp32", (const char *[]){"precision.weights=int4", "precision.update=grid_sr",
                                                       "precision.activation_quant=int8", NULL});
    CHECK(int4.activation_quant == ACTIVATION_QUANT_INT8, "int4 grid weights take activation_quant = int8");
}

// precision.dqt_rescale's step: max(w) / Qp of each grid matrix (the DQT code's s = Qp / ori_x.max()), by hand
// on a 1-layer model whose block matrices hold 0.001·(i mod 7) − 0.002 with one marked maximum per matrix.
static void test_rescaled_steps(void) {
    Policy policy = policy_with("dqt_int8", (const char *[]){"precision.dqt_rescale=1", "precision.weights=int4", NULL});
    ModelShape shape = {1, 2, 8, 4, 16, 0};
    ParamTable table;
    param_table_init(&table, &shape);
    ParamLayout layout;
    param_layout_init(&layout, &table, &policy, 1);
    float *params = calloc(table.num_params, sizeof(float));
    const int matrices[4] = {PARAM_QKVW, PARAM_ATTPROJW, PARAM_FCW, PARAM_FCPROJW};
    for (int m = 0; m < 4; m++) {
        const ParamTensor *t = &table.tensors[matrices[m]];
        for (size_t i = 0; i < t->numel; i++) params[t->offset + i] = 0.001f * (float)(i % 7) - 0.002f;
        params[t->offset + t->numel / 2] = 0.07f * (float)(m + 1);  // the maximum of matrix m
    }
    float steps[4];
    dqt_steps_from_weights(&table, &layout, policy.grid_bits, params, steps);
    for (int m = 0; m < 4; m++) {  // int4: Qp = 7
        float expected = 0.07f * (float)(m + 1) / 7.0f;
        CHECK(steps[m] == expected, "rescaled step of matrix %d: %.9g, expected max/Qp = %.9g", m, steps[m], expected);
    }
    free(params);
    param_layout_free(&layout);
}

int main(void) {
    test_rescaled_steps();
    test_bytes_per_param();
    test_presets_and_overrides();
    test_refused();
    test_activation_quant();
    return test_summary("test_policy");
}
