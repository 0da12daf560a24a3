// Every kernel of kernels/ against its CPU op (src/cpu/) or the shared numerics headers on the same random
// inputs (fixed seeds). Ops whose every output is one fixed sequence of fp32 operations on both sides
// (encoder, permutations, operand casts, bf16 conversions and accumulation, amax, fp8 scale state, DQT
// decoding, the classifier backward from the same statistics, the fused residual + layernorm against the
// unfused kernel) must agree bit for bit. Ops whose sums the GPU reorders (warp and block reductions, two-phase column sums, cuBLASLt products) or that call a math
// function (expf, logf, tanhf: CUDA's and glibc's may differ in the last bit or two) agree to rounding:
// fp32 within 1e-5 relative, bf16 operands within 1e-2 at most, each check relative to a scale stated in
// its comment — the size of the terms the result is summed from, so that an output near zero (a
// cancellation) is held to the rounding its terms allow, neither to its own tiny magnitude nor to an
// absolute 1e-5. Bounds: a sum of n terms in any order is within gamma_n = n * 2^-24 of the sum of the
// |terms| in the worst case, and within ~sqrt(n) * 2^-24 for the random-sign roundings of random data;
// each comment says which of the two the tolerance rests on. One line per check; the exit status is
// non-zero on any failure.
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
#include "param_storage.h"
#include "policy.h"
#include "cpu/ops.h"

#include "../../kernels/attention.cuh"
#include "../../kernels/classifier.cuh"
#include "../../kernels/column_sum.cuh"
#include "../../kernels/encoder.cuh"
#include "../../kernels/flash_attention.cuh"
#include "../../kernels/gelu.cuh"
#include "../../kernels/gradients.cuh"
#include "../../kernels/layernorm.cuh"
#include "../../kernels/matmul.cuh"
#include "../../kernels/optimizer.cuh"
#include "../../kernels/quantize.cuh"

typedef std::vector<float> Floats;
typedef std::vector<uint16_t> Codes;  // bf16 bits

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

static uint16_t *to_device_bf16(const Codes &h) {
    uint16_t *d = (uint16_t *)cuda_malloc_checked(h.size() * sizeof(uint16_t) + 4, "test buffer");
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
    return d;
}

static void *to_device_bytes(const void *h, size_t bytes) {
    void *d = cuda_malloc_checked(bytes + 4, "test buffer");
    CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

static float *device_floats(size_t n) { return (float *)cuda_malloc_checked(n * sizeof(float) + 4, "test buffer"); }

static Floats to_host(const float *d, size_t n) {
    Floats h(n);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

static Codes to_host_bf16(const void *d, size_t n) {
    Codes h(n);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
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

static int bf16_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7f80u; }

// bf16 codes equal; with nan_any, a NaN matches any NaN (a sum's NaN: see check_bits_or_both_nan).
static void check_bf16_codes(const char *name, const Codes &got, const Codes &want, int nan_any) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < want.size(); i++) {
        int same = got[i] == want[i] || (nan_any && bf16_is_nan(got[i]) && bf16_is_nan(want[i]));
        if (!same && bad++ == 0) first = i;
    }
    printf("%-56s %8zu elements, %zu differ in bits\n", name, want.size(), bad);
    CHECK(bad == 0, "%s: element %zu is 0x%04x, the CPU's 0x%04x", name, first, bad ? got[first] : 0,
          bad ? want[first] : 0);
}

// |got - want| <= tol * scale[i] for every element; a NaN on either side must be a NaN on both. Every
// scale must be positive (a zero would turn an exact match into 0/0).
static void check_close_scaled(const char *name, const Floats &got, const Floats &want, const Floats &scale,
                               double tol) {
    size_t bad = 0, first = 0;
    double worst = 0.0;
    for (size_t i = 0; i < want.size(); i++) {
        double err = fabs((double)got[i] - (double)want[i]) / (double)scale[i];
        int ok = isnan(want[i]) || isnan(got[i]) ? isnan(want[i]) && isnan(got[i]) : err <= tol;
        if (ok && err > worst) worst = err;
        if (!ok && bad++ == 0) first = i;
    }
    printf("%-56s %8zu elements, max error %.2e (tolerance %.0e), %zu outside\n", name, want.size(), worst, tol, bad);
    CHECK(bad == 0, "%s: element %zu is %.9g, the reference %.9g (scale %.3g)", name, first, got[first], want[first],
          scale[first]);
}

// A scale that is never 0: exact zeros (probabilities above the diagonal, padded entries) must then match
// exactly.
static float positive_scale(double s) { return s > 1e-30 ? (float)s : 1e-30f; }

// Relative: |got - want| <= tol * |want| (for positive quantities of any magnitude, like probabilities).
static void check_relative(const char *name, const Floats &got, const Floats &want, double tol) {
    Floats scale(want.size());
    for (size_t i = 0; i < want.size(); i++) scale[i] = positive_scale(fabs((double)want[i]));
    check_close_scaled(name, got, want, scale, tol);
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
// layernorm: the per-element expressions are the CPU's, the row sums (C terms) are reordered (the CPU's
// omp simd lanes, the GPU's 32 warp lanes). Each check is relative to the size of what its value is summed
// from, within 1e-5 (a sum of C = 770 O(1) terms in another order: a few 1e-7 typically, sqrt(C) * 2^-24
// of the sum of the magnitudes; the worst case C * 2^-24 would be 5e-5):
//  - mean: relative to the row's mean |x| (the terms of its sum);
//  - rstd: relative to itself (a sum of squares has no cancellation; the mean's error enters only to second
//    order, since the deviations sum to zero);
//  - out = (x - mean) * rstd * w + b: relative to |w| * rstd * (|x| + mean |x|) + |b|, the terms of x - mean
//    (the mean's error is relative to mean |x|), times the factors, plus the bias;
//  - dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w: relative to |dinp_initial| +
//    rstd * (|g| + mean |g| + |xhat| * mean |g * xhat|), the terms and the terms of the two row means (xhat and
//    g are the same bits on both sides: the CPU's saved mean and rstd are uploaded);
//  - dweight, dbias: column sums over N rows in another order (partials of 64 rows), relative to
//    |initial| + the sum of the magnitudes of the terms (sqrt(N) * 2^-24 typically, as for the column sums
//    below); a wrong or missing row is off by a whole term.

static void test_layernorm_shape(int N, int C) {
    char name[128];
    Floats inp = random_floats((size_t)N * C, -1, 1), weight = random_floats(C, -1.5f, 1.5f);
    Floats bias = random_floats(C, -0.5f, 0.5f);
    for (int n = 0; n < N; n++)  // rows with their own offset and spread, as in a residual stream
        for (int c = 0; c < C; c++) inp[(size_t)n * C + c] = inp[(size_t)n * C + c] * (1.0f + n % 5) + 0.1f * (n % 7);
    Floats out((size_t)N * C), mean(N), rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(), N, C);
    Floats mean_scale(N), out_scale((size_t)N * C);
    for (int n = 0; n < N; n++) {
        double abs_sum = 0.0;
        for (int c = 0; c < C; c++) abs_sum += fabs((double)inp[(size_t)n * C + c]);
        mean_scale[n] = positive_scale(abs_sum / C);
        for (int c = 0; c < C; c++) {
            double x = fabs((double)inp[(size_t)n * C + c]);
            out_scale[(size_t)n * C + c] =
                positive_scale(fabs((double)weight[c]) * rstd[n] * (x + abs_sum / C) + fabs((double)bias[c]));
        }
    }

    float *d_inp = to_device(inp), *d_weight = to_device(weight), *d_bias = to_device(bias);
    float *d_out = device_floats(out.size()), *d_mean = device_floats(N), *d_rstd = device_floats(N);
    layernorm_forward_gpu(d_out, d_mean, d_rstd, d_inp, d_weight, d_bias, N, C, stream);
    snprintf(name, sizeof name, "layernorm_forward (N=%d C=%d) out", N, C);
    check_close_scaled(name, to_host(d_out, out.size()), out, out_scale, 1e-5);
    snprintf(name, sizeof name, "layernorm_forward (N=%d C=%d) mean", N, C);
    check_close_scaled(name, to_host(d_mean, N), mean, mean_scale, 1e-5);
    snprintf(name, sizeof name, "layernorm_forward (N=%d C=%d) rstd", N, C);
    check_relative(name, to_host(d_rstd, N), rstd, 1e-5);

    // The fused residual + layernorm: residual = inp + b (one addition per element: the CPU's
    // residual_forward, bits), and out, mean, rstd the bits of layernorm_forward_gpu of that residual (the
    // same kernel code on the same values); out of place and in place (residual == a). Without mean and rstd
    // (NULL), the same out.
    Floats b = random_floats((size_t)N * C, -1, 1), residual((size_t)N * C);
    residual_forward(residual.data(), inp.data(), b.data(), residual.size());
    float *d_b = to_device(b), *d_residual = to_device(residual), *d_a = to_device(inp);
    layernorm_forward_gpu(d_out, d_mean, d_rstd, d_residual, d_weight, d_bias, N, C, stream);
    Floats unfused = to_host(d_out, out.size()), unfused_mean = to_host(d_mean, N), unfused_rstd = to_host(d_rstd, N);
    unfused.insert(unfused.end(), unfused_mean.begin(), unfused_mean.end());
    unfused.insert(unfused.end(), unfused_rstd.begin(), unfused_rstd.end());
    for (int in_place = 0; in_place < 2; in_place++) {
        upload(d_residual, Floats(residual.size(), NAN));
        upload(d_out, Floats(out.size(), NAN));
        upload(d_mean, Floats(N, NAN));
        upload(d_rstd, Floats(N, NAN));
        float *d_sum = in_place ? d_a : d_residual;
        residual_layernorm_forward_gpu(d_sum, d_out, d_mean, d_rstd, d_a, d_b, d_weight, d_bias, N, C, stream);
        snprintf(name, sizeof name, "residual_layernorm_forward (N=%d C=%d)%s residual bits", N, C,
                 in_place ? " in place" : "");
        check_bits(name, to_host(d_sum, residual.size()), residual);
        Floats fused = to_host(d_out, out.size()), fused_mean = to_host(d_mean, N), fused_rstd = to_host(d_rstd, N);
        fused.insert(fused.end(), fused_mean.begin(), fused_mean.end());
        fused.insert(fused.end(), fused_rstd.begin(), fused_rstd.end());
        snprintf(name, sizeof name, "residual_layernorm_forward (N=%d C=%d)%s = unfused bits", N, C,
                 in_place ? " in place" : "");
        check_bits(name, fused, unfused);
    }
    upload(d_residual, residual);
    upload(d_out, Floats(out.size(), NAN));
    layernorm_forward_gpu(d_out, NULL, NULL, d_residual, d_weight, d_bias, N, C, stream);
    snprintf(name, sizeof name, "layernorm_forward (N=%d C=%d) without mean, rstd bits", N, C);
    check_bits(name, to_host(d_out, out.size()), Floats(unfused.begin(), unfused.begin() + out.size()));
    cudaFree(d_b);
    cudaFree(d_residual);
    cudaFree(d_a);

    // Backward on the CPU's saved statistics, so that only the backward is compared.
    upload(d_mean, mean);
    upload(d_rstd, rstd);
    Floats dout = random_floats((size_t)N * C, -1, 1), dinp = random_floats((size_t)N * C, -1, 1);
    Floats dweight = random_floats(C, -1, 1), dbias = random_floats(C, -1, 1);
    Floats w_scale(C), b_scale(C), dinp_scale((size_t)N * C);
    for (int c = 0; c < C; c++) {
        double sw = fabs(dweight[c]), sb = fabs(dbias[c]);
        for (int n = 0; n < N; n++) {
            size_t i = (size_t)n * C + c;
            sw += fabs(dout[i] * ((inp[i] - mean[n]) * rstd[n]));
            sb += fabs(dout[i]);
        }
        w_scale[c] = positive_scale(sw);
        b_scale[c] = positive_scale(sb);
    }
    for (int n = 0; n < N; n++) {
        double g_abs = 0.0, gx_abs = 0.0;  // sums of |g| and |g * xhat| over the row
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            double g = (double)dout[i] * weight[c], xhat = ((double)inp[i] - mean[n]) * rstd[n];
            g_abs += fabs(g);
            gx_abs += fabs(g * xhat);
        }
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            double g = (double)dout[i] * weight[c], xhat = ((double)inp[i] - mean[n]) * rstd[n];
            double terms = fabs(g) + g_abs / C + fabs(xhat) * gx_abs / C;
            dinp_scale[i] = positive_scale(fabs((double)dinp[i]) + rstd[n] * terms);
        }
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
    check_close_scaled(name, got_dinp, dinp, dinp_scale, 1e-5);
    snprintf(name, sizeof name, "layernorm_backward (N=%d C=%d) dweight", N, C);
    check_close_scaled(name, got_dweight, dweight, w_scale, 1e-5);
    snprintf(name, sizeof name, "layernorm_backward (N=%d C=%d) dbias", N, C);
    check_close_scaled(name, got_dbias, dbias, b_scale, 1e-5);

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
// bf16 storage (precision.activations = bf16, bf16 weights): the same kernels read bf16, compute in fp32 and
// round what they store once. Where the fp32 value is the CPU's bits (one addition: the encoder's sum, the
// residual), its rounding is too: bit for bit. Elsewhere (row sums reordered, expf) the fp32 values agree to
// the tolerances above, and a value that close to a rounding boundary may round to the neighbouring bf16: the
// stored result is within one bf16 ulp (2^-8 relative) of the CPU's fp32 value, plus those tolerances.

