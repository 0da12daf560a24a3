// MCF pairs of bf16 (Collage): the error-free transforms are exact (checked in double), Grow keeps the pair
// normalised and loses nothing that the pair can hold, MultMC is accurate to the pair's precision, and the
// Collage-plus second moment tracks an fp64 EMA where plain bf16 stalls.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "numerics/mcf.h"
#include "testing.h"

static uint64_t test_rng_state = 0xfeedface12345678ull;

static uint64_t test_random(void) { return splitmix64_next(&test_rng_state); }

static double test_uniform(void) { return ((double)(test_random() >> 11) + 0.5) * 0x1p-53; }

// A bf16 with the given unbiased exponent and random sign and mantissa.
static bf16 random_bf16_with_exponent(int exponent) {
    uint64_t r = test_random();
    return (bf16)((r & 1) << 15 | (uint32_t)(exponent + 127) << 7 | ((r >> 8) & 0x7f));
}

static double value(bf16 h) { return (double)bf16_to_f32(h); }

// ulp of a bf16 by the textbook rule: 2^(e - 7) for 2^e <= |h| < 2^(e+1), 2^-133 for subnormals and zero.
static double bf16_ulp(bf16 h) {
    double a = fabs(value(h));
    if (a < 0x1p-126) return 0x1p-133;
    int e;
    frexp(a, &e);
    return ldexp(1.0, e - 1 - 7);
}

static int normalised(Mcf x) { return fabs(value(x.lo)) <= 0.5 * bf16_ulp(x.hi); }

// RNE of a double to bf16, reference for "s is the rounded sum": via fp32 (innocuous double rounding for a
// sum of two bf16 since 53 >= 2*24+2 and 24 >= 2*8+2), then the tie rule on the bits.
static bf16 rounded_sum(bf16 a, bf16 b) {
    float f = (float)(value(a) + value(b));
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t low = u & 0xffff, kept = u >> 16;
    if (low > 0x8000 || (low == 0x8000 && (kept & 1))) kept++;
    return (bf16)kept;
}

static void test_error_free_transforms(void) {
    int bad_fast = 0, bad_two = 0, bad_round = 0, bad_prod = 0, bad_norm = 0;
    for (int i = 0; i < 1000000; i++) {
        int gap = i % 41;  // exponent gaps 0..40
        int exponent = -60 + (int)(test_random() % 121);
        bf16 a = random_bf16_with_exponent(exponent);
        bf16 b = random_bf16_with_exponent(exponent - gap);
        double exact = value(a) + value(b);
        Mcf f = fast_two_sum(a, b);  // exponent of a >= exponent of b: all Fast2Sum needs
        if (value(f.hi) + value(f.lo) != exact) bad_fast++;
        if (f.hi != rounded_sum(a, b)) bad_round++;
        if (!normalised(f)) bad_norm++;
        Mcf t = (i & 1) ? two_sum(b, a) : two_sum(a, b);  // any order
        if (value(t.hi) + value(t.lo) != exact || t.hi != f.hi) bad_two++;
        bf16 c = random_bf16_with_exponent(-30 + (int)(test_random() % 61));
        Mcf p = two_prod(a, c);
        if (value(p.hi) + value(p.lo) != value(a) * value(c)) bad_prod++;
    }
    CHECK(bad_fast == 0, "%d Fast2Sum results are not exact", bad_fast);
    CHECK(bad_round == 0, "%d Fast2Sum sums are not the rounded sum", bad_round);
    CHECK(bad_norm == 0, "%d Fast2Sum errors exceed half an ulp", bad_norm);
    CHECK(bad_two == 0, "%d TwoSum results are not exact", bad_two);
    CHECK(bad_prod == 0, "%d TwoProd results are not exact", bad_prod);
}

// A normalised random pair with hi of the given exponent.
static Mcf random_pair(int exponent) {
    bf16 hi = random_bf16_with_exponent(exponent);
    bf16 lo = bf16_from_f32((float)((test_uniform() - 0.5) * bf16_ulp(hi)));
    return mcf_make(hi, lo);
}

