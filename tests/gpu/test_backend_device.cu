// The CUDA backend against the CPU backend, for every preset and a few axis overrides:
//  1. creation: from the same fp32 weights both backends hold the same bits (read_params and every
//     checkpoint section), and load_grads followed by read_grads gives the same bits on both, namely the
//     loaded gradients rounded to the policy's gradient storage;
//  2. the optimizer: both backends take the same random gradients (load_grads) and step three times
//     (metrics on the last); every checkpoint section must then hold the same bytes, and the weights forward
//     reads the same bits: the shared element step on both sides;
//  3. the update-quality metrics of that step: every field of UpdateMetrics, in total and per layer group;
//     counts exactly, double sums within 1e-12 of their scale (the same terms added in another order);
//  4. forward and backward from the same weights and tokens: the loss, the gradient norm, and the
//     gradients tensor by tensor (read_grads), within tolerances set by the policy's operand formats;
//  5. determinism: a second CUDA backend repeats steps 2-4 bit for bit.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

extern "C" {
#include "backend.h"
#include "config.h"
#include "model.h"
#include "numerics/bf16.h"
#include "policy.h"
#include "update_metrics.h"
#include "util.h"
}

enum { L = 2, NH = 2, C = 64, T = 32, V = 96, B = 4 };

// src/policy.c's preset table (it exports no list of names): keep the two in step.
static const char *presets[] = {"fp32",         "mixed", "mixed_nomaster", "bf16",     "collage_light", "collage_plus",
                                "kahan",        "sr",    "fp8_sim",        "dqt_int8", "dqt_ternary"};
#define NUM_PRESETS (int)(sizeof presets / sizeof presets[0])

static Policy preset_policy(const char *name, const char *override_assignment) {
    Config cfg;
    config_defaults(&cfg);
    char assignment[128];
    snprintf(assignment, sizeof assignment, "precision.policy=%s", name);
    config_set(&cfg, assignment);
    // Each preset's own activation format (bf16 for the bf16 family), the same on both backends.
    if (override_assignment) config_set(&cfg, override_assignment);
    return policy_from_config(&cfg);
}

static AdamWStep step_hyperparameters(int step) {
    AdamWStep s;
    s.lr = 1e-3f;
    s.beta1 = 0.9f;
    s.beta2 = 0.999f;
    s.eps = 1e-8f;
    s.weight_decay = 0.1f;
    s.bias_correction1 = 1.0f - powf(s.beta1, (float)(step + 1));
    s.bias_correction2 = 1.0f - powf(s.beta2, (float)(step + 1));
    s.grad_scale = 0.5f;
    s.seed = 1234;
    s.step = (uint64_t)step;
    return s;
}

// Gradients of step `step`: random, of a typical gradient's size, the same on both sides.
static void random_grads(float *grads, size_t n, int step) {
    uint64_t state = 0x9e3779b97f4a7c15ull + (uint64_t)step;
    for (size_t i = 0; i < n; i++) {
        double u = (double)(splitmix64_next(&state) >> 11) / 9007199254740992.0;  // [0, 1)
        grads[i] = (float)((u - 0.5) * 2e-2);
    }
}

// Three optimizer steps from the same gradients, metrics on the last.
static void take_steps(const BackendOps *ops, Backend *backend, size_t n, UpdateMetrics *metrics) {
    float *grads = (float *)xmalloc(n * sizeof(float));
    for (int step = 0; step < 3; step++) {
        random_grads(grads, n, step);
        ops->load_grads(backend, grads);
        AdamWStep hp = step_hyperparameters(step);
        ops->optimizer_step(backend, &hp, step == 2 ? metrics : NULL);
    }
    free(grads);
}

