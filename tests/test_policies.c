// Every precision policy on the CPU backend, through the backend interface: a tiny GPT-2 on synthetic data
// with learnable structure. For each preset (and a few axis overrides): a short run lowers the loss; the
// checkpoint sections are the quantities the policy claims, in their formats, and the compute copy the
// forward reads equals the decoded storage; plan_state_bytes matches them; a resume through
// state_save/state_load continues bit for bit; and the update-quality sums are the same for any thread count
// and leave the step itself unchanged. Then BitNet's straight-through gradient, and DQT's fp32 embeddings
// against the fp32 policy's exact update.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "numerics.h"
#include "testing.h"
#include "util.h"

// Two layers, two heads of 16 channels, 64 tokens (padded to 128); two micro-batches of 4 x 16 per step.
enum { L = 2, NH = 2, C = 32, V = 64, B = 4, T = 16, MICRO_STEPS = 2 };
enum { STEPS = 30, RESUME_AT = 10, METRICS_EVERY = 5 };

typedef struct {
    const char *assignments[4];  // config assignments; the first names the preset
    const char *sections;        // the checkpoint sections the policy stores, in order
} PolicyCase;

static const PolicyCase cases[] = {
    {{"precision.policy=fp32"}, "weights_fp32 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=mixed"}, "weights_bf16 master_fp32 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=mixed_nomaster"}, "weights_bf16 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=bf16"}, "weights_bf16 adam_m_bf16 adam_v_bf16"},
    {{"precision.policy=collage_light"}, "weights_bf16 mcf_lo_bf16 adam_m_bf16 adam_v_bf16"},
    {{"precision.policy=collage_plus"}, "weights_bf16 mcf_lo_bf16 adam_m_bf16 adam_v_hi_bf16 adam_v_lo_bf16"},
    {{"precision.policy=kahan"}, "weights_bf16 kahan_c_bf16 adam_m_bf16 adam_v_bf16"},
    {{"precision.policy=sr"}, "weights_bf16 adam_m_bf16 adam_v_bf16"},
    {{"precision.policy=fp8_sim"}, "weights_bf16 master_fp32 adam_m_fp32 adam_v_fp32 matmul_scaling"},
    {{"precision.policy=dqt_int8"}, "dqt_codes_int8 dqt_scales_fp32 off_grid_fp32 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=dqt_int3"}, "dqt_codes_int8 dqt_scales_fp32 off_grid_fp32 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=dqt_ternary"}, "dqt_codes_int8 dqt_scales_fp32 off_grid_fp32 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=bitnet"}, "latent_weights_fp32 adam_m_fp32 adam_v_fp32"},
    // Axis overrides: every moment storage under several update rules, and both gradient formats.
    {{"precision.policy=bf16", "precision.update=sr", "precision.adam_m=mcf", "precision.grads=fp32"},
     "weights_bf16 adam_m_hi_bf16 adam_m_lo_bf16 adam_v_bf16"},
    {{"precision.policy=fp32", "precision.adam_m=bf16", "precision.adam_v=mcf"},
     "weights_fp32 adam_m_bf16 adam_v_hi_bf16 adam_v_lo_bf16"},
    {{"precision.policy=mixed", "precision.adam_v=bf16", "precision.grads=bf16"},
     "weights_bf16 master_fp32 adam_m_fp32 adam_v_bf16"},
    {{"precision.policy=kahan", "precision.adam_m=fp32", "precision.adam_v=mcf"},
     "weights_bf16 kahan_c_bf16 adam_m_fp32 adam_v_hi_bf16 adam_v_lo_bf16"},
    {{"precision.policy=collage_plus", "precision.adam_m=mcf", "precision.grads=fp32"},
     "weights_bf16 mcf_lo_bf16 adam_m_hi_bf16 adam_m_lo_bf16 adam_v_hi_bf16 adam_v_lo_bf16"},
    {{"precision.policy=dqt_int8", "precision.weights=int4", "precision.adam_v=bf16"},
     "dqt_codes_int8 dqt_scales_fp32 off_grid_fp32 adam_m_fp32 adam_v_bf16"},
    // The embeddings on the grid or in bf16; the steps recomputed every step; the bitnet embeddings quantized.
    {{"precision.policy=dqt_int8", "precision.embeddings=grid", "precision.weights=int2"},
     "dqt_codes_int8 dqt_scales_fp32 off_grid_fp32 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=dqt_ternary", "precision.embeddings=bf16"},
     "dqt_codes_int8 dqt_scales_fp32 off_grid_fp32 off_grid_bf16 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=dqt_int8", "precision.dqt_rescale=1", "precision.weights=int6"},
     "dqt_codes_int8 dqt_scales_fp32 off_grid_fp32 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=bitnet", "precision.embeddings=grid"}, "latent_weights_fp32 adam_m_fp32 adam_v_fp32"},
    // int8 activations (the block linears' inputs) keep no state of their own.
    {{"precision.policy=dqt_int8", "precision.activation_quant=int8"},
     "dqt_codes_int8 dqt_scales_fp32 off_grid_fp32 adam_m_fp32 adam_v_fp32"},
    {{"precision.policy=bitnet", "precision.activation_quant=int8"}, "latent_weights_fp32 adam_m_fp32 adam_v_fp32"},
};
#define NUM_CASES (int)(sizeof cases / sizeof cases[0])

