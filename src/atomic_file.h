// Atomic file replacement: write everything to "<path>.tmp.<pid>", fsync it, rename it over <path>, fsync
// the directory. A reader sees either the old file or the complete new one, never a half-written file, and a
// fatal error (a full disk included) removes the temporary file.
#ifndef LP_ATOMIC_FILE_H
#define LP_ATOMIC_FILE_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    FILE *file;
    char *path;       // the final name
    char *temp_path;  // where the bytes go until the commit
    const char *what; // names the file in error messages, e.g. "checkpoint"
} AtomicFile;

// Creates the temporary file and registers it with fatal_cleanup_register.
void atomic_file_open(AtomicFile *out, const char *path, const char *what);
// fatal() "cannot write <what> <path>: <reason>" on any failure.
void atomic_file_write(AtomicFile *out, const void *data, size_t nbytes);
// Flushes, fsyncs and closes the temporary file, renames it over the final path, fsyncs the directory.
void atomic_file_commit(AtomicFile *out);
// The three steps for a whole text at once.
void atomic_file_write_text(const char *path, const char *what, const char *text);

#ifdef __cplusplus
}
#endif

#endif
