// The non-GEMM parts of causal multi-head attention on the device (src/cpu/attention.c); the backend does
// the batched products (QK^T, PV and their backward products) with cuBLASLt between these steps:
//   forward:  qkv -split-> q, k, v;  scores = q k^T;  att = softmax(scores * scale) (causal);  y = att v;
//             out = merge(y)
//   backward: dy = split(dout);  datt = dy v^T;  dv = att^T dy;  dscores = softmax backward (scale
//             included);  dq = dscores k;  dk = dscores^T q;  dqkv += merge(dq, dk, dv)
// hs = C / NH, scale = 1 / sqrtf(hs) as on the CPU. Per-head tensors are (B, NH, T, hs), scores and
// probabilities (B, NH, T, T). The permutations are exact; the softmax keeps the CPU's per-element
// expressions and reorders only its row sums (warp lanes), so it agrees with the CPU to rounding.
#ifndef LP_KERNELS_ATTENTION_CUH
#define LP_KERNELS_ATTENTION_CUH

#include "bf16_device.cuh"
#include "common.cuh"

#define ATTENTION_THREADS 256  // permutations: one thread per element; softmax: 8 rows (warps) per block

// Where channel c of position (b, t) lives in a per-head tensor (B, NH, T, hs).
static __device__ size_t head_index(int b, int t, int c, int T, int NH, int hs) {
    int h = c / hs, d = c % hs;
    return (((size_t)b * NH + h) * T + t) * hs + d;
}

// One thread per element of qkv (B, T, 3C): each value in the per-head tensors' type (rounded once into bf16,
// exact otherwise).
template <typename In, typename Out>
static __global__ void attention_split_qkv_kernel(Out *q, Out *k, Out *v, const In *qkv, int B, int T, int C, int NH) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * T * 3 * C) return;
    size_t row = i / (3 * (size_t)C);
    int j = (int)(i % (3 * (size_t)C));
    int which = j / C, c = j % C;
    Out *dst = which == 0 ? q : (which == 1 ? k : v);
    store_rounded(&dst[head_index((int)(row / T), (int)(row % T), c, T, NH, C / NH)], load_f32(qkv[i]));
}

// qkv: (B, T, 3C), stored fp32 or bf16 -> q, k, v: (B, NH, T, hs) each (overwritten), fp32 or bf16 (the
// products' operand type).
template <typename In, typename Out>
static void attention_split_qkv_gpu(Out *q, Out *k, Out *v, const In *qkv, int B, int T, int C, int NH,
                                    cudaStream_t stream) {
    size_t n = (size_t)B * T * 3 * C;
    if (n == 0) return;
    attention_split_qkv_kernel<<<ceil_div(n, ATTENTION_THREADS), ATTENTION_THREADS, 0, stream>>>(q, k, v, qkv, B, T, C,
                                                                                                NH);
    CUDA_CHECK_LAUNCH();
}

// One warp per row (b, h, t): s = score * scale over t2 <= t, att = expf(s - max) * (1 / sum), 0 above the
// diagonal, and, with att_bf16, its bf16 copy in the same pass (the next product's operand). Each element is
// read and written by the same lane, after the row's reductions, so att may be scores.
static __global__ void attention_softmax_forward_kernel(float *att, __nv_bfloat16 *att_bf16, const float *scores,
                                                        int rows, int T, float scale) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= rows) return;  // the whole warp leaves together
    int t = row % T;
    const float *s = scores + (size_t)row * T;  // (T)
    float *a = att + (size_t)row * T;           // (T)
    __nv_bfloat16 *a_bf16 = att_bf16 ? att_bf16 + (size_t)row * T : NULL;  // (T)
    float max_score = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += WARP_SIZE) max_score = fmaxf(max_score, s[t2] * scale);
    max_score = warp_max(max_score);
    float sum = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += WARP_SIZE) sum += expf(s[t2] * scale - max_score);
    float inv_sum = 1.0f / warp_sum(sum);
    for (int t2 = lane; t2 < T; t2 += WARP_SIZE) {
        float p = t2 <= t ? expf(s[t2] * scale - max_score) * inv_sum : 0.0f;
        a[t2] = p;
        if (a_bf16) a_bf16[t2] = bf16_device_from_f32(p);
    }
}

// scores: (B, NH, T, T) the raw products q . k (scale not applied); att: (B, NH, T, T) overwritten with the
// causal softmax of scores * scale (0 above the diagonal); att_bf16: NULL, or (B, NH, T, T) the same values
// rounded to bf16 nearest-even (bit-identical to casting att afterwards). att may equal scores.
static void attention_softmax_forward_gpu(float *att, __nv_bfloat16 *att_bf16, const float *scores, int B, int NH,
                                          int T, float scale, cudaStream_t stream) {
    int rows = B * NH * T;
    if (rows == 0) return;
    int rows_per_block = ATTENTION_THREADS / WARP_SIZE;
    attention_softmax_forward_kernel<<<ceil_div(rows, rows_per_block), ATTENTION_THREADS, 0, stream>>>(
        att, att_bf16, scores, rows, T, scale);
    CUDA_CHECK_LAUNCH();
}

