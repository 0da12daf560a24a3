// The CPU backend: GPT-2 forward/backward of gpt_cpu.c, each policy's storage, and the optimizer step, which
// loops over optimizer_element.h's per-element step (the CUDA backend's optimizer kernel calls the same one).
//
// Every quantity is held in its real format (bf16 as uint16, an MCF pair as two bf16 arrays, DQT codes as
// int8), plus two fp32 buffers the CPU kernels need: the compute copy of the weights that the forward and
// backward read (under fp32 weights it is the storage itself), and, under bf16 gradients, the scratch the
// backward adds each micro-step's gradient into before it is rounded into the stored gradient.
//
// Data parallelism: the chunks are split among the ranks in whole chunks, rank r owning chunks
// [chunk_bounds[r], chunk_bounds[r+1]), which are the parameters [param_bounds[r], param_bounds[r+1]).
// Gradients are summed over ranks range by range (distributed.h). Under ZeRO-1 a rank keeps the optimizer
// state (master, MCF lo, Kahan c, m, v) of its own range only, steps only its chunks, and then gathers the
// other ranks' stored weights.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/gpt_cpu.h"
#include "distributed.h"
#include "optimizer_element.h"
#include "util.h"

struct Backend {
    ParamTable table;
    Policy policy;
    GPTCpu *model;
    float *params;        // (N) the weights forward reads: the storage under fp32 weights, else the decoded copy
    bf16 *weights_bf16;   // (N) bf16 weights (MCF: hi), else NULL
    float *master;        // (N) UPDATE_FP32_MASTER: the fp32 master weights
    bf16 *mcf_lo;         // (N) UPDATE_MCF_GROW: the lo parts
    bf16 *kahan_c;        // (N) UPDATE_KAHAN: the compensations
    int8_t *dqt_codes;    // WEIGHTS_INT_GRID: the 2-D weights' grid codes, tensor after tensor
    float *dqt_scales;    // WEIGHTS_INT_GRID: one scale per layer slice of a 2-D weight
    float *dqt_vectors;   // WEIGHTS_INT_GRID: the 1-D parameters in fp32, tensor after tensor
    size_t dqt_offset[NUM_PARAM_TENSORS];  // a tensor's start in dqt_codes (2-D) or dqt_vectors (1-D)
    float *grads;         // (N) fp32 gradients; under bf16 gradients, the backward's fp32 scratch
    bf16 *grads_bf16;     // (N) bf16 gradients, else NULL
    MomentBuffer m, v;
    Chunk *chunks;
    int num_chunks;
    UpdateSums *chunk_sums;  // (num_chunks) allocated by the first step that computes metrics
    int rank, world;
    size_t *chunk_bounds;    // (world + 1) the ranks' ranges of chunks ...
    size_t *param_bounds;    // (world + 1) ... and of parameters
    size_t *code_bounds;     // (world + 1) WEIGHTS_INT_GRID: the ranks' ranges of dqt_codes ...
    size_t *vector_bounds;   // (world + 1) ... and of dqt_vectors
    int zero;                // ZeRO-1: the optimizer state is this rank's shard
    int first_chunk, end_chunk;  // the chunks optimizer_step steps: all, or under ZeRO-1 this rank's
    size_t state_base;       // the parameter index of the optimizer state's first element
    size_t state_numel;      // elements of optimizer state held (master, lo, c, m, v)
    BackendState state;
};

// ----------------------------------------------------------------------------------------------------
// storage

static int is_dqt_matrix(const Backend *b, int tensor) {
    return b->policy.weights == WEIGHTS_INT_GRID && b->table.tensors[tensor].is_matrix;
}

static int slices_of(const ParamTable *table, int tensor) {
    return table->tensors[tensor].per_layer ? table->shape.n_layer : 1;
}

// Elements of a slice that are weights: wte's padded vocabulary rows are not, and stay 0.
static size_t real_numel(const ParamTable *table, int tensor, size_t slice_numel) {
    return tensor == PARAM_WTE ? (size_t)table->shape.vocab_size * table->shape.n_embd : slice_numel;
}

