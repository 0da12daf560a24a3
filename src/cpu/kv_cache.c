// One decoding step: gpt_cpu_forward's layer sequence on one row, with attention over the cached rows.
#include "cpu/kv_cache.h"

#include <stdlib.h>

#include "cpu/ops.h"
#include "util.h"

struct KVCache {
    ParamTable table;
    int max_T;
    int length;        // positions cached
    // The qkv rows as attention reads them (cast to its operand format), q included because attention
    // reads q, k and v from one (T, 3C) array; q's third is never read again.
    float *qkv;        // (L, max_T, 3C)
    float *residual;   // (C) the residual stream of the position being fed
    float *residual2;  // (C) after attention
    float *ln;         // (C) a layernorm's output
    float *mean, *rstd;  // (1) its statistics (unused afterwards)
    float *atty;       // (C)
    float *proj;       // (C) attproj or fcproj output
    float *fch;        // (4C)
    float *fch_gelu;   // (4C)
    float *att;        // (NH, max_T) attention probabilities of the position (materialized attention)
    float *logits;     // (Vp)
};

KVCache *kv_cache_create(const ParamTable *table, int max_T) {
    const ModelShape *s = &table->shape;
    if (max_T < 1 || max_T > s->block_size) fatal("internal: KV cache of %d positions, block_size %d", max_T, s->block_size);
    size_t C = (size_t)s->n_embd;
    KVCache *cache = xcalloc(1, sizeof *cache);
    cache->table = *table;
    cache->max_T = max_T;
    cache->qkv = xmalloc((size_t)s->n_layer * max_T * 3 * C * sizeof(float));
    cache->residual = xmalloc(C * sizeof(float));
    cache->residual2 = xmalloc(C * sizeof(float));
    cache->ln = xmalloc(C * sizeof(float));
    cache->mean = xmalloc(sizeof(float));
    cache->rstd = xmalloc(sizeof(float));
    cache->atty = xmalloc(C * sizeof(float));
    cache->proj = xmalloc(C * sizeof(float));
    cache->fch = xmalloc(4 * C * sizeof(float));
    cache->fch_gelu = xmalloc(4 * C * sizeof(float));
    cache->att = xmalloc((size_t)s->n_head * max_T * sizeof(float));
    cache->logits = xmalloc((size_t)s->padded_vocab * sizeof(float));
    return cache;
}

void kv_cache_free(KVCache *cache) {
    if (!cache) return;
    free(cache->qkv);
    free(cache->residual);
    free(cache->residual2);
    free(cache->ln);
    free(cache->mean);
    free(cache->rstd);
    free(cache->atty);
    free(cache->proj);
    free(cache->fch);
    free(cache->fch_gelu);
    free(cache->att);
    free(cache->logits);
    free(cache);
}

// Block l on the new position: its qkv row joins the cache, attention reads rows 0..pos.
static void block_step(KVCache *cache, GPTCpu *model, const float *params, int l, int pos) {
    int C = cache->table.shape.n_embd, NH = cache->table.shape.n_head;
    LayerOffsets p = layer_offsets(&cache->table, l);
    const OperandCast *attention_cast = gpt_cpu_attention_cast(model);
    float *layer_qkv = cache->qkv + (size_t)l * cache->max_T * 3 * C;  // (max_T, 3C)
    float *qkv = layer_qkv + (size_t)pos * 3 * C;                      // (3C)
    layernorm_forward(cache->ln, cache->mean, cache->rstd, cache->residual, params + p.ln1w, params + p.ln1b, 1, C);
    gpt_cpu_store(model, cache->ln, (size_t)C);
    gpt_cpu_linear_forward(model, l, LINEAR_QKV, qkv, cache->ln, params + p.qkvw, params + p.qkvb, 1, C, 3 * C);
    gpt_cpu_attention_operand(model, qkv, qkv, 3 * (size_t)C);  // cast in place: the cache keeps the cast rows
    // The model's attention on the last row: the same bits as its full forward's row pos.
    if (gpt_cpu_attention_impl(model) == ATTENTION_FUSED)
        attention_tiled_forward_last(cache->atty, layer_qkv, pos + 1, C, NH, attention_cast);
    else
        attention_forward_last(cache->atty, cache->att, layer_qkv, pos + 1, C, NH, attention_cast);
    gpt_cpu_store(model, cache->atty, (size_t)C);
    gpt_cpu_linear_forward(model, l, LINEAR_ATTPROJ, cache->proj, cache->atty, params + p.attprojw,
                           params + p.attprojb, 1, C, C);
    residual_forward(cache->residual2, cache->residual, cache->proj, (size_t)C);
    gpt_cpu_store(model, cache->residual2, (size_t)C);
    layernorm_forward(cache->ln, cache->mean, cache->rstd, cache->residual2, params + p.ln2w, params + p.ln2b, 1, C);
    gpt_cpu_store(model, cache->ln, (size_t)C);
    gpt_cpu_linear_forward(model, l, LINEAR_FC, cache->fch, cache->ln, params + p.fcw, params + p.fcb, 1, C, 4 * C);
    gelu_forward(cache->fch_gelu, cache->fch, 4 * (size_t)C);
    gpt_cpu_store(model, cache->fch_gelu, 4 * (size_t)C);
    gpt_cpu_linear_forward(model, l, LINEAR_FCPROJ, cache->proj, cache->fch_gelu, params + p.fcprojw,
                           params + p.fcprojb, 1, 4 * C, C);
    residual_forward(cache->residual, cache->residual2, cache->proj, (size_t)C);
    gpt_cpu_store(model, cache->residual, (size_t)C);
}

const float *kv_cache_step(KVCache *cache, GPTCpu *model, const float *params, int token, int pos) {
    const ModelShape *s = &cache->table.shape;
    const ParamTensor *tensors = cache->table.tensors;
    if (pos < 0 || pos > cache->length || pos >= cache->max_T) {
        fatal("internal: decoding position %d with %d cached of at most %d", pos, cache->length, cache->max_T);
    }
    if (token < 0 || token >= s->vocab_size) fatal("token %d is outside the vocabulary of %d", token, s->vocab_size);
    int C = s->n_embd;
    const float *wte = params + tensors[PARAM_WTE].offset;  // (Vp, C)
    const float *wpe = params + tensors[PARAM_WPE].offset;  // (block_size, C)
    encoder_forward(cache->residual, &token, wte, wpe + (size_t)pos * C, 1, 1, C);
    gpt_cpu_store(model, cache->residual, (size_t)C);
    for (int l = 0; l < s->n_layer; l++) block_step(cache, model, params, l, pos);
    layernorm_forward(cache->ln, cache->mean, cache->rstd, cache->residual, params + tensors[PARAM_LNFW].offset,
                      params + tensors[PARAM_LNFB].offset, 1, C);
    gpt_cpu_store(model, cache->ln, (size_t)C);
    gpt_cpu_lm_head_forward(model, cache->logits, cache->ln, wte, 1, C, s->padded_vocab);
    cache->length = pos + 1;
    return cache->logits;
}
