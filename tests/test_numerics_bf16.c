// bf16 conversions and bf16 ops against a reference written differently: rounding is done in double with
// frexp/ldexp and an explicit integer tie rule, then read back through fp32 bits.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "numerics/bf16.h"
#include "testing.h"

static uint64_t test_rng_state = 0x1234567887654321ull;

static uint64_t test_random(void) { return splitmix64_next(&test_rng_state); }

static int bf16_is_nan(uint16_t h) { return (h & 0x7fff) > 0x7f80; }

// The bf16 nearest to the finite double v (ties to even), as bits: v = m * 2^e with 8 significant bits kept,
// the exponent floored at bf16's smallest normal exponent -126 so that subnormals get the fixed step 2^-133.
static uint16_t reference_bf16_from_double(double v, int toward_zero) {
    uint16_t sign = signbit(v) ? 0x8000 : 0;
    double a = fabs(v);
    if (a == 0.0) return sign;
    int e;
    frexp(a, &e);  // a = f * 2^e, f in [0.5, 1): the leading bit has weight 2^(e-1)
    int lead = e - 1 < -126 ? -126 : e - 1;
    double step = ldexp(1.0, lead - 7);
    double scaled = a / step;  // exact: a power-of-two scaling
    double whole = floor(scaled);
    double fraction = scaled - whole;
    if (!toward_zero && (fraction > 0.5 || (fraction == 0.5 && fmod(whole, 2.0) == 1.0))) whole += 1.0;
    double rounded = whole * step;
    if (rounded >= ldexp(1.0, 128)) return sign | (toward_zero ? 0x7f7f : 0x7f80);
    return sign | (uint16_t)(bits_of_float((float)rounded) >> 16);
}

// bf16 value of the bits by the textbook formula (not by shifting into fp32).
static double reference_bf16_value(uint16_t h) {
    int sign = h >> 15, exponent = (h >> 7) & 0xff, mantissa = h & 0x7f;
    double magnitude;
    if (exponent == 0xff) magnitude = mantissa ? NAN : INFINITY;
    else if (exponent == 0) magnitude = ldexp(mantissa / 128.0, -126);
    else magnitude = ldexp(1.0 + mantissa / 128.0, exponent - 127);
    return sign ? -magnitude : magnitude;
}

static void test_all_bit_patterns(void) {
    int bad_value = 0, bad_roundtrip = 0, bad_nan = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float x = bf16_to_f32((bf16)h);
        double expected = reference_bf16_value((uint16_t)h);
        bf16 back = bf16_from_f32(x);
        if (bf16_is_nan((uint16_t)h)) {
            if (!isnan(x) || !bf16_is_nan(back) || (back & 0x8000) != (h & 0x8000)) bad_nan++;
            continue;
        }
        if ((double)x != expected || !signbit(x) != !signbit(expected)) bad_value++;
        if (back != h) bad_roundtrip++;
        if (bf16_from_f32_rtz(x) != h) bad_roundtrip++;
    }
    CHECK(bad_value == 0, "%d bf16 patterns decode to the wrong value", bad_value);
    CHECK(bad_roundtrip == 0, "%d bf16 patterns do not re-encode to themselves", bad_roundtrip);
    CHECK(bad_nan == 0, "%d NaN patterns lost NaN-ness or sign", bad_nan);
}

static void test_halfway_cases(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 0x7f80; h++) {  // every finite positive bf16 below the largest
        for (int negative = 0; negative < 2; negative++) {
            uint32_t base = (h << 16) | (negative ? 0x80000000u : 0);
            uint16_t even = (uint16_t)(base >> 16);
            uint16_t expected = (h & 1) ? (uint16_t)(even + 1) : even;  // ties go to the even neighbour
            if (bf16_from_f32(float_of_bits(base | 0x8000u)) != expected) bad++;
            if (bf16_from_f32(float_of_bits(base | 0x7fffu)) != even) bad++;         // just below half
            if (bf16_from_f32(float_of_bits(base | 0x8001u)) != even + 1) bad++;     // just above half
        }
    }
    CHECK(bad == 0, "%d constructed halfway cases rounded wrongly", bad);
    // The largest finite bf16 plus half a step is a tie with 2^128, whose even neighbour overflows.
    CHECK(bf16_from_f32(float_of_bits(0x7f7f8000u)) == 0x7f80, "tie above max bf16 should round to inf");
    CHECK(bf16_from_f32(float_of_bits(0x7f7f7fffu)) == 0x7f7f, "just below the tie stays at max bf16");
    CHECK(bf16_from_f32(INFINITY) == 0x7f80 && bf16_from_f32(-INFINITY) == 0xff80, "infinities");
    CHECK(bf16_is_nan(bf16_from_f32(NAN)), "NaN stays NaN");
    CHECK(bf16_is_nan(bf16_from_f32(float_of_bits(0x7f800001u))), "NaN with only low payload bits stays NaN");
    CHECK(bf16_from_f32_rtz(float_of_bits(0x3f80ffffu)) == 0x3f80, "toward zero truncates");
    CHECK(bf16_from_f32_rtz(float_of_bits(0xbf80ffffu)) == 0xbf80, "toward zero truncates negatives");
}

