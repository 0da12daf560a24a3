// Linear layer: out = inp @ weight^T + bias with weight stored (OC, C) as in llm.c, and its backward.
// Both directions work on tiles of 4 rows, so that each value loaded from the other operand feeds four
// products, and vectorise with `omp simd`. Every output element is summed by one task in a fixed order,
// so results are the same for any thread count.
#include "cpu/ops.h"

// Rows per micro-kernel: rows past the end of a matrix repeat its last row and their results are dropped.
#define TILE_ROWS 4
// Output columns per task; the forward reuses these weight rows across the row tiles of a task.
#define TILE_COLS 64

static int min_int(int a, int b) { return a < b ? a : b; }

// out[n0..n0+4, o0..o0+TILE_COLS) as dot products of input rows with weight rows.
static void forward_tile(float *out, const float *inp, const float *weight, const float *bias, int N, int C,
                         int OC, int n0, int o0) {
    const float *x0 = inp + (size_t)min_int(n0 + 0, N - 1) * C;  // (C)
    const float *x1 = inp + (size_t)min_int(n0 + 1, N - 1) * C;
    const float *x2 = inp + (size_t)min_int(n0 + 2, N - 1) * C;
    const float *x3 = inp + (size_t)min_int(n0 + 3, N - 1) * C;
    int o1 = min_int(o0 + TILE_COLS, OC);
    for (int o = o0; o < o1; o++) {
        const float *w = weight + (size_t)o * C;  // (C)
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int c = 0; c < C; c++) {
            s0 += x0[c] * w[c];
            s1 += x1[c] * w[c];
            s2 += x2[c] * w[c];
            s3 += x3[c] * w[c];
        }
        float b = bias ? bias[o] : 0.0f;
        float sums[TILE_ROWS] = {s0, s1, s2, s3};
        for (int i = 0; i < TILE_ROWS && n0 + i < N; i++) out[(size_t)(n0 + i) * OC + o] = sums[i] + b;
    }
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC) {
    int row_tiles = (N + TILE_ROWS - 1) / TILE_ROWS;
    int col_tiles = (OC + TILE_COLS - 1) / TILE_COLS;
    // Column tiles outermost: consecutive tasks of a thread share the same weight rows.
#pragma omp parallel for collapse(2) schedule(static)
    for (int ct = 0; ct < col_tiles; ct++)
        for (int rt = 0; rt < row_tiles; rt++)
            forward_tile(out, inp, weight, bias, N, C, OC, rt * TILE_ROWS, ct * TILE_COLS);
}

// A (M, K) matrix read through strides, so that a transposed operand needs no copy: a[m*row + k*col].
typedef struct {
    const float *data;
    size_t row_stride;
    size_t col_stride;
} StridedMatrix;

// c[m0..m0+4, j0..j0+TILE_COLS) += a[m0..m0+4, :] @ b[:, j0..j0+TILE_COLS), one row of b at a time.
static void accumulate_tile(float *c, StridedMatrix a, const float *b, int M, int K, int N, int m0, int j0) {
    const float *a0 = a.data + (size_t)min_int(m0 + 0, M - 1) * a.row_stride;
    const float *a1 = a.data + (size_t)min_int(m0 + 1, M - 1) * a.row_stride;
    const float *a2 = a.data + (size_t)min_int(m0 + 2, M - 1) * a.row_stride;
    const float *a3 = a.data + (size_t)min_int(m0 + 3, M - 1) * a.row_stride;
    int width = min_int(TILE_COLS, N - j0);
    float acc[TILE_ROWS][TILE_COLS] = {{0}};
    for (int k = 0; k < K; k++) {
        size_t ak = (size_t)k * a.col_stride;
        float v0 = a0[ak], v1 = a1[ak], v2 = a2[ak], v3 = a3[ak];
        const float *brow = b + (size_t)k * N + j0;  // (width)
#pragma omp simd
        for (int j = 0; j < width; j++) {
            acc[0][j] += v0 * brow[j];
            acc[1][j] += v1 * brow[j];
            acc[2][j] += v2 * brow[j];
            acc[3][j] += v3 * brow[j];
        }
    }
    for (int i = 0; i < TILE_ROWS && m0 + i < M; i++) {
        float *crow = c + (size_t)(m0 + i) * N + j0;
        for (int j = 0; j < width; j++) crow[j] += acc[i][j];
    }
}

// c (M, N) += a (M, K) @ b (K, N). Tasks own disjoint tiles of c.
static void matmul_accumulate(float *c, StridedMatrix a, const float *b, int M, int K, int N) {
    int row_tiles = (M + TILE_ROWS - 1) / TILE_ROWS;
    int col_tiles = (N + TILE_COLS - 1) / TILE_COLS;
#pragma omp parallel for collapse(2) schedule(static)
    for (int rt = 0; rt < row_tiles; rt++)
        for (int ct = 0; ct < col_tiles; ct++)
            accumulate_tile(c, a, b, M, K, N, rt * TILE_ROWS, ct * TILE_COLS);
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int C, int OC) {
    // dinp (N, C) += dout (N, OC) @ weight (OC, C)
    StridedMatrix dout_rows = {dout, (size_t)OC, 1};
    matmul_accumulate(dinp, dout_rows, weight, N, OC, C);
    // dweight (OC, C) += dout^T (OC, N) @ inp (N, C)
    StridedMatrix dout_cols = {dout, 1, (size_t)OC};
    matmul_accumulate(dweight, dout_cols, inp, OC, N, C);
    if (dbias) sum_rows_add(dbias, dout, N, OC);
}
