// The step model (src/step_model.h) against counts made here by hand on a small shape, the targets
// for GPT-2 124M, and the environment's device overrides.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "model.h"
#include "policy.h"
#include "step_model.h"
#include "testing.h"

// L = 2, C = 64, NH = 4 (hs = 16), T = 96 (one whole query tile of 64 and a part of 32), B = 2, Vp = 128.
enum { L = 2, C = 64, NH = 4, HS = 16, T = 96, B = 2, N = B * T, VP = 128 };

static ParamTable small_table(void) {
    ModelShape shape = {L, NH, C, T, 100, 0};
    ParamTable table;
    param_table_init(&table, &shape);
    return table;
}

// The mixed preset's choices written out: bf16 operands everywhere, bf16 weights, fp32 gradients, 14 stored
// bytes per parameter (bf16 weights 2, fp32 master, m, v 4 each) and 4 of gradients.
static StepModelInput mixed_input(const ParamTable *table, int bf16_activations) {
    StepModelInput in = {0};
    in.table = table;
    in.B = B;
    in.T = T;
    in.accum_steps = 4;
    in.linear = in.attention = in.lm_head = MATMUL_BF16;
    in.bf16_activations = bf16_activations;
    in.fused_attention = 1;
    in.weight_bytes = 2;
    in.stored_state_bytes = 14.0 * (double)table->num_params;
    in.gradient_bytes = 4.0 * (double)table->num_params;
    return in;
}

static int near(double a, double b) { return fabs(a - b) <= 1e-9 * fmax(fabs(a), fabs(b)); }

// Every byte of the element-wise group under mixed_input, with A bytes per stored activation: the stored
// activations' share (the part that scales with A), the rest, and the cast passes (fp32 activations only).
typedef struct {
    double activations, rest, casts;
} ElementwiseByHand;

static ElementwiseByHand elementwise_by_hand(double A) {
    double NC = (double)N * C;
    ElementwiseByHand e = {0, 0, 0};
    // Forward: the encoder reads the tokens and two bf16 embedding rows per token, writes NC; the plain ln1 of
    // layer 0 reads NC and writes NC plus 2 fp32 statistics per row; per layer two fused residual+layernorms
    // (read 2 NC, write 2 NC, statistics) and GELU (reads and writes 4 NC).
    e.activations += NC + 2 * NC + L * (2 * 4 * NC + 2 * 4 * NC);
    e.rest += 4.0 * N + 2 * NC * 2 + 8.0 * N + L * 2 * 8.0 * N;
    // Backward: each layernorm backward (lnf, and ln2, ln1 per layer) reads dout (4), input (A), statistics,
    // reads and writes dresidual (4 + 4); its weight and bias partials come from the same rows.
    int layernorms = 1 + 2 * L;
    e.activations += layernorms * NC;
    e.rest += layernorms * (NC * (4 + 4 + 4) + 8.0 * N);
    // Per layer: GELU's backward, fused with its recomputation, reads dfch_gelu (4) and fch (A), writes the
    // GELU output (A) and dfch's bf16 operand (2) with its column partials (not counted); fcproj's and
    // attproj's output gradients (dresidual) are cast to bf16 with their column partials (read 4, write 2);
    // fc's and qkv's partials come from their producers: no bias gradient re-reads an output gradient.
    e.activations += L * (4 * NC + 4 * NC);
    e.rest += L * (4 * NC * (4 + 2) + 2 * NC * (4 + 2));
    // The encoder backward reads the tokens and dresidual, and reads and writes rows of dwte and dwpe.
    e.rest += 4.0 * N + 4 * NC + 2 * (2 * NC * 4);
    // fp32 activations: every linear's input is cast to bf16 in the forward and again in the backward (read 4,
    // write 2; inputs C + C + C + 4C = 7C per layer), and so is lnf for the LM head's two products.
    if (A == 4) e.casts = L * 2 * 7 * NC * (4 + 2) + 2 * NC * (4 + 2);
    return e;
}

static double elementwise_total(ElementwiseByHand e, double A) { return e.activations * A + e.rest + e.casts; }

