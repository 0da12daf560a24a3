#define _XOPEN_SOURCE 700  // nftw
#include "run_dir.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define PATH_CAP 1200

// What a run leaves in its directory (checkpoints/ counts when it holds anything).
static const char *const run_outputs[] = {"config.json", "log.jsonl", "summary.json", "samples.txt", "model.bin"};
#define NUM_RUN_OUTPUTS (sizeof run_outputs / sizeof run_outputs[0])

// The lock file's descriptor, open (and so the lock held) until the process ends.
static int lock_fd = -1;

static void join_path(char *out, const char *dir, const char *name) {
    if (snprintf(out, PATH_CAP, "%s/%s", dir, name) >= PATH_CAP) fatal("path too long: %s/%s", dir, name);
}

static int directory_has_entries(const char *path) {
    char pattern[PATH_CAP];
    join_path(pattern, path, "*");
    glob_t found;
    int any = glob(pattern, 0, NULL, &found) == 0 && found.gl_pathc > 0;
    if (any) globfree(&found);
    return any;
}

// The outputs of a run found in dir, as a list for a message ("" when none).
static void find_run_outputs(const char *dir, char *list, size_t cap) {
    list[0] = '\0';
    char path[PATH_CAP];
    for (size_t i = 0; i < NUM_RUN_OUTPUTS; i++) {
        join_path(path, dir, run_outputs[i]);
        if (!file_exists(path)) continue;
        size_t used = strlen(list);
        snprintf(list + used, cap - used, "%s%s", used ? ", " : "", run_outputs[i]);
    }
    join_path(path, dir, "checkpoints");
    if (file_exists(path) && directory_has_entries(path)) {
        size_t used = strlen(list);
        snprintf(list + used, cap - used, "%scheckpoints/", used ? ", " : "");
    }
}

static void refuse_if_owned(const char *dir) {
    char found[256];
    find_run_outputs(dir, found, sizeof found);
    if (!found[0]) return;
    fatal("output.dir %s already holds a run (%s): continue it with --resume %s, choose another output.dir, or add "
          "--set output.overwrite=1 to delete that run's outputs first", dir, found, dir);
}

static void check_checkpoints_dir(const char *dir) {
    char path[PATH_CAP];
    join_path(path, dir, "checkpoints");
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISDIR(st.st_mode)) {
        fatal("%s exists but is not a directory: the run keeps its checkpoints there (move it away, or choose "
              "another output.dir)", path);
    }
}

// A write lock on dir/.lock as a struct flock covering the whole file.
static struct flock whole_file_lock(void) {
    struct flock lock;
    memset(&lock, 0, sizeof lock);
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    return lock;
}

_Noreturn static void fail_locked(const char *dir, pid_t holder) {
    fatal("output.dir %s is in use by another live run (process %d holds %s/.lock): wait for it to end, or "
          "choose another output.dir", dir, (int)holder, dir);
}

static void refuse_if_locked(const char *dir) {
    char path[PATH_CAP];
    join_path(path, dir, ".lock");
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;  // no run has locked this directory yet
    struct flock lock = whole_file_lock();
    int asked = fcntl(fd, F_GETLK, &lock);
    close(fd);
    if (asked == 0 && lock.l_type != F_UNLCK) fail_locked(dir, lock.l_pid);
}

static void lock_dir(const char *dir) {
    char path[PATH_CAP];
    join_path(path, dir, ".lock");
    lock_fd = open(path, O_RDWR | O_CREAT, 0644);
    if (lock_fd < 0) fatal("cannot create the lock file %s: %s", path, strerror(errno));
    struct flock lock = whole_file_lock();
    if (fcntl(lock_fd, F_SETLK, &lock) == 0) return;
    if (errno != EACCES && errno != EAGAIN) fatal("cannot lock %s: %s", path, strerror(errno));
    struct flock holder = whole_file_lock();
    fail_locked(dir, fcntl(lock_fd, F_GETLK, &holder) == 0 ? holder.l_pid : 0);
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    int removed = type == FTW_DP ? rmdir(path) : unlink(path);
    if (removed != 0) fatal("cannot remove %s: %s", path, strerror(errno));
    return 0;
}

