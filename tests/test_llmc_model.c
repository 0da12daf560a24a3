// llm.c model files: fp32 export/import is bit-exact for every tensor, bf16 export rounds to nearest-even
// (checked against an independent reference in double arithmetic), headers carry llm.c's fields, and wrong
// magic, version, size or shape are refused without touching the destination buffer.
#define _DEFAULT_SOURCE  // MAP_ANONYMOUS: a destination buffer shared with a forked child

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "llmc_model.h"
#include "testing.h"
#include "util.h"

// ---------------------------------------------------------------------------------------------------------
// Files and values

static void read_header(const char *path, int32_t header[256]) {
    FILE *f = xfopen(path, "rb");
    if (fread(header, sizeof(int32_t), 256, f) != 256) fatal("short header in %s", path);
    fclose(f);
}

static void patch_header(const char *path, int index, int32_t value) {
    FILE *f = xfopen(path, "r+b");
    fseek(f, index * 4, SEEK_SET);
    fwrite(&value, sizeof value, 1, f);
    fclose(f);
}

// Copies `from` cut or zero-extended to `length` bytes.
static void copy_file_resized(const char *from, const char *to, size_t length) {
    size_t n;
    char *bytes = read_whole_file(from, &n);
    FILE *f = xfopen(to, "wb");
    fwrite(bytes, 1, length < n ? length : n, f);
    for (size_t i = n; i < length; i++) fputc(0, f);
    fclose(f);
    free(bytes);
}

static size_t file_size(const char *path) {
    size_t n;
    free(read_whole_file(path, &n));
    return n;
}

// Edge cases of rounding to bf16 first (ties to even, carries into the exponent, overflow, subnormals,
// infinities, NaNs), then arbitrary bit patterns.
static void fill_params(float *params, size_t n) {
    static const uint32_t special[] = {
        0x3f808000u, 0x3f818000u, 0xbf808000u, 0x3f80c000u, 0x3f807fffu, 0x3fffffffu, 0x7f7fffffu, 0x7f7f7fffu,
        0x7f7f8000u, 0x00000001u, 0x00008000u, 0x00018000u, 0x00800000u, 0x007fffffu, 0x80000000u, 0x00000000u,
        0x7f800000u, 0xff800000u, 0x7fc00001u, 0x7f800001u, 0xffbfffffu,
    };
    size_t n_special = sizeof special / sizeof special[0];
    uint64_t rng = 42;
    for (size_t i = 0; i < n; i++) {
        params[i] = i < n_special ? float_of_bits(special[i]) : float_of_bits((uint32_t)splitmix64_next(&rng));
    }
}

// Nearest-even rounding to bf16 (8 significant bits, exponent range of fp32, spacing 2^-133 below 2^-126)
// done in double arithmetic, independent of the bit tricks in numerics/bf16.h. For finite x and infinities.
static float reference_bf16(float x) {
    if (isinf(x) || x == 0.0f) return x;
    int e;
    frexp((double)x, &e);  // |x| = m * 2^e with m in [0.5, 1)
    int q = e - 8 < -133 ? -133 : e - 8;
    double r = ldexp(nearbyint(ldexp((double)x, -q)), q);  // the default rounding mode is nearest-even
    if (fabs(r) >= 0x1p128) return copysignf(INFINITY, x);
    return (float)r;
}

static ModelShape small_shape(int n_layer) {
    ModelShape s = {.n_layer = n_layer, .n_head = 2, .n_embd = 8, .block_size = 16, .vocab_size = 100};
    s.padded_vocab = padded_vocab_size(s.vocab_size);
    return s;
}

// ---------------------------------------------------------------------------------------------------------
// Refusals

typedef struct {
    const char *path;
    const ParamTable *table;
    float *params;
} LoadRequest;

static void child_load(void *arg) {
    LoadRequest *r = arg;
    llmc_model_load(r->path, r->table, r->params);
}

static void child_read_shape(void *arg) {
    LoadRequest *r = arg;
    llmc_model_read_shape(r->path);
}

