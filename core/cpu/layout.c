/* layout.c - CPU kernels that move data: strided -> contiguous copies, dtype casts, and the
 * in-place accumulation autograd uses to add up gradients. */
#include <string.h>

#include "cpu.h"

/* Dims of a copy after dropping size-1 dims and merging neighbours that are contiguous with each
 * other in both tensors (a [B,T,C] -> [B,C,T] transpose stays 3-D, a row slice becomes 1-D). */
typedef struct copy_dims {
    int n;
    int64_t shape[LU_MAX_DIMS], sd[LU_MAX_DIMS], ss[LU_MAX_DIMS];
} copy_dims;

static copy_dims copy_dims_of(const int64_t *shape, const int64_t *dst_stride, const int64_t *src_stride, int ndim)
{
    copy_dims g = {0};
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 1) continue;
        int k = g.n - 1;
        if (k >= 0 && g.sd[k] == dst_stride[i] * shape[i] && g.ss[k] == src_stride[i] * shape[i]) {
            g.shape[k] *= shape[i];
            g.sd[k] = dst_stride[i];
            g.ss[k] = src_stride[i];
            continue;
        }
        g.shape[g.n] = shape[i];
        g.sd[g.n] = dst_stride[i];
        g.ss[g.n] = src_stride[i];
        g.n++;
    }
    return g;
}

/* Offsets of outer position r over dims [0, n) of g, except dim `skip` (-1: none). */
static void copy_offsets(const copy_dims *g, int n, int skip, int64_t r, int64_t *od, int64_t *os)
{
    int64_t d = 0, s = 0;
    for (int k = n - 1; k >= 0; k--) {
        if (k == skip) continue;
        int64_t c = r % g->shape[k];
        r /= g->shape[k];
        d += c * g->sd[k];
        s += c * g->ss[k];
    }
    *od = d;
    *os = s;
}

/* Tiles of a transposed copy: TILE x TILE elements stay in L1 while rows of one side and
 * columns of the other are walked. */
#define TILE 32

/* One strided-copy loop per element width; a transpose (the source's unit-stride dim p is not
 * the destination's inner dim) goes by tiles so that both sides read whole cache lines. */
#define LU_STRIDED_COPY(T)                                                                         \
    static void strided_copy_##T(const copy_dims *g, T *dst, const T *src, int64_t n)              \
    {                                                                                              \
        int q = g->n - 1, p = -1;                                                                  \
        int64_t L = g->shape[q], ds = g->sd[q], ss = g->ss[q];                                     \
        for (int k = 0; k < q && ss != 1 && ds == 1; k++)                                          \
            if (g->ss[k] == 1) p = k;                                                              \
        if (p < 0) {                                                                               \
            _Pragma("omp parallel for if (n > 65536)")                                             \
            for (int64_t r = 0; r < n / L; r++) {                                                  \
                int64_t od, os;                                                                    \
                copy_offsets(g, q, -1, r, &od, &os);                                               \
                T *restrict d = dst + od;                                                          \
                const T *restrict s = src + os;                                                    \
                if (ds == 1 && ss == 1) memcpy(d, s, (size_t)L * sizeof(T));                       \
                else                                                                               \
                    for (int64_t i = 0; i < L; i++) d[i * ds] = s[i * ss];                         \
            }                                                                                      \
            return;                                                                                \
        }                                                                                          \
        int64_t P = g->shape[p], dp = g->sd[p], tp = (P + TILE - 1) / TILE, tq = (L + TILE - 1) / TILE; \
        int64_t outer = n / (P * L);                                                               \
        _Pragma("omp parallel for if (n > 65536)")                                                 \
        for (int64_t t = 0; t < outer * tp * tq; t++) {                                            \
            int64_t r = t / (tp * tq), p0 = t / tq % tp * TILE, q0 = t % tq * TILE;                \
            int64_t pn = P - p0 < TILE ? P - p0 : TILE, qn = L - q0 < TILE ? L - q0 : TILE;        \
            int64_t od, os;                                                                        \
            copy_offsets(g, q, p, r, &od, &os);                                                    \
            for (int64_t i = 0; i < pn; i++) {                                                     \
                T *restrict d = dst + od + (p0 + i) * dp + q0;                                     \
                const T *restrict s = src + os + (p0 + i) + q0 * ss;                               \
                for (int64_t j = 0; j < qn; j++) d[j] = s[j * ss];                                 \
            }                                                                                      \
        }                                                                                          \
    }
