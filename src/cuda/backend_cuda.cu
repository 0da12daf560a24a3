// The CUDA backend: gpt_cuda.cu's forward and backward, each policy's storage in device memory, and the
// optimizer kernel over optimizer_element.h's element step (the CPU backend's code, so both store the same
// bits from the same gradients). Storage, chunks, rank ranges and checkpoint sections follow
// param_storage.h exactly as on the CPU, so a checkpoint of either backend resumes on the other.
//
// Memory: the weights (as stored: the passes read bf16 weights directly, and decode DQT's grid one slice at
// a time, so there is no fp32 copy), the gradients (fp32, or bf16 with no fp32 copy:
// gpt_cuda.cu forms one tensor slice's gradient at a time in its own scratch) and the optimizer state are one
// device allocation each; the activations are gpt_cuda.cu's one allocation. So the device holds exactly the
// policy table's bytes per parameter (mixed 18, collage_plus 12, dqt_int8 11).
//
// Data parallelism: one process per GPU (local rank -> device), gradients summed over NCCL in fp32 (bf16
// gradients are widened, summed, and rounded once, as on the CPU). NCCL's ring order is fixed for a given
// job, so runs repeat bit for bit, but the sums are not in rank order: multi-rank GPU runs agree with the
// CPU's within rounding, not bit for bit. ZeRO-1: ncclReduce of each rank's range to its owner, each rank
// steps its chunks, ncclBroadcast of each range's stored weights from its owner.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda/gpt_cuda.h"
#include "distributed.h"
#include "kernels/gradients.cuh"
#include "kernels/optimizer.cuh"
#include "param_storage.h"

#ifdef LP_WITH_NCCL
#include <nccl.h>

static void nccl_check(ncclResult_t status, const char *call, const char *file, int line) {
    if (status != ncclSuccess)
        fatal("NCCL error at %s:%d: %s: %s", file, line, call, ncclGetErrorString(status));
}
#define NCCL_CHECK(call) nccl_check((call), #call, __FILE__, __LINE__)
#endif

// Sub-allocations of one device allocation, each 256-byte aligned.
typedef struct {
    char *base;
    size_t used, size;
} Arena;

static size_t arena_round(size_t bytes) { return (bytes + 255) / 256 * 256; }

static void *arena_take(Arena *arena, size_t bytes) {
    if (bytes == 0) return NULL;
    if (arena->used + arena_round(bytes) > arena->size) fatal("internal: device arena overflow");
    void *ptr = arena->base + arena->used;
    arena->used += arena_round(bytes);
    return ptr;
}

// One allocation for what `bytes` lists (the rounding of each part included).
static void arena_alloc(Arena *arena, const size_t *parts, int count, const char *what) {
    arena->size = 0;
    for (int i = 0; i < count; i++) arena->size += arena_round(parts[i]);
    arena->used = 0;
    arena->base = arena->size ? (char *)cuda_malloc_checked(arena->size, what) : NULL;
}

static void arena_free(Arena *arena) {
    if (arena->base) CUDA_CHECK(cudaFree(arena->base));
    arena->base = NULL;
}

struct Backend {
    ParamTable table;
    Policy policy;
    cudaStream_t stream;
    GPTCuda *model;
    ParamLayout layout;
    Chunk *chunks;             // (num_chunks) device copy of layout.chunks
    OptimizerBuffers buffers;  // device pointers of every stored quantity
    Arena weights, gradients, optimizer;
    float *grads;              // (N) fp32 gradients; NULL under bf16 gradients (no fp32 copy)
    UpdateSums *chunk_sums;    // (num_chunks) device
    double *chunk_norms;       // (num_chunks) device
    UpdateSums *host_chunk_sums;
    double *host_chunk_norms;
    int rank, world, zero;
    int first_chunk, end_chunk;
    size_t state_numel;
    BackendState state;
    void *staging[12];         // host copies of the checkpoint sections
    size_t baseline_used;      // device memory in use before this backend allocated anything
    size_t peak_used;
    char device_name[256];
#ifdef LP_WITH_NCCL
    ncclComm_t comm;  // NULL when not launched by mpirun
    // The sums over the ranks of the step's last backward, each tensor slice's as soon as it is final,
    // run on comm_stream, overlapped with the rest of the backward; bf16 gradients are widened into
    // comm_window (the largest slice but wte's) a window at a time.
    cudaStream_t comm_stream;
    cudaEvent_t slice_done, reduction_done;
    float *comm_window;
    size_t comm_window_floats;
    int reduction_started;  // the last backward queued its sums: reduce_gradients only waits for them
#endif
};

// ----------------------------------------------------------------------------------------------------
// device, memory

static size_t device_used_bytes(void) {
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return total_bytes - free_bytes;
}

static void measure_memory(Backend *b) {
    size_t in_use = device_used_bytes();
    // Another process may free memory it held at our baseline: count from zero then, never wrap.
    size_t used = in_use > b->baseline_used ? in_use - b->baseline_used : 0;
    if (used > b->peak_used) b->peak_used = used;
}

