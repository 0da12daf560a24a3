// ExMy formats: the OCP FP8 code tables, code round trips, agreement with bf16 and with gcc's _Float16, and
// every format against a rounding reference computed in double with frexp/nearbyint/trunc.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "numerics/exmy.h"
#include "numerics/stochastic_rounding.h"
#include "testing.h"

static uint64_t test_rng_state = 0x0ddba11cafef00dull;

static uint64_t test_random(void) { return splitmix64_next(&test_rng_state); }

static int same_bits(float a, float b) { return bits_of_float(a) == bits_of_float(b); }

// A random fp32 with exponent in [lo, hi], random sign and mantissa.
static float random_float(int lo, int hi) {
    uint64_t r = test_random();
    int exponent = lo + (int)(r % (uint64_t)(hi - lo + 1));
    uint32_t bits = ((uint32_t)(r >> 32) & 0x807fffffu) | (uint32_t)(exponent + 127) << 23;
    return float_of_bits(bits);
}

// OCP 8-bit floating point specification (v1.0), written out per code: E4M3 has bias 7, subnormals
// m/8 * 2^-6, no infinities and NaN only at S.1111.111; E5M2 has bias 15, subnormals m/4 * 2^-14, and
// IEEE infinities (S.11111.00) and NaNs (S.11111.{01,10,11}).
static double ocp_e4m3_value(int code) {
    int sign = code >> 7, exponent = (code >> 3) & 15, mantissa = code & 7;
    double magnitude;
    if (exponent == 15 && mantissa == 7) return NAN;
    if (exponent == 0) magnitude = mantissa / 8.0 * (1.0 / 64.0);
    else magnitude = (1.0 + mantissa / 8.0) * pow(2.0, exponent - 7);
    return sign ? -magnitude : magnitude;
}

static double ocp_e5m2_value(int code) {
    int sign = code >> 7, exponent = (code >> 2) & 31, mantissa = code & 3;
    double magnitude;
    if (exponent == 31) magnitude = mantissa ? NAN : INFINITY;
    else if (exponent == 0) magnitude = mantissa / 4.0 * pow(2.0, -14);
    else magnitude = (1.0 + mantissa / 4.0) * pow(2.0, exponent - 15);
    return sign ? -magnitude : magnitude;
}

static void test_fp8_tables(void) {
    ExmyFormat e4m3 = exmy_e4m3(), e5m2 = exmy_e5m2();
    int bad = 0, nan_codes_e4m3 = 0, nan_codes_e5m2 = 0, inf_codes_e5m2 = 0;
    for (int c = 0; c < 256; c++) {
        double want4 = ocp_e4m3_value(c), want5 = ocp_e5m2_value(c);
        float got4 = e4m3_to_f32((uint8_t)c), got5 = e5m2_to_f32((uint8_t)c);
        if (isnan(want4) ? !isnan(got4) : (double)got4 != want4 || !signbit(got4) != !(c & 0x80)) bad++;
        if (isnan(want5) ? !isnan(got5) : (double)got5 != want5 || !signbit(got5) != !(c & 0x80)) bad++;
        nan_codes_e4m3 += isnan(got4) != 0;
        nan_codes_e5m2 += isnan(got5) != 0;
        inf_codes_e5m2 += isinf(got5) != 0;
        CHECK(!isinf(got4), "e4m3 code %02x decodes to inf", c);
        // Every non-NaN code encodes back to itself.
        if (!isnan(got4) && e4m3_from_f32(got4, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) != c) bad++;
        if (!isnan(got5) && e5m2_from_f32(got5, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) != c) bad++;
        if (!isnan(got4) && exmy_encode(got4, e4m3, ROUND_TOWARD_ZERO, OVERFLOW_SATURATE, 0) != (uint32_t)c) bad++;
    }
    CHECK(bad == 0, "%d FP8 codes disagree with the OCP tables or do not round-trip", bad);
    CHECK(nan_codes_e4m3 == 2 && nan_codes_e5m2 == 6 && inf_codes_e5m2 == 2, "special code counts");
    CHECK(e4m3.max_finite == 448.0f && e4m3_to_f32(0x7e) == 448.0f, "e4m3 max is 448");
    CHECK(e5m2.max_finite == 57344.0f && e5m2_to_f32(0x7b) == 57344.0f, "e5m2 max is 57344");
    CHECK(e4m3_to_f32(0x01) == 0x1p-9f && e5m2_to_f32(0x01) == 0x1p-16f, "min subnormals 2^-9 and 2^-16");
    CHECK(e4m3_to_f32(0x08) == 0x1p-6f && e5m2_to_f32(0x04) == 0x1p-14f, "min normals 2^-6 and 2^-14");
    CHECK(e4m3_to_f32(0x38) == 1.0f && e5m2_to_f32(0x3c) == 1.0f, "one");
    CHECK(isnan(e4m3_to_f32(0x7f)) && isnan(e4m3_to_f32(0xff)), "e4m3 NaN is S.1111.111");
    CHECK(e5m2_to_f32(0x7c) == INFINITY && e5m2_to_f32(0xfc) == -INFINITY, "e5m2 infinities");
    CHECK(!exmy_has_inf(e4m3) && exmy_has_nan(e4m3) && exmy_has_inf(e5m2) && exmy_has_nan(e5m2), "flags");
}

