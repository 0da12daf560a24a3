// The per-element update rules of update_rules.h against references written here: bf16 ops redone in
// double with this file's own round-to-nearest-even (for +, -, *, / and sqrt of bf16 operands, rounding
// the exact or double result once to 8 significant bits equals rounding through fp32 first: 24 >= 2*8+2),
// hand-worked bf16 values, long runs of tiny updates (Kahan and MCF keep them, RNE loses them), and the
// statistics of stochastic rounding (unbiased, on the grid). Also the fp32 AdamW step's bits, the
// update-quality ratios on hand-made elements, and which values the element steps measure them on.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "optimizer_element.h"
#include "update_metrics.h"
#include "update_rules.h"
#include "testing.h"

static uint64_t test_rng_state = 0x5eed1234abcdull;

static uint64_t test_random(void) { return splitmix64_next(&test_rng_state); }

// Uniform in (-1, 1).
static double test_signed_uniform(void) { return ((double)(test_random() >> 11) + 0.5) * 0x1p-52 - 1.0; }

// A random value of magnitude about 10^[lo_exp10, hi_exp10), random sign.
static double test_log_uniform(double lo_exp10, double hi_exp10) {
    double u = ((double)(test_random() >> 11) + 0.5) * 0x1p-53;
    double magnitude = pow(10.0, lo_exp10 + (hi_exp10 - lo_exp10) * u);
    return (test_random() & 1) ? magnitude : -magnitude;
}

// Round-to-nearest-even to 8 significant bits (bf16's precision), for normal-range values.
static double ref_bf16(double x) {
    if (x == 0.0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e);  // |x| = m * 2^e with 0.5 <= m < 1
    return ldexp(nearbyint(ldexp(x, 8 - e)), e - 8);
}

static double val(bf16 h) { return (double)bf16_to_f32(h); }

static bf16 bf16_of(double x) { return bf16_from_f32((float)x); }

static AdamWStep example_step(float lr, int t) {
    AdamWStep s;
    memset(&s, 0, sizeof s);
    s.lr = lr;
    s.beta1 = 0.9f;
    s.beta2 = 0.95f;
    s.eps = 1e-8f;
    s.weight_decay = 0.1f;
    s.bias_correction1 = 1.0f - powf(s.beta1, (float)t);
    s.bias_correction2 = 1.0f - powf(s.beta2, (float)t);
    s.grad_scale = 1.0f;
    s.seed = 42;
    s.step = (uint64_t)t - 1;
    return s;
}

