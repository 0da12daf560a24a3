// ExMy floating-point formats: 1 sign bit, X exponent bits (1..8), Y mantissa bits (0..23), bias
// 2^(X-1) - 1, gradual underflow. Every value of every such format is an fp32 value, so quantization is
// done on fp32 bits and a quantized value can be kept in an fp32 ("simulated" formats); codes (the packed
// bits, sign at bit X+Y) exist for storage, with uint8 helpers for the two FP8 formats.
//
// Special values by layout:
//   IEEE  the all-ones exponent holds ±inf (mantissa 0) and NaN (mantissa != 0); e5m2, e5m10, e8m7, and
//         every eXmY name with X >= 2. With Y = 0 there is inf but no NaN code.
//   FN    OCP FP8 E4M3 ("finite, NaN"): no infinities, S.1111.111 is the only NaN, so the all-ones exponent
//         holds finite values too (max 448).
//   NONE  every code is a number; the eXmY names with X = 1, which have no exponent code to spare.
#ifndef LP_NUMERICS_EXMY_H
#define LP_NUMERICS_EXMY_H

#include "rounding.h"

typedef enum { EXMY_SPECIALS_IEEE, EXMY_SPECIALS_FN, EXMY_SPECIALS_NONE } ExmySpecials;

typedef struct {
    int exp_bits;  // X
    int man_bits;  // Y
    int bias;      // 2^(X-1) - 1
    ExmySpecials specials;
    float max_finite;  // cached: the largest finite value
} ExmyFormat;

LP_HD int exmy_min_exponent(ExmyFormat f) { return 1 - f.bias; }  // exponent of the smallest normal
LP_HD uint32_t exmy_magnitude_mask(ExmyFormat f) { return (1u << (f.exp_bits + f.man_bits)) - 1u; }
LP_HD uint32_t exmy_sign_bit(ExmyFormat f) { return 1u << (f.exp_bits + f.man_bits); }
LP_HD int exmy_has_inf(ExmyFormat f) { return f.specials == EXMY_SPECIALS_IEEE; }
LP_HD int exmy_has_nan(ExmyFormat f) {
    return f.specials == EXMY_SPECIALS_FN || (f.specials == EXMY_SPECIALS_IEEE && f.man_bits > 0);
}

// The magnitude code of the largest finite value: below the all-ones exponent (IEEE), one below the
// all-ones code (FN), or the all-ones code itself (NONE).
LP_HD uint32_t exmy_max_finite_code(ExmyFormat f) {
    uint32_t all_ones = exmy_magnitude_mask(f);
    if (f.specials == EXMY_SPECIALS_IEEE) return all_ones - (1u << f.man_bits);
    if (f.specials == EXMY_SPECIALS_FN) return all_ones - 1u;
    return all_ones;
}

LP_HD int exmy_is_nan_code(uint32_t magnitude, ExmyFormat f) {
    uint32_t exp_all_ones = ((1u << f.exp_bits) - 1u) << f.man_bits;
    if (f.specials == EXMY_SPECIALS_IEEE) return magnitude > exp_all_ones;
    if (f.specials == EXMY_SPECIALS_FN) return magnitude == exmy_magnitude_mask(f);
    return 0;
}

LP_HD int exmy_is_inf_code(uint32_t magnitude, ExmyFormat f) {
    return f.specials == EXMY_SPECIALS_IEEE && magnitude == ((1u << f.exp_bits) - 1u) << f.man_bits;
}

LP_HD float exmy_decode(uint32_t code, ExmyFormat f) {
    uint32_t sign = (code & exmy_sign_bit(f)) ? 0x80000000u : 0u;
    uint32_t magnitude = code & exmy_magnitude_mask(f);
    if (exmy_is_nan_code(magnitude, f)) return f32_from_bits(sign | 0x7fc00000u);
    if (exmy_is_inf_code(magnitude, f)) return f32_from_bits(sign | 0x7f800000u);
    uint32_t exponent_field = magnitude >> f.man_bits;
    uint32_t mantissa = magnitude & ((1u << f.man_bits) - 1u);
    float value;
    if (exponent_field == 0) {
        value = (float)mantissa * pow2_f32(exmy_min_exponent(f) - f.man_bits);
    } else {
        uint32_t significand = (1u << f.man_bits) | mantissa;
        value = (float)significand * pow2_f32((int)exponent_field - f.bias - f.man_bits);
    }
    return f32_from_bits(sign | f32_to_bits(value));
}

// A format with the given layout. FN and NONE need X <= 7 so that their top binade stays inside fp32.
LP_HD ExmyFormat exmy_format_with_specials(int exp_bits, int man_bits, ExmySpecials specials) {
    ExmyFormat f;
    f.exp_bits = exp_bits;
    f.man_bits = man_bits;
    f.bias = (1 << (exp_bits - 1)) - 1;
    f.specials = specials;
    f.max_finite = 0.0f;
    f.max_finite = exmy_decode(exmy_max_finite_code(f), f);
    return f;
}

// The generic eXmY: IEEE layout, except X = 1, which has every code finite.
LP_HD ExmyFormat exmy_format(int exp_bits, int man_bits) {
    return exmy_format_with_specials(exp_bits, man_bits, exp_bits == 1 ? EXMY_SPECIALS_NONE : EXMY_SPECIALS_IEEE);
}

LP_HD ExmyFormat exmy_e8m7(void) { return exmy_format(8, 7); }    // bf16
LP_HD ExmyFormat exmy_e5m10(void) { return exmy_format(5, 10); }  // fp16
LP_HD ExmyFormat exmy_e4m3(void) { return exmy_format_with_specials(4, 3, EXMY_SPECIALS_FN); }  // OCP FP8 E4M3
LP_HD ExmyFormat exmy_e5m2(void) { return exmy_format(5, 2); }    // OCP FP8 E5M2

