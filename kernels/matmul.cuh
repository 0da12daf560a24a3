// Every matrix product of the CUDA backend, on cuBLASLt, with fp32 accumulation and fp32 results: fp32
// operands (no TF32 unless allowed: precision.allow_tf32) or bf16 operands. The cast operand formats
// (fp8, eXmY) are simulated: their operands are cast values held in fp32, multiplied as fp32.
//
// Row-major throughout: C (M, N) = alpha * op(A) @ op(B) + beta * C, with op(A) (M, K) and op(B) (K, N).
// cuBLASLt is column-major; a row-major C is the column-major C^T = op(B)^T op(A)^T, so B goes first.
// Determinism: cuBLASLt gives the same bits for the same problem, algorithm and workspace on the same GPU;
// the heuristic's choice depends only on the problem, so two runs multiply alike.
#ifndef LP_KERNELS_MATMUL_CUH
#define LP_KERNELS_MATMUL_CUH

#include "common.cuh"

#define MATMUL_WORKSPACE_BYTES (32u << 20)

typedef enum { OPERANDS_FP32, OPERANDS_BF16 } OperandType;

typedef struct {
    cublasLtHandle_t handle;
    void *workspace;  // (MATMUL_WORKSPACE_BYTES) device
    int allow_tf32;   // fp32 operands may use TF32 tensor cores
} MatmulContext;

static void matmul_context_init(MatmulContext *ctx, int allow_tf32) {
    CUBLAS_CHECK(cublasLtCreate(&ctx->handle));
    ctx->workspace = cuda_malloc_checked(MATMUL_WORKSPACE_BYTES, "the cuBLASLt workspace");
    ctx->allow_tf32 = allow_tf32;
}

static void matmul_context_free(MatmulContext *ctx) {
    if (ctx->workspace) CUDA_CHECK(cudaFree(ctx->workspace));
    if (ctx->handle) CUBLAS_CHECK(cublasLtDestroy(ctx->handle));
    ctx->workspace = NULL;
    ctx->handle = NULL;
}

// A product's operands and result. Batched when batch > 1, each operand advancing by its stride (elements).
typedef struct {
    OperandType type;
    int trans_a, trans_b;  // A stored (K, M), B stored (N, K)
    int M, N, K;
    const void *A, *B;
    float *C;
    float alpha, beta;
    int batch;
    long long stride_a, stride_b, stride_c;
} MatmulProblem;

// The largest power of two up to 256 that divides the address: cuBLASLt's heuristic must only offer
// algorithms that work at the operands' real alignment (it assumes 256 bytes otherwise).
static uint32_t address_alignment(const void *ptr) {
    uintptr_t address = (uintptr_t)ptr;
    uint32_t alignment = 256;
    while (alignment > 1 && address % alignment != 0) alignment /= 2;
    return alignment;
}

// A column-major layout of rows x cols with leading dimension ld, batched as the problem is.
static cublasLtMatrixLayout_t matmul_layout(cudaDataType_t type, int rows, int cols, int ld, int batch,
                                            long long stride) {
    cublasLtMatrixLayout_t layout;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                      sizeof stride));
    }
    return layout;
}

static void matmul_gpu(MatmulContext *ctx, const MatmulProblem *p, cudaStream_t stream) {
    cudaDataType_t operand_type = p->type == OPERANDS_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    if (p->type == OPERANDS_FP32 && ctx->allow_tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F));
    // Column-major: first operand B (op(B)^T is N x K), second A (op(A)^T is K x M), result N x M.
    cublasOperation_t op_first = p->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_second = p->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
    // B stored (K, N) row-major is column-major N x K (ld N); stored (N, K) it is K x N (ld K). Likewise A.
    cublasLtMatrixLayout_t first = p->trans_b ? matmul_layout(operand_type, p->K, p->N, p->K, p->batch, p->stride_b)
                                              : matmul_layout(operand_type, p->N, p->K, p->N, p->batch, p->stride_b);
    cublasLtMatrixLayout_t second = p->trans_a ? matmul_layout(operand_type, p->M, p->K, p->M, p->batch, p->stride_a)
                                               : matmul_layout(operand_type, p->K, p->M, p->K, p->batch, p->stride_a);
    cublasLtMatrixLayout_t result = matmul_layout(CUDA_R_32F, p->N, p->M, p->N, p->batch, p->stride_c);

    cublasLtMatmulPreference_t preference;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    size_t workspace_bytes = MATMUL_WORKSPACE_BYTES;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof workspace_bytes));
    uint32_t align_first = address_alignment(p->B), align_second = address_alignment(p->A);
    uint32_t align_result = address_alignment(p->C);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      &align_first, sizeof align_first));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      &align_second, sizeof align_second));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                      &align_result, sizeof align_result));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                      &align_result, sizeof align_result));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx->handle, desc, first, second, result, result, preference, 1,
                                                &heuristic, &found));
    if (found == 0)
        fatal("cuBLASLt has no algorithm for a %s product (M %d, N %d, K %d, batch %d, trans %d/%d)",
              p->type == OPERANDS_BF16 ? "bf16" : "fp32", p->M, p->N, p->K, p->batch, p->trans_a, p->trans_b);
    CUBLAS_CHECK(cublasLtMatmul(ctx->handle, desc, &p->alpha, p->B, first, p->A, second, &p->beta, p->C, result, p->C,
                                result, &heuristic.algo, ctx->workspace, MATMUL_WORKSPACE_BYTES, stream));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(result));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(second));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(first));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
}

#endif
