// Matmul operand formats of the CPU model: fp8 (E4M3 forward, E5M2 gradients, delayed and current scaling),
// eXmY with nearest or toward-zero rounding, and the attention switch. Operands are checked as the model's
// matmuls receive them, through the model's operand observer, on its real activations.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/gpt_cpu.h"
#include "cpu/ops.h"
#include "model.h"
#include "numerics/bf16.h"
#include "numerics/rng.h"
#include "numerics/scaling.h"
#include "testing.h"
#include "util.h"

// A small GPT-2 at its init: two layers, four heads of 16 channels, the byte-level vocabulary.
enum { L = 2, NH = 4, C = 64, T = 32, B = 2, V = 257 };
#define NUM_OPERANDS (L * NUM_BLOCK_LINEARS * NUM_OPERAND_ROLES)

typedef struct {
    ParamTable table;
    float *params;
    float *grads;
    int inputs[B * T];
    int targets[B * T];
} Setup;

static void random_tokens(Setup *s, uint32_t batch) {
    RngKey key = {11, batch, 0};
    for (int i = 0; i < B * T; i++) {
        s->inputs[i] = (int)(rng_u32(key, 2 * (uint64_t)i) % V);
        s->targets[i] = (int)(rng_u32(key, 2 * (uint64_t)i + 1) % V);
    }
}

static void setup_init(Setup *s) {
    ModelShape shape = {L, NH, C, T, V, 0};
    param_table_init(&s->table, &shape);
    s->params = xmalloc(s->table.num_params * sizeof(float));
    s->grads = xcalloc(s->table.num_params, sizeof(float));
    gpt_init_params(&s->table, s->params, 7);
    random_tokens(s, 0);
}

static void setup_free(Setup *s) {
    free(s->params);
    free(s->grads);
}

static GPTCpu *create_model_sites(const Setup *s, const MatmulPrecision *linear, const MatmulPrecision *attention,
                                  const MatmulPrecision *lm_head) {
    GPTCpu *model = gpt_cpu_create(&s->table, B, T);
    gpt_cpu_set_precision(model, linear, attention, lm_head);
    // fp8 attention (per-row scales) exists only materialized, as the policy enforces; the rest runs fused.
    gpt_cpu_set_attention(model, attention->format == MATMUL_FP8 ? ATTENTION_MATERIALIZED : ATTENTION_FUSED);
    return model;
}

// Attention and the LM head in the same format.
static GPTCpu *create_model(const Setup *s, const MatmulPrecision *linear, MatmulFormat attention) {
    MatmulPrecision head = {.format = attention};
    return create_model_sites(s, linear, &head, &head);
}

static float train_step(GPTCpu *model, Setup *s) {
    float loss = gpt_cpu_forward(model, s->params, s->inputs, s->targets, B, T);
    memset(s->grads, 0, s->table.num_params * sizeof(float));
    gpt_cpu_backward(model, s->params, s->grads, 1.0f);
    return loss;
}

