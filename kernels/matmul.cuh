// Every matrix product of the CUDA backend, on cuBLASLt, with fp32 accumulation: fp32 operands (no TF32
// unless allowed: precision.allow_tf32) or bf16 operands. The cast operand formats (fp8, eXmY) are
// simulated: their operands are cast values held in fp32, multiplied as fp32. Results are fp32, or bf16 (a
// stored bf16 activation: the fp32 result, bias included, rounded once, as the CPU's gpt_cpu_store).
//
// Row-major throughout: C (M, N) = alpha * op(A) @ op(B) + beta * C (+ bias on every row), with op(A)
// (M, K) and op(B) (K, N). The bias rides in cuBLASLt's epilogue (one fp32 addition to each result, as the
// separate add it replaces) when its stored type is the result's (cuBLASLt's rule); otherwise, or where no
// algorithm takes the epilogue, add_bias_gpu adds it after the product: in place into an fp32 result, or for a
// bf16 result from the product's fp32 values in bias_scratch, so the sum is still rounded only once.
// cuBLASLt is column-major; a row-major C is the column-major C^T = op(B)^T op(A)^T, so B goes first.
// Determinism: cuBLASLt gives the same bits for the same problem, algorithm and workspace on the same GPU;
// the heuristic's choice depends only on the problem, so two runs multiply alike.
#ifndef LP_KERNELS_MATMUL_CUH
#define LP_KERNELS_MATMUL_CUH

#include "column_sum.cuh"
#include "common.cuh"

#define MATMUL_WORKSPACE_BYTES (32u << 20)

typedef enum { OPERANDS_FP32, OPERANDS_BF16 } OperandType;

typedef struct {
    cublasLtHandle_t handle;
    void *workspace;  // (MATMUL_WORKSPACE_BYTES) device
} MatmulContext;

static void matmul_context_init(MatmulContext *ctx) {
    CUBLAS_CHECK(cublasLtCreate(&ctx->handle));
    ctx->workspace = cuda_malloc_checked(MATMUL_WORKSPACE_BYTES, "the cuBLASLt workspace");
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
    int allow_tf32;        // fp32 operands may use TF32 tensor cores (never for simulated fp8 / eXmY values)
    int trans_a, trans_b;  // A stored (K, M), B stored (N, K)
    int M, N, K;
    const void *A, *B;
    void *C;
    OperandType c_type;      // the result's type: fp32, or bf16 (beta 0 only)
    const void *bias;        // (N) added to every row of C after the product (batch 1, beta 0), or NULL
    OperandType bias_type;   // the bias's stored type
    float *bias_scratch;     // a bf16 result with a bias the epilogue cannot take: (M, N) fp32, else unused
    float alpha, beta;
    int batch;
    long long stride_a, stride_b, stride_c;
} MatmulProblem;

// The largest power of two up to 256 that divides the address of every row and every batch entry of an
// operand (its base, its leading dimension and its batch stride in bytes): cuBLASLt's heuristic must only
// offer algorithms that work at the operands' real alignment (it assumes 256 bytes otherwise). Attention
// at an odd T (sampling runs every context length) leaves all but the first head 2-byte aligned.
static uint32_t operand_alignment(const void *ptr, int ld, long long stride, int batch, size_t elem_bytes) {
    uint64_t offsets = (uint64_t)(uintptr_t)ptr | ((uint64_t)ld * elem_bytes);
    if (batch > 1) offsets |= (uint64_t)stride * elem_bytes;
    uint32_t alignment = 256;
    while (alignment > 1 && offsets % alignment != 0) alignment /= 2;
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

static cudaDataType_t cuda_type(OperandType type) { return type == OPERANDS_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

static size_t type_bytes(OperandType type) { return type == OPERANDS_BF16 ? 2 : 4; }

// The preference: the workspace, and the real alignments of the operands and of the result.
static cublasLtMatmulPreference_t matmul_preference(const MatmulProblem *p, const void *result, size_t result_bytes) {
    cublasLtMatmulPreference_t preference;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    size_t workspace_bytes = MATMUL_WORKSPACE_BYTES;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof workspace_bytes));
    size_t operand_bytes = type_bytes(p->type);
    uint32_t align_first = operand_alignment(p->B, p->trans_b ? p->K : p->N, p->stride_b, p->batch, operand_bytes);
    uint32_t align_second = operand_alignment(p->A, p->trans_a ? p->M : p->K, p->stride_a, p->batch, operand_bytes);
    uint32_t align_result = operand_alignment(result, p->N, p->stride_c, p->batch, result_bytes);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      &align_first, sizeof align_first));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      &align_second, sizeof align_second));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                      &align_result, sizeof align_result));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                      &align_result, sizeof align_result));
    return preference;
}

