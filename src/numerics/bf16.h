// bfloat16: storage type, conversions and the "bf16 op" of DESIGN.md (compute in fp32 from bf16 inputs,
// round the result once to bf16, nearest-even).
#ifndef LP_NUMERICS_BF16_H
#define LP_NUMERICS_BF16_H

#include "common.h"

typedef uint16_t bf16;  // raw bits: sign, 8 exponent bits, 7 mantissa bits

LP_HD float bf16_to_f32(bf16 h) { return f32_from_bits((uint32_t)h << 16); }

// Round-to-nearest-even. NaN stays NaN (quieted, sign kept); infinities and overflow go to inf.
LP_HD bf16 bf16_from_f32(float x) {
    uint32_t u = f32_to_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x0040u);
    uint32_t lsb = (u >> 16) & 1u;
    return (bf16)((u + 0x7fffu + lsb) >> 16);
}

// Truncation toward zero (drops the low 16 bits); NaN stays NaN.
LP_HD bf16 bf16_from_f32_rtz(float x) {
    uint32_t u = f32_to_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x0040u);
    return (bf16)(u >> 16);
}

// fp32 value rounded to the nearest bf16, kept in fp32 (what a bf16 operand looks like to an fp32 matmul).
LP_HD float round_bf16(float x) { return bf16_to_f32(bf16_from_f32(x)); }

// Exact: flips the sign bit (NaN included).
LP_HD bf16 bf16_neg(bf16 a) { return (bf16)(a ^ 0x8000u); }

LP_HD bf16 bf16_add(bf16 a, bf16 b) { return bf16_from_f32(bf16_to_f32(a) + bf16_to_f32(b)); }
LP_HD bf16 bf16_sub(bf16 a, bf16 b) { return bf16_from_f32(bf16_to_f32(a) - bf16_to_f32(b)); }
LP_HD bf16 bf16_mul(bf16 a, bf16 b) { return bf16_from_f32(bf16_to_f32(a) * bf16_to_f32(b)); }
LP_HD bf16 bf16_div(bf16 a, bf16 b) { return bf16_from_f32(bf16_to_f32(a) / bf16_to_f32(b)); }
LP_HD bf16 bf16_sqrt(bf16 a) { return bf16_from_f32(sqrtf(bf16_to_f32(a))); }
// a*b + c with the fp32 fma, then one rounding to bf16.
LP_HD bf16 bf16_fma(bf16 a, bf16 b, bf16 c) {
    return bf16_from_f32(fmaf(bf16_to_f32(a), bf16_to_f32(b), bf16_to_f32(c)));
}

#endif
