#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "util.h"

// Inverse-CDF draw over the real vocabulary; u in [0, 1).
static int draw_token(const float *probs, int vocab_size, float u) {
    float cumulative = 0.0f;
    for (int i = 0; i < vocab_size; i++) {
        cumulative += probs[i];
        if (u < cumulative) return i;
    }
    return vocab_size - 1;  // rounding left the total just below u
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int descending(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

// The k-th largest of x (n); sorted: (n) scratch.
static float kth_largest(const float *x, int n, int k, float *sorted) {
    memcpy(sorted, x, (size_t)n * sizeof(float));
    qsort(sorted, (size_t)n, sizeof(float), descending);
    return sorted[k - 1];
}

// One token from the logits (V of them used): softmax of logits / temperature over the top k (the
// classifier's softmax, so that temperature 1 without top-k draws from exactly the model's probabilities).
// scaled, probs, scratch: (V) each.
static int pick_token(const float *logits, int V, const SampleSettings *s, float u, float *scaled, float *probs,
                      float *scratch) {
    if (s->temperature == 0.0f) return argmax(logits, V);
    for (int v = 0; v < V; v++) scaled[v] = logits[v] / s->temperature;
    if (s->top_k > 0 && s->top_k < V) {
        float threshold = kth_largest(scaled, V, s->top_k, scratch);
        for (int v = 0; v < V; v++)
            if (scaled[v] < threshold) scaled[v] = -INFINITY;
    }
    classifier_forward(probs, NULL, scaled, NULL, 1, V, V);
    return draw_token(probs, V, u);
}

// The logits after the window tokens[start, count): through the key/value cache, which holds
// tokens[start, start + *cached), or a forward over the whole window.
static const float *window_logits(const BackendOps *ops, Backend *backend, const int *tokens, int start, int count,
                                  int *cached) {
    if (!ops->decode_step) {
        ops->forward(backend, tokens + start, NULL, 1, count - start);
        return ops->logits(backend, count - start - 1);  // (1, Vp)
    }
    const float *logits = NULL;
    for (; start + *cached < count; (*cached)++) logits = ops->decode_step(backend, tokens[start + *cached], *cached);
    return logits;
}

void sample_tokens(const BackendOps *ops, Backend *backend, int vocab_size, const int *prompt, int prompt_len,
                   const SampleSettings *s, int *out) {
    if (prompt_len < 1 || prompt_len > s->max_context) {
        fatal("internal: a prompt of %d tokens for a context of %d", prompt_len, s->max_context);
    }
    int *tokens = xmalloc((size_t)(prompt_len + s->num_tokens) * sizeof(int));
    memcpy(tokens, prompt, (size_t)prompt_len * sizeof(int));
    float *scratch = xmalloc(3 * (size_t)vocab_size * sizeof(float));
    int start = 0, cached = 0;
    for (int i = 0; i < s->num_tokens; i++) {
        int count = prompt_len + i;
        if (count - start > s->max_context) {
            start = count - (s->max_context + 1) / 2;
            cached = 0;
        }
        const float *logits = window_logits(ops, backend, tokens, start, count, &cached);
        tokens[count] = pick_token(logits, vocab_size, s, rng_uniform(s->key, (uint64_t)i), scratch,
                                   scratch + vocab_size, scratch + 2 * (size_t)vocab_size);
        out[i] = tokens[count];
    }
    free(scratch);
    free(tokens);
}

char *sample_text(const BackendOps *ops, Backend *backend, const Tokenizer *tok, int vocab_size, int max_context,
                  int num_tokens, RngKey key) {
    SampleSettings s = {num_tokens, 1.0f, 0, max_context, key};
    int eot = tokenizer_eot(tok);
    int *tokens = xmalloc((size_t)(num_tokens > 0 ? num_tokens : 1) * sizeof(int));
    sample_tokens(ops, backend, vocab_size, &eot, 1, &s, tokens);
    char *text = tokenizer_decode_all(tok, tokens, num_tokens);
    free(tokens);
    return text;
}
