/* ctc_decode.c - greedy CTC decoding and prefix beam search (see ctc_decode.h).
 *
 * Prefix beam search keeps, for every prefix l in the beam, the log-probabilities of the frames
 * so far producing l and ending in a blank (pb) or in l's last token (pnb). One frame with
 * log-probs y (Hannun et al. 2014, Algorithm 1):
 *   l stays:        pb'(l)  = lse(pb, pnb) + y[blank]
 *                   pnb'(l) = pnb + y[last(l)]            (the last token repeats)
 *   l extends by c: pnb'(l+c) = pb + y[c]                 if c == last(l) (needs a blank between)
 *                   pnb'(l+c) = lse(pb, pnb) + y[c]       otherwise
 * An extension l+c that is itself in the beam adds into that prefix's pnb'. Prefixes are nodes
 * of a trie whose children are found through a hash of (parent, token), so two beam entries are
 * the same prefix exactly when they are the same node. */
#include "models/ctc_decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

lu_ctc_beam_opts lu_ctc_beam_opts_default(void)
{
    return (lu_ctc_beam_opts){.blank = 0, .beam_size = 10, .nbest = 1, .blank_skip_threshold = 1.0};
}

void lu_ctc_hyp_free(lu_ctc_hyp *h)
{
    if (!h) return;
    free(h->tokens);
    memset(h, 0, sizeof *h);
}

static double lse(double a, double b)
{
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    return a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
}

static lu_status check_dims(const char *op, const float *logp, int T, int V, int blank)
{
    if (T < 0 || V < 1) return lu_errorf(LU_ERR_SHAPE, "%s: need T >= 0 and V >= 1 frames x classes, got T=%d V=%d", op, T, V);
    if (T > 0 && !logp) return lu_errorf(LU_ERR_INVALID, "%s: log-probs are NULL", op);
    if (blank < 0 || blank >= V) return lu_errorf(LU_ERR_INVALID, "%s: blank id %d is outside [0, %d)", op, blank, V);
    return LU_OK;
}

lu_status lu_ctc_greedy(const float *logp, int T, int V, int blank, lu_ctc_hyp *out)
{
    LU_TRY(check_dims("ctc_greedy", logp, T, V, blank));
    memset(out, 0, sizeof *out);
    out->tokens = malloc(sizeof(int) * (size_t)(T > 0 ? T : 1));
    if (!out->tokens) return lu_errorf(LU_ERR_NOMEM, "ctc_greedy: out of memory for %d tokens", T);
    int prev = blank;
    for (int t = 0; t < T; t++) {
        const float *y = logp + (size_t)t * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (y[v] > y[best]) best = v;
        out->score += y[best];
        if (best != blank && best != prev) out->tokens[out->n_tokens++] = best;
        prev = best;
    }
    return LU_OK;
}

/* ---- the prefix trie -------------------------------------------------------------------------- */

typedef struct trie {
    int *parent, *token, *depth;
    int n, cap;
    int *slots;      /* open addressing over (parent, token) -> node, -1 empty */
    size_t mask;
} trie;

static void trie_free(trie *tr)
{
    free(tr->parent);
    free(tr->token);
    free(tr->depth);
    free(tr->slots);
}

static lu_status trie_init(trie *tr, int cap)
{
    memset(tr, 0, sizeof *tr);
    size_t nslots = 16;
    while (nslots < 2 * (size_t)cap) nslots *= 2;
    tr->parent = malloc(sizeof(int) * (size_t)cap);
    tr->token = malloc(sizeof(int) * (size_t)cap);
    tr->depth = malloc(sizeof(int) * (size_t)cap);
    tr->slots = malloc(sizeof(int) * nslots);
    if (!tr->parent || !tr->token || !tr->depth || !tr->slots) {
        trie_free(tr);
        return lu_errorf(LU_ERR_NOMEM, "ctc_beam_search: out of memory for %d prefixes", cap);
    }
    memset(tr->slots, 0xff, sizeof(int) * nslots);
    tr->mask = nslots - 1;
    tr->cap = cap;
    tr->parent[0] = -1; /* the empty prefix */
    tr->token[0] = -1;
    tr->depth[0] = 0;
    tr->n = 1;
    return LU_OK;
}

/* The node for parent + token, created when absent. The capacity bound (1 + frames * beam) holds
 * because each frame creates at most beam nodes. */
static int trie_child(trie *tr, int parent, int token)
{
    size_t h = ((size_t)parent * 0x9E3779B97F4A7C15ull ^ (size_t)token * 0xC2B2AE3D27D4EB4Full) & tr->mask;
    for (;; h = (h + 1) & tr->mask) {
        int node = tr->slots[h];
        if (node < 0) break;
        if (tr->parent[node] == parent && tr->token[node] == token) return node;
    }
    int node = tr->n++;
    tr->parent[node] = parent;
    tr->token[node] = token;
    tr->depth[node] = tr->depth[parent] + 1;
    tr->slots[h] = node;
    return node;
}

