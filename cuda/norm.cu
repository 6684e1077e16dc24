/* norm.cu - CUDA kernels that normalise rows: SOFTMAX and LOG_SOFTMAX along the last dim, and
 * RMSNORM, LAYERNORM and BIASNORM, forward and backward, f32 and bf16 with fp32 math
 * (core/cpu/reduce.c and core/cpu/norm.c are the references). One warp per row: the row's
 * reductions are warp shuffles, and the order of additions depends only on the row length. RMSNorm
 * (both ways) and LayerNorm's backward hold rows of whole 16-byte vectors up to 8192 elements in
 * registers instead (the VEC_ section).
 * Per-channel gradients of RMSNorm, LayerNorm and BiasNorm are column sums in two stages (chunks
 * of rows summed in order, then the chunks in a fixed order, colsum.cuh), so they too depend only
 * on the shape. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "colsum.cuh"

#define ROWS_PER_BLOCK (LU_CUDA_THREADS / LU_CUDA_WARP)

static unsigned row_blocks(int64_t rows)
{
    int64_t b = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

/* Grid-stride loop of one warp over rows; `lane` is the thread's index in its warp. */
#define ROWS_FOR(row, lane, rows)                                                               \
    const int lane = threadIdx.x % LU_CUDA_WARP;                                                \
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / LU_CUDA_WARP; row < (rows); \
         row += (int64_t)gridDim.x * blockDim.x / LU_CUDA_WARP)

/* ---- rows held in registers: the path of RMSNorm and LayerNorm when d % 8 == 0, d <= VEC_MAX_D
 * and the operands are 16-byte aligned (lu_cuda_vec8_ok) ----
 *
 * A group of g lanes (a power of two) holds one row, V vectors of 8 elements a lane: lane l of the
 * group holds elements 8 (l + k g) .. 8 (l + k g) + 7 for k < V, so the group's loads are
 * consecutive 16-byte accesses, and the row stays in registers between its reduction and its
 * output (x and dy are read from memory once). g is the row's count of vectors rounded up to a
 * power of two, at most 32: up to d = 1024 a warp holds 32 / g rows (d = 128: 16 lanes, two rows a
 * warp). Longer rows double g until V <= 4, a row taking g / 32 warps (Qwen3-1.7B's d = 2048: two
 * warps of 4 vectors a lane). A block holds `slots` = 256 / g rows a pass. The row's sums are butterflies within the
 * warp, then, across warps, the warps' sums added in order through shared memory, so their order
 * depends only on d.
 *
 * Per-channel gradients: each lane adds its columns over the rows of its slot in registers, then
 * the block adds its slots in slot order (vec_cols_finish) into one partial row per block, which
 * colsum.cuh adds in block order: stage 1 of the column sum costs no extra read of dy and x. The
 * grid depends only on the shape (vec_plan), hence so do the sums. */
#define VEC_MAX_V 4
#define VEC_MAX_D (LU_CUDA_THREADS * LU_VEC8 * VEC_MAX_V)
/* At most this many blocks: a few waves of resident blocks on an H100/H200 (132 SMs), and no more
 * partial rows for the column sums' stage 2 to add. */
#define VEC_MAX_GRID 1024

/* The per-channel partial sums of a block, [slots][d] floats (at most 256 / g * 32 g = 8192). */
extern __shared__ __align__(16) float vec_cols[];

typedef struct vec_plan {
    int g, v;      /* lanes a row, vectors of 8 a lane */
    int64_t slots; /* rows a block holds at once */
    unsigned grid;
} vec_plan;

/* LUTHIER_NORM_MULTIWARP_ROWS=0 leaves rows of more than 1024 elements to the one-warp-a-row
 * kernels, as before rows took several warps: `luthier bench gpu` times both. */
static bool multiwarp_rows(void)
{
    const char *e = getenv("LUTHIER_NORM_MULTIWARP_ROWS");
    return !e || strcmp(e, "0") != 0;
}

/* Fills *p and returns true when the register path takes a [rows, d] problem whose operands
 * (NULLs skipped) are ptrs. */
static bool vec_plan_for(int64_t rows, int64_t d, const void *const *ptrs, int n_ptrs, vec_plan *p)
{
    if (d <= 0 || d > VEC_MAX_D || !lu_cuda_vec8_ok(d, ptrs, n_ptrs)) return false;
    if (d > LU_CUDA_WARP * LU_VEC8 * VEC_MAX_V && !multiwarp_rows()) return false;
    int64_t nvec = d / LU_VEC8;
    p->g = 1;
    while (p->g < nvec && p->g < LU_CUDA_WARP) p->g *= 2;
    while ((nvec + p->g - 1) / p->g > VEC_MAX_V) p->g *= 2; /* d > 1024: several warps a row */
    p->v = (int)((nvec + p->g - 1) / p->g);
    p->slots = LU_CUDA_THREADS / p->g;
    int64_t b = (rows + p->slots - 1) / p->slots;
    p->grid = (unsigned)(b < 1 ? 1 : b > VEC_MAX_GRID ? VEC_MAX_GRID : b);
    return true;
}

/* Bytes of vec_cols for a kernel that sums per-channel gradients. */
static size_t vec_smem(const vec_plan *p, int64_t d) { return (size_t)(p->slots * d) * sizeof(float); }

/* Grid-stride loop of the block over passes of `slots` rows; `row` is this thread's group's row,
 * which may be past the last (the loop's condition is the block's first row, so that every lane
 * takes part in its group's shuffles). */
#define VEC_ROWS_FOR(row, rows, g)                                                                \
    const int lane = threadIdx.x % (g), slot = threadIdx.x / (g);                                 \
    const int64_t slots = blockDim.x / (g);                                                       \
    for (int64_t row = (int64_t)blockIdx.x * slots + slot; row - slot < (rows); row += (int64_t)gridDim.x * slots)

/* Element offset in its row of lane's vector k. */
#define VEC_COL(k, g) ((int64_t)(lane + (k) * (g)) * LU_VEC8)

/* Sum over the group of g lanes holding a row; every lane of the group gets it. With g > 32 every
 * thread of the block must call it (barriers). */