typedef struct {
    const PolicyCase *c;
    const char *name;  // the case's first assignment, for messages
    Policy policy;
    ParamTable table;
    float *init;  // (N) initial fp32 parameters
} Setup;

// Sequences of a fixed random permutation: each token determines the next, so a bigram model reaches zero
// loss, and a tiny transformer gets well below ln(V) in a few dozen steps. The start of each sequence is
// drawn from (step, micro-step).
static int next_token(int token) { return (token * 37 + 11) % V; }  // 37 is prime to 64: a permutation

static void make_batch(int step, int micro, int *inputs, int *targets) {
    RngKey key = {2024, (uint64_t)step, (uint32_t)micro};
    for (int b = 0; b < B; b++) {
        int token = (int)(rng_u32(key, (uint64_t)b) % V);
        for (int t = 0; t < T; t++) {
            inputs[b * T + t] = token;
            token = next_token(token);
            targets[b * T + t] = token;
        }
    }
}

static AdamWStep step_hyperparameters(int step, float grad_norm, float lr, float beta2) {
    AdamWStep s;
    s.lr = lr;
    s.beta1 = 0.9f;
    s.beta2 = beta2;
    s.eps = 1e-8f;
    s.weight_decay = 0.1f;
    s.bias_correction1 = 1.0f - powf(s.beta1, (float)(step + 1));
    s.bias_correction2 = 1.0f - powf(s.beta2, (float)(step + 1));
    s.grad_scale = grad_norm > 1.0f ? 1.0f / grad_norm : 1.0f;
    s.seed = 99;
    s.step = (uint64_t)step;
    return s;
}

// Steps [first, first + count) with metrics on the steps listed by metrics_period (0: only the last step),
// the optimizer running on optimizer_threads threads. Returns the losses in losses[step].
static void train(Backend *backend, int first, int count, float *losses, int metrics_period, int optimizer_threads,
                  UpdateMetrics *metrics) {
    int inputs[B * T], targets[B * T];
    int threads = omp_get_max_threads();
    for (int step = first; step < first + count; step++) {
        cpu_backend.zero_grad(backend);
        double loss = 0.0;
        for (int micro = 0; micro < MICRO_STEPS; micro++) {
            make_batch(step, micro, inputs, targets);
            loss += cpu_backend.forward(backend, inputs, targets, B, T);
            cpu_backend.backward(backend, 1.0f / MICRO_STEPS, micro == MICRO_STEPS - 1);
        }
        losses[step] = (float)(loss / MICRO_STEPS);
        AdamWStep hp = step_hyperparameters(step, cpu_backend.grad_norm(backend), 3e-3f, 0.95f);
        int last = step == first + count - 1;
        int with_metrics = metrics_period ? (step + 1) % metrics_period == 0 : last;
        omp_set_num_threads(optimizer_threads);
        cpu_backend.optimizer_step(backend, &hp, with_metrics ? metrics : NULL);
        omp_set_num_threads(threads);
    }
}

static const CheckpointSection *find_section(const BackendState *state, const char *name) {
    for (int i = 0; i < state->count; i++) {
        if (strcmp(state->sections[i].name, name) == 0) return &state->sections[i];
    }
    return NULL;
}

// Half an ulp of a bf16 value (0 for zero: a normalised pair with hi = 0 has lo = 0).
static double half_ulp(bf16 h) {
    double x = fabs((double)bf16_to_f32(h));
    if (x == 0.0) return 0.0;
    int e;
    frexp(x, &e);
    return ldexp(1.0, e - 9);
}