static void select_device(Backend *b) {
    int count = 0;
    CUDA_CHECK(cudaGetDeviceCount(&count));
    if (count == 0) fatal("no CUDA GPU is visible");
    int device = dist_local_rank() % count;
    if (b->world > 1 && dist_local_rank() >= count)
        fatal("rank %d is local rank %d on its node, which has only %d GPU(s): launch at most one rank per GPU",
              b->rank, dist_local_rank(), count);
    CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    snprintf(b->device_name, sizeof b->device_name, "%s (GPU %d)", prop.name, device);
    CUDA_CHECK(cudaFree(0));  // create the context now, so the baseline includes it
    b->baseline_used = device_used_bytes();
}

#ifdef LP_WITH_NCCL
// Under mpirun the gradients go through NCCL even at one rank (an identity all-reduce), so that the path
// runs where only one GPU is available; a plain run has no communicator.
static void init_nccl(Backend *b) {
    if (!dist_joined()) return;
    ncclUniqueId id;
    if (b->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    dist_broadcast(&id, sizeof id, 0);
    NCCL_CHECK(ncclCommInitRank(&b->comm, b->world, id, b->rank));
    CUDA_CHECK(cudaStreamCreate(&b->comm_stream));
    CUDA_CHECK(cudaEventCreateWithFlags(&b->slice_done, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&b->reduction_done, cudaEventDisableTiming));
}

// bf16 gradients: the window the overlapped sums widen into, as large as the model's own scratch.
static void alloc_comm_window(Backend *b) {
    if (!b->comm || !b->buffers.grads_bf16) return;
    gpt_cuda_gradient_window(b->model, &b->comm_window_floats);
    b->comm_window = (float *)cuda_malloc_checked(b->comm_window_floats * sizeof(float), "the NCCL gradient window");
}

static void free_nccl(Backend *b) {
    if (!b->comm) return;
    if (b->comm_window) CUDA_CHECK(cudaFree(b->comm_window));
    CUDA_CHECK(cudaEventDestroy(b->slice_done));
    CUDA_CHECK(cudaEventDestroy(b->reduction_done));
    CUDA_CHECK(cudaStreamDestroy(b->comm_stream));
    NCCL_CHECK(ncclCommDestroy(b->comm));
}
#else
static void init_nccl(Backend *b) {
    if (b->world > 1) fatal("this build has no NCCL (nccl.h was not found): data-parallel GPU training needs it");
}

static void alloc_comm_window(Backend *b) {}

static void free_nccl(Backend *b) {}
#endif

// ----------------------------------------------------------------------------------------------------
// storage

static void take_moment(Arena *arena, MomentBuffer *moment, MomentStorage storage, size_t n) {
    moment->storage = storage;
    moment->fp32 = storage == STATE_FP32 ? (float *)arena_take(arena, n * sizeof(float)) : NULL;
    moment->hi = storage != STATE_FP32 ? (bf16 *)arena_take(arena, n * sizeof(bf16)) : NULL;
    moment->lo = storage == STATE_MCF ? (bf16 *)arena_take(arena, n * sizeof(bf16)) : NULL;
}

// The optimizer state for `n` elements (all parameters, or a ZeRO-1 shard) as one zeroed allocation.
static void alloc_optimizer_state(Backend *b, size_t n) {
    const Policy *p = &b->policy;
    size_t parts[7] = {
        p->update == UPDATE_FP32_MASTER ? n * sizeof(float) : 0,
        p->update == UPDATE_MCF_GROW ? n * sizeof(bf16) : 0,
        p->update == UPDATE_KAHAN ? n * sizeof(bf16) : 0,
        n * moment_storage_bytes(p->adam_m) / (p->adam_m == STATE_MCF ? 2 : 1),
        p->adam_m == STATE_MCF ? n * sizeof(bf16) : 0,
        n * moment_storage_bytes(p->adam_v) / (p->adam_v == STATE_MCF ? 2 : 1),
        p->adam_v == STATE_MCF ? n * sizeof(bf16) : 0,
    };
    arena_alloc(&b->optimizer, parts, 7, "the optimizer state");
    OptimizerBuffers *o = &b->buffers;
    o->master = (float *)arena_take(&b->optimizer, parts[0]);
    o->mcf_lo = (bf16 *)arena_take(&b->optimizer, parts[1]);
    o->kahan_c = (bf16 *)arena_take(&b->optimizer, parts[2]);
    take_moment(&b->optimizer, &o->m, p->adam_m, n);
    take_moment(&b->optimizer, &o->v, p->adam_v, n);
    if (b->optimizer.base) CUDA_CHECK(cudaMemsetAsync(b->optimizer.base, 0, b->optimizer.size, b->stream));
}

static void alloc_storage(Backend *b) {
    size_t n = b->table.num_params;
    const Policy *p = &b->policy;
    int dqt = p->weights == WEIGHTS_INT_GRID;
    DqtCounts counts = dqt_counts(&b->table, p);
    // Under DQT weights_bf16 holds the bf16 embeddings (precision.embeddings = bf16) only.
    size_t weight_parts[5] = {
        p->weights == WEIGHTS_FP32 ? n * sizeof(float) : 0,
        p->weights == WEIGHTS_BF16 ? n * sizeof(bf16) : dqt ? counts.bf16 * sizeof(bf16) : 0,
        dqt ? counts.codes : 0,
        dqt ? counts.scales * sizeof(float) : 0,
        dqt ? counts.fp32 * sizeof(float) : 0,
    };
    arena_alloc(&b->weights, weight_parts, 5, "the weights");
    OptimizerBuffers *o = &b->buffers;
    o->params = (float *)arena_take(&b->weights, weight_parts[0]);
    o->weights_bf16 = (bf16 *)arena_take(&b->weights, weight_parts[1]);
    o->dqt_codes = (int8_t *)arena_take(&b->weights, weight_parts[2]);
    o->dqt_scales = (float *)arena_take(&b->weights, weight_parts[3]);
    o->dqt_vectors = (float *)arena_take(&b->weights, weight_parts[4]);
    o->dqt_next_scales = o->dqt_scales;  // the CUDA backend keeps the steps fixed (no dqt_rescale)

    // bf16 gradients have no fp32 copy: the backward forms each slice's gradient in the model's scratch.
    size_t gradient_parts[2] = {p->grads == GRADS_FP32 ? n * sizeof(float) : 0,
                                p->grads == GRADS_BF16 ? n * sizeof(bf16) : 0};
    arena_alloc(&b->gradients, gradient_parts, 2, "the gradients");
    b->grads = (float *)arena_take(&b->gradients, gradient_parts[0]);
    o->grads = b->grads;
    o->grads_bf16 = (bf16 *)arena_take(&b->gradients, gradient_parts[1]);
    CUDA_CHECK(cudaMemsetAsync(b->gradients.base, 0, b->gradients.size, b->stream));
    alloc_optimizer_state(b, n);
}

// Copies between host and device memory in the order of the backend's stream, finished on return.
static void upload(Backend *b, void *device, const void *host, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
}

static void download(Backend *b, void *host, const void *device, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
}

// The initial stored quantities from fp32 weights, formed on the host with the CPU backend's functions.
static void init_weights(Backend *b, const float *init) {
    size_t n = b->table.num_params;
    const Policy *p = &b->policy;
    OptimizerBuffers *o = &b->buffers;
    if (p->weights == WEIGHTS_FP32) {
        upload(b, o->params, init, n * sizeof(float));
        return;
    }
    if (p->weights == WEIGHTS_INT_GRID) {
        DqtCounts counts = dqt_counts(&b->table, p);
        int8_t *codes = (int8_t *)xmalloc(counts.codes);
        float *scales = (float *)xmalloc(counts.scales * sizeof(float));
        float *vectors = (float *)xmalloc(counts.fp32 * sizeof(float));
        bf16 *embeddings = (bf16 *)xmalloc(counts.bf16 * sizeof(bf16));
        dqt_init_storage(&b->table, &b->layout, p->grid_bits, init, codes, scales, vectors, embeddings);
        upload(b, o->dqt_codes, codes, counts.codes);
        upload(b, o->dqt_scales, scales, counts.scales * sizeof(float));
        upload(b, o->dqt_vectors, vectors, counts.fp32 * sizeof(float));
        upload(b, o->weights_bf16, embeddings, counts.bf16 * sizeof(bf16));
        free(codes);
        free(scales);
        free(vectors);
        free(embeddings);
        return;
    }
    bf16 *hi = (bf16 *)xmalloc(n * sizeof(bf16));
    for (size_t i = 0; i < n; i++) hi[i] = bf16_from_f32(init[i]);
    upload(b, o->weights_bf16, hi, n * sizeof(bf16));
    if (p->update == UPDATE_FP32_MASTER) upload(b, o->master, init, n * sizeof(float));
    if (p->update == UPDATE_MCF_GROW) {
        // lo starts at zero, as in Collage's released code (zeros_like of the bf16 parameter), as on the CPU.
        memset(hi, 0, n * sizeof(bf16));
        upload(b, o->mcf_lo, hi, n * sizeof(bf16));
    }
    free(hi);
}

static void init_buffers(Backend *b) {
    OptimizerBuffers *o = &b->buffers;
    o->update = b->policy.update;
    o->grid_bits = b->policy.grid_bits;
    o->state_base = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        o->tensor_offset[t] = b->table.tensors[t].offset;
        o->dqt_offset[t] = b->layout.dqt_offset[t];
        o->dqt_store[t] = b->layout.dqt_store[t];
        o->is_matrix[t] = b->table.tensors[t].is_matrix;
    }
}