static __device__ __forceinline__ float vec_group_sum(float s, int g)
{
    for (int o = (g < LU_CUDA_WARP ? g : LU_CUDA_WARP) / 2; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (g <= LU_CUDA_WARP) return s;
    __shared__ float warp_sums[LU_CUDA_THREADS / LU_CUDA_WARP];
    const int warp = threadIdx.x / LU_CUDA_WARP, first = warp / (g / LU_CUDA_WARP) * (g / LU_CUDA_WARP);
    __syncthreads(); /* the previous call's reads are done */
    if (threadIdx.x % LU_CUDA_WARP == 0) warp_sums[warp] = s;
    __syncthreads();
    s = 0.0f;
    for (int k = first; k < first + g / LU_CUDA_WARP; k++) s += warp_sums[k];
    return s;
}

/* Adds the block's slots of acc (lane's columns, as VEC_COL) in slot order: into part[blockIdx.x
 * * d + j] with part, else into out[j] (dtype dt; one block: no stage 2). Every thread of the
 * block must call it (barriers). */
template <int V>
static __device__ __forceinline__ void vec_cols_finish(const float (&acc)[V][LU_VEC8], int g, int64_t d, float *part,
                                                       int dt, void *out)
{
    const int lane = threadIdx.x % g, slot = threadIdx.x / g;
    const int64_t slots = blockDim.x / g;
    __syncthreads(); /* vec_cols may still be read by a previous call */
#pragma unroll
    for (int k = 0; k < V; k++) {
        int64_t c = VEC_COL(k, g);
        if (c < d) {
            float4 *s = (float4 *)(vec_cols + slot * d + c);
            s[0] = make_float4(acc[k][0], acc[k][1], acc[k][2], acc[k][3]);
            s[1] = make_float4(acc[k][4], acc[k][5], acc[k][6], acc[k][7]);
        }
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float s = 0.0f;
        for (int64_t q = 0; q < slots; q++) s += vec_cols[q * d + j];
        if (part) part[(int64_t)blockIdx.x * d + j] = s;
        else lu_dev_store(out, dt, j, s);
    }
}

/* kernel<V> for V = p->v on p's grid, with smem bytes of vec_cols. */
#define VEC_LAUNCH(kernel, p, smem, ...)                                                            \
    do {                                                                                           \
        switch ((p)->v) {                                                                          \
        case 1: kernel<1><<<(p)->grid, LU_CUDA_THREADS, (smem)>>>(__VA_ARGS__); break;             \
        case 2: kernel<2><<<(p)->grid, LU_CUDA_THREADS, (smem)>>>(__VA_ARGS__); break;             \
        case 3: kernel<3><<<(p)->grid, LU_CUDA_THREADS, (smem)>>>(__VA_ARGS__); break;             \
        default: kernel<VEC_MAX_V><<<(p)->grid, LU_CUDA_THREADS, (smem)>>>(__VA_ARGS__); break;    \
        }                                                                                          \
    } while (0)

/* ---- softmax, log_softmax ---- */

/* softmax: y = exp(x - max) / sum exp(x - max); log_softmax: y = x - max - log(sum exp(x - max)). */
static __global__ void softmax_forward_kernel(bool log, int dt, const void *x, void *y, int64_t rows, int64_t d)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float m = -INFINITY;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) m = fmaxf(m, lu_dev_load(x, dt, base + j));
        m = lu_dev_warp_max(m);
        float s = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) s += expf(lu_dev_load(x, dt, base + j) - m);
        s = lu_dev_warp_sum(s);
        float log_s = logf(s), inv_s = 1.0f / s;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float v = lu_dev_load(x, dt, base + j) - m;
            lu_dev_store(y, dt, base + j, log ? v - log_s : expf(v) * inv_s);
        }
    }
}

/* softmax: dx = y * (dy - sum(dy * y)); log_softmax: dx = dy - exp(y) * sum(dy). */
static __global__ void softmax_backward_kernel(bool log, int dt, const void *dy, const void *y, void *dx, int64_t rows,
                                               int64_t d)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float s = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = lu_dev_load(dy, dt, base + j);
            s += log ? g : g * lu_dev_load(y, dt, base + j);
        }
        s = lu_dev_warp_sum(s);
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = lu_dev_load(dy, dt, base + j), v = lu_dev_load(y, dt, base + j);
            lu_dev_store(dx, dt, base + j, log ? g - expf(v) * s : v * (g - s));
        }
    }
}

static lu_status check_last_dim(const lu_op_call *c, const lu_tensor *x)
{
    const lu_dim_params *p = (const lu_dim_params *)c->params;
    if (x->ndim == 0 || p->dim != x->ndim - 1)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: the cuda backend supports only the last dim (got dim %d of %d dims)",
                         lu_op_name(c->op), p->dim, x->ndim);
    return LU_OK;
}

static lu_status softmax_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    const lu_tensor *ts[2] = {x, y};
    LU_TRY(lu_cuda_check_float(c, ts, 2, x->dtype));
    LU_TRY(check_last_dim(c, x));
    int64_t d = x->shape[x->ndim - 1], n = lu_tensor_numel(x);
    if (n == 0) return LU_OK;
    softmax_forward_kernel<<<row_blocks(n / d), LU_CUDA_THREADS>>>(c->op == LU_OP_LOG_SOFTMAX, x->dtype,
                                                                   lu_tensor_data(x), lu_tensor_data(y), n / d, d);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]. */
static lu_status softmax_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[1], *y = c->in[2];
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    const lu_tensor *ts[4] = {dy, x, y, dx};
    LU_TRY(lu_cuda_check_float(c, ts, 4, x->dtype));
    LU_TRY(check_last_dim(c, x));
    int64_t d = x->shape[x->ndim - 1], n = lu_tensor_numel(x);
    if (n == 0) return LU_OK;
    if (!dy) {
        LU_TRY(lu_cuda_zero(dx));
        return LU_OK;
    }
    softmax_backward_kernel<<<row_blocks(n / d), LU_CUDA_THREADS>>>(c->op == LU_OP_LOG_SOFTMAX, x->dtype,
                                                                    lu_tensor_data(dy), lu_tensor_data(y),
                                                                    lu_tensor_data(dx), n / d, d);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* ---- rmsnorm ---- */

