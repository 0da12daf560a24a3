// Checkpoint IO: bit-exact round trip, the XXH64 checksum against published-implementation values, refusal of
// every corrupted byte, truncation and foreign section lists (without touching the caller's buffers), atomic
// replacement, a clean failure when the file system refuses the write, and reading one section by name.
#define _GNU_SOURCE  // MAP_ANONYMOUS for buffers shared with a forked child; unshare for a private tmpfs mount

#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "testing.h"
#include "util.h"

// ---------------------------------------------------------------------------------------------------------
// Files

static void write_file(const char *path, const unsigned char *bytes, size_t n) {
    FILE *f = xfopen(path, "wb");
    if (fwrite(bytes, 1, n, f) != n || fclose(f) != 0) fatal("cannot write %s", path);
}

static uint64_t trailer_of(const char *path) {
    size_t n;
    char *bytes = read_whole_file(path, &n);
    uint64_t v = 0;
    if (n >= 8) memcpy(&v, bytes + n - 8, 8);
    free(bytes);
    return v;
}

// ---------------------------------------------------------------------------------------------------------
// The sections of a small training state

typedef struct {
    float params[37];
    unsigned char moments[64];
    uint64_t step;
} State;

enum { NUM_SECTIONS = 4 };

static void fill_state(State *s, unsigned seed) {
    for (int i = 0; i < 37; i++) s->params[i] = (float)(seed * 37 + i) * 0.37f - 3.0f;
    s->params[5] = -0.0f;
    for (int i = 0; i < 64; i++) s->moments[i] = (unsigned char)(seed * 7 + i * 13);
    s->step = 1000u + seed;
}

static void describe(State *s, CheckpointSection sections[NUM_SECTIONS]) {
    sections[0] = (CheckpointSection){"params", s->params, sizeof s->params};
    sections[1] = (CheckpointSection){"adam_m", s->moments, sizeof s->moments};
    sections[2] = (CheckpointSection){"empty", NULL, 0};
    sections[3] = (CheckpointSection){"step", &s->step, sizeof s->step};
}

// Destination buffers in memory shared with forked children, so the parent sees whether a refused read wrote.
static State *shared_state(void) {
    State *s = mmap(NULL, sizeof(State), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) fatal("mmap failed");
    return s;
}

static int state_untouched(const State *s) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < sizeof *s; i++) {
        if (p[i] != 0xAB) return 0;
    }
    return 1;
}

typedef struct {
    const char *path;
    const CheckpointSection *sections;
    int count;
} ReadRequest;

static void child_read(void *arg) {
    ReadRequest *r = arg;
    checkpoint_read(r->path, r->sections, r->count);
}

// Reads path in a child into `expected`, whose buffers lie in dest (preset here to 0xAB), and expects a
// refusal that leaves them untouched. Returns the child's message.
static ChildResult expect_refused(const char *path, const CheckpointSection *expected, int count, State *dest,
                                  const char *what) {
    memset(dest, 0xAB, sizeof *dest);
    ReadRequest r = {path, expected, count};
    ChildResult res = run_in_child(child_read, &r);
    CHECK(res.exit_status == 1, "%s: exit status %d", what, res.exit_status);
    CHECK(strstr(res.message, "train_gpt: error: ") == res.message, "%s: message '%s'", what, res.message);
    CHECK(strstr(res.message, path) != NULL, "%s: message does not name the file: '%s'", what, res.message);
    CHECK(state_untouched(dest), "%s: destination buffers were modified", what);
    return res;
}

// Writes the checkpoint of fill_state(seed) to path.
static void write_state_checkpoint(const char *path, int seed) {
    State state;
    CheckpointSection sections[NUM_SECTIONS];
    fill_state(&state, seed);
    describe(&state, sections);
    checkpoint_write(path, sections, NUM_SECTIONS);
}

// ---------------------------------------------------------------------------------------------------------
// Tests

