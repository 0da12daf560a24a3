#include "sharpness.h"

#include <math.h>
#include <stdlib.h>

#include "util.h"

// Cross-entropy of logits z + y against target, in double; probs receives softmax(z + y).
static double cross_entropy(const float *z, const double *y, int V, int target, double *probs) {
    double max = -INFINITY;
    for (int i = 0; i < V; i++) max = fmax(max, z[i] + y[i]);
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        probs[i] = exp(z[i] + y[i] - max);
        sum += probs[i];
    }
    for (int i = 0; i < V; i++) probs[i] /= sum;
    return log(sum) + max - (z[target] + y[target]);
}

static double clamp(double x, double bound) { return x > bound ? bound : x < -bound ? -bound : x; }

float logit_sharpness(const float *z, int V, int target, float eps, int steps) {
    if (eps <= 0.0f) return 0.0f;
    double *y = xcalloc((size_t)V, sizeof(double));
    double *probs = xmalloc((size_t)V * sizeof(double));
    double f0 = cross_entropy(z, y, V, target, probs);
    double best = f0;
    for (int step = 0; step < steps; step++) {
        // d f / d z_i = p_i - [i == target]; a sign step of the box's half-width, then projection.
        for (int i = 0; i < V; i++) {
            double bound = eps * (fabs((double)z[i]) + 1.0);
            double grad = probs[i] - (i == target ? 1.0 : 0.0);
            double direction = grad > 0.0 ? 1.0 : grad < 0.0 ? -1.0 : 0.0;
            y[i] = clamp(y[i] + direction * bound, bound);
        }
        double f = cross_entropy(z, y, V, target, probs);
        if (f > best) best = f;
    }
    free(y);
    free(probs);
    return (float)(100.0 * (best - f0) / (1.0 + f0));
}
