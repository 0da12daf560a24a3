// The storage layout shared by the backends (param_storage.h).
#include "param_storage.h"

#include <stdlib.h>
#include <string.h>

#include "numerics/scaling.h"
#include "util.h"

int param_slices(const ParamTable *table, int tensor) {
    return table->tensors[tensor].per_layer ? table->shape.n_layer : 1;
}

// Elements of a slice that are weights: wte's padded vocabulary rows are not, and stay 0.
static size_t real_numel(const ParamTable *table, int tensor, size_t slice_numel) {
    return tensor == PARAM_WTE ? (size_t)table->shape.vocab_size * table->shape.n_embd : slice_numel;
}

int dqt_store_of(const Policy *policy, const ParamTable *table, int tensor) {
    if (policy_quantizes_tensor(policy, tensor, table->tensors[tensor].is_matrix)) return DQT_GRID;
    int embedding = tensor == PARAM_WTE || tensor == PARAM_WPE;
    return embedding && policy->embeddings == EMBEDDINGS_BF16 ? DQT_BF16 : DQT_FP32;
}

DqtCounts dqt_counts(const ParamTable *table, const Policy *policy) {
    DqtCounts c = {0, 0, 0, 0};
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        size_t numel = table->tensors[t].numel;
        switch (dqt_store_of(policy, table, t)) {
        case DQT_GRID:
            c.codes += numel;
            c.scales += (size_t)param_slices(table, t);
            break;
        case DQT_FP32: c.fp32 += numel; break;
        default: c.bf16 += numel; break;
        }
    }
    return c;
}

// The step of one grid slice at init: mean|w| / Qp (the DQT code's absmean quantizer).
static float slice_step(const ParamTable *table, int tensor, const float *slice, size_t slice_numel, IntGrid grid) {
    return dqt_step(absmean_scale(slice, real_numel(table, tensor, slice_numel)), grid);
}

// The step of one grid slice under precision.dqt_rescale: max(w) / Qp of the weights before the update, the
// DQT code's per-step rule (its optimizer's s = Qp / ori_x.max()). On a grid set up by slice_step the
// largest value is Qp steps, so the grid only changes when no weight is left at the top code. (Recomputing
// from mean|w| instead shrinks the range every step: clamping keeps mean|w| below the top of the range.)
static float slice_rescaled_step(const ParamTable *table, int tensor, const float *slice, size_t slice_numel,
                                 IntGrid grid) {
    size_t n = real_numel(table, tensor, slice_numel);
    float largest = slice[0];
    for (size_t e = 1; e < n; e++) largest = slice[e] > largest ? slice[e] : largest;
    // A matrix without a positive weight has no such grid: keep the init rule's step.
    return largest > 0.0f ? largest / (float)grid.max : slice_step(table, tensor, slice, slice_numel, grid);
}

void dqt_init_storage(const ParamTable *table, const ParamLayout *layout, int grid_bits, const float *init,
                      int8_t *codes, float *scales, float *fp32, bf16 *bf16_weights) {
    IntGrid grid = dqt_grid(grid_bits);
    size_t slice_index = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &table->tensors[t];
        const float *values = init + tensor->offset;
        size_t at = layout->dqt_offset[t];
        if (layout->dqt_store[t] == DQT_FP32) {
            memcpy(fp32 + at, values, tensor->numel * sizeof(float));
            continue;
        }
        if (layout->dqt_store[t] == DQT_BF16) {
            for (size_t e = 0; e < tensor->numel; e++) bf16_weights[at + e] = bf16_from_f32(values[e]);
            continue;
        }
        size_t slice_numel = tensor->numel / (size_t)param_slices(table, t);
        for (int s = 0; s < param_slices(table, t); s++, slice_index++) {
            const float *slice = values + (size_t)s * slice_numel;
            float step = slice_step(table, t, slice, slice_numel, grid);
            scales[slice_index] = step;
            for (size_t e = 0; e < slice_numel; e++) {
                int32_t q = int_grid_quantize(slice[e], step, grid, ROUND_NEAREST_EVEN, 0u);
                codes[at + (size_t)s * slice_numel + e] = (int8_t)q;
            }
        }
    }
}

void dqt_steps_from_weights(const ParamTable *table, const ParamLayout *layout, int grid_bits, const float *params,
                            float *scales) {
    IntGrid grid = dqt_grid(grid_bits);
    size_t slice_index = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        if (layout->dqt_store[t] != DQT_GRID) continue;
        const ParamTensor *tensor = &table->tensors[t];
        size_t slice_numel = tensor->numel / (size_t)param_slices(table, t);
        for (int s = 0; s < param_slices(table, t); s++, slice_index++) {
            scales[slice_index] =
                slice_rescaled_step(table, t, params + tensor->offset + (size_t)s * slice_numel, slice_numel, grid);
        }
    }
}

