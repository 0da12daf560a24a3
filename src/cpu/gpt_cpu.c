// GPT-2 on the CPU: the layer sequence of the forward and backward passes over the ops of ops.h.
#include "cpu/gpt_cpu.h"

#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "numerics/scaling.h"
#include "util.h"

// What the forward keeps for the backward (per-layer buffers stack L slices), and one layer's worth of
// activation gradients, which the backward reuses from layer to layer.
typedef struct {
    float *encoded;    // (B, T, C) the residual stream entering layer 0
    float *ln1;        // (L, B, T, C)
    float *ln1_mean;   // (L, B, T)
    float *ln1_rstd;   // (L, B, T)
    float *qkv;        // (L, B, T, 3C)
    float *atty;       // (L, B, T, C) attention output, before its projection
    float *att;        // (L, B, NH, T, T) softmax probabilities (materialized attention; else empty)
    float *lse;        // (L, B, NH, T) log-sum-exps of the scores (fused attention; else empty)
    float *residual2;  // (L, B, T, C) the residual stream after attention
    float *ln2;        // (L, B, T, C)
    float *ln2_mean;   // (L, B, T)
    float *ln2_rstd;   // (L, B, T)
    float *fch;        // (L, B, T, 4C) MLP hidden layer, before GELU
    float *fch_gelu;   // (L, B, T, 4C)
    float *residual3;  // (L, B, T, C) the residual stream after the MLP: the layer's output
    float *lnf;        // (B, T, C)
    float *lnf_mean;   // (B, T)
    float *lnf_rstd;   // (B, T)
    float *logits;     // (B, T, Vp); the backward overwrites them with their gradient
    float *probs;      // (B, T, Vp)
    float *losses;     // (B, T)
    float *proj_out;   // (B, T, C) attproj or fcproj output on its way into the residual stream
    float *dresidual;  // (B, T, C) gradient of the residual stream at the current point of the backward
    float *dln;        // (B, T, C) gradient of a layernorm output
    float *dqkv;       // (B, T, 3C)
    float *datty;      // (B, T, C)
    float *dfch_gelu;  // (B, T, 4C)
    float *dfch;       // (B, T, 4C)
} Activations;

#define NUM_ACTIVATION_BUFFERS 28

typedef struct {
    float **buffer;
    size_t numel;
} ActivationBuffer;

// The list of activation buffers and their sizes for batches of (B, T): the one description that both
// allocation and the memory plan read.
static void activation_buffers(Activations *a, const ModelShape *s, int B, int T, AttentionImpl attention,
                               ActivationBuffer list[NUM_ACTIVATION_BUFFERS]) {
    size_t L = (size_t)s->n_layer, C = (size_t)s->n_embd, NH = (size_t)s->n_head, Vp = (size_t)s->padded_vocab;
    size_t N = (size_t)B * (size_t)T;
    int fused = attention == ATTENTION_FUSED;
    ActivationBuffer buffers[NUM_ACTIVATION_BUFFERS] = {
        {&a->encoded, N * C},
        {&a->ln1, L * N * C},
        {&a->ln1_mean, L * N},
        {&a->ln1_rstd, L * N},
        {&a->qkv, L * N * 3 * C},
        {&a->atty, L * N * C},
        {&a->att, fused ? 0 : L * N * NH * (size_t)T},
        {&a->lse, fused ? L * N * NH : 0},
        {&a->residual2, L * N * C},
        {&a->ln2, L * N * C},
        {&a->ln2_mean, L * N},
        {&a->ln2_rstd, L * N},
        {&a->fch, L * N * 4 * C},
        {&a->fch_gelu, L * N * 4 * C},
        {&a->residual3, L * N * C},
        {&a->lnf, N * C},
        {&a->lnf_mean, N},
        {&a->lnf_rstd, N},
        {&a->logits, N * Vp},
        {&a->probs, N * Vp},
        {&a->losses, N},
        {&a->proj_out, N * C},
        {&a->dresidual, N * C},
        {&a->dln, N * C},
        {&a->dqkv, N * 3 * C},
        {&a->datty, N * C},
        {&a->dfch_gelu, N * 4 * C},
        {&a->dfch, N * 4 * C},
    };
    memcpy(list, buffers, sizeof buffers);
}

// Buffer lengths rounded up to 16 floats (64 bytes).
static size_t aligned_numel(size_t numel) { return (numel + 15) / 16 * 16; }

