// llm.c's GPT-2 model file: header of 256 int32 (magic 20240326; version 3 = fp32 params, 5 = bf16;
// max_seq_len, vocab_size, n_layer, n_head, n_embd, padded_vocab_size), then the parameters in llm.c's
// tensor order, which is the order of our ParamTable.
#ifndef LP_LLMC_MODEL_H
#define LP_LLMC_MODEL_H

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LLMC_MODEL_MAGIC 20240326
#define LLMC_VERSION_FP32 3
#define LLMC_VERSION_BF16 5

// Reads only the header; fatal() on a wrong magic, unknown version or nonsensical sizes.
ModelShape llmc_model_read_shape(const char *path);
// Loads parameters into params (table->num_params floats); fatal() when the file's shape differs from
// table->shape or the file size does not match the header.
void llmc_model_load(const char *path, const ParamTable *table, float *params);
// Writes atomically; version LLMC_VERSION_FP32 or LLMC_VERSION_BF16 (round-to-nearest-even).
void llmc_model_save(const char *path, const ParamTable *table, const float *params, int version);

#ifdef __cplusplus
}
#endif

#endif
