// Token shards in llm.c's format (header of 256 int32: magic 20240520, version 1, token count; then
// uint16 tokens) and a loader over a glob pattern of them.
#ifndef LP_DATA_H
#define LP_DATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256
#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * (int64_t)sizeof(int32_t))

typedef struct DataLoader DataLoader;

// Where the loader stands, for checkpoints: enough to continue with exactly the same batches.
typedef struct {
    uint64_t epoch;
    uint64_t shard;     // index into this epoch's shard order
    uint64_t position;  // tokens of that shard read so far this epoch: the next batch is its slot number
                        // position / (world*B*T) in the epoch's slot order
} DataPosition;

// Opens every shard matching `pattern` and validates magic, version, size and that every token is below
// vocab_size; fatal() naming the file (and byte offset) on the first problem, or when nothing matches.
// Each step reads world*B rows of T+1 tokens; this rank reads rows [rank*B, (rank+1)*B).
// A shard holds (tokens - 1) / (world*B*T) batch slots, slot k starting at token k*world*B*T.
// shuffle != 0: each epoch visits the shards in a permutation drawn from (seed, epoch), and each shard's
// slots in a permutation drawn from (seed, epoch, the shard's index in sorted name order);
// shuffle == 0: shards in sorted name order, each read front to back (validation, data.shuffle = 0).
DataLoader *dataloader_open(const char *pattern, int B, int T, int rank, int world, int vocab_size,
                            uint64_t seed, int shuffle);
void dataloader_free(DataLoader *loader);
// inputs, targets: (B, T); targets are inputs shifted by one token.
void dataloader_next(DataLoader *loader, int *inputs, int *targets);
// Back to the first batch of epoch 0.
void dataloader_reset(DataLoader *loader);
DataPosition dataloader_position(const DataLoader *loader);
// Continues exactly where `position` (from dataloader_position, same data and batch shape) left off;
// fatal() when it names a shard or token offset that the data does not have.
void dataloader_seek(DataLoader *loader, DataPosition position);
size_t dataloader_total_tokens(const DataLoader *loader);
int dataloader_num_shards(const DataLoader *loader);
// Shard i in sorted name order: its path and token count.
const char *dataloader_shard_path(const DataLoader *loader, int i);
int64_t dataloader_shard_tokens(const DataLoader *loader, int i);

#ifdef __cplusplus
}
#endif

#endif
