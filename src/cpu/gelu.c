// GELU over a tensor: src/gelu.h's per-element functions, shared with the device.
#include "cpu/ops.h"
#include "gelu.h"

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = gelu_value(inp[i]);
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] += gelu_derivative(inp[i]) * dout[i];
}