static int operand_index(const OperandView *v) {
    return (v->layer * NUM_BLOCK_LINEARS + (int)v->linear) * NUM_OPERAND_ROLES + (int)v->role;
}

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static size_t distinct_values(const float *x, size_t n) {
    uint32_t *bits = xmalloc(n * sizeof(uint32_t));
    memcpy(bits, x, n * sizeof(uint32_t));
    qsort(bits, n, sizeof(uint32_t), compare_u32);
    size_t distinct = n ? 1 : 0;
    for (size_t i = 1; i < n; i++) distinct += bits[i] != bits[i - 1];
    free(bits);
    return distinct;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

// ---- fp8: every cast operand of every linear layer, forward and backward ----

// The test's own account of each operand tensor: its amax history (newest first, as the model promises)
// and the scale of its last forward cast.
#define MAX_HISTORY 8
typedef struct {
    ScalingMode mode;
    int history_length, margin;
    float history[NUM_OPERANDS][MAX_HISTORY];
    float forward_scale[NUM_OPERANDS];
    int views, wrong_grid, wrong_value, too_many_values, wrong_scale, differs_from_current;
} Fp8Check;

static void push_amax(Fp8Check *c, int id, float amax) {
    memmove(c->history[id] + 1, c->history[id], (MAX_HISTORY - 1) * sizeof(float));
    c->history[id][0] = amax;
}

// The scale the recipe asks for, from the test's own history (delayed) or the tensor's amax (current).
static float expected_scale(const Fp8Check *c, int id, float amax, float fmt_max) {
    float history_max = 0.0f;
    for (int i = 0; c->mode == SCALING_DELAYED && i < c->history_length; i++)
        history_max = fmaxf(history_max, c->history[id][i]);
    float used = history_max > 0.0f ? history_max : amax;
    return fmt_max / used / pow2_f32(c->margin);
}

static void check_fp8_view(void *ctx, const OperandView *v) {
    Fp8Check *c = ctx;
    int id = operand_index(v);
    int gradient = v->role == OPERAND_OUTPUT_GRAD;
    ExmyFormat grid = gradient ? exmy_e5m2() : exmy_e4m3();
    float amax = tensor_amax(v->original, v->n);
    c->views++;
    if (v->backward && !gradient) {
        // Re-cast with the forward's scale; this forward use enters the history now (the model records it
        // at the end of the backward, the same thing for a history nobody reads in between).
        c->wrong_scale += !same_bits(v->scale, c->forward_scale[id]);
        push_amax(c, id, amax);
    } else {
        c->wrong_scale += !same_bits(v->scale, expected_scale(c, id, amax, grid.max_finite));
        c->differs_from_current += v->scale != grid.max_finite / amax / pow2_f32(c->margin);
        if (gradient) push_amax(c, id, amax);
        else c->forward_scale[id] = v->scale;
    }
    for (size_t i = 0; i < v->n; i++) {
        float value = v->cast[i];
        // The E4M3 (E5M2) value this element was cast to: value * scale rounds back onto it.
        float on_grid = exmy_quantize(value * v->scale, grid, ROUND_NEAREST_EVEN, OVERFLOW_SATURATE, 0u);
        c->wrong_grid += !same_bits(on_grid * (1.0f / v->scale), value);
        float reference = quantize_dequantize_scaled(v->original[i], v->scale, grid, ROUND_NEAREST_EVEN, 0u);
        c->wrong_value += !same_bits(value, reference);
    }
    c->too_many_values += distinct_values(v->cast, v->n) > 256;
}

// Four training steps on different batches, every operand cast checked; the model's own history buffer
// must end up equal to the test's account.
static void check_fp8_operands(ScalingMode mode) {
    const char *name = mode == SCALING_DELAYED ? "delayed" : "current";
    Setup s;
    setup_init(&s);
    MatmulPrecision fp8 = {.format = MATMUL_FP8, .scaling = mode, .amax_history = 3, .margin = 1};
    GPTCpu *model = create_model(&s, &fp8, MATMUL_BF16);
    Fp8Check *c = xcalloc(1, sizeof *c);
    c->mode = mode;
    c->history_length = fp8.amax_history;
    c->margin = fp8.margin;
    gpt_cpu_observe_operands(model, check_fp8_view, c);
    for (uint32_t step = 0; step < 4; step++) {
        random_tokens(&s, step);
        float loss = train_step(model, &s);
        CHECK(isfinite(loss), "fp8 %s: loss %f", name, loss);
    }
    int expected_views = 4 * L * NUM_BLOCK_LINEARS * (2 + 3);  // per step and layer: 2 casts forward, 3 backward
    printf("  fp8 %s: %d casts checked, %d scales differ from current scaling\n", name, c->views,
           c->differs_from_current);
    CHECK(c->views == expected_views, "fp8 %s: %d casts observed, expected %d", name, c->views, expected_views);
    CHECK(c->wrong_scale == 0, "fp8 %s: %d casts with an unexpected scale", name, c->wrong_scale);
    CHECK(c->wrong_grid == 0, "fp8 %s: %d values off the E4M3/E5M2 grid x 1/scale", name, c->wrong_grid);
    CHECK(c->wrong_value == 0, "fp8 %s: %d values differ from the scaled cast", name, c->wrong_value);
    CHECK(c->too_many_values == 0, "fp8 %s: %d tensors with more than 256 values", name, c->too_many_values);
    if (mode == SCALING_DELAYED) CHECK(c->differs_from_current > 0, "delayed scales all equal current scales");
    else CHECK(c->differs_from_current == 0, "current scaling: %d scales differ", c->differs_from_current);

    float *state;
    size_t n = gpt_cpu_scaling_state(model, &state);
    if (mode == SCALING_CURRENT) {
        CHECK(n == 0 && state == NULL, "current scaling keeps %zu floats of state", n);
    } else {
        CHECK(n == (size_t)NUM_OPERANDS * fp8.amax_history, "delayed scaling state of %zu floats", n);
        int mismatched = 0;
        for (int id = 0; id < NUM_OPERANDS && n; id++)
            for (int i = 0; i < fp8.amax_history; i++)
                mismatched += !same_bits(state[id * fp8.amax_history + i], c->history[id][i]);
        CHECK(mismatched == 0, "%d history entries differ from the uses' amaxes", mismatched);
    }
    free(c);
    gpt_cpu_free(model);
    setup_free(&s);
}

// ---- delayed scaling against hand-computed scales ----

// ctx: the scale of layer 0's qkv weight at its last forward cast.
static void note_weight_scale(void *ctx, const OperandView *v) {
    if (v->layer == 0 && v->linear == LINEAR_QKV && v->role == OPERAND_WEIGHT && !v->backward)
        *(float *)ctx = v->scale;
}

// Layer 0's qkv weight is scaled by a power of two before each use, so its amax at use k is factor[k] * a
// exactly. With a history of 2 and margin 2, use k casts with 448 / max(amax of uses k-1, k-2) / 4, and
// use 0 (no history) with its own amax. Use 4's window {0.25a, 0.5a} leaves out use 1's 4a, which a longer
// history would still hold. A forward without a backward (evaluation) is no use: it leaves the history alone.
static void check_delayed_sequence(void) {
    Setup s;
    setup_init(&s);
    MatmulPrecision fp8 = {.format = MATMUL_FP8, .scaling = SCALING_DELAYED, .amax_history = 2, .margin = 2};
    GPTCpu *model = create_model(&s, &fp8, MATMUL_FP32);
    float seen_scale = 0.0f;
    gpt_cpu_observe_operands(model, note_weight_scale, &seen_scale);

    float *qkvw = s.params + s.table.tensors[PARAM_QKVW].offset;  // layer 0's slice first: (3C, C)
    size_t n = (size_t)3 * C * C;
    float *original = xmalloc(n * sizeof(float));
    memcpy(original, qkvw, n * sizeof(float));
    float a = tensor_amax(original, n);
    const float factor[] = {1.0f, 4.0f, 0.5f, 0.25f, 2.0f};
    const float expected_amax[] = {1.0f, 1.0f, 4.0f, 4.0f, 0.5f};  // x a: the max of the window
    for (int k = 0; k < 5; k++) {
        // An evaluation forward with a huge weight first: it must not reach the history.
        for (size_t i = 0; i < n; i++) qkvw[i] = 1000.0f * original[i];
        gpt_cpu_forward(model, s.params, s.inputs, s.targets, B, T);
        for (size_t i = 0; i < n; i++) qkvw[i] = factor[k] * original[i];
        train_step(model, &s);
        float expected = 448.0f / (expected_amax[k] * a) / 4.0f;
        CHECK(same_bits(seen_scale, expected), "use %d: scale %.9g, expected %.9g", k, seen_scale, expected);
    }
    // The model's history of that tensor: uses 4 and 3, newest first.
    float *state;
    size_t count = gpt_cpu_scaling_state(model, &state);
    int id = (0 * NUM_BLOCK_LINEARS + LINEAR_QKV) * NUM_OPERAND_ROLES + OPERAND_WEIGHT;
    CHECK(count == (size_t)NUM_OPERANDS * 2, "state of %zu floats", count);
    CHECK(state[2 * id] == 2.0f * a && state[2 * id + 1] == 0.25f * a, "history {%g, %g}, expected {%g, %g}",
          state[2 * id], state[2 * id + 1], 2.0f * a, 0.25f * a);
    free(original);
    gpt_cpu_free(model);
    setup_free(&s);
}

// The history buffer is the whole state: a fresh model given a copy of it continues bit for bit.
static void check_delayed_resume(void) {
    Setup s;
    setup_init(&s);
    MatmulPrecision fp8 = {.format = MATMUL_FP8, .scaling = SCALING_DELAYED, .amax_history = 4, .margin = 0};
    GPTCpu *running = create_model(&s, &fp8, MATMUL_BF16);
    for (uint32_t step = 0; step < 3; step++) {
        random_tokens(&s, step);
        train_step(running, &s);
    }
    float *state, *resumed_state;
    size_t n = gpt_cpu_scaling_state(running, &state);
    GPTCpu *resumed = create_model(&s, &fp8, MATMUL_BF16);
    CHECK(gpt_cpu_scaling_state(resumed, &resumed_state) == n, "state sizes differ");
    memcpy(resumed_state, state, n * sizeof(float));

    size_t np = s.table.num_params;
    float *grads = xmalloc(np * sizeof(float));
    random_tokens(&s, 3);
    float loss_running = train_step(running, &s);
    memcpy(grads, s.grads, np * sizeof(float));
    float loss_resumed = train_step(resumed, &s);
    CHECK(same_bits(loss_running, loss_resumed), "resumed loss %.9g vs %.9g", loss_resumed, loss_running);
    CHECK(memcmp(grads, s.grads, np * sizeof(float)) == 0, "resumed gradients differ");
    CHECK(memcmp(state, resumed_state, n * sizeof(float)) == 0, "resumed histories differ");

    // Without the state the first use falls back to current scaling: a different result.
    GPTCpu *fresh = create_model(&s, &fp8, MATMUL_BF16);
    float loss_fresh = train_step(fresh, &s);
    CHECK(!same_bits(loss_fresh, loss_running) || memcmp(grads, s.grads, np * sizeof(float)) != 0,
          "the history made no difference");
    free(grads);
    gpt_cpu_free(running);
    gpt_cpu_free(resumed);
    gpt_cpu_free(fresh);
    setup_free(&s);
}

// Direct use of the scale rule: current, delayed with its window, and tensors without a usable amax.
static void check_scale_rule(void) {
    OperandScaling current, delayed;
    operand_scaling_init(&current, SCALING_CURRENT, 2, 5, 0);
    operand_scaling_init(&delayed, SCALING_DELAYED, 2, 2, 1);
    CHECK(operand_scaling_scale(&current, 1, 3.0f, 448.0f) == 448.0f / 3.0f, "current scale");
    CHECK(operand_scaling_scale(&delayed, 1, 3.0f, 448.0f) == 448.0f / 3.0f / 2.0f, "empty history: current amax");
    operand_scaling_record(&delayed, 1, 7.0f);
    operand_scaling_record(&delayed, 1, 5.0f);
    CHECK(operand_scaling_scale(&delayed, 1, 3.0f, 448.0f) == 448.0f / 7.0f / 2.0f, "history {5, 7}");
    CHECK(operand_scaling_scale(&delayed, 0, 3.0f, 448.0f) == 448.0f / 3.0f / 2.0f, "tensor 0 has its own history");
    operand_scaling_record(&delayed, 1, 6.0f);
    CHECK(operand_scaling_scale(&delayed, 1, 3.0f, 448.0f) == 448.0f / 6.0f / 2.0f, "history {6, 5}: 7 left");
    CHECK(operand_scaling_scale(&current, 0, 0.0f, 448.0f) == 1.0f, "all-zero tensor: scale 1");
    CHECK(operand_scaling_scale(&current, 0, NAN, 448.0f) == 1.0f, "NaN amax: scale 1");
    operand_scaling_free(&current);
    operand_scaling_free(&delayed);
}

// ---- eXmY ----

// A precision's eXmY means what the config's name means: e4m3 is OCP FP8 E4M3 (max 448), e5m2 has max 57344.
static void check_cast_formats(void) {
    MatmulPrecision e4m3 = {.format = MATMUL_EXMY, .exp_bits = 4, .man_bits = 3, .rounding = ROUND_NEAREST_EVEN};
    MatmulPrecision e5m2 = {.format = MATMUL_EXMY, .exp_bits = 5, .man_bits = 2, .rounding = ROUND_TOWARD_ZERO};
    OperandCast a = operand_cast_for(&e4m3), b = operand_cast_for(&e5m2);
    CHECK(a.grid.max_finite == 448.0f && a.scale == 1.0f, "e4m3: max %g scale %g", a.grid.max_finite, a.scale);
    CHECK(b.grid.max_finite == 57344.0f && b.rounding == ROUND_TOWARD_ZERO, "e5m2: max %g", b.grid.max_finite);
    CHECK(quantize_operand_value(1000.0f, &a) == 448.0f, "e4m3 does not saturate");
}

typedef struct {
    OperandCast cast;
    int views, differ, grew;
} ExmyCheck;

static void check_exmy_view(void *ctx, const OperandView *v) {
    ExmyCheck *c = ctx;
    c->views++;
    for (size_t i = 0; i < v->n; i++) {
        float expected = exmy_quantize(v->original[i], c->cast.grid, c->cast.rounding, OVERFLOW_SATURATE, 0u);
        c->differ += !same_bits(v->cast[i], expected);
        c->grew += fabsf(v->cast[i]) > fabsf(v->original[i]);
    }
}

static void check_exmy_operands(int exp_bits, int man_bits, RoundingMode rounding) {
    Setup s;
    setup_init(&s);
    MatmulPrecision exmy = {.format = MATMUL_EXMY, .exp_bits = exp_bits, .man_bits = man_bits, .rounding = rounding};
    GPTCpu *model = create_model(&s, &exmy, MATMUL_FP32);
    ExmyCheck c = {operand_cast_for(&exmy), 0, 0, 0};
    gpt_cpu_observe_operands(model, check_exmy_view, &c);
    train_step(model, &s);
    int toward_zero = rounding == ROUND_TOWARD_ZERO;
    CHECK(c.views == L * NUM_BLOCK_LINEARS * 5, "e%dm%d: %d casts observed", exp_bits, man_bits, c.views);
    CHECK(c.differ == 0, "e%dm%d: %d values differ from exmy_quantize", exp_bits, man_bits, c.differ);
    if (toward_zero) CHECK(c.grew == 0, "e%dm%d toward zero: %d magnitudes grew", exp_bits, man_bits, c.grew);
    else CHECK(c.grew > 0, "e%dm%d nearest: no magnitude rounded up", exp_bits, man_bits);
    gpt_cpu_free(model);
    setup_free(&s);
}

// e8m7 with nearest-even is bf16: the same loss and gradients bit for bit, under either attention switch.
static void check_e8m7_is_bf16(void) {
    Setup s;
    setup_init(&s);
    size_t np = s.table.num_params;
    float *grads_bf16 = xmalloc(np * sizeof(float));
    MatmulPrecision bf16 = {.format = MATMUL_BF16};
    MatmulPrecision e8m7 = {.format = MATMUL_EXMY, .exp_bits = 8, .man_bits = 7, .rounding = ROUND_NEAREST_EVEN};
    MatmulFormat attention[] = {MATMUL_FP32, MATMUL_BF16};
    for (int i = 0; i < 2; i++) {
        GPTCpu *a = create_model(&s, &bf16, attention[i]), *b = create_model(&s, &e8m7, attention[i]);
        float loss_bf16 = train_step(a, &s);
        memcpy(grads_bf16, s.grads, np * sizeof(float));
        float loss_e8m7 = train_step(b, &s);
        CHECK(same_bits(loss_bf16, loss_e8m7), "attention %d: e8m7 loss %.9g vs bf16 %.9g", i, loss_e8m7, loss_bf16);
        CHECK(memcmp(grads_bf16, s.grads, np * sizeof(float)) == 0, "attention %d: e8m7 gradients differ", i);
        gpt_cpu_free(a);
        gpt_cpu_free(b);
    }
    free(grads_bf16);
    setup_free(&s);
}

// ---- losses against fp32 ----

static float loss_under(Setup *s, const MatmulPrecision *linear, MatmulFormat attention) {
    GPTCpu *model = create_model(s, linear, attention);
    float loss = train_step(model, s);
    gpt_cpu_free(model);
    return loss;
}

// Attention switch: fp32 everywhere is the plain model exactly; bf16 attention moves the loss a little.
static void check_attention_switch(void) {
    Setup s;
    setup_init(&s);
    size_t np = s.table.num_params;
    GPTCpu *plain = gpt_cpu_create(&s.table, B, T);
    float loss_plain = train_step(plain, &s);
    float *grads_plain = xmalloc(np * sizeof(float));
    memcpy(grads_plain, s.grads, np * sizeof(float));
    gpt_cpu_free(plain);

    MatmulPrecision fp32 = {.format = MATMUL_FP32};
    float loss_fp32 = loss_under(&s, &fp32, MATMUL_FP32);
    CHECK(same_bits(loss_plain, loss_fp32), "fp32 policy loss %.9g vs plain %.9g", loss_fp32, loss_plain);
    CHECK(memcmp(grads_plain, s.grads, np * sizeof(float)) == 0, "fp32 policy gradients differ from plain");
    float loss_attention_bf16 = loss_under(&s, &fp32, MATMUL_BF16);
    double diff = fabs((double)loss_attention_bf16 - loss_fp32);
    printf("  attention bf16: loss %.7f vs fp32 %.7f\n", loss_attention_bf16, loss_fp32);
    CHECK(diff > 0.0 && diff < 1e-3, "attention bf16 moves the loss by %.3e", diff);
    free(grads_plain);
    setup_free(&s);
}

static double relative_difference(const float *x, const float *reference, size_t n) {
    double err2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        err2 += ((double)x[i] - reference[i]) * ((double)x[i] - reference[i]);
        ref2 += (double)reference[i] * reference[i];
    }
    return sqrt(err2 / ref2);
}

