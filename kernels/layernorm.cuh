// LayerNorm over the channels of each row on the device (src/cpu/layernorm.c): out = (x - mean) * rstd *
// weight + bias, rstd = 1 / sqrt(var + eps) with the biased variance from a second pass over the deviations.
// One warp per row; the per-element expressions are the CPU's, the row sums are reordered (warp lanes),
// so results agree with the CPU to rounding. dweight and dbias are summed deterministically in two phases
// (column_sum.cuh): partials per block of COLUMN_SUM_ROWS rows, then the partials in row-block order.
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

// dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dout * weight; one warp per row.
template <typename Act, typename Param>
static __global__ void layernorm_backward_input_kernel(float *dinp, const float *dout, const Act *inp,
                                                      const Param *weight, const float *mean, const float *rstd,
                                                      int N, int C) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= N) return;
    const Act *x = inp + (size_t)row * C;     // (C)
    const float *d = dout + (size_t)row * C;  // (C)
    float *dx = dinp + (size_t)row * C;       // (C)
    float m = mean[row], s = rstd[row];
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) {
        float g = d[c] * load_f32(weight[c]);
        g_sum += g;
        gx_sum += g * (load_f32(x[c]) - m) * s;
    }
    float g_mean = warp_sum(g_sum) / (float)C, gx_mean = warp_sum(gx_sum) / (float)C;
    for (int c = lane; c < C; c += WARP_SIZE) {
        float xhat = (load_f32(x[c]) - m) * s;
        dx[c] += s * (d[c] * load_f32(weight[c]) - g_mean - xhat * gx_mean);
    }
}

// Phase 1 of dweight and dbias: per block of COLUMN_SUM_ROWS rows and per column, the sums of dout * xhat
// and of dout, rows in order. partials_w, partials_b: (row_blocks, C)
template <typename Act>
static __global__ void layernorm_weight_partials_kernel(float *partials_w, float *partials_b, const float *dout,
                                                       const Act *inp, const float *mean, const float *rstd, int N,
                                                       int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int first = blockIdx.y * COLUMN_SUM_ROWS;
    int last = min(first + COLUMN_SUM_ROWS, N);
    float dw = 0.0f, db = 0.0f;
    for (int n = first; n < last; n++) {
        size_t i = (size_t)n * C + c;
        dw += dout[i] * ((load_f32(inp[i]) - mean[n]) * rstd[n]);
        db += dout[i];
    }
    partials_w[(size_t)blockIdx.y * C + c] = dw;
    partials_b[(size_t)blockIdx.y * C + c] = db;
}

// dinp, dout (fp32), inp: (N, C); dweight, dbias (fp32), weight: (C); mean, rstd: (N). All three gradients are added to.
// scratch: layernorm_backward_scratch_floats(N, C) floats, free for the duration of the call (stream order).
template <typename Act, typename Param>
static void layernorm_backward_gpu(float *dinp, float *dweight, float *dbias, const float *dout, const Act *inp,
                                   const Param *weight, const float *mean, const float *rstd, int N, int C,
                                   float *scratch, cudaStream_t stream) {
    if (N == 0 || C == 0) return;
    int rows_per_block = LAYERNORM_THREADS / WARP_SIZE;
    layernorm_backward_input_kernel<<<ceil_div(N, rows_per_block), LAYERNORM_THREADS, 0, stream>>>(
        dinp, dout, inp, weight, mean, rstd, N, C);
    CUDA_CHECK_LAUNCH();

    int row_blocks = column_sum_row_blocks(N);
    if (row_blocks > 65535) fatal("layernorm backward: %d rows exceed the grid (at most %d)", N, 65535 * COLUMN_SUM_ROWS);
    float *partials_w = scratch;                         // (row_blocks, C)
    float *partials_b = scratch + (size_t)row_blocks * C;  // (row_blocks, C)
    dim3 grid(ceil_div(C, COLUMN_SUM_THREADS), row_blocks);
    layernorm_weight_partials_kernel<<<grid, COLUMN_SUM_THREADS, 0, stream>>>(partials_w, partials_b, dout, inp, mean,
                                                                              rstd, N, C);
    CUDA_CHECK_LAUNCH();
    column_partials_reduce_gpu(dweight, partials_w, row_blocks, C, stream);
    column_partials_reduce_gpu(dbias, partials_b, row_blocks, C, stream);
}

#endif
