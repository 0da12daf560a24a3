// Shared by every numerics header: the host/device qualifier and bit casts.
// Everything under src/numerics/ is header-only and compiled by both gcc (CPU backend) and nvcc (CUDA
// backend). Contraction is off in both builds (-ffp-contract=off, -fmad=false); where a fused
// multiply-add is meant, the code calls fmaf explicitly.
#ifndef LP_NUMERICS_COMMON_H
#define LP_NUMERICS_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define LP_HD static inline __host__ __device__
#else
#define LP_HD static inline
#endif

LP_HD uint32_t f32_to_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

LP_HD float f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

#endif
