// Fused (flash-style) causal attention: the algorithm of src/cpu/attention_tiled.c (its header comment has
// the derivation) on the GPU, tiled by src/attention_tiles.h, never storing (B, NH, T, T).
//
// Forward: one block per (query tile of ATTENTION_TILE_Q rows, batch * head). Q, K, V tiles live in shared
// memory, cast to the attention operand format as they are loaded (quantize_operand_value). Pass 1 runs
// over the key tiles up to the diagonal: S = Q K^T, then each row's online softmax step (tile max, rescaled
// running sum), one thread per row summing the tile's exponentials in key order; lse = m + log(l). Pass 2
// recomputes S per key tile, P = cast(exp(S * scale - lse)) (0 above the diagonal and beyond T), O += P V.
// Backward: a D kernel (D_i = cast(dout_i) . out_i), one dK/dV kernel (one block per key tile, looping over
// the query tiles from the diagonal on, in increasing order) and one dQ kernel (one block per query tile,
// looping over the key tiles up to the diagonal, in increasing order). Each recomputes S, P = exp(S * scale
// - lse) and dP = dO V^T, forms dS = P (dP - D) scale and casts P and dS before their products. Every output
// element is summed by one block in a fixed order, no atomics: two runs give the same bits.
//
// Products: under bf16 operands, tensor cores (nvcuda::wmma bf16 16x16x16, fp32 accumulate); under fp32
// and eXmY operands (values kept in fp32), plain fp32 multiply-adds, each output summed in index order as
// the C reference sums it (no TF32: a simulated format must not be re-rounded). Fully masked causal tiles are
// skipped. Accumulators live in shared memory as fp32.
//
// Shapes: head size hs = C / NH a multiple of 16 up to 128; T any (tiles beyond T are zero-filled and masked).
#ifndef LP_KERNELS_FLASH_ATTENTION_CUH
#define LP_KERNELS_FLASH_ATTENTION_CUH

#include <mma.h>

#include <type_traits>

#include "attention_tiles.h"
#include "bf16_device.cuh"
#include "common.cuh"
#include "operand_cast.h"

// The kernels pair query tile t with key tile t as the causal diagonal, so the two tiles have one size.
static_assert(ATTENTION_TILE_Q == ATTENTION_TILE_K, "flash attention kernels need square tiles");

#define FLASH_THREADS 128  // 4 warps per block
#define FLASH_MAX_HEAD_SIZE 128

// ---- tile products: c (M x N, row-major fp32, ldc) = or += a (M x K) b (K x N) ----
// a is stored row-major (a[m * lda + k]) or, A_COLS, as its transpose (a[k * lda + m]); b likewise
// (b[k * ldb + n], or B_COLS: b[n * ldb + k]). M, N, K are multiples of 16. The whole block calls them.

template <bool A_COLS, bool B_COLS>
static __device__ void tile_product(float *c, int ldc, const float *a, int lda, const float *b, int ldb, int M,
                                    int N, int K, bool accumulate) {
    for (int e = threadIdx.x; e < M * N; e += blockDim.x) {
        int m = e / N, n = e % N;
        float sum = accumulate ? c[m * ldc + n] : 0.0f;  // continues the running sum, term by term in k order
        for (int k = 0; k < K; k++) {
            float x = A_COLS ? a[k * lda + m] : a[m * lda + k];
            float y = B_COLS ? b[n * ldb + k] : b[k * ldb + n];
            sum += x * y;
        }
        c[m * ldc + n] = sum;
    }
}