// What the CUDA backend does not implement (yet), refused before anything is allocated.
static void check_supported(const Policy *policy) {
    if (policy->weights == WEIGHTS_BITNET) fatal("--device cuda: the bitnet weights are implemented on the CPU backend only (--device cpu)");
    if (policy->dqt_rescale) fatal("--device cuda: precision.dqt_rescale = 1 is implemented on the CPU backend only (--device cpu)");
    if (policy->activation_quant != ACTIVATION_QUANT_NONE)
        fatal("--device cuda: precision.activation_quant = int8 is implemented on the CPU backend only (--device cpu)");
}

static Backend *cuda_create(const ParamTable *table, const Policy *policy, int B, int T, const float *init) {
    check_supported(policy);
    Backend *b = (Backend *)xcalloc(1, sizeof *b);
    b->table = *table;
    b->policy = *policy;
    b->rank = dist_rank();
    b->world = dist_world();
    select_device(b);
    init_nccl(b);
    CUDA_CHECK(cudaStreamCreate(&b->stream));
    param_layout_init(&b->layout, table, policy, b->world);
    int num_chunks = b->layout.num_chunks;
    b->chunks = (Chunk *)cuda_malloc_checked((size_t)num_chunks * sizeof(Chunk), "the chunk list");
    upload(b, b->chunks, b->layout.chunks, (size_t)num_chunks * sizeof(Chunk));
    b->chunk_sums = (UpdateSums *)cuda_malloc_checked((size_t)num_chunks * sizeof(UpdateSums), "the metric sums");
    b->chunk_norms = (double *)cuda_malloc_checked((size_t)num_chunks * sizeof(double), "the gradient-norm sums");
    b->host_chunk_sums = (UpdateSums *)xcalloc((size_t)num_chunks, sizeof(UpdateSums));
    b->host_chunk_norms = (double *)xcalloc((size_t)num_chunks, sizeof(double));
    b->first_chunk = 0;
    b->end_chunk = num_chunks;
    b->state_numel = table->num_params;
    init_buffers(b);
    alloc_storage(b);
    init_weights(b, init);
    b->model = gpt_cuda_create(table, policy, B, T, policy->allow_tf32, b->stream);
    alloc_comm_window(b);
    measure_memory(b);
    return b;
}

