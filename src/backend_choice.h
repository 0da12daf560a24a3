// Which backend runs: --device against what this build and machine have.
#ifndef LP_BACKEND_CHOICE_H
#define LP_BACKEND_CHOICE_H

#include "backend.h"
#include "cli.h"

// cuda_ops: the CUDA backend when it is built, else NULL; cuda_devices: GPUs visible. A dry run only plans:
// --device cuda --dry-run prints the GPU memory plan on a machine without a GPU. fatal() when --device cuda
// cannot be had.
const BackendOps *choose_backend(DeviceChoice device, const BackendOps *cuda_ops, int cuda_devices, int dry_run);

#endif
