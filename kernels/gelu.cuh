// GELU on the device: src/gelu.h's per-element functions, the CPU's (contraction is off: -fmad=false), with
// CUDA's accurate tanhf (no fast-math intrinsics). CUDA's tanhf and glibc's may differ in the last bit or
// two, so the results agree with the CPU to a few ulp of tanh, not always bit for bit.
#ifndef LP_KERNELS_GELU_CUH
#define LP_KERNELS_GELU_CUH

#include "common.cuh"
#include "gelu.h"
#define GELU_THREADS 256

static __global__ void gelu_forward_kernel(float *out, const float *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = gelu_value(inp[i]);
}

static __global__ void gelu_backward_kernel(float *dinp, const float *dout, const float *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dinp[i] += gelu_derivative(inp[i]) * dout[i];
}

// out, inp: (n); out may equal inp.
static void gelu_forward_gpu(float *out, const float *inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    gelu_forward_kernel<<<ceil_div(n, GELU_THREADS), GELU_THREADS, 0, stream>>>(out, inp, n);
    CUDA_CHECK_LAUNCH();
}

// dinp (n) += gelu'(inp) * dout; dinp may equal dout.
static void gelu_backward_gpu(float *dinp, const float *dout, const float *inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    gelu_backward_kernel<<<ceil_div(n, GELU_THREADS), GELU_THREADS, 0, stream>>>(dinp, dout, inp, n);
    CUDA_CHECK_LAUNCH();
}

#endif
