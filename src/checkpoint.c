// Checkpoint file layout (all integers little-endian; docs/checkpoint-format.md says the same):
//
//   offset 0   uint32 magic          CHECKPOINT_MAGIC, 0x4c504350 (the bytes "PCPL" on disk)
//   offset 4   uint32 version        CHECKPOINT_VERSION
//   offset 8   uint32 section_count
//   offset 12  uint32 reserved       0
//   offset 16  section_count times:
//                char   name[32]     NUL-padded, at most 31 characters
//                uint64 nbytes
//                nbytes bytes of data, no padding
//   last 8     uint64 checksum       XXH64 (seed 0) of every byte before it
//
// XXH64 (the published xxHash 64-bit algorithm) rather than FNV-1a: FNV-1a hashes one byte per serial
// multiply, well under 1 GB/s, which is seconds per gigabyte of optimizer state; XXH64 runs at memory speed.
#include "checkpoint.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "atomic_file.h"
#include "util.h"
#include "xxh64.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint files are little-endian and are read and written with memcpy: a big-endian host needs byte swaps"
#endif

#define HEADER_BYTES 16
#define SECTION_HEADER_BYTES (CHECKPOINT_NAME_MAX + 8)
#define TRAILER_BYTES 8

// A little-endian unsigned integer of nbytes (4 or 8) bytes.
static uint64_t read_uint(const unsigned char *p, size_t nbytes) {
    uint64_t v = 0;
    memcpy(&v, p, nbytes);
    return v;
}

// ---------------------------------------------------------------------------------------------------------
// Writing

typedef struct {
    AtomicFile file;
    Xxh64 checksum;
} CheckpointWriter;

static void writer_put(CheckpointWriter *w, const void *data, size_t nbytes) {
    xxh64_update(&w->checksum, data, nbytes);
    atomic_file_write(&w->file, data, nbytes);
}

static void check_section_name(const char *name) {
    size_t len = strlen(name);
    if (len == 0 || len >= CHECKPOINT_NAME_MAX) {
        fatal("internal: checkpoint section name '%s' must have 1 to %d characters", name, CHECKPOINT_NAME_MAX - 1);
    }
}

void checkpoint_write(const char *path, const CheckpointSection *sections, int count) {
    for (int i = 0; i < count; i++) check_section_name(sections[i].name);
    CheckpointWriter w;
    xxh64_init(&w.checksum);
    atomic_file_open(&w.file, path, "checkpoint");

    uint32_t header[4] = {CHECKPOINT_MAGIC, CHECKPOINT_VERSION, (uint32_t)count, 0};
    writer_put(&w, header, sizeof header);
    for (int i = 0; i < count; i++) {
        char name[CHECKPOINT_NAME_MAX] = {0};
        memcpy(name, sections[i].name, strlen(sections[i].name));
        uint64_t nbytes = sections[i].nbytes;
        writer_put(&w, name, sizeof name);
        writer_put(&w, &nbytes, sizeof nbytes);
        writer_put(&w, sections[i].data, sections[i].nbytes);
    }
    uint64_t checksum = xxh64_digest(&w.checksum);
    atomic_file_write(&w.file, &checksum, sizeof checksum);
    atomic_file_commit(&w.file);
}

// ---------------------------------------------------------------------------------------------------------
// Reading

typedef struct {
    char name[CHECKPOINT_NAME_MAX + 1];  // always NUL-terminated, even when the file's is not
    uint64_t nbytes;
    size_t data_offset;
} FoundSection;

static unsigned char *load_file(const char *path, size_t *nbytes) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal("cannot open checkpoint %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) fatal("cannot read checkpoint %s: %s", path, strerror(errno));
    size_t size = (size_t)st.st_size;
    unsigned char *bytes = xmalloc(size);
    if (fread(bytes, 1, size, f) != size) {
        fatal("cannot read checkpoint %s: %s", path, ferror(f) ? strerror(errno) : "file shrank while reading");
    }
    fclose(f);
    *nbytes = size;
    return bytes;
}

static void check_header(const char *path, const unsigned char *bytes, size_t size) {
    if (size < HEADER_BYTES + TRAILER_BYTES) {
        fatal("checkpoint %s is %zu bytes, too short for the %d-byte header and checksum: not an lpgpt checkpoint, "
              "or truncated", path, size, HEADER_BYTES + TRAILER_BYTES);
    }
    uint32_t magic = (uint32_t)read_uint(bytes, 4), version = (uint32_t)read_uint(bytes + 4, 4);
    if (magic != CHECKPOINT_MAGIC) {
        fatal("%s is not an lpgpt checkpoint (magic 0x%08x, expected 0x%08x)", path, magic, CHECKPOINT_MAGIC);
    }
    if (version != CHECKPOINT_VERSION) {
        fatal("checkpoint %s has format version %u; this program reads version %d", path, version, CHECKPOINT_VERSION);
    }
}