static Floats bf16_values(Floats x) {
    for (size_t i = 0; i < x.size(); i++) x[i] = round_bf16(x[i]);
    return x;
}

// x rounded to bf16, on the device.
static __nv_bfloat16 *device_bf16_values(const Floats &x) {
    Codes h(x.size());
    for (size_t i = 0; i < x.size(); i++) h[i] = bf16_from_f32(x[i]);
    return (__nv_bfloat16 *)to_device_bf16(h);
}

static Floats to_host_widened(const __nv_bfloat16 *d, size_t n) {
    Codes codes = to_host_bf16(d, n);
    Floats out(n);
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(codes[i]);
    return out;
}

// got (bf16 values) within one bf16 ulp of want (fp32) plus tol * scale.
static void check_bf16_rounding(const char *name, const Floats &got, const Floats &want, const Floats &scale,
                                double tol) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < got.size(); i++)
        if (!(fabs((double)got[i] - want[i]) <= fabs((double)want[i]) / 256.0 + tol * scale[i]) && bad++ == 0) first = i;
    CHECK(bad == 0, "%s: %zu of %zu elements off, first %zu: %.9g vs %.9g", name, bad, got.size(), first, got[first],
          want[first]);
    printf("%-56s ok\n", name);
}

static void test_bf16_storage(void) {
    const int N = 74, C = 72, T = 37, Vp = 80;
    // Encoder: bf16 wte, wpe -> bf16 output, bits.
    std::vector<int> tokens(N);
    for (int i = 0; i < N; i++) tokens[i] = (int)(splitmix64_next(&rng_state) % Vp);
    Floats wte = bf16_values(random_floats((size_t)Vp * C, -1, 1)), wpe = bf16_values(random_floats((size_t)T * C, -1, 1));
    Floats encoded((size_t)N * C);
    encoder_forward(encoded.data(), tokens.data(), wte.data(), wpe.data(), N / T, T, C);
    int *d_tokens = to_device_ints(tokens);
    __nv_bfloat16 *d_wte = device_bf16_values(wte), *d_wpe = device_bf16_values(wpe);
    __nv_bfloat16 *d_encoded = device_bf16_values(Floats((size_t)N * C, 0.0f));
    encoder_forward_gpu(d_encoded, d_tokens, d_wte, d_wpe, N / T, T, C, stream);
    check_bits("encoder_forward bf16 -> bf16 bits", to_host_widened(d_encoded, encoded.size()), bf16_values(encoded));

    // Residual + layernorm: the residual's bits, the output within one rounding (bf16 weights and bias).
    Floats a = bf16_values(random_floats((size_t)N * C, -2, 2)), b = bf16_values(random_floats((size_t)N * C, -1, 1));
    Floats weight = bf16_values(random_floats(C, -1.5f, 1.5f)), bias = bf16_values(random_floats(C, -0.5f, 0.5f));
    Floats residual((size_t)N * C), out((size_t)N * C), mean(N), rstd(N), scale((size_t)N * C);
    residual_forward(residual.data(), a.data(), b.data(), residual.size());
    residual = bf16_values(residual);
    layernorm_forward(out.data(), mean.data(), rstd.data(), residual.data(), weight.data(), bias.data(), N, C);
    for (int n = 0; n < N; n++) {
        double abs_sum = 0.0;
        for (int c = 0; c < C; c++) abs_sum += fabs((double)residual[(size_t)n * C + c]);
        for (int c = 0; c < C; c++)
            scale[(size_t)n * C + c] = positive_scale(fabs((double)weight[c]) * rstd[n] *
                                                      (fabs((double)residual[(size_t)n * C + c]) + abs_sum / C) +
                                                      fabs((double)bias[c]));
    }
    __nv_bfloat16 *d_a = device_bf16_values(a), *d_b = device_bf16_values(b), *d_weight = device_bf16_values(weight);
    __nv_bfloat16 *d_bias = device_bf16_values(bias), *d_residual = device_bf16_values(Floats((size_t)N * C, 0.0f));
    __nv_bfloat16 *d_out = device_bf16_values(Floats((size_t)N * C, 0.0f));
    float *d_mean = device_floats(N), *d_rstd = device_floats(N);
    residual_layernorm_forward_gpu(d_residual, d_out, d_mean, d_rstd, (const __nv_bfloat16 *)d_a,
                                   (const __nv_bfloat16 *)d_b, (const __nv_bfloat16 *)d_weight,
                                   (const __nv_bfloat16 *)d_bias, N, C, stream);
    check_bits("residual_layernorm bf16 residual bits", to_host_widened(d_residual, residual.size()), residual);
    check_bf16_rounding("residual_layernorm bf16 out", to_host_widened(d_out, out.size()), out, scale, 1e-5);
    check_relative("residual_layernorm bf16 rstd", to_host(d_rstd, N), rstd, 1e-5);

    // GELU of bf16 values into bf16 (tolerance: test_gelu's).
    Floats gelu_out((size_t)N * C), gelu_scale((size_t)N * C);
    gelu_forward(gelu_out.data(), a.data(), a.size());
    for (size_t i = 0; i < a.size(); i++) gelu_scale[i] = positive_scale(fabs((double)a[i]) * 2.0);
    gelu_forward_gpu(d_out, (const __nv_bfloat16 *)d_a, a.size(), stream);
    check_bf16_rounding("gelu_forward bf16 -> bf16", to_host_widened(d_out, a.size()), gelu_out, gelu_scale, 1e-5);

    // Classifier over bf16 logits: the losses as the CPU's over the same values; the gradient into bf16.
    const int V = 65, rows = 9;
    Floats logits = bf16_values(random_floats((size_t)rows * Vp, -4, 4)), probs((size_t)rows * Vp), losses(rows);
    std::vector<int> targets(rows);
    for (int r = 0; r < rows; r++) targets[r] = (int)(splitmix64_next(&rng_state) % V);
    classifier_forward(probs.data(), losses.data(), logits.data(), targets.data(), rows, V, Vp);
    Floats dlogits((size_t)rows * Vp, 0.0f), grad_scale((size_t)rows * Vp, 1.0f);
    classifier_backward(dlogits.data(), probs.data(), targets.data(), 0.5f, rows, V, Vp);
    __nv_bfloat16 *d_logits = device_bf16_values(logits);
    float *d_losses = device_floats(rows);
    SoftmaxStats *d_stats = (SoftmaxStats *)cuda_malloc_checked(rows * sizeof(SoftmaxStats), "test stats");
    int *d_targets = to_device_ints(targets);
    classifier_forward_gpu(d_stats, d_losses, (const __nv_bfloat16 *)d_logits, d_targets, rows, V, Vp, stream);
    check_relative("classifier_forward bf16 logits: losses", to_host(d_losses, rows), losses, 2e-5);
    classifier_backward_gpu(d_logits, (const __nv_bfloat16 *)d_logits, d_stats, d_targets, 0.5f, rows, V, Vp, stream);
    check_bf16_rounding("classifier_backward into bf16 (in place)", to_host_widened(d_logits, dlogits.size()), dlogits,
                        grad_scale, 1e-6);

    cudaFree(d_tokens);
    cudaFree(d_wte);
    cudaFree(d_wpe);
    cudaFree(d_encoded);
    cudaFree(d_a);
    cudaFree(d_b);
    cudaFree(d_weight);
    cudaFree(d_bias);
    cudaFree(d_residual);
    cudaFree(d_out);
    cudaFree(d_mean);
    cudaFree(d_rstd);
    cudaFree(d_logits);
    cudaFree(d_losses);
    cudaFree(d_stats);
    cudaFree(d_targets);
}

// ---------------------------------------------------------------------------------------------------------
// column sums: with random floats, reordered sums of N = 333 terms compared as dweight above: within 1e-5
// of |initial| + the sum of the magnitudes of the terms (the CPU adds each column's rows in order, the GPU
// in partials of 64 rows: typically sqrt(N) * 2^-24 = 1e-6 apart; the worst case, (334 + 71) * 2^-24 =
// 2.4e-5, is not what the tolerance rests on). With dyadic inputs (multiples of 2^-8 below 1 in
// magnitude, so every partial sum is exact in fp32) the sum is exact in any order and must equal the CPU's
// bit for bit: that pins the indexing. add_bias is one addition per element: bit-identical.

static void test_column_sums(void) {
    const int N = 333, C = 770;
    Floats src = random_floats((size_t)N * C, -1, 1), dst = random_floats(C, -1, 1), scale(C);
    for (int c = 0; c < C; c++) {
        double s = fabs(dst[c]);
        for (int n = 0; n < N; n++) s += fabs(src[(size_t)n * C + c]);
        scale[c] = positive_scale(s);
    }
    float *d_src = to_device(src), *d_dst = to_device(dst);
    float *d_scratch = device_floats(column_sum_scratch_floats(N, C));
    sum_rows_add(dst.data(), src.data(), N, C);
    column_sums_add_gpu(d_dst, d_src, N, C, d_scratch, stream);
    check_close_scaled("column_sums_add (N=333 C=770) random", to_host(d_dst, C), dst, scale, 1e-5);

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
    add_bias_gpu(d_out, d_out, d_bias, rows, OC, stream);
    check_bits("add_bias (74x72) bits", to_host(d_out, out.size()), out);

    cudaFree(d_src);
    cudaFree(d_dst);
    cudaFree(d_scratch);
    cudaFree(d_out);
    cudaFree(d_bias);
}

// ---------------------------------------------------------------------------------------------------------
// gelu: the CPU's expressions term for term (contraction off on both sides), so the argument u of tanh has
// the same bits; only tanhf differs (CUDA's within 2 ulp, glibc's within 1-2 ulp: |dt| <= 4 * 2^-24 at
// most). The forward 0.5 x (1 + t) is compared relative to the size of its two terms, 0.5 |x| (1 + |t|):
// the change 0.5 |x| dt is below 3e-7 of that, and near x = -3 where 1 + t cancels to 2e-3 the output's own
// magnitude would be the wrong scale (its relative error there is 1e-4 on any two libms). The backward
// dinp = (0.5 (1 + t) + 0.5 x (1 - t^2) u') dout (the GPU overwrites; the CPU adds to zero, as gpt_cpu.c
// does) is compared relative to |dinp_initial| + |dout| *
// (0.5 (1 + |t|) + 0.5 |x| (1 + t^2) |u'|), its terms: dt moves it by |dout| dt (0.5 + |x t u'|), again
// below 1e-6 of the scale. 1e-5 leaves a margin of 10 at least; how many elements are bit-identical is
// printed as well.

