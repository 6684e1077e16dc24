/* merge_methods.c - the per-tensor formulas of the merge methods, as mergekit 0.1.5 computes them
 * (merge_methods/{linear,slerp,nuslerp,generalized_task_arithmetic,model_stock}.py, sparsify.py;
 * ../shared/reference/merging.md §4). Every function sees one output tensor's inputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "models/merge.h"

static const struct {
    const char *name;
    lu_merge_method method;
} method_names[] = {
    {"linear", LU_MERGE_LINEAR},         {"slerp", LU_MERGE_SLERP},
    {"nuslerp", LU_MERGE_NUSLERP},       {"task_arithmetic", LU_MERGE_TASK_ARITHMETIC},
    {"ties", LU_MERGE_TIES},             {"dare_ties", LU_MERGE_DARE_TIES},
    {"dare_linear", LU_MERGE_DARE_LINEAR}, {"model_stock", LU_MERGE_MODEL_STOCK},
};

bool lu_merge_method_parse(const char *name, lu_merge_method *out)
{
    for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++)
        if (!strcmp(name, method_names[i].name)) {
            *out = method_names[i].method;
            return true;
        }
    return false;
}

/* Defaults of registry.py: ties normalizes, the DARE pair rescales, task_arithmetic neither. */
void lu_merge_args_defaults(lu_merge_args *a, lu_merge_method method)
{
    memset(a, 0, sizeof *a);
    a->method = method;
    a->base = -1;
    a->rows = 1;
    a->lambda = 1.0;
    a->normalize = method == LU_MERGE_LINEAR || method == LU_MERGE_TIES;
    a->rescale = method == LU_MERGE_DARE_TIES || method == LU_MERGE_DARE_LINEAR;
    a->flatten = true;
}

void lu_merge_sparsify_random(double *delta, int64_t n, double density, bool rescale, uint64_t seed, uint64_t stream,
                              uint32_t op)
{
    if (density >= 1) return;
    double before = 0, after = 0;
    for (int64_t i = 0; i < n; i++) {
        before += fabs(delta[i]);
        if (!(lu_rng_uniform(seed, stream, op, (uint64_t)i) < density)) delta[i] = 0;
        after += fabs(delta[i]);
    }
    if (!rescale || before < 1e-7 || after < 1e-7) return;
    double s = before / after;
    for (int64_t i = 0; i < n; i++) delta[i] *= s;
}

/* qsort has no context argument; sparsification runs on the calling thread only. */
static const double *sort_key;

/* Descending |delta|, then ascending index. */
static int by_magnitude_desc(const void *pa, const void *pb)
{
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    double ma = fabs(sort_key[a]), mb = fabs(sort_key[b]);
    if (ma != mb) return ma > mb ? -1 : 1;
    return (a > b) - (a < b);
}

lu_status lu_merge_sparsify_magnitude(double *delta, int64_t n, double density)
{
    if (density >= 1 || n == 0) return LU_OK;
    if (density <= 0) {
        memset(delta, 0, (size_t)n * sizeof *delta);
        return LU_OK;
    }
    int64_t k = (int64_t)(density * (double)n);
    if (k < 1) k = 1;
    int64_t *idx = malloc((size_t)n * sizeof *idx);
    unsigned char *keep = calloc((size_t)n, 1);
    if (!idx || !keep) {
        free(idx);
        free(keep);
        return lu_errorf(LU_ERR_NOMEM, "merge: ties: no memory to sort %lld deltas", (long long)n);
    }
    for (int64_t i = 0; i < n; i++) idx[i] = i;
    sort_key = delta;
    qsort(idx, (size_t)n, sizeof *idx, by_magnitude_desc);
    for (int64_t i = 0; i < k; i++) keep[idx[i]] = 1;
    for (int64_t i = 0; i < n; i++)
        if (!keep[i]) delta[i] = 0;
    free(idx);
    free(keep);
    return LU_OK;
}

/* The elementwise methods run on OpenMP threads over blocks of BLOCK elements; their sums over
 * a whole tensor are summed per block, then over the blocks in order, so that a merge gives the
 * same bits for any thread count. */
