/* rope.cu - CUDA kernel of ROPE (rotary position embeddings, half-split as transformers'
 * rotate_half), forward and backward, f32 and bf16 (core/cpu/norm_generic.h is the reference).
 * The angle follows the CPU's float32 recipe: inv_freq_i = 1 / powf(theta, 2i/rd),
 * a = pos * inv_freq_i, cosf(a), sinf(a); powf, cosf and sinf are evaluated in double and
 * rounded, as glibc's (nearly always correctly rounded) ones: CUDA's float versions are up to
 * 2-4 ulp off, which at positions of tens of thousands moves the angle visibly. */
#include <limits.h>
#include <math.h>

#include "device.cuh"

/* x [BT, H, D], positions [BT] (i32 or i64). For i < rd/2:
 * y_i = x_i cos a - x_{i+rd/2} sign sin a, y_{i+rd/2} = x_{i+rd/2} cos a + x_i sign sin a;
 * y_i = x_i for i >= rd. sign -1 applies the inverse rotation (the backward). One thread per
 * (token, i): the angle is computed once for the heads. */
static __global__ void rope_kernel(int dt, const void *x, const void *pos, bool pos64, void *y, int64_t bt, int64_t nh,
                                   int64_t d, int64_t rd, float theta, float sign)
{
    const int64_t half = rd / 2;
    LU_CUDA_FOR(idx, bt * half)
    {
        int64_t t = idx / half, i = idx % half;
        float ps = pos64 ? (float)((const int64_t *)pos)[t] : (float)((const int32_t *)pos)[t];
        float inv = 1.0f / (float)pow((double)theta, (double)((float)(2 * i) / (float)rd)), a = ps * inv;
        double sa, ca;
        sincos((double)a, &sa, &ca);
        float c = (float)ca, s = sign * (float)sa;
        for (int64_t h = 0; h < nh; h++) {
            int64_t k = (t * nh + h) * d + i;
            float x0 = lu_dev_load(x, dt, k), x1 = lu_dev_load(x, dt, k + half);
            lu_dev_store(y, dt, k, x0 * c - x1 * s);
            lu_dev_store(y, dt, k + half, x1 * c + x0 * s);
        }
    }
    LU_CUDA_FOR(idx, bt * nh * (d - rd))
    {
        int64_t k = idx / (d - rd) * d + rd + idx % (d - rd);
        lu_dev_store(y, dt, k, lu_dev_load(x, dt, k));
    }
}

/* The vector kernel: rotations of up to 2 ROPE_MAX_HALF dims, angles inv_freq_i computed on the
 * host (double pow rounded, the same recipe) and passed by value. */
#define ROPE_MAX_HALF 512
#define ROPE_THREADS 128
typedef struct rope_freqs {
    float inv[ROPE_MAX_HALF];
} rope_freqs;

/* The same rotation with 8 elements an access (half = rd / 2 and d - rd multiples of 8, 16-byte
 * aligned rows): a block takes `tok` = max(1, ROPE_THREADS / half) tokens at a time, first their
 * cos and sign * sin into shared memory, a thread per (token, i), then every 8-element piece of
 * their heads, a thread per piece. */
static __global__ void __launch_bounds__(ROPE_THREADS) rope_vec_kernel(int dt, const void *x, const void *pos,
                                                                        bool pos64, void *y, int64_t bt, int nh, int d,
                                                                        int rd, rope_freqs f, float sign)
{
    __shared__ float cs[2][ROPE_MAX_HALF];
    const int half = rd / 2, tok = half < ROPE_THREADS ? ROPE_THREADS / half : 1;
    const int hv = half / LU_VEC8, per = hv + (d - rd) / LU_VEC8; /* pieces of a head: rotated, copied */
    for (int64_t t0 = (int64_t)blockIdx.x * tok; t0 < bt; t0 += (int64_t)gridDim.x * tok) {
        const int nt = bt - t0 < tok ? (int)(bt - t0) : tok;
        for (int e = threadIdx.x; e < nt * half; e += blockDim.x) {
            const int64_t t = t0 + e / half;
            const float ps = pos64 ? (float)((const int64_t *)pos)[t] : (float)((const int32_t *)pos)[t];
            double sa, ca;
            sincos((double)(ps * f.inv[e % half]), &sa, &ca);
            cs[0][e] = (float)ca;
            cs[1][e] = sign * (float)sa;
        }
        __syncthreads();
        for (int task = threadIdx.x; task < nt * nh * per; task += blockDim.x) {
            const int tt = task / (nh * per), h = task / per % nh, v = task % per;
            const int64_t row = ((t0 + tt) * nh + h) * d;
            float a[LU_VEC8], b[LU_VEC8];
            if (v < hv) {
                const int i = v * LU_VEC8;
                const float *c = &cs[0][tt * half + i], *sn = &cs[1][tt * half + i];
                lu_dev_load8(x, dt, row + i, a);
                lu_dev_load8(x, dt, row + i + half, b);
                float y0[LU_VEC8], y1[LU_VEC8];
#pragma unroll
                for (int e = 0; e < LU_VEC8; e++) {
                    y0[e] = a[e] * c[e] - b[e] * sn[e];
                    y1[e] = b[e] * c[e] + a[e] * sn[e];
                }
                lu_dev_store8(y, dt, row + i, y0);
                lu_dev_store8(y, dt, row + i + half, y1);
            } else {
                const int64_t k = row + rd + (v - hv) * LU_VEC8;
                lu_dev_load8(x, dt, k, a);
                lu_dev_store8(y, dt, k, a);
            }
        }
        __syncthreads();
    }
}