// What an out-of-range magnitude becomes under `overflow` (before the sign is put back).
LP_HD float exmy_overflow_value(ExmyFormat f, OverflowMode overflow) {
    if (overflow == OVERFLOW_INF && exmy_has_inf(f)) return f32_from_bits(0x7f800000u);
    if (overflow == OVERFLOW_INF && exmy_has_nan(f)) return f32_from_bits(0x7fc00000u);
    return f.max_finite;
}

// Rounds a finite fp32 magnitude onto the grid of f continued without bound above (the caller handles
// overflow). The grid step at exponent e is 2^(max(e, emin) - Y), so subnormals fall out of the same code.
LP_HD float exmy_round_magnitude(uint32_t abs_bits, ExmyFormat f, RoundingMode mode, uint32_t random_bits) {
    uint32_t significand = f32_significand(abs_bits);
    int exponent = f32_exponent(abs_bits);
    int emin = exmy_min_exponent(f);
    int grid_exponent = exponent > emin ? exponent : emin;
    int drop = 23 - f.man_bits + (grid_exponent - exponent);
    uint32_t kept = drop < 32 ? significand >> drop : 0u;
    uint32_t rest = drop < 32 ? significand & ((1u << drop) - 1u) : significand;
    kept += rounds_away_from_zero(kept, rest, drop, mode, random_bits);
    // kept <= 2^(Y+1), exact in fp32; the product is exact (a grid value) or overflows to inf.
    return (float)kept * pow2_f32(grid_exponent - f.man_bits);
}

// x rounded onto the format, as an fp32. NaN stays NaN in every format (a simulated cast never hides a
// NaN). Toward zero never overflows to inf or NaN: a finite x beyond the range gives the largest finite
// value, as in IEEE 754. `random_bits` is used by ROUND_STOCHASTIC only.
LP_HD float exmy_quantize(float x, ExmyFormat f, RoundingMode mode, OverflowMode overflow, uint32_t random_bits) {
    uint32_t bits = f32_to_bits(x);
    uint32_t sign = bits & 0x80000000u;
    uint32_t abs_bits = bits ^ sign;
    if (abs_bits > 0x7f800000u) return x;
    float magnitude;
    if (abs_bits == 0x7f800000u) {
        magnitude = exmy_overflow_value(f, overflow);
    } else {
        magnitude = exmy_round_magnitude(abs_bits, f, mode, random_bits);
        if (magnitude > f.max_finite)
            magnitude = mode == ROUND_TOWARD_ZERO ? f.max_finite : exmy_overflow_value(f, overflow);
    }
    return f32_from_bits(sign | f32_to_bits(magnitude));
}

// The code of a value that is already on the grid (an output of exmy_quantize). NaN gets the quiet NaN code
// (IEEE) or S.1...1 (FN), keeping its sign; a format without a NaN code stores NaN as +inf (IEEE, Y = 0)
// or as +max (NONE).
LP_HD uint32_t exmy_code_of_grid_value(float v, ExmyFormat f) {
    uint32_t bits = f32_to_bits(v);
    uint32_t sign = (bits & 0x80000000u) ? exmy_sign_bit(f) : 0u;
    uint32_t abs_bits = bits & 0x7fffffffu;
    uint32_t exp_all_ones = ((1u << f.exp_bits) - 1u) << f.man_bits;
    if (abs_bits > 0x7f800000u) {
        if (f.specials == EXMY_SPECIALS_FN) return sign | exmy_magnitude_mask(f);
        if (exmy_has_nan(f)) return sign | exp_all_ones | (1u << (f.man_bits - 1));
        return exmy_has_inf(f) ? exp_all_ones : exmy_max_finite_code(f);
    }
    if (abs_bits == 0x7f800000u) return sign | exp_all_ones;
    if (abs_bits == 0) return sign;
    int exponent = f32_exponent(abs_bits);
    int emin = exmy_min_exponent(f);
    int grid_exponent = exponent > emin ? exponent : emin;
    // On the grid, so the shift drops only zeros: the count of grid steps, 2^Y..2^(Y+1)-1 for a normal.
    uint32_t steps = f32_significand(abs_bits) >> (23 - f.man_bits + (grid_exponent - exponent));
    if (steps < (1u << f.man_bits)) return sign | steps;  // subnormal: exponent field 0
    uint32_t exponent_field = (uint32_t)(grid_exponent + f.bias);
    return sign | (exponent_field << f.man_bits) | (steps - (1u << f.man_bits));
}

LP_HD uint32_t exmy_encode(float x, ExmyFormat f, RoundingMode mode, OverflowMode overflow, uint32_t random_bits) {
    return exmy_code_of_grid_value(exmy_quantize(x, f, mode, overflow, random_bits), f);
}

// The FP8 formats in one byte each.
LP_HD uint8_t e4m3_from_f32(float x, RoundingMode mode, OverflowMode overflow, uint32_t random_bits) {
    return (uint8_t)exmy_encode(x, exmy_e4m3(), mode, overflow, random_bits);
}
LP_HD float e4m3_to_f32(uint8_t code) { return exmy_decode(code, exmy_e4m3()); }
LP_HD uint8_t e5m2_from_f32(float x, RoundingMode mode, OverflowMode overflow, uint32_t random_bits) {
    return (uint8_t)exmy_encode(x, exmy_e5m2(), mode, overflow, random_bits);
}
LP_HD float e5m2_to_f32(uint8_t code) { return exmy_decode(code, exmy_e5m2()); }

#endif
