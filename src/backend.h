// The interface between the training loop and a backend (CPU or CUDA). A backend owns the parameters in
// the policy's storage, the gradients, the optimizer state and the activations.
#ifndef LP_BACKEND_H
#define LP_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "adamw.h"
#include "checkpoint.h"
#include "model.h"
#include "policy.h"
#include "update_metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Backend Backend;

// The whole state of a backend as named sections of host memory, for checkpoints. The buffers are the
// backend's staging copies: state_sections fills them from the backend; state_load reads them back.
typedef struct {
    CheckpointSection sections[12];
    int count;
} BackendState;

typedef struct {
    const char *name;
    // params: initial fp32 values (num_params); the backend converts them to the policy's storage.
    Backend *(*create)(const ParamTable *table, const Policy *policy, int B, int T, const float *params);
    void (*destroy)(Backend *backend);
    // inputs, targets: (B, T). Returns the mean loss (0 when targets is NULL).
    float (*forward)(Backend *backend, const int *inputs, const int *targets, int B, int T);
    // Probabilities / logits of the last forward at position t of every sequence: (B, Vp) on the host,
    // valid until the next call. The logits only until the next backward (it may overwrite them).
    const float *(*probs)(Backend *backend, int t);
    const float *(*logits)(Backend *backend, int t);
    // Incremental decoding of one sequence with a key/value cache, for sampling: feeds `token` at position
    // pos (pos 0 starts a new sequence, else pos = the tokens fed since; pos < block_size) and returns the
    // logits there: (Vp) on the host, valid until the next call, bit for bit those of a forward over the
    // sequence (fp8 current scaling aside: kv_cache.h). NULL where a backend has none (the CUDA backend): the
    // caller reruns forward over the window instead.
    const float *(*decode_step)(Backend *backend, int token, int pos);
    void (*zero_grad)(Backend *backend);
    // Accumulates the gradient of loss_scale * (last forward's mean loss). last: the step's last micro-step,
    // after which reduce_gradients follows; a backend may start summing each gradient over the ranks as soon
    // as it is final, overlapped with the rest of the backward (the CUDA backend does, over NCCL).
    void (*backward)(Backend *backend, float loss_scale, int last);
    // Data parallelism (distributed.h): sums the accumulated gradients over the ranks, in rank order, into
    // the policy's gradient storage (bf16 gradients: summed in fp32, then rounded once to bf16), or finishes
    // the sums the last backward started. Under ZeRO-1 only this rank's shard is summed, the part its
    // optimizer step reads. Nothing in a world of one.
    void (*reduce_gradients)(Backend *backend);
    // ZeRO-1: from now on this rank holds and steps only its shard of the optimizer state (a range of whole
    // chunks of layer slices), and each optimizer_step ends by gathering every rank's stored weights.
    void (*shard_optimizer_state)(Backend *backend);
    // Global L2 norm of the accumulated gradients.
    float (*grad_norm)(Backend *backend);
    // One AdamW step under the policy's update rule. metrics: NULL, or sums (cleared here) to fill with the
    // update-quality sums of this step (update_metrics.h); off, the step costs nothing extra.
    void (*optimizer_step)(Backend *backend, const AdamWStep *step, UpdateMetrics *metrics);
    // The weights forward reads, as fp32 (num_params), for export.
    void (*read_params)(Backend *backend, float *params);
    // Checkpoint state: sections describing every stored quantity (filled on each call).
    BackendState *(*state_save)(Backend *backend);
    // After the caller filled state_save's buffers from a checkpoint: load them into the backend.
    void (*state_load)(Backend *backend);
    // Tests: replaces the accumulated gradients with grads (num_params fp32 values), rounded to the policy's
    // gradient storage, so that two backends can take an optimizer step from the same gradients.
    void (*load_grads)(Backend *backend, const float *grads);
    // Tests: the accumulated gradients as the optimizer step reads them (after reduce_gradients: this rank's
    // range under ZeRO-1), widened to fp32 (num_params).
    void (*read_grads)(Backend *backend, float *grads);
    // A device backend: the device memory this run has taken, measured (its peak so far), and the device's
    // name. NULL for the CPU backend (as is nccl_ranks).
    size_t (*device_memory_bytes)(Backend *backend);
    const char *(*device_name)(Backend *backend);
    // A device backend: ranks of its NCCL communicator (0 without one: not under mpirun, or no NCCL).
    int (*nccl_ranks)(Backend *backend);
    // The memory plan, without allocating: bytes of parameters + gradients + optimizer state as this
    // backend stores them (the optimizer state split over `shards` ranks; 1 = not sharded), and of
    // activations (with their scratch and the cast copies of matmul operands) for batches of (B, T).
    size_t (*plan_state_bytes)(const ParamTable *table, const Policy *policy, int shards);
    size_t (*plan_activation_bytes)(const ParamTable *table, const Policy *policy, int B, int T);
} BackendOps;

extern const BackendOps cpu_backend;
// The CUDA backend (src/cuda/), in builds with nvcc.
extern const BackendOps cuda_backend;

#ifdef __cplusplus
}
#endif

#endif
