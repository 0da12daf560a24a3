#include "atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static void fail(const AtomicFile *out) {
    fatal("cannot write %s %s: %s", out->what, out->path, strerror(errno));
}

void atomic_file_open(AtomicFile *out, const char *path, const char *what) {
    out->path = xstrdup(path);
    out->what = what;
    size_t cap = strlen(path) + 32;
    out->temp_path = xmalloc(cap);
    snprintf(out->temp_path, cap, "%s.tmp.%ld", path, (long)getpid());
    // Registered before it exists, so that no failure between here and the rename can leave it behind.
    fatal_cleanup_register(out->temp_path);
    out->file = fopen(out->temp_path, "wb");
    if (!out->file) fail(out);
}

void atomic_file_write(AtomicFile *out, const void *data, size_t nbytes) {
    if (nbytes == 0) return;
    if (fwrite(data, 1, nbytes, out->file) != nbytes) fail(out);
}

// The rename is only durable once the directory entry itself reaches the disk.
static void sync_parent_directory(const AtomicFile *out) {
    char *dir = xstrdup(out->path);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) slash[1] = '\0';  // a file in "/"
    else *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0 || fsync(fd) != 0) fatal("cannot sync directory %s after writing %s: %s", dir, out->path, strerror(errno));
    close(fd);
    free(dir);
}

void atomic_file_commit(AtomicFile *out) {
    // A full disk may only show up here, when buffered bytes reach the file system.
    if (fflush(out->file) != 0) fail(out);
    if (fsync(fileno(out->file)) != 0) fail(out);
    int closed = fclose(out->file);
    out->file = NULL;
    if (closed != 0) fail(out);
    if (rename(out->temp_path, out->path) != 0) fail(out);
    fatal_cleanup_unregister(out->temp_path);
    sync_parent_directory(out);
    free(out->temp_path);
    free(out->path);
    out->temp_path = NULL;
    out->path = NULL;
}

void atomic_file_write_text(const char *path, const char *what, const char *text) {
    AtomicFile out;
    atomic_file_open(&out, path, what);
    atomic_file_write(&out, text, strlen(text));
    atomic_file_commit(&out);
}