template <bool A_COLS, bool B_COLS>
static __device__ void tile_product(float *c, int ldc, const __nv_bfloat16 *a, int lda, const __nv_bfloat16 *b,
                                    int ldb, int M, int N, int K, bool accumulate) {
    using namespace nvcuda;
    typedef typename std::conditional<A_COLS, wmma::col_major, wmma::row_major>::type LayoutA;
    typedef typename std::conditional<B_COLS, wmma::col_major, wmma::row_major>::type LayoutB;
    int warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE, blocks_n = N / 16;
    for (int blk = warp; blk < (M / 16) * blocks_n; blk += warps) {
        int m0 = blk / blocks_n * 16, n0 = blk % blocks_n * 16;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        if (accumulate) wmma::load_matrix_sync(acc, c + m0 * ldc + n0, ldc, wmma::mem_row_major);
        else wmma::fill_fragment(acc, 0.0f);
        for (int k0 = 0; k0 < K; k0 += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb;
            wmma::load_matrix_sync(fa, A_COLS ? a + k0 * lda + m0 : a + m0 * lda + k0, lda);
            wmma::load_matrix_sync(fb, B_COLS ? b + n0 * ldb + k0 : b + k0 * ldb + n0, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(c + m0 * ldc + n0, acc, ldc, wmma::mem_row_major);
    }
}

// ---- tile loads ----

// rows (TILE x hs) of one head from src (rows `stride` elements apart, first row `first`), cast, zero beyond T.
template <typename Op, typename Src>
static __device__ void load_tile(Op *dst, const Src *src, size_t stride, int first, int T, int hs,
                                 const OperandCast *cast) {
    for (int e = threadIdx.x; e < ATTENTION_TILE_Q * hs; e += blockDim.x) {
        int r = e / hs, d = e % hs, t = first + r;
        float x = t < T ? quantize_operand_value(load_f32(src[(size_t)t * stride + d]), cast) : 0.0f;
        store_rounded(&dst[e], x);
    }
}

static __device__ void zero_floats(float *x, int n) {
    for (int e = threadIdx.x; e < n; e += blockDim.x) x[e] = 0.0f;
}

// The shared-memory carving of a kernel: consecutive regions, each 128-byte aligned (wmma needs 32).
typedef struct {
    unsigned char *next;
} SharedCarver;

template <typename X>
static __device__ X *carve(SharedCarver *s, int count) {
    X *p = (X *)s->next;
    s->next += ((size_t)count * sizeof(X) + 127) / 128 * 128;
    return p;
}

static size_t carved_bytes(size_t count, size_t size) { return (count * size + 127) / 128 * 128; }

// p (the operand copy) may share its fp32 scores' storage when the operand type is float: each element is
// read, then written, by one thread.
template <typename Op>
static __device__ Op *carve_operand_of(SharedCarver *s, float *scores, int count) {
    if (sizeof(Op) == sizeof(float)) return (Op *)scores;
    return carve<Op>(s, count);
}

template <typename Op>
static size_t operand_copy_bytes(int count) {
    return sizeof(Op) == sizeof(float) ? 0 : carved_bytes(count, sizeof(Op));
}

#define TILE_ELEMS (ATTENTION_TILE_Q * ATTENTION_TILE_K)

// ---- forward ----

template <typename Act, typename Op>
static size_t flash_forward_shared_bytes(int hs) {
    return 3 * carved_bytes(ATTENTION_TILE_Q * hs, sizeof(Op)) + carved_bytes(TILE_ELEMS, sizeof(float)) +
           operand_copy_bytes<Op>(TILE_ELEMS) + carved_bytes(ATTENTION_TILE_Q * hs, sizeof(float)) +
           carved_bytes(ATTENTION_TILE_Q, sizeof(float));
}

// grid (query tiles, B * NH); out: (B, T, C), lse: (B, NH, T), qkv: (B, T, 3C).
template <typename Act, typename Op>
static __global__ void flash_forward_kernel(Act *out, float *lse, const Act *qkv, int T, int C, int NH,
                                            OperandCast cast) {
    extern __shared__ __align__(128) unsigned char flash_shared[];
    int hs = C / NH, tile = blockIdx.x, b = blockIdx.y / NH, h = blockIdx.y % NH;
    int q0 = tile * ATTENTION_TILE_Q;
    float scale = 1.0f / sqrtf((float)hs);
    SharedCarver s = {flash_shared};
    Op *q = carve<Op>(&s, ATTENTION_TILE_Q * hs), *k = carve<Op>(&s, ATTENTION_TILE_K * hs);
    Op *v = carve<Op>(&s, ATTENTION_TILE_K * hs);
    float *scores = carve<float>(&s, TILE_ELEMS);       // (TILE_Q, TILE_K) q . k, unscaled
    Op *p = carve_operand_of<Op>(&s, scores, TILE_ELEMS);  // (TILE_Q, TILE_K) cast probabilities
    float *o = carve<float>(&s, ATTENTION_TILE_Q * hs);   // (TILE_Q, hs) output accumulator
    float *row_lse = carve<float>(&s, ATTENTION_TILE_Q);
    size_t stride = 3 * (size_t)C;
    const Act *seq = qkv + (size_t)b * T * stride;  // (T, 3C)

    load_tile(q, seq + h * hs, stride, q0, T, hs, &cast);
    float m = -INFINITY, l = 0.0f;  // thread r < TILE_Q: row q0 + r's running max and sum
    for (int kt = 0; kt <= tile; kt++) {  // key tiles beyond the diagonal are fully masked
        int k0 = kt * ATTENTION_TILE_K;
        load_tile(k, seq + C + h * hs, stride, k0, T, hs, &cast);
        __syncthreads();
        tile_product<false, true>(scores, ATTENTION_TILE_K, q, hs, k, hs, ATTENTION_TILE_Q, ATTENTION_TILE_K, hs, false);
        __syncthreads();
        int r = threadIdx.x, i = q0 + r;
        if (r < ATTENTION_TILE_Q && i < T) {
            int n = min(ATTENTION_TILE_K, i + 1 - k0);  // keys k0 .. i of this tile
            float tile_max = -INFINITY;
            for (int j = 0; j < n; j++) tile_max = fmaxf(tile_max, scores[r * ATTENTION_TILE_K + j] * scale);
            float m_new = fmaxf(m, tile_max), tile_sum = 0.0f;
            for (int j = 0; j < n; j++) tile_sum += expf(scores[r * ATTENTION_TILE_K + j] * scale - m_new);
            l = l * expf(m - m_new) + tile_sum;
            m = m_new;
        }
        __syncthreads();  // before the next tile's K overwrites k
    }
    if (threadIdx.x < ATTENTION_TILE_Q) row_lse[threadIdx.x] = m + logf(l);
    zero_floats(o, ATTENTION_TILE_Q * hs);
    for (int kt = 0; kt <= tile; kt++) {
        int k0 = kt * ATTENTION_TILE_K;
        load_tile(k, seq + C + h * hs, stride, k0, T, hs, &cast);
        load_tile(v, seq + 2 * C + h * hs, stride, k0, T, hs, &cast);
        __syncthreads();
        tile_product<false, true>(scores, ATTENTION_TILE_K, q, hs, k, hs, ATTENTION_TILE_Q, ATTENTION_TILE_K, hs, false);
        __syncthreads();
        for (int e = threadIdx.x; e < TILE_ELEMS; e += blockDim.x) {
            int i = q0 + e / ATTENTION_TILE_K, j = k0 + e % ATTENTION_TILE_K;
            float prob = i < T && j <= i ? expf(scores[e] * scale - row_lse[e / ATTENTION_TILE_K]) : 0.0f;
            store_rounded(&p[e], quantize_operand_value(prob, &cast));
        }
        __syncthreads();
        tile_product<false, false>(o, hs, p, ATTENTION_TILE_K, v, hs, ATTENTION_TILE_Q, hs, ATTENTION_TILE_K, true);
        __syncthreads();
    }
    for (int e = threadIdx.x; e < ATTENTION_TILE_Q * hs; e += blockDim.x) {
        int i = q0 + e / hs, d = e % hs;
        if (i < T) store_rounded(&out[((size_t)b * T + i) * C + h * hs + d], o[e]);
    }
    for (int r = threadIdx.x; r < ATTENTION_TILE_Q; r += blockDim.x)
        if (q0 + r < T) lse[((size_t)b * NH + h) * T + q0 + r] = row_lse[r];
}

// ---- backward ----

// D (B, NH, T) = cast(dout) . out per row and head, summed in channel order. One thread per (b, t, h).
template <typename Act>
static __global__ void flash_row_dots_kernel(float *D, const float *dout, const Act *out, int B, int T, int C, int NH,
                                             OperandCast cast) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * NH) return;
    int h = (int)(idx % NH), hs = C / NH;
    size_t bt = idx / NH;  // b * T + t
    const float *g = dout + bt * C + h * hs;
    const Act *y = out + bt * C + h * hs;
    float sum = 0.0f;
    for (int d = 0; d < hs; d++) sum += quantize_operand_value(g[d], &cast) * load_f32(y[d]);
    size_t b = bt / T, t = bt % T;
    D[(b * NH + h) * T + t] = sum;
}