// At init: fp8 and 8-bit eXmY stay close to fp32; bf16 (e8m7) moves loss and gradients less than e8m3
// truncated. Attention and the LM head stay fp32, so only the linear layers' formats differ.
static void check_losses(void) {
    Setup s;
    setup_init(&s);
    size_t np = s.table.num_params;
    MatmulPrecision fp32 = {.format = MATMUL_FP32};
    float reference = loss_under(&s, &fp32, MATMUL_FP32);
    float *reference_grads = xmalloc(np * sizeof(float));
    memcpy(reference_grads, s.grads, np * sizeof(float));
    struct {
        const char *name;
        MatmulPrecision linear;
        double loss_diff, grad_diff;
    } runs[] = {
        {"fp8 delayed", {.format = MATMUL_FP8, .scaling = SCALING_DELAYED, .amax_history = 16}, 0, 0},
        {"fp8 current", {.format = MATMUL_FP8, .scaling = SCALING_CURRENT}, 0, 0},
        {"e5m2", {.format = MATMUL_EXMY, .exp_bits = 5, .man_bits = 2, .rounding = ROUND_NEAREST_EVEN}, 0, 0},
        {"e4m3", {.format = MATMUL_EXMY, .exp_bits = 4, .man_bits = 3, .rounding = ROUND_NEAREST_EVEN}, 0, 0},
        {"e8m7", {.format = MATMUL_EXMY, .exp_bits = 8, .man_bits = 7, .rounding = ROUND_NEAREST_EVEN}, 0, 0},
        {"e8m3 toward zero",
         {.format = MATMUL_EXMY, .exp_bits = 8, .man_bits = 3, .rounding = ROUND_TOWARD_ZERO}, 0, 0},
    };
    int count = (int)(sizeof runs / sizeof runs[0]);
    for (int i = 0; i < count; i++) {
        float loss = loss_under(&s, &runs[i].linear, MATMUL_FP32);
        runs[i].loss_diff = fabs((double)loss - reference);
        runs[i].grad_diff = relative_difference(s.grads, reference_grads, np);
        printf("  %-16s loss %.7f  |loss - fp32| %.2e  gradient relative difference %.2e\n", runs[i].name, loss,
               runs[i].loss_diff, runs[i].grad_diff);
        CHECK(isfinite(loss) && runs[i].loss_diff > 0.0 && runs[i].loss_diff < 0.05, "%s: loss %f vs fp32 %f",
              runs[i].name, loss, reference);
    }
    CHECK(runs[5].loss_diff > runs[4].loss_diff, "e8m3 toward zero moves the loss less (%.3e) than e8m7 (%.3e)",
          runs[5].loss_diff, runs[4].loss_diff);
    CHECK(runs[5].grad_diff > runs[4].grad_diff, "e8m3 toward zero moves the gradient less (%.3e) than e8m7 (%.3e)",
          runs[5].grad_diff, runs[4].grad_diff);
    free(reference_grads);
    setup_free(&s);
}