static void test_small_shape_by_hand(void) {
    ParamTable table = small_table();
    CHECK(table.shape.padded_vocab == VP, "padded vocab %d", table.shape.padded_vocab);
    DeviceSpec device = device_spec_h100();
    StepModelInput in = mixed_input(&table, 1);
    StepModel m = step_model(&in, &device);

    // Matmuls: per layer qkv C x 3C, attproj C x C, fc C x 4C, fcproj 4C x C, and the LM head C x Vp; each 3
    // products of 2 N IN OUT.
    double per_layer_weights = 3.0 * C * C + 1.0 * C * C + 4.0 * C * C + 4.0 * C * C;
    double matmul_flops = 3 * 2.0 * N * (L * per_layer_weights + (double)C * VP);
    CHECK(near(m.groups[STEP_MATMULS].flops, matmul_flops), "matmul FLOPs %.0f, by hand %.0f",
          m.groups[STEP_MATMULS].flops, matmul_flops);

    // Fused attention: query tile 0 (rows 0-63) meets keys 0-63, tile 1 (rows 64-95) keys 0-95: 64*64 + 32*96
    // pairs per head, 2*hs FLOPs per pair per product, 3 products forward and 7 backward.
    double pairs = 64.0 * 64 + 32.0 * 96;
    double attention_flops = L * (double)B * NH * pairs * 2 * HS * (3 + 7);
    CHECK(near(m.groups[STEP_ATTENTION].flops - L * (double)N * C * 2, attention_flops),
          "fused attention FLOPs %.0f (less D's nominal 2 per element), by hand %.0f",
          m.groups[STEP_ATTENTION].flops - L * (double)N * C * 2, attention_flops);
    // Its traffic per layer: forward reads qkv (3C x 2 bytes), writes out (C x 2) and lse (NH fp32 per row);
    // backward's D reads dout (4) and out (2), writes NH per row; dK/dV and dQ each read qkv, dout, lse and D,
    // and write their gradients only as the qkv linear's bf16 operand (2C and C wide, 2 bytes; the column
    // partials are not counted).
    double NC = (double)N * C, stats = NH * (double)N * 4;
    double kernel_reads = 3 * NC * 2 + NC * 4 + 2 * stats;
    double attention_bytes = L * (4 * NC * 2 + stats + NC * 6 + stats + 2 * kernel_reads + 3 * NC * 2);
    CHECK(near(m.groups[STEP_ATTENTION].bytes, attention_bytes), "fused attention bytes %.0f, by hand %.0f",
          m.groups[STEP_ATTENTION].bytes, attention_bytes);

    // Matmul traffic: per linear IN x OUT, forward reads N x IN and the weight (bf16), writes N x OUT (bf16);
    // dinp reads dout (bf16) and the weight, writes N x IN fp32; dW reads dout and the input (bf16), reads
    // and writes the fp32 gradient: 8 N IN + 6 N OUT + 12 IN OUT. Per layer IN sums to 7C, OUT to 9C.
    double matmul_bytes = L * (8.0 * N * 7 * C + 6.0 * N * 9 * C + 12 * per_layer_weights) +
                          (8.0 * N * C + 6.0 * N * VP + 12.0 * C * VP);
    CHECK(near(m.groups[STEP_MATMULS].bytes, matmul_bytes), "matmul bytes %.0f, by hand %.0f",
          m.groups[STEP_MATMULS].bytes, matmul_bytes);

    // Loss: the classifier forward reads the bf16 logits and the targets, writes max, sum and loss per row;
    // the backward reads logits, statistics and targets, writes the logits' bf16 gradient.
    double logits = (double)N * VP;
    double loss_bytes = (logits * 2 + N * 4.0 + N * 12.0) + (logits * 2 + N * 12.0 + logits * 2);
    CHECK(near(m.groups[STEP_LOSS].bytes, loss_bytes), "loss bytes %.0f, by hand %.0f", m.groups[STEP_LOSS].bytes,
          loss_bytes);

    // Optimizer: the norm reads the fp32 gradients, AdamW reads them and reads and writes 14 bytes per
    // parameter, zero_grad writes them: 4 + 4 + 28 + 4.
    double optimizer_bytes = 40.0 * (double)table.num_params;
    CHECK(near(m.groups[STEP_OPTIMIZER].bytes, optimizer_bytes), "optimizer bytes %.0f, by hand %.0f",
          m.groups[STEP_OPTIMIZER].bytes, optimizer_bytes);

    ElementwiseByHand bf16 = elementwise_by_hand(2), fp32 = elementwise_by_hand(4);
    CHECK(near(m.groups[STEP_ELEMENTWISE].bytes, elementwise_total(bf16, 2)), "element-wise bytes %.0f, by hand %.0f",
          m.groups[STEP_ELEMENTWISE].bytes, elementwise_total(bf16, 2));
    StepModelInput fp32_in = mixed_input(&table, 0);
    StepModel m32 = step_model(&fp32_in, &device);
    CHECK(near(m32.groups[STEP_ELEMENTWISE].bytes, elementwise_total(fp32, 4)),
          "fp32 activations: element-wise bytes %.0f, by hand %.0f", m32.groups[STEP_ELEMENTWISE].bytes,
          elementwise_total(fp32, 4));
    // bf16 activations halve the stored activations' traffic of the element-wise group: the model's bytes less
    // the hand-counted rest and casts.
    double stored_bf16 = m.groups[STEP_ELEMENTWISE].bytes - bf16.rest - bf16.casts;
    double stored_fp32 = m32.groups[STEP_ELEMENTWISE].bytes - fp32.rest - fp32.casts;
    CHECK(near(2 * stored_bf16, stored_fp32), "stored activation bytes: %.0f under bf16, %.0f under fp32",
          stored_bf16, stored_fp32);

    // Totals: the micro-step's groups with a quarter of the optimizer's (4 accumulation steps).
    double seconds = m.groups[STEP_OPTIMIZER].seconds / 4, bytes = optimizer_bytes / 4;
    for (int g = 0; g < STEP_OPTIMIZER; g++) {
        seconds += m.groups[g].seconds;
        bytes += m.groups[g].bytes;
    }
    CHECK(near(m.micro_step_seconds, seconds), "micro-step %.9g s, groups %.9g s", m.micro_step_seconds, seconds);
    CHECK(near(m.bytes_per_token, bytes / N), "bytes per token %.1f, by hand %.1f", m.bytes_per_token, bytes / N);
    double model_flops = 6.0 * (double)table.num_params + 6.0 * L * C * T;
    CHECK(near(m.model_flops_per_token, model_flops), "model FLOPs/token %.0f, 6P + 6LCT = %.0f",
          m.model_flops_per_token, model_flops);
    CHECK(near(m.mfu_ceiling, model_flops * N / seconds / device.peak_bf16), "MFU ceiling %.6f", m.mfu_ceiling);
}