// The scratch of both gradient kernels, over one query tile and one key tile.
template <typename Op>
struct GradTiles {
    Op *q, *k, *v, *dout;  // (TILE, hs) each, cast
    float *scores, *dp;    // (TILE_Q, TILE_K): q . k, then dout . v
    Op *p, *ds;            // (TILE_Q, TILE_K) cast probabilities and score gradients
    float *lse, *D;        // (TILE_Q) of the query tile's rows
};

template <typename Op>
static __device__ GradTiles<Op> carve_grad_tiles(SharedCarver *s, int hs) {
    GradTiles<Op> g;
    g.q = carve<Op>(s, ATTENTION_TILE_Q * hs);
    g.k = carve<Op>(s, ATTENTION_TILE_K * hs);
    g.v = carve<Op>(s, ATTENTION_TILE_K * hs);
    g.dout = carve<Op>(s, ATTENTION_TILE_Q * hs);
    g.scores = carve<float>(s, TILE_ELEMS);
    g.dp = carve<float>(s, TILE_ELEMS);
    g.p = carve_operand_of<Op>(s, g.scores, TILE_ELEMS);
    g.ds = carve_operand_of<Op>(s, g.dp, TILE_ELEMS);
    g.lse = carve<float>(s, ATTENTION_TILE_Q);
    g.D = carve<float>(s, ATTENTION_TILE_Q);
    return g;
}