// The fused backward of bf16 block linears, over the same (rows, cols) values as the separate kernels: its
// GELU output is gelu_forward_gpu's (the same expression: bits), its bf16 operand the rounding of
// gelu_backward_gpu's fp32 gradient (bits), and its column partials, reduced, column_sums_add_gpu's sums of
// that gradient (the same two-phase order: bits).
static void test_gelu_backward_fused(const Floats &inp, const Floats &dout, const Floats &gpu_out,
                                     const Floats &gpu_dinp) {
    const int cols = 300, rows = (int)(inp.size() / cols);  // 333 rows: 6 row blocks, the last partial
    size_t n = (size_t)rows * cols;
    float *d_inp = to_device(inp), *d_dout = to_device(dout), *d_out = device_floats(n);
    float *d_partials = device_floats(column_sum_scratch_floats(rows, cols)), *d_sums = device_floats(cols);
    float *d_scratch = device_floats(column_sum_scratch_floats(rows, cols)), *d_dinp = to_device(gpu_dinp);
    __nv_bfloat16 *d_operand = (__nv_bfloat16 *)cuda_malloc_checked(n * sizeof(__nv_bfloat16), "test bf16");
    gelu_backward_fused_gpu(d_out, d_operand, d_partials, d_dout, d_inp, rows, cols, stream);
    CUDA_CHECK(cudaMemsetAsync(d_sums, 0, cols * sizeof(float), stream));
    column_partials_reduce_gpu(d_sums, d_partials, column_sum_row_blocks(rows), cols, stream);
    Floats want_sums(cols, 0.0f);
    float *d_want = to_device(want_sums);
    column_sums_add_gpu(d_want, d_dinp, rows, cols, d_scratch, stream);
    Codes want_operand(n);
    for (size_t i = 0; i < n; i++) want_operand[i] = bf16_from_f32(gpu_dinp[i]);
    check_bits("gelu_backward_fused: recomputed output bits", to_host(d_out, n), Floats(gpu_out.begin(), gpu_out.begin() + n));
    check_bf16_codes("gelu_backward_fused: bf16 operand bits", to_host_bf16(d_operand, n), want_operand, 0);
    check_bits("gelu_backward_fused: column sums bits", to_host(d_sums, cols), to_host(d_want, cols));
    // The cast with column partials: the same rounding and the same sums, from the fp32 gradient.
    cast_column_partials_gpu(d_operand, d_partials, d_dinp, rows, cols, stream);
    CUDA_CHECK(cudaMemsetAsync(d_sums, 0, cols * sizeof(float), stream));
    column_partials_reduce_gpu(d_sums, d_partials, column_sum_row_blocks(rows), cols, stream);
    check_bf16_codes("cast_column_partials: bf16 operand bits", to_host_bf16(d_operand, n), want_operand, 0);
    check_bits("cast_column_partials: column sums bits", to_host(d_sums, cols), to_host(d_want, cols));
    cudaFree(d_inp);
    cudaFree(d_dout);
    cudaFree(d_out);
    cudaFree(d_partials);
    cudaFree(d_sums);
    cudaFree(d_scratch);
    cudaFree(d_dinp);
    cudaFree(d_operand);
    cudaFree(d_want);
}

static void test_gelu(void) {
    const size_t n = 100003;
    Floats inp = random_floats(n, -8, 8), dout = random_floats(n, -1, 1), dinp(n, 0.0f);
    Floats out(n), out_scale(n), dinp_scale(n);
    for (size_t i = 0; i < n; i++) {
        double x = inp[i], u = 0.7978845608028654 * (x + 0.044715 * x * x * x), t = fabs(tanh(u));
        double du_dx = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
        out_scale[i] = positive_scale(0.5 * fabs(x) * (1.0 + t));
        double terms = 0.5 * (1.0 + t) + 0.5 * fabs(x) * (1.0 + t * t) * du_dx;
        dinp_scale[i] = positive_scale(fabs((double)dinp[i]) + fabs((double)dout[i]) * terms);
    }
    // The GPU's dinp starts as garbage: its backward overwrites.
    float *d_inp = to_device(inp), *d_dout = to_device(dout), *d_dinp = to_device(random_floats(n, -1, 1));
    float *d_out = device_floats(n);
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
    check_close_scaled("gelu_forward (n=100003)", got_out, out, out_scale, 1e-5);
    check_close_scaled("gelu_backward (n=100003)", got_dinp, dinp, dinp_scale, 1e-5);
    test_gelu_backward_fused(inp, dout, got_out, got_dinp);
    cudaFree(d_inp);
    cudaFree(d_dout);
    cudaFree(d_dinp);
    cudaFree(d_out);
}

// ---------------------------------------------------------------------------------------------------------
// classifier (fused): the forward keeps per-row statistics {max, 1 / sum} and the losses, the backward
// re-forms p = expf(z - max) * inv_sum and overwrites the logits with (p - onehot) * dloss.
//  - The row max is exact and z - max has the same bits on both sides; the sum of V exponentials is a
//    sequential loop on the CPU and an online sum on the GPU, in the one read of the row: each thread keeps
//    a running max and a sum it rescales by expf(old max - new max) when the max rises, then 5 butterfly
//    levels and 16 warps merge the pairs, rescaling one side of each merge. Each term passes through at
//    most 98 + 5 + 16 additions at V = 50257 (7.1e-6) and through at most ~5 rescales in its thread on
//    random logits (the running max of 98 values rises ~ln 98 times) plus 21 in the merges, each a rounded
//    factor (expf's 2-3 ulp and the product: 1.5e-7), 26 in all: 3.9e-6; then the rounding of z - max
//    (|z - max| <= 8: 4.8e-7, in the term and in the sum), expf (2.4e-7), the reciprocal and the product
//    (1.2e-7): 1.2e-5 in all, so the checks against an fp64 softmax allow 2e-5. Against the CPU's at V = 65
//    likewise (the CPU's 64 sequential additions: 3.8e-6, the GPU's one term per thread and 21 merges: in
//    all 1e-5, allowed 2e-5); at V = 50257 the CPU's own sequential fp32 sum drifts by ~sqrt(V) / 3 *
//    2^-24 ~ 5e-6 relative (one sigma, the same for the whole row), so the comparison with the CPU allows
//    1e-4 there.
//  - Losses logf(sum) + max - z[target] relative to 1 + |log sum| + |max| + |z[target]|: the terms, and 1
//    for the logarithm, which turns the sum's relative error into an absolute one. Against fp64 within 2e-5
//    (the sum's 1.2e-5 and logf's ulp over a scale >= 1); against the CPU with the tolerance above.
//  - Backward from the GPU's own statistics: the CPU's classifier_backward applied to the probabilities
//    those statistics imply, formed with the backward kernel's expression (probs_from_stats_kernel, the
//    same expf compiled with the same flags), is the same fp32 arithmetic element for element: the same
//    bits (dloss > 0, so no -0 arises from the CPU's += into zeros). Against the CPU's own probabilities
//    (p_cpu - onehot) * dloss differs by dloss * |p - p_cpu| plus one rounding of p - onehot, so it is
//    compared relative to dloss * (p_cpu + onehot), the terms of the difference, with the tolerance of the
//    probabilities.
// Padded logits are NaN: reading one in the forward would poison the row's sum; the backward must overwrite
// them with 0. The forward must leave every logit as it was.

// fp64 softmax of one row's first V logits.
static void softmax_fp64(Floats &probs, const float *z, int V, int Vp) {
    double m = -INFINITY, sum = 0.0;
    for (int v = 0; v < V; v++) m = fmax(m, (double)z[v]);
    for (int v = 0; v < V; v++) sum += exp((double)z[v] - m);
    for (int v = 0; v < V; v++) probs.push_back((float)(exp((double)z[v] - m) / sum));
    for (int v = V; v < Vp; v++) probs.push_back(0.0f);
}

// probs (N, Vp) = expf(z - max) * inv_sum from each row's statistics, 0 on the padded entries: the
// probabilities the backward kernel forms, bit for bit. One thread per element.
static __global__ void probs_from_stats_kernel(float *probs, const float *logits, const SoftmaxStats *stats, int N,
                                               int V, int Vp) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * Vp) return;
    int row = (int)(i / Vp), v = (int)(i % Vp);
    SoftmaxStats s = stats[row];
    probs[i] = v < V ? expf(logits[i] - s.max) * s.inv_sum : 0.0f;
}

static void test_classifier_shape(int N, int V, int Vp, double tol) {
    char name[128];
    size_t n = (size_t)N * Vp;
    Floats logits = random_floats(n, -4, 4);
    for (int r = 0; r < N; r++)
        for (int v = V; v < Vp; v++) logits[(size_t)r * Vp + v] = NAN;
    std::vector<int> targets(N);
    for (int r = 0; r < N; r++) targets[r] = (int)(splitmix64_next(&rng_state) % V);
    targets[0] = V - 1;
    Floats probs(n), losses(N);
    classifier_forward(probs.data(), losses.data(), logits.data(), targets.data(), N, V, Vp);

    // fp64 references: probabilities, losses, and the losses' scales.
    Floats exact, exact_losses(N), loss_scale(N);
    for (int r = 0; r < N; r++) {
        const float *z = &logits[(size_t)r * Vp];
        softmax_fp64(exact, z, V, Vp);
        double m = -INFINITY, sum = 0.0;
        for (int v = 0; v < V; v++) m = fmax(m, (double)z[v]);
        for (int v = 0; v < V; v++) sum += exp((double)z[v] - m);
        exact_losses[r] = (float)(log(sum) + m - z[targets[r]]);
        loss_scale[r] = (float)(1.0 + fabs(log(sum)) + fabs(m) + fabs((double)z[targets[r]]));
    }

    float *d_logits = to_device(logits), *d_probs = device_floats(n), *d_losses = device_floats(N);
    SoftmaxStats *d_stats = (SoftmaxStats *)cuda_malloc_checked((size_t)N * sizeof(SoftmaxStats), "test stats");
    int *d_targets = to_device_ints(targets);
    classifier_forward_gpu(d_stats, d_losses, d_logits, d_targets, N, V, Vp, stream);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d Vp=%d) logits kept", N, V, Vp);
    check_bits(name, to_host(d_logits, n), logits);
    Floats got_losses = to_host(d_losses, N);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d Vp=%d) losses", N, V, Vp);
    check_close_scaled(name, got_losses, losses, loss_scale, tol);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d Vp=%d) losses vs fp64", N, V, Vp);
    check_close_scaled(name, got_losses, exact_losses, loss_scale, 2e-5);

    probs_from_stats_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(d_probs, d_logits, d_stats, N, V, Vp);
    CUDA_CHECK_LAUNCH();
    Floats got_probs = to_host(d_probs, n);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d Vp=%d) stats' probs", N, V, Vp);
    check_relative(name, got_probs, probs, tol);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d Vp=%d) stats' probs vs fp64", N, V, Vp);
    check_relative(name, got_probs, exact, 2e-5);
    Floats stats = to_host((const float *)d_stats, 2 * (size_t)N);  // {max, inv_sum} per row

    // Without targets: the same statistics, losses untouched.
    Floats sentinel(N, 12345.0f);
    upload(d_losses, sentinel);
    classifier_forward_gpu(d_stats, d_losses, d_logits, NULL, N, V, Vp, stream);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d) no targets: stats", N, V);
    check_bits(name, to_host((const float *)d_stats, 2 * (size_t)N), stats);
    snprintf(name, sizeof name, "classifier_forward (N=%d V=%d) no targets: losses kept", N, V);
    check_bits(name, to_host(d_losses, N), sentinel);

    // Backward in place over the logits (NaN padding included): every element overwritten.
    float dloss = 1.0f / (float)N;
    Floats same_stats(n, 0.0f), from_cpu(n, 0.0f), scale(n);
    classifier_backward(same_stats.data(), got_probs.data(), targets.data(), dloss, N, V, Vp);
    classifier_backward(from_cpu.data(), probs.data(), targets.data(), dloss, N, V, Vp);
    for (size_t i = 0; i < n; i++) {
        int r = (int)(i / Vp), v = (int)(i % Vp);
        scale[i] = positive_scale((double)dloss * (probs[i] + (v == targets[r] ? 1.0 : 0.0)));
    }
    classifier_backward_gpu(d_logits, d_logits, d_stats, d_targets, dloss, N, V, Vp, stream);
    Floats got = to_host(d_logits, n);
    snprintf(name, sizeof name, "classifier_backward (N=%d V=%d Vp=%d) same stats bits", N, V, Vp);
    check_bits(name, got, same_stats);
    snprintf(name, sizeof name, "classifier_backward (N=%d V=%d Vp=%d) vs CPU probs", N, V, Vp);
    check_close_scaled(name, got, from_cpu, scale, tol);

    cudaFree(d_logits);
    cudaFree(d_probs);
    cudaFree(d_losses);
    cudaFree(d_stats);
    cudaFree(d_targets);
}

static void test_classifier(void) {
    test_classifier_shape(2 * 37, 65, 128, 2e-5);  // padded vocabulary
    test_classifier_shape(3, 50257, 50304, 1e-4);  // GPT-2's vocabulary (tolerance: see above)
}

