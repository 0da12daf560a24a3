// The fused (tiled) attention of src/cpu/attention_tiled.c against a float64 attention computed here and
// against attention.c's materialised one, for T around the tile size (1, 7, 63, 64, 65, 130: below, at and
// across the 64-row tiles), head sizes 64 and 16, and operand formats fp32, bf16 and e4m3 (unscaled eXmY).
// Then the backward against finite differences of a float64 loss, determinism across thread counts, the
// forward's probabilities recomputed from the stored lse bit for bit, the decoding row, and the fp8 refusal.
//
// Tolerances are error bounds, per element, built from the float64 values (so a wrong mask, tile boundary or
// rescale, which errs by a sizeable fraction of the magnitude, fails, while rounding passes):
// - fp32 arithmetic: a dot product of n terms errs by at most n * 2^-24 of its sum of |terms| (n <= 64 here,
//   so 2^-18); exp turns the score's absolute error into a relative one, so p_ij errs relatively by
//   2^-18 * (S_ij + |lse_i|) plus a few ulps, S_ij = scale * sum_d |q_id k_jd|; the sums over <= 130 keys add
//   2^-17 of their sum of |terms|.
// - the operand cast of p and ds: at most u = half an ulp relative (bf16 2^-8, e4m3 2^-4: 7 and 3 mantissa bits) plus a = half the
//   subnormal spacing absolute (e4m3 2^-10; bf16's is negligible), so |cast(x) - x| <= u|x| + a.
// Each bound sums these per term and is doubled for second-order terms. Against attention.c the tolerance is
// the sum of both sides' bounds (2x): they differ only by fp32 rounding, plus flips of the cast where p sits
// near a rounding boundary, which the cast term covers.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "policy.h"
#include "testing.h"

typedef struct {
    int B, T, C, NH;
} Shape;

typedef struct {
    const char *name;
    OperandCast cast;
    double u, a;  // |cast(x) - x| <= u |x| + a
} Format;

static uint64_t rng = 0x1234abcdull;

static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)((splitmix64_next(&rng) >> 40) * 0x1p-24); }

static float *random_floats(size_t n, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = uniform(lo, hi);
    return x;
}

static void cast_all(float *x, size_t n, const OperandCast *cast) {
    for (size_t i = 0; i < n; i++) x[i] = quantize_operand_value(x[i], cast);
}

static size_t qkv_at(Shape s, int b, int t, int part, int h, int d) {
    return ((size_t)b * s.T + t) * 3 * s.C + (size_t)part * s.C + (size_t)h * (s.C / s.NH) + d;
}
static size_t out_at(Shape s, int b, int t, int h, int d) { return ((size_t)b * s.T + t) * s.C + (size_t)h * (s.C / s.NH) + d; }
static size_t row_at(Shape s, int b, int h, int t) { return ((size_t)b * s.NH + h) * s.T + t; }
static size_t pair_at(Shape s, int b, int h, int i, int j) { return row_at(s, b, h, i) * s.T + j; }

// The float64 attention of cast q, k, v with exact (uncast) probabilities, and the magnitudes the bounds need.
typedef struct {
    double *out, *lse, *p, *dqkv, *ds;  // (B,T,C), (B,NH,T), (B,NH,T,T), (B,T,3C), (B,NH,T,T)
    double *S, *DP;                     // per pair: scale * sum|q k|, sum|dout v|
} Reference;

static Reference reference_new(Shape s) {
    size_t rows = (size_t)s.B * s.NH * s.T, pairs = rows * s.T, n = (size_t)s.B * s.T * s.C;
    Reference r = {calloc(n, 8), calloc(rows, 8), calloc(pairs, 8), calloc(3 * n, 8), calloc(pairs, 8),
                   calloc(pairs, 8), calloc(pairs, 8)};
    return r;
}

static void reference_free(Reference *r) {
    free(r->out); free(r->lse); free(r->p); free(r->dqkv); free(r->ds); free(r->S); free(r->DP);
}

