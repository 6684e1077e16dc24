/* concat_gather.cu - CUDA kernels that assemble tensors: CONCAT along any dim (moves elements of
 * any dtype) and GATHER (torch.gather, f32 and bf16), forward and backward (core/cpu/index.c is
 * the reference). The gather backward scatter-adds without atomics: one thread per line of the
 * index (all elements sharing every coordinate but `dim`), adding in index order as the CPU
 * does, so gradients depend only on the inputs. */
#include "device.cuh"

/* ---- concat ---- */

/* Element i of a part [outer, len] sits at y[o * yrow + at + r] with o = i / len, r = i % len.
 * to_y copies the part into y; otherwise y's slice is copied into the part. */
static __global__ void concat_kernel(char *part, char *y, int es, int64_t n, int64_t len, int64_t yrow, int64_t at,
                                     bool to_y)
{
    LU_CUDA_FOR(i, n)
    {
        int64_t yi = (i / len) * yrow + at + i % len;
        int64_t src = to_y ? i : yi, dst = to_y ? yi : i;
        const char *s = to_y ? part : y;
        char *d = to_y ? y : part;
        switch (es) {
        case 1: ((uint8_t *)d)[dst] = ((const uint8_t *)s)[src]; break;
        case 2: ((uint16_t *)d)[dst] = ((const uint16_t *)s)[src]; break;
        case 4: ((uint32_t *)d)[dst] = ((const uint32_t *)s)[src]; break;
        default: ((uint64_t *)d)[dst] = ((const uint64_t *)s)[src]; break;
        }
    }
}

/* Copies the parts into y (to_y) or y into the parts (NULL parts skipped); parts[k] has
 * sizes[k] along dim and y's extent elsewhere. */
static lu_status concat_copy(char *const *parts, const int64_t *sizes, int n, lu_tensor *y, int dim, bool to_y)
{
    int64_t outer = 1, inner = 1, total = 0;
    for (int i = 0; i < dim; i++) outer *= y->shape[i];
    for (int i = dim + 1; i < y->ndim; i++) inner *= y->shape[i];
    for (int k = 0; k < n; k++) total += sizes[k];
    if (total != y->shape[dim])
        return lu_errorf(LU_ERR_SHAPE, "concat: the parts add up to %lld along dim %d, the output has %lld",
                         (long long)total, dim, (long long)y->shape[dim]);
    int es = (int)lu_dtype_size(y->dtype);
    int64_t yrow = y->shape[dim] * inner, at = 0;
    for (int k = 0; k < n; k++) {
        int64_t len = sizes[k] * inner, count = outer * len;
        if (parts[k] && count > 0) {
            concat_kernel<<<lu_cuda_blocks(count), LU_CUDA_THREADS>>>(parts[k], (char *)lu_tensor_data(y), es, count,
                                                                      len, yrow, at, to_y);
            LU_CUDA_CHECK_LAUNCH();
        }
        at += len;
    }
    return LU_OK;
}

/* in = [x_0 .. x_{n-1}], out = [y]. */
static lu_status concat_forward(const lu_op_call *c)
{
    const lu_dim_params *p = (const lu_dim_params *)c->params;
    char *parts[LU_MAX_IO];
    int64_t sizes[LU_MAX_IO];
    for (int k = 0; k < c->n_in; k++) {
        if (c->in[k]->dtype != c->out[0]->dtype)
            return lu_errorf(LU_ERR_DTYPE, "concat: tensor %d is %s, the output %s", k, lu_dtype_name(c->in[k]->dtype),
                             lu_dtype_name(c->out[0]->dtype));
        parts[k] = (char *)lu_tensor_data(c->in[k]);
        sizes[k] = c->in[k]->shape[p->dim];
    }
    return concat_copy(parts, sizes, c->n_in, c->out[0], p->dim, true);
}

