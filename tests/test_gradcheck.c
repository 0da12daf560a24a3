// The CPU backward against finite differences: every parameter tensor of a tiny GPT-2, the ops one by
// one, the padded vocabulary rows (exactly zero gradient), gradient accumulation, the bf16 matmul
// format (close to fp32, but not equal), and bf16 activations (every stored tensor bf16; the gradient within
// bf16's rounding of the true one).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/gpt_cpu.h"
#include "cpu/ops.h"
#include "model.h"
#include "numerics/bf16.h"
#include "numerics/rng.h"
#include "testing.h"
#include "util.h"

// Tiny model: two layers, two heads of 8 channels, 37 tokens padded to 128.
enum { L = 2, C = 16, NH = 2, T = 8, B = 2, V = 37 };

// Finite differences run in fp32, where each loss carries a rounding error of a few ulps of ~3.8,
// about 1e-6. A central difference with step h has that noise divided by 2h, plus a truncation error of
// order h^2 * f'''. With parameters and activations of order 1, h = 1e-2 balances the two: measured
// worst relative errors over the tensors were 6e-2 at h = 1e-1 (truncation), 7e-4 at 1e-2 and 3e-3
// at 1e-3 (noise). The step actually taken is the difference of the two rounded parameter values.
// Single entries with tiny gradients drown in the noise, so each tensor is judged by the norm of its
// error over the probed entries relative to the norm of its gradient there: 5e-3 leaves a margin of 7
// over the worst correct tensor, while a wrong term (a factor, a sign, a missing path) makes an error of
// order 1e-2 or more (measured: scaling the logit gradient by 1.01 already fails every tensor).
#define FD_STEP 1e-2f
#define FD_TOLERANCE 5e-3
#define PROBES_PER_TENSOR 24
// Under bf16 activations the backward differentiates the model at the rounded stored tensors: each stored
// tensor is off by at most 2^-9 relative (half of bf16's 2^-8 spacing), and the deepest path of this model
// stores 23 of them (encoded; per layer ln1, qkv, atty, attproj out, residual2, ln2, fch, fch_gelu, fcproj
// out, residual3; lnf; logits). Errors that all push the same way add to at most 23 * 2^-9 = 4.5e-2; on
// top of the finite differences' own 5e-3 that is 5.0e-2. (A random walk, sqrt(23) * 2^-9 = 9.4e-3, is
// too optimistic: layernorm's 1/std amplifies the rounding, and wpe measured 1.6e-2.)
#define BF16_ACT_TOLERANCE (FD_TOLERANCE + 23 * 0x1p-9)

static float uniform_pm1(RngKey key, uint64_t i) { return 2.0f * rng_uniform(key, i) - 1.0f; }

// Parameters far from GPT-2's init, so that every path carries a sizeable gradient: matrices uniform in
// +-0.5 (std 0.29) make pre-activations of order 1 at C = 16, LayerNorm gains and biases vary, and the padded
// rows of wte are NOT zero (their gradient must still be exactly zero).
static void random_params(const ParamTable *table, float *params) {
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const ParamTensor *t = &table->tensors[i];
        RngKey key = {1234, 0, (uint32_t)i};
        int is_gain = i == PARAM_LN1W || i == PARAM_LN2W || i == PARAM_LNFW;
        float scale = t->is_matrix ? 0.5f : 0.2f;
        for (size_t e = 0; e < t->numel; e++)
            params[t->offset + e] = (is_gain ? 1.0f : 0.0f) + scale * uniform_pm1(key, e);
    }
}

static void random_tokens(int *tokens, int n, uint32_t stream) {
    RngKey key = {99, 0, stream};
    for (int i = 0; i < n; i++) tokens[i] = (int)(rng_u32(key, (uint64_t)i) % V);
}

typedef struct {
    ParamTable table;
    GPTCpu *model;
    float *params;
    float *grads;
    int inputs[B * T];
    int targets[B * T];
} Setup;

static void setup_init(Setup *s) {
    ModelShape shape = {L, NH, C, T, V, 0};
    param_table_init(&s->table, &shape);
    s->model = gpt_cpu_create(&s->table, B, T);
    s->params = xmalloc(s->table.num_params * sizeof(float));
    s->grads = xcalloc(s->table.num_params, sizeof(float));
    random_params(&s->table, s->params);
    random_tokens(s->inputs, B * T, 1);
    random_tokens(s->targets, B * T, 2);
}

