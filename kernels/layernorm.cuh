// LayerNorm over the channels of each row on the device (src/cpu/layernorm.c): out = (x - mean) * rstd *
// weight + bias, rstd = 1 / sqrt(var + eps) with the biased variance from a second pass over the deviations.
// One warp per row (the backward: one block per COLUMN_SUM_ROWS rows); the per-element expressions are the
// CPU's, the row sums are reordered (warp lanes), so results agree with the CPU to rounding. dweight and
// dbias are summed deterministically in two phases (column_sum.cuh): partials per block of COLUMN_SUM_ROWS
// rows, then the partials in row-block order.
// Activations (Act) and the weight and bias (Param) are read in their stored type, fp32 or bf16; outputs
// are stored rounded once (bf16_device.cuh); gradients are fp32.
#ifndef LP_KERNELS_LAYERNORM_CUH
#define LP_KERNELS_LAYERNORM_CUH

#include "bf16_device.cuh"
#include "column_sum.cuh"
#include "common.cuh"

#define LAYERNORM_EPS 1e-5f
#define LAYERNORM_THREADS 256  // 8 warps: 8 rows per block

// Floats of scratch that layernorm_backward_gpu needs: the dweight and the dbias partials.
static size_t layernorm_backward_scratch_floats(int N, int C) { return 2 * column_sum_scratch_floats(N, C); }

// One warp per row. mean, rstd: (N), or NULL where not needed (no backward follows). With `add` (not
// NULL), the row normalized is inp + add, which is stored into residual (rounded to its type) and read back:
// the residual connection and the layernorm after it in one pass (each sum is one fp32 addition, the CPU's
// residual_forward, then its gpt_cpu_store).
template <typename Act, typename Param>
static __global__ void layernorm_forward_kernel(Act *out, float *mean, float *rstd, Act *residual, const Act *inp,
                                                const Act *add, const Param *weight, const Param *bias, int N, int C) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= N) return;  // the whole warp leaves together
    const Act *x = inp + (size_t)row * C;  // (C)
    Act *o = out + (size_t)row * C;        // (C)
    if (add) {
        const Act *a = add + (size_t)row * C;  // (C)
        Act *r = residual + (size_t)row * C;   // (C)
        for (int c = lane; c < C; c += WARP_SIZE) store_rounded(&r[c], load_f32(x[c]) + load_f32(a[c]));
        x = r;  // each lane reads back only the elements it wrote
    }
    float sum = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) sum += load_f32(x[c]);
    float m = warp_sum(sum) / (float)C;
    // Two passes: the variance from deviations, not E[x^2] - E[x]^2, which cancels badly.
    float sq = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) {
        float d = load_f32(x[c]) - m;
        sq += d * d;
    }
    float s = 1.0f / sqrtf(warp_sum(sq) / (float)C + LAYERNORM_EPS);
    for (int c = lane; c < C; c += WARP_SIZE)
        store_rounded(&o[c], (load_f32(x[c]) - m) * s * load_f32(weight[c]) + load_f32(bias[c]));
    if (lane == 0 && mean) mean[row] = m;
    if (lane == 0 && rstd) rstd[row] = s;
}

template <typename Act, typename Param>
static void layernorm_launch(Act *out, float *mean, float *rstd, Act *residual, const Act *inp, const Act *add,
                             const Param *weight, const Param *bias, int N, int C, cudaStream_t stream) {
    if (N == 0) return;
    int rows_per_block = LAYERNORM_THREADS / WARP_SIZE;
    layernorm_forward_kernel<<<ceil_div(N, rows_per_block), LAYERNORM_THREADS, 0, stream>>>(
        out, mean, rstd, residual, inp, add, weight, bias, N, C);
    CUDA_CHECK_LAUNCH();
}

// out, inp: (N, C); mean, rstd: (N) or NULL; weight, bias: (C)
template <typename Act, typename Param>
static void layernorm_forward_gpu(Act *out, float *mean, float *rstd, const Act *inp, const Param *weight,
                                  const Param *bias, int N, int C, cudaStream_t stream) {
    layernorm_launch(out, mean, rstd, (Act *)NULL, inp, (const Act *)NULL, weight, bias, N, C, stream);
}

