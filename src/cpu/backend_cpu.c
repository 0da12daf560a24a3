// The CPU backend: GPT-2 forward/backward of gpt_cpu.c, each policy's storage, and the optimizer step, which
// loops over optimizer_element.h's per-element step (the CUDA backend's optimizer kernel calls the same one).
//
// Every quantity is held in its real format (bf16 as uint16, an MCF pair as two bf16 arrays, DQT codes as
// int8), plus two fp32 buffers the CPU kernels need: the compute copy of the weights that the forward and
// backward read (under fp32 weights it is the storage itself; under BitNet a second buffer beside the fp32
// latent weights, holding their ternary values), and, under bf16 gradients, the scratch the backward adds
// each micro-step's gradient into before it is rounded into the stored gradient.
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
#include "cpu/kv_cache.h"
#include "distributed.h"
#include "param_storage.h"
#include "util.h"

struct Backend {
    ParamTable table;
    Policy policy;
    GPTCpu *model;
    float *params;        // (N) the weights forward reads: the storage under fp32 weights, else the decoded copy;
                          //     WEIGHTS_BITNET: the fp32 latent weights, which the optimizer steps
    float *ternary;       // (N) WEIGHTS_BITNET: what the passes read, the latent weights' ternary values
    bf16 *weights_bf16;   // (N) bf16 weights (MCF: hi); WEIGHTS_INT_GRID: the bf16 embeddings; else NULL
    float *master;        // (N) UPDATE_FP32_MASTER: the fp32 master weights
    bf16 *mcf_lo;         // (N) UPDATE_MCF_GROW: the lo parts
    bf16 *kahan_c;        // (N) UPDATE_KAHAN: the compensations
    int8_t *dqt_codes;    // WEIGHTS_INT_GRID: the grid tensors' codes, tensor after tensor
    float *dqt_scales;    // WEIGHTS_INT_GRID: the step of each layer slice of a grid tensor
    float *dqt_next_scales;  // precision.dqt_rescale: the steps the next update moves the codes to
    float *dqt_vectors;   // WEIGHTS_INT_GRID: the fp32 off-grid tensors, tensor after tensor
    float *grads;         // (N) fp32 gradients; under bf16 gradients, the backward's fp32 scratch
    bf16 *grads_bf16;     // (N) bf16 gradients, else NULL
    MomentBuffer m, v;
    ParamLayout layout;   // chunks, the ranks' ranges, DQT offsets
    UpdateSums *chunk_sums;  // (num_chunks) allocated by the first step that computes metrics
    int rank, world;
    int zero;                // ZeRO-1: the optimizer state is this rank's shard
    int first_chunk, end_chunk;  // the chunks optimizer_step steps: all, or under ZeRO-1 this rank's
    size_t state_base;       // the parameter index of the optimizer state's first element
    size_t state_numel;      // elements of optimizer state held (master, lo, c, m, v)
    int B, T;                // of the last forward
    float *rows;             // (B, Vp) the probabilities or logits at one position, for the caller
    KVCache *kv_cache;       // decode_step's, allocated by its first call
    BackendState state;
};

// ----------------------------------------------------------------------------------------------------
// storage

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