/* rstd = 1 / sqrt(mean(x^2) + eps); y = x * rstd * weight (weight may be NULL: 1). x, weight
 * and y share dt; rstd has its own dtype rdt. */
static __global__ void rmsnorm_forward_kernel(int dt, const void *x, const void *w, void *y, int rdt, void *rstd,
                                              int64_t rows, int64_t d, float eps)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float ss = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float v = lu_dev_load(x, dt, base + j);
            ss += v * v;
        }
        ss = lu_dev_warp_sum(ss);
        float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float v = lu_dev_load(x, dt, base + j) * r;
            lu_dev_store(y, dt, base + j, w ? v * lu_dev_load(w, dt, j) : v);
        }
        if (lane == 0) lu_dev_store(rstd, rdt, row, r);
    }
}

/* With g = dy * w and r = rstd: dx = r g - x r^3 / D * (sum(g x) + drstd), the last term being
 * the gradient through the aux output rstd (d r / d x_j = -r^3 x_j / D). dy or drstd may be
 * NULL (zero). */
static __global__ void rmsnorm_backward_dx_kernel(int dt, const void *dy, int rdt, const void *drstd, const void *x,
                                                  const void *w, const void *rstd, void *dx, int64_t rows, int64_t d)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float r = lu_dev_load(rstd, rdt, row), dot = 0.0f;
        if (dy) {
            for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
                float g = lu_dev_load(dy, dt, base + j) * (w ? lu_dev_load(w, dt, j) : 1.0f);
                dot += g * lu_dev_load(x, dt, base + j);
            }
            dot = lu_dev_warp_sum(dot);
        }
        if (drstd) dot += lu_dev_load(drstd, rdt, row);
        float coef = r * r * r / (float)d * dot;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = dy ? lu_dev_load(dy, dt, base + j) * (w ? lu_dev_load(w, dt, j) : 1.0f) : 0.0f;
            lu_dev_store(dx, dt, base + j, r * g - lu_dev_load(x, dt, base + j) * coef);
        }
    }
}

/* rmsnorm_forward_kernel on rows in registers (the VEC_ section above). */
template <int V>
static __global__ void __launch_bounds__(LU_CUDA_THREADS)
    rmsnorm_forward_vec8_kernel(int dt, const void *x, const void *w, void *y, int rdt, void *rstd, int64_t rows,
                                int64_t d, int g, float eps)
{
    VEC_ROWS_FOR(row, rows, g)
    {
        bool live = row < rows;
        /* Zeroed: g++ (the emulator) cannot see that only the loaded vectors are read. */
        float xv[V][LU_VEC8] = {}, ss = 0.0f;
#pragma unroll
        for (int k = 0; k < V; k++) {
            if (!live || VEC_COL(k, g) >= d) continue;
            lu_dev_load8(x, dt, row * d + VEC_COL(k, g), xv[k]);
#pragma unroll
            for (int e = 0; e < LU_VEC8; e++) ss += xv[k][e] * xv[k][e];
        }
        ss = vec_group_sum(ss, g);
        float r = 1.0f / sqrtf(ss / (float)d + eps);
#pragma unroll
        for (int k = 0; k < V; k++) {
            if (!live || VEC_COL(k, g) >= d) continue;
            float wv[LU_VEC8], o[LU_VEC8];
            if (w) lu_dev_load8(w, dt, VEC_COL(k, g), wv);
#pragma unroll
            for (int e = 0; e < LU_VEC8; e++) o[e] = w ? xv[k][e] * r * wv[e] : xv[k][e] * r;
            lu_dev_store8(y, dt, row * d + VEC_COL(k, g), o);
        }
        if (live && lane == 0) lu_dev_store(rstd, rdt, row, r);
    }
}

/* rmsnorm_backward_dx_kernel on rows in registers, dy given, dx optional, with stage 1 of dw =
 * sum over rows of dy * x * rstd when part or dw is given (vec_cols_finish). */
template <int V>
static __global__ void __launch_bounds__(LU_CUDA_THREADS)
    rmsnorm_backward_vec8_kernel(int dt, const void *dy, int rdt, const void *drstd, const void *x, const void *w,
                                 const void *rstd, void *dx, int64_t rows, int64_t d, int g, float *part, void *dw)
{
    float acc[V][LU_VEC8] = {};
    VEC_ROWS_FOR(row, rows, g)
    {
        bool live = row < rows;
        float r = live ? lu_dev_load(rstd, rdt, row) : 0.0f, dot = 0.0f;
        float gv[V][LU_VEC8] = {}, xv[V][LU_VEC8] = {};
#pragma unroll
        for (int k = 0; k < V; k++) {
            if (!live || VEC_COL(k, g) >= d) continue;
            float wv[LU_VEC8];
            lu_dev_load8(dy, dt, row * d + VEC_COL(k, g), gv[k]);
            lu_dev_load8(x, dt, row * d + VEC_COL(k, g), xv[k]);
            if (w) lu_dev_load8(w, dt, VEC_COL(k, g), wv);
#pragma unroll
            for (int e = 0; e < LU_VEC8; e++) {
                acc[k][e] += gv[k][e] * xv[k][e] * r;
                if (w) gv[k][e] *= wv[e]; /* from here on gv is g = dy * w */
                dot += gv[k][e] * xv[k][e];
            }
        }
        dot = vec_group_sum(dot, g);
        if (live && drstd) dot += lu_dev_load(drstd, rdt, row);
        float coef = r * r * r / (float)d * dot;
#pragma unroll
        for (int k = 0; k < V; k++) {
            if (!dx || !live || VEC_COL(k, g) >= d) continue;
            float o[LU_VEC8];
#pragma unroll
            for (int e = 0; e < LU_VEC8; e++) o[e] = r * gv[k][e] - xv[k][e] * coef;
            lu_dev_store8(dx, dt, row * d + VEC_COL(k, g), o);
        }
    }
    if (part || dw) vec_cols_finish<V>(acc, g, d, part, dt, dw);
}