// bf16_truncate (round to bf16, then truncate the mantissa: 2405.18710's masking of bf16 values) against
// an independent reference: the bf16 value's bits with the low 23 - Y mantissa bits cleared (normal values).
// Plain truncation from fp32 differs from it wherever bf16 rounding carried into the kept bits.
static void check_bf16_truncate_values(void) {
    MatmulPrecision e8m3 = {.format = MATMUL_EXMY, .exp_bits = 8, .man_bits = 3, .rounding = ROUND_TOWARD_ZERO};
    OperandCast plain = operand_cast_for(&e8m3);
    e8m3.bf16_first = 1;
    OperandCast masked = operand_cast_for(&e8m3);
    RngKey key = {5, 0, 0};
    int bad = 0, differs = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        float x = (2.0f * rng_uniform(key, i) - 1.0f) * 100.0f;
        uint32_t bits = f32_to_bits(round_bf16(x)) & ~((1u << (23 - 3)) - 1u);
        float expected = f32_from_bits(bits);
        bad += !same_bits(quantize_operand_value(x, &masked), expected);
        differs += !same_bits(quantize_operand_value(x, &plain), expected);
    }
    CHECK(bad == 0, "bf16_truncate e8m3: %d values differ from the masked bf16 value", bad);
    CHECK(differs > 0, "truncation straight from fp32 never differed from bf16_truncate");
}