static void reference_forward(Reference *r, const float *qkv, Shape s) {
    int hs = s.C / s.NH;
    double scale = 1.0 / sqrt((double)hs);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++)
            for (int i = 0; i < s.T; i++) {
                double m = -INFINITY, sum = 0.0;
                double *p = r->p + pair_at(s, b, h, i, 0);
                for (int j = 0; j <= i; j++) {
                    double dot = 0.0, abs_dot = 0.0;
                    for (int d = 0; d < hs; d++) {
                        double x = (double)qkv[qkv_at(s, b, i, 0, h, d)] * qkv[qkv_at(s, b, j, 1, h, d)];
                        dot += x;
                        abs_dot += fabs(x);
                    }
                    p[j] = dot * scale;
                    r->S[pair_at(s, b, h, i, j)] = abs_dot * scale;
                    if (p[j] > m) m = p[j];
                }
                for (int j = 0; j <= i; j++) sum += exp(p[j] - m);
                r->lse[row_at(s, b, h, i)] = m + log(sum);
                for (int j = 0; j <= i; j++) p[j] = exp(p[j] - m) / sum;
                for (int d = 0; d < hs; d++) {
                    double o = 0.0;
                    for (int j = 0; j <= i; j++) o += p[j] * qkv[qkv_at(s, b, j, 2, h, d)];
                    r->out[out_at(s, b, i, h, d)] = o;
                }
            }
}

static void reference_backward(Reference *r, const float *dout, const float *qkv, Shape s) {
    int hs = s.C / s.NH;
    double scale = 1.0 / sqrt((double)hs);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++)
            for (int i = 0; i < s.T; i++) {
                double D = 0.0;
                double *dp = r->ds + pair_at(s, b, h, i, 0), *p = r->p + pair_at(s, b, h, i, 0);
                for (int j = 0; j <= i; j++) {
                    double dot = 0.0, abs_dot = 0.0;
                    for (int d = 0; d < hs; d++) {
                        double x = (double)dout[out_at(s, b, i, h, d)] * qkv[qkv_at(s, b, j, 2, h, d)];
                        dot += x;
                        abs_dot += fabs(x);
                    }
                    dp[j] = dot;
                    r->DP[pair_at(s, b, h, i, j)] = abs_dot;
                    D += p[j] * dot;
                }
                for (int j = 0; j <= i; j++) {
                    dp[j] = p[j] * (dp[j] - D) * scale;  // now ds
                    for (int d = 0; d < hs; d++) {
                        r->dqkv[qkv_at(s, b, j, 2, h, d)] += p[j] * dout[out_at(s, b, i, h, d)];
                        r->dqkv[qkv_at(s, b, i, 0, h, d)] += dp[j] * qkv[qkv_at(s, b, j, 1, h, d)];
                        r->dqkv[qkv_at(s, b, j, 1, h, d)] += dp[j] * qkv[qkv_at(s, b, i, 0, h, d)];
                    }
                }
            }
}

// Relative fp32 error of p_ij (see the header).
static double p_error(const Reference *r, Shape s, int b, int h, int i, int j) {
    return 0x1p-18 * (r->S[pair_at(s, b, h, i, j)] + fabs(r->lse[row_at(s, b, h, i)])) + 0x1p-20;
}

// The bound on |cast(p_ij) - p_ij| as the forward forms it.
static double p_cast_error(const Reference *r, Shape s, const Format *f, int b, int h, int i, int j) {
    double p = r->p[pair_at(s, b, h, i, j)];
    return (f->u + p_error(r, s, b, h, i, j) + 0x1p-17) * p + f->a;
}

// Bounds for out (B,T,C), lse (B,NH,T) and dqkv (B,T,3C).
typedef struct {
    double *out, *lse, *dqkv;
} Bounds;

