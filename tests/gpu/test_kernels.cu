// Every kernel of kernels/ against its CPU op (src/cpu/) on the same random inputs (fixed seeds).
// Ops whose every output is one fixed sequence of fp32 operations on both sides (encoder, permutations,
// residual adds, operand casts, bf16 casts, amax, the classifier backward) must agree bit for bit. Ops whose
// sums the GPU reorders (warp and block reductions, two-phase column sums) or that call a math function
// (expf, logf, tanhf: CUDA's and glibc's may differ in the last bit) agree to rounding: each check says
// its tolerance and why that is enough. One line per check; the exit status is non-zero on any failure.
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "../testing.h"
#include "model.h"
#include "numerics.h"
#include "operand_cast.h"
#include "policy.h"
extern "C" {
#include "cpu/ops.h"  // C declarations without C++ guards
}

#include "../../kernels/attention.cuh"
#include "../../kernels/classifier.cuh"
#include "../../kernels/column_sum.cuh"
#include "../../kernels/encoder.cuh"
#include "../../kernels/gelu.cuh"
#include "../../kernels/layernorm.cuh"
#include "../../kernels/quantize.cuh"
#include "../../kernels/residual.cuh"

typedef std::vector<float> Floats;

static uint64_t rng_state = 0x6b8b4567327b23c6ull;
static cudaStream_t stream;

// ---------------------------------------------------------------------------------------------------------
// Inputs and transfers

static float uniform(float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(splitmix64_next(&rng_state) >> 40) / 16777216.0);
}

static Floats random_floats(size_t n, float lo, float hi) {
    Floats x(n);
    for (size_t i = 0; i < n; i++) x[i] = uniform(lo, hi);
    return x;
}

// Mostly ordinary magnitudes, with bf16 ties, subnormals, specials (NaN payloads too) and raw bit patterns:
// the inputs of the cast checks.
static float random_cast_input(void) {
    static const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 448.0f, 464.0f, 57344.0f, 61440.0f,
                                     3.38953139e38f, 1e-40f, -1e-45f, 1.0f, -1.5f};
    uint64_t r = splitmix64_next(&rng_state);
    uint32_t bits = (uint32_t)(r >> 32);
    switch (r % 10) {
    case 0: return float_of_bits(bits);
    case 1: return float_of_bits((bits & 0xffff0000u) | 0x8000u);  // a bf16 tie
    case 2: return float_of_bits(bits & 0x807fffffu);              // subnormal
    case 3: return specials[(r >> 8) % (sizeof specials / sizeof specials[0])];
    default: return float_of_bits((bits & 0x807fffffu) | (uint32_t)(127 - 30 + (int)((r >> 8) % 61)) << 23);
    }
}

static float *to_device(const Floats &h) {
    float *d = (float *)cuda_malloc_checked(h.size() * sizeof(float) + 4, "test buffer");
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

static int *to_device_ints(const std::vector<int> &h) {
    int *d = (int *)cuda_malloc_checked(h.size() * sizeof(int) + 4, "test buffer");
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(int), cudaMemcpyHostToDevice));
    return d;
}

static float *device_floats(size_t n) { return (float *)cuda_malloc_checked(n * sizeof(float) + 4, "test buffer"); }

static Floats to_host(const float *d, size_t n) {
    Floats h(n);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

static void upload(float *d, const Floats &h) {
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
}

// ---------------------------------------------------------------------------------------------------------
// Comparisons: each prints one line and records one CHECK.

static void check_bits(const char *name, const Floats &got, const Floats &want) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < want.size(); i++)
        if (bits_of_float(got[i]) != bits_of_float(want[i]) && bad++ == 0) first = i;
    printf("%-56s %8zu elements, %zu differ in bits\n", name, want.size(), bad);
    CHECK(bad == 0, "%s: element %zu is %a, the CPU's %a", name, first, got[first], want[first]);
}

// Bits equal, or NaN on both sides (the GPU's arithmetic returns the canonical NaN where the CPU may keep
// the operand's payload).
static void check_bits_or_both_nan(const char *name, const Floats &got, const Floats &want) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < want.size(); i++) {
        int same = bits_of_float(got[i]) == bits_of_float(want[i]) || (isnan(got[i]) && isnan(want[i]));
        if (!same && bad++ == 0) first = i;
    }
    printf("%-56s %8zu elements, %zu differ in bits\n", name, want.size(), bad);
    CHECK(bad == 0, "%s: element %zu is %a, the CPU's %a", name, first, got[first], want[first]);
}

// Equal as numbers (0 == -0): where the CPU adds a result to a zeroed buffer (0 + -0 = +0) and the GPU
// writes the result itself.
static void check_values(const char *name, const Floats &got, const Floats &want) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < want.size(); i++) {
        int same = got[i] == want[i] || (isnan(got[i]) && isnan(want[i]));
        if (!same && bad++ == 0) first = i;
    }
    printf("%-56s %8zu elements, %zu differ in value\n", name, want.size(), bad);
    CHECK(bad == 0, "%s: element %zu is %a, the CPU's %a", name, first, got[first], want[first]);
}

