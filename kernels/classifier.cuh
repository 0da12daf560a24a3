// The language-model loss on the device (src/cpu/classifier.c), fused: the forward reads the logits once for
// each row's max, sum of exponentials and cross-entropy, and keeps only those two row statistics; the
// backward reads the logits once more and overwrites them with their gradient, re-forming each probability
// from the statistics. No (B, T, Vp) probability buffer exists (the sampler's few rows are formed on the
// host). The padded logits (V..Vp) are never read: their gradients are 0.
// The per-element expressions are the CPU's (p = expf(z - max) * (1 / sum), dz = (p - onehot) * dloss); the
// row's max is exact; its sum of exponentials is formed online in the same single read (each thread keeps a
// running max and a sum rescaled when the max grows; the block merges them in a fixed order), so it is
// reordered and rescaled against the CPU's max-then-sum, and CUDA's expf/logf may differ from glibc's in the
// last bit: probabilities and losses agree with the CPU to a few ulp, and the gradient from the same
// statistics is the CPU's expression element for element.
// The logits are read in the activations' stored type (fp32 or bf16); the gradient is written in the type of
// the LM head's operand (fp32, or bf16: rounded once, the operand itself, so no cast pass follows), in place
// of the logits where the two types agree.
#ifndef LP_KERNELS_CLASSIFIER_CUH
#define LP_KERNELS_CLASSIFIER_CUH

#include "bf16_device.cuh"
#include "common.cuh"

#define CLASSIFIER_THREADS 512  // per row: a block walks a GPT-2 vocabulary in ~100 steps per thread

// What the backward needs of a row's softmax: p[v] = expf(z[v] - max) * inv_sum.
typedef struct {
    float max;
    float inv_sum;
} SoftmaxStats;

// A running softmax normaliser: the max of the values seen and the sum of exp(value - max) over them.
typedef struct {
    float max, sum;
} OnlineSum;

static __device__ OnlineSum online_add(OnlineSum a, float z) {
    if (z > a.max) return OnlineSum{z, a.sum * expf(a.max - z) + 1.0f};  // expf(-inf) = 0 for the first value
    a.sum += expf(z - a.max);  // (NaN propagates through this branch)
    return a;
}

// Commutative (the same bits either way round), so a butterfly leaves every lane with the same result.
static __device__ OnlineSum online_merge(OnlineSum a, OnlineSum b) {
    float m = fmaxf(a.max, b.max);
    if (m == -INFINITY) return a;  // neither has seen a value
    return OnlineSum{m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

// The block's merged normaliser, to every thread. shared: 2 * WARP_SIZE floats.
static __device__ OnlineSum block_online_merge(OnlineSum x, float *shared) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        OnlineSum other = {__shfl_xor_sync(0xffffffffu, x.max, offset), __shfl_xor_sync(0xffffffffu, x.sum, offset)};
        x = online_merge(x, other);
    }
    if (lane == 0) {
        shared[warp] = x.max;
        shared[WARP_SIZE + warp] = x.sum;
    }
    __syncthreads();
    OnlineSum total = {-INFINITY, 0.0f};
    for (int w = 0; w < warps; w++) total = online_merge(total, OnlineSum{shared[w], shared[WARP_SIZE + w]});
    return total;
}

// One block per row; one read of the row.
template <typename Logit>
static __global__ void classifier_forward_kernel(SoftmaxStats *stats, float *losses, const Logit *logits,
                                                 const int *targets, int V, int Vp) {
    __shared__ float shared[2 * WARP_SIZE];
    int row = blockIdx.x;
    const Logit *z = logits + (size_t)row * Vp;  // (Vp)
    OnlineSum running = {-INFINITY, 0.0f};
    for (int v = threadIdx.x; v < V; v += blockDim.x) running = online_add(running, load_f32(z[v]));
    OnlineSum row_sum = block_online_merge(running, shared);
    if (threadIdx.x != 0) return;
    stats[row].max = row_sum.max;
    stats[row].inv_sum = 1.0f / row_sum.sum;
    // -log softmax from the log-sum-exp: exact even where the probability underflows.
    if (targets) losses[row] = logf(row_sum.sum) + row_sum.max - load_f32(z[targets[row]]);
}

// logits: (N, Vp); targets: (N) or NULL; stats: (N) written; losses: (N), written only when targets is not
// NULL. The logits are only read.
template <typename Logit>
static void classifier_forward_gpu(SoftmaxStats *stats, float *losses, const Logit *logits, const int *targets,
                                   int N, int V, int Vp, cudaStream_t stream) {
    if (N == 0) return;
    classifier_forward_kernel<<<N, CLASSIFIER_THREADS, 0, stream>>>(stats, losses, logits, targets, V, Vp);
    CUDA_CHECK_LAUNCH();
}

// One block per row; each element is read and then written by the same thread, so grad may alias logits
// (same type).
template <typename Logit, typename Grad>
static __global__ void classifier_backward_kernel(Grad *grad, const Logit *logits, const SoftmaxStats *stats,
                                                  const int *targets, float dloss, int V, int Vp) {
    int row = blockIdx.x;
    const Logit *z = logits + (size_t)row * Vp;  // (Vp)
    Grad *dz = grad + (size_t)row * Vp;          // (Vp)
    SoftmaxStats s = stats[row];
    int target = targets[row];
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float p = expf(load_f32(z[v]) - s.max) * s.inv_sum;
        float indicator = v == target ? 1.0f : 0.0f;
        store_rounded(&dz[v], (p - indicator) * dloss);
    }
    for (int v = V + threadIdx.x; v < Vp; v += blockDim.x) store_rounded(&dz[v], 0.0f);
}

// grad: (N, Vp) = the gradient of dloss * (the sum of the rows' losses): (softmax - onehot(target)) * dloss
// on the first V entries, 0 on the padded ones, stored in grad's type; grad may be logits itself (then the
// logits are overwritten). stats: (N) from the forward of these logits (N, Vp); targets: (N).
template <typename Logit, typename Grad>
static void classifier_backward_gpu(Grad *grad, const Logit *logits, const SoftmaxStats *stats, const int *targets,
                                    float dloss, int N, int V, int Vp, cudaStream_t stream) {
    if (N == 0) return;
    classifier_backward_kernel<<<N, CLASSIFIER_THREADS, 0, stream>>>(grad, logits, stats, targets, dloss, V, Vp);
    CUDA_CHECK_LAUNCH();
}

#endif
