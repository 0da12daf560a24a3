// GPT-2 forward and backward on one GPU: the layer sequence of src/cpu/gpt_cpu.c over the kernels of
// kernels/, with every matrix product on cuBLASLt. Activations are stored in the policy's activation format
// (fp32, or bf16: each kernel reads bf16 and computes in fp32, rounding what it stores once, the CPU's
// gpt_cpu_store); activation gradients are fp32. Matmul operands are in their format (bf16 operands
// multiply on bf16 tensor cores; fp8 and eXmY are simulated: cast values in fp32), read straight from the
// stored activations and weights where those are already in it, and every product accumulates in fp32.
#ifndef LP_CUDA_GPT_CUDA_H
#define LP_CUDA_GPT_CUDA_H

#include <cuda_runtime.h>

#include "model.h"
#include "numerics/common.h"
#include "numerics/bf16.h"
#include "policy.h"

typedef struct GPTCuda GPTCuda;

// Allocates the activations (one device allocation) for batches of at most B sequences of T tokens, with
// the policy's operand formats (gpt_cpu.h's semantics, fp8 scaling included). allow_tf32: fp32 products
// may use TF32.
GPTCuda *gpt_cuda_create(const ParamTable *table, const Policy *policy, int B, int T, int allow_tf32,
                         cudaStream_t stream);
void gpt_cuda_free(GPTCuda *model);
// Device bytes gpt_cuda_create allocates for (B, T) under policy, without allocating.
size_t gpt_cuda_activation_bytes(const ParamTable *table, const Policy *policy, int B, int T);

// How the passes read one parameter tensor (device memory): as stored, with no fp32 copy.
typedef enum { STORED_FP32, STORED_BF16, STORED_GRID } WeightStore;
typedef struct {
    const void *data;    // the tensor's (numel) values, fp32 or bf16, or its DQT grid codes (int8)
    WeightStore store;
    const float *steps;  // STORED_GRID: the step of each layer slice (code * step is the weight); else NULL
} TensorWeights;

// Every tensor as the passes read it. The 1-D tensors (layernorm weights, biases) share one store, fp32 or
// bf16; a policy's matrices and embeddings are in that store too, or, under DQT, on the grid (the matrices;
// the embeddings under precision.embeddings = grid), decoded one slice at a time into the model's scratch
// right before a product (or the encoder) reads it, or in their own store (the embeddings, fp32 or bf16).
typedef struct {
    TensorWeights tensors[NUM_PARAM_TENSORS];
} GPTWeights;

// inputs, targets: (B, T) token ids on the host; targets may be NULL. Returns the mean loss (0 without
// targets), summed on the host in double in position order, as the CPU does.
float gpt_cuda_forward(GPTCuda *model, const GPTWeights *weights, const int *inputs, const int *targets, int B, int T);
// Where the backward puts the gradients (device, num_params): added into fp32 gradients, or, with bf16
// set, rounded into the stored bf16 gradients once per tensor slice and micro-step (bf16(stored + the
// slice's fp32 gradient of the micro-step), the CPU backend's rule), formed in the model's own scratch,
// so that no fp32 copy of all gradients exists.
typedef struct {
    float *fp32;
    bf16 *bf16;
    // Called, when not NULL, with each tensor slice [offset, offset + n) of the parameters as soon as its
    // gradient of the micro-step is final (rounded, under bf16): once per slice, in an order that covers
    // every parameter. Its work queued on the model's stream after that point sees the final gradient.
    void (*ready)(void *context, size_t offset, size_t n);
    void *context;
} GradientTarget;

// ADDS the gradient of loss_scale * (the last forward's mean loss) into the target.
void gpt_cuda_backward(GPTCuda *model, const GPTWeights *weights, const GradientTarget *grads, float loss_scale);
// Under bf16 gradients: the model's fp32 gradient scratch (*floats elements, at least 2C), free between
// backward passes, for the backend's gradient reductions; NULL and 0 otherwise.
float *gpt_cuda_gradient_window(GPTCuda *model, size_t *floats);
// The last forward's logits / probabilities at position t of every sequence, (B, Vp), widened to fp32 in host
// memory the model owns (valid until the next call). Logits only until the next backward, which may
// overwrite them with their gradient.
const float *gpt_cuda_logits_at(GPTCuda *model, int t);
const float *gpt_cuda_probs_at(GPTCuda *model, int t);
// fp8 delayed scaling's amax histories (gpt_cpu_scaling_state's layout and meaning): *data is their host
// staging copy, which gpt_cuda_scaling_download fills from the device (before a checkpoint is written) and
// gpt_cuda_scaling_upload copies to the device (after a checkpoint filled it).
size_t gpt_cuda_scaling_state(GPTCuda *model, float **data);
void gpt_cuda_scaling_download(GPTCuda *model);
void gpt_cuda_scaling_upload(GPTCuda *model);

#endif
