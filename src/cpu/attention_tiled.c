// Causal multi-head self-attention, fused (flash-style): the plain-C reference of the algorithm that the CUDA
// kernels of kernels/flash_attention.cuh run, and what the CPU backend runs under precision.attention_impl =
// fused. It never stores the (T, T) probabilities: the forward keeps one log-sum-exp per query row, and the
// backward recomputes the probabilities from it.
//
// Forward, per (batch b, head h, tile of ATTENTION_TILE_Q query rows), each row i on its own:
//   pass 1: over key tiles of ATTENTION_TILE_K keys (causal: keys j <= i only), s_ij = (q_i . k_j) * scale in
//           fp32, and the online softmax: per tile, m_new = max(m, max_j s_ij), l = l * exp(m - m_new) +
//           sum_j exp(s_ij - m_new) (the tile's sum in key order), m = m_new; then lse_i = m + log(l).
//   pass 2: p_ij = exp(s_ij - lse_i), cast to the operand format, out_i = sum_j cast(p_ij) v_j in key order.
// Why two passes, when one pass could rescale the output instead: the probabilities that meet V are the
// normalised ones, as in attention.c (same semantics, so `fused` and `materialized` differ by fp32 rounding
// only, and a cast of p casts the probability itself, not an unnormalised exponential); and the backward's
// exp(s - lse) reproduces the forward's p bit for bit (both call probability() below with the stored lse).
// The price is a second QK^T, about 1-2% of a GPT-2 step's FLOPs.
//
// Backward, deterministic (each output summed by one task in a fixed order, no atomics):
//   D_i = sum_d dout_i[d] * out_i[d]: FlashAttention's identity D_i = sum_j p_ij dp_ij. In exact arithmetic
//   they are equal; with cast probabilities (bf16) out holds the cast p's products, so D differs from
//   attention.c's sum_j p_ij dp_ij at the level of that cast's rounding (and of out's bf16 storage under
//   bf16 activations: D reads the stored out).
//   Then with p_ij recomputed, dp_ij = dout_i . v_j and ds_ij = p_ij * (dp_ij - D_i) * scale (the gradient of
//   q_i . k_j, scale included, as in attention.c), ds cast to the operand format:
//   (a) per key tile, each key j: dv_j = sum_{i >= j} cast(p_ij) dout_i, dk_j = sum_{i >= j} cast(ds_ij) q_i,
//       queries in increasing order;
//   (b) per query tile, each row i: dq_i = sum_{j <= i} cast(ds_ij) k_j, keys in increasing order.
//   dqkv is OVERWRITTEN, unlike attention_backward, which adds.
// Sums over channels and over keys or queries run in index order, one row or key per task, so results do
// not depend on the thread count. fp8 attention is refused: it scales p and ds per query row by the row's
// current amax, which the tiled passes do not know in advance (policy.c refuses the combination).
#include <math.h>
#include <stdlib.h>

#include "attention_tiles.h"
#include "cpu/ops.h"
#include "util.h"

// One head of one sequence as the passes read it: row t of q, k or v at q + t * stride.
typedef struct {
    const float *q, *k, *v;  // (T, hs) each, rows `stride` apart
    size_t stride;           // 3C
    int hs;
    float scale;  // 1 / sqrt(hs)
} HeadView;

static HeadView head_view(const float *qkv, int b, int h, int T, int C, int NH) {
    int hs = C / NH;
    const float *seq = qkv + (size_t)b * T * 3 * C;  // (T, 3C)
    HeadView x = {seq + h * hs, seq + C + h * hs, seq + 2 * C + h * hs, 3 * (size_t)C, hs, 1.0f / sqrtf((float)hs)};
    return x;
}

static const float *row(const float *base, size_t stride, int t) { return base + (size_t)t * stride; }

static int min_int(int a, int b) { return a < b ? a : b; }

