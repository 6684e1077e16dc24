/* ctc_decode.h - turning CTC log-probabilities into token sequences: greedy (best-path) decoding
 * and prefix beam search without a language model (Hannun et al. 2014, "First-Pass Large
 * Vocabulary Continuous Speech Recognition using Bi-Directional Recurrent DNNs", Algorithm 1),
 * with the blank skipping of torchaudio's cuda_ctc_decoder (asr.md 7.5: beam 10, nbest 1,
 * blank_skip_threshold 0.95).
 *
 * These are host-side algorithms over float log-probabilities laid out [T, V] (frame-major);
 * lu_ctc_decode_batch takes a [B, T, V] tensor on any device and copies it to the host. */
#ifndef LU_CTC_DECODE_H
#define LU_CTC_DECODE_H

#include "core/tensor.h"

typedef struct lu_ctc_hyp {
    int *tokens;   /* owned (malloc); blanks dropped and repeats collapsed */
    int n_tokens;
    /* Natural log. Greedy: log-probability of the best path. Beam search: log of the sum over
     * the alignments of `tokens` that the beam kept (exact when nothing was pruned). */
    double score;
} lu_ctc_hyp;

typedef struct lu_ctc_beam_opts {
    int blank;
    int beam_size;   /* prefixes kept per frame, >= 1 */
    int nbest;       /* hypotheses returned, 1..beam_size */
    /* Frames whose blank probability exceeds this are skipped: each counts as a blank of
     * probability 1 (it separates repeated tokens and adds nothing to the score), as in
     * torchaudio's cuda_ctc_decoder. Values >= 1 keep every frame. Must be > 0. */
    double blank_skip_threshold;
} lu_ctc_beam_opts;

/* blank 0, beam 10, nbest 1, no blank skipping. */
lu_ctc_beam_opts lu_ctc_beam_opts_default(void);

/* Argmax per frame (the lowest id wins ties), collapse repeats, drop blanks. Fills *out
 * (free with lu_ctc_hyp_free). */
lu_status lu_ctc_greedy(const float *logp, int T, int V, int blank, lu_ctc_hyp *out);

/* Prefix beam search. out must hold opts->nbest entries; *n_out receives how many were filled
 * (fewer when fewer distinct prefixes exist), best first. Candidates of equal score are ranked
 * in the order they are generated: surviving prefixes in beam order, then extensions in (beam
 * order, token id) order, so the result is deterministic. With a peaked posterior (every
 * frame's argmax above about 0.8) beam 1 equals greedy decoding; in general it need not, because
 * the beam ranks prefixes by the sum over their alignments. */
lu_status lu_ctc_beam_search(const float *logp, int T, int V, const lu_ctc_beam_opts *opts, lu_ctc_hyp *out,
                             int *n_out);

/* Decodes a batch: logp [B, T, V] (any float dtype and device), lengths [B] integer tensor of
 * valid frames (NULL: all T). opts NULL means greedy decoding with blank 0, asr.md's blank.
 * out holds B * k entries (k = 1 for greedy, else opts->nbest), utterance b at out[b * k];
 * n_out[b] receives the number filled. On failure nothing is left allocated. */
lu_status lu_ctc_decode_batch(const lu_tensor *logp, const lu_tensor *lengths, const lu_ctc_beam_opts *opts,
                              lu_ctc_hyp *out, int *n_out);

/* Frees h->tokens and zeroes *h; NULL-safe. */
void lu_ctc_hyp_free(lu_ctc_hyp *h);

#endif