// adamw_step_fp32 before it was split into adam_ema_fp32 and adamw_delta_fp32, copied here verbatim.
static float previous_adamw_step_fp32(float param, float grad, float *m, float *v, const AdamWStep *s, int decay) {
    float g = grad * s->grad_scale;
    float m_new = s->beta1 * *m + (1.0f - s->beta1) * g;
    float v_new = s->beta2 * *v + (1.0f - s->beta2) * (g * g);
    *m = m_new;
    *v = v_new;
    float m_hat = m_new / s->bias_correction1;
    float v_hat = v_new / s->bias_correction2;
    float decay_term = decay ? s->weight_decay * param : 0.0f;
    return param - s->lr * (m_hat / (sqrtf(v_hat) + s->eps) + decay_term);
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

// The fp32 step keeps its bits, and the fp32 moment storage of update_rules.h is the same arithmetic.
static void test_fp32_step_unchanged(void) {
    int bad = 0, bad_moments = 0;
    UpdateConstants k;
    for (int i = 0; i < 200000; i++) {
        AdamWStep s = example_step(1e-3f, 1 + i % 50);
        s.grad_scale = (i % 3 == 0) ? 0.37f : 1.0f;
        k = update_constants(&s);
        float param = (float)test_log_uniform(-4, 0), grad = (float)test_log_uniform(-6, 1);
        float m = (float)test_log_uniform(-6, 0), v = (float)fabs(test_log_uniform(-8, 0));
        float m_old = m, v_old = v, m_new = m, v_new = v;
        int decay = i & 1;
        float expected = previous_adamw_step_fp32(param, grad, &m_old, &v_old, &s, decay);
        float got = adamw_step_fp32(param, grad, &m_new, &v_new, &s, decay);
        if (!same_bits(expected, got) || !same_bits(m_old, m_new) || !same_bits(v_old, v_new)) bad++;
        float g = grad * s.grad_scale;
        if (!same_bits(moment_step_fp32(m, g, &k.m), m_new) || !same_bits(moment_step_fp32(v, g, &k.v), v_new)) bad_moments++;
    }
    CHECK(bad == 0, "%d fp32 AdamW steps changed bits", bad);
    CHECK(bad_moments == 0, "%d fp32 moment steps differ from adamw_step_fp32's", bad_moments);
}

static void test_constants(void) {
    AdamWStep s = example_step(1e-3f, 1);
    s.beta2 = 0.999f;
    UpdateConstants k = update_constants(&s);
    CHECK(k.m.beta_bf16 == 0x3f66, "bf16(0.9) = 0.8984375, got %.9g", val(k.m.beta_bf16));
    CHECK(k.m.one_minus_beta_bf16 == 0x3dcd, "bf16(1 - 0.9) = 0.10009765625, got %.9g", val(k.m.one_minus_beta_bf16));
    CHECK(val(k.v.beta_bf16) == 1.0, "bf16(0.999) rounds to 1");
    double pair = val(k.v.beta_pair.hi) + val(k.v.beta_pair.lo);
    CHECK(fabs(pair - 0.999f) <= 0x1p-17, "beta2 pair %.9g vs 0.999", pair);
    CHECK(val(k.step_size) == ref_bf16(1e-3f / s.bias_correction1), "step size");
    CHECK(val(k.lr_decay) == ref_bf16((double)(1e-3f * 0.1f)), "lr * decay");
}

// Hand-worked: from m = 0, a gradient of 1 gives bf16(0.1) = 0.10009765625; then a gradient of 0 gives
// 0.8984375 * 0.10009765625 = 0.0899298... -> 0.08984375. bf16 v at beta2 = 0.999 never decays; the MCF
// pair does, by 0.999 per step.
static void test_moments_by_hand(void) {
    AdamWStep s = example_step(1e-3f, 1);
    s.beta2 = 0.999f;
    UpdateConstants k = update_constants(&s);
    bf16 m = moment_step_bf16(0, 1.0f, &k.m);
    CHECK(val(m) == 0.10009765625, "m after g=1: %.9g", val(m));
    m = moment_step_bf16(m, 0.0f, &k.m);
    CHECK(val(m) == 0.08984375, "m after g=0: %.9g", val(m));
    bf16 v = bf16_of(1.0);
    for (int i = 0; i < 100; i++) v = moment_step_bf16(v, 0.0f, &k.v);
    CHECK(val(v) == 1.0, "bf16 v at beta2=0.999 stalls at 1, got %.9g", val(v));
    Mcf pair = mcf_make(bf16_of(1.0), 0);
    for (int i = 0; i < 100; i++) pair = moment_step_mcf(pair, 0.0f, &k.v);
    double want = pow(0.999, 100);
    CHECK(fabs(mcf_to_double(pair) - want) < 1e-3 * want, "MCF v after 100 decays %.9g vs %.9g", mcf_to_double(pair), want);
}

// bf16 moments, op by op against the double reference.
static void test_moments_bf16_reference(void) {
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        AdamWStep s = example_step(1e-3f, 1);
        s.beta1 = (float)(0.5 + 0.49 * fabs(test_signed_uniform()));
        s.beta2 = (float)(0.9 + 0.0999 * fabs(test_signed_uniform()));
        UpdateConstants k = update_constants(&s);
        float g = (float)test_log_uniform(-5, 1);
        bf16 m = bf16_of(test_log_uniform(-5, 0)), v = bf16_of(fabs(test_log_uniform(-9, 1)));
        double gb = ref_bf16(g);
        double b1 = ref_bf16(s.beta1), c1 = ref_bf16(1.0f - s.beta1);
        double b2 = ref_bf16(s.beta2), c2 = ref_bf16(1.0f - s.beta2);
        double want_m = ref_bf16(ref_bf16(b1 * val(m)) + ref_bf16(c1 * gb));
        double want_v = ref_bf16(ref_bf16(b2 * val(v)) + ref_bf16(c2 * ref_bf16(gb * gb)));
        if (val(moment_step_bf16(m, g, &k.m)) != want_m || val(moment_step_bf16(v, g, &k.v)) != want_v) bad++;
    }
    CHECK(bad == 0, "%d bf16 moment steps differ from the reference", bad);
}