void bitnet_quantize_weights(const ParamTable *table, const Policy *policy, const float *latent, float *out) {
    IntGrid ternary = int_grid_ternary();
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &table->tensors[t];
        const float *w = latent + tensor->offset;
        float *q = out + tensor->offset;
        if (!policy_quantizes_tensor(policy, t, tensor->is_matrix)) {
            memcpy(q, w, tensor->numel * sizeof(float));
            continue;
        }
        size_t slice_numel = tensor->numel / (size_t)param_slices(table, t);
        for (int s = 0; s < param_slices(table, t); s++) {
            size_t base = (size_t)s * slice_numel;
            float step = slice_step(table, t, w + base, slice_numel, ternary);
#pragma omp parallel for schedule(static)
            for (size_t e = base; e < base + slice_numel; e++) {
                q[e] = int_grid_dequantize(int_grid_quantize(w[e], step, ternary, ROUND_NEAREST_EVEN, 0u), step);
            }
        }
    }
}

// Each tensor's DQT store and its start in that store's array (the tensors of a store in table order).
static void dqt_offsets(ParamLayout *layout, const ParamTable *table, const Policy *policy) {
    size_t at[DQT_NUM_STORES] = {0, 0, 0};
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        int store = dqt_store_of(policy, table, t);
        layout->dqt_store[t] = store;
        layout->dqt_offset[t] = at[store];
        at[store] += table->tensors[t].numel;
    }
}

// Chunks of every layer slice of every tensor, in table order; with chunks NULL, only counts them. A grid
// tensor's slices (layout->dqt_store) are numbered for their steps.
static int list_chunks(const ParamTable *table, const ParamLayout *layout, Chunk *chunks) {
    int count = 0, grid_slice = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &table->tensors[t];
        int slices = param_slices(table, t);
        size_t slice_numel = tensor->numel / (size_t)slices;
        for (int s = 0; s < slices; s++) {
            size_t slice_begin = tensor->offset + (size_t)s * slice_numel, slice_end = slice_begin + slice_numel;
            for (size_t begin = slice_begin; begin < slice_end; begin += CHUNK_ELEMENTS, count++) {
                if (!chunks) continue;
                Chunk *c = &chunks[count];
                c->tensor = t;
                c->group = update_group_of(table, t, s);
                c->slice = layout->dqt_store[t] == DQT_GRID ? grid_slice : -1;
                c->begin = begin;
                c->end = begin + CHUNK_ELEMENTS < slice_end ? begin + CHUNK_ELEMENTS : slice_end;
            }
            if (layout->dqt_store[t] == DQT_GRID) grid_slice++;
        }
    }
    return count;
}

// Rank r's share starts at the first chunk at or after parameter r*N/world: whole chunks, so each rank's
// range is whole runs of layer slices, and about N/world parameters (empty for a rank with nothing left).
static void split_among_ranks(ParamLayout *layout, size_t n) {
    int world = layout->world;
    layout->chunk_bounds = xmalloc((size_t)(world + 1) * sizeof(size_t));
    layout->param_bounds = xmalloc((size_t)(world + 1) * sizeof(size_t));
    int c = 0;
    for (int r = 0; r <= world; r++) {
        size_t target = r == world ? n : n / (size_t)world * (size_t)r;
        while (c < layout->num_chunks && layout->chunks[c].begin < target) c++;
        layout->chunk_bounds[r] = (size_t)c;
        layout->param_bounds[r] = c < layout->num_chunks ? layout->chunks[c].begin : n;
    }
}

// How many elements of one DQT store's tensors come before parameter index p: the same split in that
// store's array, which holds its tensors in table order.
static size_t elements_before(const ParamTable *table, const ParamLayout *layout, size_t p, int store) {
    size_t count = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &table->tensors[t];
        if (layout->dqt_store[t] != store || tensor->offset >= p) continue;
        count += p - tensor->offset < tensor->numel ? p - tensor->offset : tensor->numel;
    }
    return count;
}

static void split_dqt_among_ranks(ParamLayout *layout, const ParamTable *table) {
    for (int store = 0; store < DQT_NUM_STORES; store++) {
        layout->dqt_bounds[store] = xmalloc((size_t)(layout->world + 1) * sizeof(size_t));
        for (int r = 0; r <= layout->world; r++) {
            layout->dqt_bounds[store][r] = elements_before(table, layout, layout->param_bounds[r], store);
        }
    }
}

