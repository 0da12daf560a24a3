// llm.c GPT-2 model files (docs/checkpoint-format.md): a header of 256 little-endian int32
//   [0] magic 20240326  [1] version (3: fp32 params, 5: bf16 params)  [2] max_seq_len  [3] vocab_size
//   [4] n_layer  [5] n_head  [6] n_embd  [7] padded_vocab_size  [8..255] 0
// then every parameter tensor in ParamTable order, with no padding between them.
#include "llmc_model.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "atomic_file.h"
#include "numerics/bf16.h"
#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "llm.c model files are little-endian and are read and written without byte swaps"
#endif

#define HEADER_INTS 256
#define HEADER_BYTES 1024LL  // HEADER_INTS int32
#define CONVERT_CHUNK (1 << 20)  // parameters converted to or from bf16 at a time

static int bytes_per_param(int version) { return version == LLMC_VERSION_BF16 ? 2 : 4; }

static void format_shape(char *buf, size_t cap, const ModelShape *s) {
    snprintf(buf, cap, "(n_layer %d, n_head %d, n_embd %d, max_seq_len %d, vocab_size %d, padded_vocab_size %d)",
             s->n_layer, s->n_head, s->n_embd, s->block_size, s->vocab_size, s->padded_vocab);
}

static int shapes_equal(const ModelShape *a, const ModelShape *b) {
    return a->n_layer == b->n_layer && a->n_head == b->n_head && a->n_embd == b->n_embd &&
           a->block_size == b->block_size && a->vocab_size == b->vocab_size && a->padded_vocab == b->padded_vocab;
}

// Reads and validates the header of an open model file.
static ModelShape read_header(const char *path, FILE *f, int *version) {
    int32_t header[HEADER_INTS];
    if (fread(header, sizeof(int32_t), HEADER_INTS, f) != HEADER_INTS) {
        fatal("model file %s is too short for llm.c's %lld-byte header", path, HEADER_BYTES);
    }
    if (header[0] != LLMC_MODEL_MAGIC) {
        fatal("%s is not an llm.c GPT-2 model file (magic %d, expected %d)", path, header[0], LLMC_MODEL_MAGIC);
    }
    if (header[1] != LLMC_VERSION_FP32 && header[1] != LLMC_VERSION_BF16) {
        fatal("model file %s has version %d; this program reads versions %d (fp32) and %d (bf16)", path, header[1],
              LLMC_VERSION_FP32, LLMC_VERSION_BF16);
    }
    ModelShape shape = {.n_layer = header[4], .n_head = header[5], .n_embd = header[6], .block_size = header[2],
                        .vocab_size = header[3], .padded_vocab = header[7]};
    char desc[256];
    format_shape(desc, sizeof desc, &shape);
    if (shape.n_layer <= 0 || shape.n_head <= 0 || shape.n_embd <= 0 || shape.block_size <= 0 ||
        shape.vocab_size <= 0) {
        fatal("model file %s has a nonsensical shape %s", path, desc);
    }
    if (shape.n_embd % shape.n_head != 0) {
        fatal("model file %s: n_embd %d is not a multiple of n_head %d", path, shape.n_embd, shape.n_head);
    }
    // llm.c's older writers of version 3 left this 0; its padding was always to a multiple of 128.
    if (shape.padded_vocab == 0 && header[1] == LLMC_VERSION_FP32) shape.padded_vocab = padded_vocab_size(shape.vocab_size);
    if (shape.padded_vocab < shape.vocab_size) {
        fatal("model file %s: padded_vocab_size %d is smaller than vocab_size %d", path, shape.padded_vocab,
              shape.vocab_size);
    }
    *version = header[1];
    return shape;
}

static void check_file_size(const char *path, FILE *f, const ParamTable *table, int version) {
    struct stat st;
    if (fstat(fileno(f), &st) != 0) fatal("cannot read model file %s: %s", path, strerror(errno));
    long long expected = HEADER_BYTES + (long long)table->num_params * bytes_per_param(version);
    if ((long long)st.st_size != expected) {
        fatal("model file %s is %lld bytes, but its header (version %d, %zu parameters) needs %lld: truncated or "
              "not a GPT-2 model", path, (long long)st.st_size, version, table->num_params, expected);
    }
}

ModelShape llmc_model_read_shape(const char *path) {
    FILE *f = xfopen(path, "rb");
    int version;
    ModelShape shape = read_header(path, f, &version);
    // The header's shape must account for the file's size before anything trusts it.
    ParamTable table;
    param_table_init(&table, &shape);
    check_file_size(path, f, &table, version);
    fclose(f);
    return shape;
}

static void read_params(const char *path, FILE *f, float *params, size_t n, int version) {
    if (version == LLMC_VERSION_FP32) {
        if (fread(params, sizeof(float), n, f) != n) fatal("cannot read model file %s: short read", path);
        return;
    }
    bf16 *chunk = xmalloc(CONVERT_CHUNK * sizeof(bf16));
    for (size_t start = 0; start < n; start += CONVERT_CHUNK) {
        size_t count = n - start < CONVERT_CHUNK ? n - start : CONVERT_CHUNK;
        if (fread(chunk, sizeof(bf16), count, f) != count) fatal("cannot read model file %s: short read", path);
        for (size_t i = 0; i < count; i++) params[start + i] = bf16_to_f32(chunk[i]);
    }
    free(chunk);
}

void llmc_model_load(const char *path, const ParamTable *table, float *params) {
    FILE *f = xfopen(path, "rb");
    int version;
    ModelShape shape = read_header(path, f, &version);
    if (!shapes_equal(&shape, &table->shape)) {
        char file_desc[256], model_desc[256];
        format_shape(file_desc, sizeof file_desc, &shape);
        format_shape(model_desc, sizeof model_desc, &table->shape);
        fatal("model file %s has shape %s, but the model is %s", path, file_desc, model_desc);
    }
    check_file_size(path, f, table, version);
    read_params(path, f, params, table->num_params, version);
    fclose(f);
}

static void write_params_bf16(AtomicFile *out, const float *params, size_t n) {
    bf16 *chunk = xmalloc(CONVERT_CHUNK * sizeof(bf16));
    for (size_t start = 0; start < n; start += CONVERT_CHUNK) {
        size_t count = n - start < CONVERT_CHUNK ? n - start : CONVERT_CHUNK;
        for (size_t i = 0; i < count; i++) chunk[i] = bf16_from_f32(params[start + i]);
        atomic_file_write(out, chunk, count * sizeof(bf16));
    }
    free(chunk);
}

void llmc_model_save(const char *path, const ParamTable *table, const float *params, int version) {
    if (version != LLMC_VERSION_FP32 && version != LLMC_VERSION_BF16) {
        fatal("internal: llm.c model file version must be %d or %d, not %d", LLMC_VERSION_FP32, LLMC_VERSION_BF16,
              version);
    }
    const ModelShape *s = &table->shape;
    int32_t header[HEADER_INTS] = {0};
    header[0] = LLMC_MODEL_MAGIC;
    header[1] = version;
    header[2] = s->block_size;
    header[3] = s->vocab_size;
    header[4] = s->n_layer;
    header[5] = s->n_head;
    header[6] = s->n_embd;
    header[7] = s->padded_vocab;

    AtomicFile out;
    atomic_file_open(&out, path, "model file");
    atomic_file_write(&out, header, sizeof header);
    if (version == LLMC_VERSION_FP32) atomic_file_write(&out, params, table->num_params * sizeof(float));
    else write_params_bf16(&out, params, table->num_params);
    atomic_file_commit(&out);
}