static void setup_free(Setup *s) {
    gpt_cpu_free(s->model);
    free(s->params);
    free(s->grads);
}

static float loss_at(Setup *s) { return gpt_cpu_forward(s->model, s->params, s->inputs, s->targets, B, T); }

// Central difference of the loss with respect to params[index].
static double finite_difference(Setup *s, size_t index) {
    float original = s->params[index];
    float up = original + FD_STEP, down = original - FD_STEP;
    s->params[index] = up;
    double loss_up = loss_at(s);
    s->params[index] = down;
    double loss_down = loss_at(s);
    s->params[index] = original;
    return (loss_up - loss_down) / ((double)up - (double)down);
}

// The backward with the given activation storage against finite differences of the fp32 model (the true
// function: under bf16 storage the loss is piecewise constant at fine steps).
static void check_model_gradients(ActivationStorage activations, double tolerance) {
    Setup s;
    setup_init(&s);
    gpt_cpu_set_activations(s.model, activations);
    float loss = loss_at(&s);
    gpt_cpu_backward(s.model, s.params, s.grads, 1.0f);
    gpt_cpu_set_activations(s.model, ACTIVATIONS_FP32);
    CHECK(isfinite(loss) && loss > 1.0f, "loss %f", loss);
    printf("  activations %s:\n", activations == ACTIVATIONS_BF16 ? "bf16" : "fp32");

    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const ParamTensor *t = &s.table.tensors[i];
        // Probe the real part of wte only; its padded rows are checked exactly below.
        size_t probe_range = i == PARAM_WTE ? (size_t)V * C : t->numel;
        RngKey key = {7, 0, (uint32_t)i};
        double err2 = 0.0, ref2 = 0.0;
        int probes = probe_range < PROBES_PER_TENSOR ? (int)probe_range : PROBES_PER_TENSOR;
        for (int p = 0; p < probes; p++) {
            size_t e = probe_range <= PROBES_PER_TENSOR ? (size_t)p : rng_u32(key, (uint64_t)p) % probe_range;
            double fd = finite_difference(&s, t->offset + e);
            double analytic = s.grads[t->offset + e];
            err2 += (fd - analytic) * (fd - analytic);
            ref2 += analytic * analytic;
        }
        double rel = sqrt(err2) / sqrt(ref2);
        printf("  %-9s |grad| %.3e  relative error %.2e\n", t->name, sqrt(ref2), rel);
        CHECK(ref2 > 0.0, "%s: probed gradient is zero", t->name);
        CHECK(rel < tolerance, "%s: relative error %.3e", t->name, rel);
    }

    // Padded rows of wte (ids >= V) reach only padded logits, which the loss never reads.
    const ParamTensor *wte = &s.table.tensors[PARAM_WTE];
    size_t padded_nonzero = 0;
    for (size_t e = (size_t)V * C; e < wte->numel; e++) padded_nonzero += s.grads[wte->offset + e] != 0.0f;
    CHECK(padded_nonzero == 0, "%zu gradient entries of padded wte rows are not 0", padded_nonzero);
    CHECK(finite_difference(&s, wte->offset + (size_t)V * C + 3) == 0.0, "a padded row changes the loss");
    setup_free(&s);
}

// Backward adds into grads: two halves accumulate to one whole, and a loss scale scales the gradient.
static void check_accumulation(void) {
    Setup s;
    setup_init(&s);
    size_t n = s.table.num_params;
    float *whole = xcalloc(n, sizeof(float));
    loss_at(&s);
    gpt_cpu_backward(s.model, s.params, whole, 1.0f);
    gpt_cpu_backward(s.model, s.params, s.grads, 0.5f);
    gpt_cpu_backward(s.model, s.params, s.grads, 0.5f);
    double err2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        err2 += ((double)s.grads[i] - whole[i]) * ((double)s.grads[i] - whole[i]);
        ref2 += (double)whole[i] * whole[i];
    }
    CHECK(sqrt(err2) <= 1e-6 * sqrt(ref2), "0.5 + 0.5 differs from 1: %.3e of %.3e", sqrt(err2), sqrt(ref2));
    free(whole);
    setup_free(&s);
}