static void test_grow(void) {
    int bad_norm = 0, bad_error = 0, bad_fast = 0;
    for (int i = 0; i < 1000000; i++) {
        int exponent = -20 + (int)(test_random() % 41);
        Mcf x = random_pair(exponent);
        bf16 a = random_bf16_with_exponent(exponent - 20 + (int)(test_random() % 26));  // |a| up to 32|hi|
        Mcf y = mcf_grow(x, a);
        if (!normalised(y)) bad_norm++;
        // The only rounding is lo (+) (error of hi (+) a): at most half an ulp of a value below
        // 1/2 ulp(hi) + 1/2 ulp(s), i.e. 2^-9 (ulp(hi) + ulp(s)).
        double exact = value(x.hi) + value(x.lo) + value(a);
        double bound = 0x1p-9 * (bf16_ulp(x.hi) + bf16_ulp(bf16_add(x.hi, a)));
        if (fabs(mcf_to_double(y) - exact) > bound) bad_error++;
        if (fabs(value(x.hi)) >= fabs(value(a))) {
            Mcf z = mcf_grow_fast(x, a);
            if (z.hi != y.hi || z.lo != y.lo) bad_fast++;
        }
    }
    CHECK(bad_norm == 0, "%d Grow results have |lo| > 1/2 ulp(hi)", bad_norm);
    CHECK(bad_error == 0, "%d Grow results are off by more than the one rounding", bad_error);
    CHECK(bad_fast == 0, "%d Collage Grow results differ where |hi| >= |a|", bad_fast);
    // Where |a| > |hi| only TwoSum keeps hi: 1.5*2^-10 + (1 + 2^-7) has 12 significant bits, so the pair
    // holds it exactly, while Fast2Sum computes hi's share from s (-) hi, which rounds it away.
    Mcf small = mcf_make(bf16_from_f32(0x1.8p-10f), 0);
    bf16 big = bf16_from_f32(1.0f + 0x1p-7f);
    double exact = 0x1.8p-10 + 1.0 + 0x1p-7;
    CHECK(mcf_to_double(mcf_grow(small, big)) == exact, "Grow with |a| > |hi| is exact");
    CHECK(mcf_to_double(mcf_grow_fast(small, big)) != exact, "Collage's Grow loses hi when |a| > |hi|");
}

// 10^5 increments, each below half a bf16 ulp of the running sum, on the grid the pair resolves in [1, 2)
// (multiples of 2^-15: 16 significant bits), random sign, drifting upward. The pair must follow the double
// sum to 2^-15 (it holds every partial sum, so it should be exact); plain bf16 rounds every increment away.
static void test_accumulation(void) {
    Mcf pair = mcf_make(bf16_from_f32(1.0f), 0);
    Mcf pair_fast = pair;
    bf16 plain = bf16_from_f32(1.0f);
    double sum = 1.0, worst = 0.0, lowest = 1.0, highest = 1.0;
    for (int i = 0; i < 100000; i++) {
        int steps = (int)(test_random() % 33) - 16 + (i % 4 == 0);  // -16..16, plus a drift of 1/4
        bf16 increment = bf16_from_f32((float)steps * 0x1p-15f);
        pair = mcf_grow(pair, increment);
        pair_fast = mcf_grow_fast(pair_fast, increment);
        plain = bf16_add(plain, increment);
        sum += value(increment);
        double relative = fabs(mcf_to_double(pair) - sum) / sum;
        worst = relative > worst ? relative : worst;
        lowest = sum < lowest ? sum : lowest;
        highest = sum > highest ? sum : highest;
    }
    CHECK(lowest > 0.5 && highest < 2.0, "the walk left [0.5, 2): %g..%g", lowest, highest);
    CHECK(worst <= 0x1p-15, "MCF accumulation drifted: worst relative error %.3g", worst);
    CHECK(mcf_to_double(pair_fast) == mcf_to_double(pair), "Collage Grow differs although |hi| >= |a|");
    CHECK(value(plain) == 1.0, "plain bf16 should stall at 1.0, got %g", value(plain));
    CHECK(fabs(value(plain) - sum) / sum > 0.3, "plain bf16 should be far off: %g vs %g", value(plain), sum);
}

static void test_mul_and_conversions(void) {
    int bad_mul = 0, bad_norm = 0, bad_f32 = 0, bad_double = 0, bad_renorm = 0;
    for (int i = 0; i < 1000000; i++) {
        Mcf x = random_pair(-20 + (int)(test_random() % 41));
        Mcf y = random_pair(-20 + (int)(test_random() % 41));
        double exact = mcf_to_double(x) * mcf_to_double(y);
        Mcf p = mcf_mul(x, y);
        // Dropped lo*lo (<= 2^-16 relative) plus the final rounding of lo (<= 2^-17): within 2^-15.
        if (fabs(mcf_to_double(p) - exact) > 0x1p-15 * fabs(exact)) bad_mul++;
        if (!normalised(p)) bad_norm++;
        float v = (float)((test_uniform() - 0.5) * ldexp(1.0, (int)(test_random() % 61) - 30));
        Mcf from_f32 = mcf_from_f32(v);
        if (!normalised(from_f32) || fabs(mcf_to_double(from_f32) - v) > 0x1p-16 * fabs(v)) bad_f32++;
        if (mcf_to_f32(from_f32) != (float)mcf_to_double(from_f32)) bad_f32++;
        double d = (test_uniform() - 0.5) * ldexp(1.0, (int)(test_random() % 61) - 30);
        Mcf from_double = mcf_from_double(d);
        if (!normalised(from_double) || fabs(mcf_to_double(from_double) - d) > 0x1p-16 * fabs(d)) bad_double++;
        Mcf raw = mcf_make(random_bf16_with_exponent(-5), random_bf16_with_exponent(-5 + (int)(test_random() % 11)));
        Mcf renormalised = mcf_renormalize(raw);
        if (!normalised(renormalised) || mcf_to_double(renormalised) != mcf_to_double(raw)) bad_renorm++;
    }
    CHECK(bad_mul == 0, "%d MultMC products off by more than 2^-15", bad_mul);
    CHECK(bad_norm == 0, "%d MultMC products not normalised", bad_norm);
    CHECK(bad_f32 == 0, "%d fp32 conversions wrong", bad_f32);
    CHECK(bad_double == 0, "%d double conversions wrong", bad_double);
    CHECK(bad_renorm == 0, "%d renormalisations wrong", bad_renorm);
    CHECK(mcf_from_f32(INFINITY).hi == 0x7f80 && mcf_from_f32(INFINITY).lo == 0, "inf converts to (inf, 0)");
}

