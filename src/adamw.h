// The AdamW step per element, shared by the CPU and CUDA backends so that both produce the same bits.
#ifndef LP_ADAMW_H
#define LP_ADAMW_H

#include "numerics/common.h"

// Hyperparameters of one optimizer step. Bias corrections 1 - beta^t are computed once on the host in
// fp32 from the true betas.
typedef struct {
    float lr;
    float beta1, beta2, eps;
    float weight_decay;       // applied to 2-D weights only
    float bias_correction1;   // 1 - beta1^t
    float bias_correction2;   // 1 - beta2^t
    float grad_scale;         // global-norm clipping factor (1 = no clipping)
    uint64_t seed;            // the run's seed and this step's index (0-based): with the tensor and the
    uint64_t step;            //   element they key the random bits of stochastic rounding
} AdamWStep;

// One exponential moving average step in fp32: beta * x + (1 - beta) * sample.
LP_HD float adam_ema_fp32(float x, float sample, float beta) { return beta * x + (1.0f - beta) * sample; }

// The AdamW update of one parameter from its fp32 moments (already updated by this step's gradient):
// -lr * (m_hat / (sqrt(v_hat) + eps) + decay * weight_decay * param).
LP_HD float adamw_delta_fp32(float param, float m, float v, const AdamWStep *s, int decay) {
    float m_hat = m / s->bias_correction1;
    float v_hat = v / s->bias_correction2;
    float decay_term = decay ? s->weight_decay * param : 0.0f;
    return -(s->lr * (m_hat / (sqrtf(v_hat) + s->eps) + decay_term));
}

// Updates the fp32 moments in place and returns the new fp32 parameter value (param + delta is the same
// number as param - lr * (...): negation is exact).
LP_HD float adamw_step_fp32(float param, float grad, float *m, float *v, const AdamWStep *s, int decay) {
    float g = grad * s->grad_scale;
    *m = adam_ema_fp32(*m, g, s->beta1);
    *v = adam_ema_fp32(*v, g * g, s->beta2);
    return param + adamw_delta_fp32(param, *m, *v, s, decay);
}

#endif