// |got - want| <= tol * scale[i] for every element, with scale[i] given (NULL: max(1, |want|)); a NaN on
// either side must be a NaN on both.
static void check_close_scaled(const char *name, const Floats &got, const Floats &want, const Floats *scale,
                               double tol) {
    size_t bad = 0, first = 0;
    double worst = 0.0;
    for (size_t i = 0; i < want.size(); i++) {
        double s = scale ? (*scale)[i] : fmax(1.0, fabs((double)want[i]));
        double err = fabs((double)got[i] - (double)want[i]) / s;
        int ok = isnan(want[i]) || isnan(got[i]) ? isnan(want[i]) && isnan(got[i]) : err <= tol;
        if (ok && err > worst) worst = err;
        if (!ok && bad++ == 0) first = i;
    }
    printf("%-56s %8zu elements, max error %.2e (tolerance %.0e), %zu outside\n", name, want.size(), worst, tol, bad);
    CHECK(bad == 0, "%s: element %zu is %.9g, the CPU's %.9g", name, first, got[first], want[first]);
}

static void check_close(const char *name, const Floats &got, const Floats &want, double tol) {
    check_close_scaled(name, got, want, NULL, tol);
}

// Relative: |got - want| <= tol * |want| (for positive quantities of any magnitude, like probabilities).
static void check_relative(const char *name, const Floats &got, const Floats &want, double tol) {
    Floats scale(want.size());
    for (size_t i = 0; i < want.size(); i++) scale[i] = fabsf(want[i]) > 1e-30f ? fabsf(want[i]) : 1e-30f;
    check_close_scaled(name, got, want, &scale, tol);
}

// ---------------------------------------------------------------------------------------------------------
// encoder: the forward is one addition per element; the backward adds each dwte and dwpe row's dout rows
// in (b, t) order as the CPU does, so both must be bit-identical.

static void test_encoder(void) {
    const int B = 3, T = 37, C = 72, Vp = 80, maxT = 40, N = B * T;
    std::vector<int> tokens(N);
    for (int i = 0; i < N; i++) tokens[i] = (int)(splitmix64_next(&rng_state) % 9);  // many repeats
    tokens[17] = Vp - 1;                                                                 // one single
    Floats wte = random_floats((size_t)Vp * C, -1, 1), wpe = random_floats((size_t)maxT * C, -1, 1);
    Floats dout = random_floats((size_t)N * C, -1, 1);
    Floats dwte = random_floats((size_t)Vp * C, -1, 1), dwpe = random_floats((size_t)maxT * C, -1, 1);

    int *d_tokens = to_device_ints(tokens);
    float *d_wte = to_device(wte), *d_wpe = to_device(wpe), *d_out = device_floats((size_t)N * C);
    float *d_dout = to_device(dout), *d_dwte = to_device(dwte), *d_dwpe = to_device(dwpe);

    Floats out((size_t)N * C);
    encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    encoder_forward_gpu(d_out, d_tokens, d_wte, d_wpe, B, T, C, stream);
    check_bits("encoder_forward (3x37x72) bits", to_host(d_out, out.size()), out);

    EncoderIndex ix;
    encoder_index_alloc(&ix, N);
    std::vector<int> scratch(3 * N + 1 + Vp);
    encoder_index_build(&ix, tokens.data(), N, Vp, scratch.data(), stream);
    int distinct = 0;
    std::vector<int> seen(Vp, 0);
    for (int i = 0; i < N; i++) distinct += seen[tokens[i]]++ == 0;
    printf("%-56s %d buckets, %d distinct tokens\n", "encoder_index_build buckets", ix.num_buckets, distinct);
    CHECK(ix.num_buckets == distinct, "%d buckets for %d distinct tokens", ix.num_buckets, distinct);

    encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
    encoder_backward_gpu(d_dwte, d_dwpe, d_dout, &ix, B, T, C, stream);
    check_bits("encoder_backward dwte (repeated tokens) bits", to_host(d_dwte, dwte.size()), dwte);
    check_bits("encoder_backward dwpe bits", to_host(d_dwpe, dwpe.size()), dwpe);

    // A second batch through the same index: rebuilt, and added on top of the first.
    for (int i = 0; i < N; i++) tokens[i] = (int)(splitmix64_next(&rng_state) % Vp);
    dout = random_floats((size_t)N * C, -1, 1);
    upload(d_dout, dout);
    encoder_index_build(&ix, tokens.data(), N, Vp, scratch.data(), stream);
    encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
    encoder_backward_gpu(d_dwte, d_dwpe, d_dout, &ix, B, T, C, stream);
    check_bits("encoder_backward second batch dwte bits", to_host(d_dwte, dwte.size()), dwte);
    check_bits("encoder_backward second batch dwpe bits", to_host(d_dwpe, dwpe.size()), dwpe);

    encoder_index_free(&ix);
    cudaFree(d_tokens);
    cudaFree(d_wte);
    cudaFree(d_wpe);
    cudaFree(d_out);
    cudaFree(d_dout);
    cudaFree(d_dwte);
    cudaFree(d_dwpe);
}

