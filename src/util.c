#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "distributed.h"

#define MAX_CLEANUP_FILES 8
static char *cleanup_files[MAX_CLEANUP_FILES];

void fatal_cleanup_register(const char *path) {
    for (int i = 0; i < MAX_CLEANUP_FILES; i++) {
        if (!cleanup_files[i]) {
            cleanup_files[i] = xstrdup(path);
            return;
        }
    }
    fatal("internal: too many temporary files registered for cleanup");
}

void fatal_cleanup_unregister(const char *path) {
    for (int i = 0; i < MAX_CLEANUP_FILES; i++) {
        if (cleanup_files[i] && strcmp(cleanup_files[i], path) == 0) {
            char *registered = cleanup_files[i];
            cleanup_files[i] = NULL;  // first, so that a signal handler never sees a freed name
            free(registered);
        }
    }
}

static void remove_cleanup_files(void) {
    for (int i = 0; i < MAX_CLEANUP_FILES; i++) {
        if (cleanup_files[i]) unlink(cleanup_files[i]);
    }
}

// Removes the temporary files, then dies of the same signal (unlink is async-signal-safe).
static void remove_files_and_die(int sig) {
    remove_cleanup_files();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void handle_interrupts_with(void (*handler)(int)) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
}

void cleanup_on_interrupt(void) { handle_interrupts_with(remove_files_and_die); }

static volatile sig_atomic_t pending_interrupt;

// The first signal is only noted; a second one means "now".
static void note_or_die(int sig) {
    if (pending_interrupt) remove_files_and_die(sig);
    pending_interrupt = sig;
}

void defer_interrupts(void) { handle_interrupts_with(note_or_die); }

int pending_interrupt_signal(void) { return pending_interrupt; }

void fatal(const char *fmt, ...) {
    remove_cleanup_files();
    fflush(stdout);
    char message[4096];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    // One write, so that the messages of several ranks do not interleave.
    if (dist_world() > 1) fprintf(stderr, "train_gpt: error (rank %d of %d): %s\n", dist_rank(), dist_world(), message);
    else fprintf(stderr, "train_gpt: error: %s\n", message);
    // Under mpirun the whole job stops, not only this rank: the others would wait for it forever.
    dist_abort();
}

void *xmalloc(size_t nbytes) {
    void *p = malloc(nbytes ? nbytes : 1);
    if (!p) fatal("out of memory allocating %zu bytes", nbytes);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fatal("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

FILE *xfopen(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) fatal("cannot open %s: %s", path, strerror(errno));
    return f;
}

char *read_whole_file(const char *path, size_t *nbytes) {
    FILE *f = xfopen(path, "rb");
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len - 1 == 0) {
            cap *= 2;
            char *bigger = realloc(buf, cap);
            if (!bigger) fatal("out of memory reading %s", path);
            buf = bigger;
        }
    }
    if (ferror(f)) fatal("error reading %s: %s", path, strerror(errno));
    fclose(f);
    buf[len] = '\0';
    if (nbytes) *nbytes = len;
    return buf;
}

void make_dirs(const char *path) {
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) fatal("cannot create directory %s: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) fatal("cannot create directory %s: %s", p, strerror(errno));
    free(p);
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}