static void cuda_destroy(Backend *b) {
    gpt_cuda_free(b->model);
    arena_free(&b->weights);
    arena_free(&b->gradients);
    arena_free(&b->optimizer);
    CUDA_CHECK(cudaFree(b->chunks));
    CUDA_CHECK(cudaFree(b->chunk_sums));
    CUDA_CHECK(cudaFree(b->chunk_norms));
    free(b->host_chunk_sums);
    free(b->host_chunk_norms);
    for (int i = 0; i < 12; i++) free(b->staging[i]);
    param_layout_free(&b->layout);
    free_nccl(b);
    CUDA_CHECK(cudaStreamDestroy(b->stream));
    free(b);
}

// ----------------------------------------------------------------------------------------------------
// forward, backward, gradients

// Every tensor as stored: the fp32 or bf16 weights; under DQT each tensor in its array (codes with their
// slices' steps, the fp32 or bf16 off-grid tensors).
static GPTWeights gpt_weights(const Backend *b) {
    GPTWeights w;
    const OptimizerBuffers *o = &b->buffers;
    int grid_slice = 0;  // the first step of each grid tensor: slices numbered in table order
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        TensorWeights *tw = &w.tensors[t];
        size_t at = b->table.tensors[t].offset;
        tw->steps = NULL;
        if (b->policy.weights == WEIGHTS_FP32) {
            tw->data = o->params + at;
            tw->store = STORED_FP32;
        } else if (b->policy.weights == WEIGHTS_BF16) {
            tw->data = o->weights_bf16 + at;
            tw->store = STORED_BF16;
        } else if (b->layout.dqt_store[t] == DQT_GRID) {
            tw->data = o->dqt_codes + b->layout.dqt_offset[t];
            tw->store = STORED_GRID;
            tw->steps = o->dqt_scales + grid_slice;
            grid_slice += param_slices(&b->table, t);
        } else if (b->layout.dqt_store[t] == DQT_FP32) {
            tw->data = o->dqt_vectors + b->layout.dqt_offset[t];
            tw->store = STORED_FP32;
        } else {
            tw->data = o->weights_bf16 + b->layout.dqt_offset[t];
            tw->store = STORED_BF16;
        }
    }
    return w;
}

static float cuda_forward(Backend *b, const int *inputs, const int *targets, int B, int T) {
    GPTWeights w = gpt_weights(b);
    return gpt_cuda_forward(b->model, &w, inputs, targets, B, T);
}

static const float *cuda_probs(Backend *b, int t) { return gpt_cuda_probs_at(b->model, t); }

static const float *cuda_logits(Backend *b, int t) { return gpt_cuda_logits_at(b->model, t); }

static void cuda_zero_grad(Backend *b) {
    size_t n = b->table.num_params;
    if (b->buffers.grads_bf16) CUDA_CHECK(cudaMemsetAsync((void *)b->buffers.grads_bf16, 0, n * sizeof(bf16), b->stream));
    else CUDA_CHECK(cudaMemsetAsync(b->grads, 0, n * sizeof(float), b->stream));
}