// Each group's time is at least its FLOPs at the fastest peak and its bytes at the bandwidth (a sum over
// kernels of their rooflines), and the bf16 group of a pure-compute shape runs at the bf16 peak.
static void test_rooflines(void) {
    ParamTable table = small_table();
    DeviceSpec device = device_spec_h100();
    StepModelInput in = mixed_input(&table, 1);
    StepModel m = step_model(&in, &device);
    for (int g = 0; g < STEP_NUM_GROUPS; g++) {
        const StepCost *c = &m.groups[g];
        double bound = fmax(c->flops / device.peak_bf16, c->bytes / device.bandwidth);
        CHECK(c->seconds >= bound * (1 - 1e-12), "%s: %.3g s below its bound %.3g s", step_group_name((StepGroup)g),
              c->seconds, bound);
    }
    // With unlimited bandwidth the matmuls take their FLOPs at the bf16 peak; fp32 operands at the fp32 peak,
    // or at the TF32 peak under allow_tf32; fp8 (simulated) never at TF32.
    device.bandwidth = 1e30;
    m = step_model(&in, &device);
    CHECK(near(m.groups[STEP_MATMULS].seconds, m.groups[STEP_MATMULS].flops / device.peak_bf16), "bf16 matmuls");
    in.linear = in.attention = in.lm_head = MATMUL_FP32;
    in.allow_tf32 = 1;
    m = step_model(&in, &device);
    CHECK(near(m.groups[STEP_MATMULS].seconds, m.groups[STEP_MATMULS].flops / device.peak_tf32), "tf32 matmuls");
    in.linear = in.lm_head = MATMUL_FP8;
    m = step_model(&in, &device);
    CHECK(near(m.groups[STEP_MATMULS].seconds, m.groups[STEP_MATMULS].flops / device.peak_fp32), "fp8 matmuls");
}

