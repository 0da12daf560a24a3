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

typedef struct {
    size_t matrix_elements, vector_elements, matrix_slices;
} ParamCounts;

// Elements of the 2-D weights and of the 1-D parameters, and the number of 2-D layer slices (one DQT
// scale each).
ParamCounts param_counts(const ParamTable *table);
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
    size_t *code_bounds;    // (world + 1) WEIGHTS_INT_GRID: ranges of dqt_codes ...
    size_t *vector_bounds;  // (world + 1) ... and of dqt_vectors; NULL otherwise
    size_t dqt_offset[NUM_PARAM_TENSORS];  // a tensor's start in dqt_codes (2-D) or dqt_vectors (1-D)
} ParamLayout;

void param_layout_init(ParamLayout *layout, const ParamTable *table, const Policy *policy, int world);
void param_layout_free(ParamLayout *layout);

// DQT's initial state from fp32 weights: codes on the grid by round-to-nearest, each slice's scale the
// absmean of its initial values (fixed for the whole run), the 1-D parameters copied. Arrays sized by
// param_counts: codes (matrix_elements), scales (matrix_slices), vectors (vector_elements).
void dqt_init_storage(const ParamTable *table, int grid_bits, const float *init, int8_t *codes, float *scales,
                      float *vectors);

// A step's update-quality metrics from the sums of every chunk (chunk_sums: (num_chunks)): the chunks into
// their layer groups, then the groups into the total, each in a fixed order.
void update_metrics_from_chunks(UpdateMetrics *metrics, const Policy *policy, const ParamLayout *layout,
                                const UpdateSums *chunk_sums);

// Bytes per element of a moment storage (an MCF pair: two bf16).
size_t moment_storage_bytes(MomentStorage storage);
// Bytes per parameter of the optimizer state (m, v, and master / lo / c) that a policy keeps.
size_t optimizer_state_bytes_per_param(const Policy *policy);

// The bytes the CPU backend keeps: the weights (the fp32 copy forward reads, or the fp32 weights
// themselves; bf16 weights; DQT's codes, scales and 1-D parameters), the gradients (fp32, the backward's
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
