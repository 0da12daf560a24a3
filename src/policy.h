// Precision policies: how weights, gradients, optimizer state and matmul operands are stored and rounded.
// A policy is a set of independent axes; named presets fill them in (DESIGN.md, "Precision policies"), and
// the config's `precision` section may override single axes.
#ifndef LP_POLICY_H
#define LP_POLICY_H

#include <stddef.h>

#include "config.h"
#include "numerics/rounding.h"

#ifdef __cplusplus
extern "C" {
#endif

// What forward/backward read. Under WEIGHTS_INT_GRID (DQT) the 2-D weights live on the grid (one fp32 scale
// per layer slice of a matrix; the embeddings as the embeddings axis says); 1-D parameters (biases,
// LayerNorm) stay fp32. WEIGHTS_BITNET (BitNet b1.58) stores fp32 latent weights; the passes read
// absmean-ternary copies of the 2-D weights (scale from the current latent weights) and the weight gradient
// goes straight through to the latent weights.
typedef enum { WEIGHTS_FP32, WEIGHTS_BF16, WEIGHTS_INT_GRID, WEIGHTS_BITNET } WeightStorage;

// The embeddings (wte, wpe) under grid or bitnet weights: quantized as the other 2-D weights, or kept in
// fp32 (updated exactly), or in bf16 (the fp32 AdamW step stochastically rounded to bf16; grid weights only).
// Under other weights they are stored as the weights are (EMBEDDINGS_AS_WEIGHTS).
typedef enum { EMBEDDINGS_AS_WEIGHTS, EMBEDDINGS_FP32, EMBEDDINGS_BF16 } EmbeddingStorage;

// How the AdamW step reaches the stored weights.
typedef enum {
    UPDATE_EXACT,        // fp32 weights, fp32 step
    UPDATE_FP32_MASTER,  // fp32 master copy stepped in fp32, bf16 weights = RNE(master)
    UPDATE_BF16_RNE,     // bf16 weights, step formed in bf16 ops, weight ⊕ Δ rounded to nearest
    UPDATE_MCF_GROW,     // Collage: (hi, lo) MCF pair, Grow((hi, lo), Δ); forward reads hi
    UPDATE_KAHAN,        // bf16 weights with a bf16 Kahan compensation buffer
    UPDATE_SR,           // bf16 weights, weight + Δ computed in fp32 and rounded stochastically
    UPDATE_GRID_SR,      // DQT: fp32 AdamW step on the dequantized weight, stochastically rounded onto the grid
} WeightUpdate;

typedef enum { STATE_FP32, STATE_BF16, STATE_MCF } MomentStorage;  // Adam m, v (MCF: bf16 pair)
typedef enum { GRADS_FP32, GRADS_BF16 } GradStorage;

// Every tensor the forward stores between ops (embedding output, layernorm outputs, qkv, attention output,
// projections, residual stream, GELU input and output, logits): fp32, or rounded once to bf16 (nearest-even)
// as it is written, each op computing in fp32 from its inputs. Softmax probabilities, layernorm statistics
// and the loss stay fp32 (they are the ops' own fp32 internals).
typedef enum { ACTIVATIONS_FP32, ACTIVATIONS_BF16 } ActivationStorage;

// The block linears' inputs (qkv, attention projection, fc, fc projection) under grid or bitnet weights: as
// they are, or 8-bit per-token absmax quantized before their matmul cast (numerics/activation_quant.h), with
// a straight-through gradient and the weight gradient formed from the quantized input, as BitNet b1.58 does.
typedef enum { ACTIVATION_QUANT_NONE, ACTIVATION_QUANT_INT8 } ActivationQuant;

typedef enum {
    MATMUL_FP32,  // operands used as they are
    MATMUL_BF16,  // operands rounded to bf16 (nearest-even) before the product, in forward and backward
    MATMUL_FP8,   // E4M3 forward operands, E5M2 gradients, per-tensor scales (delayed or current)
    MATMUL_EXMY,  // any eXmY, rounding nearest or toward zero, no scaling (the sweeps of arXiv 2405.18710)
} MatmulFormat;

typedef enum { SCALING_DELAYED, SCALING_CURRENT } ScalingMode;

// How attention is computed. FUSED (flash-style: src/cpu/attention_tiled.c, kernels/flash_attention.cuh)
// keeps one log-sum-exp per query row and recomputes the probabilities in the backward; MATERIALIZED
// (src/cpu/attention.c) stores the (B, NH, T, T) probabilities. Both form the exactly normalised
// probabilities before their cast and product, so they differ by fp32 rounding (and where that flips a cast of
// a probability). fp8 attention needs MATERIALIZED: it scales each query row by its current amax.
typedef enum { ATTENTION_FUSED, ATTENTION_MATERIALIZED } AttentionImpl;

typedef struct {
    MatmulFormat format;
    int exp_bits, man_bits;  // MATMUL_EXMY
    RoundingMode rounding;   // MATMUL_EXMY: ROUND_NEAREST_EVEN or ROUND_TOWARD_ZERO
    int bf16_first;          // MATMUL_EXMY: round to bf16 (nearest-even) first, as 2405.18710 masks bf16 values
    ScalingMode scaling;     // MATMUL_FP8
    int amax_history;        // MATMUL_FP8 with delayed scaling: steps of amax history
    int margin;              // MATMUL_FP8: scale = (fmt_max / amax) / 2^margin
} MatmulPrecision;

typedef struct {
    char name[CONFIG_NAME_MAX];  // the preset, with "+overrides" when axes were overridden
    WeightStorage weights;
    int grid_bits;               // WEIGHTS_INT_GRID: b-bit grid, or 0 for ternary {-1, 0, 1}
    EmbeddingStorage embeddings;
    int dqt_rescale;             // WEIGHTS_INT_GRID: 1 = each step recomputes the scales from the weights
    WeightUpdate update;
    MomentStorage adam_m;
    MomentStorage adam_v;
    GradStorage grads;
    ActivationStorage activations;
    ActivationQuant activation_quant;  // the block linears' inputs (grid or bitnet weights only)
    MatmulPrecision matmul;      // the four linear layers of each block, forward and backward
    MatmulPrecision attention;   // the attention products QK^T and PV, forward and backward
    AttentionImpl attention_impl;
    MatmulPrecision lm_head;     // the LM head's product (logits = lnf @ wte^T), forward and backward
    int allow_tf32;              // fp32 products may round their operands to TF32 (CUDA backend; the CPU has no TF32)
} Policy;

// The policy a config asks for: its preset (aliases included) with the `precision` section's overrides.
// fatal() naming the key for an unknown preset, an unknown value, or an illegal combination.
Policy policy_from_config(const Config *cfg);
// Bytes per parameter of weights + gradients + optimizer state (DESIGN.md's policy table), at the rate of
// the block's 2-D weights (under DQT, 1-D parameters are fp32, a negligible share).
size_t policy_bytes_per_param(const Policy *policy);
// The same for the embeddings (wte, wpe), which the embeddings axis may keep in another format.
size_t policy_embedding_bytes_per_param(const Policy *policy);
// Whether tensor (a ParamTensorId) is read through the grid or bitnet quantizer: the block's 2-D weights,
// and the embeddings unless the embeddings axis keeps them in high precision.
int policy_quantizes_tensor(const Policy *policy, int tensor, int is_matrix);
// One line per quantity: its storage format.
void policy_print(const Policy *policy);

#ifdef __cplusplus
}
#endif

#endif