static void test_round_trip(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/round_trip.ckpt", dir);
    State a, b;
    CheckpointSection sa[NUM_SECTIONS], sb[NUM_SECTIONS];
    memset(&a, 0, sizeof a);  // the padding before step too: memcmp below compares whole structs
    fill_state(&a, 1);
    memset(&b, 0, sizeof b);
    describe(&a, sa);
    describe(&b, sb);
    checkpoint_write(path, sa, NUM_SECTIONS);
    checkpoint_read(path, sb, NUM_SECTIONS);
    CHECK(memcmp(&a, &b, sizeof a) == 0, "round trip changed the bytes");

    size_t n;
    free(read_whole_file(path, &n));
    size_t expected = 16 + NUM_SECTIONS * 40 + sizeof a.params + sizeof a.moments + sizeof a.step + 8;
    CHECK(n == expected, "file is %zu bytes, expected %zu", n, expected);
}

// Values from the reference xxHash implementation (python-xxhash 3.x, xxh64, seed 0) over the same bytes
// (format version 2 headers: struct.pack("<IIII", 0x4c504350, 2, count, 0), then the sections).
static void test_checksum_known_answers(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/known.ckpt", dir);
    checkpoint_write(path, NULL, 0);
    CHECK(trailer_of(path) == 0xe893ae57ecf7db87ull, "empty checkpoint checksum %016llx",
          (unsigned long long)trailer_of(path));

    const size_t lengths[3] = {0, 3, 103};
    const uint64_t answers[3] = {0x4017d616f42fa3d2ull, 0xe424bcb2cf6c5160ull, 0xf9cea7f9a9e8ab53ull};
    unsigned char data[103];
    for (int i = 0; i < 103; i++) data[i] = (unsigned char)i;
    for (int k = 0; k < 3; k++) {
        CheckpointSection s = {"x", data, lengths[k]};
        checkpoint_write(path, &s, 1);
        CHECK(trailer_of(path) == answers[k], "section of %zu bytes: checksum %016llx, expected %016llx", lengths[k],
              (unsigned long long)trailer_of(path), (unsigned long long)answers[k]);
    }
}

static void test_every_flipped_byte_is_refused(const char *dir) {
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s/good.ckpt", dir);
    snprintf(bad, sizeof bad, "%s/flipped.ckpt", dir);
    write_state_checkpoint(good, 2);
    size_t n;
    unsigned char *bytes = (unsigned char *)read_whole_file(good, &n);
    State *dest = shared_state();
    CheckpointSection into[NUM_SECTIONS];
    describe(dest, into);

    for (size_t offset = 0; offset < n; offset++) {
        char what[64];
        snprintf(what, sizeof what, "byte %zu flipped", offset);
        bytes[offset] ^= 0x10;
        write_file(bad, bytes, n);
        bytes[offset] ^= 0x10;
        ChildResult res = expect_refused(bad, into, NUM_SECTIONS, dest, what);
        if (offset == 0) CHECK(strstr(res.message, "not an lpgpt checkpoint"), "%s: '%s'", what, res.message);
        if (offset == 4) CHECK(strstr(res.message, "version"), "%s: '%s'", what, res.message);
        if (offset == 16 + 40 + 3 || offset >= n - 8) {  // inside the params data, inside the checksum
            CHECK(strstr(res.message, "checksum mismatch: file is corrupt"), "%s: '%s'", what, res.message);
        }
        if (offset == 16 + 32 + 5) {  // a high byte of the first section's size
            CHECK(strstr(res.message, "byte offset 16"), "%s: '%s'", what, res.message);
        }
    }
    CHECK(count_temp_files(dir) == 0, "temp files left behind");
    free(bytes);
    munmap(dest, sizeof *dest);
}