static size_t activation_numel(const ModelShape *shape, int B, int T, AttentionImpl attention) {
    Activations unused;
    ActivationBuffer list[NUM_ACTIVATION_BUFFERS];
    activation_buffers(&unused, shape, B, T, attention, list);
    size_t total = 0;
    for (int i = 0; i < NUM_ACTIVATION_BUFFERS; i++) total += aligned_numel(list[i].numel);
    return total;
}

// Cast copies of matmul operands, allocated only for a format other than fp32. Each matmul (and the
// attention op) fills them just before its product, so one set serves them all.
typedef struct {
    float *inp;     // the largest matmul input: (B, T, 4C); also q, k, v for attention: (B, T, 3C)
    float *weight;  // the largest weight: (max(4C, Vp), C)
    float *dout;    // the largest output gradient: (B, T, max(4C, Vp))
} OperandCopies;

struct GPTCpu {
    ParamTable table;
    int max_B, max_T;  // capacity of the buffers
    LinearCasts linear_casts;    // the block linear layers' operands (fp8: scales per use)
    OperandCast attention_cast;  // attention products (fp8: scaled by each use's current amax)
    OperandCast lm_head_cast;    // the LM head (fp8: likewise)
    int bf16_activations;        // stored activations are rounded to bf16 as they are written
    int int8_linear_inputs;      // the block linears' inputs are quantized per token (activation_quant)
    AttentionImpl attention_impl;
    OperandObserver observer;  // tests
    void *observer_ctx;
    Activations acts;
    float *act_memory;
    OperandCopies operands;
    int *inputs, *targets;  // (B, T) of the last forward
    int B, T;               // of the last forward
    int has_targets;        // the last forward computed a loss, so the backward may run
};

// The activation buffers for the capacity and attention at hand, 64-byte aligned, and every buffer a multiple
// of 64 bytes long: all buffers start on cache lines.
static void allocate_activations(GPTCpu *model) {
    free(model->act_memory);
    size_t bytes = gpt_cpu_activation_bytes(&model->table, model->max_B, model->max_T, model->attention_impl);
    model->act_memory = aligned_alloc(64, bytes);
    if (!model->act_memory) fatal("out of memory allocating %zu bytes of activations", bytes);
}

GPTCpu *gpt_cpu_create(const ParamTable *table, int B, int T) {
    if (B < 1 || T < 1 || T > table->shape.block_size)
        fatal("batch of %d sequences of %d tokens does not fit the model (block_size %d)", B, T,
              table->shape.block_size);
    GPTCpu *model = xcalloc(1, sizeof *model);
    model->table = *table;
    model->max_B = B;
    model->max_T = T;
    MatmulPrecision fp32 = {.format = MATMUL_FP32};
    linear_casts_init(&model->linear_casts, &fp32, table->shape.n_layer);
    model->attention_cast = operand_cast_for(&fp32);
    model->lm_head_cast = operand_cast_for(&fp32);
    model->attention_impl = ATTENTION_FUSED;
    allocate_activations(model);
    model->inputs = xmalloc((size_t)B * T * sizeof(int));
    model->targets = xmalloc((size_t)B * T * sizeof(int));
    return model;
}

void gpt_cpu_free(GPTCpu *model) {
    if (!model) return;
    linear_casts_free(&model->linear_casts);
    free(model->act_memory);
    free(model->operands.inp);
    free(model->operands.weight);
    free(model->operands.dout);
    free(model->inputs);
    free(model->targets);
    free(model);
}

size_t gpt_cpu_activation_bytes(const ParamTable *table, int B, int T, AttentionImpl attention) {
    return activation_numel(&table->shape, B, T, attention) * sizeof(float);
}

// Elements of the three operand copies at (B, T): the largest matmul input, weight and output gradient.
static void operand_copy_numel(const ParamTable *table, int B, int T, size_t *inp, size_t *weight, size_t *dout) {
    size_t N = (size_t)B * T;
    size_t C = (size_t)table->shape.n_embd, Vp = (size_t)table->shape.padded_vocab;
    size_t widest = Vp > 4 * C ? Vp : 4 * C;  // the most output channels of any matmul
    *inp = N * 4 * C;
    *weight = widest * C;
    *dout = N * widest;
}