#define BLOCK 65536

/* linear.py: sum_i w_i x_i, divided by sum_i w_i when normalize. */
static void merge_linear(const lu_merge_args *a, float *out)
{
    double wsum = 0;
    for (int i = 0; i < a->n; i++) wsum += a->weight[i];
#pragma omp parallel for schedule(static) if (a->numel > BLOCK)
    for (int64_t e = 0; e < a->numel; e++) {
        double s = 0;
        for (int i = 0; i < a->n; i++) s += a->weight[i] * a->x[i][e];
        out[e] = (float)(a->normalize ? s / wsum : s);
    }
}

/* slerp.py: one angle for the whole flattened tensor; v0 = base (t = 0), v1 = the other. Norms
 * <= 1e-8 count as 1; dot clamped to [-1, 1]; |dot| > 0.9995 falls back to lerp. part holds
 * 2 * ceil(numel / BLOCK) doubles of scratch. */
static void merge_slerp(const lu_merge_args *a, float *out, double *part)
{
    const float *v0 = a->x[a->base], *v1 = a->x[1 - a->base];
    int64_t nb = (a->numel + BLOCK - 1) / BLOCK;
    double n0 = 0, n1 = 0, dot = 0, t = a->t;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        double s0 = 0, s1 = 0;
        for (int64_t e = b * BLOCK; e < a->numel && e < (b + 1) * BLOCK; e++) {
            s0 += (double)v0[e] * v0[e];
            s1 += (double)v1[e] * v1[e];
        }
        part[2 * b] = s0;
        part[2 * b + 1] = s1;
    }
    for (int64_t b = 0; b < nb; b++) n0 += part[2 * b], n1 += part[2 * b + 1];
    n0 = sqrt(n0) > 1e-8 ? sqrt(n0) : 1;
    n1 = sqrt(n1) > 1e-8 ? sqrt(n1) : 1;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        double d = 0;
        for (int64_t e = b * BLOCK; e < a->numel && e < (b + 1) * BLOCK; e++) d += (v0[e] / n0) * (v1[e] / n1);
        part[b] = d;
    }
    for (int64_t b = 0; b < nb; b++) dot += part[b];
    dot = fmin(1, fmax(-1, dot));
    double c0 = 1 - t, c1 = t;
    if (fabs(dot) <= 0.9995) {
        double theta = acos(dot), s = sin(theta);
        c0 = sin((1 - t) * theta) / s;
        c1 = sin(t * theta) / s;
    }
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t e = 0; e < a->numel; e++) out[e] = (float)(c0 * v0[e] + c1 * v1[e]);
}

/* nuslerp.py::nuslerp on `count` vectors of `len` elements, element j of vector v at
 * v * vstride + j * estride. u = v / max(||v||, 1e-7); colinear when 1 - cos^2 <= 1e-16. */
static void nuslerp_vectors(const double *v0, const double *v1, double t, int64_t count, int64_t len, int64_t vstride,
                            int64_t estride, double *res)
{
    for (int64_t v = 0; v < count; v++) {
        double n0 = 0, n1 = 0, dot = 0;
        for (int64_t j = 0; j < len; j++) {
            int64_t e = v * vstride + j * estride;
            n0 += v0[e] * v0[e];
            n1 += v1[e] * v1[e];
            dot += v0[e] * v1[e];
        }
        double c = dot / (fmax(sqrt(n0), 1e-7) * fmax(sqrt(n1), 1e-7));
        c = fmin(1, fmax(-1, c));
        double c0 = 1 - t, c1 = t;
        if (1 - c * c > 1e-16) {
            double theta = acos(c), s = sin(theta);
            c0 = sin((1 - t) * theta) / s;
            c1 = sin(t * theta) / s;
        }
        for (int64_t j = 0; j < len; j++) {
            int64_t e = v * vstride + j * estride;
            res[e] = c0 * v0[e] + c1 * v1[e];
        }
    }
}

