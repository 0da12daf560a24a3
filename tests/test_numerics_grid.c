// Integer grids (DQT) and per-tensor scaling (FP8): grid ends, absmean scale, the DQT grid's codes, step and
// range per width against a hand computation, ternary = BitNet b1.58's quantizer, int8's use of its codes,
// nearest and stochastic rounding with clamping, scale from amax with a margin, delayed scaling over an amax
// history, quantize-dequantize, and the per-token int8 quantization of activations.
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "numerics/scaling.h"
#include "numerics/stochastic_rounding.h"
#include "testing.h"

static uint64_t test_rng_state = 0xabcdef0123456789ull;

static uint64_t test_random(void) { return splitmix64_next(&test_rng_state); }

static double test_uniform(void) { return ((double)(test_random() >> 11) + 0.5) * 0x1p-53; }

static RngKey make_key(uint64_t seed, uint64_t step, uint32_t tensor_id) {
    RngKey key;
    key.seed = seed;
    key.step = step;
    key.tensor_id = tensor_id;
    return key;
}

static void test_grids(void) {
    IntGrid int8 = int_grid_bits(8), int4 = int_grid_bits(4), int2 = int_grid_bits(2), ternary = int_grid_ternary();
    CHECK(int8.min == -128 && int8.max == 127, "8-bit grid");
    CHECK(int4.min == -8 && int4.max == 7, "4-bit grid");
    CHECK(int2.min == -2 && int2.max == 1, "2-bit grid");
    CHECK(ternary.min == -1 && ternary.max == 1, "ternary grid");
}

static void test_absmean(void) {
    float w[4] = {1.0f, -2.0f, 3.0f, -4.0f};
    CHECK(absmean_scale(w, 4) == 2.5f, "absmean of 1,-2,3,-4 is 2.5");
    float zeros[3] = {0, 0, 0};
    CHECK(absmean_scale(zeros, 3) == 1e-5f, "an all-zero tensor gets the floor 1e-5");
    size_t n = 100000;
    float *v = (float *)malloc(n * sizeof(float));
    long double sum = 0;
    for (size_t i = 0; i < n; i++) {
        v[i] = (float)((test_uniform() - 0.5) * 0.04);
        sum += fabsl((long double)v[i]);
    }
    double want = (double)(sum / n);
    CHECK(fabs(absmean_scale(v, n) - want) <= 1e-6 * want, "absmean %.9g vs %.9g", absmean_scale(v, n), want);
    free(v);
}

// The DQT grid of every width on a hand-made matrix: mean|W| = 1.65 / 8 = 0.20625, Qp = 2^(N-1) - 1 (1 for
// ternary), codes clamp(round(w * Qp / 0.20625), -Qp-1, Qp), step 0.20625 / Qp, so the largest value is
// Qp * step = 0.20625 for every width and the smallest -(Qp+1) * step. E.g. int8: 0.3 * 127 / 0.20625 = 184.7
// clamps to 127, -0.1 -> -61.58 -> -62, 0.2 -> 123.2 -> 123, 0.15 -> 92.4 -> 92; ternary: 0.05 -> 0.24 -> 0.
// (No product lies within 0.015 of a rounding tie.)
static void test_dqt_grid_by_hand(void) {
    const float w[8] = {0.3f, -0.1f, 0.05f, -0.6f, 0.2f, 0.0f, 0.15f, -0.25f};
    const int widths[8] = {2, 3, 4, 5, 6, 7, 8, 0};  // 0: ternary
    const int qp[8] = {1, 3, 7, 15, 31, 63, 127, 1};
    const int32_t want[8][8] = {
        {1, 0, 0, -2, 1, 0, 1, -1},          {3, -1, 1, -4, 3, 0, 2, -4},
        {7, -3, 2, -8, 7, 0, 5, -8},         {15, -7, 4, -16, 15, 0, 11, -16},
        {31, -15, 8, -32, 30, 0, 23, -32},   {63, -31, 15, -64, 61, 0, 46, -64},
        {127, -62, 31, -128, 123, 0, 92, -128}, {1, 0, 0, -1, 1, 0, 1, -1},
    };
    float absmean = absmean_scale(w, 8);
    CHECK(fabs(absmean - 0.20625) < 1e-7, "mean |W| %.9g", absmean);
    for (int k = 0; k < 8; k++) {
        IntGrid g = dqt_grid(widths[k]);
        int lowest = widths[k] ? -qp[k] - 1 : -1;
        CHECK(g.max == qp[k] && g.min == lowest, "width %d: grid [%d, %d]", widths[k], g.min, g.max);
        float step = dqt_step(absmean, g);
        CHECK(fabs(step - 0.20625 / qp[k]) <= 1e-6 * 0.20625 / qp[k], "width %d: step %.9g", widths[k], step);
        CHECK(fabs(int_grid_dequantize(g.max, step) - 0.20625) < 1e-6, "width %d: range ends at +mean|W|", widths[k]);
        CHECK(fabs(int_grid_dequantize(g.min, step) + 0.20625 * (qp[k] + (widths[k] ? 1 : 0)) / qp[k]) < 1e-6,
              "width %d: range starts at -(Qp+1) steps", widths[k]);
        int wrong = 0;
        for (int e = 0; e < 8; e++) wrong += int_grid_quantize(w[e], step, g, ROUND_NEAREST_EVEN, 0) != want[k][e];
        CHECK(wrong == 0, "width %d: %d codes differ from the hand computation", widths[k], wrong);
    }
}