size_t gpt_cpu_operand_copy_bytes(const ParamTable *table, int B, int T) {
    size_t inp, weight, dout;
    operand_copy_numel(table, B, T, &inp, &weight, &dout);
    return (inp + weight + dout) * sizeof(float);
}

static void allocate_operand_copies(GPTCpu *model) {
    if (model->operands.inp) return;
    size_t inp, weight, dout;
    operand_copy_numel(&model->table, model->max_B, model->max_T, &inp, &weight, &dout);
    model->operands.inp = xmalloc(inp * sizeof(float));
    model->operands.weight = xmalloc(weight * sizeof(float));
    model->operands.dout = xmalloc(dout * sizeof(float));
}

void gpt_cpu_set_precision(GPTCpu *model, const MatmulPrecision *linear, const MatmulPrecision *attention,
                           const MatmulPrecision *lm_head) {
    linear_casts_free(&model->linear_casts);
    linear_casts_init(&model->linear_casts, linear, model->table.shape.n_layer);
    model->attention_cast = operand_cast_for(attention);
    model->lm_head_cast = operand_cast_for(lm_head);
    if (linear->format != MATMUL_FP32 || attention->format != MATMUL_FP32 || lm_head->format != MATMUL_FP32)
        allocate_operand_copies(model);
}

void gpt_cpu_set_activations(GPTCpu *model, ActivationStorage activations) {
    model->bf16_activations = activations == ACTIVATIONS_BF16;
}

void gpt_cpu_set_attention(GPTCpu *model, AttentionImpl attention) {
    if (attention == model->attention_impl) return;
    model->attention_impl = attention;
    allocate_activations(model);  // the forward places the buffers anew
}

AttentionImpl gpt_cpu_attention_impl(const GPTCpu *model) { return model->attention_impl; }

void gpt_cpu_set_activation_quant(GPTCpu *model, ActivationQuant quant) {
    model->int8_linear_inputs = quant == ACTIVATION_QUANT_INT8;
    if (model->int8_linear_inputs) allocate_operand_copies(model);
}

void gpt_cpu_store(const GPTCpu *model, float *x, size_t n) {
    if (!model->bf16_activations) return;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = round_bf16(x[i]);
}

size_t gpt_cpu_scaling_state(GPTCpu *model, float **data) {
    return linear_casts_scaling_state(&model->linear_casts, data);
}

void gpt_cpu_observe_operands(GPTCpu *model, OperandObserver observer, void *ctx) {
    model->observer = observer;
    model->observer_ctx = ctx;
}

const float *gpt_cpu_probs(const GPTCpu *model) { return model->acts.probs; }

const float *gpt_cpu_logits(const GPTCpu *model) { return model->acts.logits; }

const OperandCast *gpt_cpu_attention_cast(const GPTCpu *model) { return &model->attention_cast; }

void gpt_cpu_stored_activations(const GPTCpu *model, StoredActivation list[NUM_STORED_ACTIVATIONS]) {
    const Activations *a = &model->acts;
    const ModelShape *s = &model->table.shape;
    size_t L = (size_t)s->n_layer, C = (size_t)s->n_embd, N = (size_t)model->B * model->T;
    StoredActivation stored[NUM_STORED_ACTIVATIONS] = {
        {"encoded", a->encoded, N * C},      {"ln1", a->ln1, L * N * C},
        {"qkv", a->qkv, L * N * 3 * C},      {"atty", a->atty, L * N * C},
        {"residual2", a->residual2, L * N * C}, {"ln2", a->ln2, L * N * C},
        {"fch", a->fch, L * N * 4 * C},      {"fch_gelu", a->fch_gelu, L * N * 4 * C},
        {"residual3", a->residual3, L * N * C}, {"lnf", a->lnf, N * C},
        {"proj_out", a->proj_out, N * C},    {"logits", a->logits, N * (size_t)s->padded_vocab},
    };
    memcpy(list, stored, sizeof stored);
}

// Points the activation buffers into the one allocation, packed for the batch shape at hand.
static void place_activations(GPTCpu *model, int B, int T) {
    ActivationBuffer list[NUM_ACTIVATION_BUFFERS];
    activation_buffers(&model->acts, &model->table.shape, B, T, model->attention_impl, list);
    size_t offset = 0;
    for (int i = 0; i < NUM_ACTIVATION_BUFFERS; i++) {
        *list[i].buffer = model->act_memory + offset;
        offset += aligned_numel(list[i].numel);
    }
}