static void init_weights(Backend *b, const float *init) {
    size_t n = b->table.num_params;
    if (b->policy.weights == WEIGHTS_FP32 || b->policy.weights == WEIGHTS_BITNET) {
        memcpy(b->params, init, n * sizeof(float));
        if (b->policy.weights == WEIGHTS_BITNET) b->ternary = xmalloc(n * sizeof(float));
        return;
    }
    if (b->policy.weights == WEIGHTS_INT_GRID) {
        DqtCounts counts = dqt_counts(&b->table, &b->policy);
        b->dqt_codes = xmalloc(counts.codes);
        b->dqt_scales = xmalloc(counts.scales * sizeof(float));
        if (b->policy.dqt_rescale) b->dqt_next_scales = xmalloc(counts.scales * sizeof(float));
        b->dqt_vectors = xmalloc(counts.fp32 * sizeof(float));
        b->weights_bf16 = xmalloc(counts.bf16 * sizeof(bf16));
        dqt_init_storage(&b->table, &b->layout, b->policy.grid_bits, init, b->dqt_codes, b->dqt_scales,
                         b->dqt_vectors, b->weights_bf16);
        return;
    }
    b->weights_bf16 = xmalloc(n * sizeof(bf16));
    for (size_t i = 0; i < n; i++) b->weights_bf16[i] = bf16_from_f32(init[i]);
    if (b->policy.update == UPDATE_FP32_MASTER) {
        b->master = xmalloc(n * sizeof(float));
        memcpy(b->master, init, n * sizeof(float));
    } else if (b->policy.update == UPDATE_MCF_GROW) {
        // lo starts at zero, as in Collage's released code (zeros_like of the bf16 parameter): the pair starts
        // from the bf16 model the paper trains, not from the fp32 initialisation.
        b->mcf_lo = xcalloc(n, sizeof(bf16));
    } else if (b->policy.update == UPDATE_KAHAN) {
        b->kahan_c = xcalloc(n, sizeof(bf16));
    }
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
    o.dqt_next_scales = b->dqt_next_scales ? b->dqt_next_scales : b->dqt_scales;
    o.dqt_vectors = b->dqt_vectors;
    o.grads = b->grads;
    o.grads_bf16 = b->grads_bf16;
    o.m = b->m;
    o.v = b->v;
    o.state_base = b->state_base;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        o.tensor_offset[t] = b->table.tensors[t].offset;
        o.dqt_offset[t] = b->layout.dqt_offset[t];
        o.dqt_store[t] = b->layout.dqt_store[t];
        o.is_matrix[t] = b->table.tensors[t].is_matrix;
    }
    return o;
}

// Refreshes the compute copy from the stored weights (at creation, after a checkpoint load, and under BitNet
// after every step).
static void decode_weights(Backend *b) {
    if (b->policy.weights == WEIGHTS_BITNET) {
        bitnet_quantize_weights(&b->table, &b->policy, b->params, b->ternary);
        return;
    }
    if (b->policy.weights == WEIGHTS_BF16) {
        size_t n = b->table.num_params;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b->params[i] = bf16_to_f32(b->weights_bf16[i]);
        return;
    }
    if (b->policy.weights != WEIGHTS_INT_GRID) return;
    OptimizerBuffers o = optimizer_buffers(b);
#pragma omp parallel for schedule(static)
    for (int c = 0; c < b->layout.num_chunks; c++) {
        const Chunk *chunk = &b->layout.chunks[c];
        for (size_t i = chunk->begin; i < chunk->end; i++) b->params[i] = dqt_decoded_weight(&o, chunk, i);
    }
}

static Backend *cpu_create(const ParamTable *table, const Policy *policy, int B, int T, const float *init) {
    Backend *b = xcalloc(1, sizeof *b);
    size_t n = table->num_params;
    b->table = *table;
    b->policy = *policy;
    b->model = gpt_cpu_create(table, B, T);
    b->rows = xmalloc((size_t)B * table->shape.padded_vocab * sizeof(float));
    gpt_cpu_set_precision(b->model, &policy->matmul, &policy->attention, &policy->lm_head);
    gpt_cpu_set_activations(b->model, policy->activations);
    gpt_cpu_set_attention(b->model, policy->attention_impl);
    gpt_cpu_set_activation_quant(b->model, policy->activation_quant);
    b->rank = dist_rank();
    b->world = dist_world();
    param_layout_init(&b->layout, table, policy, b->world);
    b->first_chunk = 0;
    b->end_chunk = b->layout.num_chunks;
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
    free(b->ternary);
    free(b->weights_bf16);
    free(b->master);
    free(b->mcf_lo);
    free(b->kahan_c);
    free(b->dqt_codes);
    free(b->dqt_scales);
    free(b->dqt_next_scales);
    free(b->dqt_vectors);
    free(b->grads);
    free(b->grads_bf16);
    free_moment(&b->m);
    free_moment(&b->v);
    param_layout_free(&b->layout);
    free(b->chunk_sums);
    free(b->rows);
    kv_cache_free(b->kv_cache);
    free(b);
}

// ----------------------------------------------------------------------------------------------------
// forward, backward, gradients

// The weights the passes read. Under BitNet the backward's weight gradient is the gradient with respect to
// the ternary weights, stored as the latent weights' gradient: the straight-through estimator.
static const float *pass_weights(const Backend *b) { return b->ternary ? b->ternary : b->params; }