// One product into `result` of `result_type` (C itself, or the bias scratch), with the bias in the epilogue
// when `bias` is not NULL and an algorithm takes it; without such an algorithm, the product runs without the
// bias when `or_without` is set, else not at all. Returns whether the bias was added.
static int matmul_run(MatmulContext *ctx, const MatmulProblem *p, void *result, OperandType result_type,
                      const void *bias, int or_without, cudaStream_t stream) {
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    if (p->type == OPERANDS_FP32 && p->allow_tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F));
    // Column-major: first operand B (op(B)^T is N x K), second A (op(A)^T is K x M), result N x M.
    cublasOperation_t op_first = p->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_second = p->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
    // B stored (K, N) row-major is column-major N x K (ld N); stored (N, K) it is K x N (ld K). Likewise A.
    cudaDataType_t operand_type = cuda_type(p->type);
    cublasLtMatrixLayout_t first = p->trans_b ? matmul_layout(operand_type, p->K, p->N, p->K, p->batch, p->stride_b)
                                              : matmul_layout(operand_type, p->N, p->K, p->N, p->batch, p->stride_b);
    cublasLtMatrixLayout_t second = p->trans_a ? matmul_layout(operand_type, p->M, p->K, p->M, p->batch, p->stride_a)
                                               : matmul_layout(operand_type, p->K, p->M, p->K, p->batch, p->stride_a);
    cublasLtMatrixLayout_t layout = matmul_layout(cuda_type(result_type), p->N, p->M, p->N, p->batch, p->stride_c);
    cublasLtMatmulPreference_t preference = matmul_preference(p, result, type_bytes(result_type));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    // The epilogue only for a 16-byte aligned bias: the preferences have no alignment for it, and some
    // algorithms assume 16 bytes. A configuration no algorithm takes may be answered "not supported" rather
    // than with none found: either way the product runs without the epilogue.
    if (bias && (uintptr_t)bias % 16 == 0) {
        cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(ctx->handle, desc, first, second, layout, layout,
                                                               preference, 1, &heuristic, &found);
        if (status != CUBLAS_STATUS_SUCCESS) found = 0;
    }
    int bias_in_epilogue = found > 0;
    if (bias && !bias_in_epilogue) {
        cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    }
    int runs = bias_in_epilogue || or_without || !bias;
    if (runs && !bias_in_epilogue)
        CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx->handle, desc, first, second, layout, layout, preference, 1,
                                                    &heuristic, &found));
    if (runs && found == 0)
        fatal("cuBLASLt has no algorithm for a %s product into %s (M %d, N %d, K %d, batch %d, trans %d/%d)",
              p->type == OPERANDS_BF16 ? "bf16" : "fp32", result_type == OPERANDS_BF16 ? "bf16" : "fp32", p->M, p->N,
              p->K, p->batch, p->trans_a, p->trans_b);
    if (runs)
        CUBLAS_CHECK(cublasLtMatmul(ctx->handle, desc, &p->alpha, p->B, first, p->A, second, &p->beta, result, layout,
                                    result, layout, &heuristic.algo, ctx->workspace, MATMUL_WORKSPACE_BYTES, stream));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(layout));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(second));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(first));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
    return bias_in_epilogue;
}

// The separate bias add: into the fp32 result in place, or from the bias scratch into the bf16 result.
static void matmul_add_bias(const MatmulProblem *p, const float *product, cudaStream_t stream) {
    if (p->c_type == OPERANDS_FP32) {
        float *out = (float *)p->C;
        if (p->bias_type == OPERANDS_BF16) add_bias_gpu(out, product, (const __nv_bfloat16 *)p->bias, p->M, p->N, stream);
        else add_bias_gpu(out, product, (const float *)p->bias, p->M, p->N, stream);
    } else {
        __nv_bfloat16 *out = (__nv_bfloat16 *)p->C;
        if (p->bias_type == OPERANDS_BF16) add_bias_gpu(out, product, (const __nv_bfloat16 *)p->bias, p->M, p->N, stream);
        else add_bias_gpu(out, product, (const float *)p->bias, p->M, p->N, stream);
    }
}

static void matmul_gpu(MatmulContext *ctx, const MatmulProblem *p, cudaStream_t stream) {
    if (p->bias && (p->batch > 1 || p->beta != 0.0f)) fatal("internal: a bias on a batched or accumulating product");
    if (p->c_type == OPERANDS_BF16 && p->beta != 0.0f) fatal("internal: an accumulating product into bf16");
    if (!p->bias) {
        matmul_run(ctx, p, p->C, p->c_type, NULL, 1, stream);
        return;
    }
    // cuBLASLt reads the epilogue's bias in the result's type: another stored type takes the separate add.
    const void *epilogue_bias = p->bias_type == p->c_type ? p->bias : NULL;
    if (p->c_type == OPERANDS_FP32) {
        if (!matmul_run(ctx, p, p->C, OPERANDS_FP32, epilogue_bias, 1, stream)) matmul_add_bias(p, (float *)p->C, stream);
        return;
    }
    // A bf16 result: the epilogue, or the fp32 product in the scratch and the add rounding the sum once.
    if (epilogue_bias && matmul_run(ctx, p, p->C, OPERANDS_BF16, epilogue_bias, 0, stream)) return;
    if (!p->bias_scratch) fatal("internal: a bf16 product with a separate bias needs a scratch");
    matmul_run(ctx, p, p->bias_scratch, OPERANDS_FP32, NULL, 1, stream);
    matmul_add_bias(p, p->bias_scratch, stream);
}

#endif
