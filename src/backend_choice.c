#include "backend_choice.h"

#include <stdio.h>

#include "util.h"

const BackendOps *choose_backend(DeviceChoice device, const BackendOps *cuda_ops, int cuda_devices,
                                 int dry_run) {
    if (device == DEVICE_CPU) return &cpu_backend;
    if (!cuda_ops) {
        if (device == DEVICE_CUDA) fatal("--device cuda: this build has no CUDA backend (built without nvcc; use --device cpu)");
        printf("note: this build has no CUDA backend (built without nvcc): running on the CPU\n");
        return &cpu_backend;
    }
    if (device == DEVICE_CUDA) {
        if (cuda_devices == 0 && !dry_run) fatal("--device cuda: no CUDA GPU is visible (use --device cpu or auto)");
        return cuda_ops;
    }
    if (cuda_devices > 0) return cuda_ops;
    printf("note: no GPU found: running on the CPU backend\n");
    return &cpu_backend;
}