static int count_unnormalised(const bf16 *hi, const bf16 *lo, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += fabs((double)bf16_to_f32(lo[i])) > half_ulp(hi[i]);
    return bad;
}

static int is_bf16_value(float x) { return (f32_to_bits(x) & 0xffffu) == 0; }

// DQT: the grid tensors' codes in table order with one step per layer slice, the off-grid tensors in fp32
// (1-D parameters; embeddings kept in fp32) and bf16 (embeddings kept in bf16); the compute copy decodes them.
static void check_dqt_storage(const Setup *s, const BackendState *state, const float *params) {
    const int8_t *q = find_section(state, "dqt_codes_int8")->data;
    const float *scales = find_section(state, "dqt_scales_fp32")->data;
    const float *fp32 = find_section(state, "off_grid_fp32")->data;
    const CheckpointSection *bf16_section = find_section(state, "off_grid_bf16");
    const bf16 *bf16_weights = bf16_section ? bf16_section->data : NULL;
    IntGrid grid = s->policy.grid_bits ? int_grid_bits(s->policy.grid_bits) : int_grid_ternary();
    int off_grid = 0, wrong_value = 0, vector_fp32 = 0;
    size_t at[3] = {0, 0, 0}, slice = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &s->table.tensors[t];
        size_t slices = tensor->per_layer ? L : 1, slice_numel = tensor->numel / slices;
        int embedding = t == PARAM_WTE || t == PARAM_WPE;
        int store = !tensor->is_matrix || (embedding && s->policy.embeddings == EMBEDDINGS_FP32) ? 1
                  : embedding && s->policy.embeddings == EMBEDDINGS_BF16                        ? 2 : 0;
        for (size_t e = 0; e < tensor->numel; e++) {
            float value = params[tensor->offset + e];
            size_t i = at[store]++;
            if (store == 0) {
                off_grid += q[i] < grid.min || q[i] > grid.max;
                wrong_value += value != (float)q[i] * scales[slice + e / slice_numel];
            } else if (store == 1) {
                wrong_value += value != fp32[i];
                vector_fp32 += !is_bf16_value(value);
            } else {
                wrong_value += value != bf16_to_f32(bf16_weights[i]);
            }
        }
        if (store == 0) slice += slices;
    }
    CHECK(at[2] == (bf16_section ? bf16_section->nbytes / sizeof(bf16) : 0), "%s: bf16 embeddings %zu", s->name, at[2]);
    CHECK(off_grid == 0, "%s: %d codes off the grid", s->name, off_grid);
    CHECK(wrong_value == 0, "%s: %d compute-copy values differ from the decoded storage", s->name, wrong_value);
    CHECK(vector_fp32 > (int)(at[1] / 2), "%s: off-grid fp32 parameters should be fp32 (%d of %zu not bf16)", s->name,
          vector_fp32, at[1]);
}

// BitNet: the passes read each quantized slice as clamp(round(w / a), -1, 1) * a with a = mean |w| of the
// slice's latent weights (in double here), the other tensors as their latent weights.
static void check_bitnet_copy(const Setup *s, const float *latent, const float *params) {
    int wrong = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &s->table.tensors[t];
        int embedding = t == PARAM_WTE || t == PARAM_WPE;
        int quantized = tensor->is_matrix && (!embedding || s->policy.embeddings == EMBEDDINGS_AS_WEIGHTS);
        size_t slices = tensor->per_layer ? L : 1, slice_numel = tensor->numel / slices;
        size_t real = t == PARAM_WTE ? (size_t)V * C : slice_numel;  // wte's padded rows are no weights
        for (size_t sl = 0; sl < slices; sl++) {
            const float *w = latent + tensor->offset + sl * slice_numel;
            const float *read = params + tensor->offset + sl * slice_numel;
            double absmean = 0.0;
            for (size_t e = 0; e < real; e++) absmean += fabs((double)w[e]);
            absmean /= (double)real;
            for (size_t e = 0; e < slice_numel; e++) {
                double code = fmax(-1.0, fmin(1.0, nearbyint(w[e] / absmean)));
                double want = quantized ? code * absmean : w[e];
                wrong += fabs(read[e] - want) > 1e-6 * absmean;
            }
        }
    }
    CHECK(wrong == 0, "%s: %d weights the passes read are not the latent weights' absmean-ternary values", s->name,
          wrong);
}

