// Minimal test support: CHECK records a failure with its file:line and keeps going; test_summary reports.
#ifndef LP_TESTING_H
#define LP_TESTING_H

#include <stdio.h>
#include <stdlib.h>
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

#endif