// bf16 matmul operands change the loss a little, but they do change it; gradients stay close.
static void check_bf16_matmuls(void) {
    Setup s;
    setup_init(&s);
    size_t n = s.table.num_params;
    float loss32 = loss_at(&s);
    float *grads32 = xcalloc(n, sizeof(float));
    gpt_cpu_backward(s.model, s.params, grads32, 1.0f);

    MatmulPrecision bf16 = {.format = MATMUL_BF16};
    gpt_cpu_set_precision(s.model, &bf16, &bf16, &bf16);
    float loss16 = loss_at(&s);
    gpt_cpu_backward(s.model, s.params, s.grads, 1.0f);
    double diff = fabs((double)loss16 - loss32);
    printf("  bf16 matmuls: loss %.6f vs fp32 %.6f\n", loss16, loss32);
    CHECK(diff > 0.0, "bf16 operands left the loss unchanged (%f)", loss16);
    CHECK(diff < 1e-2 * loss32, "bf16 loss %f too far from fp32 %f", loss16, loss32);

    double err2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        err2 += ((double)s.grads[i] - grads32[i]) * ((double)s.grads[i] - grads32[i]);
        ref2 += (double)grads32[i] * grads32[i];
    }
    printf("  bf16 matmuls: gradient relative difference %.2e\n", sqrt(err2 / ref2));
    CHECK(err2 > 0.0 && sqrt(err2 / ref2) < 5e-2, "bf16 gradient differs by %.3e", sqrt(err2 / ref2));
    const ParamTensor *wte = &s.table.tensors[PARAM_WTE];
    size_t padded_nonzero = 0;
    for (size_t e = (size_t)V * C; e < wte->numel; e++) padded_nonzero += s.grads[wte->offset + e] != 0.0f;
    CHECK(padded_nonzero == 0, "bf16: %zu padded wte gradient entries are not 0", padded_nonzero);
    free(grads32);
    setup_free(&s);
}

// ---- ops one by one: J = sum(out * R) for a fixed random R, so dout = R ----
// The same step FD_STEP; with a single op between input and objective the measured errors are below
// 3e-5, so these checks use a tolerance of 1e-3 over all entries of each input.
#define OP_TOLERANCE 1e-3

static void fill_random(float *x, size_t n, uint32_t stream, float scale) {
    RngKey key = {5, 0, stream};
    for (size_t i = 0; i < n; i++) x[i] = scale * uniform_pm1(key, i);
}

static double weighted_sum(const float *out, const float *r, size_t n) {
    double j = 0.0;
    for (size_t i = 0; i < n; i++) j += (double)out[i] * r[i];
    return j;
}

// Compares an analytic gradient with central differences of objective() over every entry of x.
typedef double (*Objective)(void *ctx);

static double op_gradient_error(Objective objective, void *ctx, float *x, const float *grad, size_t n) {
    double err2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        float original = x[i], up = original + FD_STEP, down = original - FD_STEP;
        x[i] = up;
        double j_up = objective(ctx);
        x[i] = down;
        double j_down = objective(ctx);
        x[i] = original;
        double fd = (j_up - j_down) / ((double)up - (double)down);
        err2 += (fd - grad[i]) * (fd - grad[i]);
        ref2 += (double)grad[i] * grad[i];
    }
    return sqrt(err2 / ref2);
}

enum { LN_N = 5, LN_C = 24 };
typedef struct {
    float inp[LN_N * LN_C], weight[LN_C], bias[LN_C], r[LN_N * LN_C];
    float out[LN_N * LN_C], mean[LN_N], rstd[LN_N];
} LayernormCase;

static double layernorm_objective(void *ctx) {
    LayernormCase *c = ctx;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->weight, c->bias, LN_N, LN_C);
    return weighted_sum(c->out, c->r, LN_N * LN_C);
}

