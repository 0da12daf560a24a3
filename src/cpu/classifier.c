// The language-model loss: softmax over the real vocabulary and cross-entropy. The padded logits
// (V..Vp) are never read, so they cannot change the loss and receive no gradient.
#include <math.h>

#include "cpu/ops.h"

void classifier_forward(float *probs, float *losses, const float *logits, const int *targets, int N, int V,
                        int Vp) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * Vp;  // (Vp)
        float *p = probs + (size_t)n * Vp;         // (Vp)
        float max_logit = -INFINITY;
        for (int v = 0; v < V; v++)
            if (z[v] > max_logit) max_logit = z[v];
        float sum = 0.0f;
        for (int v = 0; v < V; v++) {
            p[v] = expf(z[v] - max_logit);
            sum += p[v];
        }
        float inv_sum = 1.0f / sum;
        for (int v = 0; v < V; v++) p[v] *= inv_sum;
        for (int v = V; v < Vp; v++) p[v] = 0.0f;
        // -log softmax from the log-sum-exp: exact even where the probability underflows.
        if (targets) losses[n] = logf(sum) + max_logit - z[targets[n]];
    }
}

void classifier_backward(float *dlogits, const float *probs, const int *targets, float dloss, int N, int V,
                         int Vp) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * Vp;  // (Vp)
        float *dz = dlogits + (size_t)n * Vp;     // (Vp)
        for (int v = 0; v < V; v++) {
            float indicator = v == targets[n] ? 1.0f : 0.0f;
            dz[v] += (p[v] - indicator) * dloss;
        }
    }
}
