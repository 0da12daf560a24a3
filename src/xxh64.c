// XXH64 as specified in xxHash's doc/xxhash_spec.md (seed 0), little-endian hosts.
#include "xxh64.h"

#include <string.h>

static const uint64_t XXH_PRIME1 = 0x9E3779B185EBCA87ull;
static const uint64_t XXH_PRIME2 = 0xC2B2AE3D27D4EB4Full;
static const uint64_t XXH_PRIME3 = 0x165667B19E3779F9ull;
static const uint64_t XXH_PRIME4 = 0x85EBCA77C2B2AE63ull;
static const uint64_t XXH_PRIME5 = 0x27D4EB2F165667C5ull;

static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t read_u64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint32_t read_u32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint64_t xxh64_round(uint64_t acc, uint64_t lane) {
    acc += lane * XXH_PRIME2;
    acc = rotl64(acc, 31);
    return acc * XXH_PRIME1;
}

static uint64_t xxh64_merge(uint64_t acc, uint64_t lane_acc) {
    acc ^= xxh64_round(0, lane_acc);
    return acc * XXH_PRIME1 + XXH_PRIME4;
}

void xxh64_init(Xxh64 *h) {
    h->acc[0] = XXH_PRIME1 + XXH_PRIME2;
    h->acc[1] = XXH_PRIME2;
    h->acc[2] = 0;
    h->acc[3] = -XXH_PRIME1;
    h->total_len = 0;
    h->stripe_len = 0;
}

static void xxh64_stripe(Xxh64 *h, const unsigned char *p) {
    for (int i = 0; i < 4; i++) h->acc[i] = xxh64_round(h->acc[i], read_u64(p + 8 * i));
}

void xxh64_update(Xxh64 *h, const void *data, size_t nbytes) {
    const unsigned char *p = data;
    h->total_len += nbytes;
    if (h->stripe_len > 0) {
        size_t take = 32 - h->stripe_len < nbytes ? 32 - h->stripe_len : nbytes;
        memcpy(h->stripe + h->stripe_len, p, take);
        h->stripe_len += take;
        p += take;
        nbytes -= take;
        if (h->stripe_len < 32) return;
        xxh64_stripe(h, h->stripe);
        h->stripe_len = 0;
    }
    for (; nbytes >= 32; p += 32, nbytes -= 32) xxh64_stripe(h, p);
    memcpy(h->stripe, p, nbytes);
    h->stripe_len = nbytes;
}

uint64_t xxh64_digest(const Xxh64 *h) {
    uint64_t acc;
    if (h->total_len >= 32) {
        acc = rotl64(h->acc[0], 1) + rotl64(h->acc[1], 7) + rotl64(h->acc[2], 12) + rotl64(h->acc[3], 18);
        for (int i = 0; i < 4; i++) acc = xxh64_merge(acc, h->acc[i]);
    } else {
        acc = XXH_PRIME5;  // seed 0 + PRIME5: no stripe was ever completed
    }
    acc += h->total_len;
    const unsigned char *p = h->stripe;
    size_t left = h->stripe_len;
    for (; left >= 8; p += 8, left -= 8) {
        acc ^= xxh64_round(0, read_u64(p));
        acc = rotl64(acc, 27) * XXH_PRIME1 + XXH_PRIME4;
    }
    if (left >= 4) {
        acc ^= (uint64_t)read_u32(p) * XXH_PRIME1;
        acc = rotl64(acc, 23) * XXH_PRIME2 + XXH_PRIME3;
        p += 4;
        left -= 4;
    }
    for (; left > 0; p++, left--) {
        acc ^= *p * XXH_PRIME5;
        acc = rotl64(acc, 11) * XXH_PRIME1;
    }
    acc ^= acc >> 33;
    acc *= XXH_PRIME2;
    acc ^= acc >> 29;
    acc *= XXH_PRIME3;
    acc ^= acc >> 32;
    return acc;
}

uint64_t xxh64(const void *data, size_t nbytes) {
    Xxh64 h;
    xxh64_init(&h);
    xxh64_update(&h, data, nbytes);
    return xxh64_digest(&h);
}