// Summed in channel order (the kernels' fp32 path sums in the same order).
static float dot_in_order(const float *a, const float *b, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

// y += alpha * x
static void axpy(float *y, float alpha, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

static float score(const HeadView *x, int i, int j) {
    return dot_in_order(row(x->q, x->stride, i), row(x->k, x->stride, j), x->hs) * x->scale;
}

// The normalised probability p_ij, the same bits in the forward's second pass and in the backward.
static float probability(const HeadView *x, int i, int j, float lse_i) { return expf(score(x, i, j) - lse_i); }

static void refuse_scaled_casts(const OperandCast *cast) {
    if (cast->format == MATMUL_FP8)
        fatal("internal: fused attention with fp8 operands (set precision.attention_impl = materialized)");
}

// Pass 1 of query row i: the online softmax over key tiles. Returns lse_i = m + log(l).
static float row_log_sum_exp(const HeadView *x, int i) {
    float s[ATTENTION_TILE_K];
    float m = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 <= i; k0 += ATTENTION_TILE_K) {
        int n = min_int(ATTENTION_TILE_K, i + 1 - k0);  // keys k0 .. k0 + n - 1, none beyond i (causal)
        float tile_max = -INFINITY;
        for (int j = 0; j < n; j++) {
            s[j] = score(x, i, k0 + j);
            tile_max = fmaxf(tile_max, s[j]);
        }
        float m_new = fmaxf(m, tile_max);
        float tile_sum = 0.0f;
        for (int j = 0; j < n; j++) tile_sum += expf(s[j] - m_new);
        l = l * expf(m - m_new) + tile_sum;  // the first tile: l = 0 * exp(-inf) + tile_sum
        m = m_new;
    }
    return m + logf(l);
}

// Pass 2 of query row i: out (hs) = sum over keys j <= i of cast(p_ij) v_j.
static void row_output(float *out, const HeadView *x, int i, float lse_i, const OperandCast *cast) {
    for (int d = 0; d < x->hs; d++) out[d] = 0.0f;
    for (int j = 0; j <= i; j++)
        axpy(out, quantize_operand_value(probability(x, i, j, lse_i), cast), row(x->v, x->stride, j), x->hs);
}

static int num_tiles(int T, int tile) { return (T + tile - 1) / tile; }

void attention_tiled_forward(float *out, float *lse, const float *qkv, int B, int T, int C, int NH,
                             const OperandCast *cast) {
    refuse_scaled_casts(cast);
    int hs = C / NH, query_tiles = num_tiles(T, ATTENTION_TILE_Q);
#pragma omp parallel for collapse(3) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int tile = 0; tile < query_tiles; tile++) {
                HeadView x = head_view(qkv, b, h, T, C, NH);
                int first = tile * ATTENTION_TILE_Q, end = min_int(first + ATTENTION_TILE_Q, T);
                for (int i = first; i < end; i++) {
                    float row_lse = row_log_sum_exp(&x, i);
                    lse[((size_t)b * NH + h) * T + i] = row_lse;
                    row_output(out + ((size_t)b * T + i) * C + h * hs, &x, i, row_lse, cast);
                }
            }
}

void attention_tiled_forward_last(float *out, const float *qkv, int T, int C, int NH, const OperandCast *cast) {
    refuse_scaled_casts(cast);
    int hs = C / NH;
#pragma omp parallel for schedule(static)
    for (int h = 0; h < NH; h++) {
        HeadView x = head_view(qkv, 0, h, T, C, NH);
        row_output(out + h * hs, &x, T - 1, row_log_sum_exp(&x, T - 1), cast);
    }
}

// D (B, NH, T) = each row's dout . out per head.
static void row_dots(float *D, const float *dout, const float *out, int B, int T, int C, int NH) {
    int hs = C / NH;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                size_t at = ((size_t)b * T + t) * C + h * hs;
                D[((size_t)b * NH + h) * T + t] = dot_in_order(dout + at, out + at, hs);
            }
}