// Every section of a's state equals b's, byte for byte; returns the sections compared.
static int compare_states(const char *what, const char *a_name, const BackendState *a, const char *b_name,
                          const BackendState *b) {
    CHECK(a->count == b->count, "%s: %d sections %s, %d %s", what, a->count, a_name, b->count, b_name);
    int count = a->count < b->count ? a->count : b->count;
    for (int i = 0; i < count; i++) {
        const CheckpointSection *x = &a->sections[i], *y = &b->sections[i];
        CHECK(strcmp(x->name, y->name) == 0, "%s: section %d is %s %s, %s %s", what, i, x->name, a_name, y->name,
              b_name);
        CHECK(x->nbytes == y->nbytes, "%s: section %s has %zu bytes %s, %zu %s", what, x->name, x->nbytes, a_name,
              y->nbytes, b_name);
        if (x->nbytes != y->nbytes) continue;
        size_t differ = 0, first = 0;
        for (size_t k = 0; k < x->nbytes; k++)
            if (((const uint8_t *)x->data)[k] != ((const uint8_t *)y->data)[k] && differ++ == 0) first = k;
        CHECK(differ == 0, "%s: section %s differs %s and %s in %zu of %zu bytes (first at byte %zu)", what, x->name,
              a_name, b_name, differ, x->nbytes, first);
    }
    return count;
}

// Copies of a state's sections (the backend's buffers change with the next step).
static BackendState copy_state(const BackendState *state) {
    BackendState copy = *state;
    for (int i = 0; i < state->count; i++) {
        void *data = xmalloc(state->sections[i].nbytes ? state->sections[i].nbytes : 1);
        memcpy(data, state->sections[i].data, state->sections[i].nbytes);
        copy.sections[i].data = data;
    }
    return copy;
}

static void free_state(BackendState *state) {
    for (int i = 0; i < state->count; i++) free(state->sections[i].data);
}

static double relative(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

// Elements of a and b (n floats) whose bits differ; *first: the first of them.
static size_t bit_differences(const float *a, const float *b, size_t n, size_t *first) {
    size_t differ = 0;
    *first = 0;
    for (size_t i = 0; i < n; i++)
        if (bits_of_float(a[i]) != bits_of_float(b[i]) && differ++ == 0) *first = i;
    return differ;
}

// The tensor that holds parameter index i.
static const char *tensor_name_of(const ParamTable *table, size_t i) {
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)
        if (i >= table->tensors[t].offset && i < table->tensors[t].offset + table->tensors[t].numel)
            return table->tensors[t].name;
    return "?";
}

// ----------------------------------------------------------------------------------------------------
// creation, and the gradients' round trip

// Right after create, before any step: both backends formed their storage from the same fp32 values with
// the same functions (bf16 and MCF conversions on the host, DQT's grid by dqt_init_storage, decoded for
// read_params on the host by dqt_decoded_weight), so the weights forward reads and every stored section are
// the same bits.
// Then load_grads / read_grads: the gradients rounded to the policy's storage (bf16 nearest-even or kept
// fp32), the same bits on both.
static void check_creation(const char *label, const Policy *policy, const ParamTable *table, Backend *cpu,
                           Backend *gpu) {
    size_t n = table->num_params, first;
    float *a = (float *)xmalloc(n * sizeof(float)), *b = (float *)xmalloc(n * sizeof(float));
    float *expected = (float *)xmalloc(n * sizeof(float));
    cpu_backend.read_params(cpu, a);
    cuda_backend.read_params(gpu, b);
    size_t differ = bit_differences(a, b, n, &first);
    CHECK(differ == 0, "%s: after create, %zu of %zu weights forward reads differ (first %zu in %s: %.9g CPU, %.9g GPU)",
          label, differ, n, first, tensor_name_of(table, first), a[first], b[first]);
    BackendState cpu_state = copy_state(cpu_backend.state_save(cpu));
    int sections = compare_states(label, "on the CPU at creation", &cpu_state, "on the GPU at creation",
                                  cuda_backend.state_save(gpu));
    free_state(&cpu_state);

    random_grads(expected, n, 99);
    cpu_backend.load_grads(cpu, expected);
    cuda_backend.load_grads(gpu, expected);
    if (policy->grads == GRADS_BF16)
        for (size_t i = 0; i < n; i++) expected[i] = round_bf16(expected[i]);
    cpu_backend.read_grads(cpu, a);
    cuda_backend.read_grads(gpu, b);
    differ = bit_differences(expected, b, n, &first);
    CHECK(differ == 0, "%s: read_grads after load_grads: %zu of %zu GPU gradients are not the stored rounding (first %zu: "
          "%.9g, expected %.9g)", label, differ, n, first, b[first], expected[first]);
    differ = bit_differences(a, b, n, &first);
    CHECK(differ == 0, "%s: read_grads after load_grads: %zu of %zu gradients differ between CPU and GPU (first %zu)",
          label, differ, n, first);
    printf("%-36s creation: weights and %d sections bit-identical, gradient round trip identical\n", label, sections);
    free(a);
    free(b);
    free(expected);
}