// Plus two (TILE, hs) fp32 accumulators (dK and dV, or dQ and an unused one).
template <typename Op>
static size_t flash_backward_shared_bytes(int hs) {
    return 4 * carved_bytes(ATTENTION_TILE_Q * hs, sizeof(Op)) + 2 * carved_bytes(TILE_ELEMS, sizeof(float)) +
           2 * operand_copy_bytes<Op>(TILE_ELEMS) + 2 * carved_bytes(ATTENTION_TILE_Q, sizeof(float)) +
           2 * carved_bytes(ATTENTION_TILE_Q * hs, sizeof(float));
}

// The query tile's rows: q, dout (cast on load), lse and D.
template <typename Act, typename Op>
static __device__ void load_query_side(GradTiles<Op> *g, const Act *seq, const float *dout_seq, const float *lse_head,
                                       const float *D_head, int q0, int T, int C, int h, int hs,
                                       const OperandCast *cast) {
    load_tile(g->q, seq + h * hs, 3 * (size_t)C, q0, T, hs, cast);
    load_tile(g->dout, dout_seq + h * hs, (size_t)C, q0, T, hs, cast);
    for (int r = threadIdx.x; r < ATTENTION_TILE_Q; r += blockDim.x) {
        g->lse[r] = q0 + r < T ? lse_head[q0 + r] : 0.0f;
        g->D[r] = q0 + r < T ? D_head[q0 + r] : 0.0f;
    }
}

