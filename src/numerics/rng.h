// Counter-based RNG: Philox4x32-10 (Salmon et al., SC'11), keyed by the run's seed, with the counter made
// of (element index, tensor id, step). A draw depends only on its key, never on thread layout, rank count
// or backend, so stochastic rounding gives the same bits everywhere.
#ifndef LP_NUMERICS_RNG_H
#define LP_NUMERICS_RNG_H

#include "common.h"

typedef struct {
    uint64_t seed;       // the run's seed
    uint64_t step;       // optimizer step (or any outer counter)
    uint32_t tensor_id;  // which tensor / which use
} RngKey;

LP_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t *hi) {
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

// Philox4x32 with 10 rounds; returns the first of the four output words.
LP_HD uint32_t philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = philox_mulhilo(0xD2511F53u, c0, &hi0);
        uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0;
        uint32_t n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c0;
}

// 32 random bits for element `index` under `key`.
LP_HD uint32_t rng_u32(RngKey key, uint64_t index) {
    return philox4x32_10((uint32_t)index, (uint32_t)(index >> 32), key.tensor_id, (uint32_t)key.step,
                         (uint32_t)key.seed, (uint32_t)(key.seed >> 32) ^ (uint32_t)(key.step >> 32));
}

// Uniform in [0, 1) with 24 random bits (exactly representable in fp32).
LP_HD float rng_uniform(RngKey key, uint64_t index) {
    return (float)(rng_u32(key, index) >> 8) * (1.0f / 16777216.0f);
}

// Natural log of a positive normal fp32, from + - * / and fmaf only: the C library's logf and CUDA's logf
// may differ in the last bit, and draws must not. x = m * 2^e with m in [sqrt(1/2), sqrt(2)); then
// ln m = 2 atanh(s) = 2 (s + s^3/3 + ... + s^11/11) with s = (m - 1) / (m + 1), |s| <= 0.172, whose next term
// is below 2^-33 relative; ln 2 is split in two so that e * ln 2 keeps its precision.
LP_HD float log_portable(float x) {
    uint32_t bits = f32_to_bits(x);
    int exponent = (int)(bits >> 23) - 127;
    float m = f32_from_bits((bits & 0x7fffffu) | 0x3f800000u);  // [1, 2)
    if (m > 1.41421356f) {
        m *= 0.5f;
        exponent += 1;
    }
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float series = fmaf(s2, fmaf(s2, fmaf(s2, fmaf(s2, fmaf(s2, 1.0f / 11.0f, 1.0f / 9.0f), 1.0f / 7.0f), 1.0f / 5.0f),
                                 1.0f / 3.0f), 1.0f);
    float e = (float)exponent;
    return fmaf(e, 0.693145751953125f, fmaf(e, 1.42860682e-6f, 2.0f * s * series));
}

// cos(2 pi u) for u in [0, 1), from + - * and fmaf only (same reason as log_portable). 4u splits exactly
// into a quarter turn q and a remainder r in [-1/2, 1/2]; the angle r * pi/2 lies in [-pi/4, pi/4], where
// Taylor polynomials to degree 10 (cos) and 9 (sin) are within 2^-25.
LP_HD float cos_2pi_portable(float u) {
    float turns = 4.0f * u;
    float quarter = floorf(turns + 0.5f);
    float a = (turns - quarter) * 1.57079632679f;
    float a2 = a * a;
    float cos_a = fmaf(a2, fmaf(a2, fmaf(a2, fmaf(a2, fmaf(a2, -1.0f / 3628800.0f, 1.0f / 40320.0f), -1.0f / 720.0f),
                                         1.0f / 24.0f), -0.5f), 1.0f);
    float sin_a = a * fmaf(a2, fmaf(a2, fmaf(a2, fmaf(a2, 1.0f / 362880.0f, -1.0f / 5040.0f), 1.0f / 120.0f),
                                    -1.0f / 6.0f), 1.0f);
    switch ((int)quarter & 3) {
    case 0: return cos_a;
    case 1: return -sin_a;
    case 2: return -cos_a;
    default: return sin_a;
    }
}

// Standard normal by Box-Muller from two draws (indices 2i and 2i+1), computed in fp32 with functions that
// give the same bits on the host and the device.
LP_HD float rng_normal(RngKey key, uint64_t index) {
    float u1 = ((float)(rng_u32(key, 2 * index) >> 8) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
    float u2 = rng_uniform(key, 2 * index + 1);
    return sqrtf(-2.0f * log_portable(u1)) * cos_2pi_portable(u2);
}

#endif
