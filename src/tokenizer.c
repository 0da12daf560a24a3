#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

#define TOKENIZER_VERSION 2
#define TOKENIZER_HEADER_INTS 256

// A byte-level tokenizer has ids 0..255 for the bytes and at most this many special tokens after them.
#define BYTE_LEVEL_MAX_SPECIALS 256

struct Tokenizer {
    int vocab_size;
    int eot;
    int byte_level;  // ids 0..255 are the bytes 0..255, and there are few others (tokenizer_is_byte_level)
    char *text;      // every token's bytes, each followed by a NUL
    size_t *offset;  // where token i starts in `text`
};

Tokenizer *tokenizer_load(const char *path) {
    size_t nbytes;
    unsigned char *data = (unsigned char *)read_whole_file(path, &nbytes);
    uint32_t header[TOKENIZER_HEADER_INTS];
    if (nbytes < sizeof header) {
        fatal("%s is too short to be a tokenizer file: %zu bytes, the header alone is %zu", path, nbytes, sizeof header);
    }
    memcpy(header, data, sizeof header);
    if (header[0] != TOKENIZER_MAGIC) fatal("%s is not a tokenizer file: magic %u, expected %d", path, header[0], TOKENIZER_MAGIC);
    if (header[1] != TOKENIZER_VERSION) fatal("%s has tokenizer version %u, expected %d", path, header[1], TOKENIZER_VERSION);
    uint32_t vocab_size = header[2], eot = header[3];
    if (vocab_size == 0 || vocab_size > 65536) fatal("%s: vocab size %u is not in 1..65536", path, vocab_size);
    if (eot >= vocab_size) fatal("%s: end-of-text id %u is not below the vocab size %u", path, eot, vocab_size);

    Tokenizer *tok = xcalloc(1, sizeof(Tokenizer));
    tok->vocab_size = (int)vocab_size;
    tok->eot = (int)eot;
    tok->offset = xmalloc(vocab_size * sizeof(size_t));
    // Each token costs its length byte in the file and a NUL here, so the file size bounds the text.
    tok->text = xmalloc(nbytes);
    size_t at = sizeof header, text_len = 0;
    tok->byte_level = vocab_size >= 256 && vocab_size <= 256 + BYTE_LEVEL_MAX_SPECIALS;
    for (uint32_t id = 0; id < vocab_size; id++) {
        if (at >= nbytes) fatal("%s is truncated: it ends before token %u of %u", path, id, vocab_size);
        size_t len = data[at++];
        if (at + len > nbytes) fatal("%s is truncated: token %u needs %zu bytes at byte offset %zu", path, id, len, at);
        if (id < 256 && (len != 1 || data[at] != id)) tok->byte_level = 0;
        tok->offset[id] = text_len;
        memcpy(tok->text + text_len, data + at, len);
        text_len += len;
        tok->text[text_len++] = '\0';
        at += len;
    }
    if (at != nbytes) fatal("%s has %zu unexpected bytes after its %u tokens", path, nbytes - at, vocab_size);
    free(data);
    return tok;
}

void tokenizer_free(Tokenizer *tok) {
    if (!tok) return;
    free(tok->text);
    free(tok->offset);
    free(tok);
}

int tokenizer_vocab_size(const Tokenizer *tok) {
    return tok->vocab_size;
}

int tokenizer_eot(const Tokenizer *tok) {
    return tok->eot;
}

const char *tokenizer_decode(const Tokenizer *tok, int id) {
    if (id < 0 || id >= tok->vocab_size) return "";
    return tok->text + tok->offset[id];
}

char *tokenizer_decode_all(const Tokenizer *tok, const int *ids, int n) {
    size_t len = 0;
    for (int i = 0; i < n; i++) len += strlen(tokenizer_decode(tok, ids[i]));
    char *text = xmalloc(len + 1);
    text[0] = '\0';
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        const char *piece = tokenizer_decode(tok, ids[i]);
        size_t piece_len = strlen(piece);
        memcpy(text + at, piece, piece_len + 1);
        at += piece_len;
    }
    return text;
}

int tokenizer_is_byte_level(const Tokenizer *tok) {
    return tok->byte_level;
}

void tokenizer_encode_bytes(const Tokenizer *tok, const char *text, int *ids) {
    if (!tok->byte_level) fatal("internal: encoding text with a tokenizer that is not byte-level");
    for (size_t i = 0; text[i]; i++) ids[i] = (unsigned char)text[i];
}
