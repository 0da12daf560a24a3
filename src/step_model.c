#include "step_model.h"

#include <math.h>
#include <stdlib.h>

#include "attention_tiles.h"
#include "logit_chunks.h"
#include "param_storage.h"
#include "util.h"


// Nominal FLOPs per element of the kernels that are not products (step_model.h: they do not move the time).
static const double CAST_FLOPS = 1, ADD_FLOPS = 1, LAYERNORM_FLOPS = 8, LAYERNORM_BACKWARD_FLOPS = 12,
                    GELU_FLOPS = 12, GELU_BACKWARD_FLOPS = 20, SOFTMAX_FLOPS = 4, SOFTMAX_BACKWARD_FLOPS = 3,
                    ADAMW_FLOPS = 12, NORM_FLOPS = 2;

DeviceSpec device_spec_h100(void) {
    DeviceSpec spec = {989.4e12, 494.7e12, 66.9e12, 3.35e12};
    return spec;
}

static void override_from_environment(double *value, const char *name, const char *what) {
    const char *text = getenv(name);
    if (!text) return;
    char *end;
    double parsed = strtod(text, &end);
    if (end == text || *end != '\0' || !isfinite(parsed) || parsed <= 0) {
        fatal("%s=%s: expected a positive number (%s, e.g. %.4g)", name, text, what, *value);
    }
    *value = parsed;
}

DeviceSpec device_spec_from_environment(void) {
    DeviceSpec spec = device_spec_h100();
    override_from_environment(&spec.peak_bf16, "LPGPT_PEAK_BF16_FLOPS", "dense bf16 FLOP/s");
    override_from_environment(&spec.peak_tf32, "LPGPT_PEAK_TF32_FLOPS", "TF32 FLOP/s");
    override_from_environment(&spec.peak_fp32, "LPGPT_PEAK_FP32_FLOPS", "fp32 FLOP/s without tensor cores");
    override_from_environment(&spec.bandwidth, "LPGPT_BANDWIDTH", "bytes/s of device memory");
    return spec;
}

StepModelInput step_model_input(const Policy *policy, const ParamTable *table, int B, int T, int accum_steps) {
    StepModelInput in = {0};
    in.table = table;
    in.B = B;
    in.T = T;
    in.accum_steps = accum_steps;
    in.linear = policy->matmul.format;
    in.attention = policy->attention.format;
    in.lm_head = policy->lm_head.format;
    in.allow_tf32 = policy->allow_tf32;
    in.bf16_activations = policy->activations == ACTIVATIONS_BF16;
    in.fused_attention = policy->attention_impl == ATTENTION_FUSED;
    // Products read bf16 weights as stored, fp32 ones likewise, grid weights from a slice decoded to fp32.
    in.weight_bytes = policy->weights == WEIGHTS_BF16 ? 2 : 4;
    in.grid_weights = policy->weights == WEIGHTS_INT_GRID;
    in.bf16_gradients = policy->grads == GRADS_BF16;
    size_t embeddings = table->tensors[PARAM_WTE].numel + table->tensors[PARAM_WPE].numel;
    double gradient_per_param = in.bf16_gradients ? 2 : 4;
    in.stored_state_bytes = (double)(table->num_params - embeddings) * (double)policy_bytes_per_param(policy) +
                            (double)embeddings * (double)policy_embedding_bytes_per_param(policy) -
                            (double)table->num_params * gradient_per_param;
    in.gradient_bytes = (double)table->num_params * gradient_per_param;
    return in;
}

const char *step_group_name(StepGroup group) {
    static const char *names[STEP_NUM_GROUPS] = {"matmuls", "attention", "element-wise", "loss", "optimizer"};
    return names[group];
}

// ----------------------------------------------------------------------------------------------------
// the kernels of a step, added up per group

typedef struct {
    const StepModelInput *in;
    const DeviceSpec *device;
    StepCost *groups;
    double N, C, NH, hs, Vp;  // rows B*T, n_embd, heads, head size, padded vocabulary
    double A;                 // bytes of a stored activation
    int fused_attention;
} Tally;

static void kernel(Tally *t, StepGroup group, double flops, double bytes, double peak) {
    StepCost *cost = &t->groups[group];
    cost->flops += flops;
    cost->bytes += bytes;
    cost->seconds += fmax(flops / peak, bytes / t->device->bandwidth);
}

static void elementwise(Tally *t, StepGroup group, double elements, double flops_per_element, double bytes) {
    kernel(t, group, elements * flops_per_element, bytes, t->device->peak_fp32);
}

static int is_simulated(MatmulFormat format) { return format == MATMUL_FP8 || format == MATMUL_EXMY; }