static float cpu_forward(Backend *b, const int *inputs, const int *targets, int B, int T) {
    b->B = B;
    b->T = T;
    return gpt_cpu_forward(b->model, pass_weights(b), inputs, targets, B, T);
}

// The rows at position t of every sequence of all (B, T, Vp), into b->rows (B, Vp).
static const float *rows_at(Backend *b, const float *all, int t) {
    if (t < 0 || t >= b->T) fatal("internal: position %d of a forward of %d positions", t, b->T);
    size_t Vp = (size_t)b->table.shape.padded_vocab;
    for (int i = 0; i < b->B; i++) memcpy(b->rows + i * Vp, all + ((size_t)i * b->T + t) * Vp, Vp * sizeof(float));
    return b->rows;
}

static const float *cpu_probs(Backend *b, int t) { return rows_at(b, gpt_cpu_probs(b->model), t); }

static const float *cpu_logits(Backend *b, int t) { return rows_at(b, gpt_cpu_logits(b->model), t); }

// The cache spans the model's whole context, whatever batch shape the backend was created for.
static const float *cpu_decode_step(Backend *b, int token, int pos) {
    if (!b->kv_cache) b->kv_cache = kv_cache_create(&b->table, b->table.shape.block_size);
    return kv_cache_step(b->kv_cache, b->model, pass_weights(b), token, pos);
}

static void cpu_zero_grad(Backend *b) {
    size_t n = b->table.num_params;
    if (b->grads_bf16) memset(b->grads_bf16, 0, n * sizeof(bf16));
    else memset(b->grads, 0, n * sizeof(float));
}

// bf16 gradients: the micro-step's gradient goes into the fp32 scratch, and the stored gradient becomes
// bf16(grad + scratch), so accumulation over micro-steps rounds to bf16 after each one.
// The CPU sums over the ranks in reduce_gradients (MPI collectives on the cores the backward uses: no
// overlap to gain), so `last` changes nothing here.
static void cpu_backward(Backend *b, float loss_scale, int last) {
    if (!b->grads_bf16) {
        gpt_cpu_backward(b->model, pass_weights(b), b->grads, loss_scale);
        return;
    }
    size_t n = b->table.num_params;
    memset(b->grads, 0, n * sizeof(float));
    gpt_cpu_backward(b->model, pass_weights(b), b->grads, loss_scale);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) b->grads_bf16[i] = bf16_from_f32(bf16_to_f32(b->grads_bf16[i]) + b->grads[i]);
}

// Each rank sums its own range of every rank's gradients (in fp32, also for bf16 gradients, which are then
// rounded once); without ZeRO-1 the sums are then gathered, so that every rank holds all of them.
static void cpu_reduce_gradients(Backend *b) {
    if (b->world == 1) return;
    size_t n = b->table.num_params, begin = b->layout.param_bounds[b->rank], end = b->layout.param_bounds[b->rank + 1];
    if (b->grads_bf16) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b->grads[i] = bf16_to_f32(b->grads_bf16[i]);
    }
    dist_reduce_scatter_sum(b->grads, b->layout.param_bounds);
    if (b->grads_bf16) {
#pragma omp parallel for schedule(static)
        for (size_t i = begin; i < end; i++) b->grads_bf16[i] = bf16_from_f32(b->grads[i]);
    }
    if (b->zero) return;
    if (b->grads_bf16) dist_all_gather(b->grads_bf16, sizeof(bf16), b->layout.param_bounds);
    else dist_all_gather(b->grads, sizeof(float), b->layout.param_bounds);
}