// Layer l's view of the stacked activations, with N = B*T rows per layer.
typedef struct {
    float *residual;  // (B, T, C) the layer's input
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *att, *lse, *residual2;
    float *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu, *residual3;
} LayerActivations;

static LayerActivations layer_activations(const Activations *a, const ModelShape *s, AttentionImpl attention, int l,
                                          int B, int T) {
    size_t N = (size_t)B * T, C = (size_t)s->n_embd, NH = (size_t)s->n_head;
    LayerActivations x;
    x.residual = l == 0 ? a->encoded : a->residual3 + (size_t)(l - 1) * N * C;
    x.ln1 = a->ln1 + l * N * C;
    x.ln1_mean = a->ln1_mean + l * N;
    x.ln1_rstd = a->ln1_rstd + l * N;
    x.qkv = a->qkv + l * N * 3 * C;
    x.atty = a->atty + l * N * C;
    x.att = attention == ATTENTION_FUSED ? NULL : a->att + l * N * NH * (size_t)T;
    x.lse = attention == ATTENTION_FUSED ? a->lse + l * N * NH : NULL;
    x.residual2 = a->residual2 + l * N * C;
    x.ln2 = a->ln2 + l * N * C;
    x.ln2_mean = a->ln2_mean + l * N;
    x.ln2_rstd = a->ln2_rstd + l * N;
    x.fch = a->fch + l * N * 4 * C;
    x.fch_gelu = a->fch_gelu + l * N * 4 * C;
    x.residual3 = a->residual3 + l * N * C;
    return x;
}

// x itself when the cast leaves values unchanged, else the cast values, in copy.
static const float *cast_operand(const OperandCast *cast, float *copy, const float *x, size_t n) {
    if (cast->format == MATMUL_FP32) return x;
    quantize_operand(copy, x, n, cast);
    return copy;
}

// A block linear layer's operand x (n) as its matmul receives it, cast into copy unless fp32. fp8 casts
// forward operands to E4M3, output gradients to E5M2, each with its tensor's scale of this use; the
// backward re-casts inputs and weights with the forward's scales. The observer sees `original` (the
// operand before any quantization, x itself but for quantized linear inputs) and the cast values.
static const float *linear_operand_of(GPTCpu *model, int layer, BlockLinear linear, OperandRole role, int backward,
                                      float *copy, const float *original, const float *x, size_t n) {
    LinearCasts *casts = &model->linear_casts;
    float amax = linear_cast_needs_amax(casts, role, backward) ? tensor_amax(x, n) : 0.0f;
    OperandCast cast = linear_cast_of_use(casts, layer, linear, role, backward, amax);
    const float *out = cast_operand(&cast, copy, x, n);
    if (model->observer) {
        OperandView view = {layer, linear, role, backward, cast.scale, original, out, n};
        model->observer(model->observer_ctx, &view);
    }
    return out;
}

static const float *linear_operand(GPTCpu *model, int layer, BlockLinear linear, OperandRole role, int backward,
                                   float *copy, const float *x, size_t n) {
    return linear_operand_of(model, layer, linear, role, backward, copy, x, x, n);
}

// A block linear layer's input (N, C) as its matmul receives it: per-token int8 quantized into the input
// copy under activation_quant (the format's cast then casts that copy in place), then linear_operand's cast.
// The backward calls this too, so the weight gradient multiplies what the forward multiplied.
static const float *linear_input(GPTCpu *model, int layer, BlockLinear linear, int backward, const float *inp, int N,
                                 int C) {
    float *copy = model->operands.inp;
    const float *x = inp;
    if (model->int8_linear_inputs) {
        quantize_activation_rows(copy, inp, (size_t)N, (size_t)C);
        x = copy;
    }
    return linear_operand_of(model, layer, linear, OPERAND_INPUT, backward, copy, inp, x, (size_t)N * C);
}

void gpt_cpu_linear_forward(GPTCpu *model, int layer, BlockLinear linear, float *out, const float *inp,
                            const float *weight, const float *bias, int N, int C, int OC) {
    OperandCopies *copies = &model->operands;
    const float *x = linear_input(model, layer, linear, 0, inp, N, C);
    const float *w = linear_operand(model, layer, linear, OPERAND_WEIGHT, 0, copies->weight, weight, (size_t)OC * C);
    matmul_forward(out, x, w, bias, N, C, OC);
    gpt_cpu_store(model, out, (size_t)N * OC);
}