// S = Q K^T, dP = dO V^T, then P = cast(exp(S scale - lse)) and dS = cast(P (dP - D) scale), 0 where masked.
template <typename Op>
static __device__ void score_gradients(GradTiles<Op> *g, int q0, int k0, int T, int hs, float scale,
                                       const OperandCast *cast) {
    tile_product<false, true>(g->scores, ATTENTION_TILE_K, g->q, hs, g->k, hs, ATTENTION_TILE_Q, ATTENTION_TILE_K, hs, false);
    tile_product<false, true>(g->dp, ATTENTION_TILE_K, g->dout, hs, g->v, hs, ATTENTION_TILE_Q, ATTENTION_TILE_K, hs, false);
    __syncthreads();
    for (int e = threadIdx.x; e < TILE_ELEMS; e += blockDim.x) {
        int r = e / ATTENTION_TILE_K, i = q0 + r, j = k0 + e % ATTENTION_TILE_K;
        float prob = 0.0f, ds = 0.0f;
        if (i < T && j <= i) {
            prob = expf(g->scores[e] * scale - g->lse[r]);
            ds = prob * (g->dp[e] - g->D[r]) * scale;
        }
        store_rounded(&g->p[e], quantize_operand_value(prob, cast));
        store_rounded(&g->ds[e], quantize_operand_value(ds, cast));
    }
    __syncthreads();
}

// Where the backward puts dqkv (B, T, 3C), each NULL when not wanted: the fp32 gradient; its bf16 rounding
// (the operand of the qkv linear's products); the partials of its column sums (the qkv bias gradient's phase
// 1, column_sum.cuh) per block of rows = one query tile of one sequence, (B * query tiles, 3C), each the sum
// of the tile's rows in order (T a multiple of the tile: column_partials_kernel's blocks and bits).
typedef struct {
    float *fp32;
    __nv_bfloat16 *bf16;
    float *column_partials;
} FlashGradients;

static int flash_partial_rows(int B, int T) { return B * ((T + ATTENTION_TILE_Q - 1) / ATTENTION_TILE_Q); }

// One (TILE, hs) fp32 gradient (part 0 q, 1 k, 2 v) of rows first.. of sequence b, where `out` asks.
static __device__ void store_gradient(const FlashGradients *out, const float *acc, int first, int T, int C, int h,
                                      int hs, int part, int b) {
    for (int e = threadIdx.x; e < ATTENTION_TILE_Q * hs; e += blockDim.x) {
        int t = first + e / hs, d = e % hs;
        if (t >= T) continue;
        size_t at = ((size_t)b * T + t) * 3 * C + (size_t)part * C + h * hs + d;
        if (out->fp32) out->fp32[at] = acc[e];
        if (out->bf16) out->bf16[at] = bf16_device_from_f32(acc[e]);
    }
    if (!out->column_partials) return;
    int rows = min(ATTENTION_TILE_Q, T - first);
    size_t block = (size_t)b * ((T + ATTENTION_TILE_Q - 1) / ATTENTION_TILE_Q) + first / ATTENTION_TILE_Q;
    for (int d = threadIdx.x; d < hs; d += blockDim.x) {
        float sum = 0.0f;
        for (int r = 0; r < rows; r++) sum += acc[r * hs + d];
        out->column_partials[block * 3 * C + (size_t)part * C + h * hs + d] = sum;
    }
}

