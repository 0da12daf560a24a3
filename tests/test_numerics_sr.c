// Stochastic rounding and its counter-based RNG: Philox known answers, determinism, independence from
// evaluation order, uncorrelated neighbouring draws, and unbiasedness (mean and rounding-up frequency within
// 4 standard errors over 10^6 draws) onto the bf16, FP8, small-float and integer grids.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "numerics/stochastic_rounding.h"
#include "testing.h"

#define DRAWS 1000000

static void test_philox_known_answers(void) {
    // Random123's tests/kat_vectors, "philox4x32 10" lines (counter c0..c3, key k0 k1; first output word).
    CHECK(philox4x32_10(0, 0, 0, 0, 0, 0) == 0x6627e8d5u, "zero vector");
    CHECK(philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu) == 0x408f276du,
          "all-ones vector");
    CHECK(philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u) == 0xd16cfe09u,
          "pi vector");
}

static RngKey make_key(uint64_t seed, uint64_t step, uint32_t tensor_id) {
    RngKey key;
    key.seed = seed;
    key.step = step;
    key.tensor_id = tensor_id;
    return key;
}

static double correlation(const float *a, const float *b, size_t n) {
    double mean_a = 0, mean_b = 0;
    for (size_t i = 0; i < n; i++) {
        mean_a += a[i];
        mean_b += b[i];
    }
    mean_a /= (double)n;
    mean_b /= (double)n;
    double cov = 0, var_a = 0, var_b = 0;
    for (size_t i = 0; i < n; i++) {
        cov += (a[i] - mean_a) * (b[i] - mean_b);
        var_a += (a[i] - mean_a) * (a[i] - mean_a);
        var_b += (b[i] - mean_b) * (b[i] - mean_b);
    }
    return cov / sqrt(var_a * var_b);
}

// Consecutive indices, and the same index under neighbouring tensor ids, steps and seeds, are uncorrelated.
static void test_rng_independence(void) {
    size_t n = DRAWS;
    float *u = (float *)malloc((n + 1) * sizeof(float));
    float *other = (float *)malloc(n * sizeof(float));
    RngKey key = make_key(1234, 77, 5);
    double mean = 0;
    for (size_t i = 0; i <= n; i++) u[i] = rng_uniform(key, i);
    for (size_t i = 0; i < n; i++) mean += u[i];
    mean /= (double)n;
    double limit = 5.0 / sqrt((double)n);
    CHECK(fabs(mean - 0.5) < 4.0 * sqrt(1.0 / 12.0 / (double)n), "uniform mean %.6f", mean);
    double r = correlation(u, u + 1, n);
    CHECK(fabs(r) < limit, "consecutive indices correlate: r = %.5f", r);
    RngKey neighbours[3] = {make_key(1234, 77, 6), make_key(1234, 78, 5), make_key(1235, 77, 5)};
    const char *names[3] = {"tensor ids", "steps", "seeds"};
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < n; i++) other[i] = rng_uniform(neighbours[k], i);
        r = correlation(u, other, n);
        CHECK(fabs(r) < limit, "neighbouring %s correlate: r = %.5f", names[k], r);
    }
    // High index words and high step/seed words matter too.
    CHECK(rng_u32(key, 1) != rng_u32(key, 1 + (1ull << 32)), "index high word ignored");
    CHECK(rng_u32(make_key(1, 1, 0), 9) != rng_u32(make_key(1, 1 + (1ull << 32), 0), 9), "step high word ignored");
    CHECK(rng_u32(make_key(1, 1, 0), 9) != rng_u32(make_key(1 + (1ull << 32), 1, 0), 9), "seed high word ignored");
    free(u);
    free(other);
}

// The same key gives the same bits, whatever order (or thread) evaluates the elements.
static void test_determinism_and_layout(void) {
    size_t n = 100000;
    bf16 *forward = (bf16 *)malloc(n * sizeof(bf16));
    bf16 *strided = (bf16 *)malloc(n * sizeof(bf16));
    bf16 *threaded = (bf16 *)malloc(n * sizeof(bf16));
    RngKey key = make_key(42, 3, 9);
    for (size_t i = 0; i < n; i++) forward[i] = bf16_from_f32_sr_keyed(1.0f + (float)i * 1e-6f, key, i);
    for (size_t start = 0; start < 7; start++)  // seven "threads", each taking every 7th element
        for (size_t i = start; i < n; i += 7) strided[i] = bf16_from_f32_sr_keyed(1.0f + (float)i * 1e-6f, key, i);
#pragma omp parallel for schedule(dynamic, 17)
    for (size_t i = 0; i < n; i++) threaded[i] = bf16_from_f32_sr_keyed(1.0f + (float)i * 1e-6f, key, i);
    CHECK(memcmp(forward, strided, n * sizeof(bf16)) == 0, "result depends on evaluation order");
    CHECK(memcmp(forward, threaded, n * sizeof(bf16)) == 0, "result depends on threads");
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float x = 1.0f + (float)i * 1e-6f;
        if (bf16_from_f32_sr_keyed(x, key, i) != bf16_from_f32_sr(x, rng_u32(key, i))) bad++;
        if (exmy_quantize_sr_keyed(x, exmy_e4m3(), OVERFLOW_SATURATE, key, i) !=
            exmy_quantize(x, exmy_e4m3(), ROUND_STOCHASTIC, OVERFLOW_SATURATE, rng_u32(key, i)))
            bad++;
    }
    CHECK(bad == 0, "%d keyed wrappers differ from explicit random bits", bad);
    free(forward);
    free(strided);
    free(threaded);
}