// The backward's view of one head: the forward's and the gradient's rows.
typedef struct {
    HeadView x;
    const float *dout;  // (T, hs), rows C apart
    const float *lse;   // (T)
    const float *D;     // (T)
    int C;
} HeadGradView;

static const float *dout_row(const HeadGradView *g, int i) { return g->dout + (size_t)i * g->C; }

// ds_ij, the gradient of q_i . k_j (uncast), with p_ij in *p: the same bits in both backward passes.
static float score_gradient(const HeadGradView *g, int i, int j, float *p) {
    *p = probability(&g->x, i, j, g->lse[i]);
    float dp = dot_in_order(dout_row(g, i), row(g->x.v, g->x.stride, j), g->x.hs);
    return *p * (dp - g->D[i]) * g->x.scale;
}

// Pass (a) for key j: dk (hs) and dv (hs) over queries i = j .. T-1 in order.
static void key_gradients(float *dk, float *dv, const HeadGradView *g, int j, int T, const OperandCast *cast) {
    int hs = g->x.hs;
    for (int d = 0; d < hs; d++) dk[d] = dv[d] = 0.0f;
    for (int i = j; i < T; i++) {
        float p;
        float ds = score_gradient(g, i, j, &p);
        axpy(dv, quantize_operand_value(p, cast), dout_row(g, i), hs);
        axpy(dk, quantize_operand_value(ds, cast), row(g->x.q, g->x.stride, i), hs);
    }
}

// Pass (b) for query i: dq (hs) over keys j = 0 .. i in order.
static void query_gradient(float *dq, const HeadGradView *g, int i, const OperandCast *cast) {
    for (int d = 0; d < g->x.hs; d++) dq[d] = 0.0f;
    for (int j = 0; j <= i; j++) {
        float p;
        float ds = score_gradient(g, i, j, &p);
        axpy(dq, quantize_operand_value(ds, cast), row(g->x.k, g->x.stride, j), g->x.hs);
    }
}

static HeadGradView head_grad_view(const float *qkv, const float *dout, const float *lse, const float *D, int b,
                                   int h, int T, int C, int NH) {
    HeadGradView g = {head_view(qkv, b, h, T, C, NH), dout + (size_t)b * T * C + h * (C / NH),
                      lse + ((size_t)b * NH + h) * T, D + ((size_t)b * NH + h) * T, C};
    return g;
}

void attention_tiled_backward(float *dqkv, const float *dout, const float *qkv, const float *out, const float *lse,
                              int B, int T, int C, int NH, const OperandCast *cast) {
    refuse_scaled_casts(cast);
    int hs = C / NH;
    float *D = xmalloc((size_t)B * NH * T * sizeof(float));  // (B, NH, T)
    row_dots(D, dout, out, B, T, C, NH);
    int key_tiles = num_tiles(T, ATTENTION_TILE_K), query_tiles = num_tiles(T, ATTENTION_TILE_Q);
#pragma omp parallel for collapse(3) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int tile = 0; tile < key_tiles; tile++) {
                HeadGradView g = head_grad_view(qkv, dout, lse, D, b, h, T, C, NH);
                int first = tile * ATTENTION_TILE_K, end = min_int(first + ATTENTION_TILE_K, T);
                for (int j = first; j < end; j++) {
                    float *at = dqkv + ((size_t)b * T + j) * 3 * C + h * hs;
                    key_gradients(at + C, at + 2 * C, &g, j, T, cast);
                }
            }
#pragma omp parallel for collapse(3) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int tile = 0; tile < query_tiles; tile++) {
                HeadGradView g = head_grad_view(qkv, dout, lse, D, b, h, T, C, NH);
                int first = tile * ATTENTION_TILE_Q, end = min_int(first + ATTENTION_TILE_Q, T);
                for (int i = first; i < end; i++)
                    query_gradient(dqkv + ((size_t)b * T + i) * 3 * C + h * hs, &g, i, cast);
            }
    free(D);
}