static void test_truncated_or_extended_is_refused(const char *dir) {
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s/good.ckpt", dir);
    snprintf(bad, sizeof bad, "%s/truncated.ckpt", dir);
    write_state_checkpoint(good, 3);
    size_t n;
    unsigned char *bytes = (unsigned char *)read_whole_file(good, &n);
    State *dest = shared_state();
    CheckpointSection into[NUM_SECTIONS];
    describe(dest, into);

    const size_t lengths[] = {0, 1, 8, 23, 24, 16 + 40, 16 + 40 + 10, n / 2, n - 8, n - 1};
    for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu bytes", lengths[k]);
        write_file(bad, bytes, lengths[k]);
        expect_refused(bad, into, NUM_SECTIONS, dest, what);
    }
    unsigned char *longer = xmalloc(n + 1);
    memcpy(longer, bytes, n);
    longer[n] = 0;
    write_file(bad, longer, n + 1);
    expect_refused(bad, into, NUM_SECTIONS, dest, "one byte appended");

    expect_refused(dir, into, NUM_SECTIONS, dest, "a directory");
    snprintf(bad, sizeof bad, "%s/missing.ckpt", dir);
    ChildResult res = expect_refused(bad, into, NUM_SECTIONS, dest, "missing file");
    CHECK(strstr(res.message, "cannot open checkpoint"), "missing file: '%s'", res.message);
    free(longer);
    free(bytes);
    munmap(dest, sizeof *dest);
}

static void test_foreign_section_list_is_refused(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/sections.ckpt", dir);
    write_state_checkpoint(path, 4);
    State *dest = shared_state();
    CheckpointSection into[NUM_SECTIONS], other[NUM_SECTIONS + 1];
    describe(dest, into);
    ChildResult res;

    memcpy(other, into, sizeof into);
    other[1].name = "adam_v";
    res = expect_refused(path, other, NUM_SECTIONS, dest, "renamed section");
    CHECK(strstr(res.message, "'adam_m' with 64 bytes, expected 'adam_v' with 64 bytes"), "renamed: '%s'",
          res.message);

    memcpy(other, into, sizeof into);
    other[0].nbytes -= sizeof(float);
    res = expect_refused(path, other, NUM_SECTIONS, dest, "resized section");
    CHECK(strstr(res.message, "'params' with 148 bytes, expected 'params' with 144 bytes"), "resized: '%s'",
          res.message);

    res = expect_refused(path, into, NUM_SECTIONS - 1, dest, "one section fewer expected");
    CHECK(strstr(res.message, "extra section 'step' (8 bytes)"), "fewer: '%s'", res.message);

    memcpy(other, into, sizeof into);
    other[NUM_SECTIONS] = (CheckpointSection){"scales", &dest->step, sizeof dest->step};
    res = expect_refused(path, other, NUM_SECTIONS + 1, dest, "one section more expected");
    CHECK(strstr(res.message, "lacks section 'scales' (8 bytes expected)"), "more: '%s'", res.message);
    munmap(dest, sizeof *dest);
}

typedef struct {
    const char *path;
    const CheckpointSection *sections;
    int count;
    rlim_t file_size_limit;
} WriteRequest;

static void child_write(void *arg) {
    WriteRequest *w = arg;
    if (w->file_size_limit) {
        // Writes past the limit fail with EFBIG instead of killing the process: a stand-in for a full disk.
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit limit = {w->file_size_limit, w->file_size_limit};
        if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(99);
    }
    checkpoint_write(w->path, w->sections, w->count);
}

