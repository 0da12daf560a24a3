// How many rows of the LM head's logits the CUDA backend forms at a time under fp32 activations, so that the
// fp32 (B*T, Vp) logits are never stored whole (src/cuda/gpt_cuda.cu; the step model counts the chunks'
// second and third formation in the backward, src/step_model.c). Under bf16 activations the bf16 logits are
// stored whole.
#ifndef LP_LOGIT_CHUNKS_H
#define LP_LOGIT_CHUNKS_H

#define LOGIT_CHUNK_ROWS 1024

#endif
