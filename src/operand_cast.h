// A matmul operand as its format sees it: each element cast to the format and kept in fp32 (the products
// still accumulate in fp32). Host and device: the CPU's quantize.c and the CUDA quantize kernels cast every
// element through quantize_operand_value, so both backends feed their matmuls the same operand values.
#ifndef LP_OPERAND_CAST_H
#define LP_OPERAND_CAST_H

#include "numerics.h"
#include "policy.h"

typedef struct {
    MatmulFormat format;    // MATMUL_FP32 leaves values unchanged
    ExmyFormat grid;        // MATMUL_EXMY, MATMUL_FP8: the format cast to
    RoundingMode rounding;  // MATMUL_EXMY: nearest-even or toward zero; MATMUL_FP8 rounds to nearest-even
    float scale;            // MATMUL_FP8: x * scale is clamped and cast, the result multiplied by 1/scale
    int margin;             // MATMUL_FP8: the margin of scales computed from a current amax
    int bf16_first;         // MATMUL_EXMY: x is rounded to bf16 before `rounding` (2405.18710's masking of bf16)
} OperandCast;

LP_HD float quantize_operand_value(float x, const OperandCast *cast) {
    switch (cast->format) {
    case MATMUL_BF16: return round_bf16(x);
    case MATMUL_EXMY:
        return exmy_quantize(cast->bf16_first ? round_bf16(x) : x, cast->grid, cast->rounding, OVERFLOW_SATURATE, 0u);
    case MATMUL_FP8: return quantize_dequantize_scaled(x, cast->scale, cast->grid, ROUND_NEAREST_EVEN, 0u);
    case MATMUL_FP32: break;
    }
    return x;
}

// The cast of one use of an operand whose amax is known now (current scaling): for fp8, `grid` (E4M3 for
// forward operands, E5M2 for gradients) with the scale that puts amax `margin` binades below its largest
// value; any other format is returned unchanged.
LP_HD OperandCast operand_cast_current(OperandCast cast, ExmyFormat grid, float amax) {
    if (cast.format != MATMUL_FP8) return cast;
    cast.grid = grid;
    cast.scale = scale_from_amax(amax, grid.max_finite, cast.margin, 1.0f);
    return cast;
}

#ifdef __cplusplus
extern "C" {
#endif

// The cast a precision asks for, with scale 1 and, for fp8, the E4M3 grid of forward operands (the caller
// switches gradients to E5M2 and sets each use's scale). Overflow saturates in every format. fatal() for an
// eXmY rounding other than nearest-even or toward zero. (quantize.c)
OperandCast operand_cast_for(const MatmulPrecision *precision);

#ifdef __cplusplus
}
#endif

#endif