/* rows: the product of x's dims but the last (d); rstd has one element per row, f32 or bf16. */
static lu_status rmsnorm_shapes(const lu_tensor *x, const lu_tensor *w, const lu_tensor *rstd, int64_t *rows, int64_t *d)
{
    *d = x->ndim ? x->shape[x->ndim - 1] : 1;
    *rows = 1;
    for (int k = 0; k + 1 < x->ndim; k++) *rows *= x->shape[k];
    if (!lu_cuda_is_float(rstd->dtype))
        return lu_errorf(LU_ERR_DTYPE, "rmsnorm: rstd is %s, expected f32 or bf16", lu_dtype_name(rstd->dtype));
    if ((w && lu_tensor_numel(w) != *d) || lu_tensor_numel(rstd) != *rows) {
        char sx[LU_SHAPE_STR_MAX], sr[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "rmsnorm: x %s, weight of %lld elements and rstd %s do not fit",
                         lu_shape_str(x, sx, sizeof sx), (long long)(w ? lu_tensor_numel(w) : 0),
                         lu_shape_str(rstd, sr, sizeof sr));
    }
    return LU_OK;
}

/* in = [x, weight?], out = [y, rstd]. */
static lu_status rmsnorm_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0], *w = c->in[1];
    lu_tensor *y = c->out[0], *rstd = c->out[1];
    const lu_tensor *ts[3] = {x, w, y};
    LU_TRY(lu_cuda_check_float(c, ts, 3, x->dtype));
    int64_t rows, d;
    LU_TRY(rmsnorm_shapes(x, w, rstd, &rows, &d));
    if (rows == 0) return LU_OK;
    const lu_norm_params *p = (const lu_norm_params *)c->params;
    const void *ptrs[3] = {lu_tensor_data(x), w ? lu_tensor_data(w) : NULL, lu_tensor_data(y)};
    vec_plan v;
    if (vec_plan_for(rows, d, ptrs, 3, &v))
        VEC_LAUNCH(rmsnorm_forward_vec8_kernel, &v, 0, x->dtype, ptrs[0], ptrs[1], lu_tensor_data(y), rstd->dtype,
                   lu_tensor_data(rstd), rows, d, v.g, (float)p->eps);
    else
        rmsnorm_forward_kernel<<<row_blocks(rows), LU_CUDA_THREADS>>>(x->dtype, ptrs[0], ptrs[1], lu_tensor_data(y),
                                                                      rstd->dtype, lu_tensor_data(rstd), rows, d,
                                                                      (float)p->eps);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* ---- column sums of the per-channel gradients ---- */

/* Aim for about a full H100/H200 of threads in stage 1 (each walks its chunk's rows alone, so the
 * loads' latency hides only behind many threads); no fewer rows than COL_MIN_ROWS per chunk. */
#define COL_THREADS 262144
#define COL_MIN_ROWS 16

/* Rows per chunk for a [rows, d] column sum; depends only on the shape. */
static int64_t col_chunk_rows(int64_t rows, int64_t d)
{
    int64_t want = (COL_THREADS + d - 1) / d, most = (rows + COL_MIN_ROWS - 1) / COL_MIN_ROWS;
    if (want > most) want = most;
    if (want < 1) want = 1;
    int64_t size = (rows + want - 1) / want;
    return size < 1 ? 1 : size;
}

/* Scratch for a two-stage column sum of `n_sums` sums over [rows, d]; *part is NULL when a
 * single chunk lets stage 1 write the outputs. */
static lu_status col_scratch(int64_t rows, int64_t d, int n_sums, int64_t *chunk, int64_t *chunks, float **part)
{
    *chunk = col_chunk_rows(rows, d);
    *chunks = (rows + *chunk - 1) / *chunk;
    *part = NULL;
    if (*chunks > 1) LU_TRY(lu_cuda_scratch_alloc((void **)part, (size_t)(n_sums * *chunks * d) * sizeof(float)));
    return LU_OK;
}

/* Checks stage 1's launch, runs stage 2 for each of n_sums sums whose outputs are given, and
 * frees the scratch whatever failed. */
static lu_status col_finish(int dt, float *part, int64_t d, int64_t chunks, int n_sums, void *const *outs)
{
    cudaError_t e = cudaGetLastError();
    for (int k = 0; k < n_sums && part && e == cudaSuccess; k++) {
        if (!outs[k]) continue;
        lu_colsum_kernel<<<lu_colsum_grid(d), LU_COLSUM_BLOCK>>>(dt, part + (size_t)(k * chunks * d), d, chunks, 1.0f,
                                                                 outs[k]);
        e = cudaGetLastError();
    }
    lu_cuda_scratch_free(part);
    return e == cudaSuccess ? LU_OK : lu_cuda_fail(e, __FILE__, __LINE__, "column-sum kernels");
}

/* Shapes of a last-dim normalisation: rows and d of x, each per-channel operand given of d
 * elements, each statistic given of `rows` elements in a float dtype. */
static lu_status norm_shapes(const lu_op_call *c, const lu_tensor *x, const lu_tensor *const *chan, int n_chan,
                             const lu_tensor *const *stats, int n_stats, int64_t *rows, int64_t *d)
{
    *d = x->ndim ? x->shape[x->ndim - 1] : 1;
    *rows = *d ? lu_tensor_numel(x) / *d : 0;
    char sx[LU_SHAPE_STR_MAX];
    for (int i = 0; i < n_chan; i++)
        if (chan[i] && lu_tensor_numel(chan[i]) != *d)
            return lu_errorf(LU_ERR_SHAPE, "%s: per-channel operand %d has %lld elements, x %s has %lld channels",
                             lu_op_name(c->op), i, (long long)lu_tensor_numel(chan[i]), lu_shape_str(x, sx, sizeof sx),
                             (long long)*d);
    for (int i = 0; i < n_stats; i++) {
        if (!stats[i]) continue;
        if (!lu_cuda_is_float(stats[i]->dtype))
            return lu_errorf(LU_ERR_DTYPE, "%s: statistic %d is %s, expected f32 or bf16", lu_op_name(c->op), i,
                             lu_dtype_name(stats[i]->dtype));
        if (lu_tensor_numel(stats[i]) != *rows)
            return lu_errorf(LU_ERR_SHAPE, "%s: statistic %d has %lld elements, x %s has %lld rows", lu_op_name(c->op),
                             i, (long long)lu_tensor_numel(stats[i]), lu_shape_str(x, sx, sizeof sx), (long long)*rows);
    }
    return LU_OK;
}

