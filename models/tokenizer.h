/* tokenizer.h - byte-level BPE tokenizer read from a Hugging Face tokenizer.json (Qwen2/Qwen3, and the
 * GPT-2 / Llama-3 files built the same way), encoding exactly as the `tokenizers` library does.
 *
 * Encoding (formats.md section 3; tokenizers' AddedVocabulary, NFC, Split, ByteLevel and BPE):
 *   1. added tokens (tokenizer.json "added_tokens", special or not) are matched in the raw text,
 *      leftmost-longest, and never split;
 *   2. each piece of text between them is normalised (NFC when the file names it);
 *   3. split by the pre-tokenizer regex read from the file (Split with a Regex or String pattern,
 *      behaviour Isolated; ByteLevel with use_regex = true uses the GPT-2 regex);
 *   4. each pre-token's UTF-8 bytes are mapped through the GPT-2 byte -> unicode table and
 *      merged by BPE, lowest merge rank first (leftmost on ties), then looked up in model.vocab.
 * No BOS/EOS is added (the Qwen post-processor adds none). Decoding maps tokens back through the
 * inverse byte table; added tokens are emitted verbatim; invalid UTF-8 becomes U+FFFD as in
 * tokenizers (String::from_utf8_lossy).
 *
 * A loaded tokenizer is immutable apart from an internal, locked cache: encode and decode may run on
 * several threads at once. */
#ifndef LU_TOKENIZER_H
#define LU_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct lu_tokenizer lu_tokenizer;

/* Reads and validates a tokenizer.json; NULL + error naming the file and the key at fault. */
lu_tokenizer *lu_tokenizer_load(const char *tokenizer_json_path);
/* Same from JSON text in memory; `name` stands for the file in error messages. */
lu_tokenizer *lu_tokenizer_parse(const char *json, size_t len, const char *name);
void lu_tokenizer_free(lu_tokenizer *t);

/* The same tokenizer from its parts (e.g. a GGUF file's tokenizer.ggml.* metadata), as if read from
 * the tokenizer.json they describe: model.vocab = every token, added_tokens = those of kind ADDED or
 * SPECIAL, pre_tokenizer = Split (Isolated) by each regex in order, then ByteLevel (with the GPT-2
 * regex when gpt2_regex), normalizer NFC when nfc, decoder ByteLevel. Same validation and errors
 * as lu_tokenizer_parse, naming `name`. */
typedef enum lu_token_kind { LU_TOKEN_NORMAL = 0, LU_TOKEN_ADDED, LU_TOKEN_SPECIAL } lu_token_kind;

typedef struct lu_tokenizer_parts {
    const char *name;
    int32_t n_tokens;
    const char *const *tokens;    /* [n_tokens] by id: byte-mapped for vocabulary tokens, content for added ones */
    const uint8_t *kind;          /* [n_tokens] lu_token_kind, or NULL: all normal */
    int64_t n_merges;
    const char *const *merges;    /* "left right", by rank */
    int n_regex;
    const char *const *regex;
    bool gpt2_regex;
    bool nfc;
} lu_tokenizer_parts;

lu_tokenizer *lu_tokenizer_from_parts(const lu_tokenizer_parts *parts);
/* That tokenizer.json as text, complete enough for Hugging Face tokenizers to load (caller frees). */
char *lu_tokenizer_parts_json(const lu_tokenizer_parts *parts);

/* Encodes len bytes of UTF-8 text into a new array *ids (caller frees; NULL when *n is 0).
 * Invalid UTF-8 is an error naming the byte offset. */
lu_status lu_tokenizer_encode(const lu_tokenizer *t, const char *text, size_t len, int32_t **ids, int64_t *n);
/* Same, with (*starts)[i] = byte offset in `text` where token i begins (caller frees). Exact where NFC
 * leaves the text unchanged; a token from a stretch that NFC rewrote (a character with its combining
 * marks) gets that stretch's start. Used to turn byte ranges (chat_template.h) into token masks. */
lu_status lu_tokenizer_encode_offsets(const lu_tokenizer *t, const char *text, size_t len, int32_t **ids,
                                      int64_t **starts, int64_t *n);

/* Decodes ids to a new NUL-terminated UTF-8 string (caller frees); skip_special drops added tokens
 * marked special. NULL + error for an id outside the vocabulary. */
char *lu_tokenizer_decode(const lu_tokenizer *t, const int32_t *ids, int64_t n, bool skip_special);

/* Id of a token string (vocabulary or added token, as written in tokenizer.json), -1 if absent. */
int32_t lu_tokenizer_token_id(const lu_tokenizer *t, const char *token);
/* Token string of an id (byte-mapped form for vocabulary tokens), NULL if no token has this id. */
const char *lu_tokenizer_id_token(const lu_tokenizer *t, int32_t id);
/* True for added tokens marked "special" (skipped by decode with skip_special). */
bool lu_tokenizer_is_special(const lu_tokenizer *t, int32_t id);
/* Largest id + 1, added tokens included (151,669 for Qwen3). */
int64_t lu_tokenizer_vocab_size(const lu_tokenizer *t);

/* Streaming decode for generation: push ids one at a time and print only whole UTF-8 characters,
 * holding back the first bytes of a character whose remaining bytes come with later tokens. */
typedef struct lu_tokenizer_stream lu_tokenizer_stream;
lu_tokenizer_stream *lu_tokenizer_stream_new(const lu_tokenizer *t, bool skip_special);
/* Text completed by this id (possibly ""), valid until the next call on the stream; NULL + error for
 * an id outside the vocabulary. */
const char *lu_tokenizer_stream_push(lu_tokenizer_stream *s, int32_t id);
/* Bytes still held back, as U+FFFD (the sequence was cut short); valid until the next call. */
const char *lu_tokenizer_stream_flush(lu_tokenizer_stream *s);
void lu_tokenizer_stream_free(lu_tokenizer_stream *s);

#endif