typedef struct {
    size_t matrix_elements, vector_elements, matrix_slices;
} TableCounts;

static TableCounts count_table(const ParamTable *table) {
    TableCounts c = {0, 0, 0};
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &table->tensors[t];
        if (tensor->is_matrix) {
            c.matrix_elements += tensor->numel;
            c.matrix_slices += (size_t)slices_of(table, t);
        } else {
            c.vector_elements += tensor->numel;
        }
    }
    return c;
}

static void alloc_moment(MomentBuffer *moment, MomentStorage storage, size_t n) {
    moment->storage = storage;
    if (storage == STATE_FP32) moment->fp32 = xcalloc(n, sizeof(float));
    else moment->hi = xcalloc(n, sizeof(bf16));
    if (storage == STATE_MCF) moment->lo = xcalloc(n, sizeof(bf16));
}

static void free_moment(MomentBuffer *moment) {
    free(moment->fp32);
    free(moment->hi);
    free(moment->lo);
}

// DQT: codes on the grid by round-to-nearest from the initial weights, with each slice's scale the absmean
// of its initial values, fixed for the whole run (DQT keeps no higher-precision copy to re-derive it from).
// 1-D parameters stay fp32.
static void init_dqt(Backend *b, const float *init) {
    TableCounts counts = count_table(&b->table);
    b->dqt_codes = xmalloc(counts.matrix_elements);
    b->dqt_scales = xmalloc(counts.matrix_slices * sizeof(float));
    b->dqt_vectors = xmalloc(counts.vector_elements * sizeof(float));
    IntGrid grid = dqt_grid(b->policy.grid_bits);
    size_t codes = 0, vectors = 0, slice_index = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &b->table.tensors[t];
        const float *values = init + tensor->offset;
        if (!tensor->is_matrix) {
            b->dqt_offset[t] = vectors;
            memcpy(b->dqt_vectors + vectors, values, tensor->numel * sizeof(float));
            vectors += tensor->numel;
            continue;
        }
        b->dqt_offset[t] = codes;
        size_t slice_numel = tensor->numel / (size_t)slices_of(&b->table, t);
        for (int s = 0; s < slices_of(&b->table, t); s++, slice_index++) {
            const float *slice = values + (size_t)s * slice_numel;
            float scale = absmean_scale(slice, real_numel(&b->table, t, slice_numel));
            b->dqt_scales[slice_index] = scale;
            for (size_t e = 0; e < slice_numel; e++) {
                int32_t q = int_grid_quantize(slice[e], scale, grid, ROUND_NEAREST_EVEN, 0u);
                b->dqt_codes[codes + (size_t)s * slice_numel + e] = (int8_t)q;
            }
        }
        codes += tensor->numel;
    }
}

static void init_weights(Backend *b, const float *init) {
    size_t n = b->table.num_params;
    if (b->policy.weights == WEIGHTS_FP32) {
        memcpy(b->params, init, n * sizeof(float));
        return;
    }
    if (b->policy.weights == WEIGHTS_INT_GRID) {
        init_dqt(b, init);
        return;
    }
    b->weights_bf16 = xmalloc(n * sizeof(bf16));
    for (size_t i = 0; i < n; i++) b->weights_bf16[i] = bf16_from_f32(init[i]);
    if (b->policy.update == UPDATE_FP32_MASTER) {
        b->master = xmalloc(n * sizeof(float));
        memcpy(b->master, init, n * sizeof(float));
    } else if (b->policy.update == UPDATE_MCF_GROW) {
        // The pair holds the initial fp32 value to about 16 bits.
        b->mcf_lo = xmalloc(n * sizeof(bf16));
        for (size_t i = 0; i < n; i++) b->mcf_lo[i] = mcf_from_f32(init[i]).lo;
    } else if (b->policy.update == UPDATE_KAHAN) {
        b->kahan_c = xcalloc(n, sizeof(bf16));
    }
}

