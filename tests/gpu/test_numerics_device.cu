// Every numerics primitive on the device against the same function on the host: one __host__ __device__
// function evaluates all of them for element i, a kernel runs it for every element, the host loop runs it
// again, and the output bits must agree. Inputs mix ordinary values, ties, subnormals, specials and random
// bit patterns over 2^20 elements. NaN outputs only need to be NaN on both sides: the GPU's arithmetic
// returns the canonical NaN where the CPU keeps the operand's payload.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "numerics.h"

static const size_t ELEMENTS = 1u << 20;
static const size_t CHUNK = 1u << 18;  // elements per launch, to keep both sides' outputs small

// What one output slot holds, for the comparison.
enum SlotKind { RAW, F32, BF16, PAIR, CODE };

enum Slot {
    BF16_TO_F32, BF16_FROM_F32, BF16_FROM_F32_RTZ, ROUND_BF16, BF16_NEG, BF16_ADD, BF16_SUB, BF16_MUL, BF16_DIV,
    BF16_FMA,
    RNG_U32, RNG_UNIFORM, RNG_NORMAL, PHILOX, LOG_PORTABLE, COS_2PI_PORTABLE,
    POW2_F32, ROUNDS_AWAY, F32_SIGNIFICAND, F32_EXPONENT,
    BF16_SR, BF16_SR_KEYED, EXMY_SR_KEYED, INT_GRID_SR_KEYED,
    EXMY_QUANTIZE, EXMY_ENCODE, EXMY_DECODE, EXMY_FORMAT_MAX, EXMY_FLAGS, E4M3_FROM, E4M3_TO, E5M2_FROM, E5M2_TO,
    ROUND_TO_INTEGER, INT_GRID_QUANTIZE, INT_GRID_DEQUANTIZE,
    SCALE_FROM_AMAX, AMAX_HISTORY_MAX, CLAMP_SCALED, ENCODE_SCALED, QUANTIZE_DEQUANTIZE,
    FAST_TWO_SUM, TWO_SUM, TWO_PROD, MCF_GROW, MCF_GROW_FAST, MCF_MUL, MCF_RENORMALIZE, MCF_FROM_F32, MCF_TO_F32,
    MCF_FROM_DOUBLE, MCF_TO_DOUBLE_LOW, MCF_TO_DOUBLE_HIGH,
    SLOTS
};

static SlotKind slot_kind(int slot) {
    switch (slot) {
    case BF16_TO_F32: case ROUND_BF16: case RNG_UNIFORM: case RNG_NORMAL: case LOG_PORTABLE: case COS_2PI_PORTABLE:
    case POW2_F32: case EXMY_QUANTIZE: case EXMY_DECODE: case EXMY_FORMAT_MAX: case E4M3_TO: case E5M2_TO:
    case EXMY_SR_KEYED: case ROUND_TO_INTEGER: case INT_GRID_DEQUANTIZE: case SCALE_FROM_AMAX:
    case AMAX_HISTORY_MAX: case CLAMP_SCALED: case QUANTIZE_DEQUANTIZE: case MCF_TO_F32:
        return F32;
    case BF16_FROM_F32: case BF16_FROM_F32_RTZ: case BF16_NEG: case BF16_ADD: case BF16_SUB: case BF16_MUL:
    case BF16_DIV: case BF16_FMA: case BF16_SR: case BF16_SR_KEYED:
        return BF16;
    case FAST_TWO_SUM: case TWO_SUM: case TWO_PROD: case MCF_GROW: case MCF_GROW_FAST: case MCF_MUL:
    case MCF_RENORMALIZE: case MCF_FROM_F32: case MCF_FROM_DOUBLE:
        return PAIR;
    case EXMY_ENCODE: case E4M3_FROM: case E5M2_FROM: case ENCODE_SCALED:
        return CODE;
    default:
        return RAW;
    }
}

