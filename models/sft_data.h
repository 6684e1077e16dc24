/* sft_data.h - supervised fine-tuning data: chat JSONL -> Qwen3 chat template (chat_template.h) ->
 * token ids with an assistant-only loss mask -> packed fixed-length sequences -> HDF5 shards, and
 * the reader the training task uses.
 *
 * Input: one JSON object per line, {"messages": [{"role": ..., "content": ...}, ...]} (the Hugging
 * Face datasets JSONL export); blank lines are ignored. The input is streamed: tokens go to a
 * scratch file and only a 16-byte index entry per sample stays in memory.
 *
 * Split: sample i (0-based among the well-formed lines) is held out when
 * lu_rng_uniform(seed, i, LU_SFT_SPLIT_STREAM, 0) < valid_fraction, so the split does not depend on
 * the rest of the file. Order: each split's samples are shuffled by a Fisher-Yates pass driven by
 * Philox(seed) and then packed greedily in that order: a sample joins the current sequence when it
 * fits, otherwise the sequence is closed (padded) and a new one begins. A sample longer than seq_len
 * is cut to its first seq_len tokens, or dropped with drop_overlong; a sample with no trained token
 * left is dropped. No sample is split across sequences.
 *
 * Layout of one packed sequence of T = seq_len tokens:
 *   input_ids  [T] i32: the samples back to back, then pad_id up to T;
 *   labels     [T] i32: the id where the mask is 1 (assistant answers and their <|im_end|>, as
 *                       Axolotl's train_on_inputs false / train_on_eos turn), -100 elsewhere, on
 *                       the padding and on every sample's first token (so that, after the shift
 *                       inside the loss, no sample predicts the next one's first token);
 *   cu_seqlens [S+1] i32: 0, the end of each sample, and T when padding follows (the padding is one
 *                       more segment, so the values always end at T, as the attention op needs).
 *
 * Directory written (into "<out>.tmp.<pid>", renamed to out when complete; out must not exist):
 *   train/shard-00000.h5, ...; valid/shard-00000.h5, ... (valid only when it holds a sequence);
 *   summary.json: the options, the tokenizer's vocab size and every count of lu_sft_stats.
 * Each shard holds datasets input_ids [N, T] i32, labels [N, T] i32, cu_seqlens [M] i32 (all
 * sequences' values back to back) and cu_offsets [N+1] i64 (sequence i's values are
 * cu_seqlens[cu_offsets[i] .. cu_offsets[i+1])), and attributes seq_len and pad_id. */
#ifndef LU_SFT_DATA_H
#define LU_SFT_DATA_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "models/tokenizer.h"

#define LU_SFT_SPLIT_STREAM 0x5f7a11du
#define LU_SFT_SHUFFLE_STREAM 0x5f75u

typedef struct lu_sft_options {
    const char *input;          /* chat JSONL */
    const char *out_dir;
    const lu_tokenizer *tok;
    const char *tokenizer_name; /* recorded in summary.json */
    int64_t seq_len;
    uint64_t seed;
    double valid_fraction;      /* [0, 1) */
    bool skip_malformed;        /* false: the first malformed line is an error */
    bool drop_overlong;         /* false: truncate to seq_len */
    bool train_think;           /* also train on the <think> blocks */
    int64_t shard_tokens;       /* tokens per shard (rounded down to whole sequences, at least one) */
    int32_t pad_id;
    FILE *log;                  /* skipped malformed lines are reported here (NULL: not reported) */
} lu_sft_options;

typedef struct lu_sft_split_stats {
    int64_t samples, tokens;                  /* kept (after truncation) */
    int64_t target_tokens;                    /* tokens with a label */
    int64_t truncated_samples, truncated_tokens; /* tokens cut from kept samples */
    int64_t dropped_samples, dropped_tokens;  /* overlong (drop_overlong) or nothing left to train */
    int64_t sequences, shards;
} lu_sft_split_stats;

typedef struct lu_sft_stats {
    int64_t lines;              /* non-blank lines read */
    int64_t malformed;          /* skipped malformed lines */
    int64_t first_malformed_line; /* 1-based, 0 if none */
    lu_sft_split_stats train, valid;
} lu_sft_stats;

/* Whole pipeline; on any error nothing is left at out_dir. A malformed line (bad JSON, no
 * "messages" array, a message without string role/content, an unknown role) is an error
 * "INPUT:LINE: ..." unless skip_malformed. */
lu_status lu_sft_prepare(const lu_sft_options *o, lu_sft_stats *stats);

/* Packs ids/mask of one sample into a sequence being built (the primitive lu_sft_prepare uses):
 * appends at *used, sets the labels and the new cu_seqlens entry; false when it does not fit. */
bool lu_sft_pack_append(int32_t *input_ids, int32_t *labels, int32_t *cu, int *n_cu, int64_t *used, int64_t seq_len,
                        const int32_t *ids, const uint8_t *mask, int64_t n);
/* Pads a sequence from *used to seq_len (pad_id, label -100) and closes cu_seqlens at seq_len. */
void lu_sft_pack_finish(int32_t *input_ids, int32_t *labels, int32_t *cu, int *n_cu, int64_t used, int64_t seq_len,
                        int32_t pad_id);

/* Reader over the shards of one split ("train" or "valid") of a prepared directory. */
typedef struct lu_sft_data lu_sft_data;

lu_sft_data *lu_sft_data_open(const char *dir, const char *split);
void lu_sft_data_close(lu_sft_data *d);
int64_t lu_sft_data_count(const lu_sft_data *d);
int64_t lu_sft_data_seq_len(const lu_sft_data *d);
/* Sequence i: ids and labels receive seq_len values, cu receives *n_cu values (at most seq_len + 1). */
lu_status lu_sft_data_read(lu_sft_data *d, int64_t i, int32_t *ids, int32_t *labels, int32_t *cu, int *n_cu);
/* "vocab_size" of DIR/summary.json, or -1 with an error. */
int64_t lu_sft_data_vocab_size(const char *dir);
/* "im_end_id" of DIR/summary.json (the tokenizer's <|im_end|>), or -1. */
int64_t lu_sft_data_im_end_id(const char *dir);

#endif