static double operand_bytes(MatmulFormat format) { return format == MATMUL_BF16 ? 2 : 4; }

static double product_peak(const Tally *t, MatmulFormat format) {
    if (format == MATMUL_BF16) return t->device->peak_bf16;
    if (format == MATMUL_FP32 && t->in->allow_tf32) return t->device->peak_tf32;
    return t->device->peak_fp32;
}

// The new design's producers of an output gradient (GELU backward, fused attention backward, classifier
// backward) write its bf16 operand themselves; a simulated format's cast stays a pass of its own.
static int producer_writes_operand(const Tally *t, MatmulFormat format) {
    return !t->in->legacy_design && format == MATMUL_BF16;
}

// n values stored at `stored` bytes, made the operand of a product in `format`.
static void operand_cast(Tally *t, double n, double stored, MatmulFormat format) {
    if (!is_simulated(format) && operand_bytes(format) == stored) return;
    double source_reads = format == MATMUL_FP8 ? 2 : 1;  // fp8: the amax, then the cast
    elementwise(t, STEP_ELEMENTWISE, n, CAST_FLOPS, n * (source_reads * stored + operand_bytes(format)));
}

// `batch` products c (M, N) = a (M, K) @ b (K, N), c written at c_bytes (and read too when accumulated).
static void product(Tally *t, StepGroup group, MatmulFormat format, double batch, double M, double N, double K,
                    double c_bytes, int accumulate) {
    double bytes = (M * K + K * N) * operand_bytes(format) + M * N * c_bytes * (accumulate ? 2 : 1);
    kernel(t, group, batch * 2 * M * N * K, batch * bytes, product_peak(t, format));
}

// An fp32 gradient scratch of n values rounded once into the bf16 gradients: bf16(stored + scratch).
static void gradient_rounding(Tally *t, double n) { elementwise(t, STEP_ELEMENTWISE, n, ADD_FLOPS, n * (4 + 2 + 2)); }

// dW (OUT, IN) += dout^T @ inp over the N rows.
static void weight_gradient_product(Tally *t, MatmulFormat format, double OUT, double IN) {
    int bf16 = t->in->bf16_gradients;
    product(t, STEP_MATMULS, format, 1, OUT, IN, t->N, 4, !bf16);
    if (bf16) gradient_rounding(t, OUT * IN);
}

// A block matrix as a product reads it: DQT's grid slice decoded first, then its cast.
static void weight_operand(Tally *t, double IN, double OUT) {
    if (t->in->grid_weights) elementwise(t, STEP_ELEMENTWISE, IN * OUT, CAST_FLOPS, IN * OUT * (1 + 4));
    operand_cast(t, IN * OUT, t->in->weight_bytes, t->in->linear);
}

static void linear_forward(Tally *t, double IN, double OUT) {
    MatmulFormat f = t->in->linear;
    operand_cast(t, t->N * IN, t->A, f);
    weight_operand(t, IN, OUT);
    product(t, STEP_MATMULS, f, 1, t->N, OUT, IN, t->A, 0);
}

// Where a block linear's backward finds its output gradient's operand and the source of its bias gradient.
typedef enum {
    DOUT_CAST,                   // dout in fp32: cast here (bf16: one pass that also forms the column partials)
    DOUT_WRITTEN_WITH_PARTIALS,  // its producer wrote the operand and the column partials (no fp32 gradient)
} DoutSource;

// dout: (N, OUT) fp32. The column partials (N/64 x OUT floats) are not counted.
static void linear_backward(Tally *t, double IN, double OUT, DoutSource source) {
    MatmulFormat f = t->in->linear;
    double n = t->N * OUT;
    int partials_formed = source == DOUT_WRITTEN_WITH_PARTIALS;
    if (source == DOUT_CAST && producer_writes_operand(t, f)) {
        elementwise(t, STEP_ELEMENTWISE, n, CAST_FLOPS + ADD_FLOPS, n * (4 + 2));  // operand and partials
        partials_formed = 1;
    } else if (source == DOUT_CAST) {
        operand_cast(t, n, 4, f);
    }
    operand_cast(t, t->N * IN, t->A, f);
    weight_operand(t, IN, OUT);
    product(t, STEP_MATMULS, f, 1, t->N, IN, OUT, 4, 0);  // dinp = dout @ W
    weight_gradient_product(t, f, OUT, IN);
    if (!partials_formed) elementwise(t, STEP_ELEMENTWISE, n, ADD_FLOPS, n * 4);  // the bias's: column sums of dout
}