// The Collage-plus v is the composition its definition says, bit for bit, and at beta2 = 0.999 follows a
// decaying g^2 (g^2 = e^(-t/3000) U[0.5, 1.5]) as test_numerics_mcf.c demands of the pair: the fp64 EMA
// of the same increments within 0.1% on average and 0.25% at every step after the first 100 (see there
// for the floors at 0.999). The bf16 v, whose beta rounds to 1, cannot decay and ends far too high.
static void test_moment_mcf_tracks_ema(void) {
    AdamWStep s = example_step(1e-3f, 1);
    s.beta2 = 0.999f;
    UpdateConstants k = update_constants(&s);
    Mcf v = mcf_make(0, 0);
    bf16 v_bf16 = 0;
    double ema = 0.0, worst = 0.0, total = 0.0;
    int differs = 0;
    for (int t = 1; t <= 10000; t++) {
        float g = (float)sqrt(exp(-t / 3000.0) * (1.0 + 0.5 * test_signed_uniform()));
        bf16 increment = bf16_from_f32((1.0f - s.beta2) * (g * g));
        Mcf next = moment_step_mcf(v, g, &k.v);
        Mcf composed = mcf_grow(mcf_mul(v, mcf_from_f32(s.beta2)), increment);
        if (next.hi != composed.hi || next.lo != composed.lo) differs++;
        v = next;
        v_bf16 = moment_step_bf16(v_bf16, g, &k.v);
        ema = (double)s.beta2 * ema + val(increment);
        if (t > 100) {
            double relative = fabs(mcf_to_double(v) - ema) / ema;
            worst = fmax(worst, relative);
            total += relative;
        }
    }
    CHECK(differs == 0, "%d MCF moment steps differ from MultMC then Grow", differs);
    CHECK(total / 9900 <= 1e-3 && worst <= 2.5e-3, "MCF v vs the fp64 EMA: mean %.3g, worst %.3g", total / 9900, worst);
    CHECK(val(v_bf16) > 1.3 * ema, "bf16 v should stay high: %.4g vs %.4g", val(v_bf16), ema);
}

// Δ in bf16 ops against the double chain.
static void test_delta_bf16_reference(void) {
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        AdamWStep s = example_step((float)fabs(test_log_uniform(-6, -2)), 1 + i % 1000);
        UpdateConstants k = update_constants(&s);
        bf16 theta = bf16_of(test_log_uniform(-4, 0.5)), m = bf16_of(test_log_uniform(-6, 0));
        bf16 v = bf16_of(fabs(test_log_uniform(-10, 0)));
        int decay = i & 1;
        double step_size = ref_bf16(s.lr / s.bias_correction1), sqrt_bc2 = ref_bf16(sqrtf(s.bias_correction2));
        double denominator = ref_bf16(ref_bf16(ref_bf16(sqrt(val(v))) / sqrt_bc2) + ref_bf16(s.eps));
        double adam = ref_bf16(step_size * ref_bf16(val(m) / denominator));
        double step = decay ? ref_bf16(adam + ref_bf16(ref_bf16(s.lr * s.weight_decay) * val(theta))) : adam;
        if (val(adamw_delta_bf16(theta, m, v, &k, decay)) != -step) bad++;
    }
    CHECK(bad == 0, "%d bf16 deltas differ from the reference", bad);
}

// RNE, Kahan and MCF steps, element by element.
static void test_weight_steps_reference(void) {
    int bad_rne = 0, bad_kahan = 0, bad_mcf = 0;
    for (int i = 0; i < 200000; i++) {
        bf16 theta = bf16_of(test_log_uniform(-3, 0.5)), delta = bf16_of(test_log_uniform(-7, -2));
        if (val(weight_step_rne(theta, delta)) != ref_bf16(val(theta) + val(delta))) bad_rne++;

        KahanPair before = {theta, bf16_of(ref_bf16(val(theta) * 0x1p-9 * test_signed_uniform()))};
        double y = ref_bf16(val(delta) - val(before.compensation));
        double t = ref_bf16(val(theta) + y);
        double c = ref_bf16(ref_bf16(t - val(theta)) - y);
        KahanPair after = weight_step_kahan(before, delta);
        if (val(after.value) != t || val(after.compensation) != c) bad_kahan++;

        // Grow keeps the exact sum when the pair can hold it: here every sum has fewer than 16 bits.
        Mcf pair = mcf_from_double(val(theta) + ldexp(val(theta), -9) * (double)(int)(test_random() % 64) / 64.0);
        Mcf grown = weight_step_mcf(pair, delta);
        double exact = mcf_to_double(pair) + val(delta);
        double ulp_hi = ldexp(1.0, ilogb(val(grown.hi)) - 7);
        if (fabs(mcf_to_double(grown) - exact) > ulp_hi * 0x1p-8 || fabs(val(grown.lo)) > 0.5 * ulp_hi) bad_mcf++;
    }
    CHECK(bad_rne == 0, "%d RNE steps differ", bad_rne);
    CHECK(bad_kahan == 0, "%d Kahan steps differ", bad_kahan);
    CHECK(bad_mcf == 0, "%d MCF steps lose more than the pair's precision or leave it unnormalised", bad_mcf);
}