// Loads path in a child into a shared buffer preset to a sentinel; expects exit status 1, a message naming
// the file and containing `expected`, and the buffer untouched.
static void expect_load_refused(const char *path, const ParamTable *table, const char *expected, const char *what) {
    size_t nbytes = table->num_params * sizeof(float);
    float *dest = mmap(NULL, nbytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (dest == MAP_FAILED) fatal("mmap failed");
    memset(dest, 0xAB, nbytes);
    LoadRequest r = {path, table, dest};
    ChildResult res = run_in_child(child_load, &r);
    CHECK(res.exit_status == 1, "%s: exit status %d", what, res.exit_status);
    CHECK(strstr(res.message, "train_gpt: error: ") == res.message && strstr(res.message, path),
          "%s: message '%s'", what, res.message);
    CHECK(strstr(res.message, expected), "%s: message '%s' lacks '%s'", what, res.message, expected);
    const unsigned char *p = (const unsigned char *)dest;
    int untouched = 1;
    for (size_t i = 0; i < nbytes; i++) untouched &= p[i] == 0xAB;
    CHECK(untouched, "%s: the destination buffer was modified", what);
    munmap(dest, nbytes);
}

static void expect_read_shape_refused(const char *path, const char *expected, const char *what) {
    LoadRequest r = {path, NULL, NULL};
    ChildResult res = run_in_child(child_read_shape, &r);
    CHECK(res.exit_status == 1, "%s: exit status %d", what, res.exit_status);
    CHECK(strstr(res.message, "train_gpt: error: ") == res.message && strstr(res.message, path),
          "%s: message '%s'", what, res.message);
    CHECK(strstr(res.message, expected), "%s: message '%s' lacks '%s'", what, res.message, expected);
}

// ---------------------------------------------------------------------------------------------------------
// Tests

static void check_header_fields(const char *path, const ModelShape *s, int version) {
    int32_t h[256];
    read_header(path, h);
    CHECK(h[0] == 20240326 && h[1] == version, "%s: magic %d version %d", path, h[0], h[1]);
    CHECK(h[2] == s->block_size && h[3] == s->vocab_size && h[4] == s->n_layer && h[5] == s->n_head &&
              h[6] == s->n_embd && h[7] == s->padded_vocab,
          "%s: header fields %d %d %d %d %d %d", path, h[2], h[3], h[4], h[5], h[6], h[7]);
    int rest_zero = 1;
    for (int i = 8; i < 256; i++) rest_zero &= h[i] == 0;
    CHECK(rest_zero, "%s: header words 8..255 are not all 0", path);
}

static void test_fp32_round_trip(const char *dir, const ParamTable *table, const float *params) {
    char path[512];
    snprintf(path, sizeof path, "%s/model_fp32.bin", dir);
    llmc_model_save(path, table, params, LLMC_VERSION_FP32);
    check_header_fields(path, &table->shape, LLMC_VERSION_FP32);
    CHECK(file_size(path) == 1024 + 4 * table->num_params, "fp32 file is %zu bytes", file_size(path));

    ModelShape read = llmc_model_read_shape(path);
    CHECK(memcmp(&read, &table->shape, sizeof read) == 0, "read_shape differs from the saved shape");

    float *back = xcalloc(table->num_params, sizeof(float));
    llmc_model_load(path, table, back);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *pt = &table->tensors[t];
        CHECK(memcmp(back + pt->offset, params + pt->offset, pt->numel * sizeof(float)) == 0,
              "fp32 tensor %s differs after the round trip", pt->name);
    }
    // The file holds the tensors in ParamTable order, with nothing between them.
    size_t n;
    char *bytes = read_whole_file(path, &n);
    CHECK(memcmp(bytes + 1024, params, table->num_params * sizeof(float)) == 0, "fp32 file body != params");
    free(bytes);
    free(back);
}

static void test_bf16_round_trip(const char *dir, const ParamTable *table, const float *params) {
    char path[512];
    snprintf(path, sizeof path, "%s/model_bf16.bin", dir);
    llmc_model_save(path, table, params, LLMC_VERSION_BF16);
    check_header_fields(path, &table->shape, LLMC_VERSION_BF16);
    CHECK(file_size(path) == 1024 + 2 * table->num_params, "bf16 file is %zu bytes", file_size(path));

    float *back = xcalloc(table->num_params, sizeof(float));
    llmc_model_load(path, table, back);
    int bad = 0;
    for (size_t i = 0; i < table->num_params; i++) {
        if (isnan(params[i])) {
            if (!isnan(back[i]) || signbit(back[i]) != signbit(params[i])) bad++;
            continue;
        }
        uint32_t want = bits_of_float(reference_bf16(params[i])), got = bits_of_float(back[i]);
        if (want != got && bad++ < 5) {
            fprintf(stderr, "param %zu: %08x -> %08x, expected %08x\n", i, bits_of_float(params[i]), got, want);
        }
    }
    CHECK(bad == 0, "%d of %zu parameters differ from nearest-even bf16 rounding", bad, table->num_params);
    CHECK(bits_of_float(back[0]) == 0x3f800000u && bits_of_float(back[1]) == 0x3f820000u && bits_of_float(back[6]) == 0x7f800000u,
          "tie or overflow cases: %08x %08x %08x", bits_of_float(back[0]), bits_of_float(back[1]), bits_of_float(back[6]));
    free(back);
}