// residual = a + b, then out = layernorm(residual), in one pass: the CPU's residual_forward followed by its
// layernorm_forward, bit for bit as the two separate kernels. residual, a, b, out: (N, C); mean, rstd: (N)
// or NULL; weight, bias: (C). residual may equal a (not out).
template <typename Act, typename Param>
static void residual_layernorm_forward_gpu(Act *residual, Act *out, float *mean, float *rstd, const Act *a,
                                           const Act *b, const Param *weight, const Param *bias, int N, int C,
                                           cudaStream_t stream) {
    layernorm_launch(out, mean, rstd, residual, a, b, weight, bias, N, C, stream);
}

// One block per COLUMN_SUM_ROWS rows, in two passes over them (the second reads what the first just read,
// from cache, not from device memory again):
//  1. one warp per row: mean(g) and mean(g * xhat) over the row, g = dout * weight;
//  2. one thread per column: dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)) down the block's rows, and
//     phase 1 of dweight and dbias: the sums of dout * xhat and of dout over those rows in order (the
//     partials, (row_blocks, C) each; column_partials_reduce_gpu adds them up).
template <typename Act, typename Param>
static __global__ void layernorm_backward_kernel(float *dinp, float *partials_w, float *partials_b, const float *dout,
                                                 const Act *inp, const Param *weight, const float *mean,
                                                 const float *rstd, int N, int C) {
    __shared__ float g_mean[COLUMN_SUM_ROWS], gx_mean[COLUMN_SUM_ROWS];
    int first = blockIdx.x * COLUMN_SUM_ROWS, rows = min(COLUMN_SUM_ROWS, N - first);
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    for (int r = warp; r < rows; r += warps) {
        size_t row = (size_t)(first + r);
        const Act *x = inp + row * C;     // (C)
        const float *d = dout + row * C;  // (C)
        float m = mean[row], s = rstd[row];
        float g_sum = 0.0f, gx_sum = 0.0f;
        for (int c = lane; c < C; c += WARP_SIZE) {
            float g = d[c] * load_f32(weight[c]);
            g_sum += g;
            gx_sum += g * (load_f32(x[c]) - m) * s;
        }
        g_sum = warp_sum(g_sum);
        gx_sum = warp_sum(gx_sum);
        if (lane == 0) {
            g_mean[r] = g_sum / (float)C;
            gx_mean[r] = gx_sum / (float)C;
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float w = load_f32(weight[c]), dw = 0.0f, db = 0.0f;
        for (int r = 0; r < rows; r++) {
            size_t n = (size_t)(first + r), i = n * C + c;
            float s = rstd[n], xhat = (load_f32(inp[i]) - mean[n]) * s, d = dout[i];
            dinp[i] += s * (d * w - g_mean[r] - xhat * gx_mean[r]);
            dw += d * xhat;
            db += d;
        }
        partials_w[(size_t)blockIdx.x * C + c] = dw;
        partials_b[(size_t)blockIdx.x * C + c] = db;
    }
}

// dinp, dout (fp32), inp: (N, C); dweight, dbias (fp32), weight: (C); mean, rstd: (N). All three gradients are
// added to. scratch: layernorm_backward_scratch_floats(N, C) floats, free for the duration of the call (stream
// order).
template <typename Act, typename Param>
static void layernorm_backward_gpu(float *dinp, float *dweight, float *dbias, const float *dout, const Act *inp,
                                   const Param *weight, const float *mean, const float *rstd, int N, int C,
                                   float *scratch, cudaStream_t stream) {
    if (N == 0 || C == 0) return;
    int row_blocks = column_sum_row_blocks(N);
    float *partials_w = scratch;                           // (row_blocks, C)
    float *partials_b = scratch + (size_t)row_blocks * C;  // (row_blocks, C)
    layernorm_backward_kernel<<<row_blocks, LAYERNORM_THREADS, 0, stream>>>(dinp, partials_w, partials_b, dout, inp,
                                                                           weight, mean, rstd, N, C);
    CUDA_CHECK_LAUNCH();
    column_partials_reduce_gpu(dweight, partials_w, row_blocks, C, stream);
    column_partials_reduce_gpu(dbias, partials_b, row_blocks, C, stream);
}

#endif