// n normal draws of standard deviation sigma (Box-Muller).
static float *normal_matrix(size_t n, double sigma) {
    float *w = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)(sigma * sqrt(-2.0 * log(test_uniform())) * cos(6.283185307179586 * test_uniform()));
    }
    return w;
}

// The ternary DQT grid is BitNet b1.58's absmean quantizer: clamp(round(w / mean|w|), -1, 1) * mean|w|,
// computed here in double.
static void test_ternary_is_bitnet(void) {
    size_t n = 65536;
    float *w = normal_matrix(n, 0.02);
    float absmean = absmean_scale(w, n);
    IntGrid ternary = dqt_grid(0);
    float step = dqt_step(absmean, ternary);
    int differ = 0;
    for (size_t i = 0; i < n; i++) {
        double bitnet = fmax(-1.0, fmin(1.0, nearbyint((double)w[i] / absmean))) * absmean;
        differ += int_grid_dequantize(int_grid_quantize(w[i], step, ternary, ROUND_NEAREST_EVEN, 0), step) != bitnet;
    }
    CHECK(step == absmean, "the ternary step is mean|W| itself");
    CHECK(differ == 0, "%d of %zu ternary values differ from BitNet's quantizer", differ, n);
    free(w);
}

// int8 is a fine grid over +-mean|W|: a 768 x 768 normal matrix uses (nearly) all 256 codes at init, where a
// grid of step mean|W| would use about 9.
static void test_int8_uses_its_codes(void) {
    size_t n = 768 * 768;
    float *w = normal_matrix(n, 0.02);
    IntGrid int8 = dqt_grid(8);
    float step = dqt_step(absmean_scale(w, n), int8);
    int used[256] = {0}, distinct = 0;
    for (size_t i = 0; i < n; i++) used[int_grid_quantize(w[i], step, int8, ROUND_NEAREST_EVEN, 0) + 128] = 1;
    for (int c = 0; c < 256; c++) distinct += used[c];
    CHECK(distinct >= 200, "int8 uses %d distinct codes on a 768x768 normal matrix", distinct);
    printf("int8 DQT grid: %d of 256 codes used by a 768x768 normal matrix at init\n", distinct);
    free(w);
}

