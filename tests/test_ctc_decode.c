/* test_ctc_decode.c - greedy CTC decoding and prefix beam search, checked by hand on small cases
 * and against a brute-force sum over every alignment for tiny T and V. */
#include <math.h>
#include <string.h>

#include "models/ctc_decode.h"
#include "testutil.h"

/* Random log-softmax rows [T, V]; `peak` > 0 gives each frame one class with probability >= peak. */
static void random_logp(float *lp, int T, int V, uint64_t seed, double peak)
{
    lu_tensor *u = tu_rand(LU_F64, LU_SHAPE(T, V + 1), 0, 1, seed);
    const double *r = lu_tensor_data(u);
    for (int t = 0; t < T; t++) {
        const double *x = r + (size_t)t * (V + 1);
        double p[64], s = 0;
        for (int v = 0; v < V; v++) s += p[v] = peak > 0 ? x[v] : exp(3 * x[v]);
        for (int v = 0; v < V; v++) p[v] /= s;
        if (peak > 0) {
            int hot = (int)(x[V] * V);
            for (int v = 0; v < V; v++) p[v] = v == hot ? peak + (1 - peak) * p[v] : (1 - peak) * p[v];
        }
        for (int v = 0; v < V; v++) lp[t * V + v] = (float)log(p[v]);
    }
    lu_tensor_release(u);
}

/* Every label sequence with its probability summed over all V^T alignments. */
typedef struct seqprob {
    int len, tok[8];
    double p;
} seqprob;

static int brute_force(const float *lp, int T, int V, int blank, seqprob *seqs)
{
    int n = 0, path[8];
    long total = 1;
    for (int t = 0; t < T; t++) total *= V;
    for (long a = 0; a < total; a++) {
        long r = a;
        double lpath = 0;
        for (int t = 0; t < T; t++, r /= V) {
            path[t] = (int)(r % V);
            lpath += lp[t * V + path[t]];
        }
        seqprob s = {0};
        for (int t = 0; t < T; t++)
            if (path[t] != blank && (t == 0 || path[t] != path[t - 1])) s.tok[s.len++] = path[t];
        int i = 0;
        while (i < n && !(seqs[i].len == s.len && !memcmp(seqs[i].tok, s.tok, sizeof(int) * s.len))) i++;
        if (i == n) seqs[n++] = s;
        seqs[i].p += exp(lpath);
    }
    return n;
}

static void assert_tokens(const lu_ctc_hyp *h, const int *want, int n, const char *what)
{
    cr_assert_eq(h->n_tokens, n, "%s: %d tokens, want %d", what, h->n_tokens, n);
    for (int i = 0; i < n; i++) cr_assert_eq(h->tokens[i], want[i], "%s: token %d is %d, want %d", what, i, h->tokens[i], want[i]);
}

Test(ctc_decode, greedy_collapses_repeats_and_drops_blanks)
{
    /* Frame argmaxes 1 1 0 1 2 2 0 -> 1 1 2; the score is the sum of the frame maxima. */
    const int T = 7, V = 3, arg[7] = {1, 1, 0, 1, 2, 2, 0};
    float lp[21];
    double want = 0;
    for (int t = 0; t < T; t++)
        for (int v = 0; v < V; v++) lp[t * V + v] = (float)log(v == arg[t] ? 0.8 : 0.1);
    for (int t = 0; t < T; t++) want += lp[t * V + arg[t]];
    lu_ctc_hyp h;
    cr_assert_eq(lu_ctc_greedy(lp, T, V, 0, &h), LU_OK);
    assert_tokens(&h, (int[]){1, 1, 2}, 3, "greedy");
    cr_assert_float_eq(h.score, want, 1e-12);
    lu_ctc_hyp_free(&h);
}

Test(ctc_decode, greedy_breaks_ties_towards_lowest_id_and_honours_blank_id)
{
    /* Frame 0 ties classes 1 and 2 (1 wins); frame 1 is the blank (id 2 here); frame 2 ties 0 and 1. */
    const float lp[9] = {-2, -1, -1, -3, -3, -0.1f, -0.5f, -0.5f, -2};
    lu_ctc_hyp h;
    cr_assert_eq(lu_ctc_greedy(lp, 3, 3, 2, &h), LU_OK);
    assert_tokens(&h, (int[]){1, 0}, 2, "ties");
    lu_ctc_hyp_free(&h);
}

