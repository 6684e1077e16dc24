/* elementwise.cu - CUDA kernels of the elementwise ops, f32 and bf16 (fp32 math): the binary
 * ops ADD/SUB/MUL/DIV on broadcast, strided inputs, AFFINE, and the unary activations, each
 * with its backward. Formulas as in core/op.h; core/cpu/elementwise.c is the reference.
 *
 * Broadcasting: an input of rank <= rank(y) is aligned to y's trailing dims; each of its dims
 * equals y's or is 1. The backward of a binary op writes dx with x's own shape, summing dy over
 * the dims along which x was broadcast: one thread per element of dx, looping over those dims
 * (a fixed order, so the result does not depend on the launch). */
#include <math.h>

#include "device.cuh"
#include "rows.cuh"

/* ---- binary ops ---- */

enum { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV };

static int binary_kind(lu_op op)
{
    switch (op) {
    case LU_OP_ADD: return BIN_ADD;
    case LU_OP_SUB: return BIN_SUB;
    case LU_OP_MUL: return BIN_MUL;
    default: return BIN_DIV;
    }
}

static __device__ __forceinline__ float binary_apply(int kind, float a, float b)
{
    switch (kind) {
    case BIN_ADD: return a + b;
    case BIN_SUB: return a - b;
    case BIN_MUL: return a * b;
    default: return a / b;
    }
}

/* d y / d a (which == 0) or d y / d b (which == 1), times g. */
static __device__ __forceinline__ float binary_grad(int kind, int which, float a, float b, float g)
{
    switch (kind) {
    case BIN_ADD: return g;
    case BIN_SUB: return which ? -g : g;
    case BIN_MUL: return which ? g * a : g * b;
    default: return which ? -g * a / (b * b) : g / b;
    }
}

/* x's layout seen from y: y's shape, x's strides on matching dims, 0 on broadcast ones. Fails
 * when x cannot broadcast to y. */
static lu_status broadcast_layout(const lu_tensor *x, const lu_tensor *y, const char *op, lu_cuda_layout *l)
{
    int lead = y->ndim - x->ndim;
    memset(l, 0, sizeof *l);
    l->ndim = y->ndim;
    for (int k = 0; k < y->ndim; k++) {
        int xk = k - lead;
        int64_t xs = xk >= 0 ? x->shape[xk] : 1;
        if (lead < 0 || (xs != y->shape[k] && xs != 1)) {
            char sx[LU_SHAPE_STR_MAX], sy[LU_SHAPE_STR_MAX];
            return lu_errorf(LU_ERR_SHAPE, "%s: input %s does not broadcast to the output %s", op,
                             lu_shape_str(x, sx, sizeof sx), lu_shape_str(y, sy, sizeof sy));
        }
        l->shape[k] = y->shape[k];
        l->stride[k] = xk >= 0 && xs == y->shape[k] ? x->stride[xk] : 0;
    }
    return LU_OK;
}

static __global__ void binary_forward_kernel(int kind, int dt, const void *a, lu_cuda_layout la, const void *b,
                                             lu_cuda_layout lb, void *y, int64_t n, bool contiguous)
{
    LU_CUDA_FOR(i, n)
    {
        int64_t ia = contiguous ? i : lu_dev_offset(&la, i), ib = contiguous ? i : lu_dev_offset(&lb, i);
        lu_dev_store(y, dt, i, binary_apply(kind, lu_dev_load(a, dt, ia), lu_dev_load(b, dt, ib)));
    }
}

/* The dense case eight elements a thread (lu_dev_load8: residual adds, gates). */
static __global__ void binary_forward_vec8_kernel(int kind, int dt, const void *a, const void *b, void *y, int64_t n)
{
    LU_CUDA_FOR(g, n / LU_VEC8)
    {
        float va[LU_VEC8], vb[LU_VEC8];
        lu_dev_load8(a, dt, g * LU_VEC8, va);
        lu_dev_load8(b, dt, g * LU_VEC8, vb);
        for (int k = 0; k < LU_VEC8; k++) va[k] = binary_apply(kind, va[k], vb[k]);
        lu_dev_store8(y, dt, g * LU_VEC8, va);
    }
}