// grid (key tiles, B * NH): dK, dV of one key tile over the query tiles from the diagonal on.
template <typename Act, typename Op>
static __global__ void flash_key_grad_kernel(FlashGradients out, const float *dout, const Act *qkv, const float *lse,
                                             const float *D, int T, int C, int NH, OperandCast cast) {
    extern __shared__ __align__(128) unsigned char flash_shared[];
    int hs = C / NH, tile = blockIdx.x, b = blockIdx.y / NH, h = blockIdx.y % NH;
    int k0 = tile * ATTENTION_TILE_K, query_tiles = (T + ATTENTION_TILE_Q - 1) / ATTENTION_TILE_Q;
    float scale = 1.0f / sqrtf((float)hs);
    SharedCarver s = {flash_shared};
    GradTiles<Op> g = carve_grad_tiles<Op>(&s, hs);
    float *dk = carve<float>(&s, ATTENTION_TILE_K * hs), *dv = carve<float>(&s, ATTENTION_TILE_K * hs);
    size_t stride = 3 * (size_t)C;
    const Act *seq = qkv + (size_t)b * T * stride;
    const float *dout_seq = dout + (size_t)b * T * C;
    const float *lse_head = lse + ((size_t)b * NH + h) * T, *D_head = D + ((size_t)b * NH + h) * T;

    load_tile(g.k, seq + C + h * hs, stride, k0, T, hs, &cast);
    load_tile(g.v, seq + 2 * C + h * hs, stride, k0, T, hs, &cast);
    zero_floats(dk, ATTENTION_TILE_K * hs);
    zero_floats(dv, ATTENTION_TILE_K * hs);
    for (int qt = tile; qt < query_tiles; qt++) {  // earlier query tiles see none of these keys
        int q0 = qt * ATTENTION_TILE_Q;
        load_query_side(&g, seq, dout_seq, lse_head, D_head, q0, T, C, h, hs, &cast);
        __syncthreads();
        score_gradients(&g, q0, k0, T, hs, scale, &cast);
        tile_product<true, false>(dv, hs, g.p, ATTENTION_TILE_K, g.dout, hs, ATTENTION_TILE_K, hs, ATTENTION_TILE_Q, true);
        tile_product<true, false>(dk, hs, g.ds, ATTENTION_TILE_K, g.q, hs, ATTENTION_TILE_K, hs, ATTENTION_TILE_Q, true);
        __syncthreads();
    }
    store_gradient(&out, dk, k0, T, C, h, hs, 1, b);
    store_gradient(&out, dv, k0, T, C, h, hs, 2, b);
}

// grid (query tiles, B * NH): dQ of one query tile over the key tiles up to the diagonal.
template <typename Act, typename Op>
static __global__ void flash_query_grad_kernel(FlashGradients out, const float *dout, const Act *qkv,
                                               const float *lse, const float *D, int T, int C, int NH,
                                               OperandCast cast) {
    extern __shared__ __align__(128) unsigned char flash_shared[];
    int hs = C / NH, tile = blockIdx.x, b = blockIdx.y / NH, h = blockIdx.y % NH;
    int q0 = tile * ATTENTION_TILE_Q;
    float scale = 1.0f / sqrtf((float)hs);
    SharedCarver s = {flash_shared};
    GradTiles<Op> g = carve_grad_tiles<Op>(&s, hs);
    float *dq = carve<float>(&s, ATTENTION_TILE_Q * hs);
    size_t stride = 3 * (size_t)C;
    const Act *seq = qkv + (size_t)b * T * stride;

    load_query_side(&g, seq, dout + (size_t)b * T * C, lse + ((size_t)b * NH + h) * T, D + ((size_t)b * NH + h) * T,
                    q0, T, C, h, hs, &cast);
    zero_floats(dq, ATTENTION_TILE_Q * hs);
    for (int kt = 0; kt <= tile; kt++) {  // key tiles beyond the diagonal are fully masked
        int k0 = kt * ATTENTION_TILE_K;
        load_tile(g.k, seq + C + h * hs, stride, k0, T, hs, &cast);
        load_tile(g.v, seq + 2 * C + h * hs, stride, k0, T, hs, &cast);
        __syncthreads();
        score_gradients(&g, q0, k0, T, hs, scale, &cast);
        tile_product<false, false>(dq, hs, g.ds, ATTENTION_TILE_K, g.k, hs, ATTENTION_TILE_Q, hs, ATTENTION_TILE_K, true);
        __syncthreads();
    }
    store_gradient(&out, dq, q0, T, C, h, hs, 0, b);
}

// ---- host launchers ----

static void check_flash_shape(int C, int NH, const OperandCast *cast) {
    int hs = C / NH;
    if (hs % 16 != 0 || hs > FLASH_MAX_HEAD_SIZE)
        fatal("fused attention takes head sizes (n_embd / n_head) that are multiples of 16 up to %d; this model has "
              "n_embd %d / n_head %d = %d (set precision.attention_impl = materialized)", FLASH_MAX_HEAD_SIZE, C, NH, hs);
    if (cast->format == MATMUL_FP8)
        fatal("internal: fused attention with fp8 operands (set precision.attention_impl = materialized)");
}