// Refreshes the compute copy from the stored weights (at creation and after a checkpoint load).
static void decode_weights(Backend *b) {
    if (b->policy.weights == WEIGHTS_BF16) {
        size_t n = b->table.num_params;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b->params[i] = bf16_to_f32(b->weights_bf16[i]);
        return;
    }
    if (b->policy.weights != WEIGHTS_INT_GRID) return;
    for (int c = 0; c < b->num_chunks; c++) {
        const Chunk *chunk = &b->chunks[c];
        size_t tensor_offset = b->table.tensors[chunk->tensor].offset;
        for (size_t i = chunk->begin; i < chunk->end; i++) {
            size_t stored = b->dqt_offset[chunk->tensor] + (i - tensor_offset);
            b->params[i] = is_dqt_matrix(b, chunk->tensor)
                               ? int_grid_dequantize(b->dqt_codes[stored], b->dqt_scales[chunk->slice])
                               : b->dqt_vectors[stored];
        }
    }
}

// Chunks of every layer slice of every tensor, in table order; with chunks NULL, only counts them.
static int list_chunks(const ParamTable *table, Chunk *chunks) {
    int count = 0, matrix_slice = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &table->tensors[t];
        int slices = slices_of(table, t);
        size_t slice_numel = tensor->numel / (size_t)slices;
        for (int s = 0; s < slices; s++) {
            size_t slice_begin = tensor->offset + (size_t)s * slice_numel, slice_end = slice_begin + slice_numel;
            for (size_t begin = slice_begin; begin < slice_end; begin += CHUNK_ELEMENTS, count++) {
                if (!chunks) continue;
                Chunk *c = &chunks[count];
                c->tensor = t;
                c->group = update_group_of(table, t, s);
                c->slice = tensor->is_matrix ? matrix_slice : -1;
                c->begin = begin;
                c->end = begin + CHUNK_ELEMENTS < slice_end ? begin + CHUNK_ELEMENTS : slice_end;
            }
            if (tensor->is_matrix) matrix_slice++;
        }
    }
    return count;
}

// Rank r's share starts at the first chunk at or after parameter r*N/world: whole chunks, so each rank's
// range is whole runs of layer slices, and about N/world parameters (empty for a rank with nothing left).
static void split_among_ranks(Backend *b) {
    size_t n = b->table.num_params;
    b->chunk_bounds = xmalloc((size_t)(b->world + 1) * sizeof(size_t));
    b->param_bounds = xmalloc((size_t)(b->world + 1) * sizeof(size_t));
    int c = 0;
    for (int r = 0; r <= b->world; r++) {
        size_t target = r == b->world ? n : n / (size_t)b->world * (size_t)r;
        while (c < b->num_chunks && b->chunks[c].begin < target) c++;
        b->chunk_bounds[r] = (size_t)c;
        b->param_bounds[r] = c < b->num_chunks ? b->chunks[c].begin : n;
    }
}

// How many elements of the matrices (or of the 1-D parameters) come before parameter index p: the same
// split in the DQT arrays, which hold the matrices' codes and the 1-D parameters in table order.
static size_t elements_before(const ParamTable *table, size_t p, int matrices) {
    size_t count = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &table->tensors[t];
        if (tensor->is_matrix != matrices || tensor->offset >= p) continue;
        count += p - tensor->offset < tensor->numel ? p - tensor->offset : tensor->numel;
    }
    return count;
}

static void split_dqt_among_ranks(Backend *b) {
    b->code_bounds = xmalloc((size_t)(b->world + 1) * sizeof(size_t));
    b->vector_bounds = xmalloc((size_t)(b->world + 1) * sizeof(size_t));
    for (int r = 0; r <= b->world; r++) {
        b->code_bounds[r] = elements_before(&b->table, b->param_bounds[r], 1);
        b->vector_bounds[r] = elements_before(&b->table, b->param_bounds[r], 0);
    }
}

