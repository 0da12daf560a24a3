#include "lr_schedule.h"

#include <math.h>
#include <string.h>

float lr_at_step(const Config *cfg, int step) {
    float lr = cfg->training.lr, min_lr = cfg->training.min_lr;
    int warmup = cfg->training.warmup_steps, max_steps = cfg->training.max_steps;
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (strcmp(cfg->training.schedule, "constant") == 0 || max_steps <= warmup) return lr;
    float progress = (float)(step - warmup) / (float)(max_steps - warmup);
    if (progress > 1.0f) progress = 1.0f;
    if (strcmp(cfg->training.schedule, "linear") == 0) return lr - (lr - min_lr) * progress;
    return min_lr + 0.5f * (lr - min_lr) * (1.0f + cosf(3.14159265358979f * progress));
}