/* ---- the search ------------------------------------------------------------------------------- */

typedef struct entry {
    int node;
    double pb, pnb;
} entry;

/* Inserts candidate `idx` with score s into the top-k list (scores descending); candidates of
 * equal score keep their generation order, so an equal later one never displaces an earlier. */
static void top_insert(double *score, long *idx, int *n, int k, double s, long id)
{
    if (*n == k && !(s > score[k - 1])) return;
    int pos = *n < k ? (*n)++ : k - 1;
    while (pos > 0 && s > score[pos - 1]) {
        score[pos] = score[pos - 1];
        idx[pos] = idx[pos - 1];
        pos--;
    }
    score[pos] = s;
    idx[pos] = id;
}

lu_status lu_ctc_beam_search(const float *logp, int T, int V, const lu_ctc_beam_opts *o, lu_ctc_hyp *out,
                             int *n_out)
{
    if (!o) return lu_errorf(LU_ERR_INVALID, "ctc_beam_search: options are NULL");
    LU_TRY(check_dims("ctc_beam_search", logp, T, V, o->blank));
    if (o->beam_size < 1 || o->nbest < 1 || o->nbest > o->beam_size)
        return lu_errorf(LU_ERR_INVALID, "ctc_beam_search: need 1 <= nbest <= beam_size, got nbest %d, beam_size %d",
                         o->nbest, o->beam_size);
    if (!(o->blank_skip_threshold > 0))
        return lu_errorf(LU_ERR_INVALID, "ctc_beam_search: blank_skip_threshold must be > 0, got %g",
                         o->blank_skip_threshold);
    if ((int64_t)T * o->beam_size >= INT32_MAX)
        return lu_errorf(LU_ERR_INVALID, "ctc_beam_search: %d frames x beam %d prefixes is too many", T, o->beam_size);
    const int K = o->beam_size, blank = o->blank;
    const double skip_above = o->blank_skip_threshold >= 1 ? INFINITY : log(o->blank_skip_threshold);
    *n_out = 0;

    trie tr;
    LU_TRY(trie_init(&tr, 1 + T * K));
    entry *cur = malloc(sizeof(entry) * K), *next = malloc(sizeof(entry) * K);
    double *stay_b = malloc(sizeof(double) * K), *stay_nb = malloc(sizeof(double) * K);
    double *ext = malloc(sizeof(double) * (size_t)K * V), *top_score = malloc(sizeof(double) * K);
    long *top_idx = malloc(sizeof(long) * K);
    lu_status st = LU_OK;
    if (!cur || !next || !stay_b || !stay_nb || !ext || !top_score || !top_idx) {
        st = lu_errorf(LU_ERR_NOMEM, "ctc_beam_search: out of memory for beam %d x %d classes", K, V);
        goto done;
    }
    int n = 1;
    cur[0] = (entry){0, 0.0, -INFINITY};

    for (int t = 0; t < T; t++) {
        const float *y = logp + (size_t)t * V;
        if (y[blank] > skip_above) {
            for (int i = 0; i < n; i++) cur[i] = (entry){cur[i].node, lse(cur[i].pb, cur[i].pnb), -INFINITY};
            continue;
        }
        for (int i = 0; i < n; i++) {
            const entry *e = &cur[i];
            int last = tr.token[e->node];
            double total = lse(e->pb, e->pnb);
            stay_b[i] = total + y[blank];
            stay_nb[i] = last >= 0 ? e->pnb + y[last] : -INFINITY;
            double *x = ext + (size_t)i * V;
            for (int c = 0; c < V; c++) x[c] = c == last ? e->pb + y[c] : total + y[c];
            x[blank] = -INFINITY;
        }
        /* An extension that is already a prefix of the beam merges into it. */
        for (int j = 0; j < n; j++) {
            int par = tr.parent[cur[j].node];
            for (int i = 0; par >= 0 && i < n; i++) {
                if (cur[i].node != par) continue;
                double *x = ext + (size_t)i * V + tr.token[cur[j].node];
                stay_nb[j] = lse(stay_nb[j], *x);
                *x = -INFINITY;
            }
        }
        int k = 0;
        for (int i = 0; i < n; i++) top_insert(top_score, top_idx, &k, K, lse(stay_b[i], stay_nb[i]), i);
        for (long q = 0; q < (long)n * V; q++)
            if (ext[q] > -INFINITY) top_insert(top_score, top_idx, &k, K, ext[q], n + q);
        for (int r = 0; r < k; r++) {
            long id = top_idx[r];
            if (id < n) {
                next[r] = (entry){cur[id].node, stay_b[id], stay_nb[id]};
            } else {
                long q = id - n;
                int i = (int)(q / V), c = (int)(q % V);
                next[r] = (entry){trie_child(&tr, cur[i].node, c), -INFINITY, ext[q]};
            }
        }
        entry *swap = cur;
        cur = next;
        next = swap;
        n = k;
    }

    /* Skipped trailing frames only move mass from pnb to pb, so the beam is still ranked. */
    int m = n < o->nbest ? n : o->nbest;
    for (int r = 0; r < m; r++) {
        int node = cur[r].node, len = tr.depth[node];
        out[r].tokens = malloc(sizeof(int) * (size_t)(len > 0 ? len : 1));
        if (!out[r].tokens) {
            for (int q = 0; q < r; q++) lu_ctc_hyp_free(&out[q]);
            st = lu_errorf(LU_ERR_NOMEM, "ctc_beam_search: out of memory for a hypothesis of %d tokens", len);
            goto done;
        }
        out[r].n_tokens = len;
        out[r].score = lse(cur[r].pb, cur[r].pnb);
        for (int p = len - 1; p >= 0; p--, node = tr.parent[node]) out[r].tokens[p] = tr.token[node];
    }
    *n_out = m;
done:
    trie_free(&tr);
    free(cur);
    free(next);
    free(stay_b);
    free(stay_nb);
    free(ext);
    free(top_score);
    free(top_idx);
    return st;
}