static lu_status zero_outputs(const lu_op_call *c)
{
    for (int i = 0; i < c->n_out; i++)
        if (c->out[i] && lu_tensor_nbytes(c->out[i]))
            LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(c->out[i]), 0, lu_tensor_nbytes(c->out[i]), 0));
    return LU_OK;
}

/* ---- rmsnorm backward ---- */

/* Stage 1 of dw = sum over rows of dy * x * rstd (layout as layernorm_backward_cols_kernel):
 * thread (chunk c, column j) sums its rows in order into part[c*d + j], or into dw with one
 * chunk. Many chunks: Qwen3's q/k norms have d = 128 columns over B*T*heads rows, which one
 * thread per column would walk alone. */
static __global__ void rmsnorm_backward_cols_kernel(int dt, const void *dy, const void *x, int rdt, const void *rstd,
                                                    int64_t rows, int64_t d, int64_t chunk, int64_t chunks, float *part,
                                                    void *dw)
{
    LU_CUDA_FOR(t, chunks * d)
    {
        int64_t c = t / d, j = t % d, r1 = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
        float acc = 0.0f;
        for (int64_t r = c * chunk; r < r1; r++)
            acc += lu_dev_load(dy, dt, r * d + j) * lu_dev_load(x, dt, r * d + j) * lu_dev_load(rstd, rdt, r);
        if (part) part[t] = acc;
        else lu_dev_store(dw, dt, j, acc);
    }
}

/* in = [dy, drstd, x, weight, y, rstd], out = [dx, dweight]. */
static lu_status rmsnorm_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *drstd = c->in[1], *x = c->in[2], *w = c->in[3], *rstd = c->in[5];
    lu_tensor *dx = c->out[0], *dw = c->out[1];
    const lu_tensor *ts[5] = {dy, x, w, dx, dw};
    LU_TRY(lu_cuda_check_float(c, ts, 5, x->dtype));
    int64_t rows, d;
    LU_TRY(rmsnorm_shapes(x, w, rstd, &rows, &d));
    if (drstd && drstd->dtype != rstd->dtype)
        return lu_errorf(LU_ERR_DTYPE, "rmsnorm backward: drstd is %s, rstd %s", lu_dtype_name(drstd->dtype),
                         lu_dtype_name(rstd->dtype));
    bool want_dx = dx && lu_tensor_numel(dx), want_dw = dw && lu_tensor_numel(dw);
    const void *ptrs[4] = {dy ? lu_tensor_data(dy) : NULL, lu_tensor_data(x), w ? lu_tensor_data(w) : NULL,
                           want_dx ? lu_tensor_data(dx) : NULL};
    vec_plan v;
    if (dy && rows > 0 && (want_dx || want_dw) && vec_plan_for(rows, d, ptrs, 4, &v)) {
        /* One pass for dx and stage 1 of dw; one block writes dw itself. */
        float *part = NULL;
        void *out = want_dw ? lu_tensor_data(dw) : NULL;
        if (want_dw && v.grid > 1) LU_TRY(lu_cuda_scratch_alloc((void **)&part, (size_t)(v.grid * d) * sizeof *part));
        VEC_LAUNCH(rmsnorm_backward_vec8_kernel, &v, want_dw ? vec_smem(&v, d) : 0, x->dtype, ptrs[0], rstd->dtype,
                   drstd ? lu_tensor_data(drstd) : NULL, ptrs[1], ptrs[2], lu_tensor_data(rstd),
                   want_dx ? lu_tensor_data(dx) : NULL, rows, d, v.g, part, part ? NULL : out);
        return col_finish(x->dtype, part, d, v.grid, 1, &out);
    }
    if (dx && lu_tensor_numel(dx)) {
        if (!dy && !drstd) {
            LU_TRY(lu_cuda_zero(dx));
        } else {
            rmsnorm_backward_dx_kernel<<<row_blocks(rows), LU_CUDA_THREADS>>>(
                x->dtype, dy ? lu_tensor_data(dy) : NULL, rstd->dtype, drstd ? lu_tensor_data(drstd) : NULL,
                lu_tensor_data(x), w ? lu_tensor_data(w) : NULL, lu_tensor_data(rstd), lu_tensor_data(dx), rows, d);
            LU_CUDA_CHECK_LAUNCH();
        }
    }
    if (dw && lu_tensor_numel(dw)) {
        if (!dy || rows == 0) {
            LU_TRY(lu_cuda_zero(dw));
        } else {
            int64_t chunk, chunks;
            float *part;
            void *out = lu_tensor_data(dw);
            LU_TRY(col_scratch(rows, d, 1, &chunk, &chunks, &part));
            rmsnorm_backward_cols_kernel<<<lu_cuda_blocks(chunks * d), LU_CUDA_THREADS>>>(
                x->dtype, lu_tensor_data(dy), lu_tensor_data(x), rstd->dtype, lu_tensor_data(rstd), rows, d, chunk, chunks,
                part, out);
            LU_TRY(col_finish(x->dtype, part, d, chunks, 1, &out));
        }
    }
    return LU_OK;
}

/* ---- layernorm: y = (x - mean) * rstd * w + b, biased variance (torch.nn.LayerNorm) ---- */

/* Two passes over the row (mean, then the centred sum of squares), as the CPU. x, w, b, y share
 * dt; mean and rstd have sdt. */
static __global__ void layernorm_forward_kernel(int dt, const void *x, const void *w, const void *b, void *y, int sdt,
                                                void *mean, void *rstd, int64_t rows, int64_t d, float eps)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float s = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) s += lu_dev_load(x, dt, base + j);
        float m = lu_dev_warp_sum(s) / (float)d, v = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float u = lu_dev_load(x, dt, base + j) - m;
            v += u * u;
        }
        float r = 1.0f / sqrtf(lu_dev_warp_sum(v) / (float)d + eps);
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float h = (lu_dev_load(x, dt, base + j) - m) * r;
            if (w) h *= lu_dev_load(w, dt, j);
            if (b) h += lu_dev_load(b, dt, j);
            lu_dev_store(y, dt, base + j, h);
        }
        if (lane == 0) {
            lu_dev_store(mean, sdt, row, m);
            lu_dev_store(rstd, sdt, row, r);
        }
    }
}

