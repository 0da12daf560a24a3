// GELU with the tanh approximation of GPT-2, per element, host and device (src/cpu/gelu.c and
// kernels/gelu.cuh):  gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// The same expressions on both sides; the C library's tanhf and CUDA's may still differ in the last bit.
#ifndef LP_GELU_H
#define LP_GELU_H

#include "numerics/common.h"

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)
#define GELU_CUBIC 0.044715f

LP_HD float gelu_value(float x) {
    float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

// d gelu / dx
LP_HD float gelu_derivative(float x) {
    float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    float th = tanhf(u);
    float du_dx = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
}

#endif
