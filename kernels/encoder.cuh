// Token + position embedding on the device (src/cpu/encoder.c).
// The backward is deterministic and bit-identical to the CPU: every dwte row and every dwpe row adds its
// dout rows in (b, t) order. For dwte that needs the rows grouped by token, which a counting sort on the
// host provides once per batch (the tokens come from the host anyway): EncoderIndex.
#ifndef LP_KERNELS_ENCODER_CUH
#define LP_KERNELS_ENCODER_CUH

#include "bf16_device.cuh"
#include "common.cuh"

#define ENCODER_THREADS 256

// The rows of a batch grouped by token. A bucket is one distinct token: its rows are
// positions[bucket_start[k] .. bucket_start[k+1]) in increasing row order (row = b*T + t).
// Device arrays; num_buckets, capacity and rows are host values.
typedef struct {
    int *positions;     // (N) row indices sorted by token, stable
    int *bucket_start;  // (N+1) first entry of each bucket in positions; bucket_start[num_buckets] = rows
    int *bucket_token;  // (N) the token of each bucket
    int num_buckets;    // distinct tokens of the last build
    int capacity;       // N of encoder_index_alloc: the most rows a build may have
    int rows;           // N of the last build (the backward checks B*T against it)
} EncoderIndex;

static void encoder_index_alloc(EncoderIndex *ix, int N) {
    ix->positions = (int *)cuda_malloc_checked((size_t)N * sizeof(int), "encoder index positions");
    ix->bucket_start = (int *)cuda_malloc_checked((size_t)(N + 1) * sizeof(int), "encoder index bucket starts");
    ix->bucket_token = (int *)cuda_malloc_checked((size_t)N * sizeof(int), "encoder index bucket tokens");
    ix->num_buckets = 0;
    ix->capacity = N;
    ix->rows = 0;
}

static void encoder_index_free(EncoderIndex *ix) {
    CUDA_CHECK(cudaFree(ix->positions));
    CUDA_CHECK(cudaFree(ix->bucket_start));
    CUDA_CHECK(cudaFree(ix->bucket_token));
    ix->positions = ix->bucket_start = ix->bucket_token = NULL;
    ix->num_buckets = ix->capacity = ix->rows = 0;
}

// Counting sort of the N rows by token, on the host, then copies to the device on `stream`.
// host_tokens: (N) in [0, vocab); host_scratch: 3N+1+vocab ints owned by the caller.
// The copies are ordered after earlier work on `stream` (so a previous backward still reading the index
// finishes first) and the stream is synchronised before returning, so host_scratch may be reused at once.
static void encoder_index_build(EncoderIndex *ix, const int *host_tokens, int N, int vocab, int *host_scratch,
                                cudaStream_t stream) {
    if (N > ix->capacity) fatal("encoder index: %d rows but room for %d", N, ix->capacity);
    int *positions = host_scratch;           // (N)
    int *bucket_start = positions + N;       // (N+1)
    int *bucket_token = bucket_start + N + 1;  // (N)
    int *next = bucket_token + N;            // (vocab) counts, then each token's next slot in positions
    for (int v = 0; v < vocab; v++) next[v] = 0;
    for (int i = 0; i < N; i++) {
        int token = host_tokens[i];
        if (token < 0 || token >= vocab) fatal("encoder index: token %d at row %d is outside [0, %d)", token, i, vocab);
        next[token]++;
    }
    int buckets = 0, offset = 0;
    for (int v = 0; v < vocab; v++) {
        int count = next[v];
        if (count == 0) continue;
        bucket_start[buckets] = offset;
        bucket_token[buckets] = v;
        buckets++;
        next[v] = offset;
        offset += count;
    }
    bucket_start[buckets] = N;
    // Rows in increasing order: each bucket lists its rows in (b, t) order, the CPU's summation order.
    for (int i = 0; i < N; i++) positions[next[host_tokens[i]]++] = i;
    ix->num_buckets = buckets;
    ix->rows = N;
    if (N == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(ix->positions, positions, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(ix->bucket_start, bucket_start, (size_t)(buckets + 1) * sizeof(int),
                               cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(ix->bucket_token, bucket_token, (size_t)buckets * sizeof(int), cudaMemcpyHostToDevice,
                               stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // host_scratch is the caller's again
}

// out (N, C) = wte[token] + wpe[t], the embeddings read in their stored type (Param), the sum stored rounded
// to the activations' (Act); one thread per output element.
template <typename Act, typename Param>
static __global__ void encoder_forward_kernel(Act *out, const int *tokens, const Param *wte, const Param *wpe, int N,
                                              int T, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    int row = (int)(i / C), c = (int)(i % C);
    int t = row % T;
    store_rounded(&out[i], load_f32(wte[(size_t)tokens[row] * C + c]) + load_f32(wpe[(size_t)t * C + c]));
}

// out: (B, T, C), tokens: (B, T), wte: (Vp, C), wpe: (maxT, C)
template <typename Act, typename Param>
static void encoder_forward_gpu(Act *out, const int *tokens, const Param *wte, const Param *wpe, int B, int T, int C,
                                cudaStream_t stream) {
    size_t n = (size_t)B * T * C;
    if (n == 0) return;
    encoder_forward_kernel<<<ceil_div(n, ENCODER_THREADS), ENCODER_THREADS, 0, stream>>>(out, tokens, wte, wpe, B * T,
                                                                                        T, C);
    CUDA_CHECK_LAUNCH();
}

// One block per distinct token, threads over channels: the token's dwte row adds its dout rows in row order.
static __global__ void encoder_backward_wte_kernel(float *dwte, const float *dout, const int *positions,
                                                   const int *bucket_start, const int *bucket_token, int C) {
    int bucket = blockIdx.x;
    int first = bucket_start[bucket], last = bucket_start[bucket + 1];
    float *row = dwte + (size_t)bucket_token[bucket] * C;  // (C)
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = row[c];
        for (int k = first; k < last; k++) acc += dout[(size_t)positions[k] * C + c];
        row[c] = acc;
    }
}

// One thread per (t, c) of dwpe: adds dout[b, t, c] over b in order.
static __global__ void encoder_backward_wpe_kernel(float *dwpe, const float *dout, int B, int T, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // t * C + c
    if (i >= (size_t)T * C) return;
    float acc = dwpe[i];
    for (int b = 0; b < B; b++) acc += dout[(size_t)b * T * C + i];
    dwpe[i] = acc;
}

// dwte: (Vp, C) +=, dwpe: (maxT, C) +=, dout: (B, T, C); ix built from this batch's tokens on the host.
static void encoder_backward_gpu(float *dwte, float *dwpe, const float *dout, const EncoderIndex *ix, int B, int T,
                                 int C, cudaStream_t stream) {
    if (ix->rows != B * T) fatal("encoder backward: index built for %d rows, batch has %d", ix->rows, B * T);
    if (B * T == 0 || C == 0) return;
    encoder_backward_wte_kernel<<<ix->num_buckets, ENCODER_THREADS, 0, stream>>>(dwte, dout, ix->positions,
                                                                                ix->bucket_start, ix->bucket_token, C);
    CUDA_CHECK_LAUNCH();
    encoder_backward_wpe_kernel<<<ceil_div((size_t)T * C, ENCODER_THREADS), ENCODER_THREADS, 0, stream>>>(dwpe, dout,
                                                                                                        B, T, C);
    CUDA_CHECK_LAUNCH();
}

#endif