// Opts a kernel in to the dynamic shared memory it needs beyond the default 48 KiB.
template <typename Kernel>
static void allow_shared_bytes(Kernel kernel, size_t bytes) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <typename Act, typename Op>
static void flash_forward_launch(Act *out, float *lse, const Act *qkv, int B, int T, int C, int NH, OperandCast cast,
                                 cudaStream_t stream) {
    size_t bytes = flash_forward_shared_bytes<Act, Op>(C / NH);
    allow_shared_bytes(flash_forward_kernel<Act, Op>, bytes);
    dim3 grid(ceil_div(T, ATTENTION_TILE_Q), B * NH);
    flash_forward_kernel<Act, Op><<<grid, FLASH_THREADS, bytes, stream>>>(out, lse, qkv, T, C, NH, cast);
    CUDA_CHECK_LAUNCH();
}

// qkv: (B, T, 3C) Act; out: (B, T, C) Act, written (rounded once to Act); lse: (B, NH, T) fp32. The operands
// are cast by `cast` (fp32, bf16 or eXmY; fp8 is refused).
template <typename Act>
static void flash_attention_forward_gpu(Act *out, float *lse, const Act *qkv, int B, int T, int C, int NH,
                                        OperandCast cast, cudaStream_t stream) {
    check_flash_shape(C, NH, &cast);
    if (cast.format == MATMUL_BF16) flash_forward_launch<Act, __nv_bfloat16>(out, lse, qkv, B, T, C, NH, cast, stream);
    else flash_forward_launch<Act, float>(out, lse, qkv, B, T, C, NH, cast, stream);
}

template <typename Act, typename Op>
static void flash_backward_launch(const FlashGradients *out, const float *dout, const Act *qkv, const float *lse,
                                  const float *D, int B, int T, int C, int NH, OperandCast cast, cudaStream_t stream) {
    size_t bytes = flash_backward_shared_bytes<Op>(C / NH);
    dim3 key_grid(ceil_div(T, ATTENTION_TILE_K), B * NH), query_grid(ceil_div(T, ATTENTION_TILE_Q), B * NH);
    allow_shared_bytes(flash_key_grad_kernel<Act, Op>, bytes);
    flash_key_grad_kernel<Act, Op><<<key_grid, FLASH_THREADS, bytes, stream>>>(*out, dout, qkv, lse, D, T, C, NH, cast);
    CUDA_CHECK_LAUNCH();
    allow_shared_bytes(flash_query_grad_kernel<Act, Op>, bytes);
    flash_query_grad_kernel<Act, Op><<<query_grid, FLASH_THREADS, bytes, stream>>>(*out, dout, qkv, lse, D, T, C, NH,
                                                                                   cast);
    CUDA_CHECK_LAUNCH();
}

// dqkv (B, T, 3C) = the gradient of attention, OVERWRITTEN, in the forms `grads` asks for; dout: (B, T, C) fp32
// uncast (cast on load); out, lse: the forward's; scratch: (B, NH, T) floats for D.
template <typename Act>
static void flash_attention_backward_gpu(const FlashGradients *grads, const float *dout, const Act *qkv,
                                         const Act *out, const float *lse, float *scratch, int B, int T, int C,
                                         int NH, OperandCast cast, cudaStream_t stream) {
    check_flash_shape(C, NH, &cast);
    size_t rows = (size_t)B * T * NH;
    flash_row_dots_kernel<Act><<<ceil_div(rows, 256), 256, 0, stream>>>(scratch, dout, out, B, T, C, NH, cast);
    CUDA_CHECK_LAUNCH();
    if (cast.format == MATMUL_BF16)
        flash_backward_launch<Act, __nv_bfloat16>(grads, dout, qkv, lse, scratch, B, T, C, NH, cast, stream);
    else
        flash_backward_launch<Act, float>(grads, dout, qkv, lse, scratch, B, T, C, NH, cast, stream);
}

#endif