static bool is_dense_like(const lu_tensor *x, const lu_tensor *y)
{
    return lu_tensor_same_shape(x, y) && lu_tensor_is_contiguous(x);
}

static lu_status binary_forward(const lu_op_call *c)
{
    const lu_tensor *a = c->in[0], *b = c->in[1];
    lu_tensor *y = c->out[0];
    const lu_tensor *ts[2] = {a, b};
    LU_TRY(lu_cuda_check_float(c, ts, 2, y->dtype));
    lu_cuda_layout la, lb;
    LU_TRY(broadcast_layout(a, y, lu_op_name(c->op), &la));
    LU_TRY(broadcast_layout(b, y, lu_op_name(c->op), &lb));
    int64_t n = lu_tensor_numel(y);
    if (n == 0) return LU_OK;
    bool dense = is_dense_like(a, y) && is_dense_like(b, y);
    const void *ptrs[3] = {lu_tensor_data(a), lu_tensor_data(b), lu_tensor_data(y)};
    if (dense && lu_cuda_vec8_ok(n, ptrs, 3)) {
        binary_forward_vec8_kernel<<<lu_cuda_blocks(n / LU_VEC8), LU_CUDA_THREADS>>>(
            binary_kind(c->op), y->dtype, lu_tensor_data(a), lu_tensor_data(b), lu_tensor_data(y), n);
        LU_CUDA_CHECK_LAUNCH();
        return LU_OK;
    }
    binary_forward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(binary_kind(c->op), y->dtype, lu_tensor_data(a), la,
                                                                  lu_tensor_data(b), lb, lu_tensor_data(y), n, dense);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* dx[j] = sum over the broadcast dims of binary_grad(dy, a, b) at the y positions that read
 * x element j. lx: y's rank, x's sizes (1 where broadcast); lr: y's sizes where x is
 * broadcast, 1 elsewhere. Offsets come from the y-shaped layouts ldy, la, lb. */
static __global__ void binary_backward_kernel(int kind, int which, int dt, const void *dy, lu_cuda_layout ldy,
                                              const void *a, lu_cuda_layout la, const void *b, lu_cuda_layout lb,
                                              void *dx, lu_cuda_layout lx, int64_t n, lu_cuda_layout lr, int64_t nr)
{
    LU_CUDA_FOR(j, n)
    {
        int64_t odiy = 0, oa = 0, ob = 0, rem = j;
        for (int k = lx.ndim - 1; k >= 0; k--) {
            int64_t c = rem % lx.shape[k];
            rem /= lx.shape[k];
            odiy += c * ldy.stride[k];
            oa += c * la.stride[k];
            ob += c * lb.stride[k];
        }
        float acc = 0.0f;
        for (int64_t r = 0; r < nr; r++) {
            int64_t pdy = odiy, pa = oa, pb = ob, rr = r;
            for (int k = lr.ndim - 1; k >= 0; k--) {
                int64_t c = rr % lr.shape[k];
                rr /= lr.shape[k];
                pdy += c * ldy.stride[k];
                pa += c * la.stride[k];
                pb += c * lb.stride[k];
            }
            float va = kind >= BIN_MUL ? lu_dev_load(a, dt, pa) : 0.0f;
            float vb = kind >= BIN_MUL ? lu_dev_load(b, dt, pb) : 0.0f;
            acc += binary_grad(kind, which, va, vb, lu_dev_load(dy, dt, pdy));
        }
        lu_dev_store(dx, dt, j, acc);
    }
}

/* The same-shape case (residual adds, gates): every operand dense with y's shape, no sum. */
static __global__ void binary_backward_dense_kernel(int kind, int which, int dt, const void *dy, const void *a,
                                                    const void *b, void *dx, int64_t n)
{
    LU_CUDA_FOR(i, n)
    {
        float va = kind >= BIN_MUL ? lu_dev_load(a, dt, i) : 0.0f, vb = kind >= BIN_MUL ? lu_dev_load(b, dt, i) : 0.0f;
        lu_dev_store(dx, dt, i, binary_grad(kind, which, va, vb, lu_dev_load(dy, dt, i)));
    }
}

/* The same, eight elements a thread. */
static __global__ void binary_backward_dense_vec8_kernel(int kind, int which, int dt, const void *dy, const void *a,
                                                         const void *b, void *dx, int64_t n)
{
    LU_CUDA_FOR(g, n / LU_VEC8)
    {
        float d[LU_VEC8], va[LU_VEC8] = {0}, vb[LU_VEC8] = {0};
        lu_dev_load8(dy, dt, g * LU_VEC8, d);
        if (kind >= BIN_MUL) {
            lu_dev_load8(a, dt, g * LU_VEC8, va);
            lu_dev_load8(b, dt, g * LU_VEC8, vb);
        }
        for (int k = 0; k < LU_VEC8; k++) d[k] = binary_grad(kind, which, va[k], vb[k], d[k]);
        lu_dev_store8(dx, dt, g * LU_VEC8, d);
    }
}

/* in = [dy, a, b, y], out = [da, db] (contiguous, shapes of a and b). */
static lu_status binary_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *a = c->in[1], *b = c->in[2], *y = c->in[3];
    const lu_tensor *ts[4] = {dy, a, b, y};
    LU_TRY(lu_cuda_check_float(c, ts, 4, y->dtype));
    lu_cuda_layout la, lb;
    LU_TRY(broadcast_layout(a, y, lu_op_name(c->op), &la));
    LU_TRY(broadcast_layout(b, y, lu_op_name(c->op), &lb));
    if (dy && !lu_tensor_same_shape(dy, y)) {
        char sd[LU_SHAPE_STR_MAX], sy[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "%s backward: dy %s differs from y %s", lu_op_name(c->op),
                         lu_shape_str(dy, sd, sizeof sd), lu_shape_str(y, sy, sizeof sy));
    }
    for (int which = 0; which < 2; which++) {
        lu_tensor *dx = c->out[which];
        const lu_tensor *x = which ? b : a;
        if (!dx) continue;
        int64_t n = lu_tensor_numel(dx);
        if (n == 0) continue;
        if (!dy) {
            LU_TRY(lu_cuda_zero(dx));
            continue;
        }
        if (!lu_tensor_same_shape(dx, x) || dx->dtype != y->dtype)
            return lu_errorf(LU_ERR_SHAPE, "%s backward: gradient %d does not have its input's shape and dtype",
                             lu_op_name(c->op), which);
        bool dense = is_dense_like(a, y) && is_dense_like(b, y) && is_dense_like(dy, y) && lu_tensor_is_contiguous(dx);
        const void *ptrs[4] = {lu_tensor_data(dy), lu_tensor_data(a), lu_tensor_data(b), lu_tensor_data(dx)};
        if (dense && lu_cuda_vec8_ok(n, ptrs, 4)) {
            binary_backward_dense_vec8_kernel<<<lu_cuda_blocks(n / LU_VEC8), LU_CUDA_THREADS>>>(
                binary_kind(c->op), which, y->dtype, lu_tensor_data(dy), lu_tensor_data(a), lu_tensor_data(b),
                lu_tensor_data(dx), n);
            LU_CUDA_CHECK_LAUNCH();
            continue;
        }
        if (dense) {
            binary_backward_dense_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
                binary_kind(c->op), which, y->dtype, lu_tensor_data(dy), lu_tensor_data(a), lu_tensor_data(b),
                lu_tensor_data(dx), n);
            LU_CUDA_CHECK_LAUNCH();
            continue;
        }
        lu_cuda_layout lx, lr;
        memset(&lx, 0, sizeof lx);
        memset(&lr, 0, sizeof lr);
        lx.ndim = lr.ndim = y->ndim;
        int64_t nr = 1;
        for (int k = 0; k < y->ndim; k++) {
            /* y's dim k is summed over when x's aligned size (1 if x lacks the dim) differs. */
            int xk = k - (y->ndim - x->ndim);
            int64_t xs = xk >= 0 ? x->shape[xk] : 1;
            bool reduced = xs != y->shape[k];
            lx.shape[k] = reduced ? 1 : xs;
            lr.shape[k] = reduced ? y->shape[k] : 1;
            nr *= lr.shape[k];
        }
        binary_backward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
            binary_kind(c->op), which, y->dtype, lu_tensor_data(dy), lu_cuda_layout_of(dy), lu_tensor_data(a), la,
            lu_tensor_data(b), lb, lu_tensor_data(dx), lx, n, lr, nr);
        LU_CUDA_CHECK_LAUNCH();
    }
    return LU_OK;
}

