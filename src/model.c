#include "model.h"

#include <math.h>
#include <stdio.h>

#include "numerics/rng.h"
#include "util.h"

int padded_vocab_size(int vocab_size) { return (vocab_size + 127) / 128 * 128; }

static void check_shape(const ModelShape *shape) {
    if (shape->n_layer < 1 || shape->n_head < 1 || shape->n_embd < 1 || shape->block_size < 1 ||
        shape->vocab_size < 1)
        fatal("model shape must be positive (n_layer %d, n_head %d, n_embd %d, block_size %d, vocab_size %d)",
              shape->n_layer, shape->n_head, shape->n_embd, shape->block_size, shape->vocab_size);
    if (shape->n_embd % shape->n_head != 0)
        fatal("n_embd (%d) must be a multiple of n_head (%d)", shape->n_embd, shape->n_head);
    if (shape->padded_vocab < shape->vocab_size)
        fatal("padded vocabulary (%d) is smaller than the vocabulary (%d)", shape->padded_vocab,
              shape->vocab_size);
}

// The parameter count in double precision (exact to well beyond the limit): a shape beyond 2^50 parameters
// would overflow the byte counts of the memory plan (up to 64 bytes per parameter) long before any machine
// could hold it.
static void check_size(const ModelShape *s) {
    double L = s->n_layer, C = s->n_embd;
    double params = (double)s->padded_vocab * C + (double)s->block_size * C + L * (12.0 * C * C + 13.0 * C) + 2.0 * C;
    if (params > 0x1p50) {
        fatal("model shape (n_layer %d, n_embd %d, block_size %d, vocab %d) has %.3g parameters, more than the 2^50 "
              "this program can count", s->n_layer, s->n_embd, s->block_size, s->padded_vocab, params);
    }
}

// One row of the table. numel counts all layers of a per-layer tensor.
static ParamTensor tensor_entry(const char *name, size_t numel, int per_layer, int is_matrix) {
    ParamTensor t = {name, 0, numel, per_layer, is_matrix};
    return t;
}

void param_table_init(ParamTable *table, const ModelShape *shape) {
    table->shape = *shape;
    // A shape without a padded vocabulary (0) gets the default; llm.c files bring their own.
    if (table->shape.padded_vocab == 0) table->shape.padded_vocab = padded_vocab_size(shape->vocab_size);
    check_shape(&table->shape);

    check_size(&table->shape);
    size_t L = (size_t)shape->n_layer;
    size_t C = (size_t)shape->n_embd;
    size_t Vp = (size_t)table->shape.padded_vocab;
    size_t maxT = (size_t)shape->block_size;
    ParamTensor *t = table->tensors;
    // Weight decay goes to every 2-D weight, the embeddings included (GPT-2 and llm.c practice).
    t[PARAM_WTE] = tensor_entry("wte", Vp * C, 0, 1);
    t[PARAM_WPE] = tensor_entry("wpe", maxT * C, 0, 1);
    t[PARAM_LN1W] = tensor_entry("ln1w", L * C, 1, 0);
    t[PARAM_LN1B] = tensor_entry("ln1b", L * C, 1, 0);
    t[PARAM_QKVW] = tensor_entry("qkvw", L * 3 * C * C, 1, 1);
    t[PARAM_QKVB] = tensor_entry("qkvb", L * 3 * C, 1, 0);
    t[PARAM_ATTPROJW] = tensor_entry("attprojw", L * C * C, 1, 1);
    t[PARAM_ATTPROJB] = tensor_entry("attprojb", L * C, 1, 0);
    t[PARAM_LN2W] = tensor_entry("ln2w", L * C, 1, 0);
    t[PARAM_LN2B] = tensor_entry("ln2b", L * C, 1, 0);
    t[PARAM_FCW] = tensor_entry("fcw", L * 4 * C * C, 1, 1);
    t[PARAM_FCB] = tensor_entry("fcb", L * 4 * C, 1, 0);
    t[PARAM_FCPROJW] = tensor_entry("fcprojw", L * C * 4 * C, 1, 1);
    t[PARAM_FCPROJB] = tensor_entry("fcprojb", L * C, 1, 0);
    t[PARAM_LNFW] = tensor_entry("lnfw", C, 0, 0);
    t[PARAM_LNFB] = tensor_entry("lnfb", C, 0, 0);

    size_t offset = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        t[i].offset = offset;
        offset += t[i].numel;
    }
    table->num_params = offset;
}