// ----------------------------------------------------------------------------------------------------
// the optimizer and its metrics

// The metric sums are the same per-element terms on both backends (the shared element step, contraction
// off on both compilers), added in another order inside each chunk of at most CHUNK_ELEMENTS = 8192
// elements (CPU: sequentially, 8191 additions; GPU: 32 per thread, then a tree of 8 levels), and the chunk
// sums into groups and total in the same order. The two results differ by at most (8191 + 40) * 2^-53
// ~ 9e-13 of the sum of |terms| (in practice ~1e-14), so each sum is compared within 1e-12 of a bound on
// the sum of its |terms|:
//   raw_sq, comp_sq: terms >= 0, the value itself;
//   read_dot_raw, state_dot_raw: Δ̂ has Δ's sign or is 0 (rounding, SR and the grid move the weight toward
//     Δ), so the value itself, and at least raw_sq; Kahan's read weight can step against a small Δ when it
//     releases a compensation, but those terms are few against the ~100x margin of the bound over ~1e-14;
//   comp_dot_raw: terms of either sign; sum |comp·Δ| <= sqrt(comp_sq · raw_sq) (Cauchy-Schwarz).
// Counts are integers: exactly equal.
static const double SUM_TOLERANCE = 1e-12;

static int sum_agrees(double cpu, double gpu, double scale) { return fabs(cpu - gpu) <= SUM_TOLERANCE * scale; }

static void compare_sums(const char *label, const char *where, const UpdateSums *x, const UpdateSums *y) {
    CHECK(x->updated == y->updated, "%s %s: updated %llu on the CPU, %llu on the GPU", label, where,
          (unsigned long long)x->updated, (unsigned long long)y->updated);
    CHECK(x->lost == y->lost, "%s %s: lost %llu on the CPU, %llu on the GPU", label, where, (unsigned long long)x->lost,
          (unsigned long long)y->lost);
    CHECK(x->lost_state == y->lost_state, "%s %s: lost_state %llu on the CPU, %llu on the GPU", label, where,
          (unsigned long long)x->lost_state, (unsigned long long)y->lost_state);
    CHECK(x->codes == y->codes, "%s %s: codes %llu on the CPU, %llu on the GPU", label, where,
          (unsigned long long)x->codes, (unsigned long long)y->codes);
    CHECK(x->flips == y->flips, "%s %s: flips %llu on the CPU, %llu on the GPU", label, where,
          (unsigned long long)x->flips, (unsigned long long)y->flips);
    double raw_scale = fmax(x->raw_sq, y->raw_sq), comp_scale = fmax(x->comp_sq, y->comp_sq);
    CHECK(sum_agrees(x->raw_sq, y->raw_sq, raw_scale), "%s %s: raw_sq %.17g on the CPU, %.17g on the GPU", label, where,
          x->raw_sq, y->raw_sq);
    CHECK(sum_agrees(x->comp_sq, y->comp_sq, comp_scale), "%s %s: comp_sq %.17g on the CPU, %.17g on the GPU", label,
          where, x->comp_sq, y->comp_sq);
    double read_scale = fmax(fmax(fabs(x->read_dot_raw), fabs(y->read_dot_raw)), raw_scale);
    CHECK(sum_agrees(x->read_dot_raw, y->read_dot_raw, read_scale),
          "%s %s: read_dot_raw %.17g on the CPU, %.17g on the GPU", label, where, x->read_dot_raw, y->read_dot_raw);
    double state_scale = fmax(fmax(fabs(x->state_dot_raw), fabs(y->state_dot_raw)), raw_scale);
    CHECK(sum_agrees(x->state_dot_raw, y->state_dot_raw, state_scale),
          "%s %s: state_dot_raw %.17g on the CPU, %.17g on the GPU", label, where, x->state_dot_raw, y->state_dot_raw);
    CHECK(sum_agrees(x->comp_dot_raw, y->comp_dot_raw, sqrt(comp_scale * raw_scale)),
          "%s %s: comp_dot_raw %.17g on the CPU, %.17g on the GPU", label, where, x->comp_dot_raw, y->comp_dot_raw);
}