static void test_nearest_and_clamping(void) {
    IntGrid int8 = int_grid_bits(8), ternary = int_grid_ternary();
    float s = 0.5f;
    CHECK(int_grid_quantize(1.25f, s, int8, ROUND_NEAREST_EVEN, 0) == 2, "2.5 -> 2 (ties to even)");
    CHECK(int_grid_quantize(1.75f, s, int8, ROUND_NEAREST_EVEN, 0) == 4, "3.5 -> 4");
    CHECK(int_grid_quantize(-1.25f, s, int8, ROUND_NEAREST_EVEN, 0) == -2, "-2.5 -> -2");
    CHECK(int_grid_quantize(-1.3f, s, int8, ROUND_NEAREST_EVEN, 0) == -3, "-2.6 -> -3");
    CHECK(int_grid_quantize(-1.3f, s, int8, ROUND_TOWARD_ZERO, 0) == -2, "-2.6 toward zero -> -2");
    CHECK(int_grid_quantize(63.6f, s, int8, ROUND_NEAREST_EVEN, 0) == 127, "127.2 -> 127");
    CHECK(int_grid_quantize(64.0f, s, int8, ROUND_NEAREST_EVEN, 0) == 127, "128 clamps to 127");
    CHECK(int_grid_quantize(-64.0f, s, int8, ROUND_NEAREST_EVEN, 0) == -128, "-128 stays");
    CHECK(int_grid_quantize(-1e30f, s, int8, ROUND_NEAREST_EVEN, 0) == -128, "-1e30 clamps to -128");
    CHECK(int_grid_quantize(INFINITY, s, int8, ROUND_NEAREST_EVEN, 0) == 127, "inf clamps to 127");
    CHECK(int_grid_quantize(NAN, s, int8, ROUND_NEAREST_EVEN, 0) == 0, "NaN -> 0");
    CHECK(int_grid_quantize(0.3f, 0.5f, ternary, ROUND_NEAREST_EVEN, 0) == 1, "0.6 -> 1");
    CHECK(int_grid_quantize(0.2f, 0.5f, ternary, ROUND_NEAREST_EVEN, 0) == 0, "0.4 -> 0");
    CHECK(int_grid_quantize(-7.0f, 0.5f, ternary, ROUND_NEAREST_EVEN, 0) == -1, "-14 clamps to -1");
    CHECK(int_grid_dequantize(-3, 0.25f) == -0.75f, "dequantize");
    // round_to_integer against the C library: rintf (nearest-even in the default mode) and truncf.
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        float x = (float)((test_uniform() - 0.5) * ldexp(1.0, (int)(test_random() % 40) - 10));
        if (round_to_integer(x, ROUND_NEAREST_EVEN, 0) != rintf(x)) bad++;
        if (round_to_integer(x, ROUND_TOWARD_ZERO, 0) != truncf(x)) bad++;
        float sr = round_to_integer(x, ROUND_STOCHASTIC, (uint32_t)test_random());
        if (sr != floorf(x) && sr != ceilf(x)) bad++;
    }
    CHECK(bad == 0, "%d integer roundings disagree with rintf/truncf/floorf/ceilf", bad);
}

// w / scale sits between grid points lower and lower + 1: over 10^6 draws the mean must be within 4 standard
// errors of w / scale, and the share rounded up within 4 standard errors of the fractional distance.
static void check_grid_sr_unbiased(const char *name, float w, float scale, IntGrid grid, int lower) {
    RngKey key = make_key(99, 5, 3);
    double x = (double)(w / scale);
    double p = x - lower;
    long n = 1000000, ups = 0, strays = 0;
    double sum = 0;
    for (long i = 0; i < n; i++) {
        int32_t q = int_grid_quantize_sr_keyed(w, scale, grid, key, (uint64_t)i);
        if (q == lower + 1) ups++;
        else if (q != lower) strays++;
        sum += q;
    }
    double se = sqrt(p * (1 - p) / n);
    CHECK(strays == 0, "%s: %ld draws off the two neighbours", name, strays);
    CHECK(fabs(sum / n - x) <= 4 * se, "%s: mean %.6f vs %.6f", name, sum / n, x);
    CHECK(fabs((double)ups / n - p) <= 4 * se, "%s: up frequency %.6f vs %.6f", name, (double)ups / n, p);
}

