// The weight-update rules and Adam moment storages of the precision policies, per element (DESIGN.md,
// "Numerics semantics" and "Precision policies"). Host and device: the CPU backend loops over these
// functions and the CUDA backend's optimizer calls the same ones, so both store the same bits.
//
// A bf16 op (bf16_add, bf16_mul, ...) computes in fp32 from bf16 inputs and rounds once to bf16,
// nearest-even. The fp32 numbers the host hands over (lr, betas, eps, bias corrections) become bf16
// operands by one rounding each, once per step (update_constants).
//
// Which Δ a rule applies:
// - exact, fp32 master, grid SR: the fp32 AdamW update (adamw_delta_fp32) from the moments as stored,
//   decoded to fp32 (a bf16 pair as hi + lo).
// - SR: the same fp32 update, then SR_bf16(θ + Δ) with θ + Δ in fp32.
// - bf16 RNE, MCF Grow, Kahan: Δ = −(lr/bc1)·m/(√v/√bc2 + ε) − lr·λ·θ in bf16 ops (adamw_delta_bf16),
//   whose bf16 operands are the moments as stored: a bf16 moment itself, the hi part of a pair, or an fp32
//   moment rounded to bf16.
#ifndef LP_UPDATE_RULES_H
#define LP_UPDATE_RULES_H

#include "adamw.h"
#include "numerics.h"

// Stochastic rounding of parameter tensor t (model.h's index) draws from
// RngKey{seed, step, UPDATE_RNG_TENSOR_BASE + t} at the element's index within the tensor. The base keeps
// these streams apart from the initialisation's (tensor ids 0..15 at step 0).
enum { UPDATE_RNG_TENSOR_BASE = 0x10000 };

// One Adam moment's constants in the forms its storages use.
typedef struct {
    float beta;                // the true beta: fp32 moments and the MCF increment
    bf16 beta_bf16;            // bf16(beta)
    bf16 one_minus_beta_bf16;  // bf16(1 - beta), the difference taken in fp32
    Mcf beta_pair;             // (bf16(beta), bf16(beta - bf16(beta))): Collage-plus's split beta
    int squares;               // 1: the moving average of g^2 (v); 0: of g (m)
} MomentRule;

// One step's hyperparameters in every form the rules use, computed once per step.
typedef struct {
    AdamWStep fp32;   // as the host computed it
    MomentRule m, v;
    bf16 step_size;   // bf16(lr / bc1)
    bf16 sqrt_bc2;    // bf16(sqrt(bc2))
    bf16 eps;         // bf16(eps)
    bf16 lr_decay;    // bf16(lr * weight_decay)
} UpdateConstants;

typedef struct {
    bf16 value, compensation;  // Kahan: the stored weight and c, the excess of what it took in over Δ
} KahanPair;

LP_HD MomentRule moment_rule(float beta, int squares) {
    MomentRule r;
    r.beta = beta;
    r.beta_bf16 = bf16_from_f32(beta);
    r.one_minus_beta_bf16 = bf16_from_f32(1.0f - beta);
    // beta - bf16(beta) is exact in fp32 (Sterbenz: the two are within a factor 2 of each other).
    r.beta_pair = mcf_make(r.beta_bf16, bf16_from_f32(beta - bf16_to_f32(r.beta_bf16)));
    r.squares = squares;
    return r;
}

LP_HD UpdateConstants update_constants(const AdamWStep *s) {
    UpdateConstants k;
    k.fp32 = *s;
    k.m = moment_rule(s->beta1, 0);
    k.v = moment_rule(s->beta2, 1);
    k.step_size = bf16_from_f32(s->lr / s->bias_correction1);
    k.sqrt_bc2 = bf16_from_f32(sqrtf(s->bias_correction2));
    k.eps = bf16_from_f32(s->eps);
    k.lr_decay = bf16_from_f32(s->lr * s->weight_decay);
    return k;
}

LP_HD RngKey update_rng_key(const AdamWStep *s, int tensor) {
    RngKey key;
    key.seed = s->seed;
    key.step = s->step;
    key.tensor_id = UPDATE_RNG_TENSOR_BASE + (uint32_t)tensor;
    return key;
}


// ----------------------------------------------------------------------------------------------------
// Adam moments. g is the clipped gradient in fp32 (stored gradient * grad_scale).

