// Data loader and tokenizer: batches against known tokens, rank slicing, epoch wrap, shuffle determinism,
// position/seek, and the error paths (each run in a forked child, whose exit status and message we check).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data.h"
#include "testing.h"
#include "tokenizer.h"

#define MAX_FILES 64
#define VOCAB 65536
#define TOKENS_PER_SHARD_ID 1000  // shard s holds tokens s*1000 + k, so a token says where it came from

static char temp_dir[] = "/tmp/lpgpt_test_data_XXXXXX";
static char *created_files[MAX_FILES];
static int num_created;

static const char *temp_path(const char *name) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", temp_dir, name);
    return path;
}

static void remember_file(const char *path) {
    for (int i = 0; i < num_created; i++) {
        if (strcmp(created_files[i], path) == 0) return;
    }
    if (num_created == MAX_FILES) {
        fprintf(stderr, "test_data: too many temporary files\n");
        exit(2);
    }
    created_files[num_created++] = strdup(path);
}

static void truncate_to(const char *path, long size) {
    if (truncate(path, size) != 0) {
        perror(path);
        exit(2);
    }
}

// Writes a shard whose header says `header_count` tokens while the file holds `tokens[0..n)`.
static void write_raw_shard(const char *name, int32_t magic, int32_t version, int32_t header_count,
                            const uint16_t *tokens, size_t n) {
    const char *path = temp_path(name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    int32_t header[SHARD_HEADER_INTS] = {magic, version, header_count};
    fwrite(header, sizeof header, 1, f);
    fwrite(tokens, sizeof(uint16_t), n, f);
    fclose(f);
    remember_file(path);
}

// A well-formed shard with tokens id*1000 + k for k in [0, n).
static void write_counting_shard(const char *name, int id, size_t n) {
    uint16_t *tokens = malloc(n * sizeof(uint16_t));
    for (size_t k = 0; k < n; k++) tokens[k] = (uint16_t)(id * TOKENS_PER_SHARD_ID + k);
    write_raw_shard(name, SHARD_MAGIC, SHARD_VERSION, (int32_t)n, tokens, n);
    free(tokens);
}

static const char *pattern_for(const char *glob_name) {
    static char pattern[512];
    snprintf(pattern, sizeof pattern, "%s/%s", temp_dir, glob_name);
    return pattern;
}

// One shard of 100 tokens, B=2, T=4: batches at positions 0, 8, ..., 88, then epoch 1 starts over.
static void test_batches_and_epoch_wrap(void) {
    write_counting_shard("single_000.bin", 0, 100);
    DataLoader *loader = dataloader_open(pattern_for("single_*.bin"), 2, 4, 0, 1, VOCAB, 1, 0);
    CHECK(dataloader_num_shards(loader) == 1, "num_shards %d", dataloader_num_shards(loader));
    CHECK(dataloader_total_tokens(loader) == 100, "total %zu", dataloader_total_tokens(loader));
    int inputs[8], targets[8];
    for (int step = 0; step < 12; step++) {
        DataPosition pos = dataloader_position(loader);
        CHECK(pos.epoch == 0 && pos.shard == 0 && pos.position == (uint64_t)step * 8, "step %d at %llu", step,
              (unsigned long long)pos.position);
        dataloader_next(loader, inputs, targets);
        for (int i = 0; i < 8; i++) {
            CHECK(inputs[i] == step * 8 + i, "step %d input %d is %d", step, i, inputs[i]);
            CHECK(targets[i] == step * 8 + i + 1, "step %d target %d is %d", step, i, targets[i]);
        }
    }
    DataPosition wrapped = dataloader_position(loader);
    CHECK(wrapped.epoch == 1 && wrapped.shard == 0 && wrapped.position == 0, "after the last batch: epoch %llu pos %llu",
          (unsigned long long)wrapped.epoch, (unsigned long long)wrapped.position);
    dataloader_next(loader, inputs, targets);
    CHECK(inputs[0] == 0 && targets[7] == 8, "epoch 1 starts over: %d %d", inputs[0], targets[7]);
    dataloader_free(loader);
}

// Sorted order without shuffle: all of shard 0's batches, then shard 1's, then shard 2's.
static void test_sorted_shards(void) {
    // Written out of order: the loader must sort by name.
    write_counting_shard("sorted_002.bin", 2, 30);
    write_counting_shard("sorted_000.bin", 0, 30);
    write_counting_shard("sorted_001.bin", 1, 30);
    DataLoader *loader = dataloader_open(pattern_for("sorted_*.bin"), 1, 8, 0, 1, VOCAB, 1, 0);
    CHECK(dataloader_total_tokens(loader) == 90, "total %zu", dataloader_total_tokens(loader));
    int inputs[8], targets[8];
    // 30 tokens hold batches at 0, 8, 16 (16+9 <= 30); 24+9 > 30 moves on.
    for (int shard = 0; shard < 3; shard++) {
        for (int b = 0; b < 3; b++) {
            dataloader_next(loader, inputs, targets);
            int first = shard * TOKENS_PER_SHARD_ID + b * 8;
            CHECK(inputs[0] == first && targets[7] == first + 8, "shard %d batch %d: %d..%d", shard, b, inputs[0],
                  targets[7]);
        }
    }
    CHECK(dataloader_position(loader).epoch == 1, "epoch %llu", (unsigned long long)dataloader_position(loader).epoch);
    dataloader_free(loader);
}

// Two ranks with B rows each read exactly what one rank with 2B rows reads.
static void test_rank_slicing(void) {
    write_counting_shard("ranks_000.bin", 0, 200);
    write_counting_shard("ranks_001.bin", 1, 150);
    int B = 2, T = 5;
    DataLoader *whole = dataloader_open(pattern_for("ranks_*.bin"), 2 * B, T, 0, 1, VOCAB, 7, 1);
    DataLoader *rank0 = dataloader_open(pattern_for("ranks_*.bin"), B, T, 0, 2, VOCAB, 7, 1);
    DataLoader *rank1 = dataloader_open(pattern_for("ranks_*.bin"), B, T, 1, 2, VOCAB, 7, 1);
    int in_whole[20], tg_whole[20], in_r[2][10], tg_r[2][10];
    for (int step = 0; step < 40; step++) {  // several epochs
        dataloader_next(whole, in_whole, tg_whole);
        dataloader_next(rank0, in_r[0], tg_r[0]);
        dataloader_next(rank1, in_r[1], tg_r[1]);
        for (int i = 0; i < 20; i++) {
            int r = i / 10, j = i % 10;
            CHECK(in_whole[i] == in_r[r][j] && tg_whole[i] == tg_r[r][j], "step %d element %d: %d/%d vs rank %d %d/%d",
                  step, i, in_whole[i], tg_whole[i], r, in_r[r][j], tg_r[r][j]);
        }
    }
    DataPosition a = dataloader_position(whole), b = dataloader_position(rank1);
    CHECK(a.epoch == b.epoch && a.shard == b.shard && a.position == b.position, "positions agree");
    dataloader_free(whole);
    dataloader_free(rank0);
    dataloader_free(rank1);
}

#define NUM_SHUFFLE_SHARDS 8
#define SHUFFLE_EPOCHS 4

// Records, for each epoch, the shard ids in the order visited; each shard holds exactly one batch.
static void shard_orders(uint64_t seed, int shuffle, int orders[SHUFFLE_EPOCHS][NUM_SHUFFLE_SHARDS]) {
    DataLoader *loader = dataloader_open(pattern_for("shuffle_*.bin"), 1, 16, 0, 1, VOCAB, seed, shuffle);
    int inputs[16], targets[16];
    for (int epoch = 0; epoch < SHUFFLE_EPOCHS; epoch++) {
        for (int i = 0; i < NUM_SHUFFLE_SHARDS; i++) {
            dataloader_next(loader, inputs, targets);
            orders[epoch][i] = inputs[0] / TOKENS_PER_SHARD_ID;
        }
    }
    dataloader_free(loader);
}

static int is_permutation(const int *order, int n) {
    int seen[NUM_SHUFFLE_SHARDS] = {0};
    for (int i = 0; i < n; i++) {
        if (order[i] < 0 || order[i] >= n || seen[order[i]]++) return 0;
    }
    return 1;
}

static void test_shuffle(void) {
    for (int s = 0; s < NUM_SHUFFLE_SHARDS; s++) {
        char name[64];
        snprintf(name, sizeof name, "shuffle_%03d.bin", s);
        write_counting_shard(name, s, 20);
    }
    int a[SHUFFLE_EPOCHS][NUM_SHUFFLE_SHARDS], b[SHUFFLE_EPOCHS][NUM_SHUFFLE_SHARDS];
    int other[SHUFFLE_EPOCHS][NUM_SHUFFLE_SHARDS], sorted[SHUFFLE_EPOCHS][NUM_SHUFFLE_SHARDS];
    shard_orders(42, 1, a);
    shard_orders(42, 1, b);
    shard_orders(43, 1, other);
    shard_orders(42, 0, sorted);
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed gives the same orders");
    CHECK(memcmp(a, other, sizeof a) != 0, "different seeds give different orders");
    int epochs_differ = 0, shuffled = 0;
    for (int e = 0; e < SHUFFLE_EPOCHS; e++) {
        CHECK(is_permutation(a[e], NUM_SHUFFLE_SHARDS), "epoch %d visits every shard once", e);
        if (e > 0 && memcmp(a[e], a[0], sizeof a[0]) != 0) epochs_differ = 1;
        for (int i = 0; i < NUM_SHUFFLE_SHARDS; i++) {
            CHECK(sorted[e][i] == i, "unshuffled epoch %d position %d is shard %d", e, i, sorted[e][i]);
            if (a[e][i] != i) shuffled = 1;
        }
    }
    CHECK(epochs_differ, "each epoch draws a new order");
    CHECK(shuffled, "shuffle changes the order");
}

#define SLOT_EPOCHS 3
#define SLOTS_0 10  // shard 0: 81 tokens = 10 slots of 8 tokens and the last target
#define SLOTS_1 7   // shard 1: 60 tokens = 7 slots (3 tokens left over, never read)

// The batches of SLOT_EPOCHS epochs over shards 0 and 1 at B = 1, T = 8, as (shard, slot) = (token / 1000,
// token % 1000 / 8) of each batch's first token.
static void slot_orders(uint64_t seed, int shuffle, int shards[][SLOTS_0 + SLOTS_1], int slots[][SLOTS_0 + SLOTS_1]) {
    DataLoader *loader = dataloader_open(pattern_for("slots_*.bin"), 1, 8, 0, 1, VOCAB, seed, shuffle);
    int inputs[8], targets[8];
    for (int e = 0; e < SLOT_EPOCHS; e++) {
        for (int i = 0; i < SLOTS_0 + SLOTS_1; i++) {
            CHECK(dataloader_position(loader).epoch == (uint64_t)e, "epoch %d batch %d", e, i);
            dataloader_next(loader, inputs, targets);
            shards[e][i] = inputs[0] / TOKENS_PER_SHARD_ID;
            slots[e][i] = inputs[0] % TOKENS_PER_SHARD_ID / 8;
            // A batch is one whole slot: 8 consecutive tokens, each target the token after its input.
            CHECK(inputs[0] % TOKENS_PER_SHARD_ID % 8 == 0, "batch starts at token %d, not a slot", inputs[0]);
            for (int t = 0; t < 8; t++) {
                CHECK(inputs[t] == inputs[0] + t && targets[t] == inputs[0] + t + 1, "epoch %d batch %d token %d", e, i, t);
            }
        }
    }
    dataloader_free(loader);
}

// data.shuffle: within each shard the batch slots come in a new order every epoch, each slot exactly once;
// the same seed repeats the order, another seed changes it; without shuffle, front to back.
static void test_slot_shuffle(void) {
    write_counting_shard("slots_000.bin", 0, 81);
    write_counting_shard("slots_001.bin", 1, 60);
    int sh[SLOT_EPOCHS][SLOTS_0 + SLOTS_1], sl[SLOT_EPOCHS][SLOTS_0 + SLOTS_1];
    int sh2[SLOT_EPOCHS][SLOTS_0 + SLOTS_1], sl2[SLOT_EPOCHS][SLOTS_0 + SLOTS_1];
    int sh3[SLOT_EPOCHS][SLOTS_0 + SLOTS_1], sl3[SLOT_EPOCHS][SLOTS_0 + SLOTS_1];
    slot_orders(42, 1, sh, sl);
    slot_orders(42, 1, sh2, sl2);
    CHECK(memcmp(sh, sh2, sizeof sh) == 0 && memcmp(sl, sl2, sizeof sl) == 0, "same seed, same batches");
    slot_orders(43, 1, sh3, sl3);
    CHECK(memcmp(sl, sl3, sizeof sl) != 0, "another seed, other slot orders");
    int moved = 0, epochs_differ = 0;
    for (int e = 0; e < SLOT_EPOCHS; e++) {
        int seen[2][SLOTS_0] = {{0}};
        for (int i = 0; i < SLOTS_0 + SLOTS_1; i++) {
            int shard = sh[e][i], slot = sl[e][i];
            int in_range = (shard == 0 && slot < SLOTS_0) || (shard == 1 && slot < SLOTS_1);
            CHECK(in_range, "epoch %d batch %d: shard %d slot %d does not exist", e, i, shard, slot);
            if (in_range) seen[shard][slot]++;
            // Shards are read one after the other: a shard's batches are consecutive.
            CHECK(i == 0 || shard == sh[e][i - 1] || i == (sh[e][0] == 0 ? SLOTS_0 : SLOTS_1),
                  "epoch %d batch %d: shards interleave", e, i);
            int index_in_shard = shard == sh[e][0] ? i : i - (sh[e][0] == 0 ? SLOTS_0 : SLOTS_1);
            if (slot != index_in_shard) moved = 1;
        }
        for (int s = 0; s < 2; s++)
            for (int k = 0; k < (s == 0 ? SLOTS_0 : SLOTS_1); k++)
                CHECK(seen[s][k] == 1, "epoch %d: shard %d slot %d read %d times", e, s, k, seen[s][k]);
        if (e > 0 && memcmp(sl[e], sl[0], sizeof sl[0]) != 0) epochs_differ = 1;
    }
    CHECK(moved, "shuffle leaves every slot in place");
    CHECK(epochs_differ, "every epoch has the same slot order");
    slot_orders(42, 0, sh3, sl3);
    for (int e = 0; e < SLOT_EPOCHS; e++)
        for (int i = 0; i < SLOTS_0 + SLOTS_1; i++) {
            int shard = i < SLOTS_0 ? 0 : 1, slot = i < SLOTS_0 ? i : i - SLOTS_0;
            CHECK(sh3[e][i] == shard && sl3[e][i] == slot, "unshuffled epoch %d batch %d: shard %d slot %d", e, i,
                  sh3[e][i], sl3[e][i]);
        }
}

// Seeking to a saved position reproduces the following batches, across shard and epoch boundaries.
static void test_position_and_seek(void) {
    const char *pattern = pattern_for("ranks_*.bin");  // 200 + 150 tokens, written by test_rank_slicing
    int B = 3, T = 7, n = B * T;
    int inputs[21], targets[21], expected_in[50][21], expected_tg[50][21];
    for (int save_at = 0; save_at < 30; save_at += 7) {
        DataLoader *first = dataloader_open(pattern, B, T, 0, 1, VOCAB, 99, 1);
        for (int s = 0; s < save_at; s++) dataloader_next(first, inputs, targets);
        DataPosition saved = dataloader_position(first);
        for (int s = 0; s < 50; s++) dataloader_next(first, expected_in[s], expected_tg[s]);
        dataloader_free(first);

        DataLoader *resumed = dataloader_open(pattern, B, T, 0, 1, VOCAB, 99, 1);
        dataloader_seek(resumed, saved);
        DataPosition now = dataloader_position(resumed);
        CHECK(now.epoch == saved.epoch && now.shard == saved.shard && now.position == saved.position,
              "seek keeps the position exactly");
        for (int s = 0; s < 50; s++) {
            dataloader_next(resumed, inputs, targets);
            CHECK(memcmp(inputs, expected_in[s], n * sizeof(int)) == 0 &&
                      memcmp(targets, expected_tg[s], n * sizeof(int)) == 0,
                  "resumed at step %d: batch %d differs", save_at, s);
        }
        // reset goes back to the very first batch.
        dataloader_reset(resumed);
        DataLoader *fresh = dataloader_open(pattern, B, T, 0, 1, VOCAB, 99, 1);
        int fresh_in[21], fresh_tg[21];
        dataloader_next(resumed, inputs, targets);
        dataloader_next(fresh, fresh_in, fresh_tg);
        CHECK(memcmp(inputs, fresh_in, sizeof inputs) == 0, "reset returns to the first batch");
        dataloader_free(fresh);
        dataloader_free(resumed);
    }
}

static void write_tokenizer(const char *name, uint32_t magic, uint32_t version, uint32_t vocab, uint32_t eot,
                            int drop_last_bytes) {
    const char *path = temp_path(name);
    FILE *f = fopen(path, "wb");
    uint32_t header[256] = {magic, version, vocab, eot};
    fwrite(header, sizeof header, 1, f);
    long size = (long)sizeof header;
    for (uint32_t i = 0; i < vocab; i++) {
        char numbered[32];
        snprintf(numbered, sizeof numbered, "t%u", i);
        const char *piece = i == eot ? "<|endoftext|>" : numbered;
        unsigned char len = (unsigned char)strlen(piece);
        fwrite(&len, 1, 1, f);
        fwrite(piece, 1, len, f);
        size += 1 + len;
    }
    fclose(f);
    if (drop_last_bytes) truncate_to(path, size - drop_last_bytes);
    remember_file(path);
}

static void test_tokenizer(void) {
    write_tokenizer("tok.bin", TOKENIZER_MAGIC, 2, 300, 299, 0);
    Tokenizer *tok = tokenizer_load(temp_path("tok.bin"));
    CHECK(tokenizer_vocab_size(tok) == 300, "vocab %d", tokenizer_vocab_size(tok));
    CHECK(tokenizer_eot(tok) == 299, "eot %d", tokenizer_eot(tok));
    CHECK(strcmp(tokenizer_decode(tok, 0), "t0") == 0, "token 0 is '%s'", tokenizer_decode(tok, 0));
    CHECK(strcmp(tokenizer_decode(tok, 123), "t123") == 0, "token 123 is '%s'", tokenizer_decode(tok, 123));
    CHECK(strcmp(tokenizer_decode(tok, 299), "<|endoftext|>") == 0, "eot is '%s'", tokenizer_decode(tok, 299));
    CHECK(strcmp(tokenizer_decode(tok, 300), "") == 0, "out of range decodes to ''");
    CHECK(strcmp(tokenizer_decode(tok, -1), "") == 0, "negative decodes to ''");
    tokenizer_free(tok);
}

// scripts/prepare_data.py's byte-level tokenizer: ids 0..255 the bytes, 256 end-of-text.
static void write_byte_tokenizer(const char *name, int swap_two) {
    FILE *f = fopen(temp_path(name), "wb");
    uint32_t header[256] = {TOKENIZER_MAGIC, 2, 257, 256};
    fwrite(header, sizeof header, 1, f);
    for (int i = 0; i < 256; i++) {
        unsigned char piece[2] = {1, (unsigned char)i};
        if (swap_two && i < 2) piece[1] = (unsigned char)(1 - i);  // GPT-2-like: single bytes, not in id order
        fwrite(piece, 1, 2, f);
    }
    unsigned char len = 13;
    fwrite(&len, 1, 1, f);
    fwrite("<|endoftext|>", 1, 13, f);
    fclose(f);
    remember_file(temp_path(name));
}

// Byte-level tokenizers encode text as its bytes; a numbered vocabulary or bytes out of id order do not count.
static void test_byte_level_tokenizer(void) {
    write_byte_tokenizer("bytes.bin", 0);
    Tokenizer *tok = tokenizer_load(temp_path("bytes.bin"));
    CHECK(tokenizer_is_byte_level(tok), "the byte tokenizer is not byte-level");
    int ids[8];
    tokenizer_encode_bytes(tok, "Hi \xc3\xa9\n", ids);
    int expected[6] = {72, 105, 32, 0xc3, 0xa9, 10};
    CHECK(memcmp(ids, expected, sizeof expected) == 0, "encoded %d %d %d %d %d %d", ids[0], ids[1], ids[2], ids[3],
          ids[4], ids[5]);
    int text_ids[7] = {72, 105, 32, 0xc3, 0xa9, 10, 256};
    char *text = tokenizer_decode_all(tok, text_ids, 7);
    CHECK(strcmp(text, "Hi \xc3\xa9\n<|endoftext|>") == 0, "decoded '%s'", text);
    free(text);
    tokenizer_free(tok);
    write_byte_tokenizer("bytes_swapped.bin", 1);
    tok = tokenizer_load(temp_path("bytes_swapped.bin"));
    CHECK(!tokenizer_is_byte_level(tok), "bytes out of id order count as byte-level");
    tokenizer_free(tok);
    tok = tokenizer_load(temp_path("tok.bin"));  // t0, t1, ...: test_tokenizer's
    CHECK(!tokenizer_is_byte_level(tok), "a numbered vocabulary counts as byte-level");
    tokenizer_free(tok);
}

static void open_vocab_257(void *pattern) {
    dataloader_open(pattern, 2, 4, 0, 1, 257, 1, 1);
}

static void open_big_batch(void *pattern) {
    dataloader_open(pattern, 4, 16, 0, 2, VOCAB, 1, 1);
}

static void load_tokenizer(void *path) {
    tokenizer_load(path);
}

// Expects `action(arg)` to exit with status 1 and a message containing each of the given strings.
static void expect_error(void (*action)(void *), const char *arg, const char *what, const char *needles[]) {
    ChildResult r = run_in_child(action, (void *)arg);
    CHECK(r.exit_status == 1, "%s: exit status %d, message: %s", what, r.exit_status, r.message);
    CHECK(strstr(r.message, "train_gpt: error: ") != NULL, "%s: message is '%s'", what, r.message);
    for (int i = 0; needles[i]; i++) {
        CHECK(strstr(r.message, needles[i]) != NULL, "%s: message '%s' lacks '%s'", what, r.message, needles[i]);
    }
}

static void test_errors(void) {
    uint16_t tokens[120];
    for (int i = 0; i < 120; i++) tokens[i] = (uint16_t)i;

    char no_match[512];
    snprintf(no_match, sizeof no_match, "%s", pattern_for("missing_*.bin"));
    expect_error(open_vocab_257, no_match, "no match", (const char *[]){no_match, NULL});

    char path[512];
    write_raw_shard("magic_000.bin", 12345, SHARD_VERSION, 100, tokens, 100);
    snprintf(path, sizeof path, "%s", temp_path("magic_000.bin"));
    expect_error(open_vocab_257, path, "wrong magic", (const char *[]){path, "magic 12345", NULL});

    write_raw_shard("version_000.bin", SHARD_MAGIC, 3, 100, tokens, 100);
    snprintf(path, sizeof path, "%s", temp_path("version_000.bin"));
    expect_error(open_vocab_257, path, "wrong version", (const char *[]){path, "version 3", NULL});

    // 100 tokens announced: 1024 + 200 = 1224 bytes expected.
    write_raw_shard("short_000.bin", SHARD_MAGIC, SHARD_VERSION, 100, tokens, 90);
    snprintf(path, sizeof path, "%s", temp_path("short_000.bin"));
    expect_error(open_vocab_257, path, "truncated", (const char *[]){path, "1224", "1204", "truncated", NULL});

    write_raw_shard("long_000.bin", SHARD_MAGIC, SHARD_VERSION, 100, tokens, 110);
    snprintf(path, sizeof path, "%s", temp_path("long_000.bin"));
    expect_error(open_vocab_257, path, "oversized", (const char *[]){path, "1224", "1244", NULL});

    write_raw_shard("header_000.bin", SHARD_MAGIC, SHARD_VERSION, 0, tokens, 0);
    truncate_to(temp_path("header_000.bin"), 100);
    snprintf(path, sizeof path, "%s", temp_path("header_000.bin"));
    expect_error(open_vocab_257, path, "no header", (const char *[]){path, "100 bytes", NULL});

    // Token 37 is 300 >= 257, at byte 1024 + 2*37 = 1098. An earlier good shard must not hide it.
    write_counting_shard("vocab_000.bin", 0, 100);
    uint16_t bad[100];
    for (int i = 0; i < 100; i++) bad[i] = (uint16_t)(i % 200);
    bad[37] = 300;
    write_raw_shard("vocab_001.bin", SHARD_MAGIC, SHARD_VERSION, 100, bad, 100);
    snprintf(path, sizeof path, "%s", temp_path("vocab_001.bin"));
    expect_error(open_vocab_257, pattern_for("vocab_*.bin"), "token >= vocab",
                 (const char *[]){path, "byte offset 1098", "token 300", "vocab size 257", NULL});

    // One step of 2 ranks x 4 rows x 16 tokens needs 129 tokens; the shard has 100.
    write_counting_shard("small_000.bin", 0, 100);
    snprintf(path, sizeof path, "%s", temp_path("small_000.bin"));
    expect_error(open_big_batch, path, "shard smaller than a step", (const char *[]){path, "100 tokens", "129", NULL});

    write_tokenizer("tok_magic.bin", 1234, 2, 10, 9, 0);
    snprintf(path, sizeof path, "%s", temp_path("tok_magic.bin"));
    expect_error(load_tokenizer, path, "tokenizer magic", (const char *[]){path, "magic 1234", NULL});

    write_tokenizer("tok_short.bin", TOKENIZER_MAGIC, 2, 10, 9, 3);
    snprintf(path, sizeof path, "%s", temp_path("tok_short.bin"));
    expect_error(load_tokenizer, path, "tokenizer truncated", (const char *[]){path, "truncated", NULL});

    write_tokenizer("tok_version.bin", TOKENIZER_MAGIC, 1, 10, 9, 0);
    snprintf(path, sizeof path, "%s", temp_path("tok_version.bin"));
    expect_error(load_tokenizer, path, "tokenizer version", (const char *[]){path, "version 1", NULL});

    snprintf(path, sizeof path, "%s", temp_path("no_such_tokenizer.bin"));
    expect_error(load_tokenizer, path, "tokenizer missing", (const char *[]){path, NULL});
}

static void remove_temp_files(void) {
    for (int i = 0; i < num_created; i++) {
        unlink(created_files[i]);
        free(created_files[i]);
    }
    rmdir(temp_dir);
}

int main(void) {
    if (!mkdtemp(temp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_batches_and_epoch_wrap();
    test_sorted_shards();
    test_rank_slicing();
    test_shuffle();
    test_slot_shuffle();
    test_position_and_seek();
    test_tokenizer();
    test_byte_level_tokenizer();
    test_errors();
    remove_temp_files();
    return test_summary("test_data");
}