static void test_stochastic_rounding_onto_grids(void) {
    check_grid_sr_unbiased("ternary 0.3", 0.3f, 1.0f, int_grid_ternary(), 0);
    check_grid_sr_unbiased("ternary -0.7 * 0.05", -0.035f, 0.05f, int_grid_ternary(), -1);
    check_grid_sr_unbiased("int8 100.25", 25.0625f, 0.25f, int_grid_bits(8), 100);
    check_grid_sr_unbiased("int8 -127.9", -127.9f, 1.0f, int_grid_bits(8), -128);
    check_grid_sr_unbiased("int4 tiny", 1e-4f, 1.0f, int_grid_bits(4), 0);
    // Beyond the ends, clamping comes first, so SR always returns the end.
    RngKey key = make_key(1, 2, 3);
    int bad = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        if (int_grid_quantize_sr_keyed(1.7f, 1.0f, int_grid_ternary(), key, i) != 1) bad++;
        if (int_grid_quantize_sr_keyed(-300.5f, 1.0f, int_grid_bits(8), key, i) != -128) bad++;
        if (int_grid_quantize_sr_keyed(127.5f, 1.0f, int_grid_bits(8), key, i) != 127) bad++;
    }
    CHECK(bad == 0, "%d draws beyond the grid ends escaped the clamp", bad);
}

static void test_scale_from_amax(void) {
    CHECK(scale_from_amax(2.0f, 448.0f, 0, 1.0f) == 224.0f, "448 / 2");
    CHECK(scale_from_amax(2.0f, 448.0f, 1, 1.0f) == 112.0f, "margin 1 halves");
    CHECK(scale_from_amax(3.0f, 57344.0f, 3, 1.0f) == (57344.0f / 3.0f) / 8.0f, "margin 3, e5m2");
    CHECK(scale_from_amax(0.0f, 448.0f, 0, 7.0f) == 7.0f, "zero amax keeps the previous scale");
    CHECK(scale_from_amax(NAN, 448.0f, 0, 7.0f) == 7.0f, "NaN amax keeps the previous scale");
    CHECK(scale_from_amax(INFINITY, 448.0f, 0, 7.0f) == 7.0f, "inf amax keeps the previous scale");
    CHECK(scale_from_amax(1e-44f, 448.0f, 0, 7.0f) == FLT_MAX, "a scale beyond fp32 becomes FLT_MAX");
    float history[5] = {1.0f, 4.0f, NAN, 2.0f, 0.0f};
    CHECK(amax_history_max(history, 5) == 4.0f, "history max skips NaN");
}

