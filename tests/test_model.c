// The model description and the CPU model: parameter counts, GPT-2 initialisation, the loss at init,
// and independence of results from the thread count.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/gpt_cpu.h"
#include "model.h"
#include "numerics/rng.h"
#include "testing.h"
#include "util.h"

static void check_padded_vocab(void) {
    CHECK(padded_vocab_size(50257) == 50304, "%d", padded_vocab_size(50257));
    CHECK(padded_vocab_size(37) == 128, "%d", padded_vocab_size(37));
    CHECK(padded_vocab_size(128) == 128, "%d", padded_vocab_size(128));
    CHECK(padded_vocab_size(257) == 384, "%d", padded_vocab_size(257));
}

// GPT-2 124M with llm.c's padded vocabulary.
static void check_gpt2_124m_table(void) {
    ModelShape shape = {12, 12, 768, 1024, 50257, 0};
    ParamTable table;
    param_table_init(&table, &shape);
    size_t L = 12, C = 768, Vp = 50304, maxT = 1024;
    size_t per_layer = 2 * C            // ln1 weight, bias
                       + 3 * C * C + 3 * C  // qkv
                       + C * C + C          // attention projection
                       + 2 * C              // ln2
                       + 4 * C * C + 4 * C  // fc
                       + 4 * C * C + C;     // fc projection
    size_t expected = Vp * C + maxT * C + L * per_layer + 2 * C;
    CHECK(table.shape.padded_vocab == 50304, "padded vocab %d", table.shape.padded_vocab);
    CHECK(expected == 124475904, "formula gives %zu", expected);
    CHECK(table.num_params == expected, "table has %zu parameters, expected %zu", table.num_params, expected);
    CHECK(table.num_params == 124475904, "table has %zu parameters", table.num_params);

    // llm.c's order, contiguous, and the matrices that get weight decay.
    const char *names[NUM_PARAM_TENSORS] = {"wte",  "wpe",  "ln1w", "ln1b",    "qkvw",    "qkvb",
                                            "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb",
                                            "fcprojw", "fcprojb", "lnfw", "lnfb"};
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const ParamTensor *t = &table.tensors[i];
        CHECK(strcmp(t->name, names[i]) == 0, "tensor %d is %s, expected %s", i, t->name, names[i]);
        CHECK(t->offset == offset, "%s at %zu, expected %zu", t->name, t->offset, offset);
        offset += t->numel;
        int matrix = i == PARAM_WTE || i == PARAM_WPE || i == PARAM_QKVW || i == PARAM_ATTPROJW ||
                     i == PARAM_FCW || i == PARAM_FCPROJW;
        CHECK(t->is_matrix == matrix, "%s is_matrix %d", t->name, t->is_matrix);
        int stacked = i != PARAM_WTE && i != PARAM_WPE && i != PARAM_LNFW && i != PARAM_LNFB;
        CHECK(t->per_layer == stacked, "%s per_layer %d", t->name, t->per_layer);
    }
    CHECK(table.tensors[PARAM_QKVW].numel == L * 3 * C * C, "qkvw %zu", table.tensors[PARAM_QKVW].numel);
    CHECK(table.tensors[PARAM_FCPROJW].numel == L * 4 * C * C, "fcprojw %zu", table.tensors[PARAM_FCPROJW].numel);
}

static void mean_std(const float *x, size_t n, double *mean, double *std) {
    double sum = 0.0, sq = 0.0;
    for (size_t i = 0; i < n; i++) sum += x[i];
    *mean = sum / n;
    for (size_t i = 0; i < n; i++) sq += (x[i] - *mean) * (x[i] - *mean);
    *std = sqrt(sq / n);
}

static int all_equal(const float *x, size_t n, float value) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != value) return 0;
    return 1;
}

// Standard deviations are estimated from >= 65k draws, so 2% is over ten standard errors.
static void check_init_std(const ParamTable *table, const float *params, int which, size_t n, double expected) {
    const ParamTensor *t = &table->tensors[which];
    double mean, std;
    mean_std(params + t->offset, n, &mean, &std);
    CHECK(fabs(std / expected - 1.0) < 0.02, "%s: std %.5f, expected %.5f", t->name, std, expected);
    CHECK(fabs(mean) < 0.05 * expected, "%s: mean %.2e", t->name, mean);
}

