// The collectives of distributed.h: sums in rank order, bit for bit, over uneven and empty ranges. Run as
// one process by `make test` (a world of one), and under mpirun with 3 ranks by tests/test_distributed.sh.
#include <math.h>
#include <stdint.h>

#include "distributed.h"
#include "testing.h"
#include "util.h"

#define N 1000

// Values of many magnitudes and both signs, so that a sum in another order would round differently.
static float value_of(int rank, size_t i) {
    int mantissa = (int)((rank * 7919 + (int)i * 104729) % 1000) - 500;
    return ldexpf((float)mantissa, (int)(i % 40) - 20);
}

static float rank_ordered_sum(size_t i, int world) {
    float sum = value_of(0, i);
    for (int r = 1; r < world; r++) sum += value_of(r, i);
    return sum;
}

// Rank 0 owns nothing (when there are others); the rest split the elements unevenly.
static void uneven_bounds(size_t *bounds, int world, size_t n) {
    bounds[0] = 0;
    for (int r = 1; r < world; r++) bounds[r] = r == 1 ? 0 : n * (size_t)r * (size_t)r / ((size_t)world * world);
    bounds[world] = n;
}

static void test_reduce_scatter_then_gather(int rank, int world) {
    size_t *bounds = xmalloc((size_t)(world + 1) * sizeof(size_t));
    uneven_bounds(bounds, world, N);
    float *data = xmalloc(N * sizeof(float));
    for (size_t i = 0; i < N; i++) data[i] = value_of(rank, i);
    dist_reduce_scatter_sum(data, bounds);
    int exact = 1;
    for (size_t i = bounds[rank]; i < bounds[rank + 1]; i++) {
        float expected = rank_ordered_sum(i, world);
        exact &= memcmp(&data[i], &expected, sizeof expected) == 0;
    }
    CHECK(exact, "rank %d: reduce-scatter is not the rank-ordered sum", rank);
    dist_all_gather(data, sizeof(float), bounds);
    for (size_t i = 0; i < N; i++) {
        float expected = rank_ordered_sum(i, world);
        exact &= memcmp(&data[i], &expected, sizeof expected) == 0;
    }
    CHECK(exact, "rank %d: all-gather of the sums differs", rank);
    free(data);
    free(bounds);
}

static void test_all_gather_bytes(int rank, int world) {
    size_t *bounds = xmalloc((size_t)(world + 1) * sizeof(size_t));
    uneven_bounds(bounds, world, 77);
    int8_t codes[77] = {0};
    for (size_t i = bounds[rank]; i < bounds[rank + 1]; i++) codes[i] = (int8_t)(rank * 10 + (int)(i % 7));
    dist_all_gather(codes, sizeof(int8_t), bounds);
    for (int r = 0; r < world; r++) {
        for (size_t i = bounds[r]; i < bounds[r + 1]; i++) {
            CHECK(codes[i] == (int8_t)(r * 10 + (int)(i % 7)), "rank %d: code %zu from rank %d is %d", rank, i, r, codes[i]);
        }
    }
    free(bounds);
}

static void test_all_reduce_doubles(int rank, int world) {
    double data[3] = {1.0 + rank, 1e-17 * (rank + 1), -0.5 * rank};
    dist_all_reduce_sum_doubles(data, 3);
    double expected[3] = {1.0, 1e-17, -0.0};
    for (int r = 1; r < world; r++) {
        expected[0] += 1.0 + r;
        expected[1] += 1e-17 * (r + 1);
        expected[2] += -0.5 * r;
    }
    CHECK(memcmp(data, expected, sizeof data) == 0, "rank %d: all-reduce %g %g %g, expected %g %g %g", rank, data[0],
          data[1], data[2], expected[0], expected[1], expected[2]);
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    int rank = dist_rank(), world = dist_world();
    test_reduce_scatter_then_gather(rank, world);
    test_all_gather_bytes(rank, world);
    test_all_reduce_doubles(rank, world);
    dist_barrier();
    int status = test_summary("test_collectives");
    dist_finalize();
    return status;
}
