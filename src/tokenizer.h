// Decoding token ids to text (and encoding text for byte-level tokenizers) with llm.c's tokenizer file
// (magic 20240328, version 2: header of 256 uint32 with vocab size and end-of-text id, then per token a
// length byte and its bytes).
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
// The text of ids (n), the tokens' bytes one after the other; the caller frees it.
char *tokenizer_decode_all(const Tokenizer *tok, const int *ids, int n);
// A byte-level tokenizer (scripts/prepare_data.py --tokenizer byte): ids 0..255 are the bytes themselves,
// and the few ids after them special tokens (end-of-text). Only these encode text here; GPT-2's BPE needs
// scripts/encode_prompt.py.
int tokenizer_is_byte_level(const Tokenizer *tok);
// The bytes of text as ids (strlen(text) of them); the tokenizer must be byte-level.
void tokenizer_encode_bytes(const Tokenizer *tok, const char *text, int *ids);

#ifdef __cplusplus
}
#endif

#endif
