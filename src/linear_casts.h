// The casts of the block linear layers' operands, shared by both backends: the format's cast and, for fp8,
// the per-tensor scales with their amax histories (gpt_cpu.h describes the rules). Host code: a backend
// reduces the amax of a tensor its own way and hands it in; the scale, the history and the cast's grid are
// decided here, so both backends scale alike.
#ifndef LP_LINEAR_CASTS_H
#define LP_LINEAR_CASTS_H

#include <stddef.h>

#include "operand_cast.h"

#ifdef __cplusplus
extern "C" {
#endif

// The four linear layers of a block, and the roles of their operands.
typedef enum { LINEAR_QKV, LINEAR_ATTPROJ, LINEAR_FC, LINEAR_FCPROJ, NUM_BLOCK_LINEARS } BlockLinear;
typedef enum { OPERAND_INPUT, OPERAND_WEIGHT, OPERAND_OUTPUT_GRAD, NUM_OPERAND_ROLES } OperandRole;

// Per-tensor scales (operand_scaling.c) for fp8 operands, scale = (fmt_max / amax) / 2^margin. `count`
// tensors (one per operand and use site), numbered 0..count-1. Current scaling takes amax from the tensor
// being cast; delayed scaling from the largest amax of the tensor's last `history_length` uses, falling back
// to the current amax while that history is empty (or holds no usable amax).
typedef struct {
    ScalingMode mode;
    int margin;
    int count;
    int history_length;  // delayed: amaxes kept per tensor
    float *history;      // delayed: (count, history_length) newest first, 0 where not filled yet; else NULL
} OperandScaling;

void operand_scaling_init(OperandScaling *s, ScalingMode mode, int count, int history_length, int margin);
void operand_scaling_free(OperandScaling *s);
// The scale for a use of tensor `id` whose own amax is `amax`. Without a usable amax (all zero, inf or
// NaN) the scale is 1.
float operand_scaling_scale(const OperandScaling *s, int id, float amax, float fmt_max);
// Appends the amax of a use of tensor `id` to its history, dropping the oldest (delayed; nothing otherwise).
void operand_scaling_record(OperandScaling *s, int id, float amax);

// The linear layers' casts: one fp8 scale per (layer, linear, role), (L, NUM_BLOCK_LINEARS, NUM_OPERAND_ROLES).
typedef struct {
    OperandCast base;        // the format's cast (fp8: grid and scale set per use)
    OperandScaling scaling;  // fp8: the amax histories (delayed) and the scale rule
    float *scales;           // fp8: the scale of each operand's latest cast; the backward re-casts with the forward's
    float *forward_amax;     // fp8: input and weight amaxes of the last forward, recorded when its backward runs
    int forward_unrecorded;  // the last forward's amaxes are not in the histories yet
    int count;               // operand tensors
} LinearCasts;

void linear_casts_init(LinearCasts *casts, const MatmulPrecision *linear, int n_layer);
void linear_casts_free(LinearCasts *casts);
// Whether the cast of this use needs the operand's amax (fp8, except the backward's re-casts of inputs and
// weights, which reuse the forward's scales).
int linear_cast_needs_amax(const LinearCasts *casts, OperandRole role, int backward);
// The cast of one use of an operand: fp8 casts forward operands to E4M3 and output gradients to E5M2, each
// with its tensor's scale of this use (from `amax` when linear_cast_needs_amax, else the forward's). An
// output gradient's amax enters its history now; forward operands' when the backward of that forward runs.
OperandCast linear_cast_of_use(LinearCasts *casts, int layer, BlockLinear linear, OperandRole role, int backward,
                               float amax);
// Marks the end of a forward (its amaxes wait for a backward: evaluation leaves the histories alone) and
// of a backward (the forward's amaxes enter their histories, once).
void linear_casts_forward_done(LinearCasts *casts);
void linear_casts_backward_done(LinearCasts *casts);
// The delayed-scaling state for checkpoints (gpt_cpu_scaling_state's meaning): *data and its float count,
// or 0 and NULL.
size_t linear_casts_scaling_state(LinearCasts *casts, float **data);

#ifdef __cplusplus
}
#endif

#endif