static Bounds bounds_new(const Reference *r, const float *dout, const float *qkv, Shape s, const Format *f) {
    int hs = s.C / s.NH;
    double scale = 1.0 / sqrt((double)hs);
    size_t n = (size_t)s.B * s.T * s.C;
    Bounds e = {calloc(n, 8), calloc((size_t)s.B * s.NH * s.T, 8), calloc(3 * n, 8)};
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++)
            for (int i = 0; i < s.T; i++) {
                double max_S = 0.0, ED = 0.0, PDP = 0.0;  // D's error bound, sum_j p |dp|
                for (int j = 0; j <= i; j++) {
                    double S = r->S[pair_at(s, b, h, i, j)], pc = p_cast_error(r, s, f, b, h, i, j);
                    if (S > max_S) max_S = S;
                    ED += pc * r->DP[pair_at(s, b, h, i, j)];
                    PDP += r->p[pair_at(s, b, h, i, j)] * r->DP[pair_at(s, b, h, i, j)];
                    for (int d = 0; d < hs; d++) {
                        e.out[out_at(s, b, i, h, d)] += 2 * pc * fabs(qkv[qkv_at(s, b, j, 2, h, d)]);
                        e.dqkv[qkv_at(s, b, j, 2, h, d)] += 2 * pc * fabs(dout[out_at(s, b, i, h, d)]);
                    }
                }
                e.lse[row_at(s, b, h, i)] = 0x1p-17 * (max_S + fabs(r->lse[row_at(s, b, h, i)]) + 1);
                ED += 0x1p-18 * PDP;
                for (int j = 0; j <= i; j++) {
                    double p = r->p[pair_at(s, b, h, i, j)], ds = fabs(r->ds[pair_at(s, b, h, i, j)]);
                    double DP = r->DP[pair_at(s, b, h, i, j)];
                    // ds = p (dp - D) scale: p's error, dp's, D's, the products' roundings, then the cast.
                    double ds_error = p_error(r, s, b, h, i, j) * ds + scale * p * (0x1p-18 * DP + ED) +
                                      0x1p-22 * scale * p * (DP + PDP) + f->u * ds + f->a;
                    for (int d = 0; d < hs; d++) {
                        e.dqkv[qkv_at(s, b, i, 0, h, d)] += 2 * (ds_error + 0x1p-17 * ds) * fabs(qkv[qkv_at(s, b, j, 1, h, d)]);
                        e.dqkv[qkv_at(s, b, j, 1, h, d)] += 2 * (ds_error + 0x1p-17 * ds) * fabs(qkv[qkv_at(s, b, i, 0, h, d)]);
                    }
                }
            }
    for (size_t k = 0; k < n; k++) e.out[k] += 1e-30;
    for (size_t k = 0; k < 3 * n; k++) e.dqkv[k] += 1e-30;
    return e;
}

static void bounds_free(Bounds *e) { free(e->out); free(e->lse); free(e->dqkv); }

// Every |got - want| <= factor * bound; returns the worst ratio of error to bound.
static double check_within(const char *what, const char *label, const float *got, const double *want,
                           const double *bound, double factor, size_t n) {
    double worst = 0.0;
    size_t worst_at = 0;
    for (size_t k = 0; k < n; k++) {
        double ratio = fabs((double)got[k] - want[k]) / (factor * bound[k]);
        if (!(ratio <= worst)) {
            worst = ratio;
            worst_at = k;
        }
    }
    CHECK(worst <= 1.0, "%s %s: element %zu is %g, want %g within %g (%.3g of the bound)", label, what, worst_at,
          got[worst_at], want[worst_at], factor * bound[worst_at], worst);
    return worst;
}

static double *to_double(const float *x, size_t n) {
    double *y = malloc(n * 8);
    for (size_t k = 0; k < n; k++) y[k] = x[k];
    return y;
}

static double worst_ratio = 0.0;  // over all cases, printed: how much room the bounds leave

static void note(double ratio) {
    if (ratio > worst_ratio) worst_ratio = ratio;
}

