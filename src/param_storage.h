// How a policy's stored quantities are laid out, shared by the CPU and CUDA backends: the chunk list that
// the optimizer steps and the partial sums follow, the ranks' ranges of it (data parallelism, ZeRO-1), the
// DQT arrays and their initial grid, and the checkpoint sections, so that both backends write the same
// checkpoint for the same state (a run may resume on the other backend).
#ifndef LP_PARAM_STORAGE_H
#define LP_PARAM_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "optimizer_element.h"

#ifdef __cplusplus
extern "C" {
#endif

// Where DQT keeps tensor t (a DqtStore): on the grid, or off it in fp32 or bf16 (the embeddings axis).
int dqt_store_of(const Policy *policy, const ParamTable *table, int tensor);

// The DQT arrays' sizes under a policy: the grid tensors' codes and one step per layer slice of each, and the
// off-grid tensors in fp32 (1-D parameters, fp32 embeddings) and in bf16 (bf16 embeddings).
typedef struct {
    size_t codes, scales, fp32, bf16;
} DqtCounts;
DqtCounts dqt_counts(const ParamTable *table, const Policy *policy);
// Layer slices of a tensor: n_layer for a per-layer tensor, else 1.
int param_slices(const ParamTable *table, int tensor);

// The chunks of every layer slice of every tensor in table order, and the ranks' shares of them: rank r
// owns chunks [chunk_bounds[r], chunk_bounds[r+1]), the parameters [param_bounds[r], param_bounds[r+1]),
// and under DQT the matching ranges of the code and 1-D arrays.
typedef struct {
    Chunk *chunks;
    int num_chunks;
    int world;
    size_t *chunk_bounds;   // (world + 1)
    size_t *param_bounds;   // (world + 1)
    size_t *dqt_bounds[DQT_NUM_STORES];  // (world + 1) WEIGHTS_INT_GRID: ranges of the codes, the fp32 and
                                         // the bf16 off-grid arrays; NULL otherwise
    int dqt_store[NUM_PARAM_TENSORS];      // WEIGHTS_INT_GRID: a tensor's DqtStore
    size_t dqt_offset[NUM_PARAM_TENSORS];  // a tensor's start in its DQT array
} ParamLayout;

void param_layout_init(ParamLayout *layout, const ParamTable *table, const Policy *policy, int world);
void param_layout_free(ParamLayout *layout);

// DQT's initial state from fp32 weights: each grid slice's step dqt_step(absmean of its initial values),
// codes by round-to-nearest, the off-grid tensors copied (fp32) or rounded to nearest (bf16). Arrays sized by
// dqt_counts.
void dqt_init_storage(const ParamTable *table, const ParamLayout *layout, int grid_bits, const float *init,
                      int8_t *codes, float *scales, float *fp32, bf16 *bf16_weights);
// precision.dqt_rescale: each grid slice's step from its current weights (params, the decoded values):
// max(w) / Qp, the DQT code's rule; into scales (dqt_counts' scales).
void dqt_steps_from_weights(const ParamTable *table, const ParamLayout *layout, int grid_bits, const float *params,
                            float *scales);
// BitNet b1.58: out = latent, with every quantized tensor's slices replaced by their absmean-ternary values
// clamp(round(w / mean|w|), -1, 1) * mean|w|, the mean over the slice's current latent weights.
void bitnet_quantize_weights(const ParamTable *table, const Policy *policy, const float *latent, float *out);

// A step's update-quality metrics from the sums of every chunk (chunk_sums: (num_chunks)): the chunks into
// their layer groups, then the groups into the total, each in a fixed order.
void update_metrics_from_chunks(UpdateMetrics *metrics, const Policy *policy, const ParamLayout *layout,
                                const UpdateSums *chunk_sums);

// Bytes per element of a moment storage (an MCF pair: two bf16).
size_t moment_storage_bytes(MomentStorage storage);
// Bytes per parameter of the optimizer state (m, v, and master / lo / c) that a policy keeps.
size_t optimizer_state_bytes_per_param(const Policy *policy);

// The bytes the CPU backend keeps: the weights (the fp32 copy forward reads, or the fp32 weights
// themselves; bf16 weights; DQT's codes, scales and off-grid parameters; BitNet's fp32 latent weights beside
// the ternary copy the passes read), the gradients (fp32, the backward's
// scratch under bf16 gradients, plus the bf16 storage), and the optimizer state, split evenly over `shards`
// ranks (a rank's whole chunks make its share up to CHUNK_ELEMENTS elements more or less). The CUDA backend
// keeps the same less that scratch.
typedef struct {
    size_t weights, gradients, optimizer;
} StateBytes;
StateBytes state_bytes(const ParamTable *table, const Policy *policy, int shards);

// Checkpoint sections: one stored quantity, and a moment in its storage (n elements).
void backend_state_add(BackendState *state, const char *name, void *data, size_t nbytes);
void backend_state_add_moment(BackendState *state, const MomentBuffer *moment, int is_v, size_t n);

#ifdef __cplusplus
}
#endif

#endif