/* in = [dy, x_0 .. x_{n-1}, y], out = [dx_0 .. dx_{n-1}]: dy split along dim. */
static lu_status concat_backward(const lu_op_call *c)
{
    const lu_dim_params *p = (const lu_dim_params *)c->params;
    char *parts[LU_MAX_IO];
    int64_t sizes[LU_MAX_IO];
    for (int k = 0; k < c->n_out; k++) {
        parts[k] = c->out[k] ? (char *)lu_tensor_data(c->out[k]) : NULL;
        sizes[k] = c->in[1 + k]->shape[p->dim];
    }
    if (!c->in[0]) {
        for (int k = 0; k < c->n_out; k++)
            if (c->out[k] && lu_tensor_nbytes(c->out[k]))
                LU_CUDA_CHECK(cudaMemsetAsync(parts[k], 0, lu_tensor_nbytes(c->out[k]), 0));
        return LU_OK;
    }
    return concat_copy(parts, sizes, c->n_out, c->in[0], p->dim, false);
}

/* ---- gather ---- */

static __device__ __forceinline__ int64_t load_index(const void *p, bool i64, int64_t i)
{
    return i64 ? ((const int64_t *)p)[i] : ((const int32_t *)p)[i];
}

/* y[i] = x[.., index[i], ..]: `xl` is the index's shape with x's strides, so its offset of i
 * holds the index's own coordinate along dim, swapped for index[i]. An index outside [0, hi)
 * records the smallest such position in *bad and writes 0. */
static __global__ void gather_forward_kernel(int dt, const void *x, const void *index, bool i64, void *y, int64_t n,
                                             lu_cuda_layout xl, int dim, int64_t index_stride, int64_t hi,
                                             unsigned long long *bad)
{
    LU_CUDA_FOR(i, n)
    {
        int64_t v = load_index(index, i64, i), own = (i / index_stride) % xl.shape[dim];
        if (v < 0 || v >= hi) {
            atomicMin(bad, (unsigned long long)i);
            lu_dev_store(y, dt, i, 0.0f);
            continue;
        }
        lu_dev_store(y, dt, i, lu_dev_load(x, dt, lu_dev_offset(&xl, i) + (v - own) * xl.stride[dim]));
    }
}

/* One thread per line l: xl / il have the index's shape with extent 1 along dim and x's / the
 * index's strides, so their offsets of l are the line's starts. acc (zeroed, f32, x's shape)
 * gets dy[line, j] added at x[line, index[line, j]] for j in order. */
static __global__ void gather_backward_kernel(int dt, const void *dy, const void *index, bool i64, float *acc,
                                              int64_t lines, int64_t m, lu_cuda_layout xl, lu_cuda_layout il, int dim,
                                              int64_t hi)
{
    LU_CUDA_FOR(l, lines)
    {
        int64_t xo = lu_dev_offset(&xl, l), io = lu_dev_offset(&il, l), xs = xl.stride[dim], is = il.stride[dim];
        for (int64_t j = 0; j < m; j++) {
            int64_t v = load_index(index, i64, io + j * is);
            if (v >= 0 && v < hi) acc[xo + v * xs] += lu_dev_load(dy, dt, io + j * is);
        }
    }
}

static lu_status check_gather(const lu_op_call *c, const lu_tensor *x, const lu_tensor *index, const lu_tensor *y)
{
    const lu_dim_params *p = (const lu_dim_params *)c->params;
    if (index->dtype != LU_I32 && index->dtype != LU_I64)
        return lu_errorf(LU_ERR_DTYPE, "gather: index must be i32 or i64, got %s", lu_dtype_name(index->dtype));
    bool ok = index->ndim == x->ndim && p->dim >= 0 && p->dim < x->ndim && lu_tensor_same_shape(index, y);
    for (int k = 0; ok && k < x->ndim; k++) ok = k == p->dim || index->shape[k] <= x->shape[k];
    if (!ok) {
        char sx[LU_SHAPE_STR_MAX], si[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "gather: x %s and index %s do not fit along dim %d", lu_shape_str(x, sx, sizeof sx),
                         lu_shape_str(index, si, sizeof si), p->dim);
    }
    return LU_OK;
}

/* The index's shape with the given strides (x's or the index's own); along dim, extent 1 when
 * `line` (a layout of lines) and the index's extent otherwise. */
static lu_cuda_layout gather_layout(const lu_tensor *index, const lu_tensor *strides, int dim, bool line)
{
    lu_cuda_layout l = lu_cuda_layout_of(index);
    for (int k = 0; k < index->ndim; k++) l.stride[k] = strides->stride[k];
    if (line) l.shape[dim] = 1;
    return l;
}

