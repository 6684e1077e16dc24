/* asr_data.h - speech training data: JSONL manifests of utterances, the HDF5 feature store that
 * `luthier data prepare-speech` writes from them, and duration-bucketed batches.
 *
 * Manifest: one JSON object per line, {"audio": path, "text": transcript, "duration": seconds,
 * "speaker": optional string}; blank lines are ignored. A relative audio path is relative to the
 * manifest's folder, so a data folder can move as a whole.
 *
 * Feature store (one HDF5 file, every utterance's frames concatenated so a reader slices one
 * utterance with one hyperslab):
 *   /feats     float32 [total_frames, dim]   (chunked; utterance i is rows offsets[i]..offsets[i+1])
 *   /offsets   int64   [n + 1]
 *   /text      variable-length UTF-8 strings [n]
 *   /speaker   variable-length UTF-8 strings [n] ("" when the manifest gives none)
 *   /duration  float64 [n] (seconds of audio)
 *   attributes on the root: "features" ("fbank" or "mel"), "sample_rate", "dim". */
#ifndef LU_ASR_DATA_H
#define LU_ASR_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

/* ---- manifests ------------------------------------------------------------------------------ */

typedef struct lu_asr_utt {
    char *audio;     /* resolved path */
    char *text;
    char *speaker;   /* "" when absent */
    double duration; /* seconds, as the manifest states it */
    int line;        /* 1-based line of the manifest */
} lu_asr_utt;

typedef struct lu_asr_manifest {
    int n;
    lu_asr_utt *utts;
} lu_asr_manifest;

/* Parses every line; the first malformed one (not JSON, not an object, "audio" or "text" missing
 * or not a string, "duration" missing, not a number or not positive, "speaker" not a string) is
 * an LU_ERR_FORMAT error "PATH:LINE: ...". An empty manifest is an error too. */
lu_status lu_asr_manifest_read(const char *path, lu_asr_manifest *m);
void lu_asr_manifest_free(lu_asr_manifest *m);

/* ---- feature store -------------------------------------------------------------------------- */

typedef struct lu_asr_store_writer lu_asr_store_writer;

/* Writes to "<path>.tmp"; lu_asr_store_writer_close renames it to `path` once complete, so a
 * failed or interrupted preparation never leaves a truncated store under the final name. */
lu_asr_store_writer *lu_asr_store_writer_open(const char *path, const char *features, int sample_rate, int64_t dim);
/* Appends one utterance: feats [frames, dim] row-major float32 (frames >= 1). */
lu_status lu_asr_store_writer_add(lu_asr_store_writer *w, const float *feats, int64_t frames, const char *text,
                                  const char *speaker, double duration);
/* Finishes the file and renames it into place (commit = true), or deletes the temporary file. */
lu_status lu_asr_store_writer_close(lu_asr_store_writer *w, bool commit);

typedef struct lu_asr_store {
    int64_t n, dim;
    int sample_rate;
    char features[16];
    int64_t *offsets;   /* [n + 1] */
    char **text;        /* [n] */
    char **speaker;     /* [n] */
    double *duration;   /* [n] */
    int64_t file;       /* HDF5 file id (kept open for reads) */
    int64_t feats;      /* HDF5 dataset id of /feats */
} lu_asr_store;

/* Opens a store and reads everything but the features; errors name the file and the dataset. */
lu_status lu_asr_store_open(const char *path, lu_asr_store *s);
static inline int64_t lu_asr_store_frames(const lu_asr_store *s, int64_t i)
{
    return s->offsets[i + 1] - s->offsets[i];
}
/* Reads utterance i into out (lu_asr_store_frames(s, i) * dim floats). */
lu_status lu_asr_store_read(const lu_asr_store *s, int64_t i, float *out);
void lu_asr_store_close(lu_asr_store *s);

/* ---- duration-bucketed batches -------------------------------------------------------------- */

/* Utterances sorted by frame count (ties by index) and cut greedily into batches whose padded
 * size (utterances x longest frames) stays within max_frames; an utterance longer than
 * max_frames forms a batch of its own. The batches are fixed; only their order changes per
 * epoch, so batch k of epoch e is a pure function of (lengths, max_frames, seed, e, k). */
typedef struct lu_asr_buckets {
    int64_t n_batches;
    int64_t *order;   /* utterance ids, shortest first */
    int64_t *start;   /* [n_batches + 1]: batch b is order[start[b] .. start[b+1]) */
    int64_t *perm;    /* batch order of epoch perm_epoch */
    int64_t perm_epoch;
    uint64_t seed;
} lu_asr_buckets;

lu_status lu_asr_buckets_make(const int64_t *frames, int64_t n, int64_t max_frames, uint64_t seed,
                              lu_asr_buckets *b);
/* The batch at `position` (counted over all epochs): *ids points into b->order, *count entries. */
void lu_asr_buckets_at(lu_asr_buckets *b, int64_t position, const int64_t **ids, int64_t *count);
void lu_asr_buckets_free(lu_asr_buckets *b);

#endif
