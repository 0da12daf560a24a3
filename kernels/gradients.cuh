// Element-wise conversions between the stored weights and gradients and their fp32 forms, with the shared
// bf16 rounding of src/numerics/bf16.h (the CPU backend's bits).
#ifndef LP_KERNELS_GRADIENTS_CUH
#define LP_KERNELS_GRADIENTS_CUH

#include "common.cuh"
#include "numerics/bf16.h"

#define ELEMENTWISE_THREADS 256

// bf16 gradients: grads = bf16(grads + scratch), the rounding after each micro-step.
static __global__ void accumulate_bf16_kernel(bf16 *grads, const float *scratch, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) grads[i] = bf16_from_f32(bf16_to_f32(grads[i]) + scratch[i]);
}

static void accumulate_bf16_gpu(bf16 *grads, const float *scratch, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    accumulate_bf16_kernel<<<ceil_div(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(grads, scratch, n);
    CUDA_CHECK_LAUNCH();
}

static __global__ void bf16_to_f32_kernel(float *out, const bf16 *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_to_f32(in[i]);
}

// out (n) = the fp32 values of in (n): the compute copy of bf16 weights, bf16 gradients before a reduction.
static void bf16_to_f32_gpu(float *out, const bf16 *in, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    bf16_to_f32_kernel<<<ceil_div(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(out, in, n);
    CUDA_CHECK_LAUNCH();
}

static __global__ void f32_to_bf16_kernel(bf16 *out, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_from_f32(in[i]);
}

// out (n) = bf16(in), nearest-even: a reduced fp32 gradient rounded once into bf16 storage.
static void f32_to_bf16_gpu(bf16 *out, const float *in, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    f32_to_bf16_kernel<<<ceil_div(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(out, in, n);
    CUDA_CHECK_LAUNCH();
}

#endif