static const char *slot_name(int slot) {
    static const char *names[SLOTS] = {
        "bf16_to_f32", "bf16_from_f32", "bf16_from_f32_rtz", "round_bf16", "bf16_neg", "bf16_add", "bf16_sub",
        "bf16_mul", "bf16_div", "bf16_fma",
        "rng_u32", "rng_uniform", "rng_normal", "philox4x32_10", "log_portable", "cos_2pi_portable",
        "pow2_f32", "rounds_away_from_zero", "f32_significand", "f32_exponent",
        "bf16_from_f32_sr", "bf16_from_f32_sr_keyed", "exmy_quantize_sr_keyed", "int_grid_quantize_sr_keyed",
        "exmy_quantize", "exmy_encode", "exmy_decode", "exmy_format max", "exmy flags", "e4m3_from_f32",
        "e4m3_to_f32", "e5m2_from_f32", "e5m2_to_f32",
        "round_to_integer", "int_grid_quantize", "int_grid_dequantize",
        "scale_from_amax", "amax_history_max", "clamp_scaled", "exmy_encode_scaled", "quantize_dequantize_scaled",
        "fast_two_sum", "two_sum", "two_prod", "mcf_grow", "mcf_grow_fast", "mcf_mul", "mcf_renormalize",
        "mcf_from_f32", "mcf_to_f32", "mcf_from_double", "mcf_to_double (low word)", "mcf_to_double (high word)",
    };
    return names[slot];
}

struct Inputs {
    const float *a, *b, *c;
    const uint32_t *random_bits;
};

// The format element i uses: the named ones, then every generic eXmY in turn.
__host__ __device__ static ExmyFormat format_for(size_t i) {
    switch (i % 6) {
    case 0: return exmy_e4m3();
    case 1: return exmy_e5m2();
    case 2: return exmy_e8m7();
    case 3: return exmy_e5m10();
    default: return exmy_format(1 + (int)((i / 6) % 8), (int)((i / 48) % 24));
    }
}

__host__ __device__ static uint32_t pack(Mcf x) { return (uint32_t)x.hi | (uint32_t)x.lo << 16; }