// The fp32 compute copy against the decoded storage, and each stored quantity's own invariants.
static void check_formats(const Setup *s, Backend *backend) {
    size_t n = s->table.num_params;
    float *params = xmalloc(n * sizeof(float));
    cpu_backend.read_params(backend, params);
    const BackendState *state = cpu_backend.state_save(backend);

    char names[512] = "";
    for (int i = 0; i < state->count; i++) {
        strncat(names, i ? " " : "", sizeof names - strlen(names) - 1);
        strncat(names, state->sections[i].name, sizeof names - strlen(names) - 1);
    }
    CHECK(strcmp(names, s->c->sections) == 0, "%s: sections \"%s\", expected \"%s\"", s->name, names, s->c->sections);

    const CheckpointSection *weights = find_section(state, "weights_bf16");
    if (weights) {
        const bf16 *w = weights->data;
        int bad = 0;
        for (size_t i = 0; i < n; i++) bad += params[i] != bf16_to_f32(w[i]);
        CHECK(bad == 0, "%s: %d compute-copy values differ from the bf16 weights", s->name, bad);
    }
    const CheckpointSection *master = find_section(state, "master_fp32");
    if (master) {
        const float *fp32 = master->data;
        int bad = 0;
        for (size_t i = 0; i < n; i++) bad += ((const bf16 *)weights->data)[i] != bf16_from_f32(fp32[i]);
        CHECK(bad == 0, "%s: %d bf16 weights are not RNE(master)", s->name, bad);
    }
    const CheckpointSection *lo = find_section(state, "mcf_lo_bf16");
    if (lo) CHECK(count_unnormalised(weights->data, lo->data, n) == 0, "%s: weight pairs not normalised", s->name);
    const char *pairs[2][2] = {{"adam_m_hi_bf16", "adam_m_lo_bf16"}, {"adam_v_hi_bf16", "adam_v_lo_bf16"}};
    for (int p = 0; p < 2; p++) {
        const CheckpointSection *hi = find_section(state, pairs[p][0]), *low = find_section(state, pairs[p][1]);
        if (hi) CHECK(count_unnormalised(hi->data, low->data, n) == 0, "%s: %s pairs not normalised", s->name, pairs[p][0]);
    }
    const CheckpointSection *kahan = find_section(state, "kahan_c_bf16");
    if (kahan) {
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            bf16 theta = ((const bf16 *)weights->data)[i], c = ((const bf16 *)kahan->data)[i];
            bad += fabs((double)bf16_to_f32(c)) > 2.0 * half_ulp(theta) && theta != 0;
        }
        CHECK(bad == 0, "%s: %d Kahan compensations exceed an ulp of their weight", s->name, bad);
    }
    const CheckpointSection *fp32_weights = find_section(state, "weights_fp32");
    if (fp32_weights) {
        int fp32_only = 0;
        for (size_t i = 0; i < n; i++) fp32_only += !is_bf16_value(params[i]);
        CHECK(memcmp(fp32_weights->data, params, n * sizeof(float)) == 0, "%s: fp32 weights vs compute copy", s->name);
        CHECK(fp32_only > (int)(n / 2), "%s: fp32 weights should mostly not be bf16 values (%d of %zu)", s->name,
              fp32_only, n);
    }
    const CheckpointSection *codes = find_section(state, "dqt_codes_int8");
    if (codes) check_dqt_storage(s, state, params);
    const CheckpointSection *latent = find_section(state, "latent_weights_fp32");
    if (latent) check_bitnet_copy(s, latent->data, params);
    free(params);
}

// plan_state_bytes: the sections (the policy's storage; under fp32 weights also the compute copy), the
// compute copy otherwise (BitNet: the ternary copy), the next steps under dqt_rescale, and the gradients (fp32, or bf16 plus the fp32 scratch).
static void check_plan(const Setup *s, Backend *backend) {
    size_t n = s->table.num_params;
    const BackendState *state = cpu_backend.state_save(backend);
    size_t stored = 0;
    for (int i = 0; i < state->count; i++) {
        if (strcmp(state->sections[i].name, "matmul_scaling") != 0) stored += state->sections[i].nbytes;
    }
    const CheckpointSection *steps = find_section(state, "dqt_scales_fp32");
    size_t rescale_steps = s->policy.dqt_rescale ? steps->nbytes : 0;  // the next steps' buffer
    size_t expected = stored + (s->policy.weights == WEIGHTS_FP32 ? 0 : n * sizeof(float)) + n * sizeof(float) +
                      (s->policy.grads == GRADS_BF16 ? n * sizeof(bf16) : 0) + rescale_steps;
    size_t plan = cpu_backend.plan_state_bytes(&s->table, &s->policy, 1);
    CHECK(plan == expected, "%s: plan %zu bytes, allocated %zu", s->name, plan, expected);
}