// e8m7 with bf16_truncate, and e8m7 rounded to nearest, are bf16 bit for bit at each matmul site on its own
// (the other sites fp32): block linears, attention, LM head. Plain truncation from fp32 is not.
static void check_e8m7_truncate_is_bf16(void) {
    Setup s;
    setup_init(&s);
    size_t np = s.table.num_params;
    float *grads_bf16 = xmalloc(np * sizeof(float));
    MatmulPrecision fp32 = {.format = MATMUL_FP32}, bf16 = {.format = MATMUL_BF16};
    MatmulPrecision masked = {.format = MATMUL_EXMY, .exp_bits = 8, .man_bits = 7, .rounding = ROUND_TOWARD_ZERO,
                              .bf16_first = 1};
    MatmulPrecision truncated = masked, nearest = masked;
    truncated.bf16_first = 0;
    nearest.bf16_first = 0;
    nearest.rounding = ROUND_NEAREST_EVEN;
    const char *sites[] = {"block linears", "attention", "LM head"};
    for (int site = 0; site < 3; site++) {
        const MatmulPrecision *ref[3] = {&fp32, &fp32, &fp32}, *got[3] = {&fp32, &fp32, &fp32},
                              *trunc[3] = {&fp32, &fp32, &fp32}, *near[3] = {&fp32, &fp32, &fp32};
        ref[site] = &bf16;
        got[site] = &masked;
        trunc[site] = &truncated;
        near[site] = &nearest;
        GPTCpu *a = create_model_sites(&s, ref[0], ref[1], ref[2]);
        float loss_bf16 = train_step(a, &s);
        memcpy(grads_bf16, s.grads, np * sizeof(float));
        GPTCpu *b = create_model_sites(&s, got[0], got[1], got[2]);
        float loss_masked = train_step(b, &s);
        CHECK(same_bits(loss_bf16, loss_masked), "%s: e8m7 bf16_truncate loss %.9g vs bf16 %.9g", sites[site],
              loss_masked, loss_bf16);
        CHECK(memcmp(grads_bf16, s.grads, np * sizeof(float)) == 0, "%s: e8m7 bf16_truncate gradients differ",
              sites[site]);
        GPTCpu *d = create_model_sites(&s, near[0], near[1], near[2]);
        float loss_nearest = train_step(d, &s);
        CHECK(same_bits(loss_bf16, loss_nearest) && memcmp(grads_bf16, s.grads, np * sizeof(float)) == 0,
              "%s: e8m7 nearest differs from bf16 (loss %.9g vs %.9g)", sites[site], loss_nearest, loss_bf16);
        gpt_cpu_free(d);
        GPTCpu *c = create_model_sites(&s, trunc[0], trunc[1], trunc[2]);
        float loss_truncated = train_step(c, &s);
        CHECK(!same_bits(loss_bf16, loss_truncated), "%s: e8m7 toward zero from fp32 gave the bf16 loss", sites[site]);
        gpt_cpu_free(a);
        gpt_cpu_free(b);
        gpt_cpu_free(c);
    }
    free(grads_bf16);
    setup_free(&s);
}

