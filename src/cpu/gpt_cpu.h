// GPT-2 forward and backward on the CPU (C + OpenMP), over the parameter buffer of model.h.
// The forward reads fp32 parameters (a policy with bf16 weights hands in bf16-exact values); matmul
// operands are rounded to the format in MatmulFormat before each matmul (fp32 accumulation always).
#ifndef LP_CPU_GPT_CPU_H
#define LP_CPU_GPT_CPU_H

#include "model.h"

typedef enum {
    MATMUL_FP32,  // operands used as they are
    MATMUL_BF16,  // both operands rounded to bf16 (nearest-even) before the product, in forward and backward
                  // (the four linear layers per block and the LM head; attention's QK^T and PV stay fp32)
} MatmulFormat;

typedef struct GPTCpu GPTCpu;

// Allocates activations for batches of at most B sequences of at most T tokens.
GPTCpu *gpt_cpu_create(const ParamTable *table, int B, int T);
void gpt_cpu_free(GPTCpu *model);
void gpt_cpu_set_matmul_format(GPTCpu *model, MatmulFormat format);
// Bytes gpt_cpu_create allocates for activations and their gradients at (B, T), without allocating.
// MATMUL_BF16 adds the rounded operand copies on top (gpt_cpu_set_matmul_format allocates them).
size_t gpt_cpu_activation_bytes(const ParamTable *table, int B, int T);

// inputs, targets: (B, T) token ids. targets may be NULL (no loss). Returns the mean cross-entropy over
// the B*T positions (or 0 with NULL targets).
float gpt_cpu_forward(GPTCpu *model, const float *params, const int *inputs, const int *targets, int B, int T);
// Probabilities after the last forward: (B, T, Vp); entries beyond vocab_size are 0.
const float *gpt_cpu_probs(const GPTCpu *model);
// Backward of (loss_scale * mean loss) of the last forward (which must have had targets); ADDS the
// parameter gradients into grads: (num_params). Gradient accumulation over micro-steps passes
// loss_scale = 1/accum_steps.
void gpt_cpu_backward(GPTCpu *model, const float *params, float *grads, float loss_scale);

#endif