static void test_random_values(void) {
    int bad_rne = 0, bad_rtz = 0, bad_round = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)test_random();
        float x = float_of_bits(u);
        if (isnan(x)) {
            if (!bf16_is_nan(bf16_from_f32(x)) || !bf16_is_nan(bf16_from_f32_rtz(x))) bad_rne++;
            continue;
        }
        if (isinf(x)) continue;
        uint16_t expected = reference_bf16_from_double((double)x, 0);
        if (bf16_from_f32(x) != expected) bad_rne++;
        if (bf16_from_f32_rtz(x) != reference_bf16_from_double((double)x, 1)) bad_rtz++;
        float rounded = round_bf16(x);
        if (bits_of_float(rounded) != ((uint32_t)expected << 16)) bad_round++;
    }
    CHECK(bad_rne == 0, "%d random fp32 values disagree with the RNE reference", bad_rne);
    CHECK(bad_rtz == 0, "%d random fp32 values disagree with the truncation reference", bad_rtz);
    CHECK(bad_round == 0, "%d round_bf16 results disagree", bad_round);
}

// A finite bf16 with an exponent in [-40, 40] and random sign and mantissa.
static bf16 random_bf16(void) {
    uint64_t r = test_random();
    uint32_t exponent = (uint32_t)(127 - 40 + (int)(r % 81));
    return (bf16)(((r >> 8) & 1) << 15 | exponent << 7 | ((r >> 16) & 0x7f));
}

// Each op against the exactly rounded result: sums, products and quotients of bf16 computed in double are
// exact or rounded once at 53 bits, and double -> bf16 is then innocuous (53 >= 2*8+2). The fma is specified
// as the fp32 fma rounded to bf16, so its reference rounds a*b+c to fp32 first (a*b is exact in double, the
// sum rounds once to double, and double -> fp32 is innocuous for a sum since 53 >= 2*24+2).
static void test_ops(void) {
    int bad_add = 0, bad_sub = 0, bad_mul = 0, bad_div = 0, bad_fma = 0, bad_neg = 0;
    for (int i = 0; i < 1000000; i++) {
        bf16 a = random_bf16(), b = random_bf16(), c = random_bf16();
        double x = bf16_to_f32(a), y = bf16_to_f32(b), z = bf16_to_f32(c);
        if (bf16_add(a, b) != reference_bf16_from_double(x + y, 0)) bad_add++;
        if (bf16_sub(a, b) != reference_bf16_from_double(x - y, 0)) bad_sub++;
        if (bf16_mul(a, b) != reference_bf16_from_double(x * y, 0)) bad_mul++;
        if (bf16_div(a, b) != reference_bf16_from_double(x / y, 0)) bad_div++;
        float fma_f32 = (float)(x * y + z);
        if (bf16_fma(a, b, c) != reference_bf16_from_double((double)fma_f32, 0)) bad_fma++;
        if (bf16_to_f32(bf16_neg(a)) != -x) bad_neg++;
    }
    CHECK(bad_add == 0, "%d bf16_add results are not correctly rounded", bad_add);
    CHECK(bad_sub == 0, "%d bf16_sub results are not correctly rounded", bad_sub);
    CHECK(bad_mul == 0, "%d bf16_mul results are not correctly rounded", bad_mul);
    CHECK(bad_div == 0, "%d bf16_div results are not correctly rounded", bad_div);
    CHECK(bad_fma == 0, "%d bf16_fma results differ from fp32 fma rounded to bf16", bad_fma);
    CHECK(bad_neg == 0, "%d bf16_neg results wrong", bad_neg);
    // One rounding for the fma: 1.125 + 2^-8 is a bf16 tie that goes down to 1.125, but 1.0625^2 + 2^-20
    // is just above it and must go up to 1.125 + 2^-7. Rounding a*b first would lose the 2^-20.
    bf16 a = bf16_from_f32(1.0625f), tiny = bf16_from_f32(0x1p-20f);
    CHECK(bf16_to_f32(bf16_fma(a, a, tiny)) == 1.125f + 0x1p-7f, "fma rounds once");
    CHECK(bf16_to_f32(bf16_add(bf16_mul(a, a), tiny)) == 1.125f, "mul then add rounds twice (control)");
}

int main(void) {
    test_all_bit_patterns();
    test_halfway_cases();
    test_random_values();
    test_ops();
    return test_summary("test_numerics_bf16");
}