__host__ __device__ static void evaluate_all(Inputs in, size_t n, size_t i, uint32_t *out) {
    float a = in.a[i], b = in.b[i], c = in.c[i];
    uint32_t r = in.random_bits[i];
    bf16 ha = bf16_from_f32(a), hb = bf16_from_f32(b), hc = bf16_from_f32(c);
    RngKey key;
    key.seed = (uint64_t)r ^ (0x5eedull << 32);
    key.step = i % 7;
    key.tensor_id = (uint32_t)(i % 13);
    RoundingMode mode = (RoundingMode)(i % 3);
    OverflowMode overflow = (OverflowMode)((i / 3) % 2);
    ExmyFormat f = format_for(i);
    IntGrid grid = i % 2 ? int_grid_ternary() : int_grid_bits(2 + (int)(i % 7));

    out[BF16_TO_F32] = f32_to_bits(bf16_to_f32((bf16)r));
    out[BF16_FROM_F32] = bf16_from_f32(a);
    out[BF16_FROM_F32_RTZ] = bf16_from_f32_rtz(a);
    out[ROUND_BF16] = f32_to_bits(round_bf16(a));
    out[BF16_NEG] = bf16_neg(ha);
    out[BF16_ADD] = bf16_add(ha, hb);
    out[BF16_SUB] = bf16_sub(ha, hb);
    out[BF16_MUL] = bf16_mul(ha, hb);
    out[BF16_DIV] = bf16_div(ha, hb);
    out[BF16_FMA] = bf16_fma(ha, hb, hc);

    out[RNG_U32] = rng_u32(key, i);
    out[RNG_UNIFORM] = f32_to_bits(rng_uniform(key, i));
    out[RNG_NORMAL] = f32_to_bits(rng_normal(key, i));
    out[PHILOX] = philox4x32_10(r, (uint32_t)i, f32_to_bits(a), f32_to_bits(b), f32_to_bits(c), ~r);
    out[LOG_PORTABLE] = f32_to_bits(log_portable(((float)(r >> 8) + 0.5f) * (1.0f / 16777216.0f)));
    out[COS_2PI_PORTABLE] = f32_to_bits(cos_2pi_portable((float)(r >> 8) * (1.0f / 16777216.0f)));

    int drop = (int)(r % 151);
    uint32_t rest = (drop < 24 ? (1u << drop) - 1u : 0xffffffu) & f32_to_bits(a);
    out[POW2_F32] = f32_to_bits(pow2_f32(-149 + (int)(r % 277)));
    out[ROUNDS_AWAY] = rounds_away_from_zero(f32_to_bits(b), rest, drop, mode, r);
    uint32_t finite_bits = f32_to_bits(a) & 0x7fffffffu;
    finite_bits = finite_bits >= 0x7f800000u ? finite_bits & 0x7f7fffffu : finite_bits;
    out[F32_SIGNIFICAND] = f32_significand(finite_bits);
    out[F32_EXPONENT] = (uint32_t)f32_exponent(finite_bits);

    out[BF16_SR] = bf16_from_f32_sr(a, r);
    out[BF16_SR_KEYED] = bf16_from_f32_sr_keyed(a, key, i);
    out[EXMY_SR_KEYED] = f32_to_bits(exmy_quantize_sr_keyed(a, f, overflow, key, i));
    out[INT_GRID_SR_KEYED] = (uint32_t)int_grid_quantize_sr_keyed(a, fabsf(c) + 1e-3f, grid, key, i);

    out[EXMY_QUANTIZE] = f32_to_bits(exmy_quantize(a, f, mode, overflow, r));
    out[EXMY_ENCODE] = exmy_encode(a, f, mode, overflow, r);
    out[EXMY_DECODE] = f32_to_bits(exmy_decode(r, f));
    out[EXMY_FORMAT_MAX] = f32_to_bits(f.max_finite);
    out[EXMY_FLAGS] = (uint32_t)exmy_has_inf(f) | (uint32_t)exmy_has_nan(f) << 1 | exmy_max_finite_code(f) << 2;
    out[E4M3_FROM] = e4m3_from_f32(a, mode, overflow, r);
    out[E4M3_TO] = f32_to_bits(e4m3_to_f32((uint8_t)r));
    out[E5M2_FROM] = e5m2_from_f32(a, mode, overflow, r);
    out[E5M2_TO] = f32_to_bits(e5m2_to_f32((uint8_t)r));

    float spread = a * pow2_f32(-(int)(r % 20));  // integers and fractions alike
    out[ROUND_TO_INTEGER] = f32_to_bits(round_to_integer(spread, mode, r));
    int32_t q = int_grid_quantize(a, fabsf(c) + 1e-3f, grid, mode, r);
    out[INT_GRID_QUANTIZE] = (uint32_t)q;
    out[INT_GRID_DEQUANTIZE] = f32_to_bits(int_grid_dequantize(q, c));

    float scale = scale_from_amax(fabsf(a), f.max_finite, (int)(r % 4), fabsf(b));
    float history[8];
    for (int k = 0; k < 8; k++) history[k] = fabsf(in.a[(i + (size_t)k) % n]);
    out[SCALE_FROM_AMAX] = f32_to_bits(scale);
    out[AMAX_HISTORY_MAX] = f32_to_bits(amax_history_max(history, 8));
    out[CLAMP_SCALED] = f32_to_bits(clamp_scaled(b, scale, f));
    out[ENCODE_SCALED] = exmy_encode_scaled(b, scale, f, mode, r);
    out[QUANTIZE_DEQUANTIZE] = f32_to_bits(quantize_dequantize_scaled(b, scale, f, mode, r));

    Mcf x = mcf_make(ha, bf16_from_f32(b * 0x1p-9f)), y = mcf_make(hc, bf16_from_f32(a * 0x1p-10f));
    out[FAST_TWO_SUM] = pack(fast_two_sum(ha, hb));
    out[TWO_SUM] = pack(two_sum(ha, hb));
    out[TWO_PROD] = pack(two_prod(ha, hb));
    out[MCF_GROW] = pack(mcf_grow(x, hc));
    out[MCF_GROW_FAST] = pack(mcf_grow_fast(x, hc));
    out[MCF_MUL] = pack(mcf_mul(x, y));
    out[MCF_RENORMALIZE] = pack(mcf_renormalize(mcf_make(ha, hb)));
    out[MCF_FROM_F32] = pack(mcf_from_f32(a));
    out[MCF_TO_F32] = f32_to_bits(mcf_to_f32(x));
    out[MCF_FROM_DOUBLE] = pack(mcf_from_double((double)a * (double)b));
    double sum = mcf_to_double(x);
    uint64_t sum_bits;
    memcpy(&sum_bits, &sum, sizeof sum_bits);
    out[MCF_TO_DOUBLE_LOW] = (uint32_t)sum_bits;
    out[MCF_TO_DOUBLE_HIGH] = (uint32_t)(sum_bits >> 32);
}