static void check_full_beam_against_brute_force(int T, int V, int blank, uint64_t seed)
{
    float lp[8 * 8];
    random_logp(lp, T, V, seed, 0);
    seqprob seqs[4096];
    int n = brute_force(lp, T, V, blank, seqs);
    lu_ctc_beam_opts o = {.blank = blank, .beam_size = 512, .nbest = 512, .blank_skip_threshold = 1};
    lu_ctc_hyp h[512];
    int m;
    cr_assert_eq(lu_ctc_beam_search(lp, T, V, &o, h, &m), LU_OK);
    /* Nothing is pruned, so the beam holds every reachable sequence with its exact probability. */
    cr_assert_eq(m, n, "T=%d V=%d: %d hypotheses, brute force finds %d sequences", T, V, m, n);
    int best = 0;
    for (int i = 1; i < n; i++)
        if (seqs[i].p > seqs[best].p) best = i;
    assert_tokens(&h[0], seqs[best].tok, seqs[best].len, "best hypothesis");
    for (int r = 0; r < m; r++) {
        int i = 0;
        while (i < n && !(seqs[i].len == h[r].n_tokens && !memcmp(seqs[i].tok, h[r].tokens, sizeof(int) * seqs[i].len))) i++;
        cr_assert_lt(i, n, "hypothesis %d is not a reachable sequence", r);
        cr_assert_float_eq(h[r].score, log(seqs[i].p), 1e-9, "hypothesis %d: score %.12g, brute force %.12g", r,
                           h[r].score, log(seqs[i].p));
        if (r > 0) cr_assert_geq(h[r - 1].score, h[r].score, "n-best must be sorted");
        lu_ctc_hyp_free(&h[r]);
    }
}

Test(ctc_decode, full_beam_matches_brute_force_over_all_alignments)
{
    check_full_beam_against_brute_force(5, 3, 0, 11);
    check_full_beam_against_brute_force(4, 4, 0, 12);
    check_full_beam_against_brute_force(6, 2, 0, 13);
}

Test(ctc_decode, full_beam_matches_brute_force_with_blank_not_zero)
{
    check_full_beam_against_brute_force(5, 3, 2, 21);
    check_full_beam_against_brute_force(4, 4, 1, 22);
}

Test(ctc_decode, small_beam_finds_brute_force_best_on_random_tiny_inputs)
{
    for (uint64_t seed = 100; seed < 120; seed++) {
        float lp[5 * 3];
        random_logp(lp, 5, 3, seed, 0);
        seqprob seqs[512];
        int n = brute_force(lp, 5, 3, 0, seqs), best = 0;
        for (int i = 1; i < n; i++)
            if (seqs[i].p > seqs[best].p) best = i;
        lu_ctc_beam_opts o = {.blank = 0, .beam_size = 8, .nbest = 1, .blank_skip_threshold = 1};
        lu_ctc_hyp h;
        int m;
        cr_assert_eq(lu_ctc_beam_search(lp, 5, 3, &o, &h, &m), LU_OK);
        cr_assert_eq(m, 1);
        assert_tokens(&h, seqs[best].tok, seqs[best].len, "beam 8");
        lu_ctc_hyp_free(&h);
    }
}

Test(ctc_decode, beam_one_equals_greedy_on_peaked_posteriors)
{
    enum { T = 60, V = 7 };
    float lp[T * V];
    for (uint64_t seed = 0; seed < 10; seed++) {
        random_logp(lp, T, V, 300 + seed, 0.9);
        lu_ctc_hyp g, b;
        int m;
        lu_ctc_beam_opts o = {.blank = 0, .beam_size = 1, .nbest = 1, .blank_skip_threshold = 1};
        cr_assert_eq(lu_ctc_greedy(lp, T, V, 0, &g), LU_OK);
        cr_assert_eq(lu_ctc_beam_search(lp, T, V, &o, &b, &m), LU_OK);
        assert_tokens(&b, g.tokens, g.n_tokens, "beam 1 vs greedy");
        /* The prefix score sums alignments, so it is at least the best path's. */
        cr_assert_geq(b.score, g.score - 1e-9);
        lu_ctc_hyp_free(&g);
        lu_ctc_hyp_free(&b);
    }
}

