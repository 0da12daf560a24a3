// What every CUDA kernel file shares: checked CUDA and cuBLAS calls, checked allocation, launch sizes and
// warp reductions.
//
// Conventions of kernels/ (the device counterparts of src/cpu/ops.h): one .cuh per op, each with its
// kernels and a host launcher `<op>_gpu(...)` taking device pointers and a stream. Tensors are row-major
// fp32 unless a comment says otherwise, N = B*T rows. A forward overwrites its outputs; a backward ADDS into
// the gradients it produces, as on the CPU. Nothing that feeds the loss or the weights uses an
// order-dependent atomic: every sum runs in a fixed order, so two runs give the same bits.
// Everything is `static`: the .cuh files are included by the CUDA backend's translation units and by the
// GPU tests, each of which gets its own copy.
#ifndef LP_KERNELS_COMMON_CUH
#define LP_KERNELS_COMMON_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define WARP_SIZE 32

// A failing CUDA call ends the program with the call, its file:line and CUDA's message.
static void cuda_check(cudaError_t status, const char *call, const char *file, int line) {
    if (status != cudaSuccess) fatal("CUDA error at %s:%d: %s: %s", file, line, call, cudaGetErrorString(status));
}

static void cublas_check(cublasStatus_t status, const char *call, const char *file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS)
        fatal("cuBLAS error at %s:%d: %s: %s (%d)", file, line, call, cublasGetStatusString(status), (int)status);
}

// The macros only capture the call's text and position; the checks are the functions above.
#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)
// After a kernel launch: a bad launch configuration surfaces here, with the launcher's file:line.
#define CUDA_CHECK_LAUNCH() cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// cudaMalloc of `bytes` for `what`; out of memory says how much was asked and how much is free, and what to
// change.
static void *cuda_malloc_checked(size_t bytes, const char *what) {
    void *ptr = NULL;
    cudaError_t status = cudaMalloc(&ptr, bytes);
    if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();  // clear the sticky error before asking for the free memory
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        fatal("out of memory on the GPU allocating %s: asked for %.1f MiB, %.1f MiB free of %.1f MiB; "
              "try a smaller training.batch_size (gradient accumulation keeps tokens_per_step)",
              what, bytes / 1048576.0, free_bytes / 1048576.0, total_bytes / 1048576.0);
    }
    cuda_check(status, "cudaMalloc", __FILE__, __LINE__);
    return ptr;
}

static unsigned int ceil_div(size_t n, size_t d) { return (unsigned int)((n + d - 1) / d); }

// Butterfly reductions: every lane ends with the result, summed in the same order on every run.
static __device__ float warp_sum(float x) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

static __device__ double warp_sum_double(double x) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

static __device__ float warp_max(float x) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}

#endif
