// The optimizer step of one parameter under a policy: the moments in their storage, the policy's update
// rule (update_rules.h) applied to the stored weight, the compute copy refreshed, and the element's
// update-quality sums. Host and device: the CPU backend loops over optimizer_step_element, the CUDA
// backend's optimizer kernel calls it per thread, so both store the same bits from the same inputs.
#ifndef LP_OPTIMIZER_ELEMENT_H
#define LP_OPTIMIZER_ELEMENT_H

#include <stddef.h>

#include "model.h"
#include "policy.h"
#include "update_metrics.h"
#include "update_rules.h"

// The optimizer loops over runs of at most this many elements of one layer slice of one tensor.
#define CHUNK_ELEMENTS 8192

// Where DQT keeps a tensor: codes on the grid, or off the grid in fp32 (1-D parameters, fp32 embeddings) or
// in bf16 (bf16 embeddings). Each has its own array, the tensors in table order.
typedef enum { DQT_GRID, DQT_FP32, DQT_BF16, DQT_NUM_STORES } DqtStore;

// A run of elements within one layer slice of one tensor: the unit of the optimizer's parallel loop (a
// CPU task, a CUDA block), and of the metric and gradient-norm partial sums, which are added up in chunk
// order so that they depend on neither the thread count nor the backend's layout.
typedef struct {
    int tensor;
    int group;          // update-metrics layer group
    int slice;          // DQT grid tensors: the slice's step in dqt_scales
    size_t begin, end;  // parameter indices
} Chunk;

// An Adam moment in its storage.
typedef struct {
    MomentStorage storage;
    float *fp32;  // (N) STATE_FP32
    bf16 *hi;     // (N) STATE_BF16: the moment; STATE_MCF: the pair's hi part
    bf16 *lo;     // (N) STATE_MCF: the pair's lo part
} MomentBuffer;

// Everything an element's step reads and writes, as pointers into the backend's buffers (host or device
// memory). Weights, the compute copy and gradients are indexed by parameter index i; the optimizer state
// (master, lo, c, m, v) by i - state_base (ZeRO-1 keeps only a rank's range).
typedef struct {
    WeightUpdate update;
    int grid_bits;                     // WEIGHTS_INT_GRID
    float *params;                     // (N) the weights forward reads as fp32 (the storage under fp32 weights);
                                       // NULL where bf16 and grid weights are read as stored (the CUDA backend)
    bf16 *weights_bf16;                // (N) bf16 weights (MCF: hi); WEIGHTS_INT_GRID: the bf16 off-grid tensors
                                       // (embeddings), tensor after tensor; or NULL
    float *master;                     // UPDATE_FP32_MASTER
    bf16 *mcf_lo;                      // UPDATE_MCF_GROW
    bf16 *kahan_c;                     // UPDATE_KAHAN
    int8_t *dqt_codes;                 // WEIGHTS_INT_GRID: the grid tensors' codes, tensor after tensor
    float *dqt_scales;                 // WEIGHTS_INT_GRID: the step of each layer slice of a grid tensor ...
    const float *dqt_next_scales;      // ... and after this step (dqt_scales itself unless rescaling)
    float *dqt_vectors;                // WEIGHTS_INT_GRID: the fp32 off-grid tensors, tensor after tensor
    const float *grads;                // (N) fp32 gradients, read when grads_bf16 is NULL
    const bf16 *grads_bf16;            // (N) bf16 gradients, or NULL
    MomentBuffer m, v;
    size_t state_base;
    size_t tensor_offset[NUM_PARAM_TENSORS];  // a tensor's first parameter index
    size_t dqt_offset[NUM_PARAM_TENSORS];     // a tensor's start in the DQT array of its store
    int dqt_store[NUM_PARAM_TENSORS];         // WEIGHTS_INT_GRID: a tensor's DqtStore
    int is_matrix[NUM_PARAM_TENSORS];         // 2-D weight: weight decay
} OptimizerBuffers;

// A moment after this step's gradient, as the update reads it.
typedef struct {
    float value;   // the stored value in fp32 (a pair: hi + lo)
    bf16 operand;  // the operand of a bf16-op update: the bf16 moment, the pair's hi, or bf16(fp32 moment)
} MomentValue;

// What one element's step needs besides its own storage.
typedef struct {
    const UpdateConstants *k;
    MomentValue m, v;
    int decay;        // 2-D weight: weight decay applies
    RngKey key;       // stochastic rounding: the tensor's key ...
    uint64_t index;   // ... and the element's index in its tensor
    size_t state;     // the element's index in the optimizer state
    UpdateSums *sums; // NULL: no metrics
} ElementStep;

LP_HD float optimizer_stored_grad(const OptimizerBuffers *b, size_t i) {
    return b->grads_bf16 ? bf16_to_f32(b->grads_bf16[i]) : b->grads[i];
}

