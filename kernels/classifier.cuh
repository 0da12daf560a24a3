// The language-model loss on the device (src/cpu/classifier.c): softmax over the first V of Vp logits and
// cross-entropy. The padded logits (V..Vp) are never read: their probabilities are 0 and their gradients 0.
// The per-element expressions are the CPU's; the row's max is exact, its sum of exponentials is reordered
// (a block reduction), and CUDA's expf/logf may differ from glibc's in the last bit, so probabilities and
// losses agree with the CPU to a few ulp. The backward is the CPU's expression, element for element.
#ifndef LP_KERNELS_CLASSIFIER_CUH
#define LP_KERNELS_CLASSIFIER_CUH

#include "common.cuh"

#define CLASSIFIER_THREADS 512  // per row: a block walks a GPT-2 vocabulary in ~100 steps per thread

// One block per row. The target's logit is read before any probability is written, so probs may equal logits.
static __global__ void classifier_forward_kernel(float *probs, float *losses, const float *logits, const int *targets,
                                                 int V, int Vp) {
    __shared__ float shared[WARP_SIZE];
    int row = blockIdx.x;
    const float *z = logits + (size_t)row * Vp;  // (Vp)
    float *p = probs + (size_t)row * Vp;         // (Vp)
    float target_logit = targets && threadIdx.x == 0 ? z[targets[row]] : 0.0f;
    float max_logit = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) max_logit = fmaxf(max_logit, z[v]);
    max_logit = block_max(max_logit, shared);
    float sum = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += expf(z[v] - max_logit);
    sum = block_sum(sum, shared);  // also a barrier: every read of z above is done before p is written
    float inv_sum = 1.0f / sum;
    for (int v = threadIdx.x; v < V; v += blockDim.x) p[v] = expf(z[v] - max_logit) * inv_sum;
    for (int v = V + threadIdx.x; v < Vp; v += blockDim.x) p[v] = 0.0f;
    // -log softmax from the log-sum-exp: exact even where the probability underflows.
    if (targets && threadIdx.x == 0) losses[row] = logf(sum) + max_logit - target_logit;
}

// probs, logits: (N, Vp); targets: (N) or NULL; losses: (N), written only when targets is not NULL.
// probs gets 0 on the padded entries. probs may equal logits.
static void classifier_forward_gpu(float *probs, float *losses, const float *logits, const int *targets, int N, int V,
                                   int Vp, cudaStream_t stream) {
    if (N == 0) return;
    classifier_forward_kernel<<<N, CLASSIFIER_THREADS, 0, stream>>>(probs, losses, logits, targets, V, Vp);
    CUDA_CHECK_LAUNCH();
}

// One thread per element of dlogits.
static __global__ void classifier_backward_kernel(float *dlogits, const float *probs, const int *targets, float dloss,
                                                  int N, int V, int Vp) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * Vp) return;
    int row = (int)(i / Vp), v = (int)(i % Vp);
    if (v >= V) {
        dlogits[i] = 0.0f;
        return;
    }
    float indicator = v == targets[row] ? 1.0f : 0.0f;
    dlogits[i] = (probs[i] - indicator) * dloss;
}

// dlogits: (N, Vp) OVERWRITTEN (unlike the CPU's +=): (probs - onehot(target)) * dloss on the first V
// entries, 0 on the padded ones, so the logits buffer can take the gradient without a memset.
// probs: (N, Vp), targets: (N). dlogits may equal probs (each element reads only its own probability, before
// writing it); it must not overlap targets.
static void classifier_backward_gpu(float *dlogits, const float *probs, const int *targets, float dloss, int N, int V,
                                    int Vp, cudaStream_t stream) {
    size_t n = (size_t)N * Vp;
    if (n == 0) return;
    classifier_backward_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(dlogits, probs, targets, dloss, N, V, Vp);
    CUDA_CHECK_LAUNCH();
}

#endif
