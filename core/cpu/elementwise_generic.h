/* elementwise_generic.h - elementwise loops over `real` (see generic.h and elementwise.c).
 * Sums over broadcast dims accumulate in double. */

/* ---- binary ops with broadcasting --------------------------------------------------------- */

/* One forward loop set per op; EXPR reads the elements a and b. Contiguous cases are plain
 * loops the compiler vectorises. */
#define LU_EW_BINARY(name, EXPR)                                                                  \
    static void R(name##_loops)(bin_kind kind, const bcast *g, int64_t n, int64_t K,               \
                                const real *restrict A, const real *restrict B, real *restrict Y) \
    {                                                                                             \
        if (kind == BIN_SAME) {                                                                   \
            _Pragma("omp parallel for simd if (n > 32768)")                                       \
            for (int64_t i = 0; i < n; i++) {                                                     \
                real a = A[i], b = B[i];                                                          \
                Y[i] = (EXPR);                                                                    \
            }                                                                                     \
        } else if (kind == BIN_ROWS_B && K == 1) {                                                \
            real b = B[0];                                                                        \
            _Pragma("omp parallel for simd if (n > 32768)")                                       \
            for (int64_t i = 0; i < n; i++) {                                                     \
                real a = A[i];                                                                    \
                Y[i] = (EXPR);                                                                    \
            }                                                                                     \
        } else if (kind == BIN_ROWS_A && K == 1) {                                                \
            real a = A[0];                                                                        \
            _Pragma("omp parallel for simd if (n > 32768)")                                       \
            for (int64_t i = 0; i < n; i++) {                                                     \
                real b = B[i];                                                                    \
                Y[i] = (EXPR);                                                                    \
            }                                                                                     \
        } else if (kind == BIN_ROWS_B || kind == BIN_ROWS_A) {                                    \
            bool rb = kind == BIN_ROWS_B;                                                         \
            _Pragma("omp parallel for if (n > 32768)")                                            \
            for (int64_t r = 0; r < n / K; r++) {                                                 \
                const real *restrict Ar = rb ? A + r * K : A, *restrict Br = rb ? B : B + r * K;  \
                real *restrict Yr = Y + r * K;                                                    \
                _Pragma("omp simd")                                                               \
                for (int64_t k = 0; k < K; k++) {                                                 \
                    real a = Ar[k], b = Br[k];                                                    \
                    Yr[k] = (EXPR);                                                               \
                }                                                                                 \
            }                                                                                     \
        } else {                                                                                  \
            int nd = g->ndim;                                                                     \
            int64_t inner = nd ? g->shape[nd - 1] : 1;                                            \
            int64_t ia = nd ? g->sa[nd - 1] : 0, ib = nd ? g->sb[nd - 1] : 0;                     \
            _Pragma("omp parallel for if (n > 32768)")                                            \
            for (int64_t r = 0; r < n / inner; r++) {                                             \
                int64_t oa, ob;                                                                   \
                bcast_row(g, r, &oa, &ob);                                                        \
                real *restrict Yr = Y + r * inner;                                                \
                const real *restrict Ar = A + oa, *restrict Br = B + ob;                          \
                if (ia == 1 && ib == 1) {                                                         \
                    _Pragma("omp simd")                                                           \
                    for (int64_t i = 0; i < inner; i++) {                                         \
                        real a = Ar[i], b = Br[i];                                                \
                        Yr[i] = (EXPR);                                                           \
                    }                                                                             \
                    continue;                                                                     \
                }                                                                                 \
                for (int64_t i = 0; i < inner; i++) {                                             \
                    real a = Ar[i * ia], b = Br[i * ib];                                          \
                    Yr[i] = (EXPR);                                                               \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

LU_EW_BINARY(add, a + b)
LU_EW_BINARY(sub, a - b)
LU_EW_BINARY(mul, a * b)
LU_EW_BINARY(div, a / b)
#undef LU_EW_BINARY

static lu_status R(binary_fwd)(const lu_op_call *c)
{
    const lu_tensor *a = c->in[0], *b = c->in[1];
    lu_tensor *y = c->out[0];
    int64_t n = lu_tensor_numel(y);
    if (n == 0) return LU_OK;
    bcast g;
    bcast_init(&g, y, a, b);
    bool fa = lu_tensor_is_contiguous(a) && lu_tensor_numel(a) == n;
    bool fb = lu_tensor_is_contiguous(b) && lu_tensor_numel(b) == n;
    int64_t kb = fa ? trailing_extent(&g, b, 1) : 0, ka = fb ? trailing_extent(&g, a, 0) : 0;
    bin_kind kind = fa && fb ? BIN_SAME : kb ? BIN_ROWS_B : ka ? BIN_ROWS_A : BIN_STRIDED;
    int64_t K = kind == BIN_ROWS_B ? kb : ka;
    const real *A = lu_tensor_data(a), *B = lu_tensor_data(b);
    real *Y = lu_tensor_data(y);
    switch (c->op) {
    case LU_OP_ADD: R(add_loops)(kind, &g, n, K, A, B, Y); break;
    case LU_OP_SUB: R(sub_loops)(kind, &g, n, K, A, B, Y); break;
    case LU_OP_MUL: R(mul_loops)(kind, &g, n, K, A, B, Y); break;
    case LU_OP_DIV: R(div_loops)(kind, &g, n, K, A, B, Y); break;
    default: return lu_errorf(LU_ERR_INVALID, "%s: not a binary elementwise op", lu_op_name(c->op));
    }
    return LU_OK;
}

/* The gradient contribution of one element of y (torch's formulas: d(a/b)/db = -a/b^2). */
static inline real R(bin_term)(bin_term t, real dy, real a, real b)
{
    switch (t) {
    case TERM_DY: return dy;
    case TERM_NEG_DY: return -dy;
    case TERM_DY_B: return dy * b;
    case TERM_DY_A: return dy * a;
    case TERM_DY_OVER_B: return dy / b;
    case TERM_DIV_DB: return -dy * a / (b * b);
    }
    return 0;
}

#define LU_EW_GRAD_LOOP(EXPR)                               \
    do {                                                    \
        _Pragma("omp parallel for simd if (n > 32768)")     \
        for (int64_t i = 0; i < n; i++) DX[i] = (EXPR);     \
    } while (0)

/* dx (operand k's shape, contiguous) = the sum, over the dims operand k is broadcast along, of
 * term(dy, a, b). */
static void R(grad_to)(bin_term t, const bcast *g, int k, const lu_tensor *a, const lu_tensor *b, const real *DY,
                       real *DX)
{
    const real *A = lu_tensor_data(a), *B = lu_tensor_data(b);
    const int64_t *xs = g->xs[k];
    int nd = g->ndim, red[LU_MAX_DIMS], nr = 0;
    int64_t n = 1, m = 1; /* m: elements of y per element of dx */
    for (int i = 0; i < nd; i++) {
        n *= g->shape[i];
        if (xs[i] != g->shape[i]) {
            red[nr++] = i;
            m *= g->shape[i];
        }
    }
    if (n == 0) { /* y is empty along a dim x broadcasts over: nothing reaches x */
        int64_t size = 1;
        for (int i = 0; i < nd; i++) size *= xs[i];
        memset(DX, 0, (size_t)size * sizeof *DX);
        return;
    }
    int64_t nx = n / m;
    /* No reduction and an elementwise term (the usual residual and product gradients): plain
     * loops with the term chosen outside them. */
    bool same = lu_tensor_is_contiguous(a) && lu_tensor_is_contiguous(b) && lu_tensor_numel(a) == n &&
                lu_tensor_numel(b) == n;
    if (nr == 0 && (t == TERM_DY || t == TERM_NEG_DY || same)) {
        switch (t) {
        case TERM_DY: memcpy(DX, DY, (size_t)n * sizeof *DX); return;
        case TERM_NEG_DY: LU_EW_GRAD_LOOP(-DY[i]); return;
        case TERM_DY_B: LU_EW_GRAD_LOOP(DY[i] * B[i]); return;
        case TERM_DY_A: LU_EW_GRAD_LOOP(DY[i] * A[i]); return;
        case TERM_DY_OVER_B: LU_EW_GRAD_LOOP(DY[i] / B[i]); return;
        case TERM_DIV_DB: LU_EW_GRAD_LOOP(-DY[i] * A[i] / (B[i] * B[i])); return;
        }
    }
    if (nr == 0) {
        int64_t inner = nd ? g->shape[nd - 1] : 1, ia = nd ? g->sa[nd - 1] : 0, ib = nd ? g->sb[nd - 1] : 0;
#pragma omp parallel for if (n > 32768)
        for (int64_t r = 0; r < n / inner; r++) {
            int64_t oa, ob;
            bcast_row(g, r, &oa, &ob);
            const real *restrict dyr = DY + r * inner, *restrict Ar = A + oa, *restrict Br = B + ob;
            real *restrict dxr = DX + r * inner;
            if (ia == 1 && ib == 1 && t == TERM_DY_B) { /* the product of two row slices (GLU) */
#pragma omp simd
                for (int64_t i = 0; i < inner; i++) dxr[i] = dyr[i] * Br[i];
            } else if (ia == 1 && ib == 1 && t == TERM_DY_A) {
#pragma omp simd
                for (int64_t i = 0; i < inner; i++) dxr[i] = dyr[i] * Ar[i];
            } else {
                for (int64_t i = 0; i < inner; i++) dxr[i] = R(bin_term)(t, dyr[i], Ar[i * ia], Br[i * ib]);
            }
        }
        return;
    }
    /* Bias gradient: dx covers y's trailing nx elements, so dy is [m, nx] and dx sums its rows;
     * the other operand then spans y (contiguous here). Blocks of columns accumulate row by row
     * in double (contiguous reads). */
    const lu_tensor *other = k ? a : b;
    if (trailing_extent(g, k ? b : a, k) == nx && lu_tensor_is_contiguous(other) && lu_tensor_numel(other) == n) {
        /* 16 columns: a cache line of f32 per row, and enough blocks for every thread. */
        enum { COLS = 16 };
        const real *X = k ? B : A, *O = k ? A : B;
#pragma omp parallel for if (n > 32768)
        for (int64_t blk = 0; blk < (nx + COLS - 1) / COLS; blk++) {
            int64_t k0 = blk * COLS, kn = nx - k0 < COLS ? nx - k0 : COLS;
            double acc[COLS] = {0};
            for (int64_t r = 0; r < m; r++) {
                const real *dyr = DY + r * nx + k0, *Or = O + r * nx + k0, *Xr = X + k0;
                if (t == TERM_DY) {
                    for (int64_t j = 0; j < kn; j++) acc[j] += dyr[j];
                } else if (k) {
                    for (int64_t j = 0; j < kn; j++) acc[j] += R(bin_term)(t, dyr[j], Or[j], Xr[j]);
                } else {
                    for (int64_t j = 0; j < kn; j++) acc[j] += R(bin_term)(t, dyr[j], Xr[j], Or[j]);
                }
            }
            for (int64_t j = 0; j < kn; j++) DX[k0 + j] = (real)acc[j];
        }
        return;
    }
    /* General case: each dx element walks its reduced dims, the last one as the inner loop. */
    int last = red[nr - 1];
    int64_t L = g->shape[last], ldy = g->sy[last], la = g->sa[last], lb = g->sb[last];
#pragma omp parallel for if (n > 32768)
    for (int64_t e = 0; e < nx; e++) {
        int64_t rem = e, od = 0, oa = 0, ob = 0;
        for (int i = nd - 1; i >= 0; i--) {
            int64_t ci = rem % xs[i];
            rem /= xs[i];
            od += ci * g->sy[i];
            oa += ci * g->sa[i];
            ob += ci * g->sb[i];
        }
        int64_t idx[LU_MAX_DIMS] = {0};
        double acc = 0;
        for (int64_t o = 0; o < m / L; o++) {
            int64_t pd = od, pa = oa, pb = ob;
            for (int j = 0; j < nr - 1; j++) {
                pd += idx[j] * g->sy[red[j]];
                pa += idx[j] * g->sa[red[j]];
                pb += idx[j] * g->sb[red[j]];
            }
            for (int64_t l = 0; l < L; l++) acc += R(bin_term)(t, DY[pd + l * ldy], A[pa + l * la], B[pb + l * lb]);
            for (int j = nr - 2; j >= 0; j--) {
                if (++idx[j] < g->shape[red[j]]) break;
                idx[j] = 0;
            }
        }
        DX[e] = (real)acc;
    }
}

#undef LU_EW_GRAD_LOOP

/* in = [dy, a, b, y], out = [da, db]. */
static lu_status R(binary_bwd)(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *a = c->in[1], *b = c->in[2], *y = c->in[3];
    int op = c->op - LU_OP_ADD;
    if (op < 0 || op > 3) return lu_errorf(LU_ERR_INVALID, "%s: not a binary elementwise op", lu_op_name(c->op));
    bcast g;
    bcast_init(&g, y, a, b);
    for (int k = 0; k < 2; k++) {
        lu_tensor *dx = c->out[k];
        if (!dx) continue;
        if (!dy) {
            memset(lu_tensor_data(dx), 0, lu_tensor_nbytes(dx));
            continue;
        }
        R(grad_to)(k ? term_b[op] : term_a[op], &g, k, a, b, lu_tensor_data(dy), lu_tensor_data(dx));
    }
    return LU_OK;
}

/* ---- affine ----------------------------------------------------------------------------- */

static lu_status R(affine_fwd)(const lu_op_call *c)
{
    const lu_affine_params *p = c->params;
    int64_t n = lu_tensor_numel(c->out[0]);
    const real *restrict X = lu_tensor_data(c->in[0]);
    real *restrict Y = lu_tensor_data(c->out[0]);
    real alpha = (real)p->alpha, beta = (real)p->beta;
#pragma omp parallel for simd if (n > 32768)
    for (int64_t i = 0; i < n; i++) Y[i] = alpha * X[i] + beta;
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]. */
static lu_status R(affine_bwd)(const lu_op_call *c)
{
    const lu_affine_params *p = c->params;
    int64_t n = lu_tensor_numel(c->out[0]);
    const real *restrict DY = lu_tensor_data(c->in[0]);
    real *restrict DX = lu_tensor_data(c->out[0]);
    real alpha = (real)p->alpha;
#pragma omp parallel for simd if (n > 32768)
    for (int64_t i = 0; i < n; i++) DX[i] = alpha * DY[i];
    return LU_OK;
}

/* ---- unary activations ------------------------------------------------------------------- */

/* 1/(1+e^-z) saturates to 0 or 1 without overflow trouble (e^-z = inf gives 0). */
static inline real R(sigm)(real z) { return 1 / (1 + R_EXP(-z)); }
/* log(1 + e^z) = max(z, 0) + log1p(e^-|z|), exact for large |z|. */
static inline real R(softplus)(real z) { return (z > 0 ? z : (real)0) + R_LOG1P_POS(R_EXP(-fabs(z))); }
static inline real R(silu_grad)(real x)
{
    real s = R(sigm)(x);
    return s * (1 + x * (1 - s));
}
/* torch.nn.functional.gelu(approximate='none'): x * Phi(x). */
static inline real R(gelu_erf)(real x) { return (real)0.5 * x * (1 + erf(x * (real)0.70710678118654752)); }
static inline real R(gelu_erf_grad)(real x)
{
    return (real)0.5 * (1 + erf(x * (real)0.70710678118654752)) + x * exp((real)-0.5 * x * x) * (real)0.39894228040143268;
}
/* approximate='tanh': 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static inline real R(gelu_tanh)(real x)
{
    return (real)0.5 * x * (1 + tanh((real)0.79788456080286536 * (x + (real)0.044715 * x * x * x)));
}
static inline real R(gelu_tanh_grad)(real x)
{
    real t = tanh((real)0.79788456080286536 * (x + (real)0.044715 * x * x * x));
    return (real)0.5 * (1 + t) + (real)0.5 * x * (1 - t * t) * (real)0.79788456080286536 * (1 + (real)0.134145 * x * x);
}

/* OP_(OP, name, y from x, dx from dy, x, y). Swoosh formulas: reference/asr.md section 9.1
 * (icefall scaling.py), derivative sigmoid(x - c) - 0.08. */
#define LU_EW_UNARY_LIST(OP_)                                                                  \
    OP_(EXP, exp, R_EXP(x), dy * y)                                                              \
    OP_(LOG, log, log(x), dy / x)                                                              \
    OP_(TANH, tanh, tanh(x), dy * (1 - y * y))                                                 \
    OP_(SIGMOID, sigmoid, R(sigm)(x), dy * y * (1 - y))                                        \
    OP_(RELU, relu, x < 0 ? (real)0 : x, x > 0 ? dy : (real)0)                                 \
    OP_(SILU, silu, x * R(sigm)(x), dy * R(silu_grad)(x))                                      \
    OP_(GELU_ERF, gelu_erf, R(gelu_erf)(x), dy * R(gelu_erf_grad)(x))                          \
    OP_(GELU_TANH, gelu_tanh, R(gelu_tanh)(x), dy * R(gelu_tanh_grad)(x))                      \
    OP_(SWOOSH_L, swoosh_l, R(softplus)(x - 4) - (real)0.08 * x - (real)0.035,                 \
        dy * (R(sigm)(x - 4) - (real)0.08))                                                    \
    OP_(SWOOSH_R, swoosh_r, R(softplus)(x - 1) - (real)0.08 * x - (real)0.313261687,           \
        dy * (R(sigm)(x - 1) - (real)0.08))                                                    \
    OP_(SQUARE, square, x * x, 2 * dy * x)                                                     \
    OP_(SQRT, sqrt, sqrt(x), dy / (2 * y))

#define LU_EW_UNARY(OP, name, FWD, BWD)                                                        \
    static void R(name##_fwd)(int64_t n, const real *restrict xp, real *restrict yp)           \
    {                                                                                          \
        _Pragma("omp parallel for simd if (n > 32768)")                                        \
        for (int64_t i = 0; i < n; i++) {                                                      \
            real x = xp[i];                                                                    \
            yp[i] = (FWD);                                                                     \
        }                                                                                      \
    }                                                                                          \
    static void R(name##_bwd)(int64_t n, const real *restrict dyp, const real *restrict xp,    \
                              const real *restrict yp, real *restrict dxp)                     \
    {                                                                                          \
        _Pragma("omp parallel for simd if (n > 32768)")                                        \
        for (int64_t i = 0; i < n; i++) {                                                      \
            real dy = dyp[i], x = xp[i], y = yp[i];                                            \
            (void)x;                                                                           \
            (void)y;                                                                           \
            dxp[i] = (BWD);                                                                    \
        }                                                                                      \
    }
LU_EW_UNARY_LIST(LU_EW_UNARY)
#undef LU_EW_UNARY

static lu_status R(unary_fwd)(const lu_op_call *c)
{
    int64_t n = lu_tensor_numel(c->out[0]);
    const real *xp = lu_tensor_data(c->in[0]);
    real *yp = lu_tensor_data(c->out[0]);
    switch (unary_which(c)) {
#define LU_EW_CASE(OP, name, FWD, BWD) \
    case LU_OP_##OP: R(name##_fwd)(n, xp, yp); return LU_OK;
        LU_EW_UNARY_LIST(LU_EW_CASE)
#undef LU_EW_CASE
    default: return lu_errorf(LU_ERR_INVALID, "%s: not a unary elementwise op", lu_op_name(c->op));
    }
}

/* in = [dy, x, y], out = [dx]. */
static lu_status R(unary_bwd)(const lu_op_call *c)
{
    int64_t n = lu_tensor_numel(c->out[0]);
    const real *dyp = lu_tensor_data(c->in[0]), *xp = lu_tensor_data(c->in[1]), *yp = lu_tensor_data(c->in[2]);
    real *dxp = lu_tensor_data(c->out[0]);
    switch (unary_which(c)) {
#define LU_EW_CASE(OP, name, FWD, BWD) \
    case LU_OP_##OP: R(name##_bwd)(n, dyp, xp, yp, dxp); return LU_OK;
        LU_EW_UNARY_LIST(LU_EW_CASE)
#undef LU_EW_CASE
    default: return lu_errorf(LU_ERR_INVALID, "%s: not a unary elementwise op", lu_op_name(c->op));
    }
}

#undef LU_EW_UNARY_LIST

/* ---- swiglu ------------------------------------------------------------------------------- */

/* in = [gate, up], out = [y = silu(gate) * up]. */
static lu_status R(swiglu_fwd)(const lu_op_call *c)
{
    int64_t n = lu_tensor_numel(c->out[0]);
    const real *g = lu_tensor_data(c->in[0]), *u = lu_tensor_data(c->in[1]);
    real *y = lu_tensor_data(c->out[0]);
#pragma omp parallel for simd if (n > 32768)
    for (int64_t i = 0; i < n; i++) y[i] = g[i] * R(sigm)(g[i]) * u[i];
    return LU_OK;
}

/* in = [dy, gate, up, y], out = [dgate?, dup?]: dgate = dy up silu'(gate), dup = dy silu(gate). */
static lu_status R(swiglu_bwd)(const lu_op_call *c)
{
    lu_tensor *dgt = c->out[0], *dut = c->out[1];
    int64_t n = lu_tensor_numel(c->in[1]);
    if (!c->in[0]) {
        if (dgt) memset(lu_tensor_data(dgt), 0, lu_tensor_nbytes(dgt));
        if (dut) memset(lu_tensor_data(dut), 0, lu_tensor_nbytes(dut));
        return LU_OK;
    }
    const real *dy = lu_tensor_data(c->in[0]), *g = lu_tensor_data(c->in[1]), *u = lu_tensor_data(c->in[2]);
    real *dg = dgt ? lu_tensor_data(dgt) : NULL, *du = dut ? lu_tensor_data(dut) : NULL;
#pragma omp parallel for if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        real s = R(sigm)(g[i]);
        if (dg) dg[i] = dy[i] * u[i] * s * (1 + g[i] * (1 - s));
        if (du) du[i] = dy[i] * g[i] * s;
    }
    return LU_OK;
}