// The backward of linear_forward: both products take cast operands; the bias gradient sums dout itself.
static void linear_backward(GPTCpu *model, int layer, BlockLinear linear, float *dinp, float *dweight, float *dbias,
                            const float *dout, const float *inp, const float *weight, int N, int C, int OC) {
    OperandCopies *copies = &model->operands;
    const float *d = linear_operand(model, layer, linear, OPERAND_OUTPUT_GRAD, 1, copies->dout, dout, (size_t)N * OC);
    const float *x = linear_input(model, layer, linear, 1, inp, N, C);
    const float *w = linear_operand(model, layer, linear, OPERAND_WEIGHT, 1, copies->weight, weight, (size_t)OC * C);
    matmul_backward(dinp, dweight, NULL, d, x, w, N, C, OC);
    sum_rows_add(dbias, dout, N, OC);
}

// A whole tensor x (n) cast by the attention's or LM head's cast, into copy unless fp32. fp8 scales it by its
// current amax onto `fp8_grid` (E4M3 forward operands, E5M2 gradients); the backward's re-cast of a forward
// operand sees the same tensor, so the same scale.
static const float *current_operand(const OperandCast *cast, ExmyFormat fp8_grid, float *copy, const float *x,
                                    size_t n) {
    OperandCast use = operand_cast_current(*cast, fp8_grid, cast->format == MATMUL_FP8 ? tensor_amax(x, n) : 0.0f);
    return cast_operand(&use, copy, x, n);
}

void gpt_cpu_lm_head_forward(GPTCpu *model, float *logits, const float *lnf, const float *wte, int N, int C, int Vp) {
    const OperandCast *cast = &model->lm_head_cast;
    const float *x = current_operand(cast, exmy_e4m3(), model->operands.inp, lnf, (size_t)N * C);
    const float *w = current_operand(cast, exmy_e4m3(), model->operands.weight, wte, (size_t)Vp * C);
    matmul_forward(logits, x, w, NULL, N, C, Vp);
    gpt_cpu_store(model, logits, (size_t)N * Vp);
}

static void lm_head_backward(GPTCpu *model, float *dlnf, float *dwte, const float *dlogits, const float *lnf,
                             const float *wte, int N, int C, int Vp) {
    const OperandCast *cast = &model->lm_head_cast;
    const float *d = current_operand(cast, exmy_e5m2(), model->operands.dout, dlogits, (size_t)N * Vp);
    const float *x = current_operand(cast, exmy_e4m3(), model->operands.inp, lnf, (size_t)N * C);
    const float *w = current_operand(cast, exmy_e4m3(), model->operands.weight, wte, (size_t)Vp * C);
    matmul_backward(dlnf, dwte, NULL, d, x, w, N, C, Vp);
}

const float *gpt_cpu_attention_operand(const GPTCpu *model, float *copy, const float *qkv, size_t n) {
    return current_operand(&model->attention_cast, exmy_e4m3(), copy, qkv, n);
}

// Attention of layer activations x: under fused attention it saves x->lse, else the probabilities x->att.
static void attention_cast_forward(GPTCpu *model, const LayerActivations *x, int B, int T, int C, int NH) {
    const float *qkv_cast = gpt_cpu_attention_operand(model, model->operands.inp, x->qkv, (size_t)B * T * 3 * C);
    if (model->attention_impl == ATTENTION_FUSED)
        attention_tiled_forward(x->atty, x->lse, qkv_cast, B, T, C, NH, &model->attention_cast);
    else
        attention_forward(x->atty, x->att, qkv_cast, B, T, C, NH, &model->attention_cast);
    gpt_cpu_store(model, x->atty, (size_t)B * T * C);
}

// dqkv: (B, T, 3C), OVERWRITTEN. The fused backward reads the stored (under bf16 activations, rounded) atty.
static void attention_cast_backward(GPTCpu *model, float *dqkv, const float *datty, const LayerActivations *x, int B,
                                    int T, int C, int NH) {
    const OperandCast *cast = &model->attention_cast;
    const float *qkv_cast = gpt_cpu_attention_operand(model, model->operands.inp, x->qkv, (size_t)B * T * 3 * C);
    const float *datty_cast = current_operand(cast, exmy_e5m2(), model->operands.dout, datty, (size_t)B * T * C);
    if (model->attention_impl == ATTENTION_FUSED) {
        attention_tiled_backward(dqkv, datty_cast, qkv_cast, x->atty, x->lse, B, T, C, NH, cast);
    } else {
        memset(dqkv, 0, (size_t)B * T * 3 * C * sizeof(float));  // attention_backward adds
        attention_backward(dqkv, datty_cast, qkv_cast, x->att, B, T, C, NH, cast);
    }
}