static void test_atomic_replacement(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/replace.ckpt", dir);
    State a, b, back;
    CheckpointSection sa[NUM_SECTIONS], sb[NUM_SECTIONS], sback[NUM_SECTIONS];
    fill_state(&a, 5);
    fill_state(&b, 6);
    describe(&a, sa);
    describe(&b, sb);
    describe(&back, sback);
    checkpoint_write(path, sa, NUM_SECTIONS);
    checkpoint_write(path, sb, NUM_SECTIONS);
    checkpoint_read(path, sback, NUM_SECTIONS);
    CHECK(memcmp(&back, &b, sizeof b) == 0, "second write did not replace the first");
    CHECK(count_temp_files(dir) == 0, "temp files left after two writes");

    // A write that the file system refuses halfway leaves the previous checkpoint intact and no temp file.
    static unsigned char big[1 << 16];
    memset(big, 0x5A, sizeof big);
    CheckpointSection huge = {"big", big, sizeof big};
    WriteRequest w = {path, &huge, 1, 4096};
    ChildResult res = run_in_child(child_write, &w);
    CHECK(res.exit_status == 1, "write over the size limit: exit status %d", res.exit_status);
    char expected[700];
    snprintf(expected, sizeof expected, "train_gpt: error: cannot write checkpoint %s: File too large", path);
    CHECK(strstr(res.message, expected) == res.message, "size limit: '%s'", res.message);
    CHECK(count_temp_files(dir) == 0, "temp file left after a refused write");
    memset(&back, 0, sizeof back);
    checkpoint_read(path, sback, NUM_SECTIONS);
    CHECK(memcmp(&back, &b, sizeof b) == 0, "a refused write damaged the previous checkpoint");

    // A directory that does not exist.
    char nowhere[600];
    snprintf(nowhere, sizeof nowhere, "%s/no/such/dir.ckpt", dir);
    WriteRequest w2 = {nowhere, sb, NUM_SECTIONS, 0};
    res = run_in_child(child_write, &w2);
    CHECK(res.exit_status == 1, "missing directory: exit status %d", res.exit_status);
    CHECK(strstr(res.message, "cannot write checkpoint") && strstr(res.message, nowhere), "missing directory: '%s'",
          res.message);
}

// A real full disk: a 64 KiB tmpfs, filled up, mounted in a private mount namespace of the child so that it
// vanishes with it. Needs root (CAP_SYS_ADMIN); skipped where the mount is not allowed.
enum { SKIPPED = 77 };
static char full_disk_dir[512];

// Runs as the child exits through fatal(), after fatal() removed its temporary file.
static void report_leftover_temp_files(void) {
    fprintf(stderr, "\n[temp files left: %d]\n", count_temp_files(full_disk_dir));
}

static void child_write_to_full_disk(void *arg) {
    const char *path = arg;
    if (unshare(CLONE_NEWNS) != 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", full_disk_dir, "tmpfs", 0, "size=64k") != 0) {
        _exit(SKIPPED);
    }
    char filler[600];
    snprintf(filler, sizeof filler, "%s/filler", full_disk_dir);
    FILE *f = fopen(filler, "wb");
    static unsigned char block[4096];
    while (f && fwrite(block, 1, sizeof block, f) == sizeof block) {}
    if (!f || errno != ENOSPC) _exit(SKIPPED);
    fclose(f);
    atexit(report_leftover_temp_files);
    static unsigned char data[1 << 14];
    CheckpointSection s = {"data", data, sizeof data};
    checkpoint_write(path, &s, 1);
}

static void test_full_disk(const char *dir) {
    snprintf(full_disk_dir, sizeof full_disk_dir, "%s/full", dir);
    make_dirs(full_disk_dir);
    char path[600];
    snprintf(path, sizeof path, "%s/state.ckpt", full_disk_dir);
    ChildResult res = run_in_child(child_write_to_full_disk, path);
    if (res.exit_status == SKIPPED) {
        printf("test_checkpoint: full-disk test skipped: cannot mount a tmpfs here (needs root)\n");
    } else {
        char expected[700];
        snprintf(expected, sizeof expected, "train_gpt: error: cannot write checkpoint %s: No space left on device\n",
                 path);
        CHECK(res.exit_status == 1, "full disk: exit status %d", res.exit_status);
        CHECK(strstr(res.message, expected) == res.message, "full disk: '%s'", res.message);
        CHECK(strstr(res.message, "[temp files left: 0]"), "full disk: '%s'", res.message);
    }
    rmdir(full_disk_dir);
}

static void child_read_missing(void *arg) {
    CheckpointFile *file = checkpoint_open(arg);
    size_t nbytes;
    checkpoint_section(file, "master", &nbytes);
}