/* The two non-base inputs, in config order. */
static void non_base_pair(const lu_merge_args *a, int *i0, int *i1)
{
    int k = 0, idx[2] = {0, 0};
    for (int i = 0; i < a->n && k < 2; i++)
        if (i != a->base) idx[k++] = i;
    *i0 = idx[0];
    *i1 = idx[1];
}

/* nuslerp.py: t = w1 / (w0 + w1) (0.5 when |sum| < 1e-6); with a base, slerp the task vectors. */
static lu_status merge_nuslerp(const lu_merge_args *a, float *out, double *v0, double *v1)
{
    int i0, i1;
    non_base_pair(a, &i0, &i1);
    double total = a->weight[i0] + a->weight[i1];
    double t = fabs(total) < 1e-6 ? 0.5 : a->weight[i1] / total;
    const float *b = a->base >= 0 ? a->x[a->base] : NULL;
    for (int64_t e = 0; e < a->numel; e++) {
        v0[e] = (double)a->x[i0][e] - (b ? b[e] : 0);
        v1[e] = (double)a->x[i1][e] - (b ? b[e] : 0);
    }
    int64_t cols = a->numel / a->rows;
    if (a->flatten || a->rows == 1 || cols == 1)
        nuslerp_vectors(v0, v1, t, 1, a->numel, 0, 1, v0);
    else if (a->row_wise) /* transpose(0, -1): one vector per column, along dim 0 */
        nuslerp_vectors(v0, v1, t, cols, a->rows, 1, cols, v0);
    else /* one vector per row, along the last dim */
        nuslerp_vectors(v0, v1, t, a->rows, cols, cols, 1, v0);
    for (int64_t e = 0; e < a->numel; e++) out[e] = (float)(v0[e] + (b ? b[e] : 0));
    return LU_OK;
}

/* generalized_task_arithmetic.py::merge_group with get_mask(method="sum"). deltas holds
 * (n - 1) * numel doubles of scratch. */
static lu_status merge_task_arithmetic(const lu_merge_args *a, float *out, double *deltas)
{
    const float *b = a->x[a->base];
    bool consensus = a->method == LU_MERGE_TIES || a->method == LU_MERGE_DARE_TIES;
    int m = 0;
    double w[64];
    if (a->n - 1 > 64) return lu_errorf(LU_ERR_INVALID, "merge: at most 65 models, got %d", a->n);
    for (int i = 0; i < a->n; i++) {
        if (i == a->base) continue;
        double *d = deltas + (int64_t)m * a->numel;
        for (int64_t e = 0; e < a->numel; e++) d[e] = (double)a->x[i][e] - b[e];
        if (a->method == LU_MERGE_TIES)
            LU_TRY(lu_merge_sparsify_magnitude(d, a->numel, a->density[i]));
        else if (a->method == LU_MERGE_DARE_TIES || a->method == LU_MERGE_DARE_LINEAR)
            lu_merge_sparsify_random(d, a->numel, a->density[i], a->rescale, a->seed, a->stream, (uint32_t)i);
        w[m] = a->weight[i];
        for (int64_t e = 0; e < a->numel; e++) d[e] *= w[m];
        m++;
    }
    for (int64_t e = 0; e < a->numel; e++) {
        double mixed = 0, divisor = 0;
        if (consensus) {
            double sum = 0;
            for (int j = 0; j < m; j++) sum += deltas[(int64_t)j * a->numel + e];
            double majority = sum >= 0 ? 1 : -1;
            for (int j = 0; j < m; j++) {
                double d = deltas[(int64_t)j * a->numel + e];
                double sign = (d > 0) - (d < 0);
                if (sign == majority) {
                    mixed += d;
                    divisor += w[j];
                }
            }
            if (divisor == 0) divisor = 1;
        } else {
            for (int j = 0; j < m; j++) {
                mixed += deltas[(int64_t)j * a->numel + e];
                divisor += w[j];
            }
            if (fabs(divisor) < 1e-8) divisor = 1;
        }
        if (a->normalize) mixed /= divisor;
        out[e] = (float)(b[e] + a->lambda * mixed);
    }
    return LU_OK;
}