static void test_quantize_dequantize(void) {
    ExmyFormat e4m3 = exmy_e4m3();
    float scale = 448.0f / 3.0f;  // amax 3
    // In range: the e4m3 value of x * scale, divided back.
    float x = 1.1f;
    float cast = exmy_quantize(x * scale, e4m3, ROUND_NEAREST_EVEN, OVERFLOW_SATURATE, 0);
    CHECK(quantize_dequantize_scaled(x, scale, e4m3, ROUND_NEAREST_EVEN, 0) == cast * (1.0f / scale),
          "in-range value");
    // Beyond amax: clamped to the format's max before the cast, so never NaN even though e4m3 has no inf.
    float big = quantize_dequantize_scaled(10.0f, scale, e4m3, ROUND_NEAREST_EVEN, 0);
    CHECK(big == 448.0f * (1.0f / scale), "clamped to +max: %g", big);
    CHECK(quantize_dequantize_scaled(-10.0f, scale, e4m3, ROUND_NEAREST_EVEN, 0) == -448.0f * (1.0f / scale),
          "clamped to -max");
    CHECK(isnan(quantize_dequantize_scaled(NAN, scale, e4m3, ROUND_NEAREST_EVEN, 0)), "NaN passes through");
    CHECK(exmy_encode_scaled(10.0f, scale, e4m3, ROUND_NEAREST_EVEN, 0) == 0x7e, "stored code of a clamped value");
    // The tensor loop and tensor_amax.
    size_t n = 50000;
    float *in = (float *)malloc(n * sizeof(float)), *out = (float *)malloc(n * sizeof(float));
    float want_amax = 0.0f;
    for (size_t i = 0; i < n; i++) {
        in[i] = (float)((test_uniform() - 0.5) * 6.0);
        want_amax = fabsf(in[i]) > want_amax ? fabsf(in[i]) : want_amax;
    }
    CHECK(tensor_amax(in, n) == want_amax, "tensor amax");
    RngKey key = make_key(5, 6, 7);
    float tensor_scale = scale_from_amax(tensor_amax(in, n), e4m3.max_finite, 0, 1.0f);
    quantize_dequantize_tensor(out, in, n, tensor_scale, e4m3, ROUND_STOCHASTIC, key);
    int bad = 0;
    double error_sum = 0;
    for (size_t i = 0; i < n; i++) {
        float want = quantize_dequantize_scaled(in[i], tensor_scale, e4m3, ROUND_STOCHASTIC, rng_u32(key, i));
        if (out[i] != want) bad++;
        error_sum += (double)out[i] - in[i];
    }
    CHECK(bad == 0, "%d tensor elements differ from the per-element function", bad);
    CHECK(fabs(error_sum / n) < 1e-3, "stochastic quantize-dequantize is unbiased on average: %g", error_sum / n);
    in[17] = NAN;
    CHECK(isnan(tensor_amax(in, n)), "tensor amax sees NaN");
    free(in);
    free(out);
}

// Four rows of four, quantized each by its own absmax, against hand computation. Row 0: s = 127, codes
// 63.5 -> 64 (an even tie), -127, 31.75 -> 32, 0. Row 1: s = 1, so the codes are the values rounded
// half to even (2.5 -> 2, -0.5 -> -0, 3.5 -> 4). Row 2 is zero and stays zero (the floor 1e-5 keeps s
// finite). Row 3 lies below the floor: s = 127 / 1e-5, codes 12.7 -> 13 and -25.4 -> -25.
static void test_activation_quant_rows(void) {
    float x[16] = {0.5f, -1.0f, 0.25f, 0.0f,  127.0f, 2.5f, -0.5f, 3.5f,
                   0.0f, 0.0f,  0.0f,  0.0f,  1e-6f,  -2e-6f, 0.0f, 0.0f};
    float small = 127.0f / 1e-5f;
    float want[16] = {64.0f / 127.0f, -1.0f, 32.0f / 127.0f, 0.0f,  127.0f, 2.0f, -0.0f, 4.0f,
                      0.0f, 0.0f, 0.0f, 0.0f,  13.0f / small, -25.0f / small, 0.0f, 0.0f};
    float got[16];
    quantize_activation_rows(got, x, 4, 4);
    for (int i = 0; i < 16; i++) CHECK(got[i] == want[i], "activation quant row %d col %d: %.9g, want %.9g", i / 4,
                                       i % 4, got[i], want[i]);
    CHECK(signbit(got[6]) && !signbit(got[8]), "-0.5 rounds to -0, a zero row stays +0");
    quantize_activation_rows(x, x, 4, 4);
    CHECK(memcmp(x, got, sizeof got) == 0, "activation quant in place");
    CHECK(activation_quant_scale(0.0f) == small, "the scale of a zero row uses the floor 1e-5");
    CHECK(activation_quant_value(1.0f, 127.0f) == 1.0f && activation_quant_value(-1.0f, 127.0f) == -1.0f,
          "the row's absmax maps to +-127 and back");
}

int main(void) {
    test_grids();
    test_absmean();
    test_dqt_grid_by_hand();
    test_ternary_is_bitnet();
    test_int8_uses_its_codes();
    test_nearest_and_clamping();
    test_stochastic_rounding_onto_grids();
    test_scale_from_amax();
    test_quantize_dequantize();
    test_activation_quant_rows();
    return test_summary("test_numerics_grid");
}
