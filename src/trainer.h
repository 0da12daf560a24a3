// train_gpt's program: CLI -> config -> backend -> training loop (train, eval, log, sample, checkpoint).
#ifndef LP_TRAINER_H
#define LP_TRAINER_H

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// cuda_ops: the CUDA backend when it is built, else NULL; cuda_devices: GPUs visible to this process.
int train_main(int argc, char **argv, const BackendOps *cuda_ops, int cuda_devices);

#ifdef __cplusplus
}
#endif

#endif