// Walks the section headers, making sure each one and its data lie inside the file, and that the last one
// ends exactly at the checksum. Returns section_count entries.
static FoundSection *find_sections(const char *path, const unsigned char *bytes, size_t size, uint32_t *count) {
    size_t end = size - TRAILER_BYTES;
    uint32_t n = (uint32_t)read_uint(bytes + 8, 4);
    if (n > (end - HEADER_BYTES) / SECTION_HEADER_BYTES) {
        fatal("checkpoint %s claims %u sections, more than its %zu bytes can hold (corrupt or truncated)", path, n, size);
    }
    FoundSection *found = xcalloc(n ? n : 1, sizeof *found);
    size_t offset = HEADER_BYTES;
    for (uint32_t i = 0; i < n; i++) {
        if (end - offset < SECTION_HEADER_BYTES) {
            fatal("checkpoint %s: section %u header at byte offset %zu runs past the end of the data (truncated?)",
                  path, i, offset);
        }
        memcpy(found[i].name, bytes + offset, CHECKPOINT_NAME_MAX);
        found[i].nbytes = read_uint(bytes + offset + CHECKPOINT_NAME_MAX, 8);
        offset += SECTION_HEADER_BYTES;
        if (found[i].nbytes > end - offset) {
            fatal("checkpoint %s: section '%s' at byte offset %zu claims %llu bytes but only %zu remain before the "
                  "checksum (truncated or corrupt)", path, found[i].name, offset - SECTION_HEADER_BYTES,
                  (unsigned long long)found[i].nbytes, end - offset);
        }
        found[i].data_offset = offset;
        offset += found[i].nbytes;
    }
    if (offset != end) {
        fatal("checkpoint %s: %zu unexpected bytes at byte offset %zu after the last section", path, end - offset,
              offset);
    }
    *count = n;
    return found;
}

static void check_checksum(const char *path, const unsigned char *bytes, size_t size) {
    uint64_t stored = read_uint(bytes + size - TRAILER_BYTES, 8);
    if (xxh64(bytes, size - TRAILER_BYTES) != stored) fatal("checkpoint %s: checksum mismatch: file is corrupt", path);
}

// A sound file whose sections differ from the expected ones was written for another model or policy.
static void match_sections(const char *path, const FoundSection *found, uint32_t found_count,
                           const CheckpointSection *expected, int expected_count) {
    for (int i = 0; i < expected_count || (uint32_t)i < found_count; i++) {
        if (i >= expected_count) {
            fatal("checkpoint %s has an unexpected extra section '%s' (%llu bytes): it was written for a different "
                  "model or precision policy", path, found[i].name, (unsigned long long)found[i].nbytes);
        }
        if ((uint32_t)i >= found_count) {
            fatal("checkpoint %s lacks section '%s' (%zu bytes expected): it was written for a different model or "
                  "precision policy", path, expected[i].name, expected[i].nbytes);
        }
        if (strcmp(found[i].name, expected[i].name) != 0 || found[i].nbytes != expected[i].nbytes) {
            fatal("checkpoint %s: section %d is '%s' with %llu bytes, expected '%s' with %zu bytes: it was written "
                  "for a different model or precision policy", path, i, found[i].name,
                  (unsigned long long)found[i].nbytes, expected[i].name, expected[i].nbytes);
        }
    }
}

struct CheckpointFile {
    char *path;
    unsigned char *bytes;  // the whole file
    FoundSection *found;
    uint32_t found_count;
};

// The file in memory, verified whole (header, section table, checksum): nothing is taken from it before.
CheckpointFile *checkpoint_open(const char *path) {
    CheckpointFile *file = xcalloc(1, sizeof *file);
    size_t size;
    file->path = xstrdup(path);
    file->bytes = load_file(path, &size);
    check_header(path, file->bytes, size);
    file->found = find_sections(path, file->bytes, size, &file->found_count);
    check_checksum(path, file->bytes, size);
    return file;
}

void checkpoint_close(CheckpointFile *file) {
    free(file->found);
    free(file->bytes);
    free(file->path);
    free(file);
}

void checkpoint_copy_all(const CheckpointFile *file, const CheckpointSection *sections, int count) {
    match_sections(file->path, file->found, file->found_count, sections, count);
    // Only now, with the whole file verified, do the caller's buffers change.
    for (int i = 0; i < count; i++) {
        if (sections[i].nbytes > 0) memcpy(sections[i].data, file->bytes + file->found[i].data_offset, sections[i].nbytes);
    }
}

void checkpoint_read(const char *path, const CheckpointSection *sections, int count) {
    CheckpointFile *file = checkpoint_open(path);
    checkpoint_copy_all(file, sections, count);
    checkpoint_close(file);
}

// The index of the section called `name`; fatal() when the file has none.
static uint32_t find_named(const CheckpointFile *file, const char *name) {
    uint32_t i = 0;
    while (i < file->found_count && strcmp(file->found[i].name, name) != 0) i++;
    if (i == file->found_count) {
        fatal("checkpoint %s has no section '%s': not written by this program's trainer, or for another precision "
              "policy", file->path, name);
    }
    return i;
}

const void *checkpoint_section(const CheckpointFile *file, const char *name, size_t *nbytes) {
    uint32_t i = find_named(file, name);
    *nbytes = (size_t)file->found[i].nbytes;
    return file->bytes + file->found[i].data_offset;
}

void checkpoint_read_named(const char *path, const CheckpointSection *sections, int count) {
    CheckpointFile *file = checkpoint_open(path);
    const void **data = xmalloc((size_t)(count ? count : 1) * sizeof(void *));
    for (int k = 0; k < count; k++) {
        size_t nbytes;
        data[k] = checkpoint_section(file, sections[k].name, &nbytes);
        if (nbytes != sections[k].nbytes) {
            fatal("checkpoint %s: section '%s' has %zu bytes, expected %zu: written for another model or policy, "
                  "or by another version of this program", path, sections[k].name, nbytes, sections[k].nbytes);
        }
    }
    // As checkpoint_read: the caller's buffers change only once every section has been found.
    for (int k = 0; k < count; k++) memcpy(sections[k].data, data[k], sections[k].nbytes);
    free(data);
    checkpoint_close(file);
}
