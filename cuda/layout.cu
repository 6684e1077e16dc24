/* layout.cu - CUDA kernels that move data: fills, strided -> contiguous copies, dtype casts, and
 * the in-place accumulation autograd uses to add up gradients (core/cpu/layout.c is the
 * reference). */
#include "device.cuh"

/* ---- fill ---- */

static __global__ void fill_kernel(void *dst, int elem_size, int64_t n, uint64_t pattern)
{
    LU_CUDA_FOR(i, n)
    {
        switch (elem_size) {
        case 1: ((uint8_t *)dst)[i] = (uint8_t)pattern; break;
        case 2: ((uint16_t *)dst)[i] = (uint16_t)pattern; break;
        case 4: ((uint32_t *)dst)[i] = (uint32_t)pattern; break;
        default: ((uint64_t *)dst)[i] = pattern; break;
        }
    }
}

extern "C" lu_status lu_cuda_fill_pattern(void *dst, size_t elem_size, size_t n, uint64_t pattern)
{
    if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8)
        return lu_errorf(LU_ERR_DTYPE, "cuda fill: element size %zu not supported", elem_size);
    fill_kernel<<<lu_cuda_blocks((int64_t)n), LU_CUDA_THREADS>>>(dst, (int)elem_size, (int64_t)n, pattern);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* An empty kernel: its launch fails when this build holds no code the GPU can run. */
static __global__ void probe_kernel(int unused) { (void)unused; }

extern "C" cudaError_t lu_cuda_probe_launch(void)
{
    probe_kernel<<<1, 1>>>(0);
    return cudaGetLastError();
}

/* ---- contiguous ---- */

/* dst element at (dst layout) i = src element at (src layout) i, elements of elem_size bytes; a
 * dst that is not strided is contiguous (its layout unread). */
static __global__ void strided_copy_kernel(char *dst, const char *src, int elem_size, int64_t n, lu_cuda_layout ls,
                                           lu_cuda_layout ld, bool dst_strided)
{
    LU_CUDA_FOR(i, n)
    {
        int64_t from = lu_dev_offset(&ls, i), to = dst_strided ? lu_dev_offset(&ld, i) : i;
        switch (elem_size) {
        case 1: ((uint8_t *)dst)[to] = ((const uint8_t *)src)[from]; break;
        case 2: ((uint16_t *)dst)[to] = ((const uint16_t *)src)[from]; break;
        case 4: ((uint32_t *)dst)[to] = ((const uint32_t *)src)[from]; break;
        default: ((uint64_t *)dst)[to] = ((const uint64_t *)src)[from]; break;
        }
    }
}

/* y = x element by element in row-major order. y is contiguous for the op; lu_tensor_copy also
 * hands it a strided destination (a view), which the same kernel scatters into. */
static lu_status contiguous_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    int64_t n = lu_tensor_numel(x);
    if (x->dtype != y->dtype || n != lu_tensor_numel(y))
        return lu_errorf(LU_ERR_SHAPE, "contiguous: %s[%lld] into %s[%lld]", lu_dtype_name(x->dtype), (long long)n,
                         lu_dtype_name(y->dtype), (long long)lu_tensor_numel(y));
    if (n == 0) return LU_OK;
    bool strided = !lu_tensor_is_contiguous(y);
    strided_copy_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>((char *)lu_tensor_data(y), (const char *)lu_tensor_data(x),
                                                                (int)lu_dtype_size(x->dtype), n, lu_cuda_layout_of(x),
                                                                lu_cuda_layout_of(y), strided);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* ---- cast ---- */

/* Every value passes through double, as in lu_dtype_convert: float -> int truncates toward
 * zero, f16/bf16 round from float to nearest even. */
static __device__ double load_any(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case LU_F32: return ((const float *)p)[i];
    case LU_F64: return ((const double *)p)[i];
    case LU_BF16: return lu_dev_bf16_to_f32(((const uint16_t *)p)[i]);
    case LU_F16: return lu_dev_f16_to_f32(((const uint16_t *)p)[i]);
    case LU_I32: return ((const int32_t *)p)[i];
    case LU_I64: return (double)((const int64_t *)p)[i];
    case LU_U8: return ((const uint8_t *)p)[i];
    default: return ((const uint8_t *)p)[i] != 0;
    }
}

static __device__ void store_any(void *p, int dt, int64_t i, double v)
{
    switch (dt) {
    case LU_F32: ((float *)p)[i] = (float)v; break;
    case LU_F64: ((double *)p)[i] = v; break;
    case LU_BF16: ((uint16_t *)p)[i] = lu_dev_f32_to_bf16((float)v); break;
    case LU_F16: ((uint16_t *)p)[i] = lu_dev_f32_to_f16((float)v); break;
    case LU_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case LU_I64: ((int64_t *)p)[i] = (int64_t)v; break;
    case LU_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    default: ((uint8_t *)p)[i] = v != 0; break;
    }
}

static __global__ void cast_kernel(void *dst, int dst_dt, const void *src, int src_dt, int64_t n)
{
    LU_CUDA_FOR(i, n)
    {
        /* i64 <-> i32 directly: doubles hold only 53 bits of an i64. */
        if (src_dt == LU_I64 && dst_dt == LU_I32) ((int32_t *)dst)[i] = (int32_t)((const int64_t *)src)[i];
        else if (src_dt == LU_I32 && dst_dt == LU_I64) ((int64_t *)dst)[i] = ((const int32_t *)src)[i];
        else store_any(dst, dst_dt, i, load_any(src, src_dt, i));
    }
}