// ---------------------------------------------------------------------------------------------------------
// attention: the GPU pieces composed with a naive batched product (the backend uses cuBLASLt instead)
// against attention_forward / attention_backward of the CPU in fp32. The permutations move values without
// arithmetic and must be bit-identical; the bf16 split must equal bf16_from_f32 bit for bit. The products
// sum hs = 18 or T = 37 terms in another order than the CPU's, the softmax sums T terms, expf may differ by
// an ulp or two. Scales (attention_scales), each with 1e-5:
//  - S = scale * max over the row of sum |q_i k_i|: the size of the terms of the row's scores. A score's
//    absolute error (<= 2^-24 * hs * S in the worst case) is its probability's relative error, so att is
//    compared relative to p * (1 + S) (the 1: the sum of T exponentials and expf); an exact 0 above the
//    diagonal must stay 0;
//  - out = sum p v: relative to (1 + S) * sum p |v| (the terms; the probabilities' error carried through);
//  - dqkv: relative to |dqkv_initial| + (1 + S_head) * the backward evaluated on magnitudes (datt = dy . v
//    -> sum |dy||v|, the softmax backward p (datt - sum p datt) -> p (|datt| + sum p |datt|), dq, dk, dv the
//    sums of |terms|), S_head the head's largest S, since the GPU continues from its own probabilities.
// The worst case of the composed backward (about 100 roundings deep, on both sides) would be 1.2e-5; the
// typical sqrt-depth error is ten times smaller, which is what 1e-5 rests on.

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

// The scales of the attention checks (see above), from the CPU's probabilities, in fp64.
// att_scale: (B, NH, T, T); out_scale: (B, T, C); dqkv_scale: (B, T, 3C); qkv, dqkv0: (B, T, 3C);
// dout: (B, T, C).
static void attention_scales(Floats &att_scale, Floats &out_scale, Floats &dqkv_scale, const Floats &qkv,
                             const Floats &att, const Floats &dout, const Floats &dqkv0, int B, int T, int C, int NH) {
    int hs = C / NH;
    size_t row = 3 * (size_t)C;  // between positions in qkv
    double scale = 1.0 / sqrt((double)hs);
    att_scale.assign((size_t)B * NH * T * T, 0.0f);
    out_scale.assign((size_t)B * T * C, 0.0f);
    dqkv_scale.resize(dqkv0.size());
    std::vector<double> S(T), datt_abs(T), back((size_t)T * 3 * hs);  // back: (T, 3 hs) dq, dk, dv of the head
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = &qkv[(size_t)b * T * row + h * hs], *k = q + C, *v = q + 2 * C;  // [t * row + i]
            const float *p = &att[((size_t)b * NH + h) * T * T];                            // (T, T)
            const float *dy = &dout[(size_t)b * T * C + h * hs];                            // [t * C + i]
            double S_head = 0.0;
            for (int t = 0; t < T; t++) {
                S[t] = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    double terms = 0.0;
                    for (int i = 0; i < hs; i++) terms += fabs((double)q[t * row + i] * k[t2 * row + i]);
                    S[t] = fmax(S[t], scale * terms);
                }
                S_head = fmax(S_head, S[t]);
                float *a = &att_scale[(((size_t)b * NH + h) * T + t) * T];
                for (int t2 = 0; t2 < T; t2++) a[t2] = positive_scale(p[(size_t)t * T + t2] * (1.0 + S[t]));
                for (int i = 0; i < hs; i++) {
                    double terms = 0.0;
                    for (int t2 = 0; t2 <= t; t2++) terms += p[(size_t)t * T + t2] * fabs((double)v[t2 * row + i]);
                    out_scale[((size_t)b * T + t) * C + h * hs + i] = positive_scale((1.0 + S[t]) * terms);
                }
            }
            for (size_t j = 0; j < back.size(); j++) back[j] = 0.0;
            for (int t = 0; t < T; t++) {
                double weighted_abs = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    datt_abs[t2] = 0.0;
                    for (int i = 0; i < hs; i++) datt_abs[t2] += fabs((double)dy[t * C + i] * v[t2 * row + i]);
                    weighted_abs += p[(size_t)t * T + t2] * datt_abs[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    double pt = p[(size_t)t * T + t2], dscore_abs = pt * (datt_abs[t2] + weighted_abs) * scale;
                    for (int i = 0; i < hs; i++) {
                        back[(size_t)t * 3 * hs + i] += dscore_abs * fabs((double)k[t2 * row + i]);       // dq[t]
                        back[(size_t)t2 * 3 * hs + hs + i] += dscore_abs * fabs((double)q[t * row + i]);  // dk[t2]
                        back[(size_t)t2 * 3 * hs + 2 * hs + i] += pt * fabs((double)dy[t * C + i]);       // dv[t2]
                    }
                }
            }
            for (int t = 0; t < T; t++)
                for (int part = 0; part < 3; part++)
                    for (int i = 0; i < hs; i++) {
                        size_t at = ((size_t)b * T + t) * row + (size_t)part * C + h * hs + i;
                        double terms = back[(size_t)t * 3 * hs + part * hs + i];
                        dqkv_scale[at] = positive_scale(fabs((double)dqkv0[at]) + (1.0 + S_head) * terms);
                    }
        }
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
    attention_split_qkv_gpu(d_h, d_h + n, d_h + 2 * n, d_qkv, B, T, C, NH, stream);
    Codes want_h(3 * n);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < 3 * C; j++) {
                size_t src = ((size_t)b * T + t) * 3 * C + j;
                size_t dst = (size_t)(j / C) * n + host_head_index(b, t, j % C, T, NH, hs);
                want_h[dst] = bf16_from_f32(special[src]);
            }
    check_bf16_codes("attention_split_qkv into bf16 (specials) bits", to_host_bf16(d_h, 3 * n), want_h, 0);

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

// ---------------------------------------------------------------------------------------------------------
// flash attention (kernels/flash_attention.cuh) against its C reference (src/cpu/attention_tiled.c) on the
// same cast operands, for T across the 64-row tiles (1, 7, 63, 64, 65, 130) and head sizes 64 and 16.
// fp32 operands (fp32 activations): the kernels sum every output in the C reference's order, so only expf
// and logf differ (CUDA's within 2 ulps, glibc's within 1): each tensor within 1e-5 of its norm, element
// errors within 1e-5 of the tensor's largest magnitude. bf16 operands (bf16 activations, tensor cores): the
// products sum in another order (~1e-6 relative) and a probability or score gradient that lands near a bf16
// rounding boundary may round the other way (2^-8 of one term): each tensor within 5e-3 of its norm, elements
// within 2e-2 of the largest magnitude; a wrong mask, tile or product errs by order 1. Then determinism: two
// GPU runs give the same bits.

static double norm_of(const Floats &x, size_t begin, size_t end, size_t step, size_t width) {
    double sum = 0.0;
    for (size_t row = begin; row < end; row += step)
        for (size_t i = row; i < row + width; i++) sum += (double)x[i] * x[i];
    return sqrt(sum);
}

// got vs want over the `width` elements at begin, begin + step, ... (one part of an interleaved tensor).
static void check_tensor_close(const char *name, const Floats &got, const Floats &want, size_t step, size_t begin,
                               size_t width, double norm_tol, double max_tol) {
    double diff = 0.0, largest = 0.0, worst = 0.0;
    for (size_t row = begin; row < want.size(); row += step)
        for (size_t i = row; i < row + width; i++) {
            double d = (double)got[i] - want[i];
            diff += d * d;
            largest = fmax(largest, fabs(want[i]));
            worst = fmax(worst, fabs(d));
        }
    double norm = norm_of(want, begin, want.size(), step, width);
    printf("%-56s error norm %.3g of %.3g, largest error %.3g\n", name, sqrt(diff), norm, worst);
    CHECK(sqrt(diff) <= norm_tol * norm + 1e-30 && worst <= max_tol * largest + 1e-30,
          "%s: error norm %g of %g, largest error %g of largest %g", name, sqrt(diff), norm, worst, largest);
}

static Floats cast_floats(const Floats &x, const OperandCast *cast) {
    Floats y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = quantize_operand_value(x[i], cast);
    return y;
}

static Floats round_floats_bf16(const Floats &x) {
    Floats y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = round_bf16(x[i]);
    return y;
}

static Codes bf16_codes(const Floats &x) {
    Codes c(x.size());
    for (size_t i = 0; i < x.size(); i++) c[i] = bf16_from_f32(x[i]);
    return c;
}

static Floats floats_of_codes(const Codes &c) {
    Floats x(c.size());
    for (size_t i = 0; i < c.size(); i++) x[i] = bf16_to_f32(c[i]);
    return x;
}

typedef struct {
    Floats out, lse, dqkv, partials;
    Codes dqkv_bf16;
} FlashResult;

