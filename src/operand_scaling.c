// Per-tensor scales of fp8 matmul operands and their amax histories. The history of a tensor is kept newest
// first in one float buffer, so that buffer is the whole state: a checkpoint that saves it resumes exactly.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "linear_casts.h"
#include "numerics/scaling.h"
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

static int usable_amax(float amax) { return amax > 0.0f && !isinf(amax); }

float operand_scaling_scale(const OperandScaling *s, int id, float amax, float fmt_max) {
    if (s->mode == SCALING_DELAYED) {
        // amax_history_max skips NaN; empty slots are 0, so a fresh history gives 0: use the tensor's own.
        float history_amax = amax_history_max(s->history + (size_t)id * s->history_length, s->history_length);
        if (usable_amax(history_amax)) amax = history_amax;
    }
    return scale_from_amax(amax, fmt_max, s->margin, 1.0f);
}

void operand_scaling_record(OperandScaling *s, int id, float amax) {
    if (s->mode != SCALING_DELAYED) return;
    float *history = s->history + (size_t)id * s->history_length;  // (history_length)
    memmove(history + 1, history, (size_t)(s->history_length - 1) * sizeof(float));
    history[0] = amax;
}