static lu_status rope_run(const lu_op_call *c, const lu_tensor *src, const lu_tensor *pos, lu_tensor *dst, float sign)
{
    const lu_rope_params *p = (const lu_rope_params *)c->params;
    if (src->ndim != 4 || (pos->dtype != LU_I32 && pos->dtype != LU_I64) ||
        lu_tensor_numel(pos) != src->shape[0] * src->shape[1] || lu_tensor_numel(dst) != lu_tensor_numel(src)) {
        char sx[LU_SHAPE_STR_MAX], sp[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "rope: x %s and positions %s %s are not [B, T, H, D] and i32/i64 [B, T]",
                         lu_shape_str(src, sx, sizeof sx), lu_shape_str(pos, sp, sizeof sp), lu_dtype_name(pos->dtype));
    }
    int64_t bt = src->shape[0] * src->shape[1], nh = src->shape[2], d = src->shape[3];
    int64_t rd = p->rotary_dim ? p->rotary_dim : d;
    if (rd < 0 || rd > d || rd % 2)
        return lu_errorf(LU_ERR_INVALID, "rope: rotary_dim %lld must be even and in [0, %lld]", (long long)rd,
                         (long long)d);
    int64_t n = bt * nh * d;
    if (n == 0) return LU_OK;
    const void *ptrs[2] = {lu_tensor_data(src), lu_tensor_data(dst)};
    if (rd > 0 && rd / 2 <= ROPE_MAX_HALF && (rd / 2) % LU_VEC8 == 0 && (d - rd) % LU_VEC8 == 0 &&
        nh <= INT_MAX / d && (src->dtype == LU_BF16 || src->dtype == LU_F32) && lu_cuda_vec8_ok(d, ptrs, 2)) {
        rope_freqs f;
        for (int64_t i = 0; i < rd / 2; i++)
            f.inv[i] = 1.0f / (float)pow((double)(float)p->theta, (double)((float)(2 * i) / (float)rd));
        const int64_t tok = rd / 2 < ROPE_THREADS ? ROPE_THREADS / (rd / 2) : 1, groups = (bt + tok - 1) / tok;
        rope_vec_kernel<<<(unsigned)(groups < 65535 ? groups : 65535), ROPE_THREADS>>>(
            src->dtype, lu_tensor_data(src), lu_tensor_data(pos), pos->dtype == LU_I64, lu_tensor_data(dst), bt,
            (int)nh, (int)d, (int)rd, f, sign);
        LU_CUDA_CHECK_LAUNCH();
        return LU_OK;
    }
    rope_kernel<<<lu_cuda_blocks(n / 2 > 0 ? n / 2 : 1), LU_CUDA_THREADS>>>(src->dtype, lu_tensor_data(src),
                                                                            lu_tensor_data(pos), pos->dtype == LU_I64,
                                                                            lu_tensor_data(dst), bt, nh, d, rd,
                                                                            (float)p->theta, sign);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [x, positions], out = [y]. */
static lu_status rope_forward(const lu_op_call *c)
{
    const lu_tensor *ts[2] = {c->in[0], c->out[0]};
    LU_TRY(lu_cuda_check_float(c, ts, 2, c->in[0]->dtype));
    return rope_run(c, c->in[0], c->in[1], c->out[0], 1.0f);
}

/* in = [dy, x, positions, y], out = [dx]: the rotation is orthogonal, dx is dy rotated back. */
static lu_status rope_backward(const lu_op_call *c)
{
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    const lu_tensor *ts[3] = {c->in[0], c->in[1], dx};
    LU_TRY(lu_cuda_check_float(c, ts, 3, dx->dtype));
    if (!c->in[0]) {
        LU_TRY(lu_cuda_zero(dx));
        return LU_OK;
    }
    return rope_run(c, c->in[0], c->in[2], dx, -1.0f);
}

extern "C" void lu_cuda_register_rope(lu_backend *b)
{
    b->forward[LU_OP_ROPE] = rope_forward;
    b->backward[LU_OP_ROPE] = rope_backward;
}
