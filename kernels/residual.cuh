// Residual connection on the device (src/cpu/residual.c), and the in-place add its backward uses where two
// branches' gradients meet. Bit-identical to the CPU: one fp32 addition per element.
#ifndef LP_KERNELS_RESIDUAL_CUH
#define LP_KERNELS_RESIDUAL_CUH

#include "common.cuh"

#define RESIDUAL_THREADS 256

static __global__ void residual_forward_kernel(float *out, const float *a, const float *b, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// out = a + b, all (n); out may equal a or b.
static void residual_forward_gpu(float *out, const float *a, const float *b, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    residual_forward_kernel<<<ceil_div(n, RESIDUAL_THREADS), RESIDUAL_THREADS, 0, stream>>>(out, a, b, n);
    CUDA_CHECK_LAUNCH();
}

static __global__ void add_inplace_kernel(float *dst, const float *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}

// dst (n) += src (n).
static void add_inplace_gpu(float *dst, const float *src, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    add_inplace_kernel<<<ceil_div(n, RESIDUAL_THREADS), RESIDUAL_THREADS, 0, stream>>>(dst, src, n);
    CUDA_CHECK_LAUNCH();
}

#endif
