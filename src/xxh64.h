// XXH64, the published xxHash 64-bit hash (xxHash's doc/xxhash_spec.md), seed 0, streaming or in one call.
// Checkpoints use it as their checksum; the run identity uses it to fingerprint data shards.
#ifndef LP_XXH64_H
#define LP_XXH64_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint64_t acc[4];
    uint64_t total_len;
    unsigned char stripe[32];  // input not yet consumed, less than one 32-byte stripe
    size_t stripe_len;
} Xxh64;

void xxh64_init(Xxh64 *h);
void xxh64_update(Xxh64 *h, const void *data, size_t nbytes);
uint64_t xxh64_digest(const Xxh64 *h);
// The hash of nbytes at data.
uint64_t xxh64(const void *data, size_t nbytes);

#ifdef __cplusplus
}
#endif

#endif
