// Integer grids for direct quantized training (DQT, arXiv 2412.04787): a weight is stored as an integer q on
// a grid with a per-matrix fp32 step and means q * step. The b-bit grid is [-Qp-1, Qp], Qp = 2^(b-1) - 1, the
// ternary grid {-1, 0, 1} (BitNet b1.58). The step is the DQT code's absmean quantizer, the n-bit
// generalisation of BitNet's: s = Qp / mean|W|, value = code / s, so step = mean|W| / Qp (dqt_step; the
// absmean is computed by absmean_scale in scaling.h). Every width spans about ±mean|W|; more bits make the
// grid finer, not wider.
#ifndef LP_NUMERICS_INT_GRID_H
#define LP_NUMERICS_INT_GRID_H

#include "rounding.h"

typedef struct {
    int32_t min, max;  // the grid is every integer in [min, max]
} IntGrid;

// The symmetric b-bit grid, 2 <= b <= 16.
LP_HD IntGrid int_grid_bits(int bits) {
    IntGrid g;
    g.min = -(1 << (bits - 1));
    g.max = (1 << (bits - 1)) - 1;
    return g;
}

LP_HD IntGrid int_grid_ternary(void) {
    IntGrid g;
    g.min = -1;
    g.max = 1;
    return g;
}

// The DQT grid of a policy's grid_bits (0 = ternary).
LP_HD IntGrid dqt_grid(int grid_bits) { return grid_bits == 0 ? int_grid_ternary() : int_grid_bits(grid_bits); }

// The step of a matrix whose mean |w| is absmean: absmean / Qp (Qp = g.max). The ternary step is the absmean
// itself, exactly BitNet b1.58's quantizer.
LP_HD float dqt_step(float absmean, IntGrid g) { return absmean / (float)g.max; }

// x rounded to an integer (as an fp32) with the same rounding decisions as the float grids: nearest-even,
// toward zero, or stochastic with probability equal to the fractional distance. Integers, infinities and
// NaN come back unchanged.
LP_HD float round_to_integer(float x, RoundingMode mode, uint32_t random_bits) {
    uint32_t bits = f32_to_bits(x);
    uint32_t sign = bits & 0x80000000u;
    uint32_t abs_bits = bits ^ sign;
    int exponent = f32_exponent(abs_bits);
    if (exponent >= 23) return x;  // already an integer (or inf/NaN)
    uint32_t significand = f32_significand(abs_bits);
    int drop = 23 - exponent;  // the fractional bits
    uint32_t kept = drop < 32 ? significand >> drop : 0u;
    uint32_t rest = drop < 32 ? significand & ((1u << drop) - 1u) : significand;
    kept += rounds_away_from_zero(kept, rest, drop, mode, random_bits);
    return f32_from_bits(sign | f32_to_bits((float)kept));
}

// w / scale (the step), clamped to the grid's ends, then rounded onto the grid. Clamping first keeps stochastic
// rounding inside the grid; NaN (which has no place on a grid) becomes 0.
LP_HD int32_t int_grid_quantize(float w, float scale, IntGrid g, RoundingMode mode, uint32_t random_bits) {
    float x = w / scale;
    if (isnan(x)) return 0;
    float lo = (float)g.min, hi = (float)g.max;
    x = x < lo ? lo : (x > hi ? hi : x);
    return (int32_t)round_to_integer(x, mode, random_bits);
}

LP_HD float int_grid_dequantize(int32_t q, float scale) { return (float)q * scale; }

#endif