static void check_init(void) {
    ModelShape shape = {4, 4, 256, 256, 1000, 0};
    ParamTable table;
    param_table_init(&table, &shape);
    size_t n = table.num_params;
    float *params = xmalloc(n * sizeof(float));
    float *again = xmalloc(n * sizeof(float));
    omp_set_num_threads(2);
    gpt_init_params(&table, params, 42);

    size_t C = 256, V = 1000;
    const ParamTensor *wte = &table.tensors[PARAM_WTE];
    check_init_std(&table, params, PARAM_WTE, V * C, 0.02);
    CHECK(all_equal(params + wte->offset + V * C, wte->numel - V * C, 0.0f), "padded wte rows are not 0");
    check_init_std(&table, params, PARAM_WPE, table.tensors[PARAM_WPE].numel, 0.02);
    check_init_std(&table, params, PARAM_QKVW, table.tensors[PARAM_QKVW].numel, 0.02);
    check_init_std(&table, params, PARAM_FCW, table.tensors[PARAM_FCW].numel, 0.02);
    double residual_std = 0.02 / sqrt(2.0 * 4);
    check_init_std(&table, params, PARAM_ATTPROJW, table.tensors[PARAM_ATTPROJW].numel, residual_std);
    check_init_std(&table, params, PARAM_FCPROJW, table.tensors[PARAM_FCPROJW].numel, residual_std);
    int ones[] = {PARAM_LN1W, PARAM_LN2W, PARAM_LNFW};
    for (int i = 0; i < 3; i++) {
        const ParamTensor *t = &table.tensors[ones[i]];
        CHECK(all_equal(params + t->offset, t->numel, 1.0f), "%s is not all 1", t->name);
    }
    int zeros[] = {PARAM_LN1B, PARAM_QKVB, PARAM_ATTPROJB, PARAM_LN2B, PARAM_FCB, PARAM_FCPROJB, PARAM_LNFB};
    for (int i = 0; i < 7; i++) {
        const ParamTensor *t = &table.tensors[zeros[i]];
        CHECK(all_equal(params + t->offset, t->numel, 0.0f), "%s is not all 0", t->name);
    }

    // The counter-based RNG makes init independent of the thread count, and of nothing but the seed.
    omp_set_num_threads(1);
    gpt_init_params(&table, again, 42);
    CHECK(memcmp(params, again, n * sizeof(float)) == 0, "init differs between 1 and 2 threads");
    gpt_init_params(&table, again, 43);
    CHECK(memcmp(params, again, n * sizeof(float)) != 0, "seeds 42 and 43 give the same init");
    omp_set_num_threads(2);
    free(params);
    free(again);
}

typedef struct {
    ParamTable table;
    float *params;
    int B, T;
    int *inputs, *targets;
} SmallModel;

static SmallModel small_model_init(void) {
    SmallModel m;
    ModelShape shape = {2, 4, 64, 64, 257, 0};
    param_table_init(&m.table, &shape);
    m.params = xmalloc(m.table.num_params * sizeof(float));
    gpt_init_params(&m.table, m.params, 7);
    m.B = 4;
    m.T = 64;
    m.inputs = xmalloc((size_t)m.B * m.T * sizeof(int));
    m.targets = xmalloc((size_t)m.B * m.T * sizeof(int));
    RngKey key = {11, 0, 0};
    for (int i = 0; i < m.B * m.T; i++) {
        m.inputs[i] = (int)(rng_u32(key, 2 * (uint64_t)i) % 257);
        m.targets[i] = (int)(rng_u32(key, 2 * (uint64_t)i + 1) % 257);
    }
    return m;
}

static void small_model_free(SmallModel *m) {
    free(m->params);
    free(m->inputs);
    free(m->targets);
}