// Collage-plus second moment, v <- beta2 v + (1 - beta2) g^2, over 10,000 steps: MultMC by the pair
// (bf16(beta2), bf16(beta2 - bf16(beta2))), then Grow by bf16((1 - beta2) g^2).
//
// g^2 decays (g^2_t = e^(-t/3000) * U[0.5, 1.5]), so the true EMA falls by e^-3.3 while plain bf16 cannot
// follow: bf16(0.999) == 1.0, so its v never decays, and it ends several times too high.
//
// The reference is the fp64 EMA with the true beta2 of the same increments bf16((1 - beta2) g^2) the
// optimizer receives: their rounding (2^-9 relative each) is the input's, not the state's. Over the first 100
// steps v holds a handful of increments, so it is checked from step 101 on.
//
// At beta2 = 0.95 the pair tracks to 0.01%: every step is asserted within 0.1%. At beta2 = 0.999 two floors
// add up: beta2_lo = bf16(-0.001) = -0.00099945 makes the pair's beta2 5.5e-7 too large, a steady-state bias
// of +0.055% (more while g^2 decays); and the pair's 16 bits, rounded twice per step against a decay of only
// 0.1% of v, add fluctuations of about +-0.05%. Over 40 seeds and several g^2 shapes the worst single step
// was 0.12-0.19% and the mean over the run at most 0.08%, even with exact arithmetic and one rounding per
// step the worst step is ~0.1%. So at 0.999 the mean over the run is asserted within 0.1% and every step
// within 0.25% (drift, or a MultMC that loses its error term, breaks both).
static void test_collage_plus_second_moment(void) {
    double betas[2] = {0.999, 0.95};
    for (int b = 0; b < 2; b++) {
        double beta = betas[b];
        float beta_f32 = (float)beta;
        Mcf beta_pair = mcf_from_f32(beta_f32);  // (bf16(beta2), bf16(beta2 - bf16(beta2)))
        CHECK(beta_pair.hi == bf16_from_f32(beta_f32) &&
                  beta_pair.lo == bf16_from_f32(beta_f32 - bf16_to_f32(bf16_from_f32(beta_f32))),
              "beta2 split");
        test_rng_state = 7;
        Mcf v = mcf_make(0, 0);
        bf16 plain = 0;
        double reference = 0.0, worst = 0.0, total = 0.0;
        int counted = 0;
        for (int t = 1; t <= 10000; t++) {
            float g2 = (float)(exp(-t / 3000.0) * (0.5 + test_uniform()));
            bf16 increment = bf16_from_f32((1.0f - beta_f32) * g2);
            v = mcf_grow(mcf_mul(v, beta_pair), increment);
            plain = bf16_add(bf16_mul(bf16_from_f32(beta_f32), plain), increment);
            reference = beta * reference + value(increment);
            if (t > 100) {
                double relative = fabs(mcf_to_double(v) - reference) / reference;
                worst = relative > worst ? relative : worst;
                total += relative;
                counted++;
            }
        }
        double mean = total / counted;
        printf("collage-plus beta2 = %.3f: worst step %.4f%%, mean %.4f%%, plain bf16 / fp64 = %.3f\n", beta,
               100 * worst, 100 * mean, value(plain) / reference);
        if (b == 0) {
            CHECK(mean <= 1e-3, "beta2 = 0.999: mean relative error %.4f%% > 0.1%%", 100 * mean);
            CHECK(worst <= 2.5e-3, "beta2 = 0.999: worst step %.4f%% > 0.25%%", 100 * worst);
            CHECK(value(plain) > 1.3 * reference, "plain bf16 should stay high: %g vs %g", value(plain), reference);
        } else {
            CHECK(worst <= 1e-3, "beta2 = 0.95: worst step %.4f%% > 0.1%%", 100 * worst);
        }
    }
}

int main(void) {
    test_error_free_transforms();
    test_grow();
    test_accumulation();
    test_mul_and_conversions();
    test_collage_plus_second_moment();
    return test_summary("test_numerics_mcf");
}