lu_status lu_ctc_decode_batch(const lu_tensor *logp, const lu_tensor *lengths, const lu_ctc_beam_opts *opts,
                              lu_ctc_hyp *out, int *n_out)
{
    char sb[LU_SHAPE_STR_MAX], lb[LU_SHAPE_STR_MAX];
    if (!logp) return lu_error_code();
    if (logp->ndim != 3 || !lu_dtype_is_float(logp->dtype))
        return lu_errorf(LU_ERR_SHAPE, "ctc_decode_batch: log-probs must be a float [B, T, V] tensor, got %s %s",
                         lu_dtype_name(logp->dtype), lu_shape_str(logp, sb, sizeof sb));
    const int64_t B = logp->shape[0], T = logp->shape[1], V = logp->shape[2];
    if (T > INT32_MAX || V > INT32_MAX)
        return lu_errorf(LU_ERR_SHAPE, "ctc_decode_batch: log-probs %s are too large", lu_shape_str(logp, sb, sizeof sb));
    if (lengths && (lengths->ndim != 1 || lengths->shape[0] != B || lu_dtype_is_float(lengths->dtype)))
        return lu_errorf(LU_ERR_SHAPE, "ctc_decode_batch: lengths must be an integer [%lld] tensor for log-probs %s, got %s %s",
                         (long long)B, lu_shape_str(logp, sb, sizeof sb), lu_dtype_name(lengths->dtype),
                         lu_shape_str(lengths, lb, sizeof lb));
    const int k = opts ? opts->nbest : 1;
    float *host = malloc(sizeof(float) * (size_t)(B * T * V > 0 ? B * T * V : 1));
    int64_t *len = malloc(sizeof(int64_t) * (size_t)(B > 0 ? B : 1));
    lu_status st = LU_OK;
    if (!host || !len) {
        st = lu_errorf(LU_ERR_NOMEM, "ctc_decode_batch: out of memory for %s log-probs", lu_shape_str(logp, sb, sizeof sb));
        goto done;
    }
    if ((st = lu_tensor_to_host(logp, LU_F32, host)) != LU_OK) goto done;
    if (lengths) {
        if ((st = lu_tensor_to_host(lengths, LU_I64, len)) != LU_OK) goto done;
    } else {
        for (int64_t b = 0; b < B; b++) len[b] = T;
    }
    int64_t b = 0;
    for (; b < B; b++) {
        if (len[b] < 0 || len[b] > T) {
            st = lu_errorf(LU_ERR_INVALID, "ctc_decode_batch: length %lld of utterance %lld is outside [0, %lld]",
                           (long long)len[b], (long long)b, (long long)T);
            break;
        }
        const float *x = host + (size_t)(b * T * V);
        if (opts) {
            st = lu_ctc_beam_search(x, (int)len[b], (int)V, opts, out + b * k, &n_out[b]);
        } else {
            st = lu_ctc_greedy(x, (int)len[b], (int)V, 0, &out[b]);
            n_out[b] = 1;
        }
        if (st != LU_OK) break;
    }
    if (st != LU_OK)
        for (int64_t q = 0; q < b; q++)
            for (int r = 0; r < n_out[q]; r++) lu_ctc_hyp_free(&out[q * k + r]);
done:
    free(host);
    free(len);
    return st;
}
