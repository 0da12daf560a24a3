// The host-side tensor loops of per-tensor scaling; the per-element rules live in
// numerics/scaling.h, shared with the device.
#include "numerics/scaling.h"

#include <stdlib.h>

#include "util.h"

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