// inputs: 1 (plain), or 2 (fused with the residual add before it, whose sum it writes too).
static void layernorm_forward(Tally *t, int inputs) {
    double n = t->N * t->C, flops = LAYERNORM_FLOPS + (inputs == 2 ? ADD_FLOPS : 0);
    elementwise(t, STEP_ELEMENTWISE, n, flops, 2 * inputs * n * t->A + 2 * t->N * 4);
}

static void layernorm_backward(Tally *t) {
    double n = t->N * t->C;
    // dout, input, statistics, dresidual +=; the weight and bias partials are formed from the same rows in the
    // same kernel (re-read from cache; the legacy design re-read them from device memory).
    double bytes = n * 4 + n * t->A + 2 * t->N * 4 + 2 * n * 4 + (t->in->legacy_design ? n * (4 + t->A) : 0);
    elementwise(t, STEP_ELEMENTWISE, n, LAYERNORM_BACKWARD_FLOPS, bytes);
}

static void gelu_forward(Tally *t) {
    double n = t->N * 4 * t->C;
    elementwise(t, STEP_ELEMENTWISE, n, GELU_FLOPS, 2 * n * t->A);
}

// The new design under bf16 block linears: one pass over fch recomputes the GELU output (for fcproj's weight
// gradient) and writes dfch only as its bf16 operand and column partials. Otherwise GELU is recomputed by its
// own kernel (not in today's design, which kept it) and the backward writes dfch in fp32.
static int gelu_backward_fused(const Tally *t) { return producer_writes_operand(t, t->in->linear); }

static void gelu_backward(Tally *t) {
    double n = t->N * 4 * t->C;
    if (gelu_backward_fused(t)) {
        elementwise(t, STEP_ELEMENTWISE, n, GELU_FLOPS + GELU_BACKWARD_FLOPS, n * (4 + t->A) + n * (t->A + 2));
        return;
    }
    if (!t->in->legacy_design) gelu_forward(t);  // recomputed into the one-layer scratch
    elementwise(t, STEP_ELEMENTWISE, n, GELU_BACKWARD_FLOPS, n * (4 + t->A) + n * 4);
}

// (query, key) pairs of one head that the fused kernels compute: whole query tiles against every key up to
// each tile's last row.
static double causal_tile_pairs(int T) {
    double pairs = 0;
    for (int start = 0; start < T; start += ATTENTION_TILE_Q) {
        int end = start + ATTENTION_TILE_Q < T ? start + ATTENTION_TILE_Q : T;
        pairs += (double)(end - start) * end;
    }
    return pairs;
}

static void attention_forward_fused(Tally *t) {
    double pairs = t->in->B * t->NH * causal_tile_pairs(t->in->T), lse = t->NH * t->N * 4;
    double bytes = t->N * 3 * t->C * t->A + t->N * t->C * t->A + lse;
    kernel(t, STEP_ATTENTION, 3 * 2 * t->hs * pairs, bytes, product_peak(t, t->in->attention));
}

static void attention_backward_fused(Tally *t) {
    double N = t->N, C = t->C, stats = t->NH * N * 4;  // lse, or D
    double pairs = t->in->B * t->NH * causal_tile_pairs(t->in->T), peak = product_peak(t, t->in->attention);
    // Under bf16 block linears the gradient is written only as the qkv linear's bf16 operand (and the
    // partials of its column sums, not counted); else in fp32.
    double gradient = producer_writes_operand(t, t->in->linear) ? 2 : 4;
    elementwise(t, STEP_ATTENTION, N * C, 2, N * C * (4 + t->A) + stats);  // D = rowsum(dout * out)
    double reads = N * 3 * C * t->A + N * C * 4 + 2 * stats;              // qkv, dout, lse, D
    kernel(t, STEP_ATTENTION, 4 * 2 * t->hs * pairs, reads + N * 2 * C * gradient, peak);  // dK, dV
    kernel(t, STEP_ATTENTION, 3 * 2 * t->hs * pairs, reads + N * C * gradient, peak);      // dQ
}

// q, k, v per head (B, NH, T, hs) from qkv, in the attention operands' format.
static void split_qkv(Tally *t) {
    double n = t->N * 3 * t->C;
    elementwise(t, STEP_ATTENTION, n, 0, n * (t->A + operand_bytes(t->in->attention)));
}