LP_HD MomentValue optimizer_step_moment(const MomentBuffer *moment, size_t i, float g, const MomentRule *rule) {
    MomentValue out = {0.0f, 0};
    switch (moment->storage) {
    case STATE_FP32:
        moment->fp32[i] = moment_step_fp32(moment->fp32[i], g, rule);
        out.value = moment->fp32[i];
        out.operand = bf16_from_f32(out.value);
        break;
    case STATE_BF16:
        moment->hi[i] = moment_step_bf16(moment->hi[i], g, rule);
        out.value = bf16_to_f32(moment->hi[i]);
        out.operand = moment->hi[i];
        break;
    case STATE_MCF: {
        Mcf pair = moment_step_mcf(mcf_make(moment->hi[i], moment->lo[i]), g, rule);
        moment->hi[i] = pair.hi;
        moment->lo[i] = pair.lo;
        out.value = mcf_to_f32(pair);
        out.operand = pair.hi;
        break;
    }
    }
    return out;
}

// An fp32 weight stepped by the fp32 AdamW update: fp32 weights, the master copy, 1-D parameters under DQT.
// Returns Δ.
LP_HD float optimizer_step_fp32(float *weight, const ElementStep *e) {
    float delta = adamw_delta_fp32(*weight, e->m.value, e->v.value, &e->k->fp32, e->decay);
    *weight += delta;
    return delta;
}

// An fp32 weight that forward reads as it is stored (fp32 weights, 1-D parameters under DQT): read weight
// and stored value are one.
LP_HD void optimizer_step_fp32_read(float *weight, const ElementStep *e) {
    float before = *weight;
    float delta = optimizer_step_fp32(weight, e);
    double moved = (double)*weight - before;
    if (e->sums) update_sums_add_element(e->sums, delta, moved, moved);
}

// The fp32 compute copy of parameter i after its step, where the backend keeps one (params not NULL).
LP_HD void set_compute_copy(const OptimizerBuffers *b, size_t i, float value) {
    if (b->params) b->params[i] = value;
}

// Forward reads the bf16 copy; the fp32 master keeps what the copy's rounding drops.
LP_HD void optimizer_step_master(const OptimizerBuffers *b, size_t i, const ElementStep *e) {
    float master_before = b->master[e->state], read_before = bf16_to_f32(b->weights_bf16[i]);
    float delta = optimizer_step_fp32(&b->master[e->state], e);
    b->weights_bf16[i] = bf16_from_f32(b->master[e->state]);
    float read = bf16_to_f32(b->weights_bf16[i]);
    set_compute_copy(b, i, read);
    if (e->sums)
        update_sums_add_element(e->sums, delta, (double)read - read_before,
                                (double)b->master[e->state] - master_before);
}

LP_HD void optimizer_step_rne(const OptimizerBuffers *b, size_t i, const ElementStep *e) {
    bf16 before = b->weights_bf16[i];
    bf16 delta = adamw_delta_bf16(before, e->m.operand, e->v.operand, e->k, e->decay);
    b->weights_bf16[i] = weight_step_rne(before, delta);
    float read = bf16_to_f32(b->weights_bf16[i]);
    set_compute_copy(b, i, read);
    double moved = (double)read - bf16_to_f32(before);
    if (e->sums) update_sums_add_element(e->sums, bf16_to_f32(delta), moved, moved);
}

LP_HD void optimizer_step_mcf(const OptimizerBuffers *b, size_t i, const ElementStep *e) {
    Mcf before = mcf_make(b->weights_bf16[i], b->mcf_lo[e->state]);
    bf16 delta = adamw_delta_bf16(before.hi, e->m.operand, e->v.operand, e->k, e->decay);
    Mcf after = weight_step_mcf(before, delta);
    b->weights_bf16[i] = after.hi;
    b->mcf_lo[e->state] = after.lo;
    set_compute_copy(b, i, bf16_to_f32(after.hi));
    if (e->sums) {
        double raw = bf16_to_f32(delta);
        update_sums_add_element(e->sums, raw, (double)bf16_to_f32(after.hi) - bf16_to_f32(before.hi),
                                mcf_to_double(after) - mcf_to_double(before));
        update_sums_add_compensation(e->sums, bf16_to_f32(after.lo), raw);
    }
}

// The weight a Kahan pair stands for: θ − c.
LP_HD double kahan_value(KahanPair x) { return (double)bf16_to_f32(x.value) - bf16_to_f32(x.compensation); }

LP_HD void optimizer_step_kahan(const OptimizerBuffers *b, size_t i, const ElementStep *e) {
    KahanPair before;
    before.value = b->weights_bf16[i];
    before.compensation = b->kahan_c[e->state];
    bf16 delta = adamw_delta_bf16(before.value, e->m.operand, e->v.operand, e->k, e->decay);
    KahanPair after = weight_step_kahan(before, delta);
    b->weights_bf16[i] = after.value;
    b->kahan_c[e->state] = after.compensation;
    set_compute_copy(b, i, bf16_to_f32(after.value));
    if (e->sums) {
        double raw = bf16_to_f32(delta);
        update_sums_add_element(e->sums, raw, (double)bf16_to_f32(after.value) - bf16_to_f32(before.value),
                                kahan_value(after) - kahan_value(before));
        update_sums_add_compensation(e->sums, -(double)bf16_to_f32(after.compensation), raw);
    }
}