// ---------------------------------------------------------------------------------------------------------
// layernorm: the per-element expressions are the CPU's, the row sums (C terms) are reordered across warp
// lanes. A reordered fp32 sum of C = 770 terms of size O(1) differs by a few 1e-7 relative to its
// magnitude, so means, rstds, outputs and dinp agree within 1e-5 * max(1, |ref|) (the max: an output near
// 0 is a difference of O(1) numbers, whose absolute error is what is bounded). dweight and dbias are
// column sums over N rows in another order (partials of 64 rows): their error is bounded relative to the
// sum of the magnitudes of the terms, so they are compared within 1e-5 * max(1, |initial| + sum |terms|);
// a wrong or missing row would be off by a whole term, far more.

static void test_layernorm_shape(int N, int C) {
    char name[128];
    Floats inp = random_floats((size_t)N * C, -1, 1), weight = random_floats(C, -1.5f, 1.5f);
    Floats bias = random_floats(C, -0.5f, 0.5f);
    for (int n = 0; n < N; n++)  // rows with their own offset and spread, as in a residual stream
        for (int c = 0; c < C; c++) inp[(size_t)n * C + c] = inp[(size_t)n * C + c] * (1.0f + n % 5) + 0.1f * (n % 7);
    Floats out((size_t)N * C), mean(N), rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(), N, C);

    float *d_inp = to_device(inp), *d_weight = to_device(weight), *d_bias = to_device(bias);
    float *d_out = device_floats(out.size()), *d_mean = device_floats(N), *d_rstd = device_floats(N);
    layernorm_forward_gpu(d_out, d_mean, d_rstd, d_inp, d_weight, d_bias, N, C, stream);
    snprintf(name, sizeof name, "layernorm_forward (N=%d C=%d) out", N, C);
    check_close(name, to_host(d_out, out.size()), out, 1e-5);
    snprintf(name, sizeof name, "layernorm_forward (N=%d C=%d) mean", N, C);
    check_close(name, to_host(d_mean, N), mean, 1e-5);
    snprintf(name, sizeof name, "layernorm_forward (N=%d C=%d) rstd", N, C);
    check_close(name, to_host(d_rstd, N), rstd, 1e-5);

    // Backward on the CPU's saved statistics, so that only the backward is compared.
    upload(d_mean, mean);
    upload(d_rstd, rstd);
    Floats dout = random_floats((size_t)N * C, -1, 1), dinp = random_floats((size_t)N * C, -1, 1);
    Floats dweight = random_floats(C, -1, 1), dbias = random_floats(C, -1, 1);
    Floats w_scale(C), b_scale(C);
    for (int c = 0; c < C; c++) {
        double sw = fabs(dweight[c]), sb = fabs(dbias[c]);
        for (int n = 0; n < N; n++) {
            size_t i = (size_t)n * C + c;
            sw += fabs(dout[i] * ((inp[i] - mean[n]) * rstd[n]));
            sb += fabs(dout[i]);
        }
        w_scale[c] = (float)fmax(1.0, sw);
        b_scale[c] = (float)fmax(1.0, sb);
    }
    float *d_dout = to_device(dout), *d_dinp = to_device(dinp), *d_dweight = to_device(dweight);
    float *d_dbias = to_device(dbias);
    float *d_scratch = device_floats(layernorm_backward_scratch_floats(N, C));
    layernorm_backward(dinp.data(), dweight.data(), dbias.data(), dout.data(), inp.data(), weight.data(), mean.data(),
                       rstd.data(), N, C);
    layernorm_backward_gpu(d_dinp, d_dweight, d_dbias, d_dout, d_inp, d_weight, d_mean, d_rstd, N, C, d_scratch, stream);
    Floats got_dinp = to_host(d_dinp, dinp.size()), got_dweight = to_host(d_dweight, C);
    Floats got_dbias = to_host(d_dbias, C);
    snprintf(name, sizeof name, "layernorm_backward (N=%d C=%d) dinp", N, C);
    check_close(name, got_dinp, dinp, 1e-5);
    snprintf(name, sizeof name, "layernorm_backward (N=%d C=%d) dweight", N, C);
    check_close_scaled(name, got_dweight, dweight, &w_scale, 1e-5);
    snprintf(name, sizeof name, "layernorm_backward (N=%d C=%d) dbias", N, C);
    check_close_scaled(name, got_dbias, dbias, &b_scale, 1e-5);

    // Determinism: the same inputs again give the same bits (from the GPU's own first result).
    Floats dinp2 = random_floats((size_t)N * C, -1, 1), dw2 = random_floats(C, -1, 1), db2 = random_floats(C, -1, 1);
    Floats results[2][3];
    for (int run = 0; run < 2; run++) {
        upload(d_dinp, dinp2);
        upload(d_dweight, dw2);
        upload(d_dbias, db2);
        layernorm_backward_gpu(d_dinp, d_dweight, d_dbias, d_dout, d_inp, d_weight, d_mean, d_rstd, N, C, d_scratch,
                               stream);
        results[run][0] = to_host(d_dinp, dinp.size());
        results[run][1] = to_host(d_dweight, C);
        results[run][2] = to_host(d_dbias, C);
    }
    Floats first(results[0][0]), second(results[1][0]);
    for (int k = 1; k < 3; k++) {
        first.insert(first.end(), results[0][k].begin(), results[0][k].end());
        second.insert(second.end(), results[1][k].begin(), results[1][k].end());
    }
    snprintf(name, sizeof name, "layernorm_backward (N=%d C=%d) run twice, same bits", N, C);
    check_bits(name, second, first);

    cudaFree(d_inp);
    cudaFree(d_weight);
    cudaFree(d_bias);
    cudaFree(d_out);
    cudaFree(d_mean);
    cudaFree(d_rstd);
    cudaFree(d_dout);
    cudaFree(d_dinp);
    cudaFree(d_dweight);
    cudaFree(d_dbias);
    cudaFree(d_scratch);
}