// llm.c's older version-3 writer left padded_vocab_size at 0: the reader pads to a multiple of 128.
static void test_v3_without_padded_vocab(const char *dir, const ParamTable *table, const float *params) {
    char path[512];
    snprintf(path, sizeof path, "%s/model_old_v3.bin", dir);
    llmc_model_save(path, table, params, LLMC_VERSION_FP32);
    patch_header(path, 7, 0);
    ModelShape read = llmc_model_read_shape(path);
    CHECK(read.padded_vocab == 128, "padded vocab %d, expected 128", read.padded_vocab);
    float *back = xcalloc(table->num_params, sizeof(float));
    llmc_model_load(path, table, back);
    CHECK(memcmp(back, params, table->num_params * sizeof(float)) == 0, "old v3 file loads different values");
    free(back);
}

static void test_refusals(const char *dir, const ParamTable *table, const float *params) {
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s/good.bin", dir);
    snprintf(bad, sizeof bad, "%s/bad.bin", dir);
    llmc_model_save(good, table, params, LLMC_VERSION_BF16);
    size_t n = file_size(good);

    copy_file_resized(good, bad, n);
    patch_header(bad, 0, 20240520);  // a token shard's magic
    expect_load_refused(bad, table, "not an llm.c GPT-2 model file", "wrong magic");
    expect_read_shape_refused(bad, "not an llm.c GPT-2 model file", "wrong magic (read_shape)");

    copy_file_resized(good, bad, n);
    patch_header(bad, 1, 4);
    expect_load_refused(bad, table, "version 4", "wrong version");
    expect_read_shape_refused(bad, "version 4", "wrong version (read_shape)");

    copy_file_resized(good, bad, n - 2);
    expect_load_refused(bad, table, "bytes, but its header", "truncated by one parameter");
    copy_file_resized(good, bad, n + 2);
    expect_load_refused(bad, table, "bytes, but its header", "one parameter too many");
    copy_file_resized(good, bad, 100);
    expect_load_refused(bad, table, "too short", "truncated inside the header");
    expect_read_shape_refused(bad, "too short", "truncated inside the header (read_shape)");

    copy_file_resized(good, bad, n);
    patch_header(bad, 5, 3);  // 8 channels over 3 heads
    expect_read_shape_refused(bad, "not a multiple of n_head", "n_embd % n_head != 0");
    copy_file_resized(good, bad, n);
    patch_header(bad, 4, 0);
    expect_read_shape_refused(bad, "nonsensical shape", "zero layers");
    copy_file_resized(good, bad, n);
    patch_header(bad, 7, 64);
    expect_read_shape_refused(bad, "smaller than vocab_size", "padded vocab below vocab");

    ModelShape other_shape = small_shape(3);
    ParamTable other;
    param_table_init(&other, &other_shape);
    expect_load_refused(good, &other, "has shape (n_layer 2, n_head 2, n_embd 8, max_seq_len 16, vocab_size 100, "
                                      "padded_vocab_size 128), but the model is (n_layer 3,", "shape mismatch");
    CHECK(count_temp_files(dir) == 0, "temp files left in %s", dir);
}

typedef struct {
    const char *path;
    const ParamTable *table;
    const float *params;
    int version;
} SaveRequest;

static void child_save(void *arg) {
    SaveRequest *s = arg;
    llmc_model_save(s->path, s->table, s->params, s->version);
}

static void test_save_errors(const char *dir, const ParamTable *table, const float *params) {
    char path[512];
    snprintf(path, sizeof path, "%s/no/such/dir/model.bin", dir);
    SaveRequest s = {path, table, params, LLMC_VERSION_FP32};
    ChildResult res = run_in_child(child_save, &s);
    CHECK(res.exit_status == 1 && strstr(res.message, "cannot write model file") && strstr(res.message, path),
          "missing directory: status %d, '%s'", res.exit_status, res.message);

    snprintf(path, sizeof path, "%s/model_v4.bin", dir);
    s = (SaveRequest){path, table, params, 4};
    res = run_in_child(child_save, &s);
    CHECK(res.exit_status == 1 && strstr(res.message, "version"), "version 4: status %d, '%s'", res.exit_status,
          res.message);
    CHECK(!file_exists(path), "a refused save left %s", path);
    CHECK(count_temp_files(dir) == 0, "temp files left in %s", dir);
}

int main(void) {
    char dir[] = "/tmp/lpgpt_test_llmc_model_XXXXXX";
    if (!mkdtemp(dir)) fatal("mkdtemp failed");
    ModelShape shape = small_shape(2);
    ParamTable table;
    param_table_init(&table, &shape);
    float *params = xmalloc(table.num_params * sizeof(float));
    fill_params(params, table.num_params);

    test_fp32_round_trip(dir, &table, params);
    test_bf16_round_trip(dir, &table, params);
    test_v3_without_padded_vocab(dir, &table, params);
    test_refusals(dir, &table, params);
    test_save_errors(dir, &table, params);

    free(params);
    remove_dir_contents(dir);
    rmdir(dir);
    return test_summary("test_llmc_model");
}