/* in = [x, index], out = [y]. */
static lu_status gather_forward(const lu_op_call *c)
{
    const lu_dim_params *p = (const lu_dim_params *)c->params;
    const lu_tensor *x = c->in[0], *index = c->in[1];
    lu_tensor *y = c->out[0];
    const lu_tensor *ts[2] = {x, y};
    LU_TRY(lu_cuda_check_float(c, ts, 2, x->dtype));
    LU_TRY(check_gather(c, x, index, y));
    int64_t n = lu_tensor_numel(index), hi = x->shape[p->dim];
    if (n == 0) return LU_OK;
    unsigned long long *bad, found;
    LU_TRY(lu_cuda_scratch_alloc((void **)&bad, sizeof *bad));
    LU_CUDA_CHECK(cudaMemsetAsync(bad, 0xff, sizeof *bad, 0));
    gather_forward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
        x->dtype, lu_tensor_data(x), lu_tensor_data(index), index->dtype == LU_I64, lu_tensor_data(y), n,
        gather_layout(index, x, p->dim, false), p->dim, index->stride[p->dim], hi, bad);
    LU_CUDA_CHECK_LAUNCH();
    LU_CUDA_CHECK(cudaMemcpy(&found, bad, sizeof found, cudaMemcpyDeviceToHost));
    lu_cuda_scratch_free(bad);
    if (found != ~0ULL) {
        int64_t v = 0;
        LU_TRY(lu_cuda_index_at(index, (int64_t)found, &v));
        return lu_errorf(LU_ERR_INVALID, "gather: index %lld at position %lld is outside [0, %lld)", (long long)v,
                         (long long)found, (long long)hi);
    }
    return LU_OK;
}

/* in = [dy, x, index, y], out = [dx, -]: dy scatter-added into zeros. */
static lu_status gather_backward(const lu_op_call *c)
{
    const lu_dim_params *p = (const lu_dim_params *)c->params;
    const lu_tensor *dy = c->in[0], *x = c->in[1], *index = c->in[2];
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    const lu_tensor *ts[3] = {dy, x, dx};
    LU_TRY(lu_cuda_check_float(c, ts, 3, x->dtype));
    LU_TRY(check_gather(c, x, index, dy ? dy : index));
    int64_t n = lu_tensor_numel(index), m = index->shape[p->dim], nx = lu_tensor_numel(x);
    if (nx == 0) return LU_OK;
    LU_TRY(lu_cuda_zero(dx));
    if (!dy || n == 0) return LU_OK;
    /* f32 gradients accumulate in place; bf16 ones in an f32 copy converted at the end. */
    float *acc = (float *)lu_tensor_data(dx);
    if (dx->dtype != LU_F32) {
        LU_TRY(lu_cuda_scratch_alloc((void **)&acc, (size_t)nx * sizeof *acc));
        LU_CUDA_CHECK(cudaMemsetAsync(acc, 0, (size_t)nx * sizeof *acc, 0));
    }
    gather_backward_kernel<<<lu_cuda_blocks(n / m), LU_CUDA_THREADS>>>(
        x->dtype, lu_tensor_data(dy), lu_tensor_data(index), index->dtype == LU_I64, acc, n / m, m,
        gather_layout(index, x, p->dim, true), gather_layout(index, index, p->dim, true), p->dim, x->shape[p->dim]);
    LU_CUDA_CHECK_LAUNCH();
    if (dx->dtype != LU_F32) {
        LU_TRY(lu_cuda_convert(lu_tensor_data(dx), dx->dtype, acc, LU_F32, (size_t)nx));
        lu_cuda_scratch_free(acc);
    }
    return LU_OK;
}

extern "C" void lu_cuda_register_concat_gather(lu_backend *b)
{
    b->forward[LU_OP_CONCAT] = concat_forward;
    b->backward[LU_OP_CONCAT] = concat_backward;
    b->forward[LU_OP_GATHER] = gather_forward;
    b->backward[LU_OP_GATHER] = gather_backward;
}