// A weight of 1 takes `steps` updates of delta, each below half an ulp of 1 (2^-8): RNE loses every one,
// while Kahan (θ − c) and MCF (hi + lo) end near the exact sum. Returns the worst of their errors relative
// to the total update.
static double accumulate_tiny_updates(bf16 delta, int steps) {
    double exact = 1.0 + steps * val(delta), total = steps * val(delta);
    bf16 rne = bf16_of(1.0);
    KahanPair kahan = {bf16_of(1.0), 0};
    Mcf mcf = mcf_make(bf16_of(1.0), 0);
    for (int i = 0; i < steps; i++) {
        rne = weight_step_rne(rne, delta);
        kahan = weight_step_kahan(kahan, delta);
        mcf = weight_step_mcf(mcf, delta);
    }
    CHECK(val(rne) == 1.0, "RNE keeps 1 + tiny at 1, got %.9g", val(rne));
    CHECK(fabs(val(kahan.value) - exact) <= 0x1p-7, "Kahan's stored weight within one ulp of the sum");
    double kahan_error = fabs(val(kahan.value) - val(kahan.compensation) - exact) / total;
    double mcf_error = fabs(mcf_to_double(mcf) - exact) / total;
    return fmax(kahan_error, mcf_error);
}

// 2^-12 lies on the grid of the compensation (multiples of 2^-16 near 1), so 4096 of them add up exactly.
// bf16(0.0035) does not: each addition rounds at 2^-16 (2^-15 above 2), at most 0.2% of the update, and
// those errors do not pile up in one direction: 250 of them measured 0.02% off, asserted within 0.2%.
static void test_tiny_updates_accumulate(void) {
    double exact_case = accumulate_tiny_updates(bf16_of(0x1p-12), 4096);
    CHECK(exact_case == 0.0, "2^-12 x 4096: relative error %.3g, want 0", exact_case);
    double rounded_case = accumulate_tiny_updates(bf16_of(0.0035), 250);
    CHECK(rounded_case < 2e-3, "bf16(0.0035) x 250: relative error %.3g", rounded_case);
}

// SR: the result is one of the two bf16 neighbours of θ + Δ, its mean is θ + Δ within 5 standard errors,
// and the same key gives the same bits.
static void test_sr_unbiased(void) {
    AdamWStep s = example_step(1e-3f, 1);
    bf16 theta = bf16_of(1.0);
    float delta = 1e-3f;
    double lower = 1.0, upper = 1.0078125, target = (double)(1.0f + delta);
    int n = 400000, off_grid = 0, repeat_differs = 0;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        RngKey key = update_rng_key(&s, i % 16);
        bf16 out = weight_step_sr(theta, delta, key, (uint64_t)i);
        if (val(out) != lower && val(out) != upper) off_grid++;
        if (weight_step_sr(theta, delta, key, (uint64_t)i) != out) repeat_differs++;
        sum += val(out);
    }
    double p = (target - lower) / (upper - lower);
    double standard_error = (upper - lower) * sqrt(p * (1 - p) / n);
    double mean = sum / n;
    CHECK(off_grid == 0 && repeat_differs == 0, "%d off the neighbours, %d not reproducible", off_grid, repeat_differs);
    CHECK(fabs(mean - target) < 5 * standard_error, "SR mean %.9g vs %.9g (se %.3g)", mean, target, standard_error);
    CHECK(update_rng_key(&s, 3).tensor_id == UPDATE_RNG_TENSOR_BASE + 3, "tensor id of the key");
}