static void compare_metrics(const char *label, const Policy *policy, const UpdateMetrics *x, const UpdateMetrics *y) {
    int compensation = policy->update == UPDATE_MCF_GROW || policy->update == UPDATE_KAHAN;
    int codes = policy->update == UPDATE_GRID_SR;
    CHECK(x->has_compensation == compensation && y->has_compensation == compensation,
          "%s: has_compensation %d on the CPU, %d on the GPU, expected %d", label, x->has_compensation,
          y->has_compensation, compensation);
    CHECK(x->has_codes == codes && y->has_codes == codes, "%s: has_codes %d on the CPU, %d on the GPU, expected %d",
          label, x->has_codes, y->has_codes, codes);
    CHECK(x->num_groups == 2 + L && y->num_groups == 2 + L, "%s: %d groups on the CPU, %d on the GPU, expected %d",
          label, x->num_groups, y->num_groups, 2 + L);
    // Not vacuous: the step moved elements (and stepped grid codes under DQT).
    CHECK(x->total.updated > 0 && x->total.raw_sq > 0.0, "%s: the CPU step reports no update", label);
    if (codes) CHECK(x->total.codes > 0, "%s: the CPU step reports no grid codes", label);
    compare_sums(label, "total", &x->total, &y->total);
    int groups = x->num_groups < y->num_groups ? x->num_groups : y->num_groups;
    for (int g = 0; g < groups; g++) {
        char name[32];
        update_group_name(x, g, name, sizeof name);
        compare_sums(label, name, &x->groups[g], &y->groups[g]);
    }
}

// A GPU rerun: the same tree order on the same data, so every field is the same bits.
static void compare_metrics_exactly(const char *label, const UpdateMetrics *x, const UpdateMetrics *y) {
    CHECK(x->has_compensation == y->has_compensation && x->has_codes == y->has_codes && x->num_groups == y->num_groups,
          "%s: a second GPU run gave other metric flags", label);
    CHECK(memcmp(&x->total, &y->total, sizeof(UpdateSums)) == 0, "%s: a second GPU run gave other total metric sums",
          label);
    int groups = x->num_groups < y->num_groups ? x->num_groups : y->num_groups;
    for (int g = 0; g < groups; g++)
        CHECK(memcmp(&x->groups[g], &y->groups[g], sizeof(UpdateSums)) == 0,
              "%s: a second GPU run gave other metric sums in group %d", label, g);
}