static Backend *cpu_create(const ParamTable *table, const Policy *policy, int B, int T, const float *init) {
    Backend *b = xcalloc(1, sizeof *b);
    size_t n = table->num_params;
    b->table = *table;
    b->policy = *policy;
    b->model = gpt_cpu_create(table, B, T);
    gpt_cpu_set_precision(b->model, &policy->matmul, policy->attention);
    b->num_chunks = list_chunks(table, NULL);
    b->chunks = xmalloc((size_t)b->num_chunks * sizeof(Chunk));
    list_chunks(table, b->chunks);
    b->rank = dist_rank();
    b->world = dist_world();
    split_among_ranks(b);
    if (policy->weights == WEIGHTS_INT_GRID) split_dqt_among_ranks(b);
    b->first_chunk = 0;
    b->end_chunk = b->num_chunks;
    b->state_base = 0;
    b->state_numel = n;
    b->params = xmalloc(n * sizeof(float));
    init_weights(b, init);
    decode_weights(b);
    b->grads = xcalloc(n, sizeof(float));
    if (policy->grads == GRADS_BF16) b->grads_bf16 = xcalloc(n, sizeof(bf16));
    alloc_moment(&b->m, policy->adam_m, n);
    alloc_moment(&b->v, policy->adam_v, n);
    return b;
}

static void cpu_destroy(Backend *b) {
    gpt_cpu_free(b->model);
    free(b->params);
    free(b->weights_bf16);
    free(b->master);
    free(b->mcf_lo);
    free(b->kahan_c);
    free(b->dqt_codes);
    free(b->dqt_scales);
    free(b->dqt_vectors);
    free(b->grads);
    free(b->grads_bf16);
    free_moment(&b->m);
    free_moment(&b->v);
    free(b->chunks);
    free(b->chunk_sums);
    free(b->chunk_bounds);
    free(b->param_bounds);
    free(b->code_bounds);
    free(b->vector_bounds);
    free(b);
}

// ----------------------------------------------------------------------------------------------------
// forward, backward, gradients

static float cpu_forward(Backend *b, const int *inputs, const int *targets, int B, int T) {
    return gpt_cpu_forward(b->model, b->params, inputs, targets, B, T);
}

static const float *cpu_probs(Backend *b) { return gpt_cpu_probs(b->model); }

static const float *cpu_logits(Backend *b) { return gpt_cpu_logits(b->model); }

static void cpu_zero_grad(Backend *b) {
    size_t n = b->table.num_params;
    if (b->grads_bf16) memset(b->grads_bf16, 0, n * sizeof(bf16));
    else memset(b->grads, 0, n * sizeof(float));
}

// bf16 gradients: the micro-step's gradient goes into the fp32 scratch, and the stored gradient becomes
// bf16(grad + scratch), so accumulation over micro-steps rounds to bf16 after each one.
static void cpu_backward(Backend *b, float loss_scale) {
    if (!b->grads_bf16) {
        gpt_cpu_backward(b->model, b->params, b->grads, loss_scale);
        return;
    }
    size_t n = b->table.num_params;
    memset(b->grads, 0, n * sizeof(float));
    gpt_cpu_backward(b->model, b->params, b->grads, loss_scale);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) b->grads_bf16[i] = bf16_from_f32(bf16_to_f32(b->grads_bf16[i]) + b->grads[i]);
}

// Each rank sums its own range of every rank's gradients (in fp32, also for bf16 gradients, which are then
// rounded once); without ZeRO-1 the sums are then gathered, so that every rank holds all of them.
static void cpu_reduce_gradients(Backend *b) {
    if (b->world == 1) return;
    size_t n = b->table.num_params, begin = b->param_bounds[b->rank], end = b->param_bounds[b->rank + 1];
    if (b->grads_bf16) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b->grads[i] = bf16_to_f32(b->grads_bf16[i]);
    }
    dist_reduce_scatter_sum(b->grads, b->param_bounds);
    if (b->grads_bf16) {
#pragma omp parallel for schedule(static)
        for (size_t i = begin; i < end; i++) b->grads_bf16[i] = bf16_from_f32(b->grads[i]);
    }
    if (b->zero) return;
    if (b->grads_bf16) dist_all_gather(b->grads_bf16, sizeof(bf16), b->param_bounds);
    else dist_all_gather(b->grads, sizeof(float), b->param_bounds);
}