static void check_layernorm(void) {
    LayernormCase c;
    fill_random(c.inp, LN_N * LN_C, 1, 2.0f);
    fill_random(c.weight, LN_C, 2, 1.0f);
    fill_random(c.bias, LN_C, 3, 1.0f);
    fill_random(c.r, LN_N * LN_C, 4, 1.0f);
    float dinp[LN_N * LN_C] = {0}, dweight[LN_C] = {0}, dbias[LN_C] = {0};
    layernorm_objective(&c);
    layernorm_backward(dinp, dweight, dbias, c.r, c.inp, c.weight, c.mean, c.rstd, LN_N, LN_C);
    double e_inp = op_gradient_error(layernorm_objective, &c, c.inp, dinp, LN_N * LN_C);
    double e_w = op_gradient_error(layernorm_objective, &c, c.weight, dweight, LN_C);
    double e_b = op_gradient_error(layernorm_objective, &c, c.bias, dbias, LN_C);
    printf("  layernorm: relative errors inp %.2e weight %.2e bias %.2e\n", e_inp, e_w, e_b);
    CHECK(e_inp < OP_TOLERANCE, "layernorm input: %.3e", e_inp);
    CHECK(e_w < OP_TOLERANCE, "layernorm weight: %.3e", e_w);
    CHECK(e_b < OP_TOLERANCE, "layernorm bias: %.3e", e_b);
}

enum { AT_B = 2, AT_T = 5, AT_C = 8, AT_NH = 2 };
typedef struct {
    float qkv[AT_B * AT_T * 3 * AT_C], r[AT_B * AT_T * AT_C];
    float out[AT_B * AT_T * AT_C], att[AT_B * AT_NH * AT_T * AT_T];
} AttentionCase;

static const MatmulPrecision attention_fp32 = {.format = MATMUL_FP32};

static double attention_objective(void *ctx) {
    AttentionCase *c = ctx;
    OperandCast cast = operand_cast_for(&attention_fp32);
    attention_forward(c->out, c->att, c->qkv, AT_B, AT_T, AT_C, AT_NH, &cast);
    return weighted_sum(c->out, c->r, AT_B * AT_T * AT_C);
}

static void check_attention(void) {
    AttentionCase c;
    fill_random(c.qkv, AT_B * AT_T * 3 * AT_C, 5, 1.5f);
    fill_random(c.r, AT_B * AT_T * AT_C, 6, 1.0f);
    float dqkv[AT_B * AT_T * 3 * AT_C] = {0};
    attention_objective(&c);
    // Causality: each softmax row sums to 1 and is 0 above the diagonal.
    for (int row = 0; row < AT_B * AT_NH * AT_T; row++) {
        int t = row % AT_T;
        float sum = 0.0f, future = 0.0f;
        for (int t2 = 0; t2 < AT_T; t2++) {
            if (t2 <= t) sum += c.att[row * AT_T + t2];
            else future += c.att[row * AT_T + t2];
        }
        CHECK(fabsf(sum - 1.0f) < 1e-6f && future == 0.0f, "att row %d: sum %f future %f", row, sum, future);
    }
    OperandCast cast = operand_cast_for(&attention_fp32);
    attention_backward(dqkv, c.r, c.qkv, c.att, AT_B, AT_T, AT_C, AT_NH, &cast);
    double e = op_gradient_error(attention_objective, &c, c.qkv, dqkv, AT_B * AT_T * 3 * AT_C);
    printf("  attention: relative error %.2e\n", e);
    CHECK(e < OP_TOLERANCE, "attention: %.3e", e);
}

enum { GELU_N = 64 };
typedef struct {
    float inp[GELU_N], r[GELU_N], out[GELU_N];
} GeluCase;

static double gelu_objective(void *ctx) {
    GeluCase *c = ctx;
    gelu_forward(c->out, c->inp, GELU_N);
    return weighted_sum(c->out, c->r, GELU_N);
}

static void check_gelu(void) {
    GeluCase c;
    fill_random(c.inp, GELU_N, 7, 4.0f);
    fill_random(c.r, GELU_N, 8, 1.0f);
    float dinp[GELU_N] = {0};
    gelu_backward(dinp, c.r, c.inp, GELU_N);
    double e = op_gradient_error(gelu_objective, &c, c.inp, dinp, GELU_N);
    printf("  gelu: relative error %.2e\n", e);
    CHECK(e < OP_TOLERANCE, "gelu: %.3e", e);
}

// The matmul is linear, so it is checked exactly against a double-precision reference instead, with
// sizes that leave partial tiles in every dimension.
enum { MM_N = 7, MM_C = 13, MM_OC = 70 };