static void test_layernorm(void) {
    test_layernorm_shape(2 * 37, 72);  // C not a multiple of 32, N not a multiple of the 64-row block
    test_layernorm_shape(333, 770);    // 6 row blocks, C over the 256 columns of a block
}

// ---------------------------------------------------------------------------------------------------------
// column sums: with random floats, reordered sums compared as dweight above (1e-5 of the sum of the
// magnitudes). With dyadic inputs (multiples of 2^-8 below 1 in magnitude, so every partial sum is exact
// in fp32) the sum is exact in any order and must equal the CPU's bit for bit: that pins the indexing.
// add_bias is one addition per element: bit-identical.

static void test_column_sums(void) {
    const int N = 333, C = 770;
    Floats src = random_floats((size_t)N * C, -1, 1), dst = random_floats(C, -1, 1), scale(C);
    for (int c = 0; c < C; c++) {
        double s = fabs(dst[c]);
        for (int n = 0; n < N; n++) s += fabs(src[(size_t)n * C + c]);
        scale[c] = (float)fmax(1.0, s);
    }
    float *d_src = to_device(src), *d_dst = to_device(dst);
    float *d_scratch = device_floats(column_sum_scratch_floats(N, C));
    sum_rows_add(dst.data(), src.data(), N, C);
    column_sums_add_gpu(d_dst, d_src, N, C, d_scratch, stream);
    check_close_scaled("column_sums_add (N=333 C=770) random", to_host(d_dst, C), dst, &scale, 1e-5);

    for (size_t i = 0; i < src.size(); i++) src[i] = (float)((int)(splitmix64_next(&rng_state) % 511) - 255) / 256.0f;
    for (int c = 0; c < C; c++) dst[c] = (float)((int)(splitmix64_next(&rng_state) % 511) - 255) / 256.0f;
    upload(d_src, src);
    upload(d_dst, dst);
    sum_rows_add(dst.data(), src.data(), N, C);
    column_sums_add_gpu(d_dst, d_src, N, C, d_scratch, stream);
    check_bits("column_sums_add (N=333 C=770) dyadic, exact bits", to_host(d_dst, C), dst);

    const int rows = 74, OC = 72;
    Floats out = random_floats((size_t)rows * OC, -1, 1), bias = random_floats(OC, -1, 1);
    float *d_out = to_device(out), *d_bias = to_device(bias);
    for (int n = 0; n < rows; n++)
        for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] += bias[o];
    add_bias_gpu(d_out, d_bias, rows, OC, stream);
    check_bits("add_bias (74x72) bits", to_host(d_out, out.size()), out);

    cudaFree(d_src);
    cudaFree(d_dst);
    cudaFree(d_scratch);
    cudaFree(d_out);
    cudaFree(d_bias);
}

// ---------------------------------------------------------------------------------------------------------
// gelu: the CPU's expressions term for term; only tanhf differs (CUDA's is within 2 ulp, glibc's within
// 1-2 ulp). An ulp of tanh near +-1 moves gelu by 0.5 |x| ulp(1) and its derivative by about
// 0.5 |x| du/dx * 2 ulp(1) (< 1e-5 for |x| <= 8), so 1e-5 * max(1, |ref|) holds; how many elements are
// bit-identical is printed as well.

static void test_gelu(void) {
    const size_t n = 100003;
    Floats inp = random_floats(n, -8, 8), dout = random_floats(n, -1, 1), dinp = random_floats(n, -1, 1);
    Floats out(n);
    float *d_inp = to_device(inp), *d_dout = to_device(dout), *d_dinp = to_device(dinp), *d_out = device_floats(n);
    gelu_forward(out.data(), inp.data(), n);
    gelu_backward(dinp.data(), dout.data(), inp.data(), n);
    gelu_forward_gpu(d_out, d_inp, n, stream);
    gelu_backward_gpu(d_dinp, d_dout, d_inp, n, stream);
    Floats got_out = to_host(d_out, n), got_dinp = to_host(d_dinp, n);
    size_t same_out = 0, same_dinp = 0;
    for (size_t i = 0; i < n; i++) {
        same_out += bits_of_float(got_out[i]) == bits_of_float(out[i]);
        same_dinp += bits_of_float(got_dinp[i]) == bits_of_float(dinp[i]);
    }
    printf("%-56s %zu of %zu forward, %zu of %zu backward\n", "gelu bit-identical elements (information)", same_out, n,
           same_dinp, n);
    check_close("gelu_forward (n=100003)", got_out, out, 1e-5);
    check_close("gelu_backward (n=100003)", got_dinp, dinp, 1e-5);
    cudaFree(d_inp);
    cudaFree(d_dout);
    cudaFree(d_dinp);
    cudaFree(d_out);
}

// ---------------------------------------------------------------------------------------------------------
// residual: one addition per element, bit-identical.