// One forward and backward on the GPU; Act = float or __nv_bfloat16 (qkv already Act-exact).
template <typename Act>
static FlashResult flash_on_gpu(const Floats &qkv, const Floats &dout, int B, int T, int C, int NH,
                                const OperandCast &cast) {
    size_t n = (size_t)B * T * C, rows = (size_t)B * NH * T;
    Act *d_qkv, *d_out;
    if (sizeof(Act) == sizeof(float)) {
        d_qkv = (Act *)to_device(qkv);
        d_out = (Act *)device_floats(n);
    } else {
        d_qkv = (Act *)to_device_bf16(bf16_codes(qkv));
        d_out = (Act *)cuda_malloc_checked(n * 2 + 4, "test buffer");
    }
    float *d_lse = device_floats(rows), *d_scratch = device_floats(rows), *d_dout = to_device(dout);
    float *d_dqkv = device_floats(3 * n);
    size_t n_partials = (size_t)flash_partial_rows(B, T) * 3 * C;
    float *d_partials = device_floats(n_partials);
    __nv_bfloat16 *d_dqkv_bf16 = (__nv_bfloat16 *)cuda_malloc_checked(3 * n * 2 + 4, "test buffer");
    CUDA_CHECK(cudaMemset(d_dqkv, 0xff, 3 * n * sizeof(float)));  // NaN: every element must be overwritten
    CUDA_CHECK(cudaMemset(d_partials, 0xff, n_partials * sizeof(float)));
    flash_attention_forward_gpu<Act>(d_out, d_lse, d_qkv, B, T, C, NH, cast, stream);
    FlashGradients grads = {d_dqkv, d_dqkv_bf16, d_partials};
    flash_attention_backward_gpu<Act>(&grads, d_dout, d_qkv, d_out, d_lse, d_scratch, B, T, C, NH, cast, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    FlashResult r;
    r.out = sizeof(Act) == sizeof(float) ? to_host((float *)d_out, n) : floats_of_codes(to_host_bf16(d_out, n));
    r.lse = to_host(d_lse, rows);
    r.dqkv = to_host(d_dqkv, 3 * n);
    r.dqkv_bf16 = to_host_bf16(d_dqkv_bf16, 3 * n);
    r.partials = to_host(d_partials, n_partials);
    CUDA_CHECK(cudaFree(d_partials));
    CUDA_CHECK(cudaFree(d_qkv)); CUDA_CHECK(cudaFree(d_out)); CUDA_CHECK(cudaFree(d_lse));
    CUDA_CHECK(cudaFree(d_scratch)); CUDA_CHECK(cudaFree(d_dout)); CUDA_CHECK(cudaFree(d_dqkv));
    CUDA_CHECK(cudaFree(d_dqkv_bf16));
    return r;
}

template <typename Act>
static void test_flash_attention_shape(int B, int T, int C, int NH, const OperandCast &cast, double norm_tol,
                                       double max_tol) {
    size_t n = (size_t)B * T * C, rows = (size_t)B * NH * T;
    int bf16_acts = sizeof(Act) == 2;
    char name[128];
    snprintf(name, sizeof name, "flash attention %s B=%d T=%d C=%d NH=%d", bf16_acts ? "bf16" : "fp32", B, T, C, NH);
    Floats qkv = random_floats(3 * n, -1.5f, 1.5f), dout = random_floats(n, -1, 1);
    if (bf16_acts) qkv = round_floats_bf16(qkv);
    FlashResult got = flash_on_gpu<Act>(qkv, dout, B, T, C, NH, cast);

    // The C reference: operands cast as the kernels cast them on load; out stored as Act (the backward's D
    // reads the stored out).
    Floats qkv_cast = cast_floats(qkv, &cast), dout_cast = cast_floats(dout, &cast);
    Floats out(n), lse(rows), dqkv(3 * n);
    attention_tiled_forward(out.data(), lse.data(), qkv_cast.data(), B, T, C, NH, &cast);
    if (bf16_acts) out = round_floats_bf16(out);
    attention_tiled_backward(dqkv.data(), dout_cast.data(), qkv_cast.data(), out.data(), lse.data(), B, T, C, NH, &cast);
    char what[192];
    snprintf(what, sizeof what, "%s out", name);
    check_tensor_close(what, got.out, out, n, 0, n, norm_tol, max_tol);
    snprintf(what, sizeof what, "%s lse", name);
    check_tensor_close(what, got.lse, lse, rows, 0, rows, 1e-5, 1e-5);
    const char *parts[3] = {"dq", "dk", "dv"};
    for (int part = 0; part < 3; part++) {
        snprintf(what, sizeof what, "%s %s", name, parts[part]);
        check_tensor_close(what, got.dqkv, dqkv, 3 * (size_t)C, (size_t)part * C, (size_t)C, norm_tol, max_tol);
    }
    Codes want_bf16(3 * n);
    for (size_t i = 0; i < 3 * n; i++) want_bf16[i] = bf16_from_f32(got.dqkv[i]);
    snprintf(what, sizeof what, "%s dqkv_bf16 (the bf16 rounding of dqkv) bits", name);
    check_bf16_codes(what, got.dqkv_bf16, want_bf16, 0);
    // The column partials: per query tile of each sequence, the sum of its rows of dqkv in order (fp32, as
    // the kernel adds them): bits.
    int tiles = (T + ATTENTION_TILE_Q - 1) / ATTENTION_TILE_Q;
    Floats want_partials((size_t)B * tiles * 3 * C);
    for (int b = 0; b < B; b++)
        for (int tile = 0; tile < tiles; tile++)
            for (int c = 0; c < 3 * C; c++) {
                float sum = 0.0f;
                for (int t = tile * ATTENTION_TILE_Q; t < T && t < (tile + 1) * ATTENTION_TILE_Q; t++)
                    sum += got.dqkv[((size_t)b * T + t) * 3 * C + c];
                want_partials[((size_t)b * tiles + tile) * 3 * C + c] = sum;
            }
    snprintf(what, sizeof what, "%s dqkv column partials bits", name);
    check_bits(what, got.partials, want_partials);

    FlashResult again = flash_on_gpu<Act>(qkv, dout, B, T, C, NH, cast);
    CHECK(memcmp(again.out.data(), got.out.data(), n * 4) == 0 && memcmp(again.lse.data(), got.lse.data(), rows * 4) == 0 &&
              memcmp(again.dqkv.data(), got.dqkv.data(), 3 * n * 4) == 0,
          "%s: two runs give different bits", name);
}

static void test_flash_attention(void) {
    OperandCast fp32 = {MATMUL_FP32, exmy_e4m3(), ROUND_NEAREST_EVEN, 1.0f};
    OperandCast bf16 = {MATMUL_BF16, exmy_e4m3(), ROUND_NEAREST_EVEN, 1.0f};
    int lengths[] = {1, 7, 63, 64, 65, 130};
    for (int t = 0; t < 6; t++) {
        test_flash_attention_shape<float>(2, lengths[t], 128, 2, fp32, 1e-5, 1e-5);  // head size 64
        test_flash_attention_shape<float>(2, lengths[t], 48, 3, fp32, 1e-5, 1e-5);   // head size 16
        test_flash_attention_shape<__nv_bfloat16>(2, lengths[t], 128, 2, bf16, 5e-3, 2e-2);
        test_flash_attention_shape<__nv_bfloat16>(2, lengths[t], 48, 3, bf16, 5e-3, 2e-2);
    }
    test_flash_attention_shape<float>(1, 130, 256, 2, fp32, 1e-5, 1e-5);  // head size 128: the most shared memory
    test_flash_attention_shape<__nv_bfloat16>(1, 130, 256, 2, bf16, 5e-3, 2e-2);
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
    Floats att_scale, out_scale, dqkv_scale;
    attention_scales(att_scale, out_scale, dqkv_scale, qkv, att, dout, dqkv, B, T, C, NH);
    float *d_qkv = to_device(qkv), *d_q = device_floats(n), *d_k = device_floats(n), *d_v = device_floats(n);
    float *d_att = device_floats(tt), *d_y = device_floats(n), *d_out = device_floats(n);
    Strides per_head = {(long)T * hs, hs, 1}, per_head_t = {(long)T * hs, 1, hs};  // (T, hs) and its transpose
    Strides square = {(long)T * T, T, 1}, square_t = {(long)T * T, 1, T};           // (T, T) and its transpose
    attention_split_qkv_gpu(d_q, d_k, d_v, d_qkv, B, T, C, NH, stream);
    product(d_att, d_q, per_head, d_k, per_head_t, BH, T, T, hs);          // scores = q k^T
    attention_softmax_forward_gpu(d_att, NULL, d_att, B, NH, T, scale, stream);  // in place: att aliases scores
    product(d_y, d_att, square, d_v, per_head, BH, T, hs, T);              // y = att v
    attention_merge_heads_gpu(d_out, d_y, B, T, C, NH, stream);
    check_close_scaled("attention forward (2x37x72, NH=4) out", to_host(d_out, n), out, out_scale, 1e-5);
    check_close_scaled("attention forward (2x37x72, NH=4) att", to_host(d_att, tt), att, att_scale, 1e-5);

    // Backward: the GPU continues from its own probabilities, as the backend does.
    float *d_dout = to_device(dout), *d_dqkv = to_device(dqkv), *d_dy = device_floats(n), *d_datt = device_floats(tt);
    float *d_dq = device_floats(n), *d_dk = device_floats(n), *d_dv = device_floats(n);
    attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), B, T, C, NH, &fp32);
    attention_split_heads_gpu(d_dy, d_dout, B, T, C, NH, stream);
    product(d_datt, d_dy, per_head, d_v, per_head_t, BH, T, T, hs);  // datt = dy v^T
    product(d_dv, d_att, square_t, d_dy, per_head, BH, T, hs, T);    // dv = att^T dy
    attention_softmax_backward_gpu(d_datt, NULL, d_datt, d_att, B, NH, T, scale, stream);  // in place: dscores
    product(d_dq, d_datt, square, d_k, per_head, BH, T, hs, T);    // dq = dscores k
    product(d_dk, d_datt, square_t, d_q, per_head, BH, T, hs, T);  // dk = dscores^T q
    attention_merge_qkv_grad_gpu(d_dqkv, d_dq, d_dk, d_dv, B, T, C, NH, stream);
    check_close_scaled("attention backward (2x37x72, NH=4) dqkv", to_host(d_dqkv, 3 * n), dqkv, dqkv_scale, 1e-5);

    // The softmax on its own, out of place, must give the in-place result's bits.
    Floats att_in_place = to_host(d_att, tt);
    float *d_scores = device_floats(tt);
    product(d_scores, d_q, per_head, d_k, per_head_t, BH, T, T, hs);
    attention_softmax_forward_gpu(d_att, NULL, d_scores, B, NH, T, scale, stream);
    check_bits("attention_softmax_forward out of place = in place", to_host(d_att, tt), att_in_place);

    // The bf16 outputs of bf16 attention: the forward also writes bf16(att) (and the same fp32 att), the
    // backward only bf16(dscores); both the bits of casting the fp32 results (bf16_from_f32).
    __nv_bfloat16 *d_bf16 = (__nv_bfloat16 *)cuda_malloc_checked(tt * sizeof(__nv_bfloat16), "test attention bf16");
    attention_softmax_forward_gpu(d_att, d_bf16, d_scores, B, NH, T, scale, stream);
    check_bits("attention_softmax_forward with a bf16 copy: att bits", to_host(d_att, tt), att_in_place);
    Codes want(tt);
    for (size_t i = 0; i < tt; i++) want[i] = bf16_from_f32(att_in_place[i]);
    check_bf16_codes("attention_softmax_forward bf16 copy bits", to_host_bf16(d_bf16, tt), want, 0);
    float *d_datt_again = device_floats(tt), *d_dscores = device_floats(tt);
    product(d_datt_again, d_dy, per_head, d_v, per_head_t, BH, T, T, hs);
    attention_softmax_backward_gpu(d_dscores, NULL, d_datt_again, d_att, B, NH, T, scale, stream);
    Floats dscores = to_host(d_dscores, tt);
    check_bits("attention_softmax_backward out of place = in place", dscores, to_host(d_datt, tt));
    attention_softmax_backward_gpu(NULL, d_bf16, d_datt_again, d_att, B, NH, T, scale, stream);
    for (size_t i = 0; i < tt; i++) want[i] = bf16_from_f32(dscores[i]);
    check_bf16_codes("attention_softmax_backward bf16 output bits", to_host_bf16(d_bf16, tt), want, 0);
    cudaFree(d_bf16);

    float *buffers[] = {d_qkv, d_q, d_k, d_v, d_att, d_y, d_out, d_dout, d_dqkv, d_dy, d_datt, d_dq, d_dk, d_dv, d_scores,
                        d_datt_again, d_dscores};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) cudaFree(buffers[i]);
}

// ---------------------------------------------------------------------------------------------------------
// quantize: every element through the shared quantize_operand_value / bf16_from_f32, so the bits must be
// the CPU's (NaN only needs to be NaN on both sides for the arithmetic casts, as in test_numerics_device).
// A scale read from device memory is the same scale. amax: an exact max, so bit-identical, NaN included
// (tensor_amax returns NAN, 0x7fc00000).

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
        quantize_operand_gpu(d_out, d_inp, n, casts[k].cast, NULL, stream);
        check_bits_or_both_nan(casts[k].name, to_host(d_out, n), out);
    }
    // The fp8 e4m3 cast with its scale in device memory (the cast's own scale is a wrong 1).
    Floats out(n), device_scale(1, casts[6].cast.scale);
    quantize_operand(out.data(), inp.data(), n, &casts[6].cast);
    float *d_scale = to_device(device_scale);
    OperandCast unscaled = casts[6].cast;
    unscaled.scale = 1.0f;
    quantize_operand_gpu(d_out, d_inp, n, unscaled, d_scale, stream);
    check_bits_or_both_nan("quantize_operand fp8 e4m3 device scale 3.5 bits", to_host(d_out, n), out);
    cudaFree(d_scale);
    // In place (out == inp), as quantize_operand allows.
    Floats in_place(n);
    quantize_operand(in_place.data(), inp.data(), n, &casts[2].cast);
    quantize_operand_gpu(d_inp, d_inp, n, casts[2].cast, NULL, stream);
    check_bits_or_both_nan("quantize_operand e3m2 in place bits", to_host(d_inp, n), in_place);
    upload(d_inp, inp);

    __nv_bfloat16 *d_h = (__nv_bfloat16 *)cuda_malloc_checked(n * sizeof(__nv_bfloat16), "test bf16");
    convert_gpu(d_h, d_inp, n, stream);
    Codes want(n);
    for (size_t i = 0; i < n; i++) want[i] = bf16_from_f32(inp[i]);
    check_bf16_codes("convert fp32 -> bf16 (NaN payloads included) bits", to_host_bf16(d_h, n), want, 0);
    // And back: bf16 -> fp32 is exact; the quantize cast of bf16 values (an fp32 cast) likewise.
    Floats widened(n);
    for (size_t i = 0; i < n; i++) widened[i] = bf16_to_f32(want[i]);
    convert_gpu(d_out, d_h, n, stream);
    check_bits_or_both_nan("convert bf16 -> fp32 bits", to_host(d_out, n), widened);
    quantize_operand_gpu(d_out, d_h, n, casts[2].cast, NULL, stream);
    Floats from_bf16(n);
    quantize_operand(from_bf16.data(), widened.data(), n, &casts[2].cast);
    check_bits_or_both_nan("quantize_operand e3m2 of bf16 values bits", to_host(d_out, n), from_bf16);
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