LP_HD float moment_sample_fp32(float g, const MomentRule *r) { return r->squares ? g * g : g; }

// fp32 storage: adamw.h's moving average, the same bits as adamw_step_fp32.
LP_HD float moment_step_fp32(float x, float g, const MomentRule *r) {
    return adam_ema_fp32(x, moment_sample_fp32(g, r), r->beta);
}

// bf16 storage: x ← β⊗x ⊕ (1−β)⊗s with s = bf16(g), or bf16(g)⊗bf16(g) for v. Note bf16(0.999) == 1.0:
// a bf16 v at beta2 = 0.999 never decays (Collage-plus's reason to be).
LP_HD bf16 moment_step_bf16(bf16 x, float g, const MomentRule *r) {
    bf16 g_bf16 = bf16_from_f32(g);
    bf16 sample = r->squares ? bf16_mul(g_bf16, g_bf16) : g_bf16;
    return bf16_add(bf16_mul(r->beta_bf16, x), bf16_mul(r->one_minus_beta_bf16, sample));
}

// MCF pair storage (Collage-plus): x ← MultMC(x, (β_hi, β_lo)), then Grow(x, bf16((1−β)·s)) with s = g or
// g² in fp32.
LP_HD Mcf moment_step_mcf(Mcf x, float g, const MomentRule *r) {
    bf16 increment = bf16_from_f32((1.0f - r->beta) * moment_sample_fp32(g, r));
    return mcf_grow(mcf_mul(x, r->beta_pair), increment);
}

// ----------------------------------------------------------------------------------------------------
// The update Δ

// Δ = −(lr/bc1)·m/(√v/√bc2 + ε) − lr·λ·θ in bf16 ops; the decay term only for 2-D weights.
LP_HD bf16 adamw_delta_bf16(bf16 theta, bf16 m, bf16 v, const UpdateConstants *k, int decay) {
    bf16 denominator = bf16_add(bf16_div(bf16_sqrt(v), k->sqrt_bc2), k->eps);
    bf16 adam = bf16_mul(k->step_size, bf16_div(m, denominator));
    bf16 step = decay ? bf16_add(adam, bf16_mul(k->lr_decay, theta)) : adam;
    return bf16_neg(step);
}

// ----------------------------------------------------------------------------------------------------
// Applying Δ to the stored weight

// bf16 RNE: θ ← θ ⊕ Δ. An update below half an ulp of θ is lost.
LP_HD bf16 weight_step_rne(bf16 theta, bf16 delta) { return bf16_add(theta, delta); }

// MCF Grow (Collage): (hi, lo) ← Grow((hi, lo), Δ), TwoSum-based because |hi| >= |Δ| is not guaranteed
// for weights near zero. The forward reads hi.
LP_HD Mcf weight_step_mcf(Mcf theta, bf16 delta) { return mcf_grow(theta, delta); }

// Kahan: y = Δ ⊖ c, t = θ ⊕ y, c = (t ⊖ θ) ⊖ y, θ = t. The weight the pair stands for is θ − c.
LP_HD KahanPair weight_step_kahan(KahanPair x, bf16 delta) {
    bf16 y = bf16_sub(delta, x.compensation);
    bf16 t = bf16_add(x.value, y);
    KahanPair out;
    out.compensation = bf16_sub(bf16_sub(t, x.value), y);
    out.value = t;
    return out;
}

// SR: θ ← SR_bf16(θ + Δ) with θ + Δ in fp32; unbiased, so small updates survive on average.
LP_HD bf16 weight_step_sr(bf16 theta, float delta, RngKey key, uint64_t index) {
    return bf16_from_f32_sr_keyed(bf16_to_f32(theta) + delta, key, index);
}

// DQT: w' = q·scale + Δ (the fp32 AdamW step of the dequantized weight), then q ← SR(w'/next), clamped
// to the grid; next is the step after this update (= scale unless precision.dqt_rescale).
LP_HD int32_t weight_step_grid_sr(int32_t q, float delta, float scale, float next, IntGrid grid, RngKey key,
                                  uint64_t index) {
    float w = int_grid_dequantize(q, scale) + delta;
    return int_grid_quantize_sr_keyed(w, next, grid, key, index);
}

#endif