static void remove_run_outputs(const char *dir) {
    char found[256], path[PATH_CAP];
    find_run_outputs(dir, found, sizeof found);
    if (!found[0]) return;
    for (size_t i = 0; i < NUM_RUN_OUTPUTS; i++) {
        join_path(path, dir, run_outputs[i]);
        if (file_exists(path) && unlink(path) != 0) fatal("cannot remove %s: %s", path, strerror(errno));
    }
    join_path(path, dir, "checkpoints");
    if (file_exists(path)) nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("output.overwrite=1: removed the previous run's outputs from %s (%s)\n", dir, found);
}

// Files of an atomic write (NAME.tmp.PID) that a killed process left behind: as large as a checkpoint each.
static void remove_stale_temp_files(const char *dir) {
    const char *patterns[] = {"*.tmp.*", "checkpoints/*.tmp.*"};
    int removed = 0;
    for (size_t p = 0; p < 2; p++) {
        char pattern[PATH_CAP];
        join_path(pattern, dir, patterns[p]);
        glob_t found;
        if (glob(pattern, 0, NULL, &found) != 0) continue;
        for (size_t i = 0; i < found.gl_pathc; i++) {
            if (unlink(found.gl_pathv[i]) != 0) fatal("cannot remove %s: %s", found.gl_pathv[i], strerror(errno));
            removed++;
        }
        globfree(&found);
    }
    if (removed) printf("removed %d temporary file(s) left in %s by an interrupted write\n", removed, dir);
}

void run_dir_check(const char *dir, RunDirUse use, int overwrite) {
    struct stat st;
    if (stat(dir, &st) != 0) return;  // a directory the run will create
    if (!S_ISDIR(st.st_mode)) fatal("output.dir %s exists and is not a directory", dir);
    refuse_if_locked(dir);
    check_checkpoints_dir(dir);
    if (use == RUN_DIR_NEW && !overwrite) refuse_if_owned(dir);
}

void run_dir_claim(const char *dir, RunDirUse use, int overwrite) {
    make_dirs(dir);
    lock_dir(dir);
    // Again under the lock: the directory may have changed since run_dir_check.
    check_checkpoints_dir(dir);
    if (use == RUN_DIR_NEW) {
        if (overwrite) remove_run_outputs(dir);
        else refuse_if_owned(dir);
    }
    remove_stale_temp_files(dir);
    char path[PATH_CAP];
    join_path(path, dir, "checkpoints");
    make_dirs(path);
}

int checkpoint_step_of(const char *path, int rank) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    int step = -1, file_rank = 0, end = -1;
    if (rank == 0) sscanf(base, "step_%d.ckpt%n", &step, &end);
    else sscanf(base, "step_%d.rank%d.ckpt%n", &step, &file_rank, &end);
    return end == (int)strlen(base) && file_rank == rank ? step : -1;
}

// The step of any rank's checkpoint file name, or -1.
static int any_rank_step(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    int step = -1;
    return sscanf(base, "step_%d.", &step) == 1 ? step : -1;
}

// superseded/NAME, or superseded/NAME.N when an earlier branch already left a file of that name.
static void superseded_path(char *out, const char *superseded_dir, const char *name) {
    join_path(out, superseded_dir, name);
    for (int n = 1; file_exists(out); n++) {
        char numbered[PATH_CAP];
        snprintf(numbered, sizeof numbered, "%s.%d", name, n);
        join_path(out, superseded_dir, numbered);
    }
}

int run_dir_supersede_after(const char *dir, int step) {
    char pattern[PATH_CAP], superseded_dir[PATH_CAP], target[PATH_CAP];
    join_path(pattern, dir, "checkpoints/step_*.ckpt");
    join_path(superseded_dir, dir, "checkpoints/superseded");
    glob_t found;
    if (glob(pattern, 0, NULL, &found) != 0) return 0;
    int moved = 0;
    for (size_t i = 0; i < found.gl_pathc; i++) {
        if (any_rank_step(found.gl_pathv[i]) <= step) continue;
        make_dirs(superseded_dir);
        superseded_path(target, superseded_dir, strrchr(found.gl_pathv[i], '/') + 1);
        if (rename(found.gl_pathv[i], target) != 0) {
            fatal("cannot move %s to %s: %s", found.gl_pathv[i], target, strerror(errno));
        }
        moved++;
    }
    globfree(&found);
    return moved;
}
