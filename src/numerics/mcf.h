// Multi-component floats (MCF, Collage, arXiv 2405.03637): a value kept as the unevaluated sum hi + lo of
// two bf16 numbers, normalised so that |lo| <= 1/2 ulp(hi): about 16 significant bits in 32 bits of storage,
// with no fp32 copy. Every operation is a short sequence of bf16 ops (fp32 compute from bf16 inputs, one
// round-to-nearest-even to bf16). bf16 sums and differences are correctly rounded that way (fp32 has more
// than 2*8+2 bits, so the double rounding is innocuous), which makes Fast2Sum, TwoSum and TwoProd
// error-free: hi + lo equals the exact result, barring underflow below the bf16 subnormals and overflow.
#ifndef LP_NUMERICS_MCF_H
#define LP_NUMERICS_MCF_H

#include "bf16.h"

typedef struct {
    bf16 hi, lo;  // the value is hi + lo; for the error-free transforms, the rounded result and its error
} Mcf;

LP_HD Mcf mcf_make(bf16 hi, bf16 lo) {
    Mcf x;
    x.hi = hi;
    x.lo = lo;
    return x;
}

// Fast2Sum (Dekker): a (+) b and its exact rounding error, provided |a| >= |b| (or a == 0).
LP_HD Mcf fast_two_sum(bf16 a, bf16 b) {
    bf16 sum = bf16_add(a, b);
    bf16 b_taken = bf16_sub(sum, a);  // the part of b that made it into sum, exact under the proviso
    return mcf_make(sum, bf16_sub(b, b_taken));
}

// TwoSum (Knuth, Moller): a (+) b and its exact rounding error for any magnitudes, in six ops.
LP_HD Mcf two_sum(bf16 a, bf16 b) {
    bf16 sum = bf16_add(a, b);
    bf16 b_taken = bf16_sub(sum, a);
    bf16 a_taken = bf16_sub(sum, b_taken);
    bf16 b_error = bf16_sub(b, b_taken);
    bf16 a_error = bf16_sub(a, a_taken);
    return mcf_make(sum, bf16_add(a_error, b_error));
}

// TwoProd: a (*) b and its exact error a*b - hi, from one fma. The exact product has at most 16 significant
// bits, so the error has at most 8 and fits a bf16.
LP_HD Mcf two_prod(bf16 a, bf16 b) {
    bf16 product = bf16_mul(a, b);
    return mcf_make(product, bf16_fma(a, b, bf16_neg(product)));
}

// Grow (Collage): x + a for a bf16 a. The rounding error of hi (+) a goes into lo, then Fast2Sum
// renormalises. TwoSum makes the first step exact for any magnitudes: weights near zero see updates larger
// than themselves, where Collage's Fast2Sum-based step would lose bits.
LP_HD Mcf mcf_grow(Mcf x, bf16 a) {
    Mcf sum = two_sum(x.hi, a);
    return fast_two_sum(sum.hi, bf16_add(x.lo, sum.lo));
}

// Collage's Grow as published: s = hi (+) a; lo = lo (+) (a (-) (s (-) hi)); (hi, lo) = Fast2Sum(s, lo).
// Three ops cheaper than mcf_grow and the same result whenever |hi| >= |a| (or hi == 0).
LP_HD Mcf mcf_grow_fast(Mcf x, bf16 a) {
    Mcf sum = fast_two_sum(x.hi, a);
    return fast_two_sum(sum.hi, bf16_add(x.lo, sum.lo));
}

// x * y for two pairs (Collage's MultMC, e.g. v * (beta2_hi + beta2_lo)), dropping x.lo * y.lo, which lies
// below the pair's precision. A product of two bf16 is exact in fp32, so the three remaining terms are summed
// in fp32 (two fmas, each rounding once to 24 bits) and the fp32 total is split into the nearest bf16 and
// the remainder, which is exact in fp32 and rounds once to bf16. This is as accurate as TwoProd on hi*hi
// followed by renormalisation, with fewer roundings of the small terms. Every intermediate is a fresh
// variable: the released Collage code computed the product error from an operand it had already
// overwritten with the product.
LP_HD Mcf mcf_mul(Mcf x, Mcf y) {
    float x_hi = bf16_to_f32(x.hi), x_lo = bf16_to_f32(x.lo);
    float y_hi = bf16_to_f32(y.hi), y_lo = bf16_to_f32(y.lo);
    float total = fmaf(x_hi, y_hi, fmaf(x_hi, y_lo, x_lo * y_hi));
    bf16 hi = bf16_from_f32(total);
    if (!isfinite(bf16_to_f32(hi))) return mcf_make(hi, 0);
    return mcf_make(hi, bf16_from_f32(total - bf16_to_f32(hi)));
}

// Restores |lo| <= 1/2 ulp(hi) for a pair built by other means.
LP_HD Mcf mcf_renormalize(Mcf x) { return two_sum(x.hi, x.lo); }

// Conversions. From fp32: hi = bf16(v), and v - hi is exact in fp32; lo keeps its top 8 bits.
// When hi is not finite (v is inf or NaN, or rounded up to inf) the pair is (hi, 0).
LP_HD Mcf mcf_from_f32(float v) {
    bf16 hi = bf16_from_f32(v);
    if (!isfinite(bf16_to_f32(hi))) return mcf_make(hi, 0);
    return mcf_make(hi, bf16_from_f32(v - bf16_to_f32(hi)));
}

LP_HD float mcf_to_f32(Mcf x) { return bf16_to_f32(x.hi) + bf16_to_f32(x.lo); }

// From double: going through fp32 may round twice, so hi can miss the nearest bf16 by a tie; the remainder
// v - hi is exact in double, and the final TwoSum restores the normalisation.
LP_HD Mcf mcf_from_double(double v) {
    bf16 hi = bf16_from_f32((float)v);
    if (!isfinite(bf16_to_f32(hi))) return mcf_make(hi, 0);
    bf16 lo = bf16_from_f32((float)(v - (double)bf16_to_f32(hi)));
    return mcf_renormalize(mcf_make(hi, lo));
}

LP_HD double mcf_to_double(Mcf x) { return (double)bf16_to_f32(x.hi) + (double)bf16_to_f32(x.lo); }

#endif
