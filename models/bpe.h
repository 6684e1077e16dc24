/* bpe.h - subword token sets for CTC targets: a byte-pair-encoding trainer over transcripts that
 * produces SentencePiece-like units (asr.md 7.2: `--model_type=bpe --character_coverage=1.0`),
 * its encoder and decoder, and the character token set.
 *
 * As SentencePiece BPE: text is NFKC-normalised and its whitespace squeezed; every word gets the
 * word-boundary marker ▁ (U+2581) in front; all characters of the corpus are pieces; merges
 * join the most frequent adjacent pair inside a word (ties: the shorter merged string in bytes,
 * then the byte-wise smaller), skipping pairs whose result is already a piece or longer than 16
 * characters. The vocabulary is: the special pieces at their ids, user-defined symbols at the
 * lowest free ids, then the merged pieces in merge order, then the characters by descending
 * frequency (ties: smaller code point). Encoding repeatedly joins the adjacent pair whose union
 * is the earliest-learned piece (leftmost on ties); characters without a piece become <unk>.
 * Differences from SentencePiece: no splitting by Unicode script, and user-defined symbols must
 * be single characters (each occurrence in text is its own piece, as in SentencePiece). */
#ifndef LU_BPE_H
#define LU_BPE_H

#include "core/error.h"

typedef struct lu_bpe lu_bpe;

typedef enum lu_bpe_piece_type {
    LU_BPE_NORMAL,   /* text pieces: characters and merges */
    LU_BPE_UNKNOWN,  /* <unk>, exactly one */
    LU_BPE_CONTROL,  /* <s>, </s>, <pad>, <blk>: never produced from text, decoded as "" */
    LU_BPE_USER      /* user-defined symbols (asr.md: "@", the CTC blank at id 0) */
} lu_bpe_piece_type;

#define LU_BPE_MAX_USER 8

typedef struct lu_bpe_config {
    int vocab_size;                            /* total, special pieces included */
    int unk_id;                                /* required */
    int bos_id, eos_id, pad_id;                /* -1: absent */
    int n_user;
    const char *user_symbols[LU_BPE_MAX_USER]; /* one character each */
} lu_bpe_config;

/* asr.md 7.2 for the 256-unit model: 0 "@", 1 <s>, 2 </s>, 126 <pad>, 127 <unk>. */
lu_bpe_config lu_bpe_config_default(void);

/* Trains on n_lines transcripts (UTF-8). Errors name the line or the size that does not fit,
 * e.g. a vocab_size larger than the corpus has pairs to merge. */
lu_bpe *lu_bpe_train(const char *const *lines, int n_lines, const lu_bpe_config *cfg);
/* Character token set: 0 <blk> (the CTC blank), 1 <unk>, 2 ▁ (word boundary), then each
 * character of `alphabet` in order (e.g. "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"). */
lu_bpe *lu_bpe_chars(const char *alphabet);
void lu_bpe_free(lu_bpe *b);

/* JSON: {"format": "luthier-bpe", "pieces": [{"piece": "@", "type": "user"}, ...]} in id order;
 * types are normal, unknown, control, user. Control pieces named <s>, </s>, <pad> are the bos,
 * eos and pad ids. */
lu_status lu_bpe_save(const lu_bpe *b, const char *path);
lu_bpe *lu_bpe_load(const char *path);
/* The same JSON as text (malloc'd) and from text; `name` stands for the file in errors. */
char *lu_bpe_to_json(const lu_bpe *b);
lu_bpe *lu_bpe_from_json(const char *text, const char *name);

int lu_bpe_size(const lu_bpe *b);
const char *lu_bpe_piece(const lu_bpe *b, int id);  /* NULL when out of range */
lu_bpe_piece_type lu_bpe_type(const lu_bpe *b, int id); /* LU_BPE_UNKNOWN when out of range */
int lu_bpe_find(const lu_bpe *b, const char *piece); /* -1 when absent */
int lu_bpe_unk_id(const lu_bpe *b);
int lu_bpe_bos_id(const lu_bpe *b); /* -1 when absent, as the next two */
int lu_bpe_eos_id(const lu_bpe *b);
int lu_bpe_pad_id(const lu_bpe *b);

/* Text -> ids (no <s>/</s> added). *ids is malloc'd (free it); *n may be 0. */
lu_status lu_bpe_encode(const lu_bpe *b, const char *text, int **ids, int *n);
/* Ids -> text: ▁ becomes a space (the first one dropped), control pieces vanish, <unk> reads
 * " ⁇ " as in SentencePiece. Returns a malloc'd string, or NULL + error for an id out of range. */
char *lu_bpe_decode(const lu_bpe *b, const int *ids, int n);

#endif