LU_STRIDED_COPY(uint8_t)
LU_STRIDED_COPY(uint16_t)
LU_STRIDED_COPY(uint32_t)
LU_STRIDED_COPY(uint64_t)
#undef LU_STRIDED_COPY

void lu_cpu_strided_copy(void *dst, const int64_t *dst_stride, const void *src, const int64_t *src_stride,
                         const int64_t *shape, int ndim, size_t es)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    if (n == 0) return;
    copy_dims g = copy_dims_of(shape, dst_stride, src_stride, ndim);
    if (g.n == 0) { /* one element */
        memcpy(dst, src, es);
        return;
    }
    switch (es) {
    case 1: strided_copy_uint8_t(&g, dst, src, n); return;
    case 2: strided_copy_uint16_t(&g, dst, src, n); return;
    case 4: strided_copy_uint32_t(&g, dst, src, n); return;
    case 8: strided_copy_uint64_t(&g, dst, src, n); return;
    }
    /* Other widths: element by element, with the width folded into the strides as bytes. */
    for (int64_t r = 0; r < n; r++) {
        int64_t od, os;
        copy_offsets(&g, g.n, -1, r, &od, &os);
        memcpy((char *)dst + od * (int64_t)es, (const char *)src + os * (int64_t)es, es);
    }
}

static lu_status contiguous_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    lu_cpu_strided_copy(lu_tensor_data(y), y->stride, lu_tensor_data(x), x->stride, x->shape, x->ndim,
                        lu_dtype_size(x->dtype));
    return LU_OK;
}

static lu_status cast_forward(const lu_op_call *c)
{
    lu_dtype_convert(lu_tensor_data(c->out[0]), c->out[0]->dtype, lu_tensor_data(c->in[0]), c->in[0]->dtype,
                     (size_t)lu_tensor_numel(c->in[0]));
    return LU_OK;
}

static lu_status accumulate_forward(const lu_op_call *c)
{
    int64_t n = lu_tensor_numel(c->in[0]);
    bool bf16_into_f32 = c->in[0]->dtype == LU_BF16 && c->out[0]->dtype == LU_F32;
    if ((c->in[0]->dtype != c->out[0]->dtype && !bf16_into_f32) || n != lu_tensor_numel(c->out[0]))
        return lu_errorf(LU_ERR_SHAPE, "accumulate: %s[%lld] into %s[%lld]", lu_dtype_name(c->in[0]->dtype),
                         (long long)n, lu_dtype_name(c->out[0]->dtype), (long long)lu_tensor_numel(c->out[0]));
    if (bf16_into_f32) {
        const uint16_t *g = lu_tensor_data(c->in[0]);
        float *d = lu_tensor_data(c->out[0]);
#pragma omp parallel for simd if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] += lu_bf16_to_f32(g[i]);
    } else if (c->in[0]->dtype == LU_F32) {
        const float *g = lu_tensor_data(c->in[0]);
        float *d = lu_tensor_data(c->out[0]);
#pragma omp parallel for simd if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] += g[i];
    } else if (c->in[0]->dtype == LU_F64) {
        const double *g = lu_tensor_data(c->in[0]);
        double *d = lu_tensor_data(c->out[0]);
#pragma omp parallel for simd if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] += g[i];
    } else {
        return lu_errorf(LU_ERR_DTYPE, "accumulate: dtype %s not supported on cpu", lu_dtype_name(c->in[0]->dtype));
    }
    return LU_OK;
}

void lu_cpu_register_layout(lu_backend *b)
{
    b->forward[LU_OP_CONTIGUOUS] = contiguous_forward;
    b->forward[LU_OP_CAST] = cast_forward;
    b->forward[LU_OP_ACCUMULATE] = accumulate_forward;
}
