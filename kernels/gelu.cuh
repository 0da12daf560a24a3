// GELU on the device: src/gelu.h's per-element functions, the CPU's (contraction is off: -fmad=false), with
// CUDA's accurate tanhf (no fast-math intrinsics). CUDA's tanhf and glibc's may differ in the last bit or
// two, so the results agree with the CPU to a few ulp of tanh, not always bit for bit.
#ifndef LP_KERNELS_GELU_CUH
#define LP_KERNELS_GELU_CUH

#include "bf16_device.cuh"
#include "column_sum.cuh"
#include "common.cuh"
#include "gelu.h"
#define GELU_THREADS 256

template <typename Act>
static __global__ void gelu_forward_kernel(Act *out, const Act *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    store_rounded(&out[i], gelu_value(load_f32(inp[i])));
}

// dinp = 0 + gelu'(inp) * dout: the CPU's zeroing and adding in one write (the added 0 turns -0 into +0 as
// there).
template <typename Act>
static __global__ void gelu_backward_kernel(float *dinp, const float *dout, const Act *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dinp[i] = 0.0f + gelu_derivative(load_f32(inp[i])) * dout[i];
}

// The fc layer's GELU in the backward, in one pass over (N, 4C) for bf16 products (column tiles by row blocks
// of COLUMN_SUM_ROWS, column_sum.cuh's grid): gelu_out = gelu(fch), the forward's output recomputed for
// fcproj's weight gradient; dfch = 0 + gelu'(fch) * dgelu, stored only as its bf16 operand and as the
// partials of its column sums (fc's bias gradient; column_partials_reduce_gpu gives column_sums_add_gpu's
// bits), so no fp32 dfch is written or read again.
template <typename Act>
static __global__ void gelu_backward_fused_kernel(Act *gelu_out, __nv_bfloat16 *dfch_bf16, float *partials,
                                                  const float *dgelu, const Act *fch, int N, int C) {
    int c, first, last;
    if (!column_block(N, C, &c, &first, &last)) return;
    float sum = 0.0f;
    for (int n = first; n < last; n++) {
        size_t i = (size_t)n * C + c;
        float x = load_f32(fch[i]);
        store_rounded(&gelu_out[i], gelu_value(x));
        float d = 0.0f + gelu_derivative(x) * dgelu[i];
        dfch_bf16[i] = bf16_device_from_f32(d);
        sum += d;
    }
    partials[(size_t)blockIdx.y * C + c] = sum;
}

// gelu_out, dfch_bf16, dgelu, fch: (N, C); partials: column_sum_scratch_floats(N, C) floats.
template <typename Act>
static void gelu_backward_fused_gpu(Act *gelu_out, __nv_bfloat16 *dfch_bf16, float *partials, const float *dgelu,
                                    const Act *fch, int N, int C, cudaStream_t stream) {
    if (N == 0 || C == 0) return;
    gelu_backward_fused_kernel<<<column_sum_grid(N, C), COLUMN_SUM_THREADS, 0, stream>>>(gelu_out, dfch_bf16, partials,
                                                                                        dgelu, fch, N, C);
    CUDA_CHECK_LAUNCH();
}

// out, inp: (n), stored in the activations' type; out may equal inp.
template <typename Act>
static void gelu_forward_gpu(Act *out, const Act *inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    gelu_forward_kernel<<<ceil_div(n, GELU_THREADS), GELU_THREADS, 0, stream>>>(out, inp, n);
    CUDA_CHECK_LAUNCH();
}

// dinp (n) = gelu'(inp) * dout, OVERWRITTEN (not added to); dinp may equal dout.
template <typename Act>
static void gelu_backward_gpu(float *dinp, const float *dout, const Act *inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    gelu_backward_kernel<<<ceil_div(n, GELU_THREADS), GELU_THREADS, 0, stream>>>(dinp, dout, inp, n);
    CUDA_CHECK_LAUNCH();
}

#endif
