// 8-bit per-token absmax quantization of the block linears' inputs, as the BitNet b1.58 and DQT code
// (utils_quant.activation_quant) applies it: a row x (one token's values) is scaled by s = 127 / max|x|,
// rounded to an integer (nearest-even here), clamped to [-128, 127] and divided by s again. The floor 1e-5
// on max|x| keeps an all-zero row at zero instead of dividing by zero. The backward is straight-through
// (the caller passes the output's gradient to the input unchanged). Host and device: a backend reduces the
// row's absmax its own way and quantizes each element with these.
#ifndef LP_NUMERICS_ACTIVATION_QUANT_H
#define LP_NUMERICS_ACTIVATION_QUANT_H

#include "int_grid.h"

// The scale s of a row whose largest magnitude is absmax.
LP_HD float activation_quant_scale(float absmax) { return 127.0f / fmaxf(absmax, 1e-5f); }

// One element x of a row with scale s, as the matmul receives it: code / s, code in [-128, 127]. The clamp
// compares rather than calling fminf/fmaxf so that a NaN stays NaN (a diverged run must still show it).
LP_HD float activation_quant_value(float x, float scale) {
    float code = round_to_integer(x * scale, ROUND_NEAREST_EVEN, 0u);
    code = code < -128.0f ? -128.0f : code > 127.0f ? 127.0f : code;
    return code / scale;
}

#endif
