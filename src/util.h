// Small host helpers shared by every part of the program: fatal errors, checked allocation and file IO.
#ifndef LP_UTIL_H
#define LP_UTIL_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// Prints "train_gpt: error: <message>" on stderr and exits with status 1. Files registered with
// fatal_cleanup_register are removed first, so no half-written output survives an error. In a job of
// several ranks the message names the rank, and every rank of the job stops (dist_abort).
#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 1, 2)))
#endif
void fatal(const char *fmt, ...);

// A temporary file that must not survive a fatal error (unregister once it has been renamed into place).
void fatal_cleanup_register(const char *path);
void fatal_cleanup_unregister(const char *path);
// On SIGINT or SIGTERM (Ctrl-C, mpirun tearing a job down), remove the registered files too, so that an
// interrupted checkpoint write leaves the last complete checkpoint and no temporary file.
void cleanup_on_interrupt(void);
// From here on, the first SIGINT or SIGTERM is only noted (pending_interrupt_signal() returns it) so that
// the training loop can stop at the end of its step and save; a second signal ends the process at once, as
// cleanup_on_interrupt does.
void defer_interrupts(void);
// The signal noted since defer_interrupts(), or 0.
int pending_interrupt_signal(void);

void *xmalloc(size_t nbytes);
void *xcalloc(size_t count, size_t size);
char *xstrdup(const char *s);

FILE *xfopen(const char *path, const char *mode);
// Reads a whole file into a new buffer (NUL-terminated); *nbytes receives its size.
char *read_whole_file(const char *path, size_t *nbytes);
// Creates a directory and its parents (like mkdir -p).
void make_dirs(const char *path);
int file_exists(const char *path);

#ifdef __cplusplus
}
#endif

#endif
