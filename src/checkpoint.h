// Our checkpoint file: a header (magic, version, section count), named sections of raw bytes, and an XXH64
// checksum over everything before it (layout: docs/checkpoint-format.md). Written atomically: temp file,
// fsync, rename.
#ifndef LP_CHECKPOINT_H
#define LP_CHECKPOINT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CHECKPOINT_MAGIC 0x4c504350u  // "LPCP" as a number; little-endian on disk, the bytes read "PCPL"
#define CHECKPOINT_VERSION 2  // 2: the trainer writes an "identity" section (the run it belongs to)
#define CHECKPOINT_NAME_MAX 32

typedef struct {
    const char *name;  // at most CHECKPOINT_NAME_MAX-1 characters
    void *data;
    size_t nbytes;
} CheckpointSection;

// Writes path atomically; on any failure (full disk included) removes the temp file and exits via fatal().
void checkpoint_write(const char *path, const CheckpointSection *sections, int count);
// Reads and verifies the whole file (magic, version, checksum, and that its sections are exactly
// `sections` by name and size, in order) before copying anything into the sections' buffers; fatal()
// naming the file, the section and the byte offset on any mismatch.
void checkpoint_read(const char *path, const CheckpointSection *sections, int count);
// Reads one section by name, whatever its size, from a file verified as checkpoint_read does (to look at a
// checkpoint before knowing which sections the rest of it should have). Returns a new buffer that the
// caller frees, its size in *nbytes; fatal() naming the file when the section is missing.
void *checkpoint_read_section(const char *path, const char *name, size_t *nbytes);
// Reads the sections named in `sections` (any order; the file's other sections are skipped) from a file
// verified as checkpoint_read does, each with exactly the size given; fatal() naming a missing section or
// a size mismatch before any buffer changes. For a reader that needs only part of the state (the weights).
void checkpoint_read_named(const char *path, const CheckpointSection *sections, int count);

#ifdef __cplusplus
}
#endif

#endif
