// GELU with the tanh approximation of GPT-2 on the device (src/cpu/gelu.c):
// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// The expressions are the CPU's, term for term (contraction is off: -fmad=false), and tanhf is CUDA's
// accurate one (no fast-math intrinsics). CUDA's tanhf and glibc's may differ in the last bit or two, so
// the results agree with the CPU to a few ulp of tanh, not always bit for bit.
#ifndef LP_KERNELS_GELU_CUH
#define LP_KERNELS_GELU_CUH

#include "common.cuh"

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)
#define GELU_CUBIC 0.044715f
#define GELU_THREADS 256

static __global__ void gelu_forward_kernel(float *out, const float *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = inp[i];
    float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    out[i] = 0.5f * x * (1.0f + tanhf(u));
}

static __global__ void gelu_backward_kernel(float *dinp, const float *dout, const float *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = inp[i];
    float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    float th = tanhf(u);
    float du_dx = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
    float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
    dinp[i] += grad * dout[i];
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
