// Rounding modes and the one decision every grid shares: given the bits a rounding drops, does the kept
// part move one step away from zero? ExMy formats, bf16 stochastic rounding and the integer grids all round
// a magnitude this way, so their modes mean exactly the same thing.
#ifndef LP_NUMERICS_ROUNDING_H
#define LP_NUMERICS_ROUNDING_H

#include "common.h"

typedef enum {
    ROUND_NEAREST_EVEN,  // IEEE default: nearest, ties to the even neighbour
    ROUND_TOWARD_ZERO,   // truncation: the "masking" of 2405.18710; never increases |x|
    ROUND_STOCHASTIC,    // up with probability (distance to the lower neighbour) / (grid step)
} RoundingMode;

typedef enum {
    OVERFLOW_SATURATE,  // beyond the largest finite value: the largest finite value
    OVERFLOW_INF,       // beyond it: inf where the format has one, else NaN where it has one, else saturate
} OverflowMode;

// 2^p as an fp32, for -149 <= p <= 127 (subnormal powers included), built from bits so both compilers agree.
LP_HD float pow2_f32(int p) {
    if (p >= -126) return f32_from_bits((uint32_t)(p + 127) << 23);
    return f32_from_bits(1u << (p + 149));
}

// A magnitude split at bit `drop`: `kept` = magnitude >> drop (the lower grid neighbour, in grid steps),
// `rest` = the dropped bits, rest < 2^min(drop, 24). Returns 1 when the result is kept + 1.
// Stochastic rounding goes up when random_bits + rest * 2^(32 - drop) >= 2^32, so it uses the top `drop`
// bits of random_bits and rounds up with probability exactly rest / 2^drop (for drop <= 32; beyond that the
// probability is truncated to a multiple of 2^-32).
LP_HD uint32_t rounds_away_from_zero(uint32_t kept, uint32_t rest, int drop, RoundingMode mode,
                                     uint32_t random_bits) {
    if (rest == 0) return 0;
    if (mode == ROUND_TOWARD_ZERO) return 0;
    if (mode == ROUND_NEAREST_EVEN) {
        if (drop > 24) return 0;  // rest < 2^24 <= half a step
        uint32_t half = 1u << (drop - 1);
        return rest > half || (rest == half && (kept & 1u));
    }
    uint64_t threshold = 0;
    if (drop <= 32) threshold = (uint64_t)rest << (32 - drop);
    else if (drop < 64) threshold = ((uint64_t)rest << 32) >> drop;
    return (uint64_t)random_bits + threshold >= ((uint64_t)1 << 32);
}

// The fp32 magnitude bits `abs_bits` (finite) as significand * 2^(exponent - 23), with fp32 subnormals
// given exponent -126 and no implicit bit, so that every finite fp32 reads the same way.
LP_HD uint32_t f32_significand(uint32_t abs_bits) {
    uint32_t biased = abs_bits >> 23;
    return biased ? (abs_bits & 0x7fffffu) | 0x800000u : abs_bits;
}

LP_HD int f32_exponent(uint32_t abs_bits) {
    int biased = (int)(abs_bits >> 23);
    return biased ? biased - 127 : -126;
}

#endif