// The backend's buffers as the shared element step sees them.
static OptimizerBuffers optimizer_buffers(const Backend *b) {
    OptimizerBuffers o;
    o.update = b->policy.update;
    o.grid_bits = b->policy.grid_bits;
    o.params = b->params;
    o.weights_bf16 = b->weights_bf16;
    o.master = b->master;
    o.mcf_lo = b->mcf_lo;
    o.kahan_c = b->kahan_c;
    o.dqt_codes = b->dqt_codes;
    o.dqt_scales = b->dqt_scales;
    o.dqt_vectors = b->dqt_vectors;
    o.grads = b->grads;
    o.grads_bf16 = b->grads_bf16;
    o.m = b->m;
    o.v = b->v;
    o.state_base = b->state_base;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        o.tensor_offset[t] = b->table.tensors[t].offset;
        o.dqt_offset[t] = b->dqt_offset[t];
        o.is_matrix[t] = b->table.tensors[t].is_matrix;
    }
    return o;
}

// Sum of squares of the stored gradients in fixed chunks, each in double, added in chunk order: the same
// result for any thread count, so runs and resumes are bit-reproducible.
// Under ZeRO-1 a rank has summed only its own range of the gradients: it takes its chunks' partial sums,
// and gathers the others'.
static float cpu_grad_norm(Backend *b) {
    OptimizerBuffers o = optimizer_buffers(b);
    double *partial = xmalloc((size_t)b->num_chunks * sizeof(double));
#pragma omp parallel for schedule(static)
    for (int c = b->first_chunk; c < b->end_chunk; c++) {
        double sum = 0.0;
        for (size_t i = b->chunks[c].begin; i < b->chunks[c].end; i++) {
            double g = optimizer_stored_grad(&o, i);
            sum += g * g;
        }
        partial[c] = sum;
    }
    if (b->zero) dist_all_gather(partial, sizeof(double), b->chunk_bounds);
    double total = 0.0;
    for (int c = 0; c < b->num_chunks; c++) total += partial[c];
    free(partial);
    return (float)sqrt(total);
}

// ----------------------------------------------------------------------------------------------------
// the optimizer step

static void step_chunk(const OptimizerBuffers *o, const Chunk *chunk, const UpdateConstants *k, UpdateSums *sums) {
    for (size_t i = chunk->begin; i < chunk->end; i++) optimizer_step_element(o, chunk, k, i, sums);
}

// The chunks' sums into their groups, then the groups into the total, each in a fixed order.
static void gather_metrics(const Backend *b, UpdateMetrics *metrics) {
    update_metrics_clear(metrics);
    metrics->has_compensation = b->policy.update == UPDATE_MCF_GROW || b->policy.update == UPDATE_KAHAN;
    metrics->has_codes = b->policy.update == UPDATE_GRID_SR;
    for (int c = 0; c < b->num_chunks; c++) update_sums_add(&metrics->groups[b->chunks[c].group], &b->chunk_sums[c]);
    for (int g = 0; g < metrics->num_groups; g++) update_sums_add(&metrics->total, &metrics->groups[g]);
}

// ZeRO-1: every rank's stored weights of its range (and metric sums of its chunks) to every rank, then the
// compute copy decoded from the stored weights.
static void gather_shards(Backend *b, int with_metrics) {
    if (b->policy.weights == WEIGHTS_FP32) dist_all_gather(b->params, sizeof(float), b->param_bounds);
    if (b->weights_bf16) dist_all_gather(b->weights_bf16, sizeof(bf16), b->param_bounds);
    if (b->policy.weights == WEIGHTS_INT_GRID) {
        dist_all_gather(b->dqt_codes, sizeof(int8_t), b->code_bounds);
        dist_all_gather(b->dqt_vectors, sizeof(float), b->vector_bounds);
    }
    decode_weights(b);
    if (with_metrics) dist_all_gather(b->chunk_sums, sizeof(UpdateSums), b->chunk_bounds);
}