static void zero(float *x, size_t n) { memset(x, 0, n * sizeof(float)); }

static void check_tokens(const int *tokens, size_t n, int vocab_size, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab_size)
            fatal("%s token %d at position %zu is outside the vocabulary of %d", what, tokens[i], i, vocab_size);
}

float gpt_cpu_forward(GPTCpu *model, const float *params, const int *inputs, const int *targets, int B, int T) {
    const ModelShape *s = &model->table.shape;
    if (B < 1 || T < 1 || B > model->max_B || T > model->max_T)
        fatal("batch (%d, %d) exceeds the model's buffers (%d, %d)", B, T, model->max_B, model->max_T);
    int C = s->n_embd, NH = s->n_head, L = s->n_layer, V = s->vocab_size, Vp = s->padded_vocab;
    int N = B * T;
    check_tokens(inputs, (size_t)N, V, "input");
    if (targets) check_tokens(targets, (size_t)N, V, "target");
    memcpy(model->inputs, inputs, (size_t)N * sizeof(int));
    if (targets) memcpy(model->targets, targets, (size_t)N * sizeof(int));
    model->B = B;
    model->T = T;
    model->has_targets = targets != NULL;
    place_activations(model, B, T);

    const ParamTensor *tensors = model->table.tensors;
    const float *wte = params + tensors[PARAM_WTE].offset;  // (Vp, C)
    Activations *a = &model->acts;
    encoder_forward(a->encoded, inputs, wte, params + tensors[PARAM_WPE].offset, B, T, C);
    gpt_cpu_store(model, a->encoded, (size_t)N * C);
    for (int l = 0; l < L; l++) {
        LayerOffsets p = layer_offsets(&model->table, l);
        LayerActivations x = layer_activations(a, s, model->attention_impl, l, B, T);
        layernorm_forward(x.ln1, x.ln1_mean, x.ln1_rstd, x.residual, params + p.ln1w, params + p.ln1b, N, C);
        gpt_cpu_store(model, x.ln1, (size_t)N * C);
        gpt_cpu_linear_forward(model, l, LINEAR_QKV, x.qkv, x.ln1, params + p.qkvw, params + p.qkvb, N, C, 3 * C);
        attention_cast_forward(model, &x, B, T, C, NH);
        gpt_cpu_linear_forward(model, l, LINEAR_ATTPROJ, a->proj_out, x.atty, params + p.attprojw,
                               params + p.attprojb, N, C, C);
        residual_forward(x.residual2, x.residual, a->proj_out, (size_t)N * C);
        gpt_cpu_store(model, x.residual2, (size_t)N * C);
        layernorm_forward(x.ln2, x.ln2_mean, x.ln2_rstd, x.residual2, params + p.ln2w, params + p.ln2b, N, C);
        gpt_cpu_store(model, x.ln2, (size_t)N * C);
        gpt_cpu_linear_forward(model, l, LINEAR_FC, x.fch, x.ln2, params + p.fcw, params + p.fcb, N, C, 4 * C);
        gelu_forward(x.fch_gelu, x.fch, (size_t)N * 4 * C);
        gpt_cpu_store(model, x.fch_gelu, (size_t)N * 4 * C);
        gpt_cpu_linear_forward(model, l, LINEAR_FCPROJ, a->proj_out, x.fch_gelu, params + p.fcprojw,
                               params + p.fcprojb, N, 4 * C, C);
        residual_forward(x.residual3, x.residual2, a->proj_out, (size_t)N * C);
        gpt_cpu_store(model, x.residual3, (size_t)N * C);
    }
    const float *final_residual = layer_activations(a, s, model->attention_impl, L - 1, B, T).residual3;
    layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, final_residual, params + tensors[PARAM_LNFW].offset,
                      params + tensors[PARAM_LNFB].offset, N, C);
    gpt_cpu_store(model, a->lnf, (size_t)N * C);
    // The LM head is wte itself (tied), all Vp rows; the classifier ignores the padded logits.
    gpt_cpu_lm_head_forward(model, a->logits, a->lnf, wte, N, C, Vp);
    classifier_forward(a->probs, a->losses, a->logits, targets, N, V, Vp);
    linear_casts_forward_done(&model->linear_casts);
    if (!targets) return 0.0f;
    double sum = 0.0;
    for (int n = 0; n < N; n++) sum += a->losses[n];
    return (float)(sum / N);
}