// Attention and the LM head take every format: fp8 (current scaling), and eXmY, each moving the loss a
// little away from fp32 and gradients staying finite.
static void check_attention_and_head_formats(void) {
    Setup s;
    setup_init(&s);
    MatmulPrecision fp32 = {.format = MATMUL_FP32};
    float reference = loss_under(&s, &fp32, MATMUL_FP32);
    MatmulPrecision formats[] = {
        {.format = MATMUL_FP8, .scaling = SCALING_CURRENT},
        {.format = MATMUL_EXMY, .exp_bits = 4, .man_bits = 3, .rounding = ROUND_NEAREST_EVEN},
        {.format = MATMUL_EXMY, .exp_bits = 8, .man_bits = 3, .rounding = ROUND_TOWARD_ZERO, .bf16_first = 1},
    };
    const char *names[] = {"fp8", "e4m3", "e8m3 bf16_truncate"};
    for (int f = 0; f < 3; f++)
        for (int site = 0; site < 2; site++) {
            GPTCpu *model = site == 0 ? create_model_sites(&s, &fp32, &formats[f], &fp32)
                                      : create_model_sites(&s, &fp32, &fp32, &formats[f]);
            float loss = train_step(model, &s);
            size_t nonfinite = 0;
            for (size_t i = 0; i < s.table.num_params; i++) nonfinite += !isfinite(s.grads[i]);
            double diff = fabs((double)loss - reference);
            printf("  %-9s %-18s loss %.7f  |loss - fp32| %.2e\n", site ? "LM head" : "attention", names[f], loss,
                   diff);
            CHECK(diff > 0.0 && diff < 0.05 && nonfinite == 0, "%s %s: loss %f vs fp32 %f, %zu non-finite gradients",
                  site ? "LM head" : "attention", names[f], loss, reference, nonfinite);
            gpt_cpu_free(model);
        }
    setup_free(&s);
}