// One section by name from an open file: its bytes and size; a refusal naming the section when it is
// missing; and the whole state copied from the same open file.
static void test_read_one_section(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/one.ckpt", dir);
    State a, b;
    CheckpointSection sa[NUM_SECTIONS], sb[NUM_SECTIONS];
    memset(&a, 0, sizeof a);  // State has padding before step: the comparison below covers the whole struct
    memset(&b, 0, sizeof b);
    fill_state(&a, 3);
    describe(&a, sa);
    describe(&b, sb);
    checkpoint_write(path, sa, NUM_SECTIONS);
    CheckpointFile *file = checkpoint_open(path);
    size_t nbytes = 0;
    const uint64_t *step = checkpoint_section(file, "step", &nbytes);
    CHECK(nbytes == sizeof a.step, "section: %zu bytes, expected %zu", nbytes, sizeof a.step);
    uint64_t value;
    memcpy(&value, step, sizeof value);
    CHECK(value == a.step, "section: step %llu, expected %llu", (unsigned long long)value, (unsigned long long)a.step);
    checkpoint_copy_all(file, sb, NUM_SECTIONS);
    checkpoint_close(file);
    CHECK(memcmp(&a, &b, sizeof a) == 0, "copy_all from the open file changed the bytes");
    ChildResult missing = run_in_child(child_read_missing, path);
    CHECK(missing.exit_status == 1 && strstr(missing.message, "no section 'master'"), "section, missing: '%s'",
          missing.message);
}

static State *named_dest;  // shared with the child, so the parent sees whether a refused read wrote

static void child_read_named_missing(void *arg) {
    CheckpointSection wanted[2] = {{"params", named_dest->params, sizeof named_dest->params},
                                   {"master", named_dest->moments, 4}};
    checkpoint_read_named(arg, wanted, 2);
}

// Several sections by name, in another order than the file's, the others skipped; a missing one is refused
// before anything is copied.
static void test_read_named_sections(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/named.ckpt", dir);
    State a, b;
    CheckpointSection sa[NUM_SECTIONS];
    fill_state(&a, 5);
    describe(&a, sa);
    checkpoint_write(path, sa, NUM_SECTIONS);
    memset(&b, 0, sizeof b);
    CheckpointSection wanted[2] = {{"step", &b.step, sizeof b.step}, {"params", b.params, sizeof b.params}};
    checkpoint_read_named(path, wanted, 2);
    CHECK(b.step == a.step && memcmp(b.params, a.params, sizeof a.params) == 0, "read_named: values differ");
    CHECK(b.moments[0] == 0 && b.moments[63] == 0, "read_named wrote a section it was not asked for");
    named_dest = shared_state();
    memset(named_dest, 0xAB, sizeof *named_dest);
    ChildResult missing = run_in_child(child_read_named_missing, path);
    CHECK(missing.exit_status == 1 && strstr(missing.message, "no section 'master'"), "read_named, missing: '%s'",
          missing.message);
    unsigned char untouched[sizeof named_dest->params];
    memset(untouched, 0xAB, sizeof untouched);
    CHECK(memcmp(named_dest->params, untouched, sizeof untouched) == 0, "a refused read_named wrote params");
}

int main(void) {
    char dir[] = "/tmp/lpgpt_test_checkpoint_XXXXXX";
    if (!mkdtemp(dir)) fatal("mkdtemp failed");
    test_round_trip(dir);
    test_checksum_known_answers(dir);
    test_every_flipped_byte_is_refused(dir);
    test_truncated_or_extended_is_refused(dir);
    test_foreign_section_list_is_refused(dir);
    test_atomic_replacement(dir);
    test_full_disk(dir);
    test_read_one_section(dir);
    test_read_named_sections(dir);
    CHECK(count_temp_files(dir) == 0, "temp files left in %s", dir);
    remove_dir_contents(dir);
    rmdir(dir);
    return test_summary("test_checkpoint");
}
