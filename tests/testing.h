// Minimal test support: CHECK records a failure with its file:line and keeps going; test_summary reports.
#ifndef LP_TESTING_H
#define LP_TESTING_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int test_failures = 0;
static int test_checks = 0;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        test_checks++;                                                        \
        if (!(cond)) {                                                        \
            test_failures++;                                                  \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
        }                                                                     \
    } while (0)

static int test_summary(const char *name) {
    printf("%s: %d checks, %d failures\n", name, test_checks, test_failures);
    return test_failures ? 1 : 0;
}

// Errors exit the process through fatal(), so a call expected to fail runs in a forked child; the parent
// gets its exit status and what it wrote to stderr.
typedef struct {
    int exit_status;  // -1 when the child died from a signal
    char message[4096];
} ChildResult;

static inline ChildResult run_in_child(void (*fn)(void *), void *arg) {
    ChildResult result = {0};
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t got;
    while (len + 1 < sizeof result.message &&
           (got = read(fds[0], result.message + len, sizeof result.message - 1 - len)) > 0) {
        len += (size_t)got;
    }
    result.message[len] = '\0';
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    result.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
}

// splitmix64: the tests' own random numbers, independent of the code under test. Each test keeps its state.
static inline uint64_t splitmix64_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Bit casts written here, apart from the numerics headers under test.
static inline float float_of_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static inline uint32_t bits_of_float(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

// Files whose name holds ".tmp." (what an atomic write leaves behind if it fails to clean up); -1 if no dir.
static inline int count_temp_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) count += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return count;
}

static inline void remove_dir_contents(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

#endif