/* model_stock.py: offsets from the base per row (filter_wise) or flattened; t = N cos / (1 +
 * (N - 1) cos) with cos the mean pairwise cosine (denominator clamped to 1e-6, each cosine to
 * [-1, 1]); t = 0 where |1 + (N - 1) cos| < 1e-6; out = t * mean(models) + (1 - t) * base. */
static void merge_model_stock(const lu_merge_args *a, float *out)
{
    const float *w0 = a->x[a->base];
    int64_t rows = a->filter_wise ? a->rows : 1, len = a->numel / rows;
    int count = a->n - 1;
    for (int64_t r = 0; r < rows; r++) {
        double cos_sum = 0;
        int pairs = 0;
        for (int i = 0; i < a->n; i++)
            for (int j = i + 1; j < a->n; j++) {
                if (i == a->base || j == a->base) continue;
                double dot = 0, ni = 0, nj = 0;
                for (int64_t k = r * len; k < (r + 1) * len; k++) {
                    double oi = (double)a->x[i][k] - w0[k], oj = (double)a->x[j][k] - w0[k];
                    dot += oi * oj;
                    ni += oi * oi;
                    nj += oj * oj;
                }
                cos_sum += fmin(1, fmax(-1, dot / fmax(sqrt(ni) * sqrt(nj), 1e-6)));
                pairs++;
            }
        double cos = cos_sum / pairs, den = 1 + (count - 1) * cos;
        double t = fabs(den) < 1e-6 ? 0 : count * cos / den;
        for (int64_t k = r * len; k < (r + 1) * len; k++) {
            double mean = 0;
            for (int i = 0; i < a->n; i++)
                if (i != a->base) mean += a->x[i][k];
            out[k] = (float)(t * (mean / count) + (1 - t) * w0[k]);
        }
    }
}

lu_status lu_merge_tensor(const lu_merge_args *a, float *out)
{
    int non_base = a->n - (a->base >= 0);
    switch (a->method) {
    case LU_MERGE_LINEAR:
        if (a->n < 1) return lu_errorf(LU_ERR_INVALID, "merge: linear needs at least one model");
        merge_linear(a, out);
        return LU_OK;
    case LU_MERGE_SLERP: {
        if (a->n != 2 || a->base < 0)
            return lu_errorf(LU_ERR_INVALID, "merge: slerp needs exactly 2 models, one of them base_model (got %d%s)",
                             a->n, a->base < 0 ? ", no base" : "");
        int64_t nb = (a->numel + BLOCK - 1) / BLOCK;
        double *part = malloc((size_t)(2 * nb + 1) * sizeof *part);
        if (!part) return lu_errorf(LU_ERR_NOMEM, "merge: no memory for %lld partial sums", (long long)nb);
        merge_slerp(a, out, part);
        free(part);
        return LU_OK;
    }
    case LU_MERGE_MODEL_STOCK:
        if (a->base < 0 || non_base < 2)
            return lu_errorf(LU_ERR_INVALID, "merge: model_stock needs base_model and at least 2 other models (got %d)",
                             non_base);
        merge_model_stock(a, out);
        return LU_OK;
    default:
        break;
    }
    if (a->method == LU_MERGE_NUSLERP ? non_base != 2 : a->base < 0)
        return lu_errorf(LU_ERR_INVALID, "merge: %s needs %s", a->method == LU_MERGE_NUSLERP ? "nuslerp" : "this method",
                         a->method == LU_MERGE_NUSLERP ? "exactly 2 models besides base_model" : "base_model");
    int64_t scratch = a->method == LU_MERGE_NUSLERP ? 2 * a->numel : (int64_t)(a->n - 1) * a->numel;
    double *buf = malloc((size_t)(scratch > 0 ? scratch : 1) * sizeof *buf);
    if (!buf) return lu_errorf(LU_ERR_NOMEM, "merge: no memory for %lld scratch values", (long long)scratch);
    lu_status s = a->method == LU_MERGE_NUSLERP ? merge_nuslerp(a, out, buf, buf + a->numel)
                                                 : merge_task_arithmetic(a, out, buf);
    free(buf);
    return s;
}