static void check_optimizer(const char *label, const Policy *policy, const ParamTable *table, const float *init) {
    size_t n = table->num_params;
    UpdateMetrics cpu_metrics, gpu_metrics, again_metrics;
    update_metrics_init(&cpu_metrics, table);
    update_metrics_init(&gpu_metrics, table);
    update_metrics_init(&again_metrics, table);
    Backend *cpu = cpu_backend.create(table, policy, B, T, init);
    Backend *gpu = cuda_backend.create(table, policy, B, T, init);
    check_creation(label, policy, table, cpu, gpu);
    take_steps(&cpu_backend, cpu, n, &cpu_metrics);
    take_steps(&cuda_backend, gpu, n, &gpu_metrics);
    BackendState gpu_state = copy_state(cuda_backend.state_save(gpu));
    int sections = compare_states(label, "on the CPU", cpu_backend.state_save(cpu), "on the GPU", &gpu_state);

    float *cpu_params = (float *)xmalloc(n * sizeof(float)), *gpu_params = (float *)xmalloc(n * sizeof(float));
    cpu_backend.read_params(cpu, cpu_params);
    cuda_backend.read_params(gpu, gpu_params);
    size_t first, differ = bit_differences(cpu_params, gpu_params, n, &first);
    CHECK(differ == 0, "%s: after the steps %zu of %zu weights forward reads differ (first %zu in %s)", label, differ, n,
          first, tensor_name_of(table, first));

    compare_metrics(label, policy, &cpu_metrics, &gpu_metrics);

    // A second GPU backend repeats the same bytes.
    Backend *again = cuda_backend.create(table, policy, B, T, init);
    take_steps(&cuda_backend, again, n, &again_metrics);
    compare_states(label, "on the GPU", &gpu_state, "on a second GPU run", cuda_backend.state_save(again));
    compare_metrics_exactly(label, &gpu_metrics, &again_metrics);
    UpdateQuality q = update_quality(&gpu_metrics, &gpu_metrics.total);
    printf("%-36s optimizer: %d sections bit-identical to the CPU, metrics agree (edq_rel %.6f, state %.6f, "
           "lost %.4f, state %.4f), GPU rerun identical\n", label, sections, q.edq_rel, q.edq_rel_state, q.lost_frac,
           q.lost_frac_state);

    cuda_backend.destroy(again);
    free_state(&gpu_state);
    free(cpu_params);
    free(gpu_params);
    cpu_backend.destroy(cpu);
    cuda_backend.destroy(gpu);
    update_metrics_free(&cpu_metrics);
    update_metrics_free(&gpu_metrics);
    update_metrics_free(&again_metrics);
}

// ----------------------------------------------------------------------------------------------------
// forward and backward

static void make_batch(int *inputs, int *targets) {
    uint64_t state = 77;
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int)(splitmix64_next(&state) % V);
        targets[i] = (int)(splitmix64_next(&state) % V);
    }
}

// Tolerances of the GPU's forward/backward against the CPU's. Both cast the same fp32 values with the same
// rounding functions and accumulate every product in fp32; they differ in summation order (cuBLASLt's
// blocking, the kernels' reductions), which moves fp32 results by a few ulps, and then in the rare cast
// operand that lies within those ulps of a rounding boundary and rounds the other way (a "flip", one ulp of
// the cast format), which perturbs everything downstream of it and may flip further casts there.
// Gradients are measured per tensor (tensor_error): the worst element against the tensor's max |g|, and the
// relative L2 error of the tensor.
//   fp32 operands (no TF32): reordered sums only, through a 2-layer model and cuBLAS: loss 1e-5, gradients
//     and their norm 1e-4.
//   7 mantissa bits (bf16 operands, attention/LM head in bf16, e5m7): a flip moves an operand by <= 2^-7 of
//     itself, and a bf16-stored gradient may round one ulp apart (<= 2^-7 |g|, i.e. 7.8e-3 of max |g|):
//     loss 1e-2, gradients and norm 2e-2.
//   fewer bits (fp8: E4M3 forward, E5M2 output gradients; a coarse eXmY): a flip moves an operand by up to
//     2^-2 of itself, and perturbs the token's downstream gradients by a few percent, enough to flip many
//     of their E5M2 casts in turn: once one flip occurs, the gradients of that token differ at the cast's
//     granularity. Loss 1e-2; gradients 0.3 of max |g| elementwise and 0.2 relative L2 per tensor, which a
//     structural error (a transposed dweight, a wrong tensor or layer, a sign, a missing scale: ~1 or more)
//     still exceeds; norm 2e-2.
// Calibration (the CPU backend against itself from initial weights perturbed by up to 64 fp32 ulps, a
// pessimistic proxy of reordered sums: it also moves the weight casts; 1000 perturbations each): worst
// gradient errors max / L2 1e-5 / 7e-6 under fp32 operands, 7.2e-3 / 5.1e-3 under bf16 operands with
// bf16 gradients, 0.19 / 0.09 under fp8 (flips in ~20% of the runs perturbed by 1-16 ulps in wpe only, in
// all runs perturbed by 64 ulps everywhere); losses within 6e-5, norms within 2e-3.
typedef struct {
    const char *tier;
    double loss, grad_max, grad_l2, norm;
} PassTolerance;