// DQT: codes stay on the grid whatever the update (clamped), and q·scale is unbiased inside it.
static void test_grid_sr(void) {
    AdamWStep s = example_step(1e-3f, 1);
    IntGrid grids[2] = {dqt_grid(8), dqt_grid(0)};
    CHECK(grids[0].min == -128 && grids[0].max == 127 && grids[1].min == -1 && grids[1].max == 1, "grids");
    float scale = 0.02f;
    int off_grid = 0;
    for (int g = 0; g < 2; g++) {
        for (int i = 0; i < 100000; i++) {
            int32_t q = grids[g].min + (int32_t)(test_random() % (uint64_t)(grids[g].max - grids[g].min + 1));
            float delta = (float)test_log_uniform(-5, 2);
            int32_t out = weight_step_grid_sr(q, delta, scale, scale, grids[g], update_rng_key(&s, 0), (uint64_t)i);
            if (out < grids[g].min || out > grids[g].max) off_grid++;
        }
    }
    CHECK(off_grid == 0, "%d codes off the grid", off_grid);
    CHECK(weight_step_grid_sr(1, 1.0f, scale, scale, grids[1], update_rng_key(&s, 0), 0) == 1, "ternary clamps at 1");
    CHECK(weight_step_grid_sr(-128, -1.0f, scale, scale, grids[0], update_rng_key(&s, 0), 0) == -128, "int8 clamps at -128");
    // dqt_rescale: the code means q·scale before the step and q'·next after: 6·0.25 + 0.5 = 4·0.5 exactly.
    CHECK(weight_step_grid_sr(6, 0.5f, 0.25f, 0.5f, grids[0], update_rng_key(&s, 0), 0) == 4, "rescaled code");
    for (int g = 0; g < 2; g++) {
        int32_t q = 0;
        float delta = 0.3f * scale;  // 0.3 of a grid step
        int n = 400000;
        double sum = 0.0;
        for (int i = 0; i < n; i++) sum += weight_step_grid_sr(q, delta, scale, scale, grids[g], update_rng_key(&s, 1), (uint64_t)i);
        double mean = sum / n * scale, standard_error = scale * sqrt(0.3 * 0.7 / n);
        CHECK(fabs(mean - delta) < 5 * standard_error, "grid %d: mean %.6g vs %.6g", g, mean, (double)delta);
    }
}

// One hand-made element: Δ, and the read weight and stored value before and after the step.
typedef struct {
    double raw, read_before, read_after, state_before, state_after;
} HandElement;

// update_quality on hand-made elements, against the EDQ values worked out by hand below.
static void test_quality_ratios(void) {
    const HandElement elements[] = {
        {3.0, 10.0, 13.0, 10.0, 13.0},  // taken in full by both
        {4.0, 8.0, 8.0, 8.0, 12.0},     // lost by the read weight, kept by the compensation
        {0.0, 5.0, 5.0, 5.0, 5.0},      // nothing intended
        {-2.0, 1.0, -3.0, 1.0, 1.0},    // the read weight releases a compensation; the stored value keeps still
        {1.0, 2.0, 2.0, 2.0, 3.0},      // lost by the read weight, kept by the compensation
    };
    int n = (int)(sizeof elements / sizeof elements[0]);
    UpdateMetrics metrics;
    memset(&metrics, 0, sizeof metrics);
    metrics.has_compensation = 1;
    UpdateSums sums, first_half, second_half;
    memset(&sums, 0, sizeof sums);
    memset(&first_half, 0, sizeof first_half);
    memset(&second_half, 0, sizeof second_half);
    for (int i = 0; i < n; i++) {
        const HandElement *x = &elements[i];
        UpdateSums *half = i < 2 ? &first_half : &second_half;
        update_sums_add_element(half, x->raw, x->read_after - x->read_before, x->state_after - x->state_before);
        update_sums_add_compensation(half, x->state_after - x->read_after, x->raw);  // comp before: 0 everywhere
    }
    update_sums_add(&sums, &first_half);
    update_sums_add(&sums, &second_half);
    // ‖Δ‖² = 9 + 16 + 4 + 1 = 30; ⟨Δ̂ read, Δ⟩ = 9 + 0 + 8 + 0 = 17; ⟨Δ̂ state, Δ⟩ = 9 + 16 + 0 + 1 = 26;
    // 4 elements with Δ ≠ 0: the read weight lost 2 (the 2nd and 5th), the stored value 1 (the 4th);
    // comp = state − read after: 0, 4, 0, 4, 1: ‖comp‖² = 33, ⟨comp, Δ⟩ = 16 − 8 + 1 = 9.
    UpdateQuality q = update_quality(&metrics, &sums);
    CHECK(q.edq == 17.0 / sqrt(30.0) && q.edq_rel == 17.0 / 30.0, "edq %g, edq_rel %g", q.edq, q.edq_rel);
    CHECK(q.edq_rel_state == 26.0 / 30.0, "edq_rel_state %g", q.edq_rel_state);
    CHECK(q.lost_frac == 0.5 && q.lost_frac_state == 0.25, "lost_frac %g, lost_frac_state %g", q.lost_frac,
          q.lost_frac_state);
    CHECK(q.comp_norm == sqrt(33.0) && q.comp_proj == 9.0 / 30.0, "comp %g %g", q.comp_norm, q.comp_proj);
    // The stored value is read + comp, and comp was 0 before: the state's EDQ exceeds the read one by comp_proj.
    CHECK(fabs(q.edq_rel_state - q.edq_rel - q.comp_proj) < 1e-15, "state - read %g, comp_proj %g",
          q.edq_rel_state - q.edq_rel, q.comp_proj);
    CHECK(isnan(q.flip_rate), "no codes: flip rate NaN");
    UpdateSums empty;
    memset(&empty, 0, sizeof empty);
    UpdateQuality none = update_quality(&metrics, &empty);
    CHECK(isnan(none.edq_rel) && isnan(none.edq_rel_state) && isnan(none.lost_frac_state), "no update: NaN");
}

