// util.c: fatal() and an interrupting signal both remove the registered temporary files.
#include <signal.h>

#include "testing.h"
#include "util.h"

static char temp_path[64];  // per process, so concurrent runs of the test do not collide

static void touch(const char *path) {
    FILE *f = xfopen(path, "w");
    fclose(f);
}

static void register_then_fatal(void *unused) {
    touch(temp_path);
    fatal_cleanup_register(temp_path);
    fatal("on purpose");
}

static void register_then_signal(void *signal_number) {
    touch(temp_path);
    fatal_cleanup_register(temp_path);
    cleanup_on_interrupt();
    raise(*(int *)signal_number);
}

static void register_unregister_then_signal(void *signal_number) {
    touch(temp_path);
    fatal_cleanup_register(temp_path);
    fatal_cleanup_unregister(temp_path);
    cleanup_on_interrupt();
    raise(*(int *)signal_number);
}

// Deferred: the first signal is only noted (the child goes on and exits 7 when it was noted); the second
// removes the registered files and kills.
static void defer_then_signal_once(void *signal_number) {
    defer_interrupts();
    raise(*(int *)signal_number);
    exit(pending_interrupt_signal() == *(int *)signal_number ? 7 : 8);
}

static void defer_then_signal_twice(void *signal_number) {
    touch(temp_path);
    fatal_cleanup_register(temp_path);
    defer_interrupts();
    raise(*(int *)signal_number);
    raise(*(int *)signal_number);
    exit(9);
}

int main(void) {
    snprintf(temp_path, sizeof temp_path, "/tmp/lpgpt_test_util.%d.tmp", (int)getpid());
    ChildResult r = run_in_child(register_then_fatal, NULL);
    CHECK(r.exit_status == 1 && strstr(r.message, "on purpose"), "fatal: status %d, '%s'", r.exit_status, r.message);
    CHECK(!file_exists(temp_path), "fatal() left the temporary file");

    int signals[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        r = run_in_child(register_then_signal, &signals[i]);
        CHECK(r.exit_status == -1, "signal %d: the child should die of it (status %d)", signals[i], r.exit_status);
        CHECK(!file_exists(temp_path), "signal %d left the temporary file", signals[i]);
    }
    // A file that has been renamed into place (unregistered) survives the signal.
    r = run_in_child(register_unregister_then_signal, &signals[0]);
    CHECK(file_exists(temp_path), "an unregistered file was removed");
    unlink(temp_path);

    for (int i = 0; i < 2; i++) {
        r = run_in_child(defer_then_signal_once, &signals[i]);
        CHECK(r.exit_status == 7, "deferred signal %d: status %d, expected 7 (noted, not fatal)", signals[i], r.exit_status);
        r = run_in_child(defer_then_signal_twice, &signals[i]);
        CHECK(r.exit_status == -1, "second signal %d: the child should die of it (status %d)", signals[i], r.exit_status);
        CHECK(!file_exists(temp_path), "second signal %d left the temporary file", signals[i]);
    }
    return test_summary("test_util");
}
