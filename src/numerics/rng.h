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

// Standard normal by Box-Muller from two draws (indices 2i and 2i+1), computed in fp32.
LP_HD float rng_normal(RngKey key, uint64_t index) {
    float u1 = ((float)(rng_u32(key, 2 * index) >> 8) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
    float u2 = rng_uniform(key, 2 * index + 1);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

#endif