static int format_mantissa_bits(MatmulFormat format, const MatmulPrecision *m) {
    switch (format) {
    case MATMUL_FP32: return 23;
    case MATMUL_BF16: return 7;
    case MATMUL_FP8: return 2;  // E5M2 output gradients (E4M3 forward operands: 3)
    case MATMUL_EXMY: return m->man_bits;
    }
    return 0;
}

static PassTolerance pass_tolerance(const Policy *p) {
    int bits = format_mantissa_bits(p->matmul.format, &p->matmul);
    int attention_bits = format_mantissa_bits(p->attention.format, &p->attention);
    if (attention_bits < bits) bits = attention_bits;
    if (bits == 23 && p->allow_tf32) bits = 10;  // TF32 rounds fp32 operands to 10 bits
    // bf16 activations: each stored tensor is rounded to 7 bits, and a value the two backends compute a few
    // fp32 ulps apart may round to neighbouring bf16 values.
    if (p->activations == ACTIVATIONS_BF16 && bits > 7) bits = 7;
    PassTolerance fp32 = {"fp32", 1e-5, 1e-4, 1e-4, 1e-4};
    PassTolerance bf16 = {"bf16", 1e-2, 2e-2, 2e-2, 2e-2};
    PassTolerance low = {"8-bit", 1e-2, 0.3, 0.2, 2e-2};
    PassTolerance tol = bits >= 23 ? fp32 : bits >= 7 ? bf16 : low;
    if (bits >= 23 && p->grads == GRADS_BF16) {
        // fp32 passes, but the stored gradients are bf16: they may round one bf16 ulp apart.
        tol.tier = "fp32, bf16 gradients";
        tol.grad_max = tol.grad_l2 = tol.norm = bf16.grad_max;
    }
    return tol;
}

// One tensor's GPU gradient against the CPU's. The error is measured against the tensor's max |g| (CPU),
// not against each element (an element near zero is a cancellation of terms far larger than itself, and
// reordered sums leave it with an error relative to those terms) and not against the RMS |g| (a bf16-stored
// gradient may round one ulp apart, up to 2^-7 of the element itself, which is 2^-7 * max/RMS of the RMS:
// over the tolerance for a heavy-tailed tensor). Besides the worst element, the relative L2 error
// ||g_gpu - g_cpu|| / ||g_cpu|| of the whole tensor.
typedef struct {
    double max_abs, max_err, l2_err;
    size_t worst, nonfinite;
} TensorError;

static TensorError tensor_error(const float *cpu, const float *gpu, size_t n) {
    TensorError e = {0.0, 0.0, 0.0, 0, 0};
    double max_diff = 0.0, sq = 0.0, sq_diff = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(cpu[i]) || !isfinite(gpu[i])) {
            e.nonfinite++;
            continue;
        }
        double r = cpu[i], d = fabs((double)gpu[i] - r);
        if (fabs(r) > e.max_abs) e.max_abs = fabs(r);
        if (d > max_diff) {
            max_diff = d;
            e.worst = i;
        }
        sq += r * r;
        sq_diff += d * d;
    }
    e.max_err = e.max_abs > 0.0 ? max_diff / e.max_abs : (max_diff == 0.0 ? 0.0 : INFINITY);
    e.l2_err = sq > 0.0 ? sqrt(sq_diff / sq) : (sq_diff == 0.0 ? 0.0 : INFINITY);
    if (e.nonfinite) e.max_err = e.l2_err = INFINITY;
    return e;
}

