#include "run_identity.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "xxh64.h"

// The fingerprint covers the header and this many tokens: enough to tell shards apart without reading
// gigabytes at every start.
#define FINGERPRINT_TOKENS 4096

static uint64_t shard_head_hash(const char *path, int64_t num_tokens) {
    int64_t tokens = num_tokens < FINGERPRINT_TOKENS ? num_tokens : FINGERPRINT_TOKENS;
    size_t nbytes = (size_t)SHARD_HEADER_BYTES + (size_t)tokens * sizeof(uint16_t);
    unsigned char *head = xmalloc(nbytes);
    FILE *f = xfopen(path, "rb");
    if (fread(head, 1, nbytes, f) != nbytes) fatal("cannot read the first %zu bytes of %s: %s", nbytes, path, strerror(errno));
    fclose(f);
    uint64_t hash = xxh64(head, nbytes);
    free(head);
    return hash;
}

char *data_identity_text(const DataLoader *train) {
    int n = dataloader_num_shards(train);
    size_t cap = (size_t)n * 1200 + 1, used = 0;
    char *text = xmalloc(cap);
    text[0] = '\0';
    for (int i = 0; i < n; i++) {
        const char *path = dataloader_shard_path(train, i);
        const char *base = strrchr(path, '/');
        int64_t tokens = dataloader_shard_tokens(train, i);
        used += (size_t)snprintf(text + used, cap - used, "data.train shard %d = %s, %" PRId64 " tokens, head %016" PRIx64 "\n",
                                 i, base ? base + 1 : path, tokens, shard_head_hash(path, tokens));
    }
    return text;
}

char *run_identity_text(const Config *cfg, const DataLoader *train, int ranks) {
    char *config = config_identity_text(cfg);
    char *data = data_identity_text(train);
    size_t cap = strlen(config) + strlen(data) + 96;
    char *text = xmalloc(cap);
    snprintf(text, cap, "%sranks = %d\n%sconfig hash = %016" PRIx64 "\n", config, ranks, data,
             xxh64(config, strlen(config)));
    free(config);
    free(data);
    return text;
}

// The value of `key` in identity text (a copy in value), or 0 when the text has no such line.
static int find_value(const char *text, const char *key, char *value, size_t cap) {
    size_t key_len = strlen(key);
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > key_len + 3 && strncmp(line, key, key_len) == 0 && strncmp(line + key_len, " = ", 3) == 0) {
            snprintf(value, cap, "%.*s", (int)(len - key_len - 3), line + key_len + 3);
            return 1;
        }
        line += len + (end ? 1 : 0);
    }
    return 0;
}

// The key and value of one "key = value" line (copies); 0 when the line is not one.
static int split_line(const char *line, size_t len, char *key, size_t key_cap, char *value, size_t value_cap) {
    const char *eq = strstr(line, " = ");
    if (!eq || eq >= line + len) return 0;
    snprintf(key, key_cap, "%.*s", (int)(eq - line), line);
    snprintf(value, value_cap, "%.*s", (int)(line + len - eq - 3), eq + 3);
    return 1;
}

_Noreturn static void fail_mismatch(const char *checkpoint, const char *key, const char *saved, const char *now) {
    fatal("--resume: %s belongs to a run with %s = %s, but this run has %s = %s: a resumed run must be the same "
          "run (README, \"Runs and resume\", lists what may change)", checkpoint, key, saved, key, now);
}

void run_identity_check(const char *checkpoint, const char *saved, const char *current, const char *defaults) {
    char key[256], value[1200], other[1200];
    // Every recorded key must hold the same value now.
    for (const char *line = saved; *line;) {
        size_t len = strcspn(line, "\n");
        if (split_line(line, len, key, sizeof key, value, sizeof value)) {
            if (!find_value(current, key, other, sizeof other)) snprintf(other, sizeof other, "(absent)");
            if (strcmp(value, other) != 0 && strcmp(key, "config hash") != 0) fail_mismatch(checkpoint, key, value, other);
        }
        line += len + (line[len] ? 1 : 0);
    }
    // A key this run has that the checkpoint lacks (added to the program since) is the same run only at the
    // value in `defaults` (what runs did before the key existed); the config hash then differs by
    // construction and is not compared.
    int added_keys = 0;
    for (const char *line = current; *line;) {
        size_t len = strcspn(line, "\n");
        if (split_line(line, len, key, sizeof key, value, sizeof value) && !find_value(saved, key, other, sizeof other)) {
            char fallback[1200] = "(absent)";
            find_value(defaults, key, fallback, sizeof fallback);
            if (strcmp(value, fallback) != 0) fail_mismatch(checkpoint, key, "(absent: written before the key existed)", value);
            added_keys = 1;
        }
        line += len + (line[len] ? 1 : 0);
    }
    if (!added_keys && find_value(saved, "config hash", other, sizeof other)) {
        find_value(current, "config hash", value, sizeof value);
        if (strcmp(value, other) != 0) fail_mismatch(checkpoint, "config hash", other, value);
    }
}