// One warp per row: dscore = att * (datt - sum_t2 att * datt) * scale for t2 <= t, 0 above, into dscores
// (fp32) or, when dscores is NULL, rounded into dscores_bf16. Each element is read and written by the same
// lane, after the row's sum, so dscores may be datt (or att).
static __global__ void attention_softmax_backward_kernel(float *dscores, __nv_bfloat16 *dscores_bf16,
                                                         const float *datt, const float *att, int rows, int T,
                                                         float scale) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= rows) return;
    int t = row % T;
    const float *a = att + (size_t)row * T;   // (T)
    const float *da = datt + (size_t)row * T;  // (T)
    size_t offset = (size_t)row * T;
    float weighted = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += WARP_SIZE) weighted += a[t2] * da[t2];
    weighted = warp_sum(weighted);
    for (int t2 = lane; t2 < T; t2 += WARP_SIZE) {
        float ds = t2 <= t ? a[t2] * (da[t2] - weighted) * scale : 0.0f;
        if (dscores) dscores[offset + t2] = ds;
        else dscores_bf16[offset + t2] = bf16_device_from_f32(ds);
    }
}

// datt, att, dscores: (B, NH, T, T). dscores OVERWRITTEN with the gradient of the raw scores (scale
// included), or, with dscores NULL, dscores_bf16 with those values rounded to bf16 nearest-even (the next
// products' bf16 operand, bit-identical to casting dscores afterwards). dscores may equal datt.
static void attention_softmax_backward_gpu(float *dscores, __nv_bfloat16 *dscores_bf16, const float *datt,
                                           const float *att, int B, int NH, int T, float scale, cudaStream_t stream) {
    int rows = B * NH * T;
    if (rows == 0) return;
    int rows_per_block = ATTENTION_THREADS / WARP_SIZE;
    attention_softmax_backward_kernel<<<ceil_div(rows, rows_per_block), ATTENTION_THREADS, 0, stream>>>(
        dscores, dscores_bf16, datt, att, rows, T, scale);
    CUDA_CHECK_LAUNCH();
}

// One thread per element of out (B, T, C), stored in the activations' type.
template <typename Act>
static __global__ void attention_merge_heads_kernel(Act *out, const float *y, int B, int T, int C, int NH) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * T * C) return;
    size_t row = i / C;
    store_rounded(&out[i], y[head_index((int)(row / T), (int)(row % T), (int)(i % C), T, NH, C / NH)]);
}

// y: (B, NH, T, hs) -> out: (B, T, C) (overwritten).
template <typename Act>
static void attention_merge_heads_gpu(Act *out, const float *y, int B, int T, int C, int NH, cudaStream_t stream) {
    size_t n = (size_t)B * T * C;
    if (n == 0) return;
    attention_merge_heads_kernel<<<ceil_div(n, ATTENTION_THREADS), ATTENTION_THREADS, 0, stream>>>(out, y, B, T, C, NH);
    CUDA_CHECK_LAUNCH();
}

// One thread per element of dqkv (B, T, 3C).
static __global__ void attention_merge_qkv_grad_kernel(float *dqkv, const float *dq, const float *dk, const float *dv,
                                                       int B, int T, int C, int NH) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * T * 3 * C) return;
    size_t row = i / (3 * (size_t)C);
    int j = (int)(i % (3 * (size_t)C));
    int which = j / C, c = j % C;
    const float *src = which == 0 ? dq : (which == 1 ? dk : dv);
    dqkv[i] += src[head_index((int)(row / T), (int)(row % T), c, T, NH, C / NH)];
}

// dq, dk, dv: (B, NH, T, hs) -> dqkv: (B, T, 3C), ADDED to (a backward).
static void attention_merge_qkv_grad_gpu(float *dqkv, const float *dq, const float *dk, const float *dv, int B, int T,
                                         int C, int NH, cudaStream_t stream) {
    size_t n = (size_t)B * T * 3 * C;
    if (n == 0) return;
    attention_merge_qkv_grad_kernel<<<ceil_div(n, ATTENTION_THREADS), ATTENTION_THREADS, 0, stream>>>(dqkv, dq, dk, dv,
                                                                                                     B, T, C, NH);
    CUDA_CHECK_LAUNCH();
}

// One thread per element of x (B, T, C).
static __global__ void attention_split_heads_kernel(float *y, const float *x, int B, int T, int C, int NH) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * T * C) return;
    size_t row = i / C;
    y[head_index((int)(row / T), (int)(row % T), (int)(i % C), T, NH, C / NH)] = x[i];
}

// x: (B, T, C) -> y: (B, NH, T, hs) (overwritten); for dout in the backward.
static void attention_split_heads_gpu(float *y, const float *x, int B, int T, int C, int NH, cudaStream_t stream) {
    size_t n = (size_t)B * T * C;
    if (n == 0) return;
    attention_split_heads_kernel<<<ceil_div(n, ATTENTION_THREADS), ATTENTION_THREADS, 0, stream>>>(y, x, B, T, C, NH);
    CUDA_CHECK_LAUNCH();
}

#endif