// The element steps of optimizer_element.h measure the read weight and the stored value apart: Δ = −2^-20
// on a weight of 1 (bf16 ulp 2^-7) is lost by the bf16 weight forward reads (MCF hi, the master's bf16
// copy) and kept whole by hi + lo and by the fp32 master.
static void test_element_read_and_state(void) {
    AdamWStep s = {0};
    s.lr = 0x1p-20f;  // with m = v = 1, bias corrections 1 and eps 0: Δ = −lr, exact in both bf16 and fp32
    s.beta1 = 0.9f, s.beta2 = 0.95f;
    s.bias_correction1 = s.bias_correction2 = 1.0f;
    s.grad_scale = 1.0f;
    UpdateConstants k = update_constants(&s);
    ElementStep e;
    memset(&e, 0, sizeof e);
    e.k = &k;
    e.m.value = e.v.value = 1.0f;
    e.m.operand = e.v.operand = bf16_from_f32(1.0f);
    float params = 1.0f, master = 1.0f;
    bf16 hi = bf16_from_f32(1.0f), lo = bf16_from_f32(0.0f);
    OptimizerBuffers b;
    memset(&b, 0, sizeof b);
    b.params = &params;
    b.weights_bf16 = &hi;
    b.mcf_lo = &lo;
    b.master = &master;
    const char *names[] = {"MCF", "master"};
    for (int rule = 0; rule < 2; rule++) {
        UpdateSums sums;
        memset(&sums, 0, sizeof sums);
        e.sums = &sums;
        hi = bf16_from_f32(1.0f), lo = bf16_from_f32(0.0f), master = 1.0f, params = 1.0f;
        if (rule == 0) optimizer_step_mcf(&b, 0, &e);
        else optimizer_step_master(&b, 0, &e);
        CHECK(params == 1.0f && bf16_to_f32(hi) == 1.0f, "%s: the read weight moved to %g", names[rule], params);
        CHECK(sums.raw_sq == 0x1p-40 && sums.read_dot_raw == 0.0 && sums.state_dot_raw == 0x1p-40,
              "%s: raw_sq %g, read %g, state %g", names[rule], sums.raw_sq, sums.read_dot_raw, sums.state_dot_raw);
        CHECK(sums.updated == 1 && sums.lost == 1 && sums.lost_state == 0, "%s: updated %llu, lost %llu, state %llu",
              names[rule], (unsigned long long)sums.updated, (unsigned long long)sums.lost,
              (unsigned long long)sums.lost_state);
    }
}

int main(void) {
    test_fp32_step_unchanged();
    test_constants();
    test_moments_by_hand();
    test_moments_bf16_reference();
    test_moment_mcf_tracks_ema();
    test_delta_bf16_reference();
    test_weight_steps_reference();
    test_tiny_updates_accumulate();
    test_sr_unbiased();
    test_grid_sr();
    test_quality_ratios();
    test_element_read_and_state();
    return test_summary("update_rules");
}
