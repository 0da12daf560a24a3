// Column sums (bias gradients) and the bias add of the linear layers (src/cpu/reduce.c).
// Deterministic in two phases, no atomics: phase 1 sums each block of COLUMN_SUM_ROWS rows per column into
// a partial (rows in order), phase 2 adds the partials of each column in row-block order. The order is
// fixed by the shapes alone, so two runs give the same bits (it differs from the CPU's plain row order, so
// the result agrees with the CPU to rounding, not bit for bit). layernorm.cuh uses the same phase 2.
#ifndef LP_KERNELS_COLUMN_SUM_CUH
#define LP_KERNELS_COLUMN_SUM_CUH

#include "bf16_device.cuh"
#include "common.cuh"

#define COLUMN_SUM_ROWS 64      // rows per partial sum
#define COLUMN_SUM_THREADS 256  // columns per block

static int column_sum_row_blocks(int N) { return (N + COLUMN_SUM_ROWS - 1) / COLUMN_SUM_ROWS; }

// Floats of scratch that column_sums_add_gpu needs: one partial per (row block, column).
static size_t column_sum_scratch_floats(int N, int C) { return (size_t)column_sum_row_blocks(N) * C; }

// In the grid of phase 1 (x: column tiles, y: row blocks; one thread per column): this thread's column and
// its row block's rows [*first, *last). False for a thread beyond the last column.
static __device__ bool column_block(int N, int C, int *c, int *first, int *last) {
    *c = blockIdx.x * blockDim.x + threadIdx.x;
    *first = blockIdx.y * COLUMN_SUM_ROWS;
    *last = min(*first + COLUMN_SUM_ROWS, N);
    return *c < C;
}

// Phase 1: partials (row_blocks, C), the rows of each block in order.
static __global__ void column_partials_kernel(float *partials, const float *src, int N, int C) {
    int c, first, last;
    if (!column_block(N, C, &c, &first, &last)) return;
    float sum = 0.0f;
    for (int n = first; n < last; n++) sum += src[(size_t)n * C + c];
    partials[(size_t)blockIdx.y * C + c] = sum;
}

// Phase 1 fused with a cast: out (N, C) = src rounded to out's type (the bf16 operand of the products that
// read src), and src's partials (row_blocks, C), as column_partials_kernel's: one read of src for both.
template <typename Out>
static __global__ void cast_column_partials_kernel(Out *out, float *partials, const float *src, int N, int C) {
    int c, first, last;
    if (!column_block(N, C, &c, &first, &last)) return;
    float sum = 0.0f;
    for (int n = first; n < last; n++) {
        float x = src[(size_t)n * C + c];
        store_rounded(&out[(size_t)n * C + c], x);
        sum += x;
    }
    partials[(size_t)blockIdx.y * C + c] = sum;
}

// Phase 2: dst (C) += the partials (row_blocks, C) of each column, summed in row-block order.
static __global__ void column_partials_reduce_kernel(float *dst, const float *partials, int row_blocks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int k = 0; k < row_blocks; k++) sum += partials[(size_t)k * C + c];
    dst[c] += sum;
}

static void column_partials_reduce_gpu(float *dst, const float *partials, int row_blocks, int C, cudaStream_t stream) {
    column_partials_reduce_kernel<<<ceil_div(C, COLUMN_SUM_THREADS), COLUMN_SUM_THREADS, 0, stream>>>(dst, partials,
                                                                                                     row_blocks, C);
    CUDA_CHECK_LAUNCH();
}

// The grid of the two-phase column sums over (N, C): column tiles by row blocks.
static dim3 column_sum_grid(int N, int C) {
    int row_blocks = column_sum_row_blocks(N);
    if (row_blocks > 65535) fatal("column sums: %d rows exceed the grid (at most %d)", N, 65535 * COLUMN_SUM_ROWS);
    return dim3(ceil_div(C, COLUMN_SUM_THREADS), row_blocks);
}

// out (N, C) = src (N, C) rounded to out's type, and partials: column_sum_scratch_floats(N, C) floats, phase 1
// of src's column sums (column_partials_reduce_gpu adds them up, the same bits as column_sums_add_gpu).
template <typename Out>
static void cast_column_partials_gpu(Out *out, float *partials, const float *src, int N, int C, cudaStream_t stream) {
    if (N == 0 || C == 0) return;
    cast_column_partials_kernel<<<column_sum_grid(N, C), COLUMN_SUM_THREADS, 0, stream>>>(out, partials, src, N, C);
    CUDA_CHECK_LAUNCH();
}

// dst: (C) += the sum of the N rows of src (N, C). scratch: column_sum_scratch_floats(N, C) floats, free for
// the duration of the call (stream order).
static void column_sums_add_gpu(float *dst, const float *src, int N, int C, float *scratch, cudaStream_t stream) {
    if (N == 0 || C == 0) return;
    column_partials_kernel<<<column_sum_grid(N, C), COLUMN_SUM_THREADS, 0, stream>>>(scratch, src, N, C);
    CUDA_CHECK_LAUNCH();
    column_partials_reduce_gpu(dst, scratch, column_sum_row_blocks(N), C, stream);
}

// out[i] = src[i] + bias[i % OC], one fp32 addition stored in out's type (rounded once into bf16).
template <typename Out, typename Bias>
static __global__ void add_bias_kernel(Out *out, const float *src, const Bias *bias, int N, int OC) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * OC) return;
    store_rounded(&out[i], src[i] + load_f32(bias[i % OC]));
}

// out (N, OC) = src (N, fp32 OC) + bias (OC) on every row, the bias read in its stored type and the sum
// stored in out's; out may equal src (fp32).
template <typename Out, typename Bias>
static void add_bias_gpu(Out *out, const float *src, const Bias *bias, int N, int OC, cudaStream_t stream) {
    size_t n = (size_t)N * OC;
    if (n == 0) return;
    add_bias_kernel<<<ceil_div(n, COLUMN_SUM_THREADS), COLUMN_SUM_THREADS, 0, stream>>>(out, src, bias, N, OC);
    CUDA_CHECK_LAUNCH();
}

#endif
