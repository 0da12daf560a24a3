// The block linear layers' operand casts and fp8 scales (linear_casts.h).
#include "linear_casts.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

static int operand_id(int layer, BlockLinear linear, OperandRole role) {
    return (layer * NUM_BLOCK_LINEARS + (int)linear) * NUM_OPERAND_ROLES + (int)role;
}

void linear_casts_init(LinearCasts *casts, const MatmulPrecision *linear, int n_layer) {
    memset(casts, 0, sizeof *casts);
    casts->base = operand_cast_for(linear);
    if (linear->format != MATMUL_FP8) return;
    casts->count = n_layer * NUM_BLOCK_LINEARS * NUM_OPERAND_ROLES;
    operand_scaling_init(&casts->scaling, linear->scaling, casts->count, linear->amax_history, linear->margin);
    casts->scales = xmalloc((size_t)casts->count * sizeof(float));
    for (int i = 0; i < casts->count; i++) casts->scales[i] = 1.0f;
    casts->forward_amax = xcalloc((size_t)casts->count, sizeof(float));
}

void linear_casts_free(LinearCasts *casts) {
    operand_scaling_free(&casts->scaling);
    free(casts->scales);
    free(casts->forward_amax);
    memset(casts, 0, sizeof *casts);
}

int linear_cast_needs_amax(const LinearCasts *casts, OperandRole role, int backward) {
    return casts->base.format == MATMUL_FP8 && !(backward && role != OPERAND_OUTPUT_GRAD);
}

OperandCast linear_cast_of_use(LinearCasts *casts, int layer, BlockLinear linear, OperandRole role, int backward,
                               float amax) {
    OperandCast cast = casts->base;
    if (cast.format != MATMUL_FP8) return cast;
    int id = operand_id(layer, linear, role);
    cast.grid = role == OPERAND_OUTPUT_GRAD ? exmy_e5m2() : exmy_e4m3();
    if (!linear_cast_needs_amax(casts, role, backward)) {
        cast.scale = casts->scales[id];
        return cast;
    }
    cast.scale = operand_scaling_scale(&casts->scaling, id, amax, cast.grid.max_finite);
    casts->scales[id] = cast.scale;
    if (role == OPERAND_OUTPUT_GRAD) operand_scaling_record(&casts->scaling, id, amax);
    else casts->forward_amax[id] = amax;
    return cast;
}

void linear_casts_forward_done(LinearCasts *casts) { casts->forward_unrecorded = casts->base.format == MATMUL_FP8; }

void linear_casts_backward_done(LinearCasts *casts) {
    if (!casts->forward_unrecorded) return;
    for (int id = 0; id < casts->count; id++) {
        if (id % NUM_OPERAND_ROLES == OPERAND_OUTPUT_GRAD) continue;
        operand_scaling_record(&casts->scaling, id, casts->forward_amax[id]);
    }
    casts->forward_unrecorded = 0;
}

size_t linear_casts_scaling_state(LinearCasts *casts, float **data) {
    *data = casts->scaling.history;
    return casts->scaling.history ? (size_t)casts->scaling.count * casts->scaling.history_length : 0;
}