static void attention_forward_materialized(Tally *t) {
    MatmulFormat f = t->in->attention;
    double heads = t->in->B * t->NH, T = t->in->T, S = heads * T * T, n = t->N * t->C;
    double bf16_copy = f == MATMUL_BF16 ? 2 : 0;
    split_qkv(t);
    product(t, STEP_ATTENTION, f, heads, T, T, t->hs, 4, 0);                    // scores = q k^T
    elementwise(t, STEP_ATTENTION, S, SOFTMAX_FLOPS, S * (4 + 4 + bf16_copy));  // probabilities
    product(t, STEP_ATTENTION, f, heads, T, t->hs, T, 4, 0);                    // probabilities v
    elementwise(t, STEP_ATTENTION, n, 0, n * (4 + t->A));                       // merge the heads
}

static void attention_backward_materialized(Tally *t) {
    MatmulFormat f = t->in->attention;
    double heads = t->in->B * t->NH, T = t->in->T, S = heads * T * T, n = t->N * t->C;
    split_qkv(t);
    elementwise(t, STEP_ATTENTION, n, 0, n * (4 + 4));  // dout per head
    double op = operand_bytes(f);
    if (op != 4) {  // dout and the probabilities cast
        elementwise(t, STEP_ATTENTION, n, CAST_FLOPS, n * (4 + op));
        elementwise(t, STEP_ATTENTION, S, CAST_FLOPS, S * (4 + op));
    }
    product(t, STEP_ATTENTION, f, heads, T, t->hs, T, 4, 0);  // dv = probabilities^T dout
    product(t, STEP_ATTENTION, f, heads, T, T, t->hs, 4, 0);  // dprobabilities = dout v^T
    elementwise(t, STEP_ATTENTION, S, SOFTMAX_BACKWARD_FLOPS, S * (4 + 4 + op));  // dscores, in their operand
    product(t, STEP_ATTENTION, f, heads, T, t->hs, T, 4, 0);  // dq = dscores k
    product(t, STEP_ATTENTION, f, heads, T, t->hs, T, 4, 0);  // dk = dscores^T q
    elementwise(t, STEP_ATTENTION, 3 * n, 0, 3 * n * (4 + 4));  // merge dq, dk, dv into dqkv
}

static void encoder_forward(Tally *t) {
    double n = t->N * t->C;
    elementwise(t, STEP_ELEMENTWISE, n, ADD_FLOPS, t->N * 4 + 2 * n * t->in->weight_bytes + n * t->A);
}

static void encoder_backward(Tally *t) {
    double n = t->N * t->C, wpe = (double)t->in->table->tensors[PARAM_WPE].numel;
    elementwise(t, STEP_ELEMENTWISE, 2 * n, ADD_FLOPS, t->N * 4 + n * 4 + 2 * (2 * n * 4));
    if (!t->in->bf16_gradients) return;
    elementwise(t, STEP_ELEMENTWISE, wpe, 0, wpe * 4);  // wpe's scratch zeroed (wte's the head's product wrote)
    gradient_rounding(t, wpe);
}

static void lm_head_forward(Tally *t) {
    MatmulFormat f = t->in->lm_head;
    operand_cast(t, t->N * t->C, t->A, f);
    operand_cast(t, t->Vp * t->C, t->in->weight_bytes, f);
    product(t, STEP_MATMULS, f, 1, t->N, t->Vp, t->C, t->A, 0);
}

static void classifier_forward(Tally *t) {
    double logits = t->N * t->Vp;
    elementwise(t, STEP_LOSS, logits, SOFTMAX_FLOPS, logits * t->A + t->N * 4 + t->N * (2 * 4 + 4));
}

// The logits' gradient in place of the logits: its operand, or fp32.
static void classifier_backward(Tally *t) {
    double logits = t->N * t->Vp, written = producer_writes_operand(t, t->in->lm_head) ? 2 : 4;
    elementwise(t, STEP_LOSS, logits, SOFTMAX_BACKWARD_FLOPS, logits * t->A + t->N * (2 * 4 + 4) + logits * written);
}

// dlnf = dlogits @ wte, then dwte += dlogits^T @ lnf; today's design cast the logits' gradient for each.
static void lm_head_backward(Tally *t) {
    MatmulFormat f = t->in->lm_head;
    double logits = t->N * t->Vp;
    int dlogits_written = producer_writes_operand(t, f);
    if (!dlogits_written) operand_cast(t, logits, 4, f);
    operand_cast(t, t->Vp * t->C, t->in->weight_bytes, f);
    product(t, STEP_MATMULS, f, 1, t->N, t->C, t->Vp, 4, 0);
    if (!dlogits_written && t->in->legacy_design) operand_cast(t, logits, 4, f);
    operand_cast(t, t->N * t->C, t->A, f);
    weight_gradient_product(t, f, t->Vp, t->C);
}