typedef struct {
    int count;
    size_t nbytes[12];
    void *data[12];
} Snapshot;

static Snapshot snapshot(Backend *backend) {
    const BackendState *state = cpu_backend.state_save(backend);
    Snapshot snap = {state->count, {0}, {0}};
    for (int i = 0; i < state->count; i++) {
        snap.nbytes[i] = state->sections[i].nbytes;
        snap.data[i] = xmalloc(snap.nbytes[i] ? snap.nbytes[i] : 1);
        memcpy(snap.data[i], state->sections[i].data, snap.nbytes[i]);
    }
    return snap;
}

static void free_snapshot(Snapshot *snap) {
    for (int i = 0; i < snap->count; i++) free(snap->data[i]);
}

static void restore(Backend *backend, const Snapshot *snap) {
    const BackendState *state = cpu_backend.state_save(backend);
    CHECK(state->count == snap->count, "section count %d vs %d", state->count, snap->count);
    for (int i = 0; i < state->count && i < snap->count; i++) {
        CHECK(state->sections[i].nbytes == snap->nbytes[i], "section %s size", state->sections[i].name);
        memcpy(state->sections[i].data, snap->data[i], snap->nbytes[i]);
    }
    cpu_backend.state_load(backend);
}

static int same_snapshots(const Snapshot *a, const Snapshot *b) {
    if (a->count != b->count) return 0;
    for (int i = 0; i < a->count; i++) {
        if (a->nbytes[i] != b->nbytes[i] || memcmp(a->data[i], b->data[i], a->nbytes[i]) != 0) return 0;
    }
    return 1;
}

static int same_metrics(const UpdateMetrics *a, const UpdateMetrics *b) {
    return memcmp(&a->total, &b->total, sizeof a->total) == 0 &&
           memcmp(a->groups, b->groups, (size_t)a->num_groups * sizeof(UpdateSums)) == 0;
}

static Setup make_setup(const PolicyCase *c) {
    Setup s;
    s.c = c;
    s.name = c->assignments[0];
    Config cfg;
    config_defaults(&cfg);
    for (int i = 0; i < 4 && c->assignments[i]; i++) config_set(&cfg, c->assignments[i]);
    s.policy = policy_from_config(&cfg);
    ModelShape shape = {L, NH, C, T, V, 0};
    param_table_init(&s.table, &shape);
    s.init = xmalloc(s.table.num_params * sizeof(float));
    gpt_init_params(&s.table, s.init, 7);
    return s;
}

// One policy: a straight run of STEPS steps (metrics every METRICS_EVERY steps, optimizer on 2 threads),
// and a run resumed from its state after RESUME_AT steps (metrics on the last step only, optimizer on 1
// thread). They must agree bit for bit: losses, final state, and the last step's metrics.
static void test_policy(const PolicyCase *c) {
    Setup s = make_setup(c);
    float straight[STEPS], resumed[STEPS];
    UpdateMetrics metrics_straight, metrics_resumed;
    update_metrics_init(&metrics_straight, &s.table);
    update_metrics_init(&metrics_resumed, &s.table);

    Backend *a = cpu_backend.create(&s.table, &s.policy, B, T, s.init);
    train(a, 0, RESUME_AT, straight, METRICS_EVERY, 2, &metrics_straight);
    Snapshot at_resume = snapshot(a);
    train(a, RESUME_AT, STEPS - RESUME_AT, straight, METRICS_EVERY, 2, &metrics_straight);

    // Grid weights learn more slowly: every DQT grid spans only about +-mean|W| (about 40% of normal init
    // weights sit at its ends), so the updates that push a weight beyond the ends are clamped away (edq_rel
    // 0.1 .. 0.3 here; int2 embeddings on the grid drop the loss by only about 0.6). Every other policy
    // drops by more than 1.8 (fp32 about 1.9) and keeps edq_rel above 0.85.
    int grid = s.policy.weights == WEIGHTS_INT_GRID;
    double min_drop = grid ? 0.25 : 1.0, min_edq_rel = grid ? 0.05 : 0.5;
    double first = straight[0], last = 0.0;
    for (int i = STEPS - 5; i < STEPS; i++) last += straight[i] / 5.0;
    CHECK(last < first - min_drop, "%s: loss %.4f -> %.4f (mean of the last 5 steps)", s.name, first, last);
    double edq_rel = update_quality(&metrics_straight, &metrics_straight.total).edq_rel;
    CHECK(edq_rel > min_edq_rel && edq_rel < 1.2, "%s: edq_rel %.4f", s.name, edq_rel);
    check_formats(&s, a);
    check_plan(&s, a);

    Backend *b = cpu_backend.create(&s.table, &s.policy, B, T, s.init);
    restore(b, &at_resume);
    train(b, RESUME_AT, STEPS - RESUME_AT, resumed, 0, 1, &metrics_resumed);
    CHECK(memcmp(straight + RESUME_AT, resumed + RESUME_AT, (STEPS - RESUME_AT) * sizeof(float)) == 0,
          "%s: resumed losses differ", s.name);
    Snapshot end_a = snapshot(a), end_b = snapshot(b);
    CHECK(same_snapshots(&end_a, &end_b), "%s: resumed final state differs", s.name);
    CHECK(same_metrics(&metrics_straight, &metrics_resumed), "%s: metrics depend on threads or resume", s.name);
    printf("%-40s loss %.3f -> %.3f, edq_rel %.4f\n", s.name, first, last, edq_rel);

    free_snapshot(&at_resume);
    free_snapshot(&end_a);
    free_snapshot(&end_b);
    cpu_backend.destroy(a);
    cpu_backend.destroy(b);
    update_metrics_free(&metrics_straight);
    update_metrics_free(&metrics_resumed);
    free(s.init);
}