// Sum of squares of the stored gradients in fixed chunks, each in double, added in chunk order: the same
// result for any thread count, so runs and resumes are bit-reproducible.
// Under ZeRO-1 a rank has summed only its own range of the gradients: it takes its chunks' partial sums,
// and gathers the others'.
static float cpu_grad_norm(Backend *b) {
    OptimizerBuffers o = optimizer_buffers(b);
    double *partial = xmalloc((size_t)b->layout.num_chunks * sizeof(double));
#pragma omp parallel for schedule(static)
    for (int c = b->first_chunk; c < b->end_chunk; c++) {
        double sum = 0.0;
        for (size_t i = b->layout.chunks[c].begin; i < b->layout.chunks[c].end; i++) {
            double g = optimizer_stored_grad(&o, i);
            sum += g * g;
        }
        partial[c] = sum;
    }
    if (b->zero) dist_all_gather(partial, sizeof(double), b->layout.chunk_bounds);
    double total = 0.0;
    for (int c = 0; c < b->layout.num_chunks; c++) total += partial[c];
    free(partial);
    return (float)sqrt(total);
}

// ----------------------------------------------------------------------------------------------------
// the optimizer step

static void step_chunk(const OptimizerBuffers *o, const Chunk *chunk, const UpdateConstants *k, UpdateSums *sums) {
    for (size_t i = chunk->begin; i < chunk->end; i++) optimizer_step_element(o, chunk, k, i, sums);
}

// ZeRO-1: every rank's stored weights of its range (and metric sums of its chunks) to every rank, then the
// compute copy decoded from the stored weights.
static void gather_shards(Backend *b, int with_metrics) {
    if (b->policy.weights == WEIGHTS_INT_GRID) {
        dist_all_gather(b->dqt_codes, sizeof(int8_t), b->layout.dqt_bounds[DQT_GRID]);
        dist_all_gather(b->dqt_vectors, sizeof(float), b->layout.dqt_bounds[DQT_FP32]);
        dist_all_gather(b->weights_bf16, sizeof(bf16), b->layout.dqt_bounds[DQT_BF16]);
    } else if (b->weights_bf16) {
        dist_all_gather(b->weights_bf16, sizeof(bf16), b->layout.param_bounds);
    } else {
        dist_all_gather(b->params, sizeof(float), b->layout.param_bounds);
    }
    decode_weights(b);
    if (with_metrics) dist_all_gather(b->chunk_sums, sizeof(UpdateSums), b->layout.chunk_bounds);
}