void gpt_cpu_backward(GPTCpu *model, const float *params, float *grads, float loss_scale) {
    if (!model->has_targets) fatal("internal: gpt_cpu_backward needs a forward with targets first");
    const ModelShape *s = &model->table.shape;
    int B = model->B, T = model->T;
    int C = s->n_embd, NH = s->n_head, L = s->n_layer, V = s->vocab_size, Vp = s->padded_vocab;
    int N = B * T;
    const ParamTensor *tensors = model->table.tensors;
    size_t wte = tensors[PARAM_WTE].offset, lnfw = tensors[PARAM_LNFW].offset, lnfb = tensors[PARAM_LNFB].offset;
    Activations *a = &model->acts;

    // The logits are not needed any more: their gradient takes their place.
    float *dlogits = a->logits;  // (B, T, Vp)
    zero(dlogits, (size_t)N * Vp);
    classifier_backward(dlogits, a->probs, model->targets, loss_scale / (float)N, N, V, Vp);
    zero(a->dln, (size_t)N * C);
    lm_head_backward(model, a->dln, grads + wte, dlogits, a->lnf, params + wte, N, C, Vp);
    LayerActivations last = layer_activations(a, s, model->attention_impl, L - 1, B, T);
    zero(a->dresidual, (size_t)N * C);
    layernorm_backward(a->dresidual, grads + lnfw, grads + lnfb, a->dln, last.residual3, params + lnfw, a->lnf_mean,
                       a->lnf_rstd, N, C);

    for (int l = L - 1; l >= 0; l--) {
        LayerOffsets p = layer_offsets(&model->table, l);
        LayerActivations x = layer_activations(a, s, model->attention_impl, l, B, T);
        // dresidual is the gradient of residual3 = residual2 + fcproj, which passes unchanged to both
        // summands: the MLP branch reads it, and adds its own input gradient into it, making it residual2's.
        zero(a->dfch_gelu, (size_t)N * 4 * C);
        linear_backward(model, l, LINEAR_FCPROJ, a->dfch_gelu, grads + p.fcprojw, grads + p.fcprojb, a->dresidual,
                        x.fch_gelu, params + p.fcprojw, N, 4 * C, C);
        zero(a->dfch, (size_t)N * 4 * C);
        gelu_backward(a->dfch, a->dfch_gelu, x.fch, (size_t)N * 4 * C);
        zero(a->dln, (size_t)N * C);
        linear_backward(model, l, LINEAR_FC, a->dln, grads + p.fcw, grads + p.fcb, a->dfch, x.ln2, params + p.fcw, N, C,
                        4 * C);
        layernorm_backward(a->dresidual, grads + p.ln2w, grads + p.ln2b, a->dln, x.residual2, params + p.ln2w,
                           x.ln2_mean, x.ln2_rstd, N, C);
        // The same for residual2 = residual + attproj and the attention branch.
        zero(a->datty, (size_t)N * C);
        linear_backward(model, l, LINEAR_ATTPROJ, a->datty, grads + p.attprojw, grads + p.attprojb, a->dresidual,
                        x.atty, params + p.attprojw, N, C, C);
        attention_cast_backward(model, a->dqkv, a->datty, &x, B, T, C, NH);
        zero(a->dln, (size_t)N * C);
        linear_backward(model, l, LINEAR_QKV, a->dln, grads + p.qkvw, grads + p.qkvb, a->dqkv, x.ln1, params + p.qkvw,
                        N, C, 3 * C);
        layernorm_backward(a->dresidual, grads + p.ln1w, grads + p.ln1b, a->dln, x.residual, params + p.ln1w,
                           x.ln1_mean, x.ln1_rstd, N, C);
    }
    encoder_backward(grads + wte, grads + tensors[PARAM_WPE].offset, a->dresidual, model->inputs, B, T, C);
    linear_casts_backward_done(&model->linear_casts);
}