// The weight gradient and loss of one micro-batch of step `step`'s data, into grads (N); returns the loss.
static float gradient_of(Backend *backend, int step, float *grads) {
    int inputs[B * T], targets[B * T];
    make_batch(step, 0, inputs, targets);
    cpu_backend.zero_grad(backend);
    float loss = cpu_backend.forward(backend, inputs, targets, B, T);
    cpu_backend.backward(backend, 1.0f, 1);
    cpu_backend.read_grads(backend, grads);
    return loss;
}

// BitNet's straight-through estimator: after a few steps, the gradient the bitnet backend stores for its
// latent weights is the gradient of an fp32-weight model (same bf16 products) whose weights are the ternary
// values, bit for bit, and not the gradient at the latent weights themselves.
static void test_bitnet_ste(void) {
    PolicyCase bitnet_case = {{"precision.policy=bitnet"}, ""};
    PolicyCase fp32_case = {{"precision.policy=fp32", "precision.matmul=bf16", "precision.attention=bf16",
                             "precision.lm_head=bf16"}, ""};
    Setup bitnet = make_setup(&bitnet_case), fp32 = make_setup(&fp32_case);
    size_t n = bitnet.table.num_params;
    Backend *latent_model = cpu_backend.create(&bitnet.table, &bitnet.policy, B, T, bitnet.init);
    float losses[STEPS];
    train(latent_model, 0, 3, losses, 0, 1, NULL);
    float *ternary = xmalloc(n * sizeof(float)), *latent = xmalloc(n * sizeof(float));
    cpu_backend.read_params(latent_model, ternary);
    memcpy(latent, find_section(cpu_backend.state_save(latent_model), "latent_weights_fp32")->data, n * sizeof(float));
    Backend *at_ternary = cpu_backend.create(&fp32.table, &fp32.policy, B, T, ternary);
    Backend *at_latent = cpu_backend.create(&fp32.table, &fp32.policy, B, T, latent);
    float *g_ste = xmalloc(n * sizeof(float)), *g_ternary = xmalloc(n * sizeof(float)), *g_latent = xmalloc(n * sizeof(float));
    float loss_ste = gradient_of(latent_model, 3, g_ste);
    float loss_ternary = gradient_of(at_ternary, 3, g_ternary);
    gradient_of(at_latent, 3, g_latent);
    CHECK(loss_ste == loss_ternary, "bitnet loss %.9g vs fp32 at the ternary weights %.9g", loss_ste, loss_ternary);
    CHECK(memcmp(g_ste, g_ternary, n * sizeof(float)) == 0, "bitnet gradient differs from the fp32 gradient at the "
          "ternary weights");
    CHECK(memcmp(g_ste, g_latent, n * sizeof(float)) != 0, "bitnet gradient equals the gradient at the latent weights");
    printf("bitnet: latent gradient = fp32 gradient at the ternary weights (loss %.4f)\n", loss_ste);
    cpu_backend.destroy(latent_model);
    cpu_backend.destroy(at_ternary);
    cpu_backend.destroy(at_latent);
    free(ternary);
    free(latent);
    free(g_ste);
    free(g_ternary);
    free(g_latent);
    free(bitnet.init);
    free(fp32.init);
}

