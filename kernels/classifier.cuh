// The language-model loss on the device (src/cpu/classifier.c), fused: the forward reads the logits once for
// each row's max, sum of exponentials and cross-entropy, and keeps only those two row statistics; the
// backward reads the logits once more and overwrites them with their gradient, re-forming each probability
// from the statistics. No (B, T, Vp) probability buffer exists (the sampler's few rows are formed on the
// host). The padded logits (V..Vp) are never read: their gradients are 0.
// The per-element expressions are the CPU's (p = expf(z - max) * (1 / sum), dz = (p - onehot) * dloss); the
// row's max is exact, its sum of exponentials is reordered (a block reduction), and CUDA's expf/logf may
// differ from glibc's in the last bit, so probabilities and losses agree with the CPU to a few ulp, and the
// gradient from the same statistics is the CPU's expression element for element.
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

// One block per row.
template <typename Logit>
static __global__ void classifier_forward_kernel(SoftmaxStats *stats, float *losses, const Logit *logits,
                                                 const int *targets, int V, int Vp) {
    __shared__ float shared[WARP_SIZE];
    int row = blockIdx.x;
    const Logit *z = logits + (size_t)row * Vp;  // (Vp)
    float max_logit = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) max_logit = fmaxf(max_logit, load_f32(z[v]));
    max_logit = block_max(max_logit, shared);
    float sum = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += expf(load_f32(z[v]) - max_logit);
    sum = block_sum(sum, shared);
    if (threadIdx.x != 0) return;
    stats[row].max = max_logit;
    stats[row].inv_sum = 1.0f / sum;
    // -log softmax from the log-sum-exp: exact even where the probability underflows.
    if (targets) losses[row] = logf(sum) + max_logit - load_f32(z[targets[row]]);
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