typedef enum { GRID_BF16, GRID_E4M3, GRID_E5M2, GRID_E2M1, GRID_E3M0 } Grid;

static float round_stochastically(Grid grid, float x, RngKey key, uint64_t index) {
    switch (grid) {
    case GRID_BF16: return bf16_to_f32(bf16_from_f32_sr_keyed(x, key, index));
    case GRID_E4M3: return exmy_quantize_sr_keyed(x, exmy_e4m3(), OVERFLOW_SATURATE, key, index);
    case GRID_E5M2: return exmy_quantize_sr_keyed(x, exmy_e5m2(), OVERFLOW_SATURATE, key, index);
    case GRID_E2M1: return exmy_quantize_sr_keyed(x, exmy_format(2, 1), OVERFLOW_SATURATE, key, index);
    case GRID_E3M0: return exmy_quantize_sr_keyed(x, exmy_format(3, 0), OVERFLOW_SATURATE, key, index);
    }
    return NAN;
}

// x lies between grid neighbours lower < upper (given by hand). Over DRAWS draws, SR(x) must only take those
// two values, its mean must be within 4 standard errors of x, and the share rounded up within 4 standard
// errors of p = (x - lower) / (upper - lower).
static void check_unbiased(const char *name, Grid grid, float x, double lower, double upper, uint32_t tensor_id) {
    RngKey key = make_key(2024, 11, tensor_id);
    double p = ((double)x - lower) / (upper - lower);
    long ups = 0, strays = 0;
    double sum = 0;
    for (long i = 0; i < DRAWS; i++) {
        double r = round_stochastically(grid, x, key, (uint64_t)i);
        if (r == upper) ups++;
        else if (r != lower) strays++;
        sum += r;
    }
    double mean = sum / DRAWS;
    double se_mean = (upper - lower) * sqrt(p * (1 - p) / DRAWS);
    double freq = (double)ups / DRAWS, se_freq = sqrt(p * (1 - p) / DRAWS);
    CHECK(strays == 0, "%s: %ld draws left the two neighbours", name, strays);
    CHECK(fabs(mean - x) <= 4 * se_mean, "%s: mean %.10g vs x %.10g (4 s.e. = %.3g)", name, mean, (double)x,
          4 * se_mean);
    CHECK(fabs(freq - p) <= 4 * se_freq, "%s: up frequency %.7f vs p %.7f (4 s.e. = %.3g)", name, freq, p,
          4 * se_freq);
}

static void test_unbiased(void) {
    // bf16 steps: 2^-7 in [1, 2), 2^-6 in [2, 4), 2^-133 below 2^-126.
    check_unbiased("bf16 1.3 steps above 1", GRID_BF16, 1.0f + 0.3f * 0x1p-7f, 1.0, 1.0 + 0x1p-7, 1);
    check_unbiased("bf16 just above 1", GRID_BF16, 1.0f + 0x1p-23f, 1.0, 1.0 + 0x1p-7, 2);
    check_unbiased("bf16 just below 2", GRID_BF16, 2.0f - 0x1p-23f, 2.0 - 0x1p-7, 2.0, 3);
    check_unbiased("bf16 -3.14159", GRID_BF16, -3.14159f, -3.15625, -3.140625, 4);
    check_unbiased("bf16 subnormal", GRID_BF16, 0x1.3p-131f, 0x1p-131, 0x1.4p-131, 5);
    // e4m3: step 2^-5 in [0.25, 0.5), 2^-9 for subnormals; e5m2: step 256 in [1024, 2048).
    check_unbiased("e4m3 0.3", GRID_E4M3, 0.3f, 0.28125, 0.3125, 6);
    check_unbiased("e4m3 far below the smallest subnormal", GRID_E4M3, 0x1p-20f, 0.0, 0x1p-9, 7);
    check_unbiased("e4m3 -0.001", GRID_E4M3, -0.001f, -0x1p-9, 0.0, 8);
    check_unbiased("e5m2 1100", GRID_E5M2, 1100.0f, 1024.0, 1280.0, 9);
    // e2m1 (IEEE: 0, .5, 1, 1.5, 2, 3) and e3m0 (powers of two, no subnormals).
    check_unbiased("e2m1 2.7", GRID_E2M1, 2.7f, 2.0, 3.0, 10);
    check_unbiased("e3m0 5.5", GRID_E3M0, 5.5f, 4.0, 8.0, 11);
    check_unbiased("e3m0 below min normal", GRID_E3M0, 0.1f, 0.0, 0.25, 12);
    // Grid points, NaN and inf come back unchanged.
    RngKey key = make_key(1, 1, 1);
    int bad = 0;
    for (uint64_t i = 0; i < 10000; i++) {
        if (bf16_to_f32(bf16_from_f32_sr_keyed(1.5f, key, i)) != 1.5f) bad++;
        if (exmy_quantize_sr_keyed(448.0f, exmy_e4m3(), OVERFLOW_INF, key, i) != 448.0f) bad++;
        if (!isnan(bf16_to_f32(bf16_from_f32_sr_keyed(NAN, key, i)))) bad++;
        if (bf16_from_f32_sr_keyed(-INFINITY, key, i) != 0xff80) bad++;
    }
    CHECK(bad == 0, "%d grid points or specials changed under SR", bad);
}

int main(void) {
    test_philox_known_answers();
    test_rng_independence();
    test_determinism_and_layout();
    test_unbiased();
    return test_summary("test_numerics_sr");
}
