// Logit sharpness against independent references: the closed form and an exhaustive search on small cases.
#include <math.h>
#include <stdlib.h>

#include "sharpness.h"
#include "testing.h"

static double cross_entropy_ref(const double *z, int V, int target) {
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp(z[i]);
    return log(sum) - z[target];
}

// f is increasing in every wrong logit and decreasing in the target's, so the box maximum is the corner
// y_i = +bound_i (i != target), y_target = -bound_target.
static double closed_form(const float *z, int V, int target, double eps) {
    double base[16], moved[16];
    for (int i = 0; i < V; i++) {
        double bound = eps * (fabs(z[i]) + 1.0);
        base[i] = z[i];
        moved[i] = z[i] + (i == target ? -bound : bound);
    }
    double f0 = cross_entropy_ref(base, V, target);
    return 100.0 * (cross_entropy_ref(moved, V, target) - f0) / (1.0 + f0);
}

// A grid search over the box with `points` values per coordinate (V small).
static double exhaustive(const float *z, int V, int target, double eps, int points) {
    double base[8], moved[8];
    for (int i = 0; i < V; i++) base[i] = z[i];
    double f0 = cross_entropy_ref(base, V, target), best = f0;
    long total = 1;
    for (int i = 0; i < V; i++) total *= points;
    for (long code = 0; code < total; code++) {
        long c = code;
        for (int i = 0; i < V; i++) {
            double bound = eps * (fabs(z[i]) + 1.0);
            moved[i] = z[i] - bound + 2.0 * bound * (double)(c % points) / (points - 1);
            c /= points;
        }
        double f = cross_entropy_ref(moved, V, target);
        if (f > best) best = f;
    }
    return 100.0 * (best - f0) / (1.0 + f0);
}

int main(void) {
    const float z[4] = {2.0f, -1.0f, 0.5f, 3.0f};
    for (int target = 0; target < 4; target++) {
        for (double eps = 0.01; eps < 0.5; eps *= 3.0) {
            double got = logit_sharpness(z, 4, target, (float)eps, 3);
            double want = closed_form(z, 4, target, eps);
            double search = exhaustive(z, 4, target, eps, 21);
            CHECK(fabs(got - want) <= 0.01 * fabs(want), "target %d eps %g: %g vs closed form %g", target, eps, got, want);
            CHECK(fabs(got - search) <= 0.01 * fabs(search), "target %d eps %g: %g vs search %g", target, eps, got, search);
        }
        CHECK(logit_sharpness(z, 4, target, 0.0f, 3) == 0.0f, "eps 0 gives 0");
    }
    // A larger vocabulary of random logits: still the closed form.
    float big[16];
    srand(3);
    for (int i = 0; i < 16; i++) big[i] = (float)rand() / RAND_MAX * 8.0f - 4.0f;
    double got = logit_sharpness(big, 16, 5, 0.05f, 5), want = closed_form(big, 16, 5, 0.05);
    CHECK(fabs(got - want) <= 0.01 * want && want > 0.0, "V=16: %g vs %g", got, want);
    return test_summary("test_sharpness");
}