// fp8 scale state on the device against linear_casts' host state: the same sequence of uses (forward
// inputs and weights, output gradients, backward re-casts that only read the forward's scales), forward
// recordings at backward ends, and an evaluation forward that must leave the histories alone, over a few
// steps, with amaxes that include 0, inf and NaN (no usable amax: the previous rule applies). The scales and
// histories are the same functions on both sides: bits.
static void test_fp8_scale_state(ScalingMode mode) {
    MatmulPrecision fp8 = {};
    fp8.format = MATMUL_FP8;
    fp8.scaling = mode;
    fp8.amax_history = 3;
    fp8.margin = 1;
    const int n_layer = 2;
    LinearCasts host;
    linear_casts_init(&host, &fp8, n_layer);
    int count = host.count;
    size_t history_floats = mode == SCALING_DELAYED ? (size_t)count * fp8.amax_history : 0;
    Fp8ScaleState device = host.state;
    device.scales = to_device(Floats(host.state.scales, host.state.scales + count));
    device.forward_amax = to_device(Floats(count, 0.0f));
    device.scaling.history = history_floats ? to_device(Floats(history_floats, 0.0f)) : NULL;
    float *d_amax = device_floats(1);
    Floats amaxes = {3.0f, 0.5f, 0.0f, 1000.0f, INFINITY, NAN, 2e-30f, 7.0f};
    size_t next = 0;
    for (int step = 0; step < 4; step++) {
        for (int pass = 0; pass < 2; pass++) {  // pass 1: an evaluation forward (no backward follows)
            int training = pass == 0;
            for (int backward = 0; backward <= training; backward++) {
                for (int l = 0; l < n_layer; l++)
                    for (int linear = 0; linear < NUM_BLOCK_LINEARS; linear++)
                        for (int role = 0; role < NUM_OPERAND_ROLES; role++) {
                            if (!backward && role == OPERAND_OUTPUT_GRAD) continue;
                            OperandRole r = (OperandRole)role;
                            float amax = amaxes[next++ % amaxes.size()] * (float)(1 + step);
                            OperandCast want = linear_cast_of_use(&host, l, (BlockLinear)linear, r, backward, amax);
                            int id = linear_operand_id(l, (BlockLinear)linear, r);
                            if (linear_cast_needs_amax(&host, r, backward)) {
                                upload(d_amax, Floats(1, amax));
                                fp8_scale_of_use_gpu(&device, id, r == OPERAND_OUTPUT_GRAD, d_amax,
                                                     want.grid.max_finite, stream);
                            }
                            Floats got = to_host(device.scales + id, 1);
                            check_bits(mode == SCALING_DELAYED ? "fp8 delayed scale of a use bits"
                                                               : "fp8 current scale of a use bits",
                                       got, Floats(1, want.scale));
                        }
                if (!backward) linear_casts_forward_done(&host);
            }
            if (training) {
                linear_casts_backward_done(&host);
                fp8_record_forward_gpu(&device, count, stream);
            }
        }
        if (history_floats)
            check_bits("fp8 delayed amax histories after a step bits", to_host(device.scaling.history, history_floats),
                       Floats(host.state.scaling.history, host.state.scaling.history + history_floats));
    }
    cudaFree(d_amax);
    cudaFree(device.scales);
    cudaFree(device.forward_amax);
    if (device.scaling.history) cudaFree(device.scaling.history);
    linear_casts_free(&host);
}

// ---------------------------------------------------------------------------------------------------------
// gradients: element-wise conversions through src/numerics/bf16.h, the CPU backend's functions (bf16 gradient
// accumulation bf16(bf16_to_f32(g) + s), the compute copy bf16_to_f32, the rounding of reduced gradients
// bf16_from_f32): bit-identical, NaN payloads included where no arithmetic touches them; a NaN produced by
// the sum need only be NaN on both sides (the GPU's addition returns the canonical NaN).

// A stored bf16 gradient and the fp32 addend of a micro-step: cast inputs of every kind, addends of exactly
// half a bf16 ulp of the gradient (the fp32 sum is a tie: nearest-even decides), the negated gradient (an
// exact zero), the gradient itself (overflow to inf from the largest finite values), small addends.
static void random_accumulate_pair(uint16_t *g, float *s) {
    uint64_t r = splitmix64_next(&rng_state);
    *g = bf16_from_f32(random_cast_input());
    float gv = bf16_to_f32(*g);
    int finite_nonzero = isfinite(gv) && gv != 0.0f;
    switch (r % 6) {
    case 0: *s = random_cast_input(); break;
    case 1:  // a tie; bf16 subnormals have the ulp of the smallest normal exponent
        *s = finite_nonzero ? ldexpf((r >> 8) & 1 ? 1.0f : -1.0f, (ilogbf(gv) > -126 ? ilogbf(gv) : -126) - 8)
                            : uniform(-1, 1);
        break;
    case 2: *s = -gv; break;
    case 3: *s = gv; break;
    case 4: *s = finite_nonzero ? gv * ldexpf(uniform(-1, 1), -(int)((r >> 8) % 12)) : uniform(-1, 1); break;
    default: *s = uniform(-2, 2); break;
    }
}

static void test_gradients(void) {
    // bf16_to_f32: every bf16 code (subnormals, infinities, NaN payloads), and 7 more past a block.
    const size_t codes_n = 65536 + 7;
    Codes codes(codes_n);
    for (size_t i = 0; i < codes_n; i++) codes[i] = (uint16_t)i;
    Floats want(codes_n);
    for (size_t i = 0; i < codes_n; i++) want[i] = bf16_to_f32(codes[i]);
    uint16_t *d_codes = to_device_bf16(codes);
    float *d_f = device_floats(codes_n);
    bf16_to_f32_gpu(d_f, d_codes, codes_n, stream);
    check_bits("bf16_to_f32 (every code) bits", to_host(d_f, codes_n), want);
    cudaFree(d_codes);
    cudaFree(d_f);

    // f32_to_bf16: ties, subnormals, specials, NaN payloads.
    const size_t n = (1u << 16) + 7;
    Floats x(n);
    for (size_t i = 0; i < n; i++) x[i] = random_cast_input();
    Codes rounded(n);
    for (size_t i = 0; i < n; i++) rounded[i] = bf16_from_f32(x[i]);
    float *d_x = to_device(x);
    uint16_t *d_h = (uint16_t *)cuda_malloc_checked(n * sizeof(uint16_t), "test bf16");
    f32_to_bf16_gpu(d_h, d_x, n, stream);
    check_bf16_codes("f32_to_bf16 (NaN payloads included) bits", to_host_bf16(d_h, n), rounded, 0);

    // accumulate_bf16: two micro-steps into the same gradients.
    Codes grads(n);
    Floats scratch(n);
    for (size_t i = 0; i < n; i++) random_accumulate_pair(&grads[i], &scratch[i]);
    uint16_t *d_grads = to_device_bf16(grads);
    for (int step = 0; step < 2; step++) {
        if (step == 1)  // ordinary addends of many magnitudes
            for (size_t i = 0; i < n; i++)
                scratch[i] = uniform(-1, 1) * ldexpf(1.0f, (int)(splitmix64_next(&rng_state) % 40) - 20);
        upload(d_x, scratch);
        for (size_t i = 0; i < n; i++) grads[i] = bf16_from_f32(bf16_to_f32(grads[i]) + scratch[i]);
        accumulate_bf16_gpu(d_grads, d_x, n, stream);
        check_bf16_codes(step == 0 ? "accumulate_bf16 (ties, specials) bits" : "accumulate_bf16 second micro-step bits",
                         to_host_bf16(d_grads, n), grads, 1);
    }
    cudaFree(d_x);
    cudaFree(d_h);
    cudaFree(d_grads);
}

// ---------------------------------------------------------------------------------------------------------
// optimizer reductions and DQT decoding, over the real chunk list of a small GPT-2 (param_layout_init) with
// DQT storage from dqt_init_storage:
//  - grad_square_sums: each chunk's sum of squares of the stored gradients in double (a float's square is
//    exact in double). The host sums in parameter order (as the CPU backend does), the GPU in 256 strided
//    runs of <= 32 terms, then warp and block trees: both within gamma_8192 (9.1e-13) of the exact sum of
//    positive terms for a chunk of 8192, the GPU within 43 * 2^-53 (4.8e-15), so they agree within 1e-12
//    relative even in the worst case. Chunks outside [first, end) must not be written.
//  - dqt_decode: dqt_decoded_weight per element on both sides (a code times its slice's scale, or the fp32
//    1-D parameter): bit-identical, every parameter written.

static void test_optimizer_reductions(void) {
    ModelShape shape;
    memset(&shape, 0, sizeof shape);
    shape.n_layer = 2;
    shape.n_head = 2;
    shape.n_embd = 64;
    shape.block_size = 32;
    shape.vocab_size = 96;  // padded to 128
    ParamTable table;
    param_table_init(&table, &shape);
    Policy policy;
    memset(&policy, 0, sizeof policy);
    policy.weights = WEIGHTS_INT_GRID;
    policy.grid_bits = 8;
    policy.update = UPDATE_GRID_SR;
    ParamLayout layout;
    param_layout_init(&layout, &table, &policy, 1);
    size_t n = table.num_params;
    int num_chunks = layout.num_chunks;
    Chunk *d_chunks = (Chunk *)to_device_bytes(layout.chunks, (size_t)num_chunks * sizeof(Chunk));

    OptimizerBuffers host, device;  // the same offsets; host and device pointers
    memset(&host, 0, sizeof host);
    host.update = UPDATE_GRID_SR;
    host.grid_bits = 8;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        host.tensor_offset[t] = table.tensors[t].offset;
        host.dqt_offset[t] = layout.dqt_offset[t];
        host.dqt_store[t] = layout.dqt_store[t];
        host.is_matrix[t] = table.tensors[t].is_matrix;
    }
    device = host;

    // Gradients of many magnitudes (2^-20 .. 2^20), some exactly 0; fp32 and their bf16 storage.
    Floats grads(n);
    Codes grads16(n);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = splitmix64_next(&rng_state);
        grads[i] = r % 17 == 0 ? 0.0f : uniform(-1, 1) * ldexpf(1.0f, (int)((r >> 8) % 41) - 20);
        grads16[i] = bf16_from_f32(grads[i]);
    }
    float *d_grads = to_device(grads);
    uint16_t *d_grads16 = to_device_bf16(grads16);
    double *d_partial = (double *)cuda_malloc_checked((size_t)num_chunks * sizeof(double), "test partials");
    std::vector<double> sentinel(num_chunks, -1.0), got(num_chunks), want(num_chunks);
    for (int storage = 0; storage < 2; storage++)
        for (int range = 0; range < 2; range++) {
            host.grads = grads.data();
            host.grads_bf16 = storage ? grads16.data() : NULL;
            device.grads = d_grads;
            device.grads_bf16 = storage ? d_grads16 : NULL;
            int first = range ? 3 : 0, end = range ? num_chunks - 2 : num_chunks;  // range 1: a rank's share
            CUDA_CHECK(cudaMemcpy(d_partial, sentinel.data(), (size_t)num_chunks * sizeof(double),
                                  cudaMemcpyHostToDevice));
            grad_square_sums_gpu(&device, d_chunks, first, end, d_partial, stream);
            CUDA_CHECK(cudaStreamSynchronize(stream));
            CUDA_CHECK(cudaMemcpy(got.data(), d_partial, (size_t)num_chunks * sizeof(double), cudaMemcpyDeviceToHost));
            size_t bad = 0, worst_at = 0;
            double worst = 0.0;
            for (int c = 0; c < num_chunks; c++) {
                want[c] = -1.0;
                if (c >= first && c < end) {
                    want[c] = 0.0;
                    for (size_t i = layout.chunks[c].begin; i < layout.chunks[c].end; i++) {
                        double g = optimizer_stored_grad(&host, i);
                        want[c] += g * g;
                    }
                }
                double err = want[c] > 0.0 ? fabs(got[c] - want[c]) / want[c] : (got[c] == want[c] ? 0.0 : INFINITY);
                if (err > worst) {
                    worst = err;
                    worst_at = (size_t)c;
                }
                bad += !(err <= 1e-12);
            }
            char name[128];
            snprintf(name, sizeof name, "grad_square_sums %s grads, chunks [%d, %d) of %d", storage ? "bf16" : "fp32",
                     first, end, num_chunks);
            printf("%-56s %8d chunks, max error %.2e (tolerance 1e-12), %zu outside\n", name, num_chunks, worst, bad);
            CHECK(bad == 0, "%s: chunk %zu is %.17g, the host's %.17g", name, worst_at, got[worst_at], want[worst_at]);
        }

    // dqt_decode, one grid slice at a time as the passes decode them (chunk by chunk here: a slice's chunks
    // cover it): as initialised from GPT-2 init weights, then codes over the whole int8 range with scales of
    // many magnitudes. Every grid weight is dqt_decoded_weight's bits; the rest (1-D parameters) is not
    // written.
    DqtCounts counts = dqt_counts(&table, &policy);
    Floats init(n);
    gpt_init_params(&table, init.data(), 7);
    std::vector<int8_t> codes(counts.codes);
    Floats scales(counts.scales), vectors(counts.fp32);
    dqt_init_storage(&table, &layout, 8, init.data(), codes.data(), scales.data(), vectors.data(), NULL);
    // The chunks cover every parameter exactly once, so that the NaN fill of the device copy below must be
    // overwritten at every grid weight.
    std::vector<int> covered(n, 0);
    for (int c = 0; c < num_chunks; c++)
        for (size_t i = layout.chunks[c].begin; i < layout.chunks[c].end; i++) covered[i]++;
    size_t once = 0;
    for (size_t i = 0; i < n; i++) once += covered[i] == 1;
    printf("%-56s %8zu parameters, %zu in exactly one chunk\n", "dqt_decode chunk cover", n, once);
    CHECK(once == n, "the chunks cover %zu of %zu parameters exactly once", once, n);
    float *d_params = device_floats(n);
    for (int variant = 0; variant < 2; variant++) {
        if (variant == 1) {
            for (size_t i = 0; i < codes.size(); i++) codes[i] = (int8_t)(splitmix64_next(&rng_state) & 0xff);
            for (size_t s = 0; s < scales.size(); s++) scales[s] = uniform(0.5f, 1.0f) * ldexpf(1.0f, (int)s % 9 - 12);
            for (size_t i = 0; i < vectors.size(); i++) {  // infinities, subnormals, -0 among them; no NaN
                float v = random_cast_input();
                vectors[i] = isnan(v) ? 0.0f : v;
            }
        }
        int8_t *d_codes = (int8_t *)to_device_bytes(codes.data(), codes.size());
        float *d_scales = to_device(scales);
        upload(d_params, Floats(n, NAN));
        host.params = NULL;
        host.dqt_codes = codes.data();
        host.dqt_scales = scales.data();
        host.dqt_next_scales = host.dqt_scales;
        host.dqt_vectors = vectors.data();
        Floats decoded(n, NAN);
        for (int c = 0; c < num_chunks; c++) {
            const Chunk *chunk = &layout.chunks[c];
            if (chunk->slice < 0) continue;  // off the grid
            for (size_t i = chunk->begin; i < chunk->end; i++) decoded[i] = dqt_decoded_weight(&host, chunk, i);
            size_t code = layout.dqt_offset[chunk->tensor] + (chunk->begin - table.tensors[chunk->tensor].offset);
            dqt_decode_gpu(d_params + chunk->begin, d_codes + code, d_scales + chunk->slice, chunk->end - chunk->begin,
                           stream);
        }
        check_bits(variant ? "dqt_decode (random codes, scales, 1-D params) bits" : "dqt_decode (int8 from init) bits",
                   to_host(d_params, n), decoded);
        cudaFree(d_codes);
        cudaFree(d_scales);
    }

    cudaFree(d_params);
    cudaFree(d_partial);
    cudaFree(d_grads);
    cudaFree(d_grads16);
    cudaFree(d_chunks);
    param_layout_free(&layout);
}

