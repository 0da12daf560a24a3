// The one place where matmul operands meet their format: every matmul of gpt_cpu.c and attention.c (forward
// and backward) passes its operands through here first.
#include <stdio.h>

#include "cpu/ops.h"
#include "formats.h"
#include "numerics/activation_quant.h"
#include "numerics/bf16.h"
#include "numerics/scaling.h"
#include "util.h"

// The format a config's "eXmY" name means (formats.c): e4m3 is OCP FP8 E4M3, the rest the IEEE layout.
static ExmyFormat named_format(int exp_bits, int man_bits) {
    char name[16];
    snprintf(name, sizeof name, "e%dm%d", exp_bits, man_bits);
    ExmyFormat f;
    if (!formats_parse(name, &f)) fatal("matmul format %s is not an eXmY format (1 <= X <= 8, 0 <= Y <= 23)", name);
    return f;
}

OperandCast operand_cast_for(const MatmulPrecision *precision) {
    OperandCast cast = {precision->format, exmy_e4m3(), ROUND_NEAREST_EVEN, 1.0f, precision->margin, 0};
    if (precision->format == MATMUL_EXMY) {
        if (precision->rounding != ROUND_NEAREST_EVEN && precision->rounding != ROUND_TOWARD_ZERO)
            fatal("eXmY matmul operands round to nearest or toward zero");
        cast.grid = named_format(precision->exp_bits, precision->man_bits);
        cast.rounding = precision->rounding;
        cast.bf16_first = precision->bf16_first;
    }
    return cast;
}

void quantize_operand(float *out, const float *inp, size_t n, const OperandCast *cast) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = quantize_operand_value(inp[i], cast);
}

void quantize_activation_rows(float *out, const float *inp, size_t rows, size_t cols) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = inp + r * cols;
        float absmax = 0.0f;
        for (size_t i = 0; i < cols; i++) absmax = fmaxf(absmax, fabsf(x[i]));
        float scale = activation_quant_scale(absmax);
        for (size_t i = 0; i < cols; i++) out[r * cols + i] = activation_quant_value(x[i], scale);
    }
}
