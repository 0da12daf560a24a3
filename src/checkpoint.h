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
// A checkpoint read and verified whole (as checkpoint_read does) and held in memory, to look at some
// sections before knowing which sections the rest of it should have, without reading the file twice.
typedef struct CheckpointFile CheckpointFile;
CheckpointFile *checkpoint_open(const char *path);
void checkpoint_close(CheckpointFile *file);
// The bytes of section `name` inside the open file and their count; fatal() naming the file when missing.
const void *checkpoint_section(const CheckpointFile *file, const char *name, size_t *nbytes);
// checkpoint_read's checks and copies, on an open file.
void checkpoint_copy_all(const CheckpointFile *file, const CheckpointSection *sections, int count);
void checkpoint_read_named(const char *path, const CheckpointSection *sections, int count);

#ifdef __cplusplus
}
#endif

#endif
