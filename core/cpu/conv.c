/* conv.c - CPU kernels of the convolution-module ops: conv1d/conv2d (grouped, strided, dilated),
 * batch normalisation and dropout (float and double, see conv_generic.h).
 *
 * Convolution takes two paths. When every group sees one input channel (depthwise, as in the
 * Conformer/Zipformer convolution modules with k = 31/15, or a single-channel input) a direct
 * loop is cheapest. Otherwise each (batch, group) is one GEMM over im2col columns:
 * y_g [Cout/g, OH*OW] = w_g [Cout/g, Cin/g*KH*KW] @ col [Cin/g*KH*KW, OH*OW]; a 1x1 kernel with
 * unit stride and no padding needs no im2col (the input already is the column matrix). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../rng.h"
#include "cpu.h"

/* One geometry for both ops: a 1-D convolution is a 2-D one with H = KH = 1. Axis 0 is height,
 * axis 1 width (time for conv1d). */
typedef struct conv_geom {
    int64_t batch, cin, cout, h, w, kh, kw, oh, ow, groups;
    int64_t stride[2], pad[2], dil[2];
} conv_geom;

static conv_geom conv_geom_of(const lu_op_call *c, const lu_tensor *x, const lu_tensor *w, const lu_tensor *y)
{
    conv_geom g = {.batch = x->shape[0], .cin = x->shape[1], .cout = w->shape[0]};
    if (c->op == LU_OP_CONV1D) {
        const lu_conv1d_params *p = c->params;
        g.h = g.kh = g.oh = 1;
        g.w = x->shape[2];
        g.kw = w->shape[2];
        g.ow = y->shape[2];
        g.groups = p->groups;
        g.stride[0] = g.dil[0] = 1;
        g.pad[0] = 0;
        g.stride[1] = p->stride;
        g.pad[1] = p->padding;
        g.dil[1] = p->dilation;
    } else {
        const lu_conv2d_params *p = c->params;
        g.h = x->shape[2];
        g.w = x->shape[3];
        g.kh = w->shape[2];
        g.kw = w->shape[3];
        g.oh = y->shape[2];
        g.ow = y->shape[3];
        g.groups = p->groups;
        for (int a = 0; a < 2; a++) {
            g.stride[a] = p->stride[a];
            g.pad[a] = p->padding[a];
            g.dil[a] = p->dilation[a];
        }
    }
    return g;
}

/* Kernel taps k in [*lo, *hi) whose input index o*s - p + k*d lies inside [0, n). */
static void conv_taps(int64_t o, int64_t s, int64_t p, int64_t d, int64_t k, int64_t n, int64_t *lo, int64_t *hi)
{
    int64_t start = o * s - p;
    int64_t l = start < 0 ? (-start + d - 1) / d : 0;
    int64_t h = start >= n ? 0 : (n - 1 - start) / d + 1;
    if (h > k) h = k;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* No im2col needed: 1x1 kernel, unit stride, no padding. */
static bool conv_is_pointwise(const conv_geom *g)
{
    return g->kh == 1 && g->kw == 1 && g->stride[0] == 1 && g->stride[1] == 1 && g->pad[0] == 0 && g->pad[1] == 0;
}

/* Elements of one im2col buffer: [Cin/g * KH * KW, OH * OW]. */
static int64_t conv_col_size(const conv_geom *g) { return g->cin / g->groups * g->kh * g->kw * g->oh * g->ow; }

/* Whether the general path's (batch, group) tasks run one per thread: when there is at least
 * one per thread. */
static bool conv_tasks_parallel(int64_t tasks)
{
    int threads = omp_get_max_threads();
    return threads > 1 && tasks >= threads;
}

static lu_status conv_nomem(const lu_op_call *c, const conv_geom *g)
{
    return lu_errorf(LU_ERR_NOMEM, "%s: cannot allocate the im2col buffer [%lld, %lld]", lu_op_name(c->op),
                     (long long)(g->cin / g->groups * g->kh * g->kw), (long long)(g->oh * g->ow));
}

/* Dropout drops element i when its uniform (w >> 8) / 2^24 is below p (lu_rng_uniform), that is
 * when the integer w >> 8 is below ceil(p * 2^24). */
static uint32_t dropout_threshold(double p) { return (uint32_t)ceil(p * 16777216.0); }

#define LU_GENERIC_FILE "conv_generic.h"
#include "generic.h"

static lu_status conv_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(conv_fwd, c, c->out[0]->dtype); }
static lu_status conv_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(conv_bwd, c, c->in[1]->dtype); }
static lu_status batchnorm_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(batchnorm_fwd, c, c->out[0]->dtype); }
static lu_status batchnorm_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(batchnorm_bwd, c, c->in[3]->dtype); }
static lu_status dropout_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(dropout_fwd, c, c->out[0]->dtype); }
static lu_status dropout_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(dropout_bwd, c, c->in[1]->dtype); }

void lu_cpu_register_conv(lu_backend *b)
{
    b->forward[LU_OP_CONV1D] = conv_forward;
    b->backward[LU_OP_CONV1D] = conv_backward;
    b->forward[LU_OP_CONV2D] = conv_forward;
    b->backward[LU_OP_CONV2D] = conv_backward;
    b->forward[LU_OP_BATCHNORM] = batchnorm_forward;
    b->backward[LU_OP_BATCHNORM] = batchnorm_backward;
    b->forward[LU_OP_DROPOUT] = dropout_forward;
    b->backward[LU_OP_DROPOUT] = dropout_backward;
}