static void cpu_optimizer_step(Backend *b, const AdamWStep *step, UpdateMetrics *metrics) {
    UpdateConstants k = update_constants(step);
    if (metrics && !b->chunk_sums) b->chunk_sums = xmalloc((size_t)b->num_chunks * sizeof(UpdateSums));
    if (metrics) memset(b->chunk_sums, 0, (size_t)b->num_chunks * sizeof(UpdateSums));
    OptimizerBuffers o = optimizer_buffers(b);
#pragma omp parallel for schedule(static)
    for (int c = b->first_chunk; c < b->end_chunk; c++) step_chunk(&o, &b->chunks[c], &k, metrics ? &b->chunk_sums[c] : NULL);
    if (b->zero) gather_shards(b, metrics != NULL);
    if (metrics) gather_metrics(b, metrics);
}

// A buffer's elements [base, base + count) in a buffer of their own; the whole one is freed.
static void *keep_range(void *whole, size_t elem_bytes, size_t base, size_t count) {
    if (!whole) return NULL;
    void *part = xmalloc(count * elem_bytes);
    memcpy(part, (char *)whole + base * elem_bytes, count * elem_bytes);
    free(whole);
    return part;
}

static void cpu_shard_optimizer_state(Backend *b) {
    if (b->world == 1) return;  // one shard: the whole state, as without ZeRO
    b->zero = 1;
    b->first_chunk = (int)b->chunk_bounds[b->rank];
    b->end_chunk = (int)b->chunk_bounds[b->rank + 1];
    b->state_base = b->param_bounds[b->rank];
    b->state_numel = b->param_bounds[b->rank + 1] - b->state_base;
    size_t base = b->state_base, count = b->state_numel;
    b->master = keep_range(b->master, sizeof(float), base, count);
    b->mcf_lo = keep_range(b->mcf_lo, sizeof(bf16), base, count);
    b->kahan_c = keep_range(b->kahan_c, sizeof(bf16), base, count);
    MomentBuffer *moments[2] = {&b->m, &b->v};
    for (int i = 0; i < 2; i++) {
        moments[i]->fp32 = keep_range(moments[i]->fp32, sizeof(float), base, count);
        moments[i]->hi = keep_range(moments[i]->hi, sizeof(bf16), base, count);
        moments[i]->lo = keep_range(moments[i]->lo, sizeof(bf16), base, count);
    }
}

static void cpu_read_params(Backend *b, float *params) {
    memcpy(params, b->params, b->table.num_params * sizeof(float));
}

// ----------------------------------------------------------------------------------------------------
// checkpoint state

static void add_section(BackendState *state, const char *name, void *data, size_t nbytes) {
    state->sections[state->count++] = (CheckpointSection){name, data, nbytes};
}

static void add_moment_sections(BackendState *state, const MomentBuffer *moment, int is_v, size_t n) {
    switch (moment->storage) {
    case STATE_FP32: add_section(state, is_v ? "adam_v_fp32" : "adam_m_fp32", moment->fp32, n * sizeof(float)); break;
    case STATE_BF16: add_section(state, is_v ? "adam_v_bf16" : "adam_m_bf16", moment->hi, n * sizeof(bf16)); break;
    case STATE_MCF:
        add_section(state, is_v ? "adam_v_hi_bf16" : "adam_m_hi_bf16", moment->hi, n * sizeof(bf16));
        add_section(state, is_v ? "adam_v_lo_bf16" : "adam_m_lo_bf16", moment->lo, n * sizeof(bf16));
        break;
    }
}