static void test_residual(void) {
    const size_t n = 100003;
    Floats a = random_floats(n, -1, 1), b = random_floats(n, -1, 1), out(n);
    float *d_a = to_device(a), *d_b = to_device(b), *d_out = device_floats(n);
    residual_forward(out.data(), a.data(), b.data(), n);
    residual_forward_gpu(d_out, d_a, d_b, n, stream);
    check_bits("residual_forward (n=100003) bits", to_host(d_out, n), out);
    for (size_t i = 0; i < n; i++) a[i] += b[i];
    add_inplace_gpu(d_a, d_b, n, stream);
    check_bits("add_inplace (n=100003) bits", to_host(d_a, n), a);
    cudaFree(d_a);
    cudaFree(d_b);
    cudaFree(d_out);
}

// ---------------------------------------------------------------------------------------------------------
// classifier: the row max is exact; the sum of V exponentials is a block reduction on the GPU and a
// sequential loop on the CPU, and expf/logf may differ by an ulp or two. For V = 65 both sums are accurate
// to ~1e-7, so probabilities agree within 1e-5 relative and losses within 1e-5 * max(1, |ref|). For
// V = 50257 the CPU's own sequential fp32 sum drifts by ~sqrt(V/3) * 2^-24 ~ 5e-6 relative (one sigma), so
// the comparison with the CPU must allow 1e-4 there; the GPU is also held to 1e-5 against an fp64 softmax.
// Padded logits are NaN: reading one would poison the row. The backward is the CPU's expression per
// element: equal values (the CPU adds into zeros, so -0 becomes +0; the GPU overwrites).

// fp64 softmax of one row's first V logits.
static void softmax_fp64(Floats &probs, const float *z, int V, int Vp) {
    double m = -INFINITY, sum = 0.0;
    for (int v = 0; v < V; v++) m = fmax(m, (double)z[v]);
    for (int v = 0; v < V; v++) sum += exp((double)z[v] - m);
    for (int v = 0; v < V; v++) probs.push_back((float)(exp((double)z[v] - m) / sum));
    for (int v = V; v < Vp; v++) probs.push_back(0.0f);
}

static void test_classifier_shape(int N, int V, int Vp, double tol) {
    char name[128];
    Floats logits = random_floats((size_t)N * Vp, -4, 4);
    for (int n = 0; n < N; n++)
        for (int v = V; v < Vp; v++) logits[(size_t)n * Vp + v] = NAN;
    std::vector<int> targets(N);
    for (int n = 0; n < N; n++) targets[n] = (int)(splitmix64_next(&rng_state) % V);
    targets[0] = V - 1;
    Floats probs((size_t)N * Vp), losses(N);
    classifier_forward(probs.data(), losses.data(), logits.data(), targets.data(), N, V, Vp);

    float *d_logits = to_device(logits), *d_probs = device_floats(probs.size()), *d_losses = device_floats(N);
    int *d_targets = to_device_ints(targets);
    classifier_forward_gpu(d_probs, d_losses, d_logits, d_targets, N, V, Vp, stream);
    Floats got_probs = to_host(d_probs, probs.size());
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d Vp=%d) probs", N, V, Vp);
    check_relative(name, got_probs, probs, tol);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d Vp=%d) losses", N, V, Vp);
    check_close(name, to_host(d_losses, N), losses, tol);
    Floats exact;
    for (int n = 0; n < N; n++) softmax_fp64(exact, &logits[(size_t)n * Vp], V, Vp);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d Vp=%d) probs vs fp64", N, V, Vp);
    check_relative(name, got_probs, exact, 1e-5);

    // Without targets: the same probabilities, losses untouched.
    Floats sentinel(N, 12345.0f);
    upload(d_losses, sentinel);
    classifier_forward_gpu(d_probs, d_losses, d_logits, NULL, N, V, Vp, stream);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d) no targets: probs", N, V);
    check_bits(name, to_host(d_probs, probs.size()), got_probs);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d) no targets: losses kept", N, V);
    check_bits(name, to_host(d_losses, N), sentinel);

    // Backward from the CPU's probabilities into a NaN-filled buffer: every element must be written.
    float dloss = 1.0f / (float)N;
    Floats dlogits(probs.size(), 0.0f);
    classifier_backward(dlogits.data(), probs.data(), targets.data(), dloss, N, V, Vp);
    upload(d_probs, probs);
    upload(d_logits, Floats(probs.size(), NAN));
    classifier_backward_gpu(d_logits, d_probs, d_targets, dloss, N, V, Vp, stream);
    snprintf(name, sizeof name, "classifier_backward (N=%d V=%d Vp=%d) overwrite", N, V, Vp);
    check_values(name, to_host(d_logits, probs.size()), dlogits);

    cudaFree(d_logits);
    cudaFree(d_probs);
    cudaFree(d_losses);
    cudaFree(d_targets);
}

static void test_classifier(void) {
    test_classifier_shape(2 * 37, 65, 128, 1e-5);  // padded vocabulary
    test_classifier_shape(3, 50257, 50304, 1e-4);  // GPT-2's vocabulary (tolerance: see above)
}

