// The GPT-2 model description: shape, the named-tensor table over one contiguous parameter buffer (llm.c's
// tensor order, so llm.c model files map onto it directly), and GPT-2 initialisation.
#ifndef LP_MODEL_H
#define LP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int n_layer;
    int n_head;
    int n_embd;         // C
    int block_size;     // maximum sequence length (rows of wpe)
    int vocab_size;     // V: tokens the data can hold
    int padded_vocab;   // Vp: V rounded up to a multiple of 128; logits beyond V never touch the loss
} ModelShape;

enum {
    PARAM_WTE,       // (Vp, C) token embedding, also the LM head (tied)
    PARAM_WPE,       // (block_size, C)
    PARAM_LN1W,      // (L, C)
    PARAM_LN1B,      // (L, C)
    PARAM_QKVW,      // (L, 3C, C)
    PARAM_QKVB,      // (L, 3C)
    PARAM_ATTPROJW,  // (L, C, C)
    PARAM_ATTPROJB,  // (L, C)
    PARAM_LN2W,      // (L, C)
    PARAM_LN2B,      // (L, C)
    PARAM_FCW,       // (L, 4C, C)
    PARAM_FCB,       // (L, 4C)
    PARAM_FCPROJW,   // (L, C, 4C)
    PARAM_FCPROJB,   // (L, C)
    PARAM_LNFW,      // (C)
    PARAM_LNFB,      // (C)
    NUM_PARAM_TENSORS
};

typedef struct {
    const char *name;  // llm.c's name, e.g. "qkvw"
    size_t offset;     // into the parameter buffer, in elements
    size_t numel;      // all layers together
    int per_layer;     // 1 if the tensor stacks one slice per layer
    int is_matrix;     // 2-D weight matrix: gets weight decay (and, later, matmul/DQT treatment)
} ParamTensor;

typedef struct {
    ModelShape shape;
    ParamTensor tensors[NUM_PARAM_TENSORS];
    size_t num_params;
} ParamTable;

// Rounds vocab_size up to a multiple of 128.
int padded_vocab_size(int vocab_size);
// Fills the table for shape; a padded_vocab of 0 becomes padded_vocab_size(vocab_size) (an llm.c file
// brings its own). fatal() on a shape that cannot be built (n_embd not a multiple of n_head, ...).
void param_table_init(ParamTable *table, const ModelShape *shape);
// GPT-2 init: N(0, 0.02) for matrices and embeddings, residual projections scaled by 1/sqrt(2*n_layer),
// LayerNorm weights 1, biases 0; padded vocabulary rows of wte are 0. Deterministic from the seed,
// independent of threads. params: (num_params)
void gpt_init_params(const ParamTable *table, float *params, uint64_t seed);
// The offsets of layer l's parameter slices, valid in the parameter and the gradient buffer alike.
typedef struct {
    size_t ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb;
} LayerOffsets;
LayerOffsets layer_offsets(const ParamTable *table, int layer);
// Prints one line per tensor and the total.
void param_table_print(const ParamTable *table);

#ifdef __cplusplus
}
#endif

#endif