// bf16 gradients: each weight's gradient is written once to an fp32 scratch (no read-back in the product)
// and rounded into bf16 storage (read 4, read and write 2); wpe's scratch is zeroed and rounded too.
static void test_bf16_gradients(void) {
    ParamTable table = small_table();
    DeviceSpec device = device_spec_h100();
    StepModelInput in = mixed_input(&table, 1);
    StepModel fp32 = step_model(&in, &device);
    in.bf16_gradients = 1;
    StepModel bf16 = step_model(&in, &device);
    double weights = L * (12.0 * C * C) + (double)VP * C, wpe = (double)T * C;
    CHECK(near(fp32.groups[STEP_MATMULS].bytes - bf16.groups[STEP_MATMULS].bytes, 4 * weights),
          "matmul bytes: %.0f less under bf16 gradients, by hand %.0f",
          fp32.groups[STEP_MATMULS].bytes - bf16.groups[STEP_MATMULS].bytes, 4 * weights);
    double added = bf16.groups[STEP_ELEMENTWISE].bytes - fp32.groups[STEP_ELEMENTWISE].bytes;
    CHECK(near(added, 8 * weights + wpe * (4 + 8)), "element-wise bytes: %.0f more, by hand %.0f", added,
          8 * weights + wpe * (4 + 8));
}

// Materialized attention: full-square products (2 forward, 4 backward).
static void test_materialized_attention(void) {
    ParamTable table = small_table();
    DeviceSpec device = device_spec_h100();
    StepModelInput in = mixed_input(&table, 1);
    in.fused_attention = 0;
    StepModel m = step_model(&in, &device);
    double square = (double)B * NH * T * T;
    double product_flops = L * 6 * 2.0 * square * HS;
    // The softmax kernels' nominal FLOPs: 4 per score forward, 3 backward; the casts of dout and the
    // probabilities 1 per element.
    double nominal = L * (square * (4 + 3 + 1) + (double)N * C);
    CHECK(near(m.groups[STEP_ATTENTION].flops, product_flops + nominal), "materialized attention FLOPs %.0f, by hand %.0f",
          m.groups[STEP_ATTENTION].flops, product_flops + nominal);
}

static Policy preset(const char *name) {
    Config cfg;
    config_defaults(&cfg);
    char set[128];
    snprintf(set, sizeof set, "precision.policy=%s", name);
    config_set(&cfg, set);
    return policy_from_config(&cfg);
}

// The targets for GPT-2 124M at micro-batch 64 x 1024 (8 accumulation steps of 524288 tokens) on
// the H100 defaults, under the mixed preset (bf16 activations): traffic per token at least 3x below the
// pre-issue-16 design's, and an MFU ceiling of at least 60% (the model gives 63.3%: the bias gradients' column
// sums come from the producers of the output gradients, no fp32 copy of dfch or dqkv is written, and the
// layernorm backward reads its rows once).
static void test_gpt2_124m_targets(void) {
    ModelShape shape = {12, 12, 768, 1024, 50257, 0};
    ParamTable table;
    param_table_init(&table, &shape);
    Policy mixed = preset("mixed");
    CHECK(mixed.activations == ACTIVATIONS_BF16, "the mixed preset's activations");
    DeviceSpec device = device_spec_h100();
    StepModelInput in = step_model_input(&mixed, &table, 64, 1024, 8);
    StepModel now = step_model(&in, &device);
    in.legacy_design = 1;
    StepModel legacy = step_model(&in, &device);
    double ratio = legacy.bytes_per_token / now.bytes_per_token;
    printf("GPT-2 124M mixed, 64 x 1024: %.2f MB/token (pre-issue-16 design %.2f MB, %.2fx), MFU ceiling %.1f%%, "
           "%.0f tokens/s\n", now.bytes_per_token / 1e6, legacy.bytes_per_token / 1e6, ratio, 100 * now.mfu_ceiling,
           now.tokens_per_second);
    CHECK(ratio >= 3, "traffic per token only %.2fx below the pre-issue-16 design's", ratio);
    CHECK(now.mfu_ceiling >= 0.6, "MFU ceiling %.3f, below the issue's 0.60", now.mfu_ceiling);
    CHECK(legacy.mfu_ceiling < now.mfu_ceiling, "legacy MFU ceiling %.3f", legacy.mfu_ceiling);
}