// ---- precision.activation_quant = int8: the block linears' inputs, per token ----

// Each input row as the (fp32) matmul receives it: codes round(x·s), s = 127 / max|x| of the row, so every
// value is an integer over s, within half a step of the raw input, and the row's absmax maps to 127. The
// backward's weight gradient multiplies the forward's quantized input (the same values, bit for bit). Other
// operands pass unchanged.
typedef struct {
    float *forward_input[NUM_OPERANDS];
    int views, off_grid, too_far, no_full_code, changed, backward_differs, others_changed;
} ActQuantCheck;

static void check_actq_view(void *ctx, const OperandView *v) {
    ActQuantCheck *c = ctx;
    c->views++;
    if (v->role != OPERAND_INPUT) {
        c->others_changed += memcmp(v->cast, v->original, v->n * sizeof(float)) != 0;
        return;
    }
    int id = operand_index(v);
    if (v->backward) {
        c->backward_differs += memcmp(v->cast, c->forward_input[id], v->n * sizeof(float)) != 0;
        return;
    }
    size_t cols = v->n / (B * T);
    for (size_t r = 0; r < (size_t)B * T; r++) {
        const float *x = v->original + r * cols, *q = v->cast + r * cols;
        double amax = 0.0, top = 0.0;
        for (size_t i = 0; i < cols; i++) amax = fmax(amax, fabs(x[i]));
        double s = 127.0 / amax;
        for (size_t i = 0; i < cols; i++) {
            double code = q[i] * s;
            c->off_grid += fabs(code - nearbyint(code)) > 1e-3;
            c->too_far += fabs(code - x[i] * s) > 0.5 + 1e-3;
            c->changed += q[i] != x[i];
            top = fmax(top, fabs(code));
        }
        c->no_full_code += fabs(top - 127.0) > 1e-3;
    }
    c->forward_input[id] = xmalloc(v->n * sizeof(float));
    memcpy(c->forward_input[id], v->cast, v->n * sizeof(float));
}

