// Causal multi-head self-attention from the fused qkv projection. Per head h and query position t:
//   att[t, t2] = softmax over t2 <= t of (q_t . k_t2) / sqrt(hs),   out_t = sum_t2 att[t, t2] v_t2.
// The products take cast operands: q, k, v and dout arrive cast; the probabilities (in PV and its
// backward) and the score gradients (in the backward of QK^T) are cast here. The softmax and its backward
// stay fp32. Under fp8 these two are scaled per query row by the row's current amax (E4M3 probabilities,
// E5M2 score gradients): they exist one row at a time, and a per-tensor scale would need a second pass.
#include <math.h>
#include <stdlib.h>

#include "cpu/ops.h"
#include "util.h"

static float dot(const float *a, const float *b, int n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

// y += alpha * x
static void axpy(float *y, float alpha, const float *x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

static float row_amax(const float *x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

// One query row: scores with max subtraction for a stable softmax, then the weighted sum of values.
// qkv: (T, 3C) of one sequence; out: (hs); att_row: (T)
static void attention_row(float *out, float *att_row, const float *qkv, int T, int C, int hs, int h, int t,
                          float scale, const OperandCast *cast) {
    size_t stride = 3 * (size_t)C;                     // between positions in qkv
    const float *q = qkv + (size_t)t * stride + h * hs;  // (hs)
    const float *keys = qkv + C + h * hs;
    const float *values = qkv + 2 * C + h * hs;
    float max_score = -INFINITY;
    for (int t2 = 0; t2 <= t; t2++) {
        float s = dot(q, keys + (size_t)t2 * stride, hs) * scale;
        att_row[t2] = s;
        if (s > max_score) max_score = s;
    }
    float sum = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        float e = expf(att_row[t2] - max_score);
        att_row[t2] = e;
        sum += e;
    }
    float inv_sum = 1.0f / sum;
    for (int t2 = 0; t2 <= t; t2++) att_row[t2] *= inv_sum;
    for (int t2 = t + 1; t2 < T; t2++) att_row[t2] = 0.0f;

    OperandCast probs = operand_cast_current(*cast, exmy_e4m3(), row_amax(att_row, t + 1));
    for (int i = 0; i < hs; i++) out[i] = 0.0f;
    for (int t2 = 0; t2 <= t; t2++)
        axpy(out, quantize_operand_value(att_row[t2], &probs), values + (size_t)t2 * stride, hs);
}

void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH,
                       const OperandCast *cast) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                float *o = out + ((size_t)b * T + t) * C + h * hs;          // (hs)
                float *att_row = att + (((size_t)b * NH + h) * T + t) * T;  // (T)
                attention_row(o, att_row, qkv + (size_t)b * T * 3 * C, T, C, hs, h, t, scale, cast);
            }
}

void attention_forward_last(float *out, float *att, const float *qkv, int T, int C, int NH, const OperandCast *cast) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static)
    for (int h = 0; h < NH; h++) attention_row(out + h * hs, att + (size_t)h * T, qkv, T, C, hs, h, T - 1, scale, cast);
}

// The backward of one (batch, head): dq, dk, dv of all positions. Keys and values receive gradient from
// every later query, so one task does the whole head, in a fixed order. dqkv, qkv: (T, 3C) and dout: (T, C)
// of one sequence; att: (T, T) of this head; datt: (T) scratch.
static void attention_head_backward(float *dqkv, const float *dout, const float *qkv, const float *att, float *datt,
                                    int T, int C, int hs, int h, float scale, const OperandCast *cast) {
    size_t stride = 3 * (size_t)C;
    for (int t = 0; t < T; t++) {
        const float *att_row = att + (size_t)t * T;   // (T)
        const float *dout_t = dout + (size_t)t * C + h * hs;  // (hs)
        const float *q = qkv + (size_t)t * stride + h * hs;
        float *dq = dqkv + (size_t)t * stride + h * hs;
        // out_t = sum att[t2] v_t2: gradients of the probabilities and of the values (with the forward's cast).
        OperandCast probs = operand_cast_current(*cast, exmy_e4m3(), row_amax(att_row, t + 1));
        for (int t2 = 0; t2 <= t; t2++) {
            const float *v = qkv + (size_t)t2 * stride + 2 * C + h * hs;
            float *dv = dqkv + (size_t)t2 * stride + 2 * C + h * hs;
            datt[t2] = dot(dout_t, v, hs);
            axpy(dv, quantize_operand_value(att_row[t2], &probs), dout_t, hs);
        }
        // Softmax backward: dscore = att * (datt - sum(att * datt)), the gradient of q . k (scale included),
        // formed in place of datt.
        float weighted = 0.0f;
        for (int t2 = 0; t2 <= t; t2++) weighted += att_row[t2] * datt[t2];
        for (int t2 = 0; t2 <= t; t2++) datt[t2] = att_row[t2] * (datt[t2] - weighted) * scale;
        OperandCast dscores = operand_cast_current(*cast, exmy_e5m2(), row_amax(datt, t + 1));
        for (int t2 = 0; t2 <= t; t2++) {
            float dscore = quantize_operand_value(datt[t2], &dscores);
            const float *k = qkv + (size_t)t2 * stride + C + h * hs;
            float *dk = dqkv + (size_t)t2 * stride + C + h * hs;
            axpy(dq, dscore, k, hs);
            axpy(dk, dscore, q, hs);
        }
    }
}

void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int T, int C,
                        int NH, const OperandCast *cast) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel
    {
        float *datt = xmalloc((size_t)T * sizeof(float));  // (T) per thread
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++) {
                size_t seq = (size_t)b * T;
                attention_head_backward(dqkv + seq * 3 * C, dout + seq * C, qkv + seq * 3 * C,
                                        att + ((size_t)b * NH + h) * T * T, datt, T, C, hs, h, scale, cast);
            }
        free(datt);
    }
}