// ---------------------------------------------------------------------------------------------------------
// attention: the GPU pieces composed with a naive batched product (the backend uses cuBLASLt instead)
// against attention_forward / attention_backward of the CPU in fp32. The products sum hs or T terms of
// O(1) in another order than the CPU's, the softmax sums T terms, and expf may differ by an ulp: errors
// of a few 1e-7 on O(1) values, so 1e-5 * max(1, |ref|) holds with a wide margin. The permutations move
// values without arithmetic and must be bit-identical; the bf16 split must equal bf16_from_f32 bit for bit.

// Strides of one operand of a batched product, in elements.
typedef struct {
    long batch, row, col;
} Strides;

// out[z][m][n] = sum over k (in order) of A[z][m][k] * Bm[z][k][n]; out is (batch, M, N) contiguous.
static __global__ void naive_batched_product(float *out, const float *A, Strides sa, const float *Bm, Strides sb,
                                             int batch, int M, int N, int K) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)batch * M * N) return;
    int z = (int)(i / ((size_t)M * N)), m = (int)(i / N % M), n = (int)(i % N);
    float sum = 0.0f;
    for (int k = 0; k < K; k++)
        sum += A[z * sa.batch + m * sa.row + k * sa.col] * Bm[z * sb.batch + k * sb.row + n * sb.col];
    out[i] = sum;
}

static void product(float *out, const float *A, Strides sa, const float *Bm, Strides sb, int batch, int M, int N, int K) {
    size_t n = (size_t)batch * M * N;
    naive_batched_product<<<ceil_div(n, 256), 256, 0, stream>>>(out, A, sa, Bm, sb, batch, M, N, K);
    CUDA_CHECK_LAUNCH();
}

// Index of channel c of (b, t) in a per-head tensor (B, NH, T, hs), on the host.
static size_t host_head_index(int b, int t, int c, int T, int NH, int hs) {
    return (((size_t)b * NH + c / hs) * T + t) * hs + c % hs;
}

static void test_attention_permutations(const Floats &qkv, int B, int T, int C, int NH) {
    int hs = C / NH;
    size_t n = (size_t)B * T * C;
    Floats q(n), k(n), v(n);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                size_t src = ((size_t)b * T + t) * 3 * C + c, dst = host_head_index(b, t, c, T, NH, hs);
                q[dst] = qkv[src];
                k[dst] = qkv[src + C];
                v[dst] = qkv[src + 2 * C];
            }
    float *d_qkv = to_device(qkv), *d_q = device_floats(n), *d_k = device_floats(n), *d_v = device_floats(n);
    attention_split_qkv_gpu(d_q, d_k, d_v, d_qkv, B, T, C, NH, stream);
    Floats all = q, got = to_host(d_q, n), got_k = to_host(d_k, n), got_v = to_host(d_v, n);
    all.insert(all.end(), k.begin(), k.end());
    all.insert(all.end(), v.begin(), v.end());
    got.insert(got.end(), got_k.begin(), got_k.end());
    got.insert(got.end(), got_v.begin(), got_v.end());
    check_bits("attention_split_qkv (2x37x72, NH=4) bits", got, all);

    // bf16 split of inputs with ties, subnormals and NaN payloads.
    Floats special(qkv.size());
    for (size_t i = 0; i < special.size(); i++) special[i] = random_cast_input();
    upload(d_qkv, special);
    __nv_bfloat16 *d_h = (__nv_bfloat16 *)cuda_malloc_checked(3 * n * sizeof(__nv_bfloat16), "test bf16");
    attention_split_qkv_bf16_gpu(d_h, d_h + n, d_h + 2 * n, d_qkv, B, T, C, NH, stream);
    std::vector<uint16_t> got_h(3 * n);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpy(got_h.data(), d_h, 3 * n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    size_t bad = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < 3 * C; j++) {
                size_t src = ((size_t)b * T + t) * 3 * C + j;
                size_t dst = (size_t)(j / C) * n + host_head_index(b, t, j % C, T, NH, hs);
                bad += got_h[dst] != bf16_from_f32(special[src]);
            }
    printf("%-56s %8zu elements, %zu differ in bits\n", "attention_split_qkv_bf16 (specials) bits", 3 * n, bad);
    CHECK(bad == 0, "attention_split_qkv_bf16: %zu elements differ from bf16_from_f32", bad);

    // merge_heads inverts split_heads; merge_qkv_grad adds.
    Floats x = random_floats(n, -1, 1), y(n);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) y[host_head_index(b, t, c, T, NH, hs)] = x[((size_t)b * T + t) * C + c];
    float *d_x = to_device(x), *d_y = device_floats(n), *d_back = device_floats(n);
    attention_split_heads_gpu(d_y, d_x, B, T, C, NH, stream);
    check_bits("attention_split_heads bits", to_host(d_y, n), y);
    attention_merge_heads_gpu(d_back, d_y, B, T, C, NH, stream);
    check_bits("attention_merge_heads bits", to_host(d_back, n), x);

    Floats dqkv = random_floats(3 * n, -1, 1), dq = random_floats(n, -1, 1), dk = random_floats(n, -1, 1);
    Floats dv = random_floats(n, -1, 1);
    float *d_dqkv = to_device(dqkv);
    upload(d_q, dq);
    upload(d_k, dk);
    upload(d_v, dv);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                size_t dst = ((size_t)b * T + t) * 3 * C + c, src = host_head_index(b, t, c, T, NH, hs);
                dqkv[dst] += dq[src];
                dqkv[dst + C] += dk[src];
                dqkv[dst + 2 * C] += dv[src];
            }
    attention_merge_qkv_grad_gpu(d_dqkv, d_q, d_k, d_v, B, T, C, NH, stream);
    check_bits("attention_merge_qkv_grad (adds) bits", to_host(d_dqkv, dqkv.size()), dqkv);

    cudaFree(d_qkv);
    cudaFree(d_q);
    cudaFree(d_k);
    cudaFree(d_v);
    cudaFree(d_h);
    cudaFree(d_x);
    cudaFree(d_y);
    cudaFree(d_back);
    cudaFree(d_dqkv);
}

