// The block linear layers' operand casts and fp8 scales (linear_casts.h).
#include "linear_casts.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

void operand_scaling_init(OperandScaling *s, ScalingMode mode, int count, int history_length, int margin) {
    memset(s, 0, sizeof *s);
    s->mode = mode;
    s->margin = margin;
    s->count = count;
    if (mode != SCALING_DELAYED) return;
    if (history_length < 1) fatal("fp8 delayed scaling needs an amax history of at least 1 (got %d)", history_length);
    s->history_length = history_length;
    s->history = xcalloc((size_t)count * history_length, sizeof(float));
}

void operand_scaling_free(OperandScaling *s) {
    free(s->history);
    s->history = NULL;
}

void linear_casts_init(LinearCasts *casts, const MatmulPrecision *linear, int n_layer) {
    memset(casts, 0, sizeof *casts);
    casts->base = operand_cast_for(linear);
    if (linear->format != MATMUL_FP8) return;
    casts->count = n_layer * NUM_BLOCK_LINEARS * NUM_OPERAND_ROLES;
    Fp8ScaleState *state = &casts->state;
    operand_scaling_init(&state->scaling, linear->scaling, casts->count, linear->amax_history, linear->margin);
    state->scales = xmalloc((size_t)casts->count * sizeof(float));
    for (int i = 0; i < casts->count; i++) state->scales[i] = 1.0f;
    state->forward_amax = xcalloc((size_t)casts->count, sizeof(float));
}

void linear_casts_free(LinearCasts *casts) {
    operand_scaling_free(&casts->state.scaling);
    free(casts->state.scales);
    free(casts->state.forward_amax);
    memset(casts, 0, sizeof *casts);
}

int linear_cast_needs_amax(const LinearCasts *casts, OperandRole role, int backward) {
    return casts->base.format == MATMUL_FP8 && !(backward && role != OPERAND_OUTPUT_GRAD);
}

OperandCast linear_cast_for_role(const LinearCasts *casts, OperandRole role) {
    OperandCast cast = casts->base;
    if (cast.format == MATMUL_FP8) cast.grid = role == OPERAND_OUTPUT_GRAD ? exmy_e5m2() : exmy_e4m3();
    return cast;
}

OperandCast linear_cast_of_use(LinearCasts *casts, int layer, BlockLinear linear, OperandRole role, int backward,
                               float amax) {
    OperandCast cast = linear_cast_for_role(casts, role);
    if (cast.format != MATMUL_FP8) return cast;
    int id = linear_operand_id(layer, linear, role);
    if (linear_cast_needs_amax(casts, role, backward))
        cast.scale = fp8_scale_of_use(&casts->state, id, role == OPERAND_OUTPUT_GRAD, amax, cast.grid.max_finite);
    else
        cast.scale = casts->state.scales[id];
    return cast;
}

void linear_casts_forward_done(LinearCasts *casts) { casts->forward_unrecorded = casts->base.format == MATMUL_FP8; }

int linear_casts_take_forward_record(LinearCasts *casts) {
    int pending = casts->forward_unrecorded;
    casts->forward_unrecorded = 0;
    return pending;
}

void linear_casts_backward_done(LinearCasts *casts) {
    if (!linear_casts_take_forward_record(casts)) return;
    for (int id = 0; id < casts->count; id++) fp8_record_forward_amax(&casts->state, id);
}

size_t linear_casts_scaling_state(LinearCasts *casts, float **data) {
    const OperandScaling *scaling = &casts->state.scaling;
    *data = scaling->history;
    return scaling->history ? (size_t)scaling->count * scaling->history_length : 0;
}