// ---------------------------------------------------------------------------------------------------------
// matmul (cuBLASLt): C (M, N) = alpha * op(A) @ op(B) + beta * C, against an fp64 product of the same
// operand values and against the CPU's linear layer. Each element is compared relative to the sum of the
// magnitudes of its terms, |alpha| * sum_k |a b| + |beta c|: an accumulation in fp32 in any order (FFMA
// chains, tensor-core blocks, split-K) is within gamma_K of that, plus the epilogue's two roundings.
//  - fp32 operands, no TF32: 1e-5 holds in the worst case for K <= 150 (gamma_K + 3 * 2^-24); here K <= 64.
//  - bf16 operands: rounded to bf16 on the host (bf16_from_f32), the reference from the same rounded
//    values, so the products are exact in fp32 and only the fp32 accumulation errs: 1e-5 as for fp32 (K <=
//    64 leaves room even for tensor cores that truncate instead of rounding at every block of products).
//  - TF32 allowed: each operand keeps 10 mantissa bits (truncated at worst: < 2^-10 relative), so each
//    product is within 2^-9 = 2e-3 of its size: 1e-2 of the sum of the magnitudes leaves a margin of 5.
//  - CPU comparisons (matmul_forward, matmul_backward): both sides within gamma_K, K <= 37: 2 * 38 * 2^-24
//    = 4.5e-6 < 1e-5 worst case.
// Every check can fail: a wrong, missing or transposed term is off by |a b| ~ 1/K of the scale, and a beta
// applied wrongly (C's old value kept under beta 0, or dropped under beta 1) by |c| ~ the whole scale.
// Operand gaps between batch entries hold 1e6, so a product that read one would be off by 1e6; C's gaps and
// the elements before an offset base must keep their bits. With beta = 0, a second run must give the same
// bits (cuBLASLt is deterministic for the same problem on one stream).

#define MATMUL_GAP_OPERAND 1e6f
#define MATMUL_GAP_RESULT 777.25f

typedef struct {
    OperandType type;
    int allow_tf32, trans_a, trans_b;
    int M, N, K, batch;
    int gap;     // elements between one matrix of a batch and the next: stride = the matrix's size + gap
    int offset;  // elements between each buffer's start and the operand's base (odd: 2-byte aligned bf16)
    float alpha, beta;
    double tol;
} MatmulCase;

// A stored operand: `batch` matrices of `size` elements at offset + z * stride, values uniform in [-1, 1)
// (rounded to bf16 when `round`: the values the product multiplies), everything else `fill`.
static Floats matmul_operand(const MatmulCase *mc, size_t size, long long stride, float fill, int round) {
    Floats x((size_t)mc->offset + (size_t)(mc->batch - 1) * stride + size, fill);
    for (int z = 0; z < mc->batch; z++)
        for (size_t e = 0; e < size; e++) {
            float v = uniform(-1, 1);
            x[(size_t)mc->offset + z * stride + e] = round ? round_bf16(v) : v;
        }
    return x;
}

// The device copy of operand values in the problem's operand type.
static void *operand_to_device(const Floats &x, OperandType type) {
    if (type == OPERANDS_FP32) return to_device(x);
    Codes h(x.size());
    for (size_t i = 0; i < x.size(); i++) h[i] = bf16_from_f32(x[i]);
    return to_device_bf16(h);
}

// A product op(A) @ op(B) into C: unbatched, alpha 1, beta 0, no bias, an fp32 result.
static MatmulProblem unbatched_problem(OperandType type, int trans_a, int trans_b, int M, int N, int K, const void *A,
                                       const void *B, void *C) {
    MatmulProblem p;
    memset(&p, 0, sizeof p);
    p.type = type;
    p.trans_a = trans_a;
    p.trans_b = trans_b;
    p.M = M;
    p.N = N;
    p.K = K;
    p.A = A;
    p.B = B;
    p.C = C;
    p.alpha = 1.0f;
    p.batch = 1;
    return p;
}

static void check_matmul(MatmulContext *ctx, const MatmulCase *mc) {
    int M = mc->M, N = mc->N, K = mc->K, bf16_operands = mc->type == OPERANDS_BF16;
    long long sa = (long long)M * K + mc->gap, sb = (long long)K * N + mc->gap, sc = (long long)M * N + mc->gap;
    Floats A = matmul_operand(mc, (size_t)M * K, sa, MATMUL_GAP_OPERAND, bf16_operands);  // (M, K), trans_a (K, M)
    Floats Bm = matmul_operand(mc, (size_t)K * N, sb, MATMUL_GAP_OPERAND, bf16_operands); // (K, N), trans_b (N, K)
    Floats C0 = matmul_operand(mc, (size_t)M * N, sc, MATMUL_GAP_RESULT, 0);              // (M, N)
    void *d_A = operand_to_device(A, mc->type), *d_B = operand_to_device(Bm, mc->type);
    float *d_C = to_device(C0);
    size_t operand_bytes = bf16_operands ? 2 : 4;

    MatmulProblem p = unbatched_problem(mc->type, mc->trans_a, mc->trans_b, M, N, K,
                                        (const char *)d_A + (size_t)mc->offset * operand_bytes,
                                        (const char *)d_B + (size_t)mc->offset * operand_bytes, d_C + mc->offset);
    p.allow_tf32 = mc->allow_tf32;
    p.alpha = mc->alpha;
    p.beta = mc->beta;
    p.batch = mc->batch;
    p.stride_a = sa;
    p.stride_b = sb;
    p.stride_c = sc;
    matmul_gpu(ctx, &p, stream);
    Floats result = to_host(d_C, C0.size());

    // The reference over the matrices' elements; everything else must be as it was.
    Floats got, want, scale, gaps_got, gaps_want;
    std::vector<char> in_matrix(C0.size(), 0);
    for (int z = 0; z < mc->batch; z++)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double sum = 0.0, magnitude = 0.0;
                for (int k = 0; k < K; k++) {
                    double a = A[(size_t)mc->offset + z * sa + (mc->trans_a ? (size_t)k * M + m : (size_t)m * K + k)];
                    double b = Bm[(size_t)mc->offset + z * sb + (mc->trans_b ? (size_t)n * K + k : (size_t)k * N + n)];
                    sum += a * b;
                    magnitude += fabs(a * b);
                }
                size_t ci = (size_t)mc->offset + z * sc + (size_t)m * N + n;
                double c = C0[ci];
                want.push_back((float)(mc->alpha * sum + mc->beta * c));
                scale.push_back(positive_scale(fabs(mc->alpha) * magnitude + fabs(mc->beta * c)));
                got.push_back(result[ci]);
                in_matrix[ci] = 1;
            }
    for (size_t i = 0; i < C0.size(); i++)
        if (!in_matrix[i]) {
            gaps_got.push_back(result[i]);
            gaps_want.push_back(C0[i]);
        }

    char name[160], what[200];
    snprintf(name, sizeof name, "matmul %s%s %c%c %dx%dx%d", bf16_operands ? "bf16" : "fp32",
             mc->allow_tf32 ? " tf32" : "", mc->trans_a ? 'T' : 'N', mc->trans_b ? 'T' : 'N', M, N, K);
    if (mc->batch > 1) snprintf(name + strlen(name), sizeof name - strlen(name), " batch %d+%d", mc->batch, mc->gap);
    if (mc->offset) snprintf(name + strlen(name), sizeof name - strlen(name), " at +%d", mc->offset);
    snprintf(name + strlen(name), sizeof name - strlen(name), " a=%g b=%g", mc->alpha, mc->beta);
    snprintf(what, sizeof what, "%s vs fp64", name);
    check_close_scaled(what, got, want, scale, mc->tol);
    if (!gaps_want.empty()) {
        snprintf(what, sizeof what, "%s gaps kept", name);
        check_bits(what, gaps_got, gaps_want);
    }
    if (mc->beta == 0.0f) {
        matmul_gpu(ctx, &p, stream);
        snprintf(what, sizeof what, "%s rerun bits", name);
        check_bits(what, to_host(d_C, C0.size()), result);
    }
    cudaFree(d_A);
    cudaFree(d_B);
    cudaFree(d_C);
}

// One unbatched product of the linear layer on device buffers: C = op(A) @ op(B) + beta * C (+ bias).
static void linear_product(MatmulContext *ctx, OperandType type, int trans_a, int trans_b, int M, int N, int K,
                           const void *A, const void *B, float *C, float beta, const float *bias) {
    MatmulProblem p = unbatched_problem(type, trans_a, trans_b, M, N, K, A, B, C);
    p.bias = bias;
    p.beta = beta;
    matmul_gpu(ctx, &p, stream);
}

