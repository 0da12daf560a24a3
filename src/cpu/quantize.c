// The one place where matmul operands meet their format: every matmul of gpt_cpu.c (forward and backward)
// passes its operands through here first. Formats with fewer bits or per-tensor scales plug in here.
#include "cpu/ops.h"
#include "numerics/bf16.h"

void quantize_operand(float *out, const float *inp, size_t n, MatmulFormat format) {
    switch (format) {
    case MATMUL_FP32:
        if (out != inp) {
#pragma omp parallel for schedule(static)
            for (size_t i = 0; i < n; i++) out[i] = inp[i];
        }
        break;
    case MATMUL_BF16:
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = round_bf16(inp[i]);
        break;
    }
}