#ifdef LP_WITH_NCCL
// Sums over the ranks the fp32 gradients of parameters [start, end), held at data (data[0] is parameter
// start), on `stream`: every rank gets the sum, or under ZeRO-1 each rank's range is summed into its owner
// only, which alone steps it. Every rank issues the same calls.
static void sum_over_ranks(Backend *b, float *data, size_t start, size_t end, cudaStream_t stream) {
    if (!b->zero) {
        NCCL_CHECK(ncclAllReduce(data, data, end - start, ncclFloat, ncclSum, b->comm, stream));
        return;
    }
    const size_t *bounds = b->layout.param_bounds;
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < b->world; r++) {
        size_t first = bounds[r] > start ? bounds[r] : start, last = bounds[r + 1] < end ? bounds[r + 1] : end;
        float *range = data + (first - start);
        if (first < last) NCCL_CHECK(ncclReduce(range, range, last - first, ncclFloat, ncclSum, r, b->comm, stream));
    }
    NCCL_CHECK(ncclGroupEnd());
}

// The sums over the ranks of the gradients of parameters [start, end) on `stream`: fp32 gradients in place;
// bf16 gradients widened into `window` (window_floats) a window at a time, summed in fp32 and rounded once
// (only this rank's range under ZeRO-1: the rest is not summed here).
static void reduce_range(Backend *b, size_t start, size_t end, float *window, size_t window_floats,
                         cudaStream_t stream) {
    bf16 *grads_bf16 = (bf16 *)b->buffers.grads_bf16;
    if (!grads_bf16) {
        sum_over_ranks(b, b->grads + start, start, end, stream);
        return;
    }
    size_t own_first = b->zero ? b->layout.param_bounds[b->rank] : 0;
    size_t own_end = b->zero ? b->layout.param_bounds[b->rank + 1] : b->table.num_params;
    for (size_t at = start; at < end; at += window_floats) {
        size_t stop = at + window_floats < end ? at + window_floats : end;
        bf16_to_f32_gpu(window, grads_bf16 + at, stop - at, stream);
        sum_over_ranks(b, window, at, stop, stream);
        size_t first = own_first > at ? own_first : at, last = own_end < stop ? own_end : stop;
        if (first < last) f32_to_bf16_gpu(grads_bf16 + first, window + (first - at), last - first, stream);
    }
}

// A slice's gradient is final on the compute stream: its sum over the ranks follows on comm_stream.
static void reduce_when_ready(void *context, size_t offset, size_t n) {
    Backend *b = (Backend *)context;
    CUDA_CHECK(cudaEventRecord(b->slice_done, b->stream));
    CUDA_CHECK(cudaStreamWaitEvent(b->comm_stream, b->slice_done, 0));
    reduce_range(b, offset, offset + n, b->comm_window, b->comm_window_floats, b->comm_stream);
}
#endif

// The micro-step's gradient added into the fp32 gradients, or, under bf16 gradients, each tensor slice's
// rounded into its storage once: bf16(stored + gradient), as on the CPU. In the step's last backward under
// NCCL, each slice's sum over the ranks starts as soon as the slice is final.
static void cuda_backward(Backend *b, float loss_scale, int last) {
    GPTWeights w = gpt_weights(b);
    GradientTarget target = {b->grads, (bf16 *)b->buffers.grads_bf16, NULL, NULL};
#ifdef LP_WITH_NCCL
    if (last && b->comm) {
        target.ready = reduce_when_ready;
        target.context = b;
        b->reduction_started = 1;
    }
#endif
    gpt_cuda_backward(b->model, &w, &target, loss_scale);
}

// After the last backward: the compute stream waits for the sums it started. Otherwise (a caller that did
// not mark its last backward) the whole reduction, on the compute stream through the model's scratch.
static void cuda_reduce_gradients(Backend *b) {
#ifdef LP_WITH_NCCL
    if (!b->comm) return;
    if (b->reduction_started) {
        CUDA_CHECK(cudaEventRecord(b->reduction_done, b->comm_stream));
        CUDA_CHECK(cudaStreamWaitEvent(b->stream, b->reduction_done, 0));
        b->reduction_started = 0;
        return;
    }
    size_t window;
    float *scratch = gpt_cuda_gradient_window(b->model, &window);
    reduce_range(b, 0, b->table.num_params, scratch, window, b->stream);
#endif
}