static void compare_gradients(const char *label, const PassTolerance *tol, const ParamTable *table, const float *cpu,
                              const float *gpu) {
    char report[1024];
    int len = snprintf(report, sizeof report, "%-36s grads (%s tier, max err / max|g|):", label, tol->tier);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *p = &table->tensors[t];
        const float *x = cpu + p->offset, *y = gpu + p->offset;
        TensorError e = tensor_error(x, y, p->numel);
        size_t slice = p->per_layer ? p->numel / L : p->numel;
        CHECK(e.nonfinite == 0, "%s: %zu non-finite gradients of %s", label, e.nonfinite, p->name);
        CHECK(e.max_abs > 0.0, "%s: the CPU gradient of %s is all zero (the comparison would be vacuous)", label, p->name);
        CHECK(e.max_err <= tol->grad_max,
              "%s: gradient of %s: max error %.3g of max |g| %.3g (tolerance %g), at element %zu (layer %zu, index "
              "%zu): %.9g on the GPU, %.9g on the CPU", label, p->name, e.max_err, e.max_abs, tol->grad_max, e.worst,
              e.worst / slice, e.worst % slice, y[e.worst], x[e.worst]);
        CHECK(e.l2_err <= tol->grad_l2, "%s: gradient of %s: relative L2 error %.3g (tolerance %g)", label, p->name,
              e.l2_err, tol->grad_l2);
        if (len > 0 && (size_t)len < sizeof report)
            len += snprintf(report + len, sizeof report - (size_t)len, " %s %.1e", p->name, e.max_err);
    }
    printf("%s\n", report);
}

static double host_norm(const float *g, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += (double)g[i] * (double)g[i];
    return sqrt(sum);
}

// One forward + backward of the batch from fresh backends: the loss, the gradient norm, and the gradients
// as the optimizer step would read them.
static float run_passes(const BackendOps *ops, Backend *backend, const int *inputs, const int *targets, float *grads,
                        float *norm) {
    ops->zero_grad(backend);
    float loss = ops->forward(backend, inputs, targets, B, T);
    ops->backward(backend, 1.0f, 1);
    *norm = ops->grad_norm(backend);
    ops->read_grads(backend, grads);
    return loss;
}

