// Update-quality metrics (DESIGN.md, "Metrics the program reports"): how much of the update Δ that a rule
// intended the stored weights actually took.
//
// Per element, Δ is the raw update (the fp32 or bf16 Δ of update_rules.h; the fp32 step for exact and
// master) and Δ̂ the effective one: how far the value the stored weight stands for moved, in double:
//   exact: fp32 θ;  master: the fp32 master;  bf16 RNE and SR: bf16 θ;  MCF: hi + lo;  Kahan: θ − c;
//   DQT: q·scale (1-D parameters under DQT: their fp32 value).
// Over a set of elements (all, or a layer group):
//   edq       = ⟨Δ̂,Δ⟩ / ‖Δ‖        (Collage's effective descent quality)
//   edq_rel   = ⟨Δ̂,Δ⟩ / ‖Δ‖²       (1: every update taken exactly; 0: all lost)
//   lost_frac = #(Δ ≠ 0 and Δ̂ = 0) / #(Δ ≠ 0)
//   MCF, Kahan: comp_norm = ‖comp‖, comp_proj = ⟨comp,Δ⟩ / ‖Δ‖², where comp is what the compensation
//     holds for the weight after the step: lo for MCF, −c for Kahan (the weight is hi + lo, θ + (−c));
//   DQT: flip_rate = share of grid codes that changed.
// A ratio with a zero denominator is NaN (null in the log). Layer groups: "embeddings" (wte, wpe),
// "block0".."block{L-1}" (every per-layer slice of that layer), "head" (the final LayerNorm; the LM head
// is tied to wte).
#ifndef LP_UPDATE_METRICS_H
#define LP_UPDATE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "numerics/common.h"

#ifdef __cplusplus
extern "C" {
#endif

// Sums over a set of elements, in double.
typedef struct {
    double effective_dot_raw;  // ⟨Δ̂, Δ⟩
    double raw_sq;             // ‖Δ‖²
    double comp_sq;            // ‖comp‖²
    double comp_dot_raw;       // ⟨comp, Δ⟩
    uint64_t updated;          // elements with Δ ≠ 0
    uint64_t lost;             // of those, elements with Δ̂ = 0
    uint64_t codes;            // DQT grid codes stepped
    uint64_t flips;            // of those, codes that changed
} UpdateSums;

// What a backend's optimizer_step fills when the trainer asks for metrics.
typedef struct {
    int has_compensation;  // MCF or Kahan: comp_* are meaningful
    int has_codes;         // DQT: flip_rate is meaningful
    int num_groups;        // 2 + n_layer: embeddings, block0..block{L-1}, head
    UpdateSums total;
    UpdateSums *groups;    // (num_groups)
} UpdateMetrics;

typedef struct {
    double edq, edq_rel, lost_frac;
    double comp_norm, comp_proj;  // NaN unless has_compensation
    double flip_rate;             // NaN unless has_codes
} UpdateQuality;

LP_HD void update_sums_add_element(UpdateSums *s, double raw, double effective) {
    s->effective_dot_raw += effective * raw;
    s->raw_sq += raw * raw;
    if (raw != 0.0) {
        s->updated++;
        if (effective == 0.0) s->lost++;
    }
}

LP_HD void update_sums_add_compensation(UpdateSums *s, double comp, double raw) {
    s->comp_sq += comp * comp;
    s->comp_dot_raw += comp * raw;
}

LP_HD void update_sums_add_code(UpdateSums *s, int32_t before, int32_t after) {
    s->codes++;
    if (after != before) s->flips++;
}

LP_HD void update_sums_add(UpdateSums *into, const UpdateSums *from) {
    into->effective_dot_raw += from->effective_dot_raw;
    into->raw_sq += from->raw_sq;
    into->comp_sq += from->comp_sq;
    into->comp_dot_raw += from->comp_dot_raw;
    into->updated += from->updated;
    into->lost += from->lost;
    into->codes += from->codes;
    into->flips += from->flips;
}

// Allocates the groups for table's layers; every sum zero.
void update_metrics_init(UpdateMetrics *metrics, const ParamTable *table);
void update_metrics_free(UpdateMetrics *metrics);
void update_metrics_clear(UpdateMetrics *metrics);
// The group of a tensor's layer slice (layer is ignored for tensors that are not per layer).
int update_group_of(const ParamTable *table, int tensor, int layer);
// "embeddings", "block<k>" or "head".
void update_group_name(const UpdateMetrics *metrics, int group, char *name, size_t len);
UpdateQuality update_quality(const UpdateMetrics *metrics, const UpdateSums *sums);

#ifdef __cplusplus
}
#endif

#endif