/* With h = (x - mean) * r and g = dy * w: dx = r * (g - mean(g) - h * mean(g * h)). The
 * statistics' own gradients are ignored, as on the CPU (they are saved values). */
static __global__ void layernorm_backward_dx_kernel(int dt, const void *dy, const void *x, const void *w, int sdt,
                                                    const void *mean, const void *rstd, void *dx, int64_t rows, int64_t d)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float m = lu_dev_load(mean, sdt, row), r = lu_dev_load(rstd, sdt, row), sg = 0.0f, sgh = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = lu_dev_load(dy, dt, base + j) * (w ? lu_dev_load(w, dt, j) : 1.0f);
            sg += g;
            sgh += g * (lu_dev_load(x, dt, base + j) - m) * r;
        }
        sg = lu_dev_warp_sum(sg) / (float)d;
        sgh = lu_dev_warp_sum(sgh) / (float)d;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = lu_dev_load(dy, dt, base + j) * (w ? lu_dev_load(w, dt, j) : 1.0f);
            float h = (lu_dev_load(x, dt, base + j) - m) * r;
            lu_dev_store(dx, dt, base + j, r * (g - sg - h * sgh));
        }
    }
}

/* Stage 1 of dw = sum dy * h and db = sum dy: thread (chunk c, column j) sums its rows in order
 * into part[c*d + j] (dw) and part[(chunks + c)*d + j] (db), or into dw/db with one chunk. */
static __global__ void layernorm_backward_cols_kernel(int dt, const void *dy, const void *x, int sdt, const void *mean,
                                                      const void *rstd, int64_t rows, int64_t d, int64_t chunk,
                                                      int64_t chunks, float *part, void *dw, void *db)
{
    LU_CUDA_FOR(t, chunks * d)
    {
        int64_t c = t / d, j = t % d, r1 = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
        float aw = 0.0f, ab = 0.0f;
        for (int64_t r = c * chunk; r < r1; r++) {
            float g = lu_dev_load(dy, dt, r * d + j);
            aw += g * (lu_dev_load(x, dt, r * d + j) - lu_dev_load(mean, sdt, r)) * lu_dev_load(rstd, sdt, r);
            ab += g;
        }
        if (part) {
            part[t] = aw;
            part[chunks * d + t] = ab;
        } else {
            if (dw) lu_dev_store(dw, dt, j, aw);
            if (db) lu_dev_store(db, dt, j, ab);
        }
    }
}

/* layernorm_backward_dx_kernel on rows in registers (the VEC_ section), dx optional, with stage 1
 * of dw = sum dy * h (when part_w or dw is given) and db = sum dy (part_b or db). */
template <int V>
static __global__ void __launch_bounds__(LU_CUDA_THREADS)
    layernorm_backward_vec8_kernel(int dt, const void *dy, const void *x, const void *w, int sdt, const void *mean,
                                   const void *rstd, void *dx, int64_t rows, int64_t d, int g, float *part_w, void *dw,
                                   float *part_b, void *db)
{
    float aw[V][LU_VEC8] = {}, ab[V][LU_VEC8] = {};
    VEC_ROWS_FOR(row, rows, g)
    {
        bool live = row < rows;
        float m = live ? lu_dev_load(mean, sdt, row) : 0.0f, r = live ? lu_dev_load(rstd, sdt, row) : 0.0f;
        float sg = 0.0f, sgh = 0.0f, gv[V][LU_VEC8] = {}, hv[V][LU_VEC8] = {};
#pragma unroll
        for (int k = 0; k < V; k++) {
            if (!live || VEC_COL(k, g) >= d) continue;
            float wv[LU_VEC8];
            lu_dev_load8(dy, dt, row * d + VEC_COL(k, g), gv[k]);
            lu_dev_load8(x, dt, row * d + VEC_COL(k, g), hv[k]);
            if (w) lu_dev_load8(w, dt, VEC_COL(k, g), wv);
#pragma unroll
            for (int e = 0; e < LU_VEC8; e++) {
                hv[k][e] = (hv[k][e] - m) * r;
                aw[k][e] += gv[k][e] * hv[k][e];
                ab[k][e] += gv[k][e];
                if (w) gv[k][e] *= wv[e]; /* from here on gv is g = dy * w */
                sg += gv[k][e];
                sgh += gv[k][e] * hv[k][e];
            }
        }
        sg = vec_group_sum(sg, g) / (float)d;
        sgh = vec_group_sum(sgh, g) / (float)d;
#pragma unroll
        for (int k = 0; k < V; k++) {
            if (!dx || !live || VEC_COL(k, g) >= d) continue;
            float o[LU_VEC8];
#pragma unroll
            for (int e = 0; e < LU_VEC8; e++) o[e] = r * (gv[k][e] - sg - hv[k][e] * sgh);
            lu_dev_store8(dx, dt, row * d + VEC_COL(k, g), o);
        }
    }
    if (part_w || dw) vec_cols_finish<V>(aw, g, d, part_w, dt, dw);
    if (part_b || db) vec_cols_finish<V>(ab, g, d, part_b, dt, db);
}

/* in = [x, weight?, bias?], out = [y, mean, rstd]. */
static lu_status layernorm_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0], *w = c->in[1], *b = c->in[2];
    lu_tensor *y = c->out[0], *mean = c->out[1], *rstd = c->out[2];
    const lu_tensor *ts[4] = {x, w, b, y}, *chan[2] = {w, b}, *stats[2] = {mean, rstd};
    LU_TRY(lu_cuda_check_float(c, ts, 4, x->dtype));
    int64_t rows, d;
    LU_TRY(norm_shapes(c, x, chan, 2, stats, 2, &rows, &d));
    if (mean->dtype != rstd->dtype)
        return lu_errorf(LU_ERR_DTYPE, "layernorm: mean is %s, rstd %s", lu_dtype_name(mean->dtype),
                         lu_dtype_name(rstd->dtype));
    if (rows == 0 || d == 0) return LU_OK;
    const lu_norm_params *p = (const lu_norm_params *)c->params;
    layernorm_forward_kernel<<<row_blocks(rows), LU_CUDA_THREADS>>>(
        x->dtype, lu_tensor_data(x), w ? lu_tensor_data(w) : NULL, b ? lu_tensor_data(b) : NULL, lu_tensor_data(y),
        mean->dtype, lu_tensor_data(mean), lu_tensor_data(rstd), rows, d, (float)p->eps);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, dmean, drstd, x, weight, bias, y, mean, rstd], out = [dx, dweight, dbias]. */
