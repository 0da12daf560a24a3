// bf16 on the device with the shared numerics header's bits, and the two storage types of activations and
// weights (fp32, bf16) as kernels read and write them: every kernel computes in fp32 and rounds what it
// stores once (nearest-even), the CPU's gpt_cpu_store.
#ifndef LP_KERNELS_BF16_DEVICE_CUH
#define LP_KERNELS_BF16_DEVICE_CUH

#include <cuda_bf16.h>

#include "numerics/bf16.h"

// bf16_from_f32 of the shared header (nearest-even), as a CUDA bf16: the same bits as the CPU's conversion.
// (CUDA's __float2bfloat16_rn agrees on every number, but returns a canonical NaN where bf16_from_f32 keeps
// the payload.)
static __device__ __nv_bfloat16 bf16_device_from_f32(float x) {
    __nv_bfloat16_raw raw;
    raw.x = bf16_from_f32(x);
    return __nv_bfloat16(raw);
}

// A stored value as fp32 (exact for both types).
static __device__ float load_f32(float x) { return x; }
static __device__ float load_f32(__nv_bfloat16 x) {
    __nv_bfloat16_raw raw = x;
    return bf16_to_f32(raw.x);
}

// x stored in the destination's type: unchanged into fp32, rounded once to nearest-even into bf16.
static __device__ void store_rounded(float *dst, float x) { *dst = x; }
static __device__ void store_rounded(__nv_bfloat16 *dst, float x) { *dst = bf16_device_from_f32(x); }

#endif