static void read_environment(void *value) {
    setenv("LPGPT_BANDWIDTH", (const char *)value, 1);
    device_spec_from_environment();
}

static void test_environment(void) {
    const char *bad[] = {"fast", "", "0", "-3e12", "3e12x", "inf", "nan"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ChildResult r = run_in_child(read_environment, (void *)bad[i]);
        char expected[64];
        snprintf(expected, sizeof expected, "LPGPT_BANDWIDTH=%s: expected a positive number", bad[i]);
        CHECK(r.exit_status == 1 && strstr(r.message, expected), "LPGPT_BANDWIDTH=%s: status %d, %s", bad[i],
              r.exit_status, r.message);
    }
    setenv("LPGPT_PEAK_BF16_FLOPS", "1.979e15", 1);
    setenv("LPGPT_PEAK_FP32_FLOPS", "60e12", 1);
    setenv("LPGPT_BANDWIDTH", "4.8e12", 1);
    DeviceSpec spec = device_spec_from_environment();
    CHECK(spec.peak_bf16 == 1.979e15 && spec.peak_fp32 == 60e12 && spec.bandwidth == 4.8e12 &&
              spec.peak_tf32 == device_spec_h100().peak_tf32, "overrides: %g %g %g %g", spec.peak_bf16, spec.peak_tf32,
          spec.peak_fp32, spec.bandwidth);
    unsetenv("LPGPT_PEAK_BF16_FLOPS");
    unsetenv("LPGPT_PEAK_FP32_FLOPS");
    unsetenv("LPGPT_BANDWIDTH");
}

// Under fp32 activations at more than 1024 rows the logits come in chunks: the backward forms them twice
// again (2 more LM-head products, 2 * N * C * Vp FLOPs each), once more runs the classifier's backward (it
// reads the fp32 logits, the statistics and targets, and writes the bf16 gradient), and casts lnf (read 4,
// write 2) and wte (bf16 as stored: no cast) once more. At 1024 rows or fewer, nothing changes.
static void test_chunked_logits(void) {
    ParamTable table = small_table();
    DeviceSpec device = device_spec_h100();
    StepModelInput in = mixed_input(&table, 0);
    in.B = 8;  // N = 768: one chunk
    StepModel whole = step_model(&in, &device);
    in.B = 16;  // N = 1536: two chunks
    StepModel chunked = step_model(&in, &device);
    double n16 = 16.0 * T, n8 = 8.0 * T;
    double per_row = whole.groups[STEP_MATMULS].flops / n8;  // every matmul FLOP scales with the rows
    double extra = chunked.groups[STEP_MATMULS].flops - per_row * n16;
    CHECK(near(extra, 2 * 2 * n16 * C * VP), "chunked logits: %.0f more matmul FLOPs, by hand %.0f", extra,
          2 * 2 * n16 * C * VP);
    double loss_per_row = whole.groups[STEP_LOSS].bytes / n8;
    double extra_loss = chunked.groups[STEP_LOSS].bytes - loss_per_row * n16;
    double classifier_backward = n16 * VP * 4 + n16 * 12 + n16 * VP * 2;
    CHECK(near(extra_loss, classifier_backward), "chunked logits: %.0f more loss bytes, by hand %.0f", extra_loss,
          classifier_backward);
}

int main(void) {
    test_small_shape_by_hand();
    test_rooflines();
    test_bf16_gradients();
    test_materialized_attention();
    test_chunked_logits();
    test_gpt2_124m_targets();
    test_environment();
    return test_summary("test_step_model");
}
