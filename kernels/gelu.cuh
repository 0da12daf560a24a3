// GELU on the device: src/gelu.h's per-element functions, the CPU's (contraction is off: -fmad=false), with
// CUDA's accurate tanhf (no fast-math intrinsics). CUDA's tanhf and glibc's may differ in the last bit or
// two, so the results agree with the CPU to a few ulp of tanh, not always bit for bit.
#ifndef LP_KERNELS_GELU_CUH
#define LP_KERNELS_GELU_CUH

#include "bf16_device.cuh"
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
// there); the fp32 gradient, and its bf16 operand where dinp_bf16 is not NULL.
template <typename Act>
static __global__ void gelu_backward_kernel(float *dinp, __nv_bfloat16 *dinp_bf16, const float *dout, const Act *inp,
                                            size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float d = 0.0f + gelu_derivative(load_f32(inp[i])) * dout[i];
    dinp[i] = d;
    if (dinp_bf16) dinp_bf16[i] = bf16_device_from_f32(d);
}

// out, inp: (n), stored in the activations' type; out may equal inp.
template <typename Act>
static void gelu_forward_gpu(Act *out, const Act *inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    gelu_forward_kernel<<<ceil_div(n, GELU_THREADS), GELU_THREADS, 0, stream>>>(out, inp, n);
    CUDA_CHECK_LAUNCH();
}

// dinp (n) = gelu'(inp) * dout, OVERWRITTEN (not added to); dinp_bf16: NULL, or (n) the same values rounded to
// bf16, the operand of the products that read dinp (so they need no separate cast pass). dinp may equal dout.
template <typename Act>
static void gelu_backward_gpu(float *dinp, __nv_bfloat16 *dinp_bf16, const float *dout, const Act *inp, size_t n,
                              cudaStream_t stream) {
    if (n == 0) return;
    gelu_backward_kernel<<<ceil_div(n, GELU_THREADS), GELU_THREADS, 0, stream>>>(dinp, dinp_bf16, dout, inp, n);
    CUDA_CHECK_LAUNCH();
}

#endif
