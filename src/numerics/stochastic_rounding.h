// Stochastic rounding (SR): x goes to its upper grid neighbour with probability (x - lower) / (upper - lower),
// so E[SR(x)] = x and small updates survive on average. The random bits come from the counter-based RNG
// keyed by (seed, step, tensor id, element index), never from per-thread state, so CPU and GPU, any thread
// layout, any rank count, produce the same bits. Every SR here uses the top bits of the 32 random bits, so
// e.g. bf16_from_f32_sr(x, r) and exmy_quantize(x, e8m7, ROUND_STOCHASTIC, ..., r) agree bit for bit.
#ifndef LP_NUMERICS_STOCHASTIC_ROUNDING_H
#define LP_NUMERICS_STOCHASTIC_ROUNDING_H

#include "bf16.h"
#include "exmy.h"
#include "int_grid.h"
#include "rng.h"

// fp32 -> bf16 with stochastic rounding: the 16 dropped bits plus the top 16 random bits carry into the
// kept part exactly when they reach 2^16, i.e. with probability (dropped bits) / 2^16. NaN stays NaN; a
// value above the largest bf16 may round up to inf, like the value 2^128 the next step would be.
LP_HD bf16 bf16_from_f32_sr(float x, uint32_t random_bits) {
    uint32_t u = f32_to_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x0040u);
    return (bf16)((u + (random_bits >> 16)) >> 16);
}

LP_HD bf16 bf16_from_f32_sr_keyed(float x, RngKey key, uint64_t index) {
    return bf16_from_f32_sr(x, rng_u32(key, index));
}

LP_HD float exmy_quantize_sr_keyed(float x, ExmyFormat f, OverflowMode overflow, RngKey key, uint64_t index) {
    return exmy_quantize(x, f, ROUND_STOCHASTIC, overflow, rng_u32(key, index));
}

LP_HD int32_t int_grid_quantize_sr_keyed(float w, float scale, IntGrid g, RngKey key, uint64_t index) {
    return int_grid_quantize(w, scale, g, ROUND_STOCHASTIC, rng_u32(key, index));
}

#endif
