// GPT-2 forward and backward on the CPU (C + OpenMP), over the parameter buffer of model.h.
// The forward reads fp32 parameters (a policy with bf16 weights hands in bf16-exact values); matmul
// operands are cast to their format before each matmul (gpt_cpu_set_precision), and every product
// accumulates in fp32.
#ifndef LP_CPU_GPT_CPU_H
#define LP_CPU_GPT_CPU_H

#include "linear_casts.h"
#include "model.h"
#include "policy.h"

typedef struct GPTCpu GPTCpu;


// Allocates activations for batches of at most B sequences of at most T tokens. Matmuls start in fp32.
GPTCpu *gpt_cpu_create(const ParamTable *table, int B, int T);
void gpt_cpu_free(GPTCpu *model);

// Matmul operand formats. `linear` applies to the four linear layers of each block, forward and backward:
//   fp32 and bf16 (nearest-even); eXmY with its rounding (nearest-even or toward zero), saturating, unscaled;
//   fp8: E4M3 inputs and weights, E5M2 output gradients, one scale per tensor and use (see below).
// `attention` applies to the attention products QK^T and PV (q, k, v, the probabilities, and in the backward
// the output and score gradients), `lm_head` to the LM head (lnf, wte, and the logits' gradient). Both take
// every format; under fp8 they scale by the current amax (they keep no history): q, k, v, the output
// gradient and the LM head's operands per tensor, the probabilities and score gradients per query row.
// fp8 scales: every linear layer of every block has one scale per operand role. The forward casts its
// input and weight, the backward its output gradient, each with a scale from its tensor's amax (current)
// or from the largest amax of that tensor's last amax_history uses (delayed; the first use, with an empty
// history, takes the current amax). The backward re-casts the input and weight with the forward's scales,
// so its products see exactly the forward's operands. A use enters its tensor's history after it: an
// output gradient as it is cast, the forward's operands when the backward of that forward runs, so that
// forwards without a backward (evaluation, sampling) leave the histories alone. The bias gradient sums
// the output gradient before its cast (it is no matmul operand).
void gpt_cpu_set_precision(GPTCpu *model, const MatmulPrecision *linear, const MatmulPrecision *attention,
                           const MatmulPrecision *lm_head);
// ACTIVATIONS_BF16: every activation the forward stores (StoredActivation below) is rounded to bf16 as it is
// written; the ops compute in fp32 from them. Starts fp32.
void gpt_cpu_set_activations(GPTCpu *model, ActivationStorage activations);
// How attention is computed (policy.h): ATTENTION_FUSED (attention_tiled.c; the forward saves (L, B, NH, T)
// log-sum-exps) or ATTENTION_MATERIALIZED (attention.c; it saves (L, B, NH, T, T) probabilities). Starts
// fused, the config's default; a change reallocates the activations.
void gpt_cpu_set_attention(GPTCpu *model, AttentionImpl attention);
AttentionImpl gpt_cpu_attention_impl(const GPTCpu *model);
// ACTIVATION_QUANT_INT8: the block linears' inputs are quantized per row (quantize_activation_rows) before
// their matmul cast, in the forward and in the backward's weight-gradient product; the input gradient passes
// straight through. Starts ACTIVATION_QUANT_NONE.
void gpt_cpu_set_activation_quant(GPTCpu *model, ActivationQuant quant);
// x (n) as a stored activation: rounded to bf16 in place under ACTIVATIONS_BF16, else unchanged.
void gpt_cpu_store(const GPTCpu *model, float *x, size_t n);
// The delayed-scaling state, for checkpoints: sets *data to the live amax histories, (L, NUM_BLOCK_LINEARS,
// NUM_OPERAND_ROLES, amax_history) newest first with 0 for empty slots, and returns their number of floats;
// returns 0 (and NULL) when no state is kept (not fp8 with delayed scaling). Writing saved values back
// into the buffer resumes a run exactly.
size_t gpt_cpu_scaling_state(GPTCpu *model, float **data);

// Bytes of activations and their gradients at (B, T) under `attention`, without allocating.
// Matmul formats other than fp32 add copies of the cast operands on top (gpt_cpu_set_precision allocates
// them): (B*T*4C + max(4C, Vp)*C + B*T*max(4C, Vp)) floats.
size_t gpt_cpu_activation_bytes(const ParamTable *table, int B, int T, AttentionImpl attention);
// Bytes of those operand copies at (B, T).
size_t gpt_cpu_operand_copy_bytes(const ParamTable *table, int B, int T);

// inputs, targets: (B, T) token ids. targets may be NULL (no loss). Returns the mean cross-entropy over
// the B*T positions (or 0 with NULL targets).
float gpt_cpu_forward(GPTCpu *model, const float *params, const int *inputs, const int *targets, int B, int T);
// Probabilities after the last forward: (B, T, Vp); entries beyond vocab_size are 0.
const float *gpt_cpu_probs(const GPTCpu *model);
// Logits of the last forward: (B, T, Vp). A backward overwrites them with their gradient.
const float *gpt_cpu_logits(const GPTCpu *model);
// Backward of (loss_scale * mean loss) of the last forward (which must have had targets); ADDS the
// parameter gradients into grads: (num_params). Gradient accumulation over micro-steps passes
// loss_scale = 1/accum_steps.
void gpt_cpu_backward(GPTCpu *model, const float *params, float *grads, float loss_scale);

// The pieces of the forward that a decoding step (kv_cache.h) runs on single positions, so that its
// products and casts are the forward's own: they read the model's operand formats and copies, not its
// activations. out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias: block `layer`'s linear layer `linear`.
void gpt_cpu_linear_forward(GPTCpu *model, int layer, BlockLinear linear, float *out, const float *inp,
                            const float *weight, const float *bias, int N, int C, int OC);
// logits (N, Vp) = lnf (N, C) @ wte (Vp, C)^T, operands cast like attention's.
void gpt_cpu_lm_head_forward(GPTCpu *model, float *logits, const float *lnf, const float *wte, int N, int C, int Vp);
// The cast of the attention products' operands formed inside attention (the probabilities).
const OperandCast *gpt_cpu_attention_cast(const GPTCpu *model);
// qkv (n) cast as attention's q, k, v operands: qkv itself under fp32, else the cast values in copy.
const float *gpt_cpu_attention_operand(const GPTCpu *model, float *copy, const float *qkv, size_t n);

// For tests: the activations the last forward stored, each (n) as laid out in the buffers (per-layer ones
// stacked over layers; proj_out holds the last layer's fcproj output).
typedef struct {
    const char *name;
    const float *data;
    size_t n;
} StoredActivation;
#define NUM_STORED_ACTIVATIONS 12
void gpt_cpu_stored_activations(const GPTCpu *model, StoredActivation list[NUM_STORED_ACTIVATIONS]);

// For tests: one cast of a linear layer's operand, the values before and after it.
typedef struct {
    int layer;
    BlockLinear linear;
    OperandRole role;
    int backward;           // 1 for the casts of the backward pass
    float scale;            // fp8: the scale cast with; 1 otherwise
    const float *original;  // (n) before the cast (and before activation_quant's rounding of inputs)
    const float *cast;      // (n) what the matmul received
    size_t n;
} OperandView;
typedef void (*OperandObserver)(void *ctx, const OperandView *view);
// Calls observer(ctx, view) for every operand of every block linear layer as its matmul receives it (under
// fp32 too, where cast == original); NULL stops.
void gpt_cpu_observe_operands(GPTCpu *model, OperandObserver observer, void *ctx);

#endif
