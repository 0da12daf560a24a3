// bf16 rounding on the device with the shared numerics header's bits.
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

#endif
