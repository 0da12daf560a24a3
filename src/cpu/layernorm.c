// LayerNorm over the channels of each row: out = (x - mean) * rstd * weight + bias,
// rstd = 1 / sqrt(var + eps) with the biased variance, as in GPT-2.
#include <math.h>

#include "cpu/ops.h"

#define LAYERNORM_EPS 1e-5f
// Channels per task for the weight gradient: a task owns these columns of dweight.
#define LAYERNORM_CHANNEL_BLOCK 64

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;  // (C)
        float *o = out + (size_t)n * C;        // (C)
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; c++) sum += x[c];
        float m = sum / (float)C;
        // Two passes: the variance from deviations, not E[x^2] - E[x]^2, which cancels badly.
        float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
        for (int c = 0; c < C; c++) sq += (x[c] - m) * (x[c] - m);
        float s = 1.0f / sqrtf(sq / (float)C + LAYERNORM_EPS);
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

// dinp = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dout * weight, row by row.
static void layernorm_backward_input(float *dinp, const float *dout, const float *inp, const float *weight,
                                     const float *mean, const float *rstd, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;   // (C)
        const float *d = dout + (size_t)n * C;  // (C)
        float *dx = dinp + (size_t)n * C;       // (C)
        float m = mean[n], s = rstd[n];
        float g_sum = 0.0f, gx_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, gx_sum)
        for (int c = 0; c < C; c++) {
            float g = d[c] * weight[c];
            g_sum += g;
            gx_sum += g * (x[c] - m) * s;
        }
        float g_mean = g_sum / (float)C, gx_mean = gx_sum / (float)C;
        for (int c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s;
            dx[c] += s * (d[c] * weight[c] - g_mean - xhat * gx_mean);
        }
    }
}

// dweight += the sum over rows of dout * xhat.
static void layernorm_backward_weight(float *dweight, const float *dout, const float *inp, const float *mean,
                                      const float *rstd, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += LAYERNORM_CHANNEL_BLOCK) {
        int width = c0 + LAYERNORM_CHANNEL_BLOCK < C ? LAYERNORM_CHANNEL_BLOCK : C - c0;
        float dw[LAYERNORM_CHANNEL_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C + c0;
            const float *d = dout + (size_t)n * C + c0;
            float m = mean[n], s = rstd[n];
#pragma omp simd
            for (int j = 0; j < width; j++) dw[j] += d[j] * ((x[j] - m) * s);
        }
        for (int j = 0; j < width; j++) dweight[c0 + j] += dw[j];
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C) {
    layernorm_backward_input(dinp, dout, inp, weight, mean, rstd, N, C);
    layernorm_backward_weight(dweight, dout, inp, mean, rstd, N, C);
    sum_rows_add(dbias, dout, N, C);
}
