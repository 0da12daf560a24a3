// The casts of the block linear layers' operands, shared by both backends: the format's cast and, for fp8,
// the per-tensor scales with their amax histories (gpt_cpu.h describes the rules). A backend reduces the
// amax of a tensor its own way; the scale, the history and the cast's grid are decided by the functions
// here, host and device, so both backends scale alike.
#ifndef LP_LINEAR_CASTS_H
#define LP_LINEAR_CASTS_H

#include <stddef.h>

#include "numerics/scaling.h"
#include "operand_cast.h"

// The four linear layers of a block, and the roles of their operands.
typedef enum { LINEAR_QKV, LINEAR_ATTPROJ, LINEAR_FC, LINEAR_FCPROJ, NUM_BLOCK_LINEARS } BlockLinear;
typedef enum { OPERAND_INPUT, OPERAND_WEIGHT, OPERAND_OUTPUT_GRAD, NUM_OPERAND_ROLES } OperandRole;

// Per-tensor scales for fp8 operands, scale = (fmt_max / amax) / 2^margin. `count` tensors (one per operand
// and use site), numbered 0..count-1. Current scaling takes amax from the tensor being cast; delayed scaling
// from the largest amax of the tensor's last `history_length` uses, falling back to the current amax while
// that history is empty (or holds no usable amax). The history is kept newest first in one buffer, so that
// buffer is the whole state between steps: a checkpoint that saves it resumes exactly.
typedef struct {
    ScalingMode mode;
    int margin;
    int count;
    int history_length;  // delayed: amaxes kept per tensor
    float *history;      // delayed: (count, history_length), 0 where not filled yet; else NULL
} OperandScaling;

// The scale state of the linear layers' fp8 operands, in host memory (CPU backend) or in device memory
// (CUDA backend, where the functions below run in a kernel, so a cast never waits for the host).
typedef struct {
    OperandScaling scaling;  // the amax histories (delayed) and the scale rule
    float *scales;           // (count) the scale of each operand's latest cast; the backward re-casts with the forward's
    float *forward_amax;     // (count) input and weight amaxes of the last forward, recorded when its backward runs
} Fp8ScaleState;

LP_HD int usable_amax(float amax) { return amax > 0.0f && !isinf(amax); }

// The scale for a use of tensor `id` whose own amax is `amax`. Without a usable amax (all zero, inf or
// NaN) the scale is 1.
LP_HD float operand_scaling_scale(const OperandScaling *s, int id, float amax, float fmt_max) {
    if (s->mode == SCALING_DELAYED) {
        // amax_history_max skips NaN; empty slots are 0, so a fresh history gives 0: use the tensor's own.
        float history_amax = amax_history_max(s->history + (size_t)id * s->history_length, s->history_length);
        if (usable_amax(history_amax)) amax = history_amax;
    }
    return scale_from_amax(amax, fmt_max, s->margin, 1.0f);
}

// Appends the amax of a use of tensor `id` to its history, dropping the oldest (delayed; nothing otherwise).
LP_HD void operand_scaling_record(OperandScaling *s, int id, float amax) {
    if (s->mode != SCALING_DELAYED) return;
    float *history = s->history + (size_t)id * s->history_length;  // (history_length)
    for (int i = s->history_length - 1; i > 0; i--) history[i] = history[i - 1];
    history[0] = amax;
}

// One use of operand tensor `id` that casts with its own amax: the scale of the use, also kept in
// scales[id]. An output gradient's amax enters its history now; a forward operand's waits in
// forward_amax[id] for the backward of its forward (evaluation leaves the histories alone).
LP_HD float fp8_scale_of_use(Fp8ScaleState *state, int id, int is_output_grad, float amax, float fmt_max) {
    float scale = operand_scaling_scale(&state->scaling, id, amax, fmt_max);
    state->scales[id] = scale;
    if (is_output_grad) operand_scaling_record(&state->scaling, id, amax);
    else state->forward_amax[id] = amax;
    return scale;
}

// The linear layers' casts: one fp8 scale per (layer, linear, role), (L, NUM_BLOCK_LINEARS, NUM_OPERAND_ROLES).
typedef struct {
    OperandCast base;       // the format's cast (fp8: grid and scale set per use)
    Fp8ScaleState state;    // fp8: host memory (the CUDA backend keeps its own in device memory)
    int forward_unrecorded;  // the last forward's amaxes are not in the histories yet
    int count;               // operand tensors
} LinearCasts;

LP_HD int linear_operand_id(int layer, BlockLinear linear, OperandRole role) {
    return (layer * NUM_BLOCK_LINEARS + (int)linear) * NUM_OPERAND_ROLES + (int)role;
}

// The forward amaxes of operand tensor `id` into its history (output gradients' went in at their use).
LP_HD void fp8_record_forward_amax(Fp8ScaleState *state, int id) {
    if (id % NUM_OPERAND_ROLES != OPERAND_OUTPUT_GRAD) operand_scaling_record(&state->scaling, id, state->forward_amax[id]);
}

#ifdef __cplusplus
extern "C" {
#endif

void operand_scaling_init(OperandScaling *s, ScalingMode mode, int count, int history_length, int margin);
void operand_scaling_free(OperandScaling *s);

void linear_casts_init(LinearCasts *casts, const MatmulPrecision *linear, int n_layer);
void linear_casts_free(LinearCasts *casts);
// Whether the cast of this use needs the operand's amax (fp8, except the backward's re-casts of inputs and
// weights, which reuse the forward's scales).
int linear_cast_needs_amax(const LinearCasts *casts, OperandRole role, int backward);
// The format's cast for an operand of this role, before any scale: fp8 casts forward operands to E4M3 and
// output gradients to E5M2.
OperandCast linear_cast_for_role(const LinearCasts *casts, OperandRole role);
// The cast of one use of an operand (host state): linear_cast_for_role with its tensor's scale of this use
// (fp8_scale_of_use from `amax` when linear_cast_needs_amax, else the forward's).
OperandCast linear_cast_of_use(LinearCasts *casts, int layer, BlockLinear linear, OperandRole role, int backward,
                               float amax);
// Marks the end of a forward (its amaxes wait for a backward: evaluation leaves the histories alone).
void linear_casts_forward_done(LinearCasts *casts);
// At the end of a backward: whether the forward's amaxes are still to enter their histories (once); the
// caller then applies fp8_record_forward_amax to every id, where its state lives.
int linear_casts_take_forward_record(LinearCasts *casts);
// The end of a backward on the host state: linear_casts_take_forward_record, then the recording.
void linear_casts_backward_done(LinearCasts *casts);
// The delayed-scaling state for checkpoints (gpt_cpu_scaling_state's meaning): *data and its float count,
// or 0 and NULL.
size_t linear_casts_scaling_state(LinearCasts *casts, float **data);

#ifdef __cplusplus
}
#endif

#endif
