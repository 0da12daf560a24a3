// The optimizer on the device: one fused pass over the chunks of the parameter buffer, each thread calling
// optimizer_element.h's element step (the CPU backend's exact code, so the same inputs give the same bits),
// and the chunk partial sums of the gradient norm and of the update-quality metrics, each summed inside its
// block in a fixed tree order, so that they too are the same on every run. The host adds the chunk sums up
// in chunk order, as the CPU backend does.
#ifndef LP_KERNELS_OPTIMIZER_CUH
#define LP_KERNELS_OPTIMIZER_CUH

#include "common.cuh"
#include "optimizer_element.h"

#define OPTIMIZER_THREADS 256

// Block `blockIdx.x` steps chunk first_chunk + blockIdx.x. chunk_sums: NULL, or (num_chunks) sums to fill.
static __global__ void __launch_bounds__(OPTIMIZER_THREADS)
optimizer_kernel(OptimizerBuffers buffers, const Chunk *chunks, int first_chunk, UpdateConstants k,
                 UpdateSums *chunk_sums) {
    __shared__ UpdateSums block_sums[OPTIMIZER_THREADS];
    int c = first_chunk + (int)blockIdx.x;
    Chunk chunk = chunks[c];
    UpdateSums mine = {};
    UpdateSums *sums = chunk_sums ? &mine : NULL;
    for (size_t i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x)
        optimizer_step_element(&buffers, &chunk, &k, i, sums);
    if (!chunk_sums) return;  // uniform over the block: no thread waits at a barrier alone
    block_sums[threadIdx.x] = mine;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) update_sums_add(&block_sums[threadIdx.x], &block_sums[threadIdx.x + half]);
        __syncthreads();
    }
    if (threadIdx.x == 0) chunk_sums[c] = block_sums[0];
}

// Steps chunks [first_chunk, end_chunk) of `chunks` (device array). chunk_sums (device, num_chunks) or NULL.
static void optimizer_step_gpu(const OptimizerBuffers *buffers, const Chunk *chunks, int first_chunk, int end_chunk,
                               const UpdateConstants *k, UpdateSums *chunk_sums, cudaStream_t stream) {
    if (end_chunk <= first_chunk) return;
    optimizer_kernel<<<end_chunk - first_chunk, OPTIMIZER_THREADS, 0, stream>>>(*buffers, chunks, first_chunk, *k,
                                                                               chunk_sums);
    CUDA_CHECK_LAUNCH();
}

// partial[c] = the sum of squares of chunk c's stored gradients, in double.
static __global__ void __launch_bounds__(OPTIMIZER_THREADS)
grad_square_sums_kernel(OptimizerBuffers buffers, const Chunk *chunks, int first_chunk, double *partial) {
    __shared__ double warp_sums[OPTIMIZER_THREADS / WARP_SIZE];
    int c = first_chunk + (int)blockIdx.x;
    Chunk chunk = chunks[c];
    double sum = 0.0;
    for (size_t i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x) {
        double g = optimizer_stored_grad(&buffers, i);
        sum += g * g;
    }
    sum = warp_sum_double(sum);
    if (threadIdx.x % WARP_SIZE == 0) warp_sums[threadIdx.x / WARP_SIZE] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < (int)(blockDim.x / WARP_SIZE); w++) total += warp_sums[w];
        partial[c] = total;
    }
}

static void grad_square_sums_gpu(const OptimizerBuffers *buffers, const Chunk *chunks, int first_chunk,
                                 int end_chunk, double *partial, cudaStream_t stream) {
    if (end_chunk <= first_chunk) return;
    grad_square_sums_kernel<<<end_chunk - first_chunk, OPTIMIZER_THREADS, 0, stream>>>(*buffers, chunks, first_chunk,
                                                                                      partial);
    CUDA_CHECK_LAUNCH();
}

#endif
