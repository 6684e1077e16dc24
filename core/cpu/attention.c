/* attention.c - CPU scaled dot-product attention (float and double): grouped-query heads,
 * causal and key-padding masks, packed variable-length sequences (cu_seqlens), optional
 * returned weights. The kernels (attention_generic.h) work on blocks of queries of one head
 * with GEMMs for the scores and for P @ V, and keep only the row log-sum-exp for backward. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

/* Queries per block: one GEMM computes their scores against all keys any of them can see. */
#define LU_ATT_QB 64

typedef struct att_dims {
    int64_t b, tq, tk, hq, hkv, d, dv;
    double scale;
    bool causal;
    const uint8_t *mask; /* [B, Tk], nonzero = ignore; or NULL */
    const lu_tensor *cu; /* cu_seqlens [S+1] (validated by the frontend); or NULL */
} att_dims;

static att_dims att_dims_of(const lu_attention_params *p, const lu_tensor *q, const lu_tensor *k,
                            const lu_tensor *v, const lu_tensor *mask, const lu_tensor *cu)
{
    att_dims a = {q->shape[0], q->shape[1], k->shape[1], q->shape[2], k->shape[2], q->shape[3], v->shape[3],
                  p->scale, p->causal, mask ? lu_tensor_data(mask) : NULL, cu};
    return a;
}

/* Keys [lo, hi) that query i may see before the padding mask: causal limits them to
 * j <= i + Tk - Tq (the last query aligns with the last key), packing to i's own segment. */
static void att_key_range(const att_dims *a, int64_t i, int64_t *lo, int64_t *hi)
{
    int64_t l = 0, h = a->tk;
    if (a->causal && i + a->tk - a->tq + 1 < h) h = i + a->tk - a->tq + 1;
    if (a->cu) {
        /* Largest s with cu[s] <= i; cu is non-decreasing from 0 to T. */
        int64_t s0 = 0, s1 = lu_tensor_numel(a->cu) - 1;
        while (s1 - s0 > 1) {
            int64_t m = (s0 + s1) / 2;
            if (lu_cpu_index_at(a->cu, m) <= i) s0 = m;
            else s1 = m;
        }
        int64_t start = lu_cpu_index_at(a->cu, s0), end = lu_cpu_index_at(a->cu, s0 + 1);
        if (start > l) l = start;
        if (end < h) h = end;
    }
    *lo = l;
    *hi = h > l ? h : l;
}

#define LU_GENERIC_FILE "attention_generic.h"
#include "generic.h"

/* The kernels run their own OpenMP threads, one GEMM per query block; OpenBLAS is the OpenMP
 * build (CMakeLists.txt), so those GEMMs run on the calling thread. */
static lu_status attention_fwd(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(attention_fwd, c, c->in[0]->dtype); }

/* The dtype is q's: backward inputs start with one gradient slot per output. */
static lu_status attention_bwd(const lu_op_call *c)
{
    const lu_attention_params *p = c->params;
    LU_CPU_DISPATCH_FLOAT(attention_bwd, c, c->in[p->return_weights ? 3 : 2]->dtype);
}


void lu_cpu_register_attention(lu_backend *b)
{
    b->forward[LU_OP_ATTENTION] = attention_fwd;
    b->backward[LU_OP_ATTENTION] = attention_bwd;
}