static void check_case(Shape s, const Format *f) {
    size_t n = (size_t)s.B * s.T * s.C, rows = (size_t)s.B * s.NH * s.T;
    char label[128];
    snprintf(label, sizeof label, "%s B=%d T=%d C=%d NH=%d", f->name, s.B, s.T, s.C, s.NH);
    float *qkv = random_floats(3 * n, -1.5f, 1.5f), *dout = random_floats(n, -1.0f, 1.0f);
    cast_all(qkv, 3 * n, &f->cast);  // the caller passes the operands cast
    cast_all(dout, n, &f->cast);
    float *out = malloc(n * 4), *lse = malloc(rows * 4), *dqkv = malloc(3 * n * 4);
    memset(dqkv, 0xff, 3 * n * 4);  // NaN: every element must be overwritten
    attention_tiled_forward(out, lse, qkv, s.B, s.T, s.C, s.NH, &f->cast);
    attention_tiled_backward(dqkv, dout, qkv, out, lse, s.B, s.T, s.C, s.NH, &f->cast);

    Reference r = reference_new(s);
    reference_forward(&r, qkv, s);
    reference_backward(&r, dout, qkv, s);
    Bounds e = bounds_new(&r, dout, qkv, s, f);
    note(check_within("out vs float64", label, out, r.out, e.out, 1, n));
    note(check_within("lse vs float64", label, lse, r.lse, e.lse, 1, rows));
    note(check_within("dqkv vs float64", label, dqkv, r.dqkv, e.dqkv, 1, 3 * n));

    // attention.c on the same operands: the same attention up to the rounding both bounds cover.
    float *m_out = malloc(n * 4), *att = malloc(rows * s.T * 4), *m_dqkv = calloc(3 * n, 4);
    attention_forward(m_out, att, qkv, s.B, s.T, s.C, s.NH, &f->cast);
    attention_backward(m_dqkv, dout, qkv, att, s.B, s.T, s.C, s.NH, &f->cast);
    double *m_out64 = to_double(m_out, n), *m_dqkv64 = to_double(m_dqkv, 3 * n);
    check_within("out vs materialized", label, out, m_out64, e.out, 2, n);
    check_within("dqkv vs materialized", label, dqkv, m_dqkv64, e.dqkv, 2, 3 * n);

    free(m_out); free(att); free(m_dqkv); free(m_out64); free(m_dqkv64);
    bounds_free(&e);
    reference_free(&r);
    free(qkv); free(dout); free(out); free(lse); free(dqkv);
}

// The float64 loss sum_{i,d} w_id out_id of the float64 attention, for finite differences.
static double reference_loss(const float *qkv, const float *w, Shape s) {
    Reference r = reference_new(s);
    reference_forward(&r, qkv, s);
    double loss = 0.0;
    for (size_t k = 0; k < (size_t)s.B * s.T * s.C; k++) loss += w[k] * r.out[k];
    reference_free(&r);
    return loss;
}

// fp32 tiled gradients against central differences of the float64 loss (step 2^-10: truncation h^2 ~ 1e-6
// of the gradient's scale, rounding of the float64 loss negligible); each tensor's error norm relative to its
// gradient norm must be below 1e-4 (fp32 rounding is ~1e-6; a wrong term is ~1e-1).
static void check_finite_differences(void) {
    Shape s = {1, 9, 8, 2};
    size_t n = (size_t)s.B * s.T * s.C;
    OperandCast fp32 = {.format = MATMUL_FP32};
    float *qkv = random_floats(3 * n, -1.5f, 1.5f), *w = random_floats(n, -1.0f, 1.0f);
    float *out = malloc(n * 4), *lse = malloc((size_t)s.B * s.NH * s.T * 4), *dqkv = malloc(3 * n * 4);
    attention_tiled_forward(out, lse, qkv, s.B, s.T, s.C, s.NH, &fp32);
    attention_tiled_backward(dqkv, w, qkv, out, lse, s.B, s.T, s.C, s.NH, &fp32);
    double err[3] = {0}, norm[3] = {0};
    for (size_t k = 0; k < 3 * n; k++) {
        float keep = qkv[k];
        float h = 0x1p-10f;
        qkv[k] = keep + h;
        double up = reference_loss(qkv, w, s);
        qkv[k] = keep - h;
        double down = reference_loss(qkv, w, s);
        qkv[k] = keep;
        double fd = (up - down) / (2.0 * h);
        int part = (int)(k % (3 * (size_t)s.C) / (size_t)s.C);
        err[part] += (dqkv[k] - fd) * (dqkv[k] - fd);
        norm[part] += fd * fd;
    }
    const char *names[3] = {"dq", "dk", "dv"};
    for (int part = 0; part < 3; part++)
        CHECK(sqrt(err[part] / norm[part]) < 1e-4, "%s vs finite differences: relative error %g", names[part],
              sqrt(err[part] / norm[part]));
    free(qkv); free(w); free(out); free(lse); free(dqkv);
}

