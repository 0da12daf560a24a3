#include "data.h"

#include <errno.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "numerics/rng.h"
#include "util.h"

#define SHUFFLE_TENSOR_ID 0xDA7Au
#define SLOT_SHUFFLE_TENSOR_ID 0xDA7Bu
#define VALIDATE_CHUNK_TOKENS (1 << 20)

typedef struct {
    char *path;
    int64_t num_tokens;
} Shard;

struct DataLoader {
    Shard *shards;
    int num_shards;
    int B, T, rank, world;
    uint64_t seed;
    int shuffle;
    int *order;           // this epoch's shard order: order[i] is an index into shards
    int64_t *slots;       // the current shard's batch slots in this epoch's order (a permutation of its slots)
    DataPosition pos;     // always the start of a batch that fits in its shard
    FILE *file;           // the open shard, or NULL
    int file_shard;       // which shard `file` is
    uint16_t *buffer;     // this rank's B*T+1 tokens of the current batch
};

// Tokens one step consumes across all ranks; a batch needs one more (the last target).
static int64_t step_tokens(const DataLoader *loader) {
    return (int64_t)loader->world * loader->B * loader->T;
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// The files matching `pattern`, sorted bytewise (not by locale) so every machine sees the same order.
static char **glob_sorted(const char *pattern, int *count) {
    glob_t matches;
    int status = glob(pattern, 0, NULL, &matches);
    if (status == GLOB_NOMATCH) fatal("no shard files match '%s'", pattern);
    if (status != 0) fatal("cannot expand shard pattern '%s' (glob error %d)", pattern, status);
    char **paths = xmalloc(matches.gl_pathc * sizeof(char *));
    for (size_t i = 0; i < matches.gl_pathc; i++) paths[i] = xstrdup(matches.gl_pathv[i]);
    qsort(paths, matches.gl_pathc, sizeof(char *), compare_strings);
    *count = (int)matches.gl_pathc;
    globfree(&matches);
    return paths;
}

static void read_exactly(FILE *f, void *dst, size_t nbytes, const char *path) {
    if (fread(dst, 1, nbytes, f) != nbytes) {
        fatal("cannot read %zu bytes from %s: %s", nbytes, path, ferror(f) ? strerror(errno) : "unexpected end of file");
    }
}

static void seek_to(FILE *f, int64_t offset, const char *path) {
    if (fseeko(f, (off_t)offset, SEEK_SET) != 0) fatal("cannot seek to byte %lld in %s: %s", (long long)offset, path, strerror(errno));
}

// Reads the header and checks magic, version and that the file holds exactly the tokens it announces.
static int64_t read_shard_header(FILE *f, const char *path) {
    struct stat st;
    if (fstat(fileno(f), &st) != 0) fatal("cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) fatal("%s is not a regular file", path);
    int64_t actual_bytes = (int64_t)st.st_size;
    if (actual_bytes < SHARD_HEADER_BYTES) {
        fatal("%s is too short to be a token shard: %lld bytes, the header alone is %lld", path,
              (long long)actual_bytes, (long long)SHARD_HEADER_BYTES);
    }
    int32_t header[SHARD_HEADER_INTS];
    read_exactly(f, header, sizeof header, path);
    if (header[0] != SHARD_MAGIC) fatal("%s is not a token shard: magic %d, expected %d", path, header[0], SHARD_MAGIC);
    if (header[1] != SHARD_VERSION) fatal("%s has shard version %d, expected %d", path, header[1], SHARD_VERSION);
    if (header[2] < 0) fatal("%s announces a negative token count (%d)", path, header[2]);
    int64_t num_tokens = header[2];
    int64_t expected_bytes = SHARD_HEADER_BYTES + num_tokens * (int64_t)sizeof(uint16_t);
    if (actual_bytes != expected_bytes) {
        fatal("%s has the wrong size: its header announces %lld tokens, so %lld bytes are expected, but the file "
              "has %lld bytes (%s)",
              path, (long long)num_tokens, (long long)expected_bytes, (long long)actual_bytes,
              actual_bytes < expected_bytes ? "truncated" : "trailing data");
    }
    return num_tokens;
}

// Streams every token through a fixed buffer, so validation needs no memory proportional to the data.
static void check_tokens_below(FILE *f, const char *path, int64_t num_tokens, int vocab_size) {
    uint16_t *chunk = xmalloc(VALIDATE_CHUNK_TOKENS * sizeof(uint16_t));
    for (int64_t done = 0; done < num_tokens;) {
        int64_t left = num_tokens - done;
        size_t n = (size_t)(left < VALIDATE_CHUNK_TOKENS ? left : VALIDATE_CHUNK_TOKENS);
        read_exactly(f, chunk, n * sizeof(uint16_t), path);
        for (size_t i = 0; i < n; i++) {
            if (chunk[i] >= vocab_size) {
                int64_t offset = SHARD_HEADER_BYTES + (done + (int64_t)i) * (int64_t)sizeof(uint16_t);
                fatal("%s: token %d at byte offset %lld is not below the vocab size %d", path, chunk[i],
                      (long long)offset, vocab_size);
            }
        }
        done += (int64_t)n;
    }
    free(chunk);
}

static Shard open_and_validate_shard(const char *path, int vocab_size, const DataLoader *loader) {
    // Before opening: opening a FIFO blocks until a writer appears, and a device may never end.
    struct stat st;
    if (stat(path, &st) != 0) fatal("cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) fatal("%s is not a regular file (a token shard must be one)", path);
    FILE *f = xfopen(path, "rb");
    int64_t num_tokens = read_shard_header(f, path);
    int64_t min_tokens = step_tokens(loader) + 1;
    if (num_tokens < min_tokens) {
        fatal("%s has %lld tokens, fewer than one step needs: batch_size %d x seq_len %d x %d rank(s) + 1 = %lld; "
              "use a smaller batch_size or seq_len, or larger shards",
              path, (long long)num_tokens, loader->B, loader->T, loader->world, (long long)min_tokens);
    }
    check_tokens_below(f, path, num_tokens, vocab_size);
    fclose(f);
    return (Shard){.path = xstrdup(path), .num_tokens = num_tokens};
}

// Fisher-Yates driven by the counter-based RNG, so an epoch's order depends only on (seed, epoch).
// The modulo's bias is below num_shards / 2^32, negligible for any real number of shards.
static void compute_order(DataLoader *loader, uint64_t epoch) {
    for (int i = 0; i < loader->num_shards; i++) loader->order[i] = i;
    if (!loader->shuffle) return;
    RngKey key = {.seed = loader->seed, .step = epoch, .tensor_id = SHUFFLE_TENSOR_ID};
    for (int i = loader->num_shards - 1; i > 0; i--) {
        int j = (int)(rng_u32(key, (uint64_t)i) % (uint32_t)(i + 1));
        int tmp = loader->order[i];
        loader->order[i] = loader->order[j];
        loader->order[j] = tmp;
    }
}

static const Shard *current_shard(const DataLoader *loader) {
    return &loader->shards[loader->order[loader->pos.shard]];
}

// The batches a shard holds: slot k is the tokens [k*S, (k+1)*S] (S tokens a step, plus the last target).
static int64_t shard_slots(const DataLoader *loader, const Shard *shard) {
    return (shard->num_tokens - 1) / step_tokens(loader);
}

// The current shard's slot order in the current epoch: a Fisher-Yates permutation drawn from (seed, epoch,
// the shard's index in sorted order), so it depends on nothing a checkpoint does not hold. The modulo's bias
// is below slots / 2^32, negligible for any real shard.
static void compute_slots(DataLoader *loader) {
    int64_t n = shard_slots(loader, current_shard(loader));
    for (int64_t k = 0; k < n; k++) loader->slots[k] = k;
    if (!loader->shuffle) return;
    int shard = loader->order[loader->pos.shard];
    RngKey key = {.seed = loader->seed, .step = loader->pos.epoch, .tensor_id = SLOT_SHUFFLE_TENSOR_ID};
    uint64_t stream = (uint64_t)shard << 32;  // one stream of draws per shard
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(rng_u32(key, stream | (uint64_t)i) % (uint32_t)(i + 1));
        int64_t tmp = loader->slots[i];
        loader->slots[i] = loader->slots[j];
        loader->slots[j] = tmp;
    }
}

// If no full batch fits at the current position, moves to the start of the next shard (next epoch after
// the last one). Every shard holds at least one batch, so one move is enough.
static void settle_position(DataLoader *loader) {
    if ((int64_t)loader->pos.position + step_tokens(loader) + 1 <= current_shard(loader)->num_tokens) return;
    loader->pos.position = 0;
    loader->pos.shard++;
    if (loader->pos.shard == (uint64_t)loader->num_shards) {
        loader->pos.shard = 0;
        loader->pos.epoch++;
        compute_order(loader, loader->pos.epoch);
    }
    compute_slots(loader);
}

DataLoader *dataloader_open(const char *pattern, int B, int T, int rank, int world, int vocab_size,
                            uint64_t seed, int shuffle) {
    if (B <= 0 || T <= 0) fatal("data loader needs a positive batch_size and seq_len (got %d and %d)", B, T);
    if (world <= 0 || rank < 0 || rank >= world) fatal("data loader: rank %d is not in a world of %d", rank, world);
    if (vocab_size <= 0) fatal("data loader: vocab size must be positive (got %d)", vocab_size);
    DataLoader *loader = xcalloc(1, sizeof(DataLoader));
    loader->B = B;
    loader->T = T;
    loader->rank = rank;
    loader->world = world;
    loader->seed = seed;
    loader->shuffle = shuffle;

    char **paths = glob_sorted(pattern, &loader->num_shards);
    loader->shards = xmalloc((size_t)loader->num_shards * sizeof(Shard));
    for (int i = 0; i < loader->num_shards; i++) {
        loader->shards[i] = open_and_validate_shard(paths[i], vocab_size, loader);
        free(paths[i]);
    }
    free(paths);

    loader->order = xmalloc((size_t)loader->num_shards * sizeof(int));
    int64_t max_slots = 0;
    for (int i = 0; i < loader->num_shards; i++) {
        int64_t n = shard_slots(loader, &loader->shards[i]);
        if (n > max_slots) max_slots = n;
    }
    loader->slots = xmalloc((size_t)max_slots * sizeof(int64_t));
    loader->buffer = xmalloc(((size_t)B * T + 1) * sizeof(uint16_t));
    loader->file_shard = -1;
    dataloader_reset(loader);
    return loader;
}

void dataloader_free(DataLoader *loader) {
    if (!loader) return;
    if (loader->file) fclose(loader->file);
    for (int i = 0; i < loader->num_shards; i++) free(loader->shards[i].path);
    free(loader->shards);
    free(loader->order);
    free(loader->slots);
    free(loader->buffer);
    free(loader);
}

// Keeps one shard open at a time: datasets may have far more shards than a process may open files.
static FILE *open_current_shard(DataLoader *loader) {
    int wanted = loader->order[loader->pos.shard];
    if (loader->file_shard != wanted) {
        if (loader->file) fclose(loader->file);
        loader->file = xfopen(loader->shards[wanted].path, "rb");
        loader->file_shard = wanted;
    }
    return loader->file;
}

void dataloader_next(DataLoader *loader, int *inputs, int *targets) {
    size_t rank_tokens = (size_t)loader->B * loader->T;
    FILE *f = open_current_shard(loader);
    const char *path = current_shard(loader)->path;
    // The batch is the shard's slot that this epoch's order puts next. Row r of the global batch starts at
    // r*T into the slot, so this rank's rows are one contiguous run.
    int64_t slot = loader->slots[(int64_t)loader->pos.position / step_tokens(loader)];
    int64_t first_token = slot * step_tokens(loader) + (int64_t)loader->rank * (int64_t)rank_tokens;
    seek_to(f, SHARD_HEADER_BYTES + first_token * (int64_t)sizeof(uint16_t), path);
    read_exactly(f, loader->buffer, (rank_tokens + 1) * sizeof(uint16_t), path);
    for (size_t i = 0; i < rank_tokens; i++) {
        inputs[i] = loader->buffer[i];
        targets[i] = loader->buffer[i + 1];
    }
    loader->pos.position += (uint64_t)step_tokens(loader);
    settle_position(loader);
}

void dataloader_reset(DataLoader *loader) {
    loader->pos = (DataPosition){.epoch = 0, .shard = 0, .position = 0};
    compute_order(loader, 0);
    compute_slots(loader);
}

DataPosition dataloader_position(const DataLoader *loader) {
    return loader->pos;
}

// A position saved with the same data and batch shape is restored exactly; one saved with a different
// batch shape continues at the next batch that fits.
void dataloader_seek(DataLoader *loader, DataPosition position) {
    if (position.shard >= (uint64_t)loader->num_shards) {
        fatal("data position names shard %llu of epoch %llu, but only %d shard(s) match; was the data changed?",
              (unsigned long long)position.shard, (unsigned long long)position.epoch, loader->num_shards);
    }
    loader->pos = position;
    compute_order(loader, position.epoch);
    compute_slots(loader);
    if (position.position > (uint64_t)current_shard(loader)->num_tokens) {
        fatal("data position %llu is past the end of %s (%lld tokens); was the data changed?",
              (unsigned long long)position.position, current_shard(loader)->path,
              (long long)current_shard(loader)->num_tokens);
    }
    settle_position(loader);
}

size_t dataloader_total_tokens(const DataLoader *loader) {
    size_t total = 0;
    for (int i = 0; i < loader->num_shards; i++) total += (size_t)loader->shards[i].num_tokens;
    return total;
}

int dataloader_num_shards(const DataLoader *loader) {
    return loader->num_shards;
}

const char *dataloader_shard_path(const DataLoader *loader, int i) {
    return loader->shards[i].path;
}

int64_t dataloader_shard_tokens(const DataLoader *loader, int i) {
    return loader->shards[i].num_tokens;
}
