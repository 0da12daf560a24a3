// train_gpt --generate RUN_DIR|MODEL_BIN: a prompt and its continuation by a trained model.
#ifndef LP_GENERATE_H
#define LP_GENERATE_H

#include "backend.h"
#include "cli.h"

#ifdef __cplusplus
extern "C" {
#endif

// Loads the model (RUN_DIR's model.bin, else its newest checkpoint; or an llm.c model file), encodes the
// prompt with the run's tokenizer, generates and prints prompt and continuation on stdout. fatal() with one
// line on a missing run or model, a prompt it cannot encode, or one longer than the context. Returns 0.
int generate_main(const CliOptions *opt, const BackendOps *cuda_ops, int cuda_devices);

#ifdef __cplusplus
}
#endif

#endif