static void check_matmul(void) {
    static float inp[MM_N * MM_C], weight[MM_OC * MM_C], bias[MM_OC], out[MM_N * MM_OC], dout[MM_N * MM_OC];
    static float dinp[MM_N * MM_C], dweight[MM_OC * MM_C], dbias[MM_OC];
    fill_random(inp, MM_N * MM_C, 9, 1.0f);
    fill_random(weight, MM_OC * MM_C, 10, 1.0f);
    fill_random(bias, MM_OC, 11, 1.0f);
    fill_random(dout, MM_N * MM_OC, 12, 1.0f);
    // Gradients start non-zero: the backward must add to them.
    for (int i = 0; i < MM_N * MM_C; i++) dinp[i] = 1.0f;
    for (int i = 0; i < MM_OC * MM_C; i++) dweight[i] = 1.0f;
    for (int i = 0; i < MM_OC; i++) dbias[i] = 1.0f;
    matmul_forward(out, inp, weight, bias, MM_N, MM_C, MM_OC);
    matmul_backward(dinp, dweight, dbias, dout, inp, weight, MM_N, MM_C, MM_OC);
    // Each value sums at most 70 products of magnitude <= 1 in fp32.
    const double tol = 1e-5;
    double worst = 0.0;
    for (int n = 0; n < MM_N; n++)
        for (int o = 0; o < MM_OC; o++) {
            double ref = bias[o];
            for (int c = 0; c < MM_C; c++) ref += (double)inp[n * MM_C + c] * weight[o * MM_C + c];
            worst = fmax(worst, fabs(ref - out[n * MM_OC + o]));
        }
    for (int n = 0; n < MM_N; n++)
        for (int c = 0; c < MM_C; c++) {
            double ref = 1.0;
            for (int o = 0; o < MM_OC; o++) ref += (double)dout[n * MM_OC + o] * weight[o * MM_C + c];
            worst = fmax(worst, fabs(ref - dinp[n * MM_C + c]));
        }
    for (int o = 0; o < MM_OC; o++) {
        double ref_b = 1.0;
        for (int n = 0; n < MM_N; n++) ref_b += dout[n * MM_OC + o];
        worst = fmax(worst, fabs(ref_b - dbias[o]));
        for (int c = 0; c < MM_C; c++) {
            double ref = 1.0;
            for (int n = 0; n < MM_N; n++) ref += (double)dout[n * MM_OC + o] * inp[n * MM_C + c];
            worst = fmax(worst, fabs(ref - dweight[o * MM_C + c]));
        }
    }
    printf("  matmul: largest error %.2e\n", worst);
    CHECK(worst < tol, "matmul: largest error %.3e", worst);
}

// Number of elements of x (n) that are not bf16 values.
static size_t non_bf16_count(const float *x, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += round_bf16(x[i]) != x[i];
    return count;
}

// Under bf16 activations every tensor the forward stores holds bf16 values only; under fp32 each holds
// others (so the inspection sees the real buffers). The loss moves, but little.
static void check_stored_activations(void) {
    Setup s;
    setup_init(&s);
    StoredActivation stored[NUM_STORED_ACTIVATIONS];
    float loss32 = loss_at(&s);
    gpt_cpu_stored_activations(s.model, stored);
    for (int i = 0; i < NUM_STORED_ACTIVATIONS; i++)
        CHECK(non_bf16_count(stored[i].data, stored[i].n) > 0, "fp32 %s: every value is a bf16 value", stored[i].name);
    gpt_cpu_set_activations(s.model, ACTIVATIONS_BF16);
    float loss16 = loss_at(&s);
    gpt_cpu_stored_activations(s.model, stored);
    for (int i = 0; i < NUM_STORED_ACTIVATIONS; i++) {
        size_t bad = non_bf16_count(stored[i].data, stored[i].n);
        CHECK(bad == 0, "bf16 %s: %zu of %zu values are not bf16 values", stored[i].name, bad, stored[i].n);
    }
    printf("  bf16 activations: loss %.6f vs fp32 %.6f\n", loss16, loss32);
    CHECK(loss16 != loss32 && fabs((double)loss16 - loss32) < 1e-2 * loss32, "bf16 activations: loss %f vs %f",
          loss16, loss32);
    setup_free(&s);
}

int main(void) {
    check_matmul();
    check_layernorm();
    check_attention();
    check_gelu();
    check_model_gradients(ACTIVATIONS_FP32, FD_TOLERANCE);
    check_model_gradients(ACTIVATIONS_BF16, BF16_ACT_TOLERANCE);
    check_stored_activations();
    check_accumulation();
    check_bf16_matmuls();
    return test_summary("test_gradcheck");
}