// Sum of squares of the stored gradients per chunk in double on the device, added on the host in chunk
// order (under ZeRO-1 each rank's chunks gathered first), as the CPU does.
static float cuda_grad_norm(Backend *b) {
    grad_square_sums_gpu(&b->buffers, b->chunks, b->first_chunk, b->end_chunk, b->chunk_norms, b->stream);
    size_t count = (size_t)(b->end_chunk - b->first_chunk);
    CUDA_CHECK(cudaMemcpyAsync(b->host_chunk_norms + b->first_chunk, b->chunk_norms + b->first_chunk,
                               count * sizeof(double), cudaMemcpyDeviceToHost, b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
    if (b->zero) dist_all_gather(b->host_chunk_norms, sizeof(double), b->layout.chunk_bounds);
    double total = 0.0;
    for (int c = 0; c < b->layout.num_chunks; c++) total += b->host_chunk_norms[c];
    return (float)sqrt(total);
}

// ----------------------------------------------------------------------------------------------------
// the optimizer step

#ifdef LP_WITH_NCCL
// Every rank's range of a stored array (elements of elem_bytes) from its owner to all ranks.
static void broadcast_ranges(Backend *b, void *data, size_t elem_bytes, const size_t *bounds) {
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < b->world; r++) {
        char *range = (char *)data + bounds[r] * elem_bytes;
        size_t bytes = (bounds[r + 1] - bounds[r]) * elem_bytes;
        NCCL_CHECK(ncclBroadcast(range, range, bytes, ncclUint8, r, b->comm, b->stream));
    }
    NCCL_CHECK(ncclGroupEnd());
}
#endif

// ZeRO-1: every rank's stored weights of its range to every rank.
static void gather_shards(Backend *b) {
#ifdef LP_WITH_NCCL
    OptimizerBuffers *o = &b->buffers;
    if (b->policy.weights == WEIGHTS_FP32) broadcast_ranges(b, o->params, sizeof(float), b->layout.param_bounds);
    if (b->policy.weights == WEIGHTS_BF16) broadcast_ranges(b, o->weights_bf16, sizeof(bf16), b->layout.param_bounds);
    if (b->policy.weights == WEIGHTS_INT_GRID) {
        broadcast_ranges(b, o->dqt_codes, sizeof(int8_t), b->layout.dqt_bounds[DQT_GRID]);
        broadcast_ranges(b, o->dqt_vectors, sizeof(float), b->layout.dqt_bounds[DQT_FP32]);
        broadcast_ranges(b, o->weights_bf16, sizeof(bf16), b->layout.dqt_bounds[DQT_BF16]);
    }
#endif
}

static void cuda_optimizer_step(Backend *b, const AdamWStep *step, UpdateMetrics *metrics) {
    UpdateConstants k = update_constants(step);
    optimizer_step_gpu(&b->buffers, b->chunks, b->first_chunk, b->end_chunk, &k, metrics ? b->chunk_sums : NULL,
                       b->stream);
    if (b->zero) gather_shards(b);
    if (metrics) {
        size_t count = (size_t)(b->end_chunk - b->first_chunk);
        CUDA_CHECK(cudaMemcpyAsync(b->host_chunk_sums + b->first_chunk, b->chunk_sums + b->first_chunk,
                                   count * sizeof(UpdateSums), cudaMemcpyDeviceToHost, b->stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
    if (metrics) {
        if (b->zero) dist_all_gather(b->host_chunk_sums, sizeof(UpdateSums), b->layout.chunk_bounds);
        update_metrics_from_chunks(metrics, &b->policy, &b->layout, b->host_chunk_sums);
    }
    measure_memory(b);
}

static int cuda_nccl_ranks(Backend *b) {
#ifdef LP_WITH_NCCL
    if (b->comm) return b->world;
#endif
    return 0;
}

// ZeRO-1: the optimizer state shrinks to this rank's range (a new allocation holding that range's values).
// Under mpirun a single rank takes this path too (one shard, reduced to and broadcast from itself), so that
// the ZeRO-1 NCCL code runs on a machine with one GPU.
static void cuda_shard_optimizer_state(Backend *b) {
    if (cuda_nccl_ranks(b) == 0) {
        if (b->world > 1) fatal("internal: ZeRO-1 over %d ranks without an NCCL communicator", b->world);
        return;
    }
    b->zero = 1;
    b->first_chunk = (int)b->layout.chunk_bounds[b->rank];
    b->end_chunk = (int)b->layout.chunk_bounds[b->rank + 1];
    size_t base = b->layout.param_bounds[b->rank];
    b->state_numel = b->layout.param_bounds[b->rank + 1] - base;
    OptimizerBuffers whole = b->buffers;
    Arena old = b->optimizer;
    alloc_optimizer_state(b, b->state_numel);
    b->buffers.state_base = base;
    const OptimizerBuffers *o = &b->buffers;
    size_t n = b->state_numel;
    const void *from[9] = {whole.master, whole.mcf_lo, whole.kahan_c, whole.m.fp32, whole.m.hi, whole.m.lo,
                           whole.v.fp32, whole.v.hi, whole.v.lo};
    void *to[9] = {o->master, o->mcf_lo, o->kahan_c, o->m.fp32, o->m.hi, o->m.lo, o->v.fp32, o->v.hi, o->v.lo};
    size_t elem[9] = {sizeof(float), sizeof(bf16), sizeof(bf16), sizeof(float), sizeof(bf16), sizeof(bf16),
                      sizeof(float), sizeof(bf16), sizeof(bf16)};
    for (int i = 0; i < 9; i++)
        if (from[i])
            CUDA_CHECK(cudaMemcpyAsync(to[i], (const char *)from[i] + base * elem[i], n * elem[i],
                                       cudaMemcpyDeviceToDevice, b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));  // the copies are done before the old state is freed
    arena_free(&old);
}

// The weights as the passes read them, in fp32: downloaded as stored and widened, or under DQT decoded on the
// host by the shared dqt_decoded_weight.
static void cuda_read_params(Backend *b, float *params) {
    size_t n = b->table.num_params;
    if (b->policy.weights == WEIGHTS_FP32) {
        download(b, params, b->buffers.params, n * sizeof(float));
        return;
    }
    if (b->policy.weights == WEIGHTS_BF16) {
        bf16 *stored = (bf16 *)xmalloc(n * sizeof(bf16));
        download(b, stored, b->buffers.weights_bf16, n * sizeof(bf16));
        for (size_t i = 0; i < n; i++) params[i] = bf16_to_f32(stored[i]);
        free(stored);
        return;
    }
    DqtCounts counts = dqt_counts(&b->table, &b->policy);
    OptimizerBuffers host = b->buffers;  // the offsets; the arrays below on the host
    host.dqt_codes = (int8_t *)xmalloc(counts.codes);
    host.dqt_scales = (float *)xmalloc(counts.scales * sizeof(float));
    host.dqt_vectors = (float *)xmalloc(counts.fp32 * sizeof(float));
    host.weights_bf16 = (bf16 *)xmalloc(counts.bf16 * sizeof(bf16) + 1);
    download(b, host.dqt_codes, b->buffers.dqt_codes, counts.codes);
    download(b, host.dqt_scales, b->buffers.dqt_scales, counts.scales * sizeof(float));
    download(b, host.dqt_vectors, b->buffers.dqt_vectors, counts.fp32 * sizeof(float));
    download(b, host.weights_bf16, b->buffers.weights_bf16, counts.bf16 * sizeof(bf16));
    for (int c = 0; c < b->layout.num_chunks; c++) {
        const Chunk *chunk = &b->layout.chunks[c];
        for (size_t i = chunk->begin; i < chunk->end; i++) params[i] = dqt_decoded_weight(&host, chunk, i);
    }
    free(host.dqt_codes);
    free(host.dqt_scales);
    free(host.dqt_vectors);
    free(host.weights_bf16);
}

static void cuda_read_grads(Backend *b, float *grads) {
    size_t n = b->table.num_params;
    if (!b->buffers.grads_bf16) {
        download(b, grads, b->grads, n * sizeof(float));
        return;
    }
    bf16 *stored = (bf16 *)xmalloc(n * sizeof(bf16));
    download(b, stored, b->buffers.grads_bf16, n * sizeof(bf16));
    for (size_t i = 0; i < n; i++) grads[i] = bf16_to_f32(stored[i]);
    free(stored);
}

static void cuda_load_grads(Backend *b, const float *grads) {
    size_t n = b->table.num_params;
    bf16 *grads_bf16 = (bf16 *)b->buffers.grads_bf16;
    if (!grads_bf16) {
        upload(b, b->grads, grads, n * sizeof(float));
        return;
    }
    size_t window;  // through the model's fp32 gradient scratch, rounded as reduced gradients are
    float *values = gpt_cuda_gradient_window(b->model, &window);
    for (size_t start = 0; start < n; start += window) {
        size_t count = start + window < n ? window : n - start;
        upload(b, values, grads + start, count * sizeof(float));
        f32_to_bf16_gpu(grads_bf16 + start, values, count, b->stream);
    }
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
}

// ----------------------------------------------------------------------------------------------------
// checkpoint state

// A checkpoint section of the device state: the CPU backend's names and layouts.
typedef struct {
    const char *name;
    void *device;  // NULL: a host quantity (the fp8 amax histories), at host
    void *host;
    size_t bytes;
} DeviceSection;

static int add_device_section(DeviceSection *list, int count, const char *name, void *device, size_t bytes) {
    list[count].name = name;
    list[count].device = device;
    list[count].host = NULL;
    list[count].bytes = bytes;
    return count + 1;
}

// Every stored quantity, in the order of the CPU backend's state_save; returns the count.
static int device_sections(Backend *b, DeviceSection list[12]) {
    size_t n = b->table.num_params, shard = b->state_numel;
    OptimizerBuffers *o = &b->buffers;
    int count = 0;
    if (b->policy.weights == WEIGHTS_FP32) count = add_device_section(list, count, "weights_fp32", o->params, n * sizeof(float));
    if (b->policy.weights == WEIGHTS_BF16) count = add_device_section(list, count, "weights_bf16", o->weights_bf16, n * sizeof(bf16));
    if (o->master) count = add_device_section(list, count, "master_fp32", o->master, shard * sizeof(float));
    if (o->mcf_lo) count = add_device_section(list, count, "mcf_lo_bf16", o->mcf_lo, shard * sizeof(bf16));
    if (o->kahan_c) count = add_device_section(list, count, "kahan_c_bf16", o->kahan_c, shard * sizeof(bf16));
    if (b->policy.weights == WEIGHTS_INT_GRID) {
        DqtCounts counts = dqt_counts(&b->table, &b->policy);
        count = add_device_section(list, count, "dqt_codes_int8", o->dqt_codes, counts.codes);
        count = add_device_section(list, count, "dqt_scales_fp32", o->dqt_scales, counts.scales * sizeof(float));
        count = add_device_section(list, count, "off_grid_fp32", o->dqt_vectors, counts.fp32 * sizeof(float));
        if (counts.bf16) count = add_device_section(list, count, "off_grid_bf16", o->weights_bf16, counts.bf16 * sizeof(bf16));
    }
    const MomentBuffer *moments[2] = {&o->m, &o->v};
    const char *names[2][4] = {{"adam_m_fp32", "adam_m_bf16", "adam_m_hi_bf16", "adam_m_lo_bf16"},
                               {"adam_v_fp32", "adam_v_bf16", "adam_v_hi_bf16", "adam_v_lo_bf16"}};
    for (int i = 0; i < 2; i++) {
        const MomentBuffer *m = moments[i];
        if (m->storage == STATE_FP32) count = add_device_section(list, count, names[i][0], m->fp32, shard * sizeof(float));
        if (m->storage == STATE_BF16) count = add_device_section(list, count, names[i][1], m->hi, shard * sizeof(bf16));
        if (m->storage == STATE_MCF) {
            count = add_device_section(list, count, names[i][2], m->hi, shard * sizeof(bf16));
            count = add_device_section(list, count, names[i][3], m->lo, shard * sizeof(bf16));
        }
    }
    float *scaling;
    size_t scaling_floats = gpt_cuda_scaling_state(b->model, &scaling);
    if (scaling_floats) {
        count = add_device_section(list, count, "matmul_scaling", NULL, scaling_floats * sizeof(float));
        list[count - 1].host = scaling;
    }
    return count;
}

// Sections staged in host memory: filled from the device here; on load the caller fills the same buffers
// and cuda_state_load copies them back.
static BackendState *cuda_state_save(Backend *b) {
    gpt_cuda_scaling_download(b->model);
    DeviceSection list[12];
    int count = device_sections(b, list);
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
    b->state.count = 0;
    for (int i = 0; i < count; i++) {
        void *host = list[i].host;
        if (list[i].device) {
            free(b->staging[i]);
            b->staging[i] = xmalloc(list[i].bytes ? list[i].bytes : 1);
            download(b, b->staging[i], list[i].device, list[i].bytes);
            host = b->staging[i];
        }
        backend_state_add(&b->state, list[i].name, host, list[i].bytes);
    }
    return &b->state;
}

static void cuda_state_load(Backend *b) {
    DeviceSection list[12];
    int count = device_sections(b, list);
    if (count != b->state.count) fatal("internal: cuda_state_load without a matching state_save");
    for (int i = 0; i < count; i++)
        if (list[i].device) upload(b, list[i].device, b->state.sections[i].data, list[i].bytes);
    gpt_cuda_scaling_upload(b->model);
}

// state_bytes, less the fp32 copies this backend does without: of bf16 and grid weights (the passes read
// them as stored, a grid slice decoded into a scratch planned with the activations) and of bf16 gradients
// (their scratch is one tensor slice, planned with the activations).
static size_t cuda_plan_state_bytes(const ParamTable *table, const Policy *policy, int shards) {
    check_supported(policy);
    StateBytes bytes = state_bytes(table, policy, shards);
    if (policy->weights != WEIGHTS_FP32) bytes.weights -= table->num_params * sizeof(float);
    if (policy->grads == GRADS_BF16) bytes.gradients -= table->num_params * sizeof(float);
    return bytes.weights + bytes.gradients + bytes.optimizer;
}

static size_t cuda_device_memory_bytes(Backend *b) {
    measure_memory(b);
    return b->peak_used;
}

static const char *cuda_device_name(Backend *b) { return b->device_name; }

extern "C" const BackendOps cuda_backend = {
    "cuda",
    cuda_create,
    cuda_destroy,
    cuda_forward,
    cuda_probs,
    cuda_logits,
    NULL,  // decode_step: no key/value cache; sampling reruns the forward over the window
    cuda_zero_grad,
    cuda_backward,
    cuda_reduce_gradients,
    cuda_shard_optimizer_state,
    cuda_grad_norm,
    cuda_optimizer_step,
    cuda_read_params,
    cuda_state_save,
    cuda_state_load,
    cuda_load_grads,
    cuda_read_grads,
    cuda_device_memory_bytes,
    cuda_device_name,
    cuda_nccl_ranks,
    cuda_plan_state_bytes,
    gpt_cuda_activation_bytes,
};
