// Column sums, for bias gradients.
#include "cpu/ops.h"

// Columns per task: a task owns its columns of dst, and its inner loop runs along a row, contiguously.
#define SUM_CHANNEL_BLOCK 64

void sum_rows_add(float *dst, const float *src, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += SUM_CHANNEL_BLOCK) {
        int width = c0 + SUM_CHANNEL_BLOCK < C ? SUM_CHANNEL_BLOCK : C - c0;
        float sums[SUM_CHANNEL_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float *row = src + (size_t)n * C + c0;
#pragma omp simd
            for (int j = 0; j < width; j++) sums[j] += row[j];
        }
        for (int j = 0; j < width; j++) dst[c0 + j] += sums[j];
    }
}