static lu_status layernorm_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[3], *w = c->in[4], *mean = c->in[7], *rstd = c->in[8];
    lu_tensor *dx = c->out[0], *dw = c->out[1], *db = c->out[2];
    const lu_tensor *ts[6] = {dy, x, w, dx, dw, db}, *chan[3] = {w, dw, db}, *stats[2] = {mean, rstd};
    LU_TRY(lu_cuda_check_float(c, ts, 6, x->dtype));
    int64_t rows, d;
    LU_TRY(norm_shapes(c, x, chan, 3, stats, 2, &rows, &d));
    if (!dy || rows == 0 || d == 0) return zero_outputs(c);
    if (mean->dtype != rstd->dtype)
        return lu_errorf(LU_ERR_DTYPE, "layernorm backward: mean is %s, rstd %s", lu_dtype_name(mean->dtype),
                         lu_dtype_name(rstd->dtype));
    const void *ptrs[4] = {lu_tensor_data(dy), lu_tensor_data(x), w ? lu_tensor_data(w) : NULL,
                           dx ? lu_tensor_data(dx) : NULL};
    vec_plan v;
    if ((dx || dw || db) && vec_plan_for(rows, d, ptrs, 4, &v)) {
        /* One pass for dx and stage 1 of dw and db (part: dw's partial rows, then db's); one block
         * writes dw and db itself. */
        float *part = NULL;
        void *outs[2] = {dw ? lu_tensor_data(dw) : NULL, db ? lu_tensor_data(db) : NULL};
        if ((dw || db) && v.grid > 1)
            LU_TRY(lu_cuda_scratch_alloc((void **)&part, (size_t)(2 * v.grid * d) * sizeof *part));
        float *part_w = part && dw ? part : NULL, *part_b = part && db ? part + v.grid * d : NULL;
        VEC_LAUNCH(layernorm_backward_vec8_kernel, &v, dw || db ? vec_smem(&v, d) : 0, x->dtype, ptrs[0], ptrs[1],
                   ptrs[2], mean->dtype, lu_tensor_data(mean), lu_tensor_data(rstd), dx ? lu_tensor_data(dx) : NULL,
                   rows, d, v.g, part_w, part ? NULL : outs[0], part_b, part ? NULL : outs[1]);
        return col_finish(x->dtype, part, d, v.grid, 2, outs);
    }
    if (dx) {
        layernorm_backward_dx_kernel<<<row_blocks(rows), LU_CUDA_THREADS>>>(
            x->dtype, lu_tensor_data(dy), lu_tensor_data(x), w ? lu_tensor_data(w) : NULL, mean->dtype,
            lu_tensor_data(mean), lu_tensor_data(rstd), lu_tensor_data(dx), rows, d);
        LU_CUDA_CHECK_LAUNCH();
    }
    if (dw || db) {
        int64_t chunk, chunks;
        float *part;
        void *outs[2] = {dw ? lu_tensor_data(dw) : NULL, db ? lu_tensor_data(db) : NULL};
        LU_TRY(col_scratch(rows, d, 2, &chunk, &chunks, &part));
        layernorm_backward_cols_kernel<<<lu_cuda_blocks(chunks * d), LU_CUDA_THREADS>>>(
            x->dtype, lu_tensor_data(dy), lu_tensor_data(x), mean->dtype, lu_tensor_data(mean), lu_tensor_data(rstd),
            rows, d, chunk, chunks, part, outs[0], outs[1]);
        LU_TRY(col_finish(x->dtype, part, d, chunks, 2, outs));
    }
    return LU_OK;
}

/* ---- biasnorm: y = x * exp(log_scale) * rstd, rstd = mean((x - bias)^2)^(-1/2), no epsilon
 * (icefall zipformer/scaling.py BiasNorm) ---- */

static __global__ void biasnorm_forward_kernel(int dt, const void *x, const void *bias, const void *log_scale, void *y,
                                               int sdt, void *rstd, int64_t rows, int64_t d)
{
    float e = expf(lu_dev_load(log_scale, dt, 0));
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float ss = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float u = lu_dev_load(x, dt, base + j) - lu_dev_load(bias, dt, j);
            ss += u * u;
        }
        float r = 1.0f / sqrtf(lu_dev_warp_sum(ss) / (float)d);
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) lu_dev_store(y, dt, base + j, lu_dev_load(x, dt, base + j) * e * r);
        if (lane == 0) lu_dev_store(rstd, sdt, row, r);
    }
}

/* Per row, with e = exp(log_scale), u = x - bias, A = sum(dy * x) * e:
 * dx = dy e r - k u with k = A r^3 / D (saved in k[row]), and t[row] = sum(dy * y). */
static __global__ void biasnorm_backward_rows_kernel(int dt, const void *dy, const void *x, const void *bias,
                                                     const void *log_scale, const void *y, int sdt, const void *rstd,
                                                     void *dx, float *k, float *t, int64_t rows, int64_t d)
{
    float e = expf(lu_dev_load(log_scale, dt, 0));
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float r = lu_dev_load(rstd, sdt, row), a = 0.0f, ty = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = lu_dev_load(dy, dt, base + j);
            a += g * lu_dev_load(x, dt, base + j);
            ty += g * lu_dev_load(y, dt, base + j);
        }
        float kr = lu_dev_warp_sum(a) * e * r * r * r / (float)d;
        ty = lu_dev_warp_sum(ty);
        if (lane == 0) {
            k[row] = kr;
            t[row] = ty;
        }
        if (dx)
            for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
                float u = lu_dev_load(x, dt, base + j) - lu_dev_load(bias, dt, j);
                lu_dev_store(dx, dt, base + j, lu_dev_load(dy, dt, base + j) * e * r - kr * u);
            }
    }
}