static void cpu_optimizer_step(Backend *b, const AdamWStep *step, UpdateMetrics *metrics) {
    UpdateConstants k = update_constants(step);
    if (metrics && !b->chunk_sums) b->chunk_sums = xmalloc((size_t)b->layout.num_chunks * sizeof(UpdateSums));
    if (metrics) memset(b->chunk_sums, 0, (size_t)b->layout.num_chunks * sizeof(UpdateSums));
    // Every rank derives the new steps from the same (whole) decoded weights, so they agree without a message.
    if (b->dqt_next_scales) dqt_steps_from_weights(&b->table, &b->layout, b->policy.grid_bits, b->params, b->dqt_next_scales);
    OptimizerBuffers o = optimizer_buffers(b);
#pragma omp parallel for schedule(static)
    for (int c = b->first_chunk; c < b->end_chunk; c++) step_chunk(&o, &b->layout.chunks[c], &k, metrics ? &b->chunk_sums[c] : NULL);
    if (b->dqt_next_scales) {
        memcpy(b->dqt_scales, b->dqt_next_scales, dqt_counts(&b->table, &b->policy).scales * sizeof(float));
    }
    if (b->zero) gather_shards(b, metrics != NULL);
    else if (b->ternary) decode_weights(b);
    if (metrics) update_metrics_from_chunks(metrics, &b->policy, &b->layout, b->chunk_sums);
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
    b->first_chunk = (int)b->layout.chunk_bounds[b->rank];
    b->end_chunk = (int)b->layout.chunk_bounds[b->rank + 1];
    b->state_base = b->layout.param_bounds[b->rank];
    b->state_numel = b->layout.param_bounds[b->rank + 1] - b->state_base;
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

static void cpu_load_grads(Backend *b, const float *grads) {
    size_t n = b->table.num_params;
    if (!b->grads_bf16) {
        memcpy(b->grads, grads, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) b->grads_bf16[i] = bf16_from_f32(grads[i]);
}

static void cpu_read_grads(Backend *b, float *grads) {
    size_t n = b->table.num_params;
    if (!b->grads_bf16) {
        memcpy(grads, b->grads, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) grads[i] = bf16_to_f32(b->grads_bf16[i]);
}

static void cpu_read_params(Backend *b, float *params) {
    memcpy(params, pass_weights(b), b->table.num_params * sizeof(float));
}

// ----------------------------------------------------------------------------------------------------
// checkpoint state

// The sections point straight at the stored quantities (the compute copy is rebuilt from them on load);
// under ZeRO-1 the optimizer state's sections are this rank's shard.
static BackendState *cpu_state_save(Backend *b) {
    size_t n = b->table.num_params;
    BackendState *state = &b->state;
    state->count = 0;
    if (b->policy.weights == WEIGHTS_FP32) backend_state_add(state, "weights_fp32", b->params, n * sizeof(float));
    if (b->policy.weights == WEIGHTS_BITNET) backend_state_add(state, "latent_weights_fp32", b->params, n * sizeof(float));
    if (b->policy.weights == WEIGHTS_BF16) backend_state_add(state, "weights_bf16", b->weights_bf16, n * sizeof(bf16));
    size_t shard = b->state_numel;
    if (b->master) backend_state_add(state, "master_fp32", b->master, shard * sizeof(float));
    if (b->mcf_lo) backend_state_add(state, "mcf_lo_bf16", b->mcf_lo, shard * sizeof(bf16));
    if (b->kahan_c) backend_state_add(state, "kahan_c_bf16", b->kahan_c, shard * sizeof(bf16));
    if (b->policy.weights == WEIGHTS_INT_GRID) {
        DqtCounts counts = dqt_counts(&b->table, &b->policy);
        backend_state_add(state, "dqt_codes_int8", b->dqt_codes, counts.codes);
        backend_state_add(state, "dqt_scales_fp32", b->dqt_scales, counts.scales * sizeof(float));
        backend_state_add(state, "off_grid_fp32", b->dqt_vectors, counts.fp32 * sizeof(float));
        if (counts.bf16) backend_state_add(state, "off_grid_bf16", b->weights_bf16, counts.bf16 * sizeof(bf16));
    }
    backend_state_add_moment(state, &b->m, 0, shard);
    backend_state_add_moment(state, &b->v, 1, shard);
    float *scaling;
    size_t scaling_floats = gpt_cpu_scaling_state(b->model, &scaling);
    if (scaling_floats) backend_state_add(state, "matmul_scaling", scaling, scaling_floats * sizeof(float));
    return state;
}

static void cpu_state_load(Backend *b) { decode_weights(b); }

// The policy's storage plus the fp32 compute copy and gradient buffer (param_storage.h), exactly as
// cpu_create allocates them besides the chunk list and the metric sums.
static size_t cpu_plan_state_bytes(const ParamTable *table, const Policy *policy, int shards) {
    StateBytes bytes = state_bytes(table, policy, shards);
    return bytes.weights + bytes.gradients + bytes.optimizer;
}

// gpt_cpu.c's activations, and the cast copies of matmul operands for a format other than fp32 or for
// quantized linear inputs.
static size_t cpu_plan_activation_bytes(const ParamTable *table, const Policy *policy, int B, int T) {
    size_t bytes = gpt_cpu_activation_bytes(table, B, T, policy->attention_impl);
    if (policy->matmul.format == MATMUL_FP32 && policy->attention.format == MATMUL_FP32 &&
        policy->lm_head.format == MATMUL_FP32 && policy->activation_quant == ACTIVATION_QUANT_NONE)
        return bytes;
    return bytes + gpt_cpu_operand_copy_bytes(table, B, T);
}

const BackendOps cpu_backend = {
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .forward = cpu_forward,
    .probs = cpu_probs,
    .logits = cpu_logits,
    .decode_step = cpu_decode_step,
    .zero_grad = cpu_zero_grad,
    .backward = cpu_backward,
    .reduce_gradients = cpu_reduce_gradients,
    .shard_optimizer_state = cpu_shard_optimizer_state,
    .grad_norm = cpu_grad_norm,
    .optimizer_step = cpu_optimizer_step,
    .read_params = cpu_read_params,
    .load_grads = cpu_load_grads,
    .read_grads = cpu_read_grads,
    .state_save = cpu_state_save,
    .state_load = cpu_state_load,
    .plan_state_bytes = cpu_plan_state_bytes,
    .plan_activation_bytes = cpu_plan_activation_bytes,
};