// precision.activation_quant = int8 under dqt_int8: from the same weights and batch, the loss moves by a
// small nonzero amount (8-bit rows round each value by at most half of max|row| / 127), and the fc weight
// gradient, formed from the quantized inputs, changes with it. (The cases above train these policies.)
static void test_activation_quant_loss(void) {
    PolicyCase plain_case = {{"precision.policy=dqt_int8"}, ""},
               quant_case = {{"precision.policy=dqt_int8", "precision.activation_quant=int8"}, ""};
    Setup plain = make_setup(&plain_case), quant = make_setup(&quant_case);
    size_t n = plain.table.num_params;
    Backend *a = cpu_backend.create(&plain.table, &plain.policy, B, T, plain.init);
    Backend *b = cpu_backend.create(&quant.table, &quant.policy, B, T, quant.init);
    float *g_plain = xmalloc(n * sizeof(float)), *g_quant = xmalloc(n * sizeof(float));
    float loss_plain = gradient_of(a, 0, g_plain), loss_quant = gradient_of(b, 0, g_quant);
    CHECK(loss_quant != loss_plain && fabsf(loss_quant - loss_plain) < 0.01f * loss_plain,
          "dqt_int8 with int8 activations: loss %.7f vs %.7f", loss_quant, loss_plain);
    const ParamTensor *fcw = &plain.table.tensors[PARAM_FCW];
    CHECK(memcmp(g_plain + fcw->offset, g_quant + fcw->offset, fcw->numel * sizeof(float)) != 0,
          "int8 activations leave the fc weight gradient unchanged");
    printf("dqt_int8: loss %.6f, with int8 activations %.6f\n", loss_plain, loss_quant);
    cpu_backend.destroy(a);
    cpu_backend.destroy(b);
    free(g_plain);
    free(g_quant);
    free(plain.init);
    free(quant.init);
}

// precision.embeddings = fp32 under DQT: from the same weights and (bf16-valued) gradients, one step moves
// wte and wpe exactly as the fp32 policy's exact update does, while the block's weights land on the grid.
static void test_dqt_fp32_embeddings(void) {
    PolicyCase dqt_case = {{"precision.policy=dqt_int8"}, ""}, fp32_case = {{"precision.policy=fp32"}, ""};
    Setup dqt = make_setup(&dqt_case), fp32 = make_setup(&fp32_case);
    size_t n = dqt.table.num_params;
    Backend *backends[2] = {cpu_backend.create(&dqt.table, &dqt.policy, B, T, dqt.init),
                            cpu_backend.create(&fp32.table, &fp32.policy, B, T, fp32.init)};
    float *grads = xmalloc(n * sizeof(float)), *after[2];
    gradient_of(backends[1], 0, grads);
    for (size_t i = 0; i < n; i++) grads[i] = bf16_to_f32(bf16_from_f32(grads[i]));  // DQT stores bf16 gradients
    AdamWStep hp = step_hyperparameters(0, 1.0f, 3e-3f, 0.95f);
    for (int p = 0; p < 2; p++) {
        cpu_backend.load_grads(backends[p], grads);
        cpu_backend.optimizer_step(backends[p], &hp, NULL);
        after[p] = xmalloc(n * sizeof(float));
        cpu_backend.read_params(backends[p], after[p]);
    }
    size_t embeddings = dqt.table.tensors[PARAM_WTE].numel + dqt.table.tensors[PARAM_WPE].numel;
    CHECK(dqt.table.tensors[PARAM_WPE].offset + dqt.table.tensors[PARAM_WPE].numel == embeddings, "wte, wpe first");
    int moved = 0;
    for (size_t i = 0; i < embeddings; i++) moved += after[1][i] != fp32.init[i];
    CHECK(moved > (int)(embeddings / 2), "the step moved %d of %zu embedding weights", moved, embeddings);
    CHECK(memcmp(after[0], after[1], embeddings * sizeof(float)) == 0, "dqt_int8's fp32 embeddings differ from the "
          "fp32 policy's after one step");
    size_t qkvw = dqt.table.tensors[PARAM_QKVW].offset;
    CHECK(memcmp(after[0] + qkvw, after[1] + qkvw, dqt.table.tensors[PARAM_QKVW].numel * sizeof(float)) != 0,
          "the grid weights should not follow the fp32 update exactly");
    for (int p = 0; p < 2; p++) {
        cpu_backend.destroy(backends[p]);
        free(after[p]);
    }
    free(grads);
    free(dqt.init);
    free(fp32.init);
}

