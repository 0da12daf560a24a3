// Per-tensor scaling for 8-bit operands (the Transformer Engine recipe): a tensor is multiplied by
// scale = (fmt_max / amax) / 2^margin before the cast, so that its largest magnitude lands `margin` binades
// below the format's largest value, clamped to the format's range, cast, and multiplied by 1/scale after.
// Current scaling takes amax from the tensor itself; delayed scaling from the max over a history of
// previous steps' amaxes (the cast uses the scale computed before the tensor exists).
#ifndef LP_NUMERICS_SCALING_H
#define LP_NUMERICS_SCALING_H

#include <float.h>
#include <stddef.h>

#include "exmy.h"
#include "rng.h"

// A zero, infinite or NaN amax keeps the previous scale (nothing to learn from it); a scale that would
// overflow fp32 (a tiny amax) becomes FLT_MAX.
LP_HD float scale_from_amax(float amax, float fmt_max, int margin, float previous_scale) {
    if (!(amax > 0.0f) || isinf(amax)) return previous_scale;
    float scale = fmt_max / amax / pow2_f32(margin);
    return isinf(scale) ? FLT_MAX : scale;
}

LP_HD float amax_history_max(const float *history, int length) {
    float amax = 0.0f;
    for (int i = 0; i < length; i++) amax = history[i] > amax ? history[i] : amax;
    return amax;
}

// x * scale clamped to [-max, max] of f: the value that gets cast. NaN passes through.
LP_HD float clamp_scaled(float x, float scale, ExmyFormat f) {
    float y = x * scale;
    return y > f.max_finite ? f.max_finite : (y < -f.max_finite ? -f.max_finite : y);
}

// The code stored for x; its value is exmy_decode(code, f) / scale.
LP_HD uint32_t exmy_encode_scaled(float x, float scale, ExmyFormat f, RoundingMode mode, uint32_t random_bits) {
    return exmy_encode(clamp_scaled(x, scale, f), f, mode, OVERFLOW_SATURATE, random_bits);
}

// Quantize-dequantize: what an operand cast to f with this scale looks like to the matmul. The inverse
// scale is one fp32 division, as an FP8 GEMM receives it.
LP_HD float quantize_dequantize_scaled(float x, float scale, ExmyFormat f, RoundingMode mode, uint32_t random_bits) {
    float cast = exmy_quantize(clamp_scaled(x, scale, f), f, mode, OVERFLOW_SATURATE, random_bits);
    return cast * (1.0f / scale);
}

#ifdef __cplusplus
extern "C" {
#endif

// Delayed scaling keeps one amax history per operand: see src/linear_casts.h.

// max |x[i]|, NaN if any element is NaN.
float tensor_amax(const float *x, size_t n);
// mean |w[i]| (accumulated in double, in order), at least 1e-5 so that an all-zero tensor still has a
// usable scale: the absmean scale of BitNet b1.58 and DQT.
float absmean_scale(const float *w, size_t n);
// out[i] = quantize_dequantize_scaled(in[i], ...), stochastic rounding drawing element i's bits from
// rng_u32(key, i). out may equal in.
void quantize_dequantize_tensor(float *out, const float *in, size_t n, float scale, ExmyFormat f,
                                RoundingMode mode, RngKey key);

#ifdef __cplusplus
}
#endif

#endif