// Two runs, at 1 and at 5 threads, give the same bits; the decoding row is the forward's last row bit for bit;
// and out recomputed from the stored lse as the backward does (exp(score - lse), in the reference's order)
// is the forward's out bit for bit, so the backward sees exactly the forward's probabilities.
static void check_determinism_and_recompute(const Format *f) {
    Shape s = {2, 130, 48, 3};
    int hs = s.C / s.NH;
    size_t n = (size_t)s.B * s.T * s.C, rows = (size_t)s.B * s.NH * s.T;
    float *qkv = random_floats(3 * n, -1.5f, 1.5f), *dout = random_floats(n, -1.0f, 1.0f);
    cast_all(qkv, 3 * n, &f->cast);
    cast_all(dout, n, &f->cast);
    float *out[2], *lse[2], *dqkv[2];
    int threads[2] = {1, 5};
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(threads[run]);
        out[run] = malloc(n * 4); lse[run] = malloc(rows * 4); dqkv[run] = malloc(3 * n * 4);
        attention_tiled_forward(out[run], lse[run], qkv, s.B, s.T, s.C, s.NH, &f->cast);
        attention_tiled_backward(dqkv[run], dout, qkv, out[run], lse[run], s.B, s.T, s.C, s.NH, &f->cast);
    }
    CHECK(memcmp(out[0], out[1], n * 4) == 0 && memcmp(lse[0], lse[1], rows * 4) == 0 &&
              memcmp(dqkv[0], dqkv[1], 3 * n * 4) == 0, "%s: 1 and 5 threads give different bits", f->name);

    float *last = malloc((size_t)s.C * 4);
    attention_tiled_forward_last(last, qkv + (size_t)s.T * 3 * s.C, s.T, s.C, s.NH, &f->cast);  // sequence 1
    CHECK(memcmp(last, out[0] + ((size_t)s.T + s.T - 1) * s.C, (size_t)s.C * 4) == 0,
          "%s: the decoding row differs from the forward's last row", f->name);

    int differing = 0;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++)
            for (int i = 0; i < s.T; i++) {
                float o[64] = {0};
                for (int j = 0; j <= i; j++) {
                    float dot = 0.0f;
                    for (int d = 0; d < hs; d++) dot += qkv[qkv_at(s, b, i, 0, h, d)] * qkv[qkv_at(s, b, j, 1, h, d)];
                    float p = quantize_operand_value(expf(dot * scale - lse[0][row_at(s, b, h, i)]), &f->cast);
                    for (int d = 0; d < hs; d++) o[d] += p * qkv[qkv_at(s, b, j, 2, h, d)];
                }
                differing += memcmp(o, out[0] + out_at(s, b, i, h, 0), (size_t)hs * 4) != 0;
            }
    CHECK(differing == 0, "%s: %d rows of out are not reproduced from the stored lse", f->name, differing);
    omp_set_num_threads(omp_get_num_procs());
    for (int run = 0; run < 2; run++) { free(out[run]); free(lse[run]); free(dqkv[run]); }
    free(last); free(qkv); free(dout);
}

static void fused_fp8(void *arg) {
    (void)arg;
    OperandCast fp8 = {.format = MATMUL_FP8, .grid = exmy_e4m3(), .scale = 1.0f};
    float qkv[3 * 8] = {0}, out[8], lse[2];
    attention_tiled_forward(out, lse, qkv, 1, 1, 8, 2, &fp8);
}

int main(void) {
    MatmulPrecision e4m3 = {.format = MATMUL_EXMY, .exp_bits = 4, .man_bits = 3, .rounding = ROUND_NEAREST_EVEN};
    MatmulPrecision bf16 = {.format = MATMUL_BF16}, fp32 = {.format = MATMUL_FP32};
    Format formats[3] = {{"fp32", operand_cast_for(&fp32), 0.0, 0.0},
                         {"bf16", operand_cast_for(&bf16), 0x1p-8, 0.0},
                         {"e4m3", operand_cast_for(&e4m3), 0x1p-4, 0x1p-10}};
    int lengths[] = {1, 7, 63, 64, 65, 130};
    for (int f = 0; f < 3; f++)
        for (int t = 0; t < 6; t++) {
            check_case((Shape){2, lengths[t], 128, 2}, &formats[f]);  // head size 64
            check_case((Shape){2, lengths[t], 48, 3}, &formats[f]);   // head size 16
        }
    printf("worst error over all cases: %.3g of its bound\n", worst_ratio);
    check_finite_differences();
    for (int f = 0; f < 3; f++) check_determinism_and_recompute(&formats[f]);
    ChildResult fp8 = run_in_child(fused_fp8, NULL);
    CHECK(fp8.exit_status == 1 && strstr(fp8.message, "attention_impl = materialized"), "fp8: %s", fp8.message);
    return test_summary("test_attention_tiled");
}
