// Data-parallel coordination: one process per rank, launched by mpirun. Every MPI call of the program is
// in distributed.c; built without MPI (no LP_WITH_MPI), or run as one process, the same functions are
// those of a world of one rank, so no other file needs an #ifdef.
//
// Ranges: a collective over a buffer split across ranks takes bounds[world + 1], element offsets with
// rank r owning [bounds[r], bounds[r + 1]).
//
// Sums are taken in rank order (rank 0 + rank 1 + ...) by the rank that owns the range, never by MPI's
// reduction operators, whose order may change with the rank count and the message sizes: every rank gets
// the same bits, and a resumed run reproduces them.
#ifndef LP_DISTRIBUTED_H
#define LP_DISTRIBUTED_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Joins the job when the process was launched by mpirun (or another MPI launcher); otherwise the world
// is this one process. Call once, first.
void dist_init(int *argc, char ***argv);
// Leaves the job (after the last collective, on every rank).
void dist_finalize(void);
int dist_rank(void);
int dist_world(void);
// This rank's index among the ranks on its node (the GPU it drives).
int dist_local_rank(void);
// 1 when this process joined an MPI job (launched by mpirun), even a job of one rank.
int dist_joined(void);
// Ends every rank of the job with status 1 (mpirun tears the others down); a lone process just exits.
#if defined(__GNUC__)
__attribute__((noreturn))
#endif
void dist_abort(void);
void dist_barrier(void);

// data[bounds[rank], bounds[rank + 1]) becomes the rank-ordered sum of that range over all ranks; the
// rest of data is left as it was.
void dist_reduce_scatter_sum(float *data, const size_t *bounds);
// Every rank's range of data (elements of elem_bytes bytes) is copied to all other ranks.
void dist_all_gather(void *data, size_t elem_bytes, const size_t *bounds);
// root's nbytes of data to every rank (the NCCL communicator's unique id).
void dist_broadcast(void *data, size_t nbytes, int root);
// data (n values, the same n on every rank) becomes the rank-ordered sum over all ranks.
void dist_all_reduce_sum_doubles(double *data, size_t n);

#ifdef __cplusplus
}
#endif

#endif