// Under fp32 activations the logits are formed LOGIT_CHUNK_ROWS rows at a time and never stored whole, so
// the backward forms each chunk's logits again before the classifier's backward, and once more (with their
// gradient) for wte's gradient at the end of the backward.
static int logits_chunked(const Tally *t) {
    return !t->in->legacy_design && !t->in->bf16_activations && t->N > LOGIT_CHUNK_ROWS;
}

static void lm_head_logits_again(Tally *t) {
    product(t, STEP_MATMULS, t->in->lm_head, 1, t->N, t->Vp, t->C, t->A, 0);
}

static void forward(Tally *t) {
    double C = t->C;
    encoder_forward(t);
    layernorm_forward(t, 1);
    for (int l = 0; l < t->in->table->shape.n_layer; l++) {
        linear_forward(t, C, 3 * C);
        if (t->fused_attention) attention_forward_fused(t);
        else attention_forward_materialized(t);
        linear_forward(t, C, C);
        layernorm_forward(t, 2);  // residual + ln2
        linear_forward(t, C, 4 * C);
        gelu_forward(t);
        linear_forward(t, 4 * C, C);
        layernorm_forward(t, 2);  // residual + the next block's ln1, or lnf
    }
    lm_head_forward(t);
    classifier_forward(t);
}

static void backward(Tally *t) {
    double C = t->C;
    int qkv_operand_written = t->fused_attention && producer_writes_operand(t, t->in->linear);
    int chunked = logits_chunked(t);
    if (chunked) lm_head_logits_again(t);
    classifier_backward(t);
    lm_head_backward(t);
    if (chunked) {  // wte's gradient at the end: the head's operands cast again, each chunk's gradient formed again
        operand_cast(t, t->N * t->C, t->A, t->in->lm_head);
        operand_cast(t, t->Vp * t->C, t->in->weight_bytes, t->in->lm_head);
        lm_head_logits_again(t);
        classifier_backward(t);
    }
    layernorm_backward(t);  // lnf
    for (int l = 0; l < t->in->table->shape.n_layer; l++) {
        linear_backward(t, 4 * C, C, DOUT_CAST);
        gelu_backward(t);
        linear_backward(t, C, 4 * C, gelu_backward_fused(t) ? DOUT_WRITTEN_WITH_PARTIALS : DOUT_CAST);
        layernorm_backward(t);  // ln2
        linear_backward(t, C, C, DOUT_CAST);
        if (t->fused_attention) attention_backward_fused(t);
        else attention_backward_materialized(t);
        linear_backward(t, C, 3 * C, qkv_operand_written ? DOUT_WRITTEN_WITH_PARTIALS : DOUT_CAST);
        layernorm_backward(t);  // ln1
    }
    encoder_backward(t);
}

static void optimizer_step(Tally *t) {
    double n = (double)t->in->table->num_params, gradients = t->in->gradient_bytes;
    elementwise(t, STEP_OPTIMIZER, n, NORM_FLOPS, gradients);                                  // gradient norm
    elementwise(t, STEP_OPTIMIZER, n, ADAMW_FLOPS, gradients + 2 * t->in->stored_state_bytes);  // AdamW
    elementwise(t, STEP_OPTIMIZER, n, 0, gradients);                                           // zero_grad
}

StepModel step_model(const StepModelInput *in, const DeviceSpec *device) {
    const ModelShape *s = &in->table->shape;
    StepModel model = {0};
    Tally t = {.in = in, .device = device, .groups = model.groups};
    t.N = (double)in->B * in->T;
    t.C = s->n_embd;
    t.NH = s->n_head;
    t.hs = (double)s->n_embd / s->n_head;
    t.Vp = s->padded_vocab;
    t.A = in->bf16_activations && !in->legacy_design ? 2 : 4;
    t.fused_attention = in->fused_attention && !in->legacy_design;
    forward(&t);
    backward(&t);
    optimizer_step(&t);

    const StepCost *optimizer = &model.groups[STEP_OPTIMIZER];
    double bytes = optimizer->bytes / in->accum_steps;
    model.micro_step_seconds = optimizer->seconds / in->accum_steps;
    for (int g = 0; g < STEP_OPTIMIZER; g++) {
        model.micro_step_seconds += model.groups[g].seconds;
        bytes += model.groups[g].bytes;
    }
    model.bytes_per_token = bytes / t.N;
    model.tokens_per_second = t.N / model.micro_step_seconds;
    model.model_flops_per_token = 6.0 * (double)in->table->num_params + 6.0 * s->n_layer * t.C * in->T;
    model.mfu_ceiling = model.model_flops_per_token * model.tokens_per_second / device->peak_bf16;
    return model;
}
