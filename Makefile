# lpgpt build. `make` builds train_gpt (with the CUDA backend when nvcc is found), `make test` runs the
# CPU test suite and compiles the device code, `make test-gpu` runs the GPU tests, `make bench` benchmarks.

CC ?= gcc
BUILD := build
CFLAGS ?= -O2 -g
CFLAGS += -std=c11 -Wall -Wextra -Wno-unused-parameter -ffp-contract=off -fopenmp -Isrc -D_POSIX_C_SOURCE=200809L
LDLIBS := -lcjson -lm
# cJSON from the system, or unpacked under CJSON_PREFIX (a machine without Debian's libcjson-dev installed:
# scripts/gpu_verify.sh unpacks carried .deb files there).
CJSON_PREFIX ?=
ifneq ($(CJSON_PREFIX),)
CJSON_INCLUDE := -I$(CJSON_PREFIX)/usr/include
LDLIBS := -L$(CJSON_PREFIX)/usr/lib/x86_64-linux-gnu $(LDLIBS)
endif
CFLAGS += $(CJSON_INCLUDE)

# MPI (data-parallel training under mpirun): with mpicc on the PATH, src/distributed.c is built against MPI
# (Open MPI's `mpicc --showme`; set MPI_CFLAGS / MPI_LDLIBS for another MPI); without it, as one process.
HAVE_MPI := $(if $(shell command -v mpicc 2>/dev/null),yes,no)
ifeq ($(HAVE_MPI),yes)
MPI_CFLAGS ?= $(shell mpicc --showme:compile 2>/dev/null)
MPI_LDLIBS ?= $(shell mpicc --showme:link 2>/dev/null)
CFLAGS += -DLP_WITH_MPI $(MPI_CFLAGS)
LDLIBS += $(MPI_LDLIBS)
endif

NVCC ?= $(shell command -v nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90
NVCCFLAGS ?= -O2 -g
NVCCFLAGS += -std=c++17 $(CUDA_ARCH) -fmad=false -Xcompiler -fopenmp,-ffp-contract=off -Isrc $(CJSON_INCLUDE)
# nvcc passes on -L and -l; MPI's other link options (-pthread, -Wl,...) the host compiler adds itself.
CUDA_LDLIBS := -lcublasLt -lcublas -lcudart $(filter -L% -l%,$(LDLIBS)) -lgomp

HAVE_CUBLASLT := $(if $(wildcard $(CUDA_HOME)/include/cublasLt.h),yes,no)
# NCCL carries data-parallel GPU training; without it the CUDA backend runs one rank. From the CUDA toolkit,
# the system, or NCCL_HOME (include/nccl.h and lib/libnccl.so, e.g. links into PyTorch's pip package).
NCCL_HOME ?=
HAVE_NCCL := $(if $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h $(if $(NCCL_HOME),$(NCCL_HOME)/include/nccl.h)),yes,no)
ifeq ($(HAVE_NCCL),yes)
NVCCFLAGS += -DLP_WITH_NCCL $(if $(NCCL_HOME),-I$(NCCL_HOME)/include)
CUDA_LDLIBS += $(if $(NCCL_HOME),-L$(NCCL_HOME)/lib) -lnccl
endif
HAVE_CJSON := $(if $(wildcard $(CJSON_PREFIX)/usr/include/cjson/cJSON.h),yes,no)
HAVE_OPENMP := $(if $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo y),yes,no)

LIB_SRCS := $(wildcard src/*.c src/cpu/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
# An archive, so a test links only the objects it uses.
LIB := $(BUILD)/liblpgpt.a
HEADERS := $(wildcard src/*.h src/numerics/*.h src/cpu/*.h src/cuda/*.h kernels/*.cuh)
# The CUDA backend (nvcc builds only): src/cuda/*.cu over the kernels of kernels/*.cuh.
CUDA_SRCS := $(wildcard src/cuda/*.cu)
CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/%.o)
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
GPU_TEST_SRCS := $(wildcard tests/gpu/*.cu)
GPU_TEST_BINS := $(GPU_TEST_SRCS:tests/gpu/%.cu=$(BUILD)/tests/gpu/%)

.PHONY: all detect test test-gpu bench clean
all: detect train_gpt

detect:
	@echo "lpgpt build: nvcc=$(if $(NVCC),$(NVCC),no) cublasLt=$(HAVE_CUBLASLT) nccl=$(HAVE_NCCL) mpi=$(HAVE_MPI) cjson=$(HAVE_CJSON) openmp=$(HAVE_OPENMP)"
ifeq ($(HAVE_CJSON),no)
	@echo "missing: cJSON (install Debian's libcjson-dev, or run ./scripts/setup.sh)"; exit 1
endif

$(BUILD)/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $^

ifneq ($(NVCC),)
$(BUILD)/train_gpt.o: train_gpt.cu $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DLP_WITH_CUDA -x cu -c $< -o $@

$(BUILD)/src/cuda/%.o: src/cuda/%.cu $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -I. -c $< -o $@

train_gpt: $(BUILD)/train_gpt.o $(CUDA_OBJS) $(LIB)
	$(NVCC) $(NVCCFLAGS) $^ -o $@ $(CUDA_LDLIBS)

$(BUILD)/tests/gpu/%: tests/gpu/%.cu $(CUDA_OBJS) $(LIB) $(HEADERS) tests/testing.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -I. -Itests $< $(CUDA_OBJS) $(LIB) -o $@ $(CUDA_LDLIBS)

DEVICE_BUILD := $(GPU_TEST_BINS)
else
train_gpt: train_gpt.cu $(LIB) $(HEADERS)
	$(CC) $(CFLAGS) -x c train_gpt.cu -x none $(LIB) -o $@ $(LDLIBS)

DEVICE_BUILD :=
endif

$(BUILD)/tests/%: tests/%.c tests/testing.h $(LIB) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $< $(LIB) -o $@ $(LDLIBS)

# The CPU suite: C unit tests, then end-to-end scripts against train_gpt. With nvcc, the device code
# (train_gpt's CUDA backend and the GPU tests) must compile and link for sm_90 too; it is not run here.
test: all $(TEST_BINS) $(DEVICE_BUILD)
	@./tests/run_tests.sh $(TEST_BINS) $(wildcard tests/test_*.sh tests/test_*.py)

test-gpu: all $(GPU_TEST_BINS)
	@./tests/run_tests.sh $(GPU_TEST_BINS) $(wildcard tests/gpu/test_*.sh)

bench: all
	@./bench/bench.sh

clean:
	rm -rf $(BUILD) train_gpt
