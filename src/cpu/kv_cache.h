// Decoding one sequence token by token on the CPU: per layer, the q, k, v rows of every position fed so
// far, so that a new position runs the forward on its own row only (attention reads the cached keys and
// values) instead of rerunning the whole window.
#ifndef LP_CPU_KV_CACHE_H
#define LP_CPU_KV_CACHE_H

#include "cpu/gpt_cpu.h"

typedef struct KVCache KVCache;

// Room for sequences of at most max_T tokens (max_T <= block_size).
KVCache *kv_cache_create(const ParamTable *table, int max_T);
void kv_cache_free(KVCache *cache);
// Feeds `token` at position pos, pos <= the positions cached: the cache keeps positions 0..pos-1 and forgets
// the rest (pos 0 starts a new sequence). Returns the logits at that position: (Vp), valid until the next call. Every product and cast is
// gpt_cpu_forward's own, in the same order, so the logits are bit for bit those of a full forward over the
// sequence at that position, except under fp8 current scaling (the block linears' with scaling = current,
// attention's and the LM head's always) or before any delayed-scaling history:
// there a tensor's scale comes from its amax over the rows at hand, here one row.
const float *kv_cache_step(KVCache *cache, GPTCpu *model, const float *params, int token, int pos);

#endif
