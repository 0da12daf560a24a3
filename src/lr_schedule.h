// Learning rate per optimizer step: linear warmup, then cosine or linear decay to min_lr (or constant).
#ifndef LP_LR_SCHEDULE_H
#define LP_LR_SCHEDULE_H

#include "config.h"

// step: 0-based index of the update about to be made.
float lr_at_step(const Config *cfg, int step);

#endif
