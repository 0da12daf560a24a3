#include "sample.h"

#include <stdlib.h>
#include <string.h>

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

char *sample_text(const BackendOps *ops, Backend *backend, const Tokenizer *tok, int vocab_size, int max_context, int num_tokens, RngKey key) {
    int *tokens = xmalloc((size_t)(num_tokens + 1) * sizeof(int));
    tokens[0] = tokenizer_eot(tok);
    size_t cap = 256, len = 0;
    char *text = xmalloc(cap);
    text[0] = '\0';
    for (int i = 0; i < num_tokens; i++) {
        int count = i + 1;
        int context = count < max_context ? count : max_context;
        const int *window = tokens + count - context;
        ops->forward(backend, window, NULL, 1, context);
        const float *last = ops->probs(backend, context - 1);  // (1, Vp)
        tokens[count] = draw_token(last, vocab_size, rng_uniform(key, (uint64_t)i));
        const char *piece = tokenizer_decode(tok, tokens[count]);
        size_t piece_len = strlen(piece);
        while (len + piece_len + 1 > cap) {
            cap *= 2;
            char *bigger = realloc(text, cap);
            if (!bigger) fatal("out of memory while sampling");
            text = bigger;
        }
        memcpy(text + len, piece, piece_len + 1);
        len += piece_len;
    }
    free(tokens);
    return text;
}
