// The host-side tensor loops and state of per-tensor scaling; the per-element rules live in
// numerics/scaling.h, shared with the device.
#include "numerics/scaling.h"

#include <stdlib.h>

#include "util.h"

void delayed_scaling_init(DelayedScaling *s, int history_length, float fmt_max, int margin) {
    if (history_length < 1) fatal("amax history length must be at least 1 (got %d)", history_length);
    s->amax_history = (float *)xcalloc((size_t)history_length, sizeof(float));
    s->history_length = history_length;
    s->next = 0;
    s->fmt_max = fmt_max;
    s->margin = margin;
    s->scale = 1.0f;
}

void delayed_scaling_free(DelayedScaling *s) {
    free(s->amax_history);
    s->amax_history = NULL;
}

void delayed_scaling_update(DelayedScaling *s, float amax) {
    s->amax_history[s->next] = amax;
    s->next = (s->next + 1) % s->history_length;
    // The max skips NaN entries; an infinite one keeps the previous scale until it leaves the window.
    float history_max = amax_history_max(s->amax_history, s->history_length);
    s->scale = scale_from_amax(history_max, s->fmt_max, s->margin, s->scale);
}

float tensor_amax(const float *x, size_t n) {
    float amax = 0.0f;
    int saw_nan = 0;
#pragma omp parallel for reduction(max : amax) reduction(| : saw_nan)
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) amax = a;
        saw_nan |= isnan(a);
    }
    return saw_nan ? NAN : amax;
}

float absmean_scale(const float *w, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += fabs((double)w[i]);
    float mean = n ? (float)(sum / (double)n) : 0.0f;
    return mean > 1e-5f ? mean : 1e-5f;
}

void quantize_dequantize_tensor(float *out, const float *in, size_t n, float scale, ExmyFormat f,
                                RoundingMode mode, RngKey key) {
    int stochastic = mode == ROUND_STOCHASTIC;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint32_t random_bits = stochastic ? rng_u32(key, i) : 0u;
        out[i] = quantize_dequantize_scaled(in[i], scale, f, mode, random_bits);
    }
}