__global__ void evaluate_kernel(Inputs in, size_t n, size_t first, size_t count, uint32_t *out) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < count) evaluate_all(in, n, first + j, out + j * SLOTS);
}

static int bf16_nan(uint32_t h) { return (h & 0x7fffu) > 0x7f80u; }

static int equivalent(int slot, size_t i, uint32_t host, uint32_t device) {
    if (host == device) return 1;
    switch (slot_kind(slot)) {
    case F32: return std::isnan(f32_from_bits(host)) && std::isnan(f32_from_bits(device));
    case BF16: return bf16_nan(host) && bf16_nan(device);
    case PAIR:
        return ((host & 0xffffu) == (device & 0xffffu) || (bf16_nan(host & 0xffffu) && bf16_nan(device & 0xffffu))) &&
               ((host >> 16) == (device >> 16) || (bf16_nan(host >> 16) && bf16_nan(device >> 16)));
    case CODE: {
        ExmyFormat f = slot == E4M3_FROM ? exmy_e4m3() : slot == E5M2_FROM ? exmy_e5m2() : format_for(i);
        return std::isnan(exmy_decode(host, f)) && std::isnan(exmy_decode(device, f));
    }
    default: return 0;
    }
}

static uint64_t test_rng_state = 0x243f6a8885a308d3ull;

