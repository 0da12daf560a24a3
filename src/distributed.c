#include "distributed.h"

#include <limits.h>
#include <stdlib.h>

#include "util.h"

static int world_rank = 0, world_size = 1;

// Launchers announce themselves in the environment: Open MPI's mpirun, MPICH/Intel MPI's Hydra, PMIx (srun).
static int launched_by_mpi(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

#ifdef LP_WITH_MPI
#include <mpi.h>

static int mpi_joined = 0;
static int local_rank = 0;

void dist_init(int *argc, char ***argv) {
    if (!launched_by_mpi()) return;
    // FUNNELED: OpenMP threads compute, only the main thread calls MPI.
    int provided;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    mpi_joined = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    // The ranks sharing this node, numbered in rank order: rank r drives GPU local_rank.
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
}

void dist_finalize(void) {
    if (mpi_joined) MPI_Finalize();
    mpi_joined = 0;
}

void dist_abort(void) {
    if (mpi_joined) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

void dist_barrier(void) {
    if (world_size > 1) MPI_Barrier(MPI_COMM_WORLD);
}

// MPI counts are ints.
static int mpi_count(size_t n) {
    if (n > INT_MAX) fatal("internal: a collective of %zu elements exceeds MPI's int counts", n);
    return (int)n;
}

void dist_broadcast(void *data, size_t nbytes, int root) {
    if (world_size > 1) MPI_Bcast(data, mpi_count(nbytes), MPI_BYTE, root, MPI_COMM_WORLD);
}

int dist_local_rank(void) { return local_rank; }

int dist_joined(void) { return mpi_joined; }

void dist_reduce_scatter_sum(float *data, const size_t *bounds) {
    if (world_size == 1) return;
    size_t own = bounds[world_rank + 1] - bounds[world_rank];
    int *send_counts = xmalloc((size_t)world_size * sizeof(int)), *send_offsets = xmalloc((size_t)world_size * sizeof(int));
    int *recv_counts = xmalloc((size_t)world_size * sizeof(int)), *recv_offsets = xmalloc((size_t)world_size * sizeof(int));
    for (int r = 0; r < world_size; r++) {
        send_counts[r] = mpi_count(bounds[r + 1] - bounds[r]);
        send_offsets[r] = mpi_count(bounds[r]);
        recv_counts[r] = mpi_count(own);
        recv_offsets[r] = mpi_count((size_t)r * own);
    }
    // Every rank's copy of the range this rank owns, side by side, then added up in rank order.
    float *copies = xmalloc((size_t)world_size * own * sizeof(float));
    MPI_Alltoallv(data, send_counts, send_offsets, MPI_FLOAT, copies, recv_counts, recv_offsets, MPI_FLOAT,
                  MPI_COMM_WORLD);
    float *sum = data + bounds[world_rank];
    for (size_t i = 0; i < own; i++) {
        float s = copies[i];
        for (int r = 1; r < world_size; r++) s += copies[(size_t)r * own + i];
        sum[i] = s;
    }
    free(copies);
    free(send_counts);
    free(send_offsets);
    free(recv_counts);
    free(recv_offsets);
}

void dist_all_gather(void *data, size_t elem_bytes, const size_t *bounds) {
    if (world_size == 1) return;
    int *counts = xmalloc((size_t)world_size * sizeof(int)), *offsets = xmalloc((size_t)world_size * sizeof(int));
    for (int r = 0; r < world_size; r++) {
        counts[r] = mpi_count((bounds[r + 1] - bounds[r]) * elem_bytes);
        offsets[r] = mpi_count(bounds[r] * elem_bytes);
    }
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_BYTE, data, counts, offsets, MPI_BYTE, MPI_COMM_WORLD);
    free(counts);
    free(offsets);
}

void dist_all_reduce_sum_doubles(double *data, size_t n) {
    if (world_size == 1) return;
    double *all = xmalloc((size_t)world_size * n * sizeof(double));
    MPI_Allgather(data, mpi_count(n), MPI_DOUBLE, all, mpi_count(n), MPI_DOUBLE, MPI_COMM_WORLD);
    for (size_t i = 0; i < n; i++) {
        double s = all[i];
        for (int r = 1; r < world_size; r++) s += all[(size_t)r * n + i];
        data[i] = s;
    }
    free(all);
}

#else  // a world of one process: every collective is the identity

// Several copies of a build without MPI would each train alone and overwrite each other's outputs.
void dist_init(int *argc, char ***argv) {
    const char *size = getenv("OMPI_COMM_WORLD_SIZE") ? getenv("OMPI_COMM_WORLD_SIZE") : getenv("PMI_SIZE");
    if (launched_by_mpi() && (!size || atoi(size) > 1)) {
        fatal("launched by mpirun, but this train_gpt was built without MPI: rebuild with mpicc on the PATH "
              "(Debian: libopenmpi-dev)");
    }
}
void dist_finalize(void) {}
void dist_abort(void) { exit(1); }
void dist_barrier(void) {}
void dist_reduce_scatter_sum(float *data, const size_t *bounds) {}
void dist_all_gather(void *data, size_t elem_bytes, const size_t *bounds) {}
void dist_all_reduce_sum_doubles(double *data, size_t n) {}
void dist_broadcast(void *data, size_t nbytes, int root) {}
int dist_local_rank(void) { return 0; }
int dist_joined(void) { return 0; }

#endif

int dist_rank(void) { return world_rank; }
int dist_world(void) { return world_size; }
