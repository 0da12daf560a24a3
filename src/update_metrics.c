#include "update_metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void update_metrics_init(UpdateMetrics *metrics, const ParamTable *table) {
    memset(metrics, 0, sizeof *metrics);
    metrics->num_groups = 2 + table->shape.n_layer;
    metrics->groups = xcalloc((size_t)metrics->num_groups, sizeof(UpdateSums));
}

void update_metrics_free(UpdateMetrics *metrics) {
    free(metrics->groups);
    metrics->groups = NULL;
}

void update_metrics_clear(UpdateMetrics *metrics) {
    memset(&metrics->total, 0, sizeof metrics->total);
    memset(metrics->groups, 0, (size_t)metrics->num_groups * sizeof(UpdateSums));
}

int update_group_of(const ParamTable *table, int tensor, int layer) {
    if (tensor == PARAM_WTE || tensor == PARAM_WPE) return 0;
    if (tensor == PARAM_LNFW || tensor == PARAM_LNFB) return 1 + table->shape.n_layer;
    return 1 + layer;
}

void update_group_name(const UpdateMetrics *metrics, int group, char *name, size_t len) {
    if (group == 0) snprintf(name, len, "embeddings");
    else if (group == metrics->num_groups - 1) snprintf(name, len, "head");
    else snprintf(name, len, "block%d", group - 1);
}

static double ratio(double numerator, double denominator) { return denominator != 0.0 ? numerator / denominator : NAN; }

UpdateQuality update_quality(const UpdateMetrics *metrics, const UpdateSums *s) {
    UpdateQuality q;
    q.edq = ratio(s->read_dot_raw, sqrt(s->raw_sq));
    q.edq_rel = ratio(s->read_dot_raw, s->raw_sq);
    q.lost_frac = ratio((double)s->lost, (double)s->updated);
    q.edq_rel_state = ratio(s->state_dot_raw, s->raw_sq);
    q.lost_frac_state = ratio((double)s->lost_state, (double)s->updated);
    q.comp_norm = metrics->has_compensation ? sqrt(s->comp_sq) : NAN;
    q.comp_proj = metrics->has_compensation ? ratio(s->comp_dot_raw, s->raw_sq) : NAN;
    q.flip_rate = metrics->has_codes ? ratio((double)s->flips, (double)s->codes) : NAN;
    return q;
}