// The sum of a policy's stored second moments (v, or v_hi + v_lo), in double.
static double second_moment_sum(Backend *backend) {
    const BackendState *state = cpu_backend.state_save(backend);
    const CheckpointSection *fp32 = find_section(state, "adam_v_fp32");
    const CheckpointSection *bf16_v = find_section(state, "adam_v_bf16");
    const CheckpointSection *hi = find_section(state, "adam_v_hi_bf16");
    const CheckpointSection *lo = find_section(state, "adam_v_lo_bf16");
    double sum = 0.0;
    if (fp32) {
        const float *v = fp32->data;
        for (size_t i = 0; i < fp32->nbytes / sizeof(float); i++) sum += v[i];
    } else {
        const CheckpointSection *parts[2] = {hi ? hi : bf16_v, lo};
        for (int p = 0; p < 2 && parts[p]; p++) {
            const bf16 *v = parts[p]->data;
            for (size_t i = 0; i < parts[p]->nbytes / sizeof(bf16); i++) sum += bf16_to_f32(v[i]);
        }
    }
    return sum;
}

// At beta2 = 0.999, collage_plus's second moment (an MCF pair with the beta2 pair) stays within 0.5% of the
// mixed run's fp32 one over the whole run, while plain bf16's, for which bf16(0.999) == 1 and small
// increments stall, drifts above it. A small learning rate keeps the three runs' gradients alike, so that
// the second moments differ by their arithmetic, not by their trajectories.
static void test_second_moment_at_beta2_0999(void) {
    enum { RUN = 300 };
    const char *names[3] = {"precision.policy=mixed", "precision.policy=collage_plus", "precision.policy=bf16"};
    Backend *backends[3];
    Setup setups[3];
    for (int p = 0; p < 3; p++) {
        PolicyCase c = {{names[p]}, ""};
        setups[p] = make_setup(&c);
        backends[p] = cpu_backend.create(&setups[p].table, &setups[p].policy, B, T, setups[p].init);
    }
    int inputs[B * T], targets[B * T];
    double worst_plus = 0.0, bf16_ratio = 0.0;
    for (int step = 0; step < RUN; step++) {
        make_batch(step, 0, inputs, targets);
        for (int p = 0; p < 3; p++) {
            cpu_backend.zero_grad(backends[p]);
            cpu_backend.forward(backends[p], inputs, targets, B, T);
            cpu_backend.backward(backends[p], 1.0f, 1);
            AdamWStep hp = step_hyperparameters(step, cpu_backend.grad_norm(backends[p]), 1e-5f, 0.999f);
            cpu_backend.optimizer_step(backends[p], &hp, NULL);
        }
        double mixed = second_moment_sum(backends[0]);
        double plus_error = fabs(second_moment_sum(backends[1]) / mixed - 1.0);
        if (plus_error > worst_plus) worst_plus = plus_error;
        bf16_ratio = second_moment_sum(backends[2]) / mixed;
    }
    CHECK(worst_plus < 0.005, "collage_plus v departs from mixed's by %.4f%%", 100.0 * worst_plus);
    CHECK(bf16_ratio > 1.05, "bf16 v ends at %.4f x mixed's: it should drift above", bf16_ratio);
    printf("beta2 0.999, %d steps: collage_plus v within %.3f%% of mixed; bf16 v ends at %.3f x mixed\n", RUN,
           100.0 * worst_plus, bf16_ratio);
    for (int p = 0; p < 3; p++) {
        cpu_backend.destroy(backends[p]);
        free(setups[p].init);
    }
}

int main(void) {
    // The model is tiny: one thread runs it fastest, and spares a busy machine the spinning of idle
    // threads. Only the optimizer steps of the straight runs use two.
    omp_set_num_threads(1);
    for (int i = 0; i < NUM_CASES; i++) test_policy(&cases[i]);
    test_second_moment_at_beta2_0999();
    test_bitnet_ste();
    test_dqt_fp32_embeddings();
    test_activation_quant_loss();
    return test_summary("policies");
}