// The linear layer's three products as the CPU computes them (matmul_forward, matmul_backward), on the same
// operand values: out (Nr, OC) = inp (Nr, Cc) @ weight (OC, Cc)^T + bias, once with C preset to the bias
// rows (beta 1) and once with the problem's bias (beta 0: the epilogue, or add_bias_gpu where cuBLASLt
// has no epilogue algorithm; C's old values must not count); dinp (Nr, Cc) += dout (Nr, OC) @ weight;
// dweight (OC, Cc) += dout^T @ inp (dout stored (K, M)).
static void check_matmul_linear(MatmulContext *ctx, OperandType type, int Nr, int Cc, int OC) {
    int bf16_operands = type == OPERANDS_BF16;
    Floats inp = random_floats((size_t)Nr * Cc, -1, 1), weight = random_floats((size_t)OC * Cc, -1, 1);
    Floats dout = random_floats((size_t)Nr * OC, -1, 1), bias = random_floats(OC, -1, 1);
    Floats dinp = random_floats((size_t)Nr * Cc, -1, 1), dweight = random_floats((size_t)OC * Cc, -1, 1);
    if (bf16_operands) {
        for (size_t i = 0; i < inp.size(); i++) inp[i] = round_bf16(inp[i]);
        for (size_t i = 0; i < weight.size(); i++) weight[i] = round_bf16(weight[i]);
        for (size_t i = 0; i < dout.size(); i++) dout[i] = round_bf16(dout[i]);
    }
    Floats out_init((size_t)Nr * OC), out_scale((size_t)Nr * OC);
    Floats dinp_scale(dinp.size()), dweight_scale(dweight.size());
    for (int r = 0; r < Nr; r++)
        for (int o = 0; o < OC; o++) {
            double s = fabs((double)bias[o]);
            for (int c = 0; c < Cc; c++) s += fabs((double)inp[(size_t)r * Cc + c] * weight[(size_t)o * Cc + c]);
            out_init[(size_t)r * OC + o] = bias[o];
            out_scale[(size_t)r * OC + o] = positive_scale(s);
        }
    for (int r = 0; r < Nr; r++)
        for (int c = 0; c < Cc; c++) {
            double s = fabs((double)dinp[(size_t)r * Cc + c]);
            for (int o = 0; o < OC; o++) s += fabs((double)dout[(size_t)r * OC + o] * weight[(size_t)o * Cc + c]);
            dinp_scale[(size_t)r * Cc + c] = positive_scale(s);
        }
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < Cc; c++) {
            double s = fabs((double)dweight[(size_t)o * Cc + c]);
            for (int r = 0; r < Nr; r++) s += fabs((double)dout[(size_t)r * OC + o] * inp[(size_t)r * Cc + c]);
            dweight_scale[(size_t)o * Cc + c] = positive_scale(s);
        }
    void *d_inp = operand_to_device(inp, type), *d_weight = operand_to_device(weight, type);
    void *d_dout = operand_to_device(dout, type);
    float *d_out = to_device(out_init), *d_dinp = to_device(dinp), *d_dweight = to_device(dweight);
    float *d_bias = to_device(bias), *d_biased = to_device(random_floats((size_t)Nr * OC, -1, 1));
    // The bias one float into an allocation: 4-byte aligned, so the product takes the separate bias add.
    Floats shifted(1, NAN);
    shifted.insert(shifted.end(), bias.begin(), bias.end());
    float *d_shifted = to_device(shifted), *d_biased_shifted = to_device(random_floats((size_t)Nr * OC, -1, 1));

    Floats out((size_t)Nr * OC);
    matmul_forward(out.data(), inp.data(), weight.data(), bias.data(), Nr, Cc, OC);
    matmul_backward(dinp.data(), dweight.data(), NULL, dout.data(), inp.data(), weight.data(), Nr, Cc, OC);
    linear_product(ctx, type, 0, 1, Nr, OC, Cc, d_inp, d_weight, d_out, 1.0f, NULL);
    linear_product(ctx, type, 0, 1, Nr, OC, Cc, d_inp, d_weight, d_biased, 0.0f, d_bias);
    linear_product(ctx, type, 0, 1, Nr, OC, Cc, d_inp, d_weight, d_biased_shifted, 0.0f, d_shifted + 1);
    linear_product(ctx, type, 0, 0, Nr, Cc, OC, d_dout, d_weight, d_dinp, 1.0f, NULL);
    linear_product(ctx, type, 1, 0, OC, Cc, Nr, d_dout, d_inp, d_dweight, 1.0f, NULL);
    char name[128];
    const char *t = bf16_operands ? "bf16" : "fp32";
    snprintf(name, sizeof name, "matmul %s linear forward vs CPU (%dx%d -> %d)", t, Nr, Cc, OC);
    check_close_scaled(name, to_host(d_out, out.size()), out, out_scale, 1e-5);
    snprintf(name, sizeof name, "matmul %s linear forward, bias epilogue vs CPU", t);
    check_close_scaled(name, to_host(d_biased, out.size()), out, out_scale, 1e-5);
    snprintf(name, sizeof name, "matmul %s linear forward, 4-byte aligned bias (separate add) vs CPU", t);
    check_close_scaled(name, to_host(d_biased_shifted, out.size()), out, out_scale, 1e-5);
    snprintf(name, sizeof name, "matmul %s linear dinp vs CPU", t);
    check_close_scaled(name, to_host(d_dinp, dinp.size()), dinp, dinp_scale, 1e-5);
    snprintf(name, sizeof name, "matmul %s linear dweight vs CPU", t);
    check_close_scaled(name, to_host(d_dweight, dweight.size()), dweight, dweight_scale, 1e-5);
    cudaFree(d_inp);
    cudaFree(d_weight);
    cudaFree(d_dout);
    cudaFree(d_out);
    cudaFree(d_dinp);
    cudaFree(d_dweight);
    cudaFree(d_bias);
    cudaFree(d_biased);
    cudaFree(d_shifted);
    cudaFree(d_biased_shifted);
}

// A bf16 result (a stored bf16 activation): out = bf16(inp @ weight^T + bias), the fp32 sum rounded once, with
// the bias stored in bf16 (the result's type: cuBLASLt's epilogue), 2-byte aligned (the separate add from
// the fp32 scratch) and in fp32 (another type: the separate add). Each element is within one rounding of the
// CPU's fp32 value (half a bf16 ulp, 2^-9 relative) plus the fp32 products' reordering (1e-5 of the scale).
static void check_matmul_bf16_result(MatmulContext *ctx, int Nr, int Cc, int OC) {
    Floats inp = random_floats((size_t)Nr * Cc, -1, 1), weight = random_floats((size_t)OC * Cc, -1, 1);
    Floats bias = random_floats(OC, -1, 1), shifted_bias(OC + 1, 0.0f);
    for (size_t i = 0; i < inp.size(); i++) inp[i] = round_bf16(inp[i]);
    for (size_t i = 0; i < weight.size(); i++) weight[i] = round_bf16(weight[i]);
    for (int o = 0; o < OC; o++) shifted_bias[o + 1] = bias[o] = round_bf16(bias[o]);
    Floats out((size_t)Nr * OC), scale((size_t)Nr * OC);
    matmul_forward(out.data(), inp.data(), weight.data(), bias.data(), Nr, Cc, OC);
    for (int r = 0; r < Nr; r++)
        for (int o = 0; o < OC; o++) {
            double s = fabs((double)bias[o]);
            for (int c = 0; c < Cc; c++) s += fabs((double)inp[(size_t)r * Cc + c] * weight[(size_t)o * Cc + c]);
            scale[(size_t)r * OC + o] = positive_scale(s);
        }
    void *d_inp = operand_to_device(inp, OPERANDS_BF16), *d_weight = operand_to_device(weight, OPERANDS_BF16);
    void *d_bias_bf16 = operand_to_device(bias, OPERANDS_BF16), *d_shifted = operand_to_device(shifted_bias, OPERANDS_BF16);
    float *d_bias = to_device(bias), *d_scratch = device_floats((size_t)Nr * OC);
    __nv_bfloat16 *d_out = (__nv_bfloat16 *)cuda_malloc_checked((size_t)Nr * OC * sizeof(__nv_bfloat16), "test bf16");
    struct {
        const char *what;
        const void *bias;
        OperandType bias_type;
    } cases[] = {{"bf16 bias", d_bias_bf16, OPERANDS_BF16},
                 {"bf16 bias, 2-byte aligned", (const char *)d_shifted + 2, OPERANDS_BF16},
                 {"fp32 bias", d_bias, OPERANDS_FP32}};
    for (int k = 0; k < 3; k++) {
        MatmulProblem p = unbatched_problem(OPERANDS_BF16, 0, 1, Nr, OC, Cc, d_inp, d_weight, d_out);
        p.c_type = OPERANDS_BF16;
        p.bias = cases[k].bias;
        p.bias_type = cases[k].bias_type;
        p.bias_scratch = d_scratch;
        matmul_gpu(ctx, &p, stream);
        Codes got = to_host_bf16(d_out, out.size());
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < out.size(); i++) {
            double g = bf16_to_f32(got[i]), want = out[i];
            if (!(fabs(g - want) <= fabs(want) / 512.0 + 1e-5 * scale[i]) && bad++ == 0) first = i;
        }
        char name[128];
        snprintf(name, sizeof name, "matmul bf16 result, %s (%dx%d -> %d)", cases[k].what, Nr, Cc, OC);
        CHECK(bad == 0, "%s: %zu elements off, first %zu: %.9g vs the CPU's %.9g", name, bad, first,
              bf16_to_f32(got[first]), out[first]);
        printf("%-56s ok\n", name);
    }
    cudaFree(d_inp);
    cudaFree(d_weight);
    cudaFree(d_bias_bf16);
    cudaFree(d_shifted);
    cudaFree(d_bias);
    cudaFree(d_scratch);
    cudaFree(d_out);
}

static void test_matmul(void) {
    MatmulContext ctx;
    matmul_context_init(&ctx);
    const OperandType F = OPERANDS_FP32, H = OPERANDS_BF16;
    // Every transpose combination, beta 0 (C's old values must not leak in) and 1 (accumulate), at a shape
    // that is no multiple of 8 or 16 (so bf16 rows are only 2-byte aligned).
    for (int type = 0; type < 2; type++)
        for (int trans = 0; trans < 4; trans++)
            for (int beta = 0; beta < 2; beta++) {
                MatmulCase mc = {type ? H : F, 0, trans >> 1, trans & 1, 37, 19, 23, 1, 0, 0, 1.0f, (float)beta, 1e-5};
                check_matmul(&ctx, &mc);
            }
    const MatmulCase cases[] = {
        // type tf32 ta tb   M    N   K  batch gap offset alpha  beta  tol
        // Tile-sized and aligned (the tensor-core paths); an alpha that rounds.
        {F, 0, 0, 1, 64, 128, 64, 1, 0, 0, -1.25f, 1.0f, 1e-5},
        {H, 0, 0, 1, 64, 128, 64, 1, 0, 0, -1.25f, 1.0f, 1e-5},
        {H, 0, 1, 0, 64, 128, 64, 1, 0, 0, 1.0f, 0.0f, 1e-5},
        // TF32 allowed (the tolerance of 10 mantissa bits).
        {F, 1, 0, 1, 64, 128, 64, 1, 0, 0, 1.0f, 0.0f, 1e-2},
        {F, 1, 1, 0, 37, 19, 23, 1, 0, 0, 1.0f, 1.0f, 1e-2},
        {F, 1, 1, 1, 37, 19, 23, 3, 5, 0, 0.5f, 1.0f, 1e-2},
        // Strided batches with gaps between the matrices.
        {F, 0, 0, 0, 37, 19, 23, 3, 5, 0, 0.5f, 1.0f, 1e-5},
        {F, 0, 1, 1, 37, 19, 23, 3, 5, 0, 1.0f, 0.0f, 1e-5},
        {H, 0, 1, 0, 37, 19, 23, 3, 5, 0, 0.5f, 1.0f, 1e-5},
        {H, 0, 0, 1, 32, 48, 64, 4, 16, 0, 1.0f, 0.0f, 1e-5},
        // Attention at an odd T = 7: B * NH = 4 heads of T x T (and T x hs, hs = 18), stride T * T, bases
        // one element in: every head's rows and bases only 2-byte aligned in bf16.
        {H, 0, 0, 0, 7, 7, 7, 4, 0, 1, 1.0f, 0.0f, 1e-5},
        {H, 0, 0, 1, 7, 7, 7, 4, 0, 1, 1.0f, 0.0f, 1e-5},
        {H, 0, 1, 0, 7, 7, 7, 4, 0, 1, 1.0f, 1.0f, 1e-5},
        {H, 0, 1, 1, 7, 7, 7, 4, 0, 1, 1.0f, 0.0f, 1e-5},
        {H, 0, 0, 1, 7, 7, 18, 4, 0, 1, 0.25f, 0.0f, 1e-5},  // scores = q k^T
        {H, 0, 0, 0, 7, 18, 7, 4, 0, 1, 1.0f, 0.0f, 1e-5},   // y = att v
        {H, 0, 1, 0, 7, 18, 7, 4, 0, 1, 1.0f, 0.0f, 1e-5},   // dv = att^T dy
        {F, 0, 0, 1, 7, 7, 18, 4, 0, 1, 0.25f, 0.0f, 1e-5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_matmul(&ctx, &cases[i]);
    check_matmul_linear(&ctx, F, 37, 23, 19);
    check_matmul_linear(&ctx, H, 37, 23, 19);
    check_matmul_linear(&ctx, F, 32, 16, 24);
    check_matmul_bf16_result(&ctx, 37, 23, 19);
    check_matmul_bf16_result(&ctx, 64, 64, 96);
    matmul_context_free(&ctx);
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
    test_bf16_storage();
    test_column_sums();
    test_gelu();
    test_classifier();
    test_attention();
    test_flash_attention();
    test_quantize();
    test_amax();
    test_fp8_scale_state(SCALING_DELAYED);
    test_fp8_scale_state(SCALING_CURRENT);
    test_gradients();
    test_optimizer_reductions();
    test_matmul();  // last: a product cuBLASLt has no algorithm for ends the process (fatal)
    CUDA_CHECK(cudaStreamDestroy(stream));
    return test_summary("test_kernels");
}