static uint64_t test_random(void) {
    uint64_t z = (test_rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Mostly ordinary magnitudes, with ties, subnormals, specials and raw bit patterns mixed in.
static float random_input(void) {
    static const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 448.0f, 464.0f, 57344.0f, 61440.0f,
                                     3.38953139e38f, 1e-40f, -1e-45f, 1.0f, -1.5f};
    uint64_t r = test_random();
    uint32_t bits = (uint32_t)(r >> 32);
    switch (r % 10) {
    case 0: return f32_from_bits(bits);
    case 1: return f32_from_bits((bits & 0xffff0000u) | 0x8000u);
    case 2: return f32_from_bits(bits & 0x807fffffu);
    case 3: return specials[(r >> 8) % (sizeof specials / sizeof specials[0])];
    default: return f32_from_bits((bits & 0x807fffffu) | (uint32_t)(127 - 30 + (int)((r >> 8) % 61)) << 23);
    }
}

static void check_cuda(cudaError_t status, const char *what) {
    if (status != cudaSuccess) {
        fprintf(stderr, "test_numerics_device: %s: %s\n", what, cudaGetErrorString(status));
        exit(1);
    }
}

int main(void) {
    int devices = 0;
    cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
        fprintf(stderr, "test_numerics_device: no CUDA device available (%s); this test needs a GPU\n",
                status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
        return 1;
    }
    std::vector<float> a(ELEMENTS), b(ELEMENTS), c(ELEMENTS);
    std::vector<uint32_t> random_bits(ELEMENTS);
    for (size_t i = 0; i < ELEMENTS; i++) {
        a[i] = random_input();
        b[i] = random_input();
        c[i] = random_input();
        random_bits[i] = (uint32_t)test_random();
    }
    float *device_a, *device_b, *device_c;
    uint32_t *device_bits, *device_out;
    size_t floats = ELEMENTS * sizeof(float);
    check_cuda(cudaMalloc(&device_a, floats), "cudaMalloc");
    check_cuda(cudaMalloc(&device_b, floats), "cudaMalloc");
    check_cuda(cudaMalloc(&device_c, floats), "cudaMalloc");
    check_cuda(cudaMalloc(&device_bits, ELEMENTS * sizeof(uint32_t)), "cudaMalloc");
    check_cuda(cudaMalloc(&device_out, CHUNK * SLOTS * sizeof(uint32_t)), "cudaMalloc");
    check_cuda(cudaMemcpy(device_a, a.data(), floats, cudaMemcpyHostToDevice), "copy a");
    check_cuda(cudaMemcpy(device_b, b.data(), floats, cudaMemcpyHostToDevice), "copy b");
    check_cuda(cudaMemcpy(device_c, c.data(), floats, cudaMemcpyHostToDevice), "copy c");
    check_cuda(cudaMemcpy(device_bits, random_bits.data(), ELEMENTS * sizeof(uint32_t), cudaMemcpyHostToDevice),
               "copy random bits");
    Inputs host_inputs = {a.data(), b.data(), c.data(), random_bits.data()};
    Inputs device_inputs = {device_a, device_b, device_c, device_bits};

    std::vector<uint32_t> host_out(CHUNK * SLOTS), device_copy(CHUNK * SLOTS);
    long mismatches[SLOTS] = {0};
    long total = 0;
    for (size_t first = 0; first < ELEMENTS; first += CHUNK) {
        int threads = 256;
        int blocks = (int)((CHUNK + threads - 1) / threads);
        evaluate_kernel<<<blocks, threads>>>(device_inputs, ELEMENTS, first, CHUNK, device_out);
        check_cuda(cudaGetLastError(), "kernel launch");
        check_cuda(cudaMemcpy(device_copy.data(), device_out, CHUNK * SLOTS * sizeof(uint32_t), cudaMemcpyDeviceToHost),
                   "copy results");
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < CHUNK; j++) evaluate_all(host_inputs, ELEMENTS, first + j, &host_out[j * SLOTS]);
        for (size_t j = 0; j < CHUNK; j++) {
            for (int s = 0; s < SLOTS; s++) {
                uint32_t h = host_out[j * SLOTS + s], d = device_copy[j * SLOTS + s];
                if (equivalent(s, first + j, h, d)) continue;
                if (mismatches[s] < 3)
                    fprintf(stderr, "mismatch in %s at element %zu (a=%a b=%a c=%a bits=%08x): host %08x device %08x\n",
                            slot_name(s), first + j, a[first + j], b[first + j], c[first + j], random_bits[first + j],
                            h, d);
                mismatches[s]++;
                total++;
            }
        }
    }
    for (int s = 0; s < SLOTS; s++)
        if (mismatches[s]) fprintf(stderr, "%s: %ld mismatches\n", slot_name(s), mismatches[s]);
    cudaFree(device_a);
    cudaFree(device_b);
    cudaFree(device_c);
    cudaFree(device_bits);
    cudaFree(device_out);
    printf("test_numerics_device: %zu elements x %d primitives, %ld mismatches\n", ELEMENTS, (int)SLOTS, total);
    return total ? 1 : 0;
}