static void test_attention(void) {
    const int B = 2, T = 37, C = 72, NH = 4, hs = C / NH, BH = B * NH;
    const float scale = 1.0f / sqrtf((float)hs);
    size_t n = (size_t)B * T * C, tt = (size_t)BH * T * T;
    OperandCast fp32 = {MATMUL_FP32, exmy_e4m3(), ROUND_NEAREST_EVEN, 1.0f};
    Floats qkv = random_floats(3 * n, -2, 2), dout = random_floats(n, -1, 1), dqkv = random_floats(3 * n, -1, 1);
    test_attention_permutations(qkv, B, T, C, NH);

    Floats out(n), att(tt);
    attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH, &fp32);
    float *d_qkv = to_device(qkv), *d_q = device_floats(n), *d_k = device_floats(n), *d_v = device_floats(n);
    float *d_att = device_floats(tt), *d_y = device_floats(n), *d_out = device_floats(n);
    Strides per_head = {(long)T * hs, hs, 1}, per_head_t = {(long)T * hs, 1, hs};  // (T, hs) and its transpose
    Strides square = {(long)T * T, T, 1}, square_t = {(long)T * T, 1, T};           // (T, T) and its transpose
    attention_split_qkv_gpu(d_q, d_k, d_v, d_qkv, B, T, C, NH, stream);
    product(d_att, d_q, per_head, d_k, per_head_t, BH, T, T, hs);          // scores = q k^T
    attention_softmax_forward_gpu(d_att, d_att, B, NH, T, scale, stream);  // in place: att aliases scores
    product(d_y, d_att, square, d_v, per_head, BH, T, hs, T);              // y = att v
    attention_merge_heads_gpu(d_out, d_y, B, T, C, NH, stream);
    check_close("attention forward (2x37x72, NH=4) out", to_host(d_out, n), out, 1e-5);
    check_close("attention forward (2x37x72, NH=4) att", to_host(d_att, tt), att, 1e-5);

    // Backward: the GPU continues from its own probabilities, as the backend does.
    float *d_dout = to_device(dout), *d_dqkv = to_device(dqkv), *d_dy = device_floats(n), *d_datt = device_floats(tt);
    float *d_dq = device_floats(n), *d_dk = device_floats(n), *d_dv = device_floats(n);
    attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), B, T, C, NH, &fp32);
    attention_split_heads_gpu(d_dy, d_dout, B, T, C, NH, stream);
    product(d_datt, d_dy, per_head, d_v, per_head_t, BH, T, T, hs);  // datt = dy v^T
    product(d_dv, d_att, square_t, d_dy, per_head, BH, T, hs, T);    // dv = att^T dy
    attention_softmax_backward_gpu(d_datt, d_datt, d_att, B, NH, T, scale, stream);  // in place: dscores
    product(d_dq, d_datt, square, d_k, per_head, BH, T, hs, T);    // dq = dscores k
    product(d_dk, d_datt, square_t, d_q, per_head, BH, T, hs, T);  // dk = dscores^T q
    attention_merge_qkv_grad_gpu(d_dqkv, d_dq, d_dk, d_dv, B, T, C, NH, stream);
    check_close("attention backward (2x37x72, NH=4) dqkv", to_host(d_dqkv, 3 * n), dqkv, 1e-5);

    // The softmax on its own, out of place, must give the in-place result's bits.
    Floats att_in_place = to_host(d_att, tt);
    float *d_scores = device_floats(tt);
    product(d_scores, d_q, per_head, d_k, per_head_t, BH, T, T, hs);
    attention_softmax_forward_gpu(d_att, d_scores, B, NH, T, scale, stream);
    check_bits("attention_softmax_forward out of place = in place", to_host(d_att, tt), att_in_place);

    float *buffers[] = {d_qkv, d_q, d_k, d_v, d_att, d_y, d_out, d_dout, d_dqkv, d_dy, d_datt, d_dq, d_dk, d_dv, d_scores};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) cudaFree(buffers[i]);
}

// ---------------------------------------------------------------------------------------------------------
// quantize: every element through the shared quantize_operand_value / bf16_from_f32, so the bits must be
// the CPU's (NaN only needs to be NaN on both sides for the arithmetic casts, as in test_numerics_device).
// amax: an exact max, so bit-identical, NaN included (tensor_amax returns NAN, 0x7fc00000).

static OperandCast make_cast(MatmulFormat format, ExmyFormat grid, RoundingMode rounding, float scale) {
    OperandCast cast = {format, grid, rounding, scale};
    return cast;
}

