// train_gpt: the program's entry point. Compiled by nvcc when the CUDA toolkit is present (then the CUDA
// backend of src/cuda/ is linked in and GPUs are detected here), else by the C compiler as C, CPU only.
// The training program itself lives in src/trainer.c.
#include "trainer.h"

#ifdef LP_WITH_CUDA
#include <cuda_runtime.h>

#include "backend.h"

static int cuda_device_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
    return count;
}
#endif

int main(int argc, char **argv) {
#ifdef LP_WITH_CUDA
    return train_main(argc, argv, &cuda_backend, cuda_device_count());
#else
    return train_main(argc, argv, NULL, 0);
#endif
}