static void test_fp8_overflow(void) {
    // e4m3: 464 is the tie between 448 (mantissa 110, even) and 480 (which would be the NaN code).
    CHECK(e4m3_from_f32(464.0f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0x7e, "464 rounds to 448");
    CHECK(e4m3_from_f32(465.0f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0x7f, "465 overflows to NaN");
    CHECK(e4m3_from_f32(-465.0f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0xff, "-465 overflows to -NaN");
    CHECK(e4m3_from_f32(465.0f, ROUND_NEAREST_EVEN, OVERFLOW_SATURATE, 0) == 0x7e, "465 saturates to 448");
    CHECK(e4m3_from_f32(1e30f, ROUND_NEAREST_EVEN, OVERFLOW_SATURATE, 0) == 0x7e, "1e30 saturates");
    CHECK(e4m3_from_f32(INFINITY, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0x7f, "inf -> NaN in e4m3");
    CHECK(e4m3_from_f32(-INFINITY, ROUND_NEAREST_EVEN, OVERFLOW_SATURATE, 0) == 0xfe, "-inf saturates");
    CHECK(e4m3_from_f32(1000.0f, ROUND_TOWARD_ZERO, OVERFLOW_INF, 0) == 0x7e, "toward zero never overflows");
    CHECK(e4m3_from_f32(NAN, ROUND_NEAREST_EVEN, OVERFLOW_SATURATE, 0) == 0x7f, "NaN stays NaN");
    // e5m2: 61440 is the tie between 57344 (mantissa 11, odd) and 65536, so it goes up and overflows.
    CHECK(e5m2_from_f32(61440.0f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0x7c, "61440 -> inf");
    CHECK(e5m2_from_f32(61439.0f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0x7b, "61439 -> 57344");
    CHECK(e5m2_from_f32(61440.0f, ROUND_NEAREST_EVEN, OVERFLOW_SATURATE, 0) == 0x7b, "saturate");
    CHECK(e5m2_from_f32(-INFINITY, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0xfc, "-inf stays -inf");
    CHECK(e5m2_from_f32(INFINITY, ROUND_NEAREST_EVEN, OVERFLOW_SATURATE, 0) == 0x7b, "inf saturates");
    uint8_t nan_code = e5m2_from_f32(NAN, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0);
    CHECK(isnan(e5m2_to_f32(nan_code)), "e5m2 NaN code %02x", nan_code);
    // Underflow: half the smallest subnormal is a tie with 0 (even); a bit more rounds up.
    CHECK(e4m3_from_f32(0x1p-10f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0x00, "2^-10 -> 0");
    CHECK(e4m3_from_f32(0x1.01p-10f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0x01, "just above -> 2^-9");
    CHECK(e4m3_from_f32(-0x1p-12f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 0x80, "-tiny -> -0");
}

// The largest finite value by the layout rules, independently of the code's max-code construction.
static double reference_max_finite(int exp_bits, int man_bits, int ocp_e4m3) {
    int bias = (1 << (exp_bits - 1)) - 1;
    if (ocp_e4m3) return (2.0 - 2.0 / 8.0) * pow(2.0, 15 - bias);  // S.1111.110
    if (exp_bits == 1) return (2.0 - ldexp(1.0, -man_bits)) * pow(2.0, 1 - bias);
    return (2.0 - ldexp(1.0, -man_bits)) * pow(2.0, (1 << exp_bits) - 2 - bias);
}

// x rounded onto the format in double: the step is 2^(max(e, emin) - M) where 2^e <= |x| < 2^(e+1).
static float reference_quantize(float x, int exp_bits, int man_bits, int ocp_e4m3, RoundingMode mode,
                                OverflowMode overflow) {
    if (isnan(x)) return x;
    int bias = (1 << (exp_bits - 1)) - 1, emin = 1 - bias;
    double max = reference_max_finite(exp_bits, man_bits, ocp_e4m3);
    int has_inf = exp_bits >= 2 && !ocp_e4m3;
    int has_nan = ocp_e4m3 || (exp_bits >= 2 && man_bits > 0);
    double a = fabs((double)x), value;
    if (isinf(a)) {
        value = INFINITY;
    } else {
        int e = 0;
        if (a > 0) frexp(a, &e);
        int lead = e - 1 > emin ? e - 1 : emin;
        double step = ldexp(1.0, lead - man_bits);
        double steps = mode == ROUND_TOWARD_ZERO ? trunc(a / step) : nearbyint(a / step);
        value = steps * step;
    }
    if (value > max) {
        if (mode == ROUND_TOWARD_ZERO && !isinf(a)) value = max;
        else if (overflow == OVERFLOW_SATURATE) value = max;
        else value = has_inf ? INFINITY : has_nan ? NAN : max;
    }
    return (float)(signbit(x) ? -value : value);
}

static int matches(float got, float want) { return isnan(want) ? isnan(got) : same_bits(got, want); }

// Every X and Y (e4m3 in both layouts where it matters), random inputs over the format's range and beyond.
static void test_all_formats_against_reference(void) {
    int bad = 0, bad_code = 0, bad_rtz = 0, checked = 0;
    for (int exp_bits = 1; exp_bits <= 8; exp_bits++) {
        for (int man_bits = 0; man_bits <= 23; man_bits++) {
            for (int ocp = 0; ocp <= (exp_bits == 4 && man_bits == 3); ocp++) {
                ExmyFormat f = ocp ? exmy_e4m3() : exmy_format(exp_bits, man_bits);
                CHECK((double)f.max_finite == reference_max_finite(exp_bits, man_bits, ocp), "max of e%dm%d",
                      exp_bits, man_bits);
                int bias = (1 << (exp_bits - 1)) - 1;
                int lo = 1 - bias - man_bits - 3, hi = (1 << exp_bits) - bias + 1;
                if (lo < -149) lo = -149;
                if (hi > 127) hi = 127;
                for (int i = 0; i < 6000; i++) {
                    float x = random_float(lo < -126 ? -126 : lo, hi);
                    if (i % 8 == 0) x = float_of_bits(bits_of_float(x) & ~0xffffu);  // ties more often
                    if (i % 16 == 1) x = float_of_bits((uint32_t)test_random() & 0x807fffffu);  // fp32 subnormal
                    RoundingMode mode = i % 2 ? ROUND_TOWARD_ZERO : ROUND_NEAREST_EVEN;
                    OverflowMode overflow = (i / 2) % 2 ? OVERFLOW_SATURATE : OVERFLOW_INF;
                    float got = exmy_quantize(x, f, mode, overflow, 0);
                    float want = reference_quantize(x, exp_bits, man_bits, ocp, mode, overflow);
                    if (!matches(got, want)) {
                        if (bad < 5) fprintf(stderr, "e%dm%d%s x=%a mode %d overflow %d: got %a want %a\n",
                                             exp_bits, man_bits, ocp ? "(ocp)" : "", x, mode, overflow, got, want);
                        bad++;
                    }
                    uint32_t code = exmy_encode(x, f, mode, overflow, 0);
                    if (!isnan(got) && !same_bits(exmy_decode(code, f), got)) bad_code++;
                    if (mode == ROUND_TOWARD_ZERO && fabsf(got) > fabsf(x)) bad_rtz++;
                    checked++;
                }
            }
        }
    }
    CHECK(bad == 0, "%d of %d quantizations disagree with the double reference", bad, checked);
    CHECK(bad_code == 0, "%d encodings do not decode to the quantized value", bad_code);
    CHECK(bad_rtz == 0, "%d toward-zero results increased |x|", bad_rtz);
}

// Formats small enough to walk every code: values by the textbook formula, strictly increasing over the
// positive finite codes, and every non-NaN code re-encodes to itself.
static void test_every_code_of_small_formats(void) {
    int bad = 0;
    for (int exp_bits = 1; exp_bits <= 6; exp_bits++) {
        for (int man_bits = 0; man_bits <= 5; man_bits++) {
            ExmyFormat f = exmy_format(exp_bits, man_bits);
            int bias = (1 << (exp_bits - 1)) - 1;
            uint32_t count = 1u << (1 + exp_bits + man_bits);
            float previous = -1.0f;
            for (uint32_t c = 0; c < count; c++) {
                uint32_t magnitude = c & ((count >> 1) - 1);
                int e = (int)(magnitude >> man_bits), m = (int)(magnitude & ((1u << man_bits) - 1));
                double want;
                if (exp_bits >= 2 && e == (1 << exp_bits) - 1) want = m ? NAN : INFINITY;
                else if (e == 0) want = ldexp((double)m, 1 - bias - man_bits);
                else want = ldexp(1.0 + ldexp((double)m, -man_bits), e - bias);
                if (c & (count >> 1)) want = -want;
                float got = exmy_decode(c, f);
                if (!matches(got, (float)want)) bad++;
                if (!isnan(got) && exmy_encode(got, f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) != c) bad++;
                if (c < (count >> 1) && !isnan(got)) {
                    if (!(got > previous)) bad++;
                    previous = got;
                }
            }
        }
    }
    CHECK(bad == 0, "%d small-format codes wrong", bad);
    // e1m2 has no exponent to spare: 0, .5, 1, 1.5 (subnormal) then 2, 2.5, 3, 3.5.
    ExmyFormat e1m2 = exmy_format(1, 2);
    CHECK(e1m2.max_finite == 3.5f && !exmy_has_inf(e1m2) && !exmy_has_nan(e1m2), "e1m2 all finite");
    CHECK(exmy_quantize(100.0f, e1m2, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) == 3.5f, "e1m2 saturates");
}

static void test_e8m7_is_bf16(void) {
    ExmyFormat f = exmy_e8m7();
    int bad_rne = 0, bad_rtz = 0, bad_sr = 0, bad_value = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)test_random();
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // exact ties
        float x = float_of_bits(u);
        uint32_t random_bits = (uint32_t)test_random();
        bf16 want = bf16_from_f32(x);
        uint32_t code = exmy_encode(x, f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0);
        if (isnan(x)) {
            if (!isnan(exmy_decode(code, f))) bad_rne++;
            continue;
        }
        if (code != want) bad_rne++;
        if (!same_bits(exmy_quantize(x, f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0), bf16_to_f32(want))) bad_value++;
        if (exmy_encode(x, f, ROUND_TOWARD_ZERO, OVERFLOW_INF, 0) != bf16_from_f32_rtz(x)) bad_rtz++;
        if (exmy_encode(x, f, ROUND_STOCHASTIC, OVERFLOW_INF, random_bits) != bf16_from_f32_sr(x, random_bits))
            bad_sr++;
    }
    CHECK(bad_rne == 0, "%d e8m7 nearest-even codes differ from bf16_from_f32", bad_rne);
    CHECK(bad_value == 0, "%d e8m7 values differ from the bf16 value", bad_value);
    CHECK(bad_rtz == 0, "%d e8m7 toward-zero codes differ from bf16_from_f32_rtz", bad_rtz);
    CHECK(bad_sr == 0, "%d e8m7 stochastic codes differ from bf16_from_f32_sr", bad_sr);
}

// gcc's _Float16 conversion (x86-64 software or F16C) rounds to nearest even, with IEEE overflow to inf.
static void test_e5m10_is_fp16(void) {
    ExmyFormat f = exmy_e5m10();
    int bad = 0, bad_codes = 0;
    for (int i = 0; i < 1000000; i++) {
        float x = random_float(-27, 17);
        if (i % 4 == 0) x = float_of_bits(bits_of_float(x) & ~0xfffu);  // ties and near-ties
        _Float16 h = (_Float16)x;
        uint16_t h_bits;
        memcpy(&h_bits, &h, 2);
        if (!same_bits(exmy_quantize(x, f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0), (float)h)) bad++;
        if (exmy_encode(x, f, ROUND_NEAREST_EVEN, OVERFLOW_INF, 0) != h_bits) bad++;
    }
    for (uint32_t c = 0; c < 65536; c++) {  // every fp16 code decodes like _Float16
        uint16_t c16 = (uint16_t)c;
        _Float16 h;
        memcpy(&h, &c16, 2);
        float want = (float)h, got = exmy_decode(c, f);
        if (isnan(want) ? !isnan(got) : !same_bits(got, want)) bad_codes++;
    }
    CHECK(bad == 0, "%d e5m10 results differ from _Float16", bad);
    CHECK(bad_codes == 0, "%d fp16 codes decode differently from _Float16", bad_codes);
}

int main(void) {
    test_fp8_tables();
    test_fp8_overflow();
    test_all_formats_against_reference();
    test_every_code_of_small_formats();
    test_e8m7_is_bf16();
    test_e5m10_is_fp16();
    return test_summary("test_numerics_exmy");
}
