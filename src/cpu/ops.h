// The operations of GPT-2 on the CPU, one file each, in fp32 with OpenMP.
// Conventions: N = B*T rows; tensors are row-major with their shape in the comments. A forward overwrites
// its outputs. A backward ADDS into every gradient it produces (activation and parameter gradients alike),
// so the caller zeroes gradient buffers before their first use; the one exception, attention_tiled_backward,
// overwrites. No op reduces across threads: every output is summed in a fixed order, so results do not depend
// on the thread count.
#ifndef LP_CPU_OPS_H
#define LP_CPU_OPS_H

#include <stddef.h>

#include "cpu/gpt_cpu.h"
#include "numerics/exmy.h"
#include "operand_cast.h"

#ifdef __cplusplus
extern "C" {
#endif

// encoder.c: out = wte[token] + wpe[position].
// out: (B, T, C), tokens: (B, T), wte: (Vp, C), wpe: (block_size, C)
void encoder_forward(float *out, const int *tokens, const float *wte, const float *wpe, int B, int T, int C);
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tokens, int B, int T, int C);

// layernorm.c: out = (inp - mean) * rstd * weight + bias over the last axis, eps 1e-5.
// out, inp: (N, C); mean, rstd: (N) saved for the backward; weight, bias: (C)
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C);
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C);

// matmul.c: out = inp @ weight^T + bias, fp32 accumulation.
// out: (N, OC), inp: (N, C), weight: (OC, C) as in llm.c, bias: (OC) or NULL
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC);
// dinp: (N, C) += dout @ weight; dweight: (OC, C) += dout^T @ inp; dbias: (OC) += column sums of dout
// (dbias may be NULL).
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int C, int OC);

// quantize.c: the matmul operand casts of operand_cast.h over a whole tensor. The one place where
// operands meet their format: the linear layers, the attention products and the LM head all cast through here.
// out = each element of inp cast. out and inp: (n); out may equal inp.
void quantize_operand(float *out, const float *inp, size_t n, const OperandCast *cast);
// out = each row of inp quantized to 8 bits by its own absmax (numerics/activation_quant.h): the block
// linears' inputs under precision.activation_quant = int8. out and inp: (rows, cols); out may equal inp.
void quantize_activation_rows(float *out, const float *inp, size_t rows, size_t cols);

// attention.c: causal multi-head self-attention, softmax(q k^T / sqrt(hs)) v per head, hs = C / NH.
// out: (B, T, C); att: (B, NH, T, T) softmax probabilities saved for the backward (0 above the
// diagonal, fp32); qkv: (B, T, 3C) holding q, k, v side by side, each split into NH heads of hs channels.
// The products QK^T and PV (and their backward products) read qkv and dout as given, so the caller passes
// them already cast; the operands formed inside, the probabilities and the score gradients, are cast with
// `cast`.
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH,
                       const OperandCast *cast);
// The output of the last of T positions of one sequence only (a decoding step), by the same arithmetic as
// attention_forward's row T-1. out: (C); att: (NH, T) scratch for its probabilities; qkv: (T, 3C).
void attention_forward_last(float *out, float *att, const float *qkv, int T, int C, int NH, const OperandCast *cast);
// dqkv: (B, T, 3C), dout: (B, T, C)
void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int T, int C,
                        int NH, const OperandCast *cast);

// attention_tiled.c: the same attention, fused (flash-style, precision.attention_impl = fused): the C reference
// of kernels/flash_attention.cuh, tiled by attention_tiles.h, never storing (T, T). Operands as for
// attention_forward (qkv and dout arrive cast; the probabilities and score gradients are cast here); every
// format but fp8 (fatal()). out: (B, T, C); lse: (B, NH, T) each query row's log-sum-exp of its scores, saved
// for the backward, which recomputes the probabilities as exp(score - lse).
void attention_tiled_forward(float *out, float *lse, const float *qkv, int B, int T, int C, int NH,
                             const OperandCast *cast);
// The output of the last of T positions of one sequence (a decoding step), the same bits as
// attention_tiled_forward's row T-1. out: (C); qkv: (T, 3C).
void attention_tiled_forward_last(float *out, const float *qkv, int T, int C, int NH, const OperandCast *cast);
// dqkv: (B, T, 3C) OVERWRITTEN (not added to); dout: (B, T, C) cast; out, lse: the forward's (out as stored).
void attention_tiled_backward(float *dqkv, const float *dout, const float *qkv, const float *out, const float *lse,
                              int B, int T, int C, int NH, const OperandCast *cast);

// gelu.c: GELU, tanh approximation. out, inp: (n)
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);

// residual.c: out = a + b, all (n). Its backward is the identity into both summands, which gpt_cpu.c
// gets for free by letting both branches add into one residual-stream gradient.
void residual_forward(float *out, const float *a, const float *b, size_t n);

// classifier.c: softmax over the first V of Vp logits (padded logits never reach the loss) and
// cross-entropy. probs: (N, Vp) with entries beyond V set to 0; logits: (N, Vp); targets: (N) or NULL;
// losses: (N) = -log probs[target], written only when targets is not NULL.
void classifier_forward(float *probs, float *losses, const float *logits, const int *targets, int N, int V,
                        int Vp);
// dlogits: (N, Vp) += (probs - onehot(target)) * dloss on the first V entries; the padded entries get
// nothing. dloss is the weight of each position's loss (loss_scale / N for a mean).
void classifier_backward(float *dlogits, const float *probs, const int *targets, float dloss, int N, int V,
                         int Vp);

// reduce.c: dst (C) += the sum of the N rows of src (N, C), each column summed in row order.
void sum_rows_add(float *dst, const float *src, int N, int C);

#ifdef __cplusplus
}
#endif

#endif