// How a tensor starts: the standard deviation of its normal draw, or a constant when std is 0.
typedef struct {
    float std;
    float constant;
} TensorInit;

static TensorInit tensor_init(int index, int n_layer) {
    const float std = 0.02f;
    // The residual projections add into the residual stream 2*n_layer times; scaling them keeps its
    // variance independent of depth (GPT-2).
    const float residual_std = std / sqrtf(2.0f * (float)n_layer);
    TensorInit init = {0.0f, 0.0f};
    switch (index) {
    case PARAM_WTE:
    case PARAM_WPE:
    case PARAM_QKVW:
    case PARAM_FCW: init.std = std; break;
    case PARAM_ATTPROJW:
    case PARAM_FCPROJW: init.std = residual_std; break;
    case PARAM_LN1W:
    case PARAM_LN2W:
    case PARAM_LNFW: init.constant = 1.0f; break;
    default: break;  // biases
    }
    return init;
}

void gpt_init_params(const ParamTable *table, float *params, uint64_t seed) {
    // Token embeddings beyond the real vocabulary stay 0: no token selects them and their logits are ignored.
    size_t real_wte = (size_t)table->shape.vocab_size * (size_t)table->shape.n_embd;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const ParamTensor *t = &table->tensors[i];
        TensorInit init = tensor_init(i, table->shape.n_layer);
        float *values = params + t->offset;
        size_t n = i == PARAM_WTE ? real_wte : t->numel;
        // Each element's draw is keyed by (seed, tensor, element), so the thread layout cannot change it.
        RngKey key = {seed, 0, (uint32_t)i};
#pragma omp parallel for schedule(static)
        for (size_t e = 0; e < n; e++) values[e] = init.std > 0.0f ? init.std * rng_normal(key, e) : init.constant;
        for (size_t e = n; e < t->numel; e++) values[e] = 0.0f;
    }
}

void param_table_print(const ParamTable *table) {
    const ModelShape *s = &table->shape;
    printf("model: n_layer %d, n_head %d, n_embd %d, block_size %d, vocab_size %d (padded %d)\n", s->n_layer,
           s->n_head, s->n_embd, s->block_size, s->vocab_size, s->padded_vocab);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const ParamTensor *t = &table->tensors[i];
        printf("  %-9s %12zu%s%s\n", t->name, t->numel, t->per_layer ? "  per layer" : "",
               t->is_matrix ? "  matrix" : "");
    }
    printf("  total     %12zu parameters\n", table->num_params);
}

static size_t slice_offset(const ParamTable *table, int which, int l) {
    const ParamTensor *t = &table->tensors[which];
    return t->offset + (size_t)l * (t->numel / (size_t)table->shape.n_layer);
}

LayerOffsets layer_offsets(const ParamTable *table, int l) {
    LayerOffsets o;
    o.ln1w = slice_offset(table, PARAM_LN1W, l);
    o.ln1b = slice_offset(table, PARAM_LN1B, l);
    o.qkvw = slice_offset(table, PARAM_QKVW, l);
    o.qkvb = slice_offset(table, PARAM_QKVB, l);
    o.attprojw = slice_offset(table, PARAM_ATTPROJW, l);
    o.attprojb = slice_offset(table, PARAM_ATTPROJB, l);
    o.ln2w = slice_offset(table, PARAM_LN2W, l);
    o.ln2b = slice_offset(table, PARAM_LN2B, l);
    o.fcw = slice_offset(table, PARAM_FCW, l);
    o.fcb = slice_offset(table, PARAM_FCB, l);
    o.fcprojw = slice_offset(table, PARAM_FCPROJW, l);
    o.fcprojb = slice_offset(table, PARAM_FCPROJB, l);
    return o;
}