static void test_quantize(void) {
    const size_t n = (1u << 16) + 7;
    Floats inp(n);
    for (size_t i = 0; i < n; i++) inp[i] = random_cast_input();
    float *d_inp = to_device(inp), *d_out = device_floats(n);
    struct {
        const char *name;
        OperandCast cast;
    } casts[] = {
        {"quantize_operand fp32 bits", make_cast(MATMUL_FP32, exmy_e4m3(), ROUND_NEAREST_EVEN, 1.0f)},
        {"quantize_operand bf16 bits", make_cast(MATMUL_BF16, exmy_e4m3(), ROUND_NEAREST_EVEN, 1.0f)},
        {"quantize_operand e3m2 nearest bits", make_cast(MATMUL_EXMY, exmy_format(3, 2), ROUND_NEAREST_EVEN, 1.0f)},
        {"quantize_operand e5m2 toward zero bits", make_cast(MATMUL_EXMY, exmy_e5m2(), ROUND_TOWARD_ZERO, 1.0f)},
        {"quantize_operand e2m1 nearest bits", make_cast(MATMUL_EXMY, exmy_format(2, 1), ROUND_NEAREST_EVEN, 1.0f)},
        {"quantize_operand e8m3 toward zero bits", make_cast(MATMUL_EXMY, exmy_format(8, 3), ROUND_TOWARD_ZERO, 1.0f)},
        {"quantize_operand fp8 e4m3 scale 3.5 bits", make_cast(MATMUL_FP8, exmy_e4m3(), ROUND_NEAREST_EVEN, 3.5f)},
        {"quantize_operand fp8 e5m2 scale 0.01 bits", make_cast(MATMUL_FP8, exmy_e5m2(), ROUND_NEAREST_EVEN, 0.01f)},
    };
    for (size_t k = 0; k < sizeof casts / sizeof casts[0]; k++) {
        Floats out(n);
        quantize_operand(out.data(), inp.data(), n, &casts[k].cast);
        quantize_operand_gpu(d_out, d_inp, n, casts[k].cast, stream);
        check_bits_or_both_nan(casts[k].name, to_host(d_out, n), out);
    }
    // In place (out == inp), as quantize_operand allows.
    Floats in_place(n);
    quantize_operand(in_place.data(), inp.data(), n, &casts[2].cast);
    quantize_operand_gpu(d_inp, d_inp, n, casts[2].cast, stream);
    check_bits_or_both_nan("quantize_operand e3m2 in place bits", to_host(d_inp, n), in_place);
    upload(d_inp, inp);

    __nv_bfloat16 *d_h = (__nv_bfloat16 *)cuda_malloc_checked(n * sizeof(__nv_bfloat16), "test bf16");
    cast_bf16_gpu(d_h, d_inp, n, stream);
    std::vector<uint16_t> got(n);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpy(got.data(), d_h, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += got[i] != bf16_from_f32(inp[i]);
    printf("%-56s %8zu elements, %zu differ in bits\n", "cast_bf16 (NaN payloads included) bits", n, bad);
    CHECK(bad == 0, "cast_bf16: %zu elements differ from bf16_from_f32", bad);
    cudaFree(d_h);
    cudaFree(d_inp);
    cudaFree(d_out);
}

// One amax case: x on both sides, bits compared.
static void check_amax(const char *name, const Floats &x, float *d_amax) {
    float *d_x = to_device(x);
    tensor_amax_gpu(d_amax, d_x, x.size(), stream);
    Floats got = to_host(d_amax, 1), want(1, tensor_amax(x.data(), x.size()));
    check_bits(name, got, want);
    cudaFree(d_x);
}

static void test_amax(void) {
    float *d_amax = device_floats(1);
    const size_t big = 3000017;  // over the 1024 blocks x 256 threads of one grid-stride pass
    Floats x = random_floats(big, -3, 3);
    x[big - 5] = -7.25f;
    check_amax("tensor_amax (n=3000017, max at a negative) bits", x, d_amax);
    x[123456] = float_of_bits(0xffc00123u);  // a negative NaN with a payload
    check_amax("tensor_amax with a NaN -> NAN bits", x, d_amax);
    x[123456] = -INFINITY;
    check_amax("tensor_amax with -inf -> inf bits", x, d_amax);
    check_amax("tensor_amax all -0 -> 0 bits", Floats(1000, -0.0f), d_amax);
    Floats tiny(77, 0.0f);
    tiny[76] = float_of_bits(0x80000001u);  // the smallest negative subnormal
    check_amax("tensor_amax subnormal (n=77) bits", tiny, d_amax);
    check_amax("tensor_amax empty -> 0 bits", Floats(), d_amax);
    cudaFree(d_amax);
}

int main(void) {
    int devices = 0;
    cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
        fprintf(stderr, "test_kernels: no CUDA device available (%s); this test needs a GPU\n",
                status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
        return 1;
    }
    CUDA_CHECK(cudaStreamCreate(&stream));
    test_encoder();
    test_layernorm();
    test_column_sums();
    test_gelu();
    test_residual();
    test_classifier();
    test_attention();
    test_quantize();
    test_amax();
    CUDA_CHECK(cudaStreamDestroy(stream));
    return test_summary("test_kernels");
}
