/* resample.c - CPU kernels of the frame-rate changes: decimate (keep every factor-th frame),
 * upsample (repeat each frame factor times) and icefall's SimpleDownsample (softmax-weighted
 * average of factor frames).
 *
 * A tensor is read as [outer, T, inner] around the resampled dim. Decimate and upsample only move
 * elements, so their forwards copy bytes and work for every dtype; the backwards that add up
 * gradients and the downsample are float and double (resample_generic.h). */
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

typedef struct frames {
    int64_t outer, t, inner; /* x viewed as [outer, t, inner] */
    int64_t t_out;           /* frames of y */
    size_t row;              /* bytes of one frame (inner elements) */
} frames;

static frames frames_of(const lu_tensor *x, const lu_tensor *y, int dim)
{
    frames f = {1, x->shape[dim], 1, y->shape[dim], 0};
    for (int i = 0; i < dim; i++) f.outer *= x->shape[i];
    for (int i = dim + 1; i < x->ndim; i++) f.inner *= x->shape[i];
    f.row = (size_t)f.inner * lu_dtype_size(x->dtype);
    return f;
}

#define LU_GENERIC_FILE "resample_generic.h"
#include "generic.h"

/* y[o, t] = x[o, t*factor]. */
static lu_status decimate_forward(const lu_op_call *c)
{
    const lu_resample_params *p = c->params;
    frames f = frames_of(c->in[0], c->out[0], p->dim);
    const char *x = lu_tensor_data(c->in[0]);
    char *y = lu_tensor_data(c->out[0]);
#pragma omp parallel for if (f.outer * f.t_out * f.inner > 65536)
    for (int64_t r = 0; r < f.outer * f.t_out; r++) {
        int64_t o = r / f.t_out, t = r % f.t_out;
        memcpy(y + (size_t)r * f.row, x + (size_t)(o * f.t + t * p->factor) * f.row, f.row);
    }
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]: dx[o, t*factor] = dy[o, t], zero elsewhere. */
static lu_status decimate_backward(const lu_op_call *c)
{
    const lu_resample_params *p = c->params;
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    memset(lu_tensor_data(dx), 0, lu_tensor_nbytes(dx));
    if (!c->in[0]) return LU_OK;
    frames f = frames_of(c->in[1], c->in[2], p->dim);
    const char *dy = lu_tensor_data(c->in[0]);
    char *d = lu_tensor_data(dx);
#pragma omp parallel for if (f.outer * f.t_out * f.inner > 65536)
    for (int64_t r = 0; r < f.outer * f.t_out; r++) {
        int64_t o = r / f.t_out, t = r % f.t_out;
        memcpy(d + (size_t)(o * f.t + t * p->factor) * f.row, dy + (size_t)r * f.row, f.row);
    }
    return LU_OK;
}

/* y[o, t] = x[o, t / factor] for t < out_len. */
static lu_status upsample_forward(const lu_op_call *c)
{
    const lu_resample_params *p = c->params;
    frames f = frames_of(c->in[0], c->out[0], p->dim);
    const char *x = lu_tensor_data(c->in[0]);
    char *y = lu_tensor_data(c->out[0]);
#pragma omp parallel for if (f.outer * f.t_out * f.inner > 65536)
    for (int64_t r = 0; r < f.outer * f.t_out; r++) {
        int64_t o = r / f.t_out, t = r % f.t_out;
        memcpy(y + (size_t)r * f.row, x + (size_t)(o * f.t + t / p->factor) * f.row, f.row);
    }
    return LU_OK;
}

static lu_status upsample_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(upsample_bwd, c, c->in[1]->dtype); }
static lu_status downsample_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(downsample_fwd, c, c->out[0]->dtype); }
static lu_status downsample_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(downsample_bwd, c, c->in[1]->dtype); }

void lu_cpu_register_resample(lu_backend *b)
{
    b->forward[LU_OP_DECIMATE] = decimate_forward;
    b->backward[LU_OP_DECIMATE] = decimate_backward;
    b->forward[LU_OP_UPSAMPLE] = upsample_forward;
    b->backward[LU_OP_UPSAMPLE] = upsample_backward;
    b->forward[LU_OP_DOWNSAMPLE] = downsample_forward;
    b->backward[LU_OP_DOWNSAMPLE] = downsample_backward;
}