void param_layout_init(ParamLayout *layout, const ParamTable *table, const Policy *policy, int world) {
    memset(layout, 0, sizeof *layout);
    layout->world = world;
    dqt_offsets(layout, table, policy);
    layout->num_chunks = list_chunks(table, layout, NULL);
    layout->chunks = xmalloc((size_t)layout->num_chunks * sizeof(Chunk));
    list_chunks(table, layout, layout->chunks);
    split_among_ranks(layout, table->num_params);
    if (policy->weights == WEIGHTS_INT_GRID) split_dqt_among_ranks(layout, table);
}

void param_layout_free(ParamLayout *layout) {
    free(layout->chunks);
    free(layout->chunk_bounds);
    free(layout->param_bounds);
    for (int store = 0; store < DQT_NUM_STORES; store++) free(layout->dqt_bounds[store]);
    memset(layout, 0, sizeof *layout);
}

void update_metrics_from_chunks(UpdateMetrics *metrics, const Policy *policy, const ParamLayout *layout,
                                const UpdateSums *chunk_sums) {
    update_metrics_clear(metrics);
    metrics->has_compensation = policy->update == UPDATE_MCF_GROW || policy->update == UPDATE_KAHAN;
    metrics->has_codes = policy->update == UPDATE_GRID_SR;
    for (int c = 0; c < layout->num_chunks; c++)
        update_sums_add(&metrics->groups[layout->chunks[c].group], &chunk_sums[c]);
    for (int g = 0; g < metrics->num_groups; g++) update_sums_add(&metrics->total, &metrics->groups[g]);
}

size_t moment_storage_bytes(MomentStorage storage) {
    return storage == STATE_FP32 ? sizeof(float) : storage == STATE_BF16 ? sizeof(bf16) : 2 * sizeof(bf16);
}

size_t optimizer_state_bytes_per_param(const Policy *policy) {
    size_t bytes = moment_storage_bytes(policy->adam_m) + moment_storage_bytes(policy->adam_v);
    if (policy->update == UPDATE_FP32_MASTER) bytes += sizeof(float);
    if (policy->update == UPDATE_MCF_GROW || policy->update == UPDATE_KAHAN) bytes += sizeof(bf16);
    return bytes;
}

StateBytes state_bytes(const ParamTable *table, const Policy *policy, int shards) {
    size_t n = table->num_params;
    StateBytes bytes;
    bytes.weights = n * sizeof(float);  // the compute copy, or the fp32 (BitNet: latent) weights themselves
    if (policy->weights == WEIGHTS_BF16) bytes.weights += n * sizeof(bf16);
    if (policy->weights == WEIGHTS_BITNET) bytes.weights += n * sizeof(float);  // the ternary copy
    if (policy->weights == WEIGHTS_INT_GRID) {
        DqtCounts counts = dqt_counts(table, policy);
        size_t steps = policy->dqt_rescale ? 2 * counts.scales : counts.scales;  // rescaling: the next steps too
        bytes.weights += counts.codes + (steps + counts.fp32) * sizeof(float) + counts.bf16 * sizeof(bf16);
    }
    bytes.gradients = n * sizeof(float);  // fp32 gradients, or the backward's scratch under bf16 gradients
    if (policy->grads == GRADS_BF16) bytes.gradients += n * sizeof(bf16);
    bytes.optimizer = (n * optimizer_state_bytes_per_param(policy) + (size_t)shards - 1) / (size_t)shards;
    return bytes;
}

void backend_state_add(BackendState *state, const char *name, void *data, size_t nbytes) {
    int capacity = (int)(sizeof state->sections / sizeof state->sections[0]);
    if (state->count == capacity) fatal("internal: more than %d checkpoint sections", capacity);
    state->sections[state->count++] = (CheckpointSection){name, data, nbytes};
}

void backend_state_add_moment(BackendState *state, const MomentBuffer *moment, int is_v, size_t n) {
    switch (moment->storage) {
    case STATE_FP32: backend_state_add(state, is_v ? "adam_v_fp32" : "adam_m_fp32", moment->fp32, n * sizeof(float)); break;
    case STATE_BF16: backend_state_add(state, is_v ? "adam_v_bf16" : "adam_m_bf16", moment->hi, n * sizeof(bf16)); break;
    case STATE_MCF:
        backend_state_add(state, is_v ? "adam_v_hi_bf16" : "adam_m_hi_bf16", moment->hi, n * sizeof(bf16));
        backend_state_add(state, is_v ? "adam_v_lo_bf16" : "adam_m_lo_bf16", moment->lo, n * sizeof(bf16));
        break;
    }
}