static void check_activation_quant(void) {
    Setup s;
    setup_init(&s);
    MatmulPrecision fp32 = {.format = MATMUL_FP32};
    GPTCpu *plain = create_model(&s, &fp32, MATMUL_FP32), *model = create_model(&s, &fp32, MATMUL_FP32);
    gpt_cpu_set_activation_quant(model, ACTIVATION_QUANT_INT8);
    float loss_plain = train_step(plain, &s);
    ActQuantCheck c;
    memset(&c, 0, sizeof c);
    gpt_cpu_observe_operands(model, check_actq_view, &c);
    float loss = train_step(model, &s);
    CHECK(c.views == L * NUM_BLOCK_LINEARS * 5, "activation quant: %d casts observed", c.views);
    CHECK(c.off_grid == 0 && c.too_far == 0 && c.no_full_code == 0,
          "activation quant: %d values off the row's int8 grid, %d beyond half a step, %d rows without code 127",
          c.off_grid, c.too_far, c.no_full_code);
    CHECK(c.changed > 0, "activation quant changed no input value");
    CHECK(c.backward_differs == 0, "activation quant: %d backward inputs differ from the forward's quantized ones",
          c.backward_differs);
    CHECK(c.others_changed == 0, "activation quant: %d weight or gradient operands changed", c.others_changed);
    CHECK(loss != loss_plain && fabsf(loss - loss_plain) < 1e-2f * loss_plain,
          "activation quant: loss %.7f vs %.7f without", loss, loss_plain);
    for (int i = 0; i < NUM_OPERANDS; i++) free(c.forward_input[i]);
    gpt_cpu_free(plain);
    gpt_cpu_free(model);
    setup_free(&s);
}

int main(void) {
    check_scale_rule();
    check_fp8_operands(SCALING_CURRENT);
    check_fp8_operands(SCALING_DELAYED);
    check_delayed_sequence();
    check_delayed_resume();
    check_cast_formats();
    check_exmy_operands(8, 3, ROUND_TOWARD_ZERO);
    check_exmy_operands(5, 2, ROUND_TOWARD_ZERO);
    check_exmy_operands(4, 3, ROUND_NEAREST_EVEN);
    check_e8m7_is_bf16();
    check_attention_switch();
    check_losses();
    check_bf16_truncate_values();
    check_e8m7_truncate_is_bf16();
    check_attention_and_head_formats();
    check_activation_quant();
    return test_summary("test_matmul_formats");
}
