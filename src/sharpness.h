// Logit sharpness (arXiv 2405.18710, Keskar-style, on the logits z of one position with f = cross-entropy):
// max over |y_i| <= eps * (|z_i| + 1) of 100 * (f(z + y) - f(z)) / (1 + f(z)), found by projected
// gradient ascent.
#ifndef LP_SHARPNESS_H
#define LP_SHARPNESS_H

// z: (V) logits; target: the true token. steps: ascent steps (each moves every coordinate by its whole
// box half-width in the gradient's sign direction, then projects back into the box). Returns 0 for eps 0.
float logit_sharpness(const float *z, int V, int target, float eps, int steps);

#endif