Test(ctc_decode, beam_ranks_prefixes_by_alignment_sum_not_best_path)
{
    /* Frame 0 is surely token 1; frame 1 has p(blank) .35, p(1) .25, p(2) .40. Greedy follows
     * the best path "1 2" (.40) but "1" collects .35 + .25 = .60 over two alignments. */
    const float lp[6] = {-INFINITY, 0, -INFINITY, logf(0.35f), logf(0.25f), logf(0.40f)};
    lu_ctc_hyp g, h[2];
    int m;
    cr_assert_eq(lu_ctc_greedy(lp, 2, 3, 0, &g), LU_OK);
    assert_tokens(&g, (int[]){1, 2}, 2, "greedy");
    lu_ctc_beam_opts o = {.blank = 0, .beam_size = 1, .nbest = 1, .blank_skip_threshold = 1};
    cr_assert_eq(lu_ctc_beam_search(lp, 2, 3, &o, h, &m), LU_OK);
    assert_tokens(&h[0], (int[]){1}, 1, "beam 1");
    lu_ctc_hyp_free(&h[0]);
    o.beam_size = 4;
    o.nbest = 2;
    cr_assert_eq(lu_ctc_beam_search(lp, 2, 3, &o, h, &m), LU_OK);
    cr_assert_eq(m, 2);
    assert_tokens(&h[0], (int[]){1}, 1, "best of beam 4");
    assert_tokens(&h[1], (int[]){1, 2}, 2, "second of beam 4");
    cr_assert_float_eq(h[0].score, log(0.35 + 0.25), 1e-6);
    cr_assert_float_eq(h[1].score, log(0.40), 1e-6);
    lu_ctc_hyp_free(&h[0]);
    lu_ctc_hyp_free(&h[1]);
    lu_ctc_hyp_free(&g);
}

Test(ctc_decode, nbest_is_distinct_and_sorted)
{
    enum { T = 12, V = 5 };
    float lp[T * V];
    random_logp(lp, T, V, 7, 0);
    lu_ctc_beam_opts o = {.blank = 0, .beam_size = 6, .nbest = 6, .blank_skip_threshold = 1};
    lu_ctc_hyp h[6];
    int m;
    cr_assert_eq(lu_ctc_beam_search(lp, T, V, &o, h, &m), LU_OK);
    cr_assert_eq(m, 6);
    for (int r = 0; r < m; r++) {
        if (r > 0) cr_assert_geq(h[r - 1].score, h[r].score);
        for (int q = 0; q < r; q++)
            cr_assert(h[q].n_tokens != h[r].n_tokens || memcmp(h[q].tokens, h[r].tokens, sizeof(int) * h[r].n_tokens),
                      "hypotheses %d and %d are the same sequence", q, r);
    }
    for (int r = 0; r < m; r++) lu_ctc_hyp_free(&h[r]);
}

Test(ctc_decode, skipped_blank_frames_act_as_certain_blanks)
{
    enum { T = 9, V = 4 };
    float lp[T * V], ref[T * V];
    random_logp(lp, T, V, 41, 0);
    /* Frames 0, 3, 4 and 8 become blank-dominant (p(blank) = .97 > .95). */
    const int skipped[4] = {0, 3, 4, 8};
    for (int k = 0; k < 4; k++)
        for (int v = 0; v < V; v++) lp[skipped[k] * V + v] = logf(v == 0 ? 0.97f : 0.01f);
    memcpy(ref, lp, sizeof lp);
    for (int k = 0; k < 4; k++)
        for (int v = 0; v < V; v++) ref[skipped[k] * V + v] = v == 0 ? 0 : -INFINITY;
    lu_ctc_beam_opts o = {.blank = 0, .beam_size = 5, .nbest = 5, .blank_skip_threshold = 0.95};
    lu_ctc_beam_opts plain = o;
    plain.blank_skip_threshold = 1;
    lu_ctc_hyp a[5], b[5];
    int na, nb;
    cr_assert_eq(lu_ctc_beam_search(lp, T, V, &o, a, &na), LU_OK);
    cr_assert_eq(lu_ctc_beam_search(ref, T, V, &plain, b, &nb), LU_OK);
    cr_assert_eq(na, nb);
    for (int r = 0; r < na; r++) {
        assert_tokens(&a[r], b[r].tokens, b[r].n_tokens, "skip vs one-hot blank");
        cr_assert_float_eq(a[r].score, b[r].score, 1e-12);
        lu_ctc_hyp_free(&a[r]);
        lu_ctc_hyp_free(&b[r]);
    }
}

Test(ctc_decode, skipped_blank_still_separates_repeated_tokens)
{
    /* token 1, a .99 blank frame, token 1 again: the skipped frame keeps the two 1s apart. */
    float lp[9];
    const int arg[3] = {1, 0, 1};
    for (int t = 0; t < 3; t++)
        for (int v = 0; v < 3; v++) lp[t * 3 + v] = logf(v == arg[t] ? 0.99f : 0.005f);
    lu_ctc_beam_opts o = {.blank = 0, .beam_size = 3, .nbest = 1, .blank_skip_threshold = 0.95};
    lu_ctc_hyp h;
    int m;
    cr_assert_eq(lu_ctc_beam_search(lp, 3, 3, &o, &h, &m), LU_OK);
    assert_tokens(&h, (int[]){1, 1}, 2, "1 _ 1");
    cr_assert_float_eq(h.score, 2.0 * logf(0.99f), 1e-6);
    lu_ctc_hyp_free(&h);
}