/* Stage 1 of dbias = sum over rows of k * (x - bias) (layout as layernorm_backward_cols_kernel). */
static __global__ void biasnorm_backward_cols_kernel(int dt, const void *x, const void *bias, const float *k,
                                                     int64_t rows, int64_t d, int64_t chunk, int64_t chunks,
                                                     float *part, void *dbias)
{
    LU_CUDA_FOR(t, chunks * d)
    {
        int64_t c = t / d, j = t % d, r1 = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
        float bj = lu_dev_load(bias, dt, j), acc = 0.0f;
        for (int64_t r = c * chunk; r < r1; r++) acc += k[r] * (lu_dev_load(x, dt, r * d + j) - bj);
        if (part) part[t] = acc;
        else lu_dev_store(dbias, dt, j, acc);
    }
}

/* dlog_scale = sum of t over rows: one block, each thread a strided run in order, then a fixed
 * tree. */
static __global__ void biasnorm_backward_scale_kernel(int dt, const float *t, int64_t rows, void *dlog_scale)
{
    float s = 0.0f;
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += t[r];
    s = lu_dev_block_sum(s);
    if (threadIdx.x == 0) lu_dev_store(dlog_scale, dt, 0, s);
}

/* in = [x, bias, log_scale], out = [y, rstd]. */
static lu_status biasnorm_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0], *bias = c->in[1], *ls = c->in[2];
    lu_tensor *y = c->out[0], *rstd = c->out[1];
    const lu_tensor *ts[4] = {x, bias, ls, y}, *chan[1] = {bias}, *stats[1] = {rstd};
    LU_TRY(lu_cuda_check_float(c, ts, 4, x->dtype));
    int64_t rows, d;
    LU_TRY(norm_shapes(c, x, chan, 1, stats, 1, &rows, &d));
    if (lu_tensor_numel(ls) != 1)
        return lu_errorf(LU_ERR_SHAPE, "biasnorm: log_scale has %lld elements, expected 1", (long long)lu_tensor_numel(ls));
    if (rows == 0 || d == 0) return LU_OK;
    biasnorm_forward_kernel<<<row_blocks(rows), LU_CUDA_THREADS>>>(x->dtype, lu_tensor_data(x), lu_tensor_data(bias),
                                                                   lu_tensor_data(ls), lu_tensor_data(y), rstd->dtype,
                                                                   lu_tensor_data(rstd), rows, d);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, drstd, x, bias, log_scale, y, rstd], out = [dx, dbias, dlog_scale]. */
static lu_status biasnorm_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[2], *bias = c->in[3], *ls = c->in[4], *y = c->in[5], *rstd = c->in[6];
    lu_tensor *dx = c->out[0], *db = c->out[1], *dls = c->out[2];
    const lu_tensor *ts[7] = {dy, x, bias, ls, y, dx, db}, *chan[2] = {bias, db}, *stats[1] = {rstd};
    LU_TRY(lu_cuda_check_float(c, ts, 7, x->dtype));
    if (dls && (dls->dtype != x->dtype || lu_tensor_numel(dls) != 1))
        return lu_errorf(LU_ERR_SHAPE, "biasnorm backward: dlog_scale must be one %s element", lu_dtype_name(x->dtype));
    int64_t rows, d;
    LU_TRY(norm_shapes(c, x, chan, 2, stats, 1, &rows, &d));
    if (!dy || rows == 0 || d == 0) return zero_outputs(c);
    float *kt;
    LU_TRY(lu_cuda_scratch_alloc((void **)&kt, (size_t)(2 * rows) * sizeof *kt));
    biasnorm_backward_rows_kernel<<<row_blocks(rows), LU_CUDA_THREADS>>>(
        x->dtype, lu_tensor_data(dy), lu_tensor_data(x), lu_tensor_data(bias), lu_tensor_data(ls), lu_tensor_data(y),
        rstd->dtype, lu_tensor_data(rstd), dx ? lu_tensor_data(dx) : NULL, kt, kt + rows, rows, d);
    /* kt is freed on every path from here. */
    cudaError_t e = cudaGetLastError();
    lu_status st = e == cudaSuccess ? LU_OK : lu_cuda_fail(e, __FILE__, __LINE__, "biasnorm_backward_rows_kernel");
    if (!st && db) {
        int64_t chunk, chunks;
        float *part;
        void *outs[1] = {lu_tensor_data(db)};
        st = col_scratch(rows, d, 1, &chunk, &chunks, &part);
        if (!st) {
            biasnorm_backward_cols_kernel<<<lu_cuda_blocks(chunks * d), LU_CUDA_THREADS>>>(
                x->dtype, lu_tensor_data(x), lu_tensor_data(bias), kt, rows, d, chunk, chunks, part, outs[0]);
            st = col_finish(x->dtype, part, d, chunks, 1, outs);
        }
    }
    if (!st && dls) {
        biasnorm_backward_scale_kernel<<<1, LU_CUDA_THREADS>>>(x->dtype, kt + rows, rows, lu_tensor_data(dls));
        e = cudaGetLastError();
        if (e != cudaSuccess) st = lu_cuda_fail(e, __FILE__, __LINE__, "biasnorm_backward_scale_kernel");
    }
    lu_cuda_scratch_free(kt);
    return st;
}

extern "C" void lu_cuda_register_norm(lu_backend *b)
{
    b->forward[LU_OP_SOFTMAX] = softmax_forward;
    b->backward[LU_OP_SOFTMAX] = softmax_backward;
    b->forward[LU_OP_LOG_SOFTMAX] = softmax_forward;
    b->backward[LU_OP_LOG_SOFTMAX] = softmax_backward;
    b->forward[LU_OP_RMSNORM] = rmsnorm_forward;
    b->backward[LU_OP_RMSNORM] = rmsnorm_backward;
    b->forward[LU_OP_LAYERNORM] = layernorm_forward;
    b->backward[LU_OP_LAYERNORM] = layernorm_backward;
    b->forward[LU_OP_BIASNORM] = biasnorm_forward;
    b->backward[LU_OP_BIASNORM] = biasnorm_backward;
}