static void check_passes(const char *label, const Policy *policy, const ParamTable *table, const float *init) {
    size_t n = table->num_params;
    int inputs[B * T], targets[B * T];
    make_batch(inputs, targets);
    float *cpu_grads = (float *)xmalloc(n * sizeof(float)), *gpu_grads = (float *)xmalloc(n * sizeof(float));
    float *again_grads = (float *)xmalloc(n * sizeof(float));
    Backend *cpu = cpu_backend.create(table, policy, B, T, init);
    Backend *gpu = cuda_backend.create(table, policy, B, T, init);
    float cpu_norm, gpu_norm;
    float cpu_loss = run_passes(&cpu_backend, cpu, inputs, targets, cpu_grads, &cpu_norm);
    float gpu_loss = run_passes(&cuda_backend, gpu, inputs, targets, gpu_grads, &gpu_norm);

    PassTolerance tol = pass_tolerance(policy);
    CHECK(isfinite(cpu_loss) && relative(gpu_loss, cpu_loss) <= tol.loss,
          "%s: loss %.9g on the GPU, %.9g on the CPU (tolerance %g relative)", label, gpu_loss, cpu_loss, tol.loss);
    CHECK(isfinite(cpu_norm) && relative(gpu_norm, cpu_norm) <= tol.norm,
          "%s: gradient norm %.9g on the GPU, %.9g on the CPU (tolerance %g relative)", label, gpu_norm, cpu_norm,
          tol.norm);
    // grad_norm reduces the same stored gradients that read_grads returns: equal up to the order of a double
    // sum and the final rounding to fp32 (one ulp, 6e-8).
    double own_norm = host_norm(gpu_grads, n);
    CHECK(relative(gpu_norm, own_norm) <= 1e-6, "%s: GPU grad_norm %.9g, but its gradients have norm %.9g", label,
          gpu_norm, own_norm);
    compare_gradients(label, &tol, table, cpu_grads, gpu_grads);

    // Determinism: a second GPU backend (fresh, so fp8 histories are as empty as the first's) repeats the bits.
    Backend *again = cuda_backend.create(table, policy, B, T, init);
    float again_norm;
    float again_loss = run_passes(&cuda_backend, again, inputs, targets, again_grads, &again_norm);
    CHECK(bits_of_float(again_loss) == bits_of_float(gpu_loss), "%s: a second GPU run gave loss %.9g, the first %.9g",
          label, again_loss, gpu_loss);
    CHECK(bits_of_float(again_norm) == bits_of_float(gpu_norm),
          "%s: a second GPU run gave gradient norm %.9g, the first %.9g", label, again_norm, gpu_norm);
    size_t first, differ = bit_differences(gpu_grads, again_grads, n, &first);
    CHECK(differ == 0, "%s: a second GPU run gave %zu of %zu other gradients (first %zu in %s: %.9g vs %.9g)", label,
          differ, n, first, tensor_name_of(table, first), again_grads[first], gpu_grads[first]);
    BackendState gpu_state = copy_state(cuda_backend.state_save(gpu));
    compare_states(label, "on the GPU after the passes", &gpu_state, "on a second GPU run",
                   cuda_backend.state_save(again));
    free_state(&gpu_state);
    printf("%-36s passes: loss %.7f vs %.7f, grad norm %.6g vs %.6g, GPU rerun identical\n", label, gpu_loss, cpu_loss,
           gpu_norm, cpu_norm);

    cuda_backend.destroy(again);
    cpu_backend.destroy(cpu);
    cuda_backend.destroy(gpu);
    free(cpu_grads);
    free(gpu_grads);
    free(again_grads);
}

int main(void) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        fprintf(stderr, "test_backend_device: no CUDA device available\n");
        return 1;
    }
    ModelShape shape = {L, NH, C, T, V, 0};
    ParamTable table;
    param_table_init(&table, &shape);
    float *init = (float *)xmalloc(table.num_params * sizeof(float));
    gpt_init_params(&table, init, 7);
    for (int p = 0; p < NUM_PRESETS; p++) {
        Policy policy = preset_policy(presets[p], NULL);
        check_optimizer(presets[p], &policy, &table, init);
        check_passes(presets[p], &policy, &table, init);
    }
    // Axes beyond the presets: MCF first moments, an eXmY operand format, fp32 with bf16 attention, the
    // materialized attention (the fused kernels' fallback), bf16-family weights under fp32 activations (casts
    // before bf16 products), fp32 block linears over bf16 activations and weights (widened operands, GELU's
    // unfused backward), DQT's embeddings in bf16 (the encoder and the LM head read them in their own store)
    // and on the grid (decoded like the matrices).
    const char *overrides[][2] = {{"collage_plus", "precision.adam_m=mcf"},
                                  {"mixed", "precision.matmul=e5m7"},
                                  {"fp32", "precision.attention=bf16"},
                                  {"mixed", "precision.attention_impl=materialized"},
                                  {"collage_plus", "precision.activations=fp32"},
                                  {"bf16", "precision.matmul=fp32"},
                                  {"dqt_ternary", "precision.embeddings=bf16"},
                                  {"dqt_int8", "precision.embeddings=grid"}};
    for (int i = 0; i < (int)(sizeof overrides / sizeof overrides[0]); i++) {
        Policy policy = preset_policy(overrides[i][0], overrides[i][1]);
        char label[96];
        snprintf(label, sizeof label, "%s+%s", overrides[i][0], overrides[i][1] + strlen("precision."));
        check_optimizer(label, &policy, &table, init);
        check_passes(label, &policy, &table, init);
    }
    free(init);
    return test_summary("backend_device");
}