Test(ctc_decode, empty_input_gives_empty_hypothesis)
{
    lu_ctc_beam_opts o = lu_ctc_beam_opts_default();
    lu_ctc_hyp h;
    int m;
    cr_assert_eq(lu_ctc_beam_search(NULL, 0, 5, &o, &h, &m), LU_OK);
    cr_assert_eq(m, 1);
    cr_assert_eq(h.n_tokens, 0);
    cr_assert_float_eq(h.score, 0.0, 0);
    lu_ctc_hyp_free(&h);
    cr_assert_eq(lu_ctc_greedy(NULL, 0, 5, 0, &h), LU_OK);
    cr_assert_eq(h.n_tokens, 0);
    lu_ctc_hyp_free(&h);
}

Test(ctc_decode, batch_respects_lengths_and_matches_single_calls)
{
    enum { B = 3, T = 10, V = 6 };
    float lp[B * T * V];
    random_logp(lp, B * T, V, 55, 0);
    lu_tensor *x = lu_tensor_from_host(LU_F32, LU_SHAPE(B, T, V), LU_CPU, lp);
    lu_tensor *len = lu_tensor_from_host(LU_I32, LU_SHAPE(B), LU_CPU, (int32_t[]){10, 0, 4});
    const int lens[B] = {10, 0, 4};
    lu_ctc_beam_opts o = {.blank = 0, .beam_size = 4, .nbest = 2, .blank_skip_threshold = 1};
    lu_ctc_hyp hb[B * 2], hg[B], h1[2];
    int nb[B], ng[B], m;
    cr_assert_eq(lu_ctc_decode_batch(x, len, &o, hb, nb), LU_OK);
    cr_assert_eq(lu_ctc_decode_batch(x, len, NULL, hg, ng), LU_OK);
    for (int b = 0; b < B; b++) {
        cr_assert_eq(lu_ctc_beam_search(lp + b * T * V, lens[b], V, &o, h1, &m), LU_OK);
        cr_assert_eq(nb[b], m);
        for (int r = 0; r < m; r++) {
            assert_tokens(&hb[b * 2 + r], h1[r].tokens, h1[r].n_tokens, "batch beam");
            cr_assert_float_eq(hb[b * 2 + r].score, h1[r].score, 0);
            lu_ctc_hyp_free(&h1[r]);
            lu_ctc_hyp_free(&hb[b * 2 + r]);
        }
        cr_assert_eq(lu_ctc_greedy(lp + b * T * V, lens[b], V, 0, h1), LU_OK);
        cr_assert_eq(ng[b], 1);
        assert_tokens(&hg[b], h1[0].tokens, h1[0].n_tokens, "batch greedy");
        lu_ctc_hyp_free(&h1[0]);
        lu_ctc_hyp_free(&hg[b]);
    }
    cr_assert_eq(nb[1], 1, "an empty utterance has one empty hypothesis");
    lu_tensor_release(len);
    lu_tensor_release(x);
}

Test(ctc_decode, rejects_bad_arguments)
{
    float lp[6] = {0};
    lu_ctc_hyp h[4];
    int m;
    cr_assert_neq(lu_ctc_greedy(lp, 2, 3, 3, h), LU_OK);
    tu_assert_error_contains("blank id 3 is outside [0, 3)");
    lu_ctc_beam_opts o = {.blank = 0, .beam_size = 2, .nbest = 3, .blank_skip_threshold = 1};
    cr_assert_neq(lu_ctc_beam_search(lp, 2, 3, &o, h, &m), LU_OK);
    tu_assert_error_contains("nbest 3, beam_size 2");
    o.nbest = 1;
    o.blank_skip_threshold = 0;
    cr_assert_neq(lu_ctc_beam_search(lp, 2, 3, &o, h, &m), LU_OK);
    tu_assert_error_contains("blank_skip_threshold must be > 0");
    lu_tensor *x2 = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3), LU_CPU);
    cr_assert_neq(lu_ctc_decode_batch(x2, NULL, NULL, h, &m), LU_OK);
    tu_assert_error_contains("[B, T, V] tensor, got f32 [2, 3]");
    lu_tensor *x3 = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3, 4), LU_CPU);
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){3, 4});
    int n2[2];
    cr_assert_neq(lu_ctc_decode_batch(x3, len, NULL, h, n2), LU_OK);
    tu_assert_error_contains("length 4 of utterance 1 is outside [0, 3]");
    lu_tensor_release(len);
    lu_tensor_release(x3);
    lu_tensor_release(x2);
}