/* f32 <-> bf16 eight elements a thread (the weights' casts of mixed-precision training): the same
 * values as cast_kernel, whose trip through double changes no f32. */
static __global__ void cast_vec8_kernel(void *dst, int dst_dt, const void *src, int src_dt, int64_t n)
{
    LU_CUDA_FOR(g, n / LU_VEC8)
    {
        float v[LU_VEC8];
        lu_dev_load8(src, src_dt, g * LU_VEC8, v);
        lu_dev_store8(dst, dst_dt, g * LU_VEC8, v);
    }
}

extern "C" lu_status lu_cuda_convert(void *dst, lu_dtype dst_dt, const void *src, lu_dtype src_dt, size_t n)
{
    if (n == 0) return LU_OK;
    if (dst_dt == src_dt) {
        LU_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * lu_dtype_size(src_dt), cudaMemcpyDeviceToDevice, 0));
        return LU_OK;
    }
    const void *ptrs[2] = {dst, src};
    if (((src_dt == LU_F32 && dst_dt == LU_BF16) || (src_dt == LU_BF16 && dst_dt == LU_F32)) &&
        lu_cuda_vec8_ok((int64_t)n, ptrs, 2)) {
        cast_vec8_kernel<<<lu_cuda_blocks((int64_t)n / LU_VEC8), LU_CUDA_THREADS>>>(dst, dst_dt, src, src_dt, (int64_t)n);
        LU_CUDA_CHECK_LAUNCH();
        return LU_OK;
    }
    cast_kernel<<<lu_cuda_blocks((int64_t)n), LU_CUDA_THREADS>>>(dst, dst_dt, src, src_dt, (int64_t)n);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

static lu_status cast_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    int64_t n = lu_tensor_numel(x);
    if (n != lu_tensor_numel(y))
        return lu_errorf(LU_ERR_SHAPE, "cast: %lld elements into %lld", (long long)n, (long long)lu_tensor_numel(y));
    return lu_cuda_convert(lu_tensor_data(y), y->dtype, lu_tensor_data(x), x->dtype, (size_t)n);
}

/* ---- accumulate ---- */

/* dst (ddt) += src (sdt): same dtype, or a bf16 gradient into an f32 one (lu_cast's backward). */
static __global__ void accumulate_kernel(void *dst, int ddt, const void *src, int sdt, int64_t n)
{
    LU_CUDA_FOR(i, n)
    {
        if (ddt == LU_F64) ((double *)dst)[i] += ((const double *)src)[i];
        else lu_dev_store(dst, ddt, i, lu_dev_load(dst, ddt, i) + lu_dev_load(src, sdt, i));
    }
}

/* The same (f32 or bf16 dst), eight elements a thread. */
static __global__ void accumulate_vec8_kernel(void *dst, int ddt, const void *src, int sdt, int64_t n)
{
    LU_CUDA_FOR(g, n / LU_VEC8)
    {
        float d[LU_VEC8], v[LU_VEC8];
        lu_dev_load8(dst, ddt, g * LU_VEC8, d);
        lu_dev_load8(src, sdt, g * LU_VEC8, v);
        for (int k = 0; k < LU_VEC8; k++) d[k] += v[k];
        lu_dev_store8(dst, ddt, g * LU_VEC8, d);
    }
}

static lu_status accumulate_forward(const lu_op_call *c)
{
    const lu_tensor *g = c->in[0];
    lu_tensor *d = c->out[0];
    int64_t n = lu_tensor_numel(g);
    bool bf16_into_f32 = g->dtype == LU_BF16 && d->dtype == LU_F32;
    if ((g->dtype != d->dtype && !bf16_into_f32) || n != lu_tensor_numel(d))
        return lu_errorf(LU_ERR_SHAPE, "accumulate: %s[%lld] into %s[%lld]", lu_dtype_name(g->dtype), (long long)n,
                         lu_dtype_name(d->dtype), (long long)lu_tensor_numel(d));
    if (!lu_cuda_is_float(g->dtype) && g->dtype != LU_F64)
        return lu_errorf(LU_ERR_DTYPE, "accumulate: dtype %s is not supported by the cuda backend (use f32, bf16 or f64)",
                         lu_dtype_name(g->dtype));
    if (n == 0) return LU_OK;
    const void *ptrs[2] = {lu_tensor_data(d), lu_tensor_data(g)};
    if (d->dtype != LU_F64 && lu_cuda_vec8_ok(n, ptrs, 2)) {
        accumulate_vec8_kernel<<<lu_cuda_blocks(n / LU_VEC8), LU_CUDA_THREADS>>>(lu_tensor_data(d), d->dtype,
                                                                                 lu_tensor_data(g), g->dtype, n);
        LU_CUDA_CHECK_LAUNCH();
        return LU_OK;
    }
    accumulate_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(lu_tensor_data(d), d->dtype, lu_tensor_data(g), g->dtype,
                                                              n);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

extern "C" void lu_cuda_register_layout(lu_backend *b)
{
    b->forward[LU_OP_CONTIGUOUS] = contiguous_forward;
    b->forward[LU_OP_CAST] = cast_forward;
    b->forward[LU_OP_ACCUMULATE] = accumulate_forward;
}