/* ---- unary ops ---- */

/* Constants of the GELU tanh approximation (Hendrycks & Gimpel 2016, eq. in section 2). */
#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f
#define SQRT1_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

typedef struct unary_params {
    float alpha, beta; /* AFFINE */
    bool tanh_approx;  /* GELU */
} unary_params;

static __device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* log(1 + e^z), without overflow for large z. */
static __device__ __forceinline__ float softplusf(float z) { return z > 20.0f ? z : log1pf(expf(z)); }

static __device__ float unary_apply(int op, unary_params p, float x)
{
    switch (op) {
    case LU_OP_AFFINE: return p.alpha * x + p.beta;
    case LU_OP_EXP: return expf(x);
    case LU_OP_LOG: return logf(x);
    case LU_OP_TANH: return tanhf(x);
    case LU_OP_SIGMOID: return sigmoidf(x);
    case LU_OP_RELU: return x > 0.0f ? x : 0.0f;
    case LU_OP_SILU: return x * sigmoidf(x);
    case LU_OP_GELU:
        if (p.tanh_approx) return 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_C * x * x * x)));
        return 0.5f * x * (1.0f + erff(x * SQRT1_2));
    case LU_OP_SWOOSH_L: return softplusf(x - 4.0f) - 0.08f * x - 0.035f;
    case LU_OP_SWOOSH_R: return softplusf(x - 1.0f) - 0.08f * x - 0.313261687f;
    case LU_OP_SQUARE: return x * x;
    default: return sqrtf(x); /* LU_OP_SQRT */
    }
}

