// Token + position embedding.
#include "cpu/ops.h"

// Channels per task in the backward: each task owns these columns of dwte and dwpe, so token rows that
// repeat in the batch are accumulated without races and always in (b, t) order.
#define ENCODER_CHANNEL_BLOCK 32

void encoder_forward(float *out, const int *tokens, const float *wte, const float *wpe, int B, int T, int C) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)b * T + t;
            float *o = out + row * C;                       // (C)
            const float *tok = wte + (size_t)tokens[row] * C;  // (C)
            const float *pos = wpe + (size_t)t * C;            // (C)
            for (int c = 0; c < C; c++) o[c] = tok[c] + pos[c];
        }
    }
}

void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tokens, int B, int T, int C) {
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += ENCODER_CHANNEL_BLOCK) {
        int c1 = c0 + ENCODER_CHANNEL_BLOCK < C ? c0 + ENCODER_CHANNEL_BLOCK : C;
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                size_t row = (size_t)b * T + t;
                const float *d = dout + row * C;
                float *dtok = dwte + (size_t)tokens[row] * C;
                float *dpos = dwpe + (size_t)t * C;
                for (int c = c0; c < c1; c++) {
                    dtok[c] += d[c];
                    dpos[c] += d[c];
                }
            }
        }
    }
}
