// Matmul operand casts on the device (src/cpu/quantize.c), conversions between fp32 and bf16 tensors, DQT's
// decoding of one grid slice, the amax of a tensor (src/scaling.c's tensor_amax), and fp8 scaling with its
// state (scales, amax histories) in device memory: the amax, the scale and the cast follow each other on the stream, so a cast never waits for the
// host. Every element and every scale goes through the shared __host__ __device__ functions of
// src/operand_cast.h, src/linear_casts.h and src/numerics/bf16.h, so the bits are the CPU's.
#ifndef LP_KERNELS_QUANTIZE_CUH
#define LP_KERNELS_QUANTIZE_CUH

#include "bf16_device.cuh"
#include "common.cuh"
#include "linear_casts.h"
#include "numerics/int_grid.h"
#include "operand_cast.h"

#define QUANTIZE_THREADS 256
#define AMAX_MAX_BLOCKS 1024  // grid-stride beyond this: fewer atomics

template <typename Stored>
static __global__ void quantize_operand_kernel(float *out, const Stored *inp, size_t n, OperandCast cast,
                                               const float *device_scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (device_scale) cast.scale = *device_scale;
    if (i < n) out[i] = quantize_operand_value(load_f32(inp[i]), &cast);
}

// out = each element of inp cast as `cast` says (quantize_operand_value), with the scale read from
// device_scale (one float in device memory) when it is not NULL. out: (n) fp32; inp: (n) fp32 or bf16 (an
// fp32 cast of bf16 values widens them); out may equal inp.
template <typename Stored>
static void quantize_operand_gpu(float *out, const Stored *inp, size_t n, OperandCast cast, const float *device_scale,
                                 cudaStream_t stream) {
    if (n == 0) return;
    quantize_operand_kernel<<<ceil_div(n, QUANTIZE_THREADS), QUANTIZE_THREADS, 0, stream>>>(out, inp, n, cast,
                                                                                          device_scale);
    CUDA_CHECK_LAUNCH();
}

template <typename In, typename Out>
static __global__ void convert_kernel(Out *out, const In *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) store_rounded(&out[i], load_f32(inp[i]));
}

// out (n) = inp (n) in out's type: fp32 to bf16 rounded to nearest-even (bit-identical to bf16_from_f32),
// bf16 to fp32 exactly.
template <typename In, typename Out>
static void convert_gpu(Out *out, const In *inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    convert_kernel<<<ceil_div(n, QUANTIZE_THREADS), QUANTIZE_THREADS, 0, stream>>>(out, inp, n);
    CUDA_CHECK_LAUNCH();
}

static __global__ void dqt_decode_kernel(float *out, const int8_t *codes, const float *step, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = int_grid_dequantize(codes[i], *step);
}

// out (n) = one DQT grid slice's weights, code * step (the shared int_grid_dequantize: the CPU's values),
// with the slice's step read from device memory (step: one float).
static void dqt_decode_gpu(float *out, const int8_t *codes, const float *step, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    dqt_decode_kernel<<<ceil_div(n, QUANTIZE_THREADS), QUANTIZE_THREADS, 0, stream>>>(out, codes, step, n);
    CUDA_CHECK_LAUNCH();
}

// The max over |x| as fp32 bits: for non-negative floats the unsigned order of the bits is the numeric
// order, and every NaN is mapped to the canonical quiet NaN 0x7fc00000, which is above +inf. So an integer
// atomicMax gives max |x| exactly, or NaN when any element is NaN, the same bits in any launch order.
// amax_bits starts at 0 (the launcher clears it).
template <typename Stored>
static __global__ void tensor_amax_kernel(unsigned int *amax_bits, const Stored *x, size_t n) {
    unsigned int m = 0u;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        unsigned int a = __float_as_uint(load_f32(x[i])) & 0x7fffffffu;
        m = max(m, a > 0x7f800000u ? 0x7fc00000u : a);
    }
    m = __reduce_max_sync(0xffffffffu, m);  // every lane is here: the loop has no early exit
    if (threadIdx.x % WARP_SIZE == 0 && m > 0u) atomicMax(amax_bits, m);
}

// *amax_device (one float on the device) = max |x[i]| over x (n), NaN if any element is NaN (0 for n = 0),
// bit-identical to tensor_amax of src/scaling.c (whose NaN is NAN, 0x7fc00000).
template <typename Stored>
static void tensor_amax_gpu(float *amax_device, const Stored *x, size_t n, cudaStream_t stream) {
    CUDA_CHECK(cudaMemsetAsync(amax_device, 0, sizeof(float), stream));
    if (n == 0) return;
    unsigned int blocks = ceil_div(n, QUANTIZE_THREADS);
    if (blocks > AMAX_MAX_BLOCKS) blocks = AMAX_MAX_BLOCKS;
    tensor_amax_kernel<<<blocks, QUANTIZE_THREADS, 0, stream>>>((unsigned int *)amax_device, x, n);
    CUDA_CHECK_LAUNCH();
}

// One thread: fp8_scale_of_use on the device state, from the amax the previous kernel left in *amax.
static __global__ void fp8_scale_of_use_kernel(Fp8ScaleState state, int id, int is_output_grad, const float *amax,
                                               float fmt_max) {
    fp8_scale_of_use(&state, id, is_output_grad, *amax, fmt_max);
}

// The scale of a use of operand tensor `id` (state in device memory) into state.scales[id], its amax
// (*amax_device) into the history or forward_amax, as linear_cast_of_use does on the host.
static void fp8_scale_of_use_gpu(const Fp8ScaleState *state, int id, int is_output_grad, const float *amax_device,
                                 float fmt_max, cudaStream_t stream) {
    fp8_scale_of_use_kernel<<<1, 1, 0, stream>>>(*state, id, is_output_grad, amax_device, fmt_max);
    CUDA_CHECK_LAUNCH();
}

// One thread per operand tensor; each writes only its own history.
static __global__ void fp8_record_forward_kernel(Fp8ScaleState state, int count) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id < count) fp8_record_forward_amax(&state, id);
}

// At the end of a backward: the forward's input and weight amaxes into their histories (device state).
static void fp8_record_forward_gpu(const Fp8ScaleState *state, int count, cudaStream_t stream) {
    if (count == 0) return;
    fp8_record_forward_kernel<<<ceil_div(count, QUANTIZE_THREADS), QUANTIZE_THREADS, 0, stream>>>(*state, count);
    CUDA_CHECK_LAUNCH();
}

#endif
