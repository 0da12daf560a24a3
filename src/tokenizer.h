// Decoding token ids to text with llm.c's tokenizer file (magic 20240328, version 2: header of 256 uint32
// with vocab size and end-of-text id, then per token a length byte and its bytes).
#ifndef LP_TOKENIZER_H
#define LP_TOKENIZER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOKENIZER_MAGIC 20240328

typedef struct Tokenizer Tokenizer;

// fatal() on a malformed file.
Tokenizer *tokenizer_load(const char *path);
void tokenizer_free(Tokenizer *tok);
int tokenizer_vocab_size(const Tokenizer *tok);
int tokenizer_eot(const Tokenizer *tok);
// The bytes of one token (NUL-terminated); "" for ids out of range.
const char *tokenizer_decode(const Tokenizer *tok, int id);

#ifdef __cplusplus
}
#endif

#endif