// The sections point straight at the stored quantities (the compute copy is rebuilt from them on load);
// under ZeRO-1 the optimizer state's sections are this rank's shard.
static BackendState *cpu_state_save(Backend *b) {
    size_t n = b->table.num_params;
    BackendState *state = &b->state;
    state->count = 0;
    if (b->policy.weights == WEIGHTS_FP32) add_section(state, "weights_fp32", b->params, n * sizeof(float));
    if (b->weights_bf16) add_section(state, "weights_bf16", b->weights_bf16, n * sizeof(bf16));
    size_t shard = b->state_numel;
    if (b->master) add_section(state, "master_fp32", b->master, shard * sizeof(float));
    if (b->mcf_lo) add_section(state, "mcf_lo_bf16", b->mcf_lo, shard * sizeof(bf16));
    if (b->kahan_c) add_section(state, "kahan_c_bf16", b->kahan_c, shard * sizeof(bf16));
    if (b->policy.weights == WEIGHTS_INT_GRID) {
        TableCounts counts = count_table(&b->table);
        add_section(state, "dqt_codes_int8", b->dqt_codes, counts.matrix_elements);
        add_section(state, "dqt_scales_fp32", b->dqt_scales, counts.matrix_slices * sizeof(float));
        add_section(state, "weights_1d_fp32", b->dqt_vectors, counts.vector_elements * sizeof(float));
    }
    add_moment_sections(state, &b->m, 0, shard);
    add_moment_sections(state, &b->v, 1, shard);
    float *scaling;
    size_t scaling_floats = gpt_cpu_scaling_state(b->model, &scaling);
    if (scaling_floats) add_section(state, "matmul_scaling", scaling, scaling_floats * sizeof(float));
    return state;
}

static void cpu_state_load(Backend *b) { decode_weights(b); }

static size_t moment_bytes(MomentStorage storage) {
    return storage == STATE_FP32 ? sizeof(float) : storage == STATE_BF16 ? sizeof(bf16) : 2 * sizeof(bf16);
}

// The policy's storage plus the CPU's fp32 buffers, exactly as cpu_create allocates them (besides the
// chunk list and the metric sums: a few dozen bytes per CHUNK_ELEMENTS parameters). Sharded, the optimizer
// state counts its even share (a rank's whole chunks make it up to CHUNK_ELEMENTS elements more or less).
static size_t cpu_plan_state_bytes(const ParamTable *table, const Policy *policy, int shards) {
    size_t n = table->num_params;
    TableCounts counts = count_table(table);
    size_t bytes = n * sizeof(float);  // the compute copy, or the fp32 weights themselves
    if (policy->weights == WEIGHTS_BF16) bytes += n * sizeof(bf16);
    if (policy->weights == WEIGHTS_INT_GRID) {
        bytes += counts.matrix_elements + counts.matrix_slices * sizeof(float) + counts.vector_elements * sizeof(float);
    }
    size_t optimizer = n * (moment_bytes(policy->adam_m) + moment_bytes(policy->adam_v));
    if (policy->update == UPDATE_FP32_MASTER) optimizer += n * sizeof(float);
    if (policy->update == UPDATE_MCF_GROW || policy->update == UPDATE_KAHAN) optimizer += n * sizeof(bf16);
    bytes += (optimizer + (size_t)shards - 1) / (size_t)shards;
    bytes += n * sizeof(float);  // fp32 gradients, or the backward's scratch under bf16 gradients
    if (policy->grads == GRADS_BF16) bytes += n * sizeof(bf16);
    return bytes;
}

const BackendOps cpu_backend = {
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .forward = cpu_forward,
    .probs = cpu_probs,
    .logits = cpu_logits,
    .zero_grad = cpu_zero_grad,
    .backward = cpu_backward,
    .reduce_gradients = cpu_reduce_gradients,
    .shard_optimizer_state = cpu_shard_optimizer_state,
    .grad_norm = cpu_grad_norm,
    .optimizer_step = cpu_optimizer_step,
    .read_params = cpu_read_params,
    .state_save = cpu_state_save,
    .state_load = cpu_state_load,
    .plan_state_bytes = cpu_plan_state_bytes,
    .plan_activation_bytes = gpt_cpu_activation_bytes,
};
