// Text samples from the model being trained.
#ifndef LP_SAMPLE_H
#define LP_SAMPLE_H

#include "backend.h"
#include "numerics/rng.h"
#include "tokenizer.h"

// Generates num_tokens tokens after an end-of-text token, feeding at most max_context tokens back in,
// sampling from the model's probabilities with draws from `key` (so a sample is reproducible). Returns
// the decoded text; the caller frees it.
char *sample_text(const BackendOps *ops, Backend *backend, const Tokenizer *tok, int vocab_size, int max_context, int num_tokens, RngKey key);

#endif