// At init the logits are near zero, so the prediction is near uniform over the real vocabulary.
static void check_initial_loss(void) {
    SmallModel m = small_model_init();
    GPTCpu *model = gpt_cpu_create(&m.table, m.B, m.T);
    float loss = gpt_cpu_forward(model, m.params, m.inputs, m.targets, m.B, m.T);
    double uniform = log(257.0);
    CHECK(fabs(loss / uniform - 1.0) < 0.02, "loss at init %f, ln(V) = %f", loss, uniform);

    // Probabilities: rows sum to 1 over the real vocabulary; padded entries are 0.
    const float *probs = gpt_cpu_probs(model);
    int Vp = m.table.shape.padded_vocab;
    double worst = 0.0;
    int padded_nonzero = 0;
    for (int n = 0; n < m.B * m.T; n++) {
        double sum = 0.0;
        for (int v = 0; v < Vp; v++) {
            sum += probs[(size_t)n * Vp + v];
            padded_nonzero += v >= 257 && probs[(size_t)n * Vp + v] != 0.0f;
        }
        worst = fmax(worst, fabs(sum - 1.0));
    }
    CHECK(worst < 1e-5, "probability rows sum to 1 +- %.2e", worst);
    CHECK(padded_nonzero == 0, "%d padded probabilities are not 0", padded_nonzero);

    // Without targets: no loss, the same probabilities; a smaller batch fits the same buffers.
    float *kept = xmalloc((size_t)m.B * m.T * Vp * sizeof(float));
    memcpy(kept, probs, (size_t)m.B * m.T * Vp * sizeof(float));
    float none = gpt_cpu_forward(model, m.params, m.inputs, NULL, m.B, m.T);
    CHECK(none == 0.0f, "loss without targets %f", none);
    CHECK(memcmp(kept, gpt_cpu_probs(model), (size_t)m.B * m.T * Vp * sizeof(float)) == 0,
          "probabilities differ without targets");
    gpt_cpu_forward(model, m.params, m.inputs, NULL, 1, m.T / 2);
    CHECK(memcmp(kept, gpt_cpu_probs(model), (size_t)(m.T / 2) * Vp * sizeof(float)) == 0,
          "a shorter batch changes the first sequence's probabilities");
    size_t fused = gpt_cpu_activation_bytes(&m.table, m.B, m.T, ATTENTION_FUSED);
    CHECK(fused > gpt_cpu_activation_bytes(&m.table, 1, m.T, ATTENTION_FUSED), "activation bytes do not grow with the batch");
    // Materialized attention keeps (L, B, NH, T, T) probabilities where fused keeps (L, B, NH, T) log-sum-exps
    // (each buffer rounded up to 16 floats).
    size_t rows = (size_t)m.table.shape.n_layer * m.B * m.table.shape.n_head * m.T;
    CHECK(gpt_cpu_activation_bytes(&m.table, m.B, m.T, ATTENTION_MATERIALIZED) - fused + 32 * sizeof(float) >=
              rows * (m.T - 1) * sizeof(float), "materialized attention's probabilities missing from the plan");
    free(kept);
    gpt_cpu_free(model);
    small_model_free(&m);
}

// Every output is summed by one thread in a fixed order, so forward and backward are bitwise equal for
// any thread count.
static void run_step(const SmallModel *m, int threads, const MatmulPrecision *linear, MatmulFormat attention,
                     float *loss, float *probs, float *grads) {
    omp_set_num_threads(threads);
    GPTCpu *model = gpt_cpu_create(&m->table, m->B, m->T);
    MatmulPrecision head = {.format = attention};
    gpt_cpu_set_precision(model, linear, &head, &head);
    *loss = gpt_cpu_forward(model, m->params, m->inputs, m->targets, m->B, m->T);
    memcpy(probs, gpt_cpu_probs(model), (size_t)m->B * m->T * m->table.shape.padded_vocab * sizeof(float));
    memset(grads, 0, m->table.num_params * sizeof(float));
    gpt_cpu_backward(model, m->params, grads, 1.0f);
    gpt_cpu_free(model);
}

static void check_thread_determinism(void) {
    SmallModel m = small_model_init();
    size_t nprobs = (size_t)m.B * m.T * m.table.shape.padded_vocab, n = m.table.num_params;
    float *probs1 = xmalloc(nprobs * sizeof(float)), *probs2 = xmalloc(nprobs * sizeof(float));
    float *grads1 = xmalloc(n * sizeof(float)), *grads2 = xmalloc(n * sizeof(float));
    // fp32; bf16; fp8 with delayed scaling (amaxes from parallel reductions); e5m2 toward zero.
    MatmulPrecision linear[] = {{.format = MATMUL_FP32},
                                {.format = MATMUL_BF16},
                                {.format = MATMUL_FP8, .scaling = SCALING_DELAYED, .amax_history = 4},
                                {.format = MATMUL_EXMY, .exp_bits = 5, .man_bits = 2, .rounding = ROUND_TOWARD_ZERO}};
    MatmulFormat attention[] = {MATMUL_FP32, MATMUL_BF16, MATMUL_BF16, MATMUL_FP32};
    for (int f = 0; f < 4; f++) {
        float loss1, loss2, loss3;
        run_step(&m, 1, &linear[f], attention[f], &loss1, probs1, grads1);
        run_step(&m, 2, &linear[f], attention[f], &loss2, probs2, grads2);
        CHECK(memcmp(&loss1, &loss2, sizeof loss1) == 0, "format %d: loss %.9g vs %.9g", f, loss1, loss2);
        CHECK(memcmp(probs1, probs2, nprobs * sizeof(float)) == 0, "format %d: probabilities differ", f);
        CHECK(memcmp(grads1, grads2, n * sizeof(float)) == 0, "format %d: gradients differ", f);
        run_step(&m, 3, &linear[f], attention[f], &loss3, probs2, grads2);
        CHECK(memcmp(grads1, grads2, n * sizeof(float)) == 0, "format %d: gradients differ at 3 threads", f);
    }
    omp_set_num_threads(2);
    free(probs1);
    free(probs2);
    free(grads1);
    free(grads2);
    small_model_free(&m);
}

int main(void) {
    check_padded_vocab();
    check_gpt2_124m_table();
    check_init();
    check_initial_loss();
    check_thread_determinism();
    return test_summary("test_model");
}