// A bf16 weight stepped by the fp32 AdamW update, stochastically rounded; param: its fp32 compute copy, or
// NULL where the weight is read as stored.
LP_HD void optimizer_step_sr(bf16 *weight, float *param, const ElementStep *e) {
    bf16 before = *weight;
    float delta = adamw_delta_fp32(bf16_to_f32(before), e->m.value, e->v.value, &e->k->fp32, e->decay);
    *weight = weight_step_sr(before, delta, e->key, e->index);
    float read = bf16_to_f32(*weight);
    if (param) *param = read;
    double moved = (double)read - bf16_to_f32(before);
    if (e->sums) update_sums_add_element(e->sums, delta, moved, moved);
}

// A code stepped from the grid of step `scale` onto the grid of step `next` (the same one unless rescaling).
LP_HD void optimizer_step_grid(const OptimizerBuffers *b, size_t i, size_t code, float scale, float next,
                               const ElementStep *e) {
    int32_t before = b->dqt_codes[code];
    float value = int_grid_dequantize(before, scale);
    float delta = adamw_delta_fp32(value, e->m.value, e->v.value, &e->k->fp32, e->decay);
    int32_t after = weight_step_grid_sr(before, delta, scale, next, dqt_grid(b->grid_bits), e->key, e->index);
    b->dqt_codes[code] = (int8_t)after;
    float read = int_grid_dequantize(after, next);
    set_compute_copy(b, i, read);
    if (e->sums) {
        double moved = (double)read - value;
        update_sums_add_element(e->sums, delta, moved, moved);
        update_sums_add_code(e->sums, before, after);
    }
}

// DQT: grid tensors by SR onto the grid; off-grid tensors in fp32 by the exact step, in bf16 by SR.
LP_HD void optimizer_step_dqt(const OptimizerBuffers *b, size_t i, const Chunk *chunk, const ElementStep *e) {
    size_t stored = b->dqt_offset[chunk->tensor] + e->index;
    switch (b->dqt_store[chunk->tensor]) {
    case DQT_GRID:
        optimizer_step_grid(b, i, stored, b->dqt_scales[chunk->slice], b->dqt_next_scales[chunk->slice], e);
        break;
    case DQT_FP32:
        optimizer_step_fp32_read(&b->dqt_vectors[stored], e);
        set_compute_copy(b, i, b->dqt_vectors[stored]);
        break;
    default: optimizer_step_sr(&b->weights_bf16[stored], b->params ? &b->params[i] : NULL, e); break;
    }
}

// DQT: the value forward reads for parameter i: a grid code times its slice's step, or the off-grid value.
LP_HD float dqt_decoded_weight(const OptimizerBuffers *b, const Chunk *chunk, size_t i) {
    size_t stored = b->dqt_offset[chunk->tensor] + (i - b->tensor_offset[chunk->tensor]);
    switch (b->dqt_store[chunk->tensor]) {
    case DQT_GRID: return int_grid_dequantize(b->dqt_codes[stored], b->dqt_scales[chunk->slice]);
    case DQT_FP32: return b->dqt_vectors[stored];
    default: return bf16_to_f32(b->weights_bf16[stored]);
    }
}

// Parameter i (within chunk) takes one AdamW step under the policy's rule; sums: NULL, or this element's
// update-quality sums are added to it.
LP_HD void optimizer_step_element(const OptimizerBuffers *b, const Chunk *chunk, const UpdateConstants *k, size_t i,
                                  UpdateSums *sums) {
    ElementStep e;
    e.k = k;
    e.decay = b->is_matrix[chunk->tensor];
    e.key = update_rng_key(&k->fp32, chunk->tensor);
    e.sums = sums;
    float g = optimizer_stored_grad(b, i) * k->fp32.grad_scale;
    e.state = i - b->state_base;
    e.m = optimizer_step_moment(&b->m, e.state, g, &k->m);
    e.v = optimizer_step_moment(&b->v, e.state, g, &k->v);
    e.index = i - b->tensor_offset[chunk->tensor];
    switch (b->update) {
    case UPDATE_EXACT: optimizer_step_fp32_read(&b->params[i], &e); break;
    case UPDATE_FP32_MASTER: optimizer_step_master(b, i, &e); break;
    case UPDATE_BF16_RNE: optimizer_step_rne(b, i, &e); break;
    case UPDATE_MCF_GROW: optimizer_step_mcf(b, i, &e); break;
    case UPDATE_KAHAN: optimizer_step_kahan(b, i, &e); break;
    case UPDATE_SR: optimizer_step_sr(&b->weights_bf16[i], b->params ? &b->params[i] : NULL, &e); break;
    case UPDATE_GRID_SR: optimizer_step_dqt(b, i, chunk, &e); break;
    }
}

#endif