/* dy/dx at x (y = f(x) is given where it makes the derivative cheaper). */
static __device__ float unary_derivative(int op, unary_params p, float x, float y)
{
    switch (op) {
    case LU_OP_AFFINE: return p.alpha;
    case LU_OP_EXP: return y;
    case LU_OP_LOG: return 1.0f / x;
    case LU_OP_TANH: return 1.0f - y * y;
    case LU_OP_SIGMOID: return y * (1.0f - y);
    case LU_OP_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case LU_OP_SILU: {
        float s = sigmoidf(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case LU_OP_GELU:
        if (p.tanh_approx) {
            float t = tanhf(GELU_K * (x + GELU_C * x * x * x));
            return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
        }
        return 0.5f * (1.0f + erff(x * SQRT1_2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
    case LU_OP_SWOOSH_L: return sigmoidf(x - 4.0f) - 0.08f;
    case LU_OP_SWOOSH_R: return sigmoidf(x - 1.0f) - 0.08f;
    case LU_OP_SQUARE: return 2.0f * x;
    default: return 0.5f / y; /* LU_OP_SQRT */
    }
}

static __global__ void unary_forward_kernel(int op, unary_params p, int dt, const void *x, void *y, int64_t n)
{
    LU_CUDA_FOR(i, n) lu_dev_store(y, dt, i, unary_apply(op, p, lu_dev_load(x, dt, i)));
}

static __global__ void unary_backward_kernel(int op, unary_params p, int dt, const void *dy, const void *x,
                                             const void *y, void *dx, int64_t n)
{
    LU_CUDA_FOR(i, n)
    {
        float d = unary_derivative(op, p, lu_dev_load(x, dt, i), lu_dev_load(y, dt, i));
        lu_dev_store(dx, dt, i, lu_dev_load(dy, dt, i) * d);
    }
}

static unary_params unary_params_of(const lu_op_call *c)
{
    unary_params p = {1.0f, 0.0f, false};
    if (c->op == LU_OP_AFFINE) {
        const lu_affine_params *a = (const lu_affine_params *)c->params;
        p.alpha = (float)a->alpha;
        p.beta = (float)a->beta;
    } else if (c->op == LU_OP_GELU) {
        p.tanh_approx = ((const lu_gelu_params *)c->params)->tanh_approx;
    }
    return p;
}

static lu_status unary_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    LU_TRY(lu_cuda_check_float(c, &x, 1, y->dtype));
    int64_t n = lu_tensor_numel(y);
    if (n == 0) return LU_OK;
    unary_forward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(c->op, unary_params_of(c), y->dtype,
                                                                 lu_tensor_data(x), lu_tensor_data(y), n);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]. */
static lu_status unary_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[1], *y = c->in[2];
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    const lu_tensor *ts[4] = {dy, x, y, dx};
    LU_TRY(lu_cuda_check_float(c, ts, 4, x->dtype));
    int64_t n = lu_tensor_numel(dx);
    if (n == 0) return LU_OK;
    if (!dy) {
        LU_TRY(lu_cuda_zero(dx));
        return LU_OK;
    }
    unary_backward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(c->op, unary_params_of(c), x->dtype,
                                                                  lu_tensor_data(dy), lu_tensor_data(x),
                                                                  lu_tensor_data(y), lu_tensor_data(dx), n);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* ---- swiglu ---- */

/* y = silu(gate) * up, in f32. */
template <typename T>
static __global__ void swiglu_forward_kernel(const T *g, const T *u, T *y, int64_t n)
{
    LU_CUDA_FOR(i, n)
    {
        float x = lu_ld(g, i);
        lu_st(y, i, x * sigmoidf(x) * lu_ld(u, i));
    }
}

/* dgate = dy up silu'(gate), dup = dy silu(gate); either output may be NULL. */
template <typename T>
static __global__ void swiglu_backward_kernel(const T *dy, const T *g, const T *u, T *dg, T *du, int64_t n)
{
    LU_CUDA_FOR(i, n)
    {
        float x = lu_ld(g, i), d = lu_ld(dy, i), s = sigmoidf(x);
        if (dg) lu_st(dg, i, d * lu_ld(u, i) * s * (1.0f + x * (1.0f - s)));
        if (du) lu_st(du, i, d * x * s);
    }
}

/* Both, eight elements a thread (dt: f32 or bf16). */
static __global__ void swiglu_forward_vec8_kernel(int dt, const void *g, const void *u, void *y, int64_t n)
{
    LU_CUDA_FOR(v, n / LU_VEC8)
    {
        float x[LU_VEC8], up[LU_VEC8];
        lu_dev_load8(g, dt, v * LU_VEC8, x);
        lu_dev_load8(u, dt, v * LU_VEC8, up);
        for (int k = 0; k < LU_VEC8; k++) x[k] = x[k] * sigmoidf(x[k]) * up[k];
        lu_dev_store8(y, dt, v * LU_VEC8, x);
    }
}

static __global__ void swiglu_backward_vec8_kernel(int dt, const void *dy, const void *g, const void *u, void *dg,
                                                   void *du, int64_t n)
{
    LU_CUDA_FOR(v, n / LU_VEC8)
    {
        float x[LU_VEC8], d[LU_VEC8], up[LU_VEC8], outg[LU_VEC8], outu[LU_VEC8];
        lu_dev_load8(g, dt, v * LU_VEC8, x);
        lu_dev_load8(dy, dt, v * LU_VEC8, d);
        if (dg) lu_dev_load8(u, dt, v * LU_VEC8, up);
        for (int k = 0; k < LU_VEC8; k++) {
            float s = sigmoidf(x[k]);
            outg[k] = dg ? d[k] * up[k] * s * (1.0f + x[k] * (1.0f - s)) : 0.0f;
            outu[k] = d[k] * x[k] * s;
        }
        if (dg) lu_dev_store8(dg, dt, v * LU_VEC8, outg);
        if (du) lu_dev_store8(du, dt, v * LU_VEC8, outu);
    }
}

/* in = [gate, up], out = [y]. */
static lu_status swiglu_forward(const lu_op_call *c)
{
    const lu_tensor *ts[3] = {c->in[0], c->in[1], c->out[0]};
    LU_TRY(lu_cuda_check_float(c, ts, 3, c->out[0]->dtype));
    int64_t n = lu_tensor_numel(c->out[0]);
    if (n == 0) return LU_OK;
    const void *ptrs[3] = {lu_tensor_data(c->in[0]), lu_tensor_data(c->in[1]), lu_tensor_data(c->out[0])};
    if (lu_cuda_vec8_ok(n, ptrs, 3))
        swiglu_forward_vec8_kernel<<<lu_cuda_blocks(n / LU_VEC8), LU_CUDA_THREADS>>>(
            c->out[0]->dtype, ptrs[0], ptrs[1], lu_tensor_data(c->out[0]), n);
    else if (c->out[0]->dtype == LU_BF16)
        swiglu_forward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
            (const uint16_t *)lu_tensor_data(c->in[0]), (const uint16_t *)lu_tensor_data(c->in[1]),
            (uint16_t *)lu_tensor_data(c->out[0]), n);
    else
        swiglu_forward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
            (const float *)lu_tensor_data(c->in[0]), (const float *)lu_tensor_data(c->in[1]),
            (float *)lu_tensor_data(c->out[0]), n);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, gate, up, y], out = [dgate?, dup?]. */
static lu_status swiglu_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *g = c->in[1], *u = c->in[2];
    lu_tensor *dg = c->out[0], *du = c->out[1];
    const lu_tensor *ts[5] = {dy, g, u, dg, du};
    LU_TRY(lu_cuda_check_float(c, ts, 5, g->dtype));
    int64_t n = lu_tensor_numel(g);
    if (n == 0 || (!dg && !du)) return LU_OK;
    if (!dy) {
        if (dg) LU_TRY(lu_cuda_zero(dg));
        if (du) LU_TRY(lu_cuda_zero(du));
        return LU_OK;
    }
    void *pdg = dg ? lu_tensor_data(dg) : NULL, *pdu = du ? lu_tensor_data(du) : NULL;
    const void *ptrs[5] = {lu_tensor_data(dy), lu_tensor_data(g), lu_tensor_data(u), pdg, pdu};
    if (lu_cuda_vec8_ok(n, ptrs, 5))
        swiglu_backward_vec8_kernel<<<lu_cuda_blocks(n / LU_VEC8), LU_CUDA_THREADS>>>(g->dtype, ptrs[0], ptrs[1],
                                                                                    ptrs[2], pdg, pdu, n);
    else if (g->dtype == LU_BF16)
        swiglu_backward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
            (const uint16_t *)lu_tensor_data(dy), (const uint16_t *)lu_tensor_data(g),
            (const uint16_t *)lu_tensor_data(u), dg ? (uint16_t *)lu_tensor_data(dg) : NULL,
            du ? (uint16_t *)lu_tensor_data(du) : NULL, n);
    else
        swiglu_backward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
            (const float *)lu_tensor_data(dy), (const float *)lu_tensor_data(g), (const float *)lu_tensor_data(u),
            dg ? (float *)lu_tensor_data(dg) : NULL, du ? (float *)lu_tensor_data(du) : NULL, n);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

extern "C" void lu_cuda_register_elementwise(lu_backend *b)
{
    static const lu_op binary[] = {LU_OP_ADD, LU_OP_SUB, LU_OP_MUL, LU_OP_DIV};
    static const lu_op unary[] = {LU_OP_AFFINE, LU_OP_EXP,  LU_OP_LOG,      LU_OP_TANH,     LU_OP_SIGMOID,
                                  LU_OP_RELU,   LU_OP_SILU, LU_OP_GELU,     LU_OP_SWOOSH_L, LU_OP_SWOOSH_R,
                                  LU_OP_SQUARE, LU_OP_SQRT};
    for (size_t i = 0; i < sizeof binary / sizeof binary[0]; i++) {
        b->forward[binary[i]] = binary_forward;
        b->backward[binary[i]] = binary_backward;
    }
    for (size_t i = 0; i < sizeof unary / sizeof unary[0]; i++) {
        b->forward[unary[i]] = unary_forward;
        b->backward[unary[i]] = unary_backward;
    }
    b->forward[LU_OP_SWIGLU] = swiglu_forward;
    b->backward[LU_OP_SWIGLU] = swiglu_backward;
}
