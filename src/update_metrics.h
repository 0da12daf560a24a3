// Update-quality metrics (DESIGN.md, "Metrics the program reports"): how much of the update Δ that a rule
// intended reached the weights, as the weight forward reads it and as the whole stored value.
//
// Per element, Δ is the raw update (the fp32 or bf16 Δ of update_rules.h; the fp32 step for exact and
// master), and two effective updates, each how far a value moved in the step, in double:
//   Δ̂ (read): the weight forward reads, the paper's and the Collage code's definition:
//     exact: fp32 θ;  master: the bf16 copy;  bf16 RNE, SR, Kahan: bf16 θ;  MCF: hi;
//     DQT: q·scale (1-D parameters under DQT: their fp32 value).
//   Δ̂ (state): the whole stored value, what compensation keeps for later:
//     master: the fp32 master;  MCF: hi + lo;  Kahan: θ − c;  every other rule: the read weight.
// Over a set of elements (all, or a layer group):
//   edq             = ⟨Δ̂,Δ⟩ / ‖Δ‖        (Collage's effective descent quality, read weight)
//   edq_rel         = ⟨Δ̂,Δ⟩ / ‖Δ‖²       (1: every update taken exactly; 0: all lost)
//   lost_frac       = #(Δ ≠ 0 and Δ̂ = 0) / #(Δ ≠ 0)
//   edq_rel_state, lost_frac_state: the same of Δ̂ (state)
//   MCF, Kahan: comp_norm = ‖comp‖, comp_proj = ⟨comp,Δ⟩ / ‖Δ‖², where comp is what the compensation
//     holds for the weight after the step: lo for MCF, −c for Kahan (the stored value is read + comp, so
//     edq_rel_state − edq_rel = ⟨comp after − comp before, Δ⟩ / ‖Δ‖²);
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
    double read_dot_raw;       // ⟨Δ̂ (read), Δ⟩
    double state_dot_raw;      // ⟨Δ̂ (state), Δ⟩
    double raw_sq;             // ‖Δ‖²
    double comp_sq;            // ‖comp‖²
    double comp_dot_raw;       // ⟨comp, Δ⟩
    uint64_t updated;          // elements with Δ ≠ 0
    uint64_t lost;             // of those, elements whose read weight did not move
    uint64_t lost_state;       // of those, elements whose stored value did not move
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
    double edq, edq_rel, lost_frac;      // the read weight
    double edq_rel_state, lost_frac_state;  // the stored value
    double comp_norm, comp_proj;  // NaN unless has_compensation
    double flip_rate;             // NaN unless has_codes
} UpdateQuality;

// One element: its raw Δ and how far its read weight and its stored value moved.
LP_HD void update_sums_add_element(UpdateSums *s, double raw, double read_moved, double state_moved) {
    s->read_dot_raw += read_moved * raw;
    s->state_dot_raw += state_moved * raw;
    s->raw_sq += raw * raw;
    if (raw != 0.0) {
        s->updated++;
        if (read_moved == 0.0) s->lost++;
        if (state_moved == 0.0) s->lost_state++;
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
    into->read_dot_raw += from->read_dot_raw;
    into->state_dot_raw += from->state_dot_raw;
    into->raw_sq += from->raw_sq;
    into->comp_sq += from->comp_sq;
    into->comp_dot_raw += from->comp_dot_raw;
    into->updated += from->updated;
    into->lost += from->lost;
    into->lost_state += from->lost_state;
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
