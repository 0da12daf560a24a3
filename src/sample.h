// Sampling text from a model: the training run's periodic samples and train_gpt --generate.
#ifndef LP_SAMPLE_H
#define LP_SAMPLE_H

#include "backend.h"
#include "numerics/rng.h"
#include "tokenizer.h"

typedef struct {
    int num_tokens;     // tokens to generate
    float temperature;  // the logits are divided by it; 0 = greedy (the most likely token)
    int top_k;          // draw among the k most likely tokens only (ties at the k-th included); 0 = all
    int max_context;    // the most tokens the model sees (at most the backend's capacity)
    RngKey key;         // token i is drawn with rng_uniform(key, i): the same key, the same tokens
} SampleSettings;

// Generates s->num_tokens tokens after prompt (prompt_len tokens, 1 <= prompt_len <= s->max_context) into
// out (num_tokens). The model sees the window tokens[start, count) of everything so far; when it would
// exceed max_context, start jumps to keep the newest (max_context + 1) / 2 tokens. With the backend's
// decode_step the window lives in its key/value cache (rebuilt after each jump), else each token reruns
// forward over the window: both give the same tokens.
void sample_tokens(const BackendOps *ops, Backend *backend, int vocab_size, const int *prompt, int prompt_len,
                   const SampleSettings *s, int *out);
// A training run's sample: num_tokens tokens after an end-of-text token, temperature 1, all tokens, decoded
// to text (the caller frees it).
char *sample_text(const BackendOps *ops, Backend *backend, const Tokenizer *tok, int vocab_size, int max_context,
                  int num_tokens, RngKey key);

#endif
