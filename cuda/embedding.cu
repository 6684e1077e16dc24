/* embedding.cu - CUDA kernels of EMBEDDING (core/cpu/index.c is the reference): the forward
 * gathers rows of weight [V, D] by ids (i32 or i64, any shape), moving elements of any dtype as
 * the CPU does, and reports the first id outside [0, V) by position; the backward adds the dy rows
 * of each id into its dweight row, f32 or bf16 with fp32 sums.
 *
 * The backward is deterministic without float atomics: (id, position) pairs are sorted by id with
 * CUB's radix sort, which is stable, so each id's positions stay in increasing order; then for
 * each run of equal ids one thread per column adds the run's dy rows in that order - the CPU's
 * order, so f32 results are the CPU's bit for bit. A very frequent id (a padding id) makes a long
 * serial run; fine for the batch sizes of training, a two-level split if that ever shows. */
#include <limits.h>

#include <cub/device/device_radix_sort.cuh>

#include "device.cuh"

static __device__ __forceinline__ int64_t id_at(const void *ids, bool ids64, int64_t i)
{
    return ids64 ? ((const int64_t *)ids)[i] : ((const int32_t *)ids)[i];
}

static __device__ __forceinline__ void copy_elem(int es, void *dst, int64_t di, const void *src, int64_t si)
{
    switch (es) {
    case 1: ((uint8_t *)dst)[di] = ((const uint8_t *)src)[si]; break;
    case 2: ((uint16_t *)dst)[di] = ((const uint16_t *)src)[si]; break;
    case 4: ((uint32_t *)dst)[di] = ((const uint32_t *)src)[si]; break;
    default: ((uint64_t *)dst)[di] = ((const uint64_t *)src)[si]; break;
    }
}

/* y[i, k] = w[ids[i], k]; an id outside [0, V) leaves its row unwritten and lowers *first_bad to
 * its position (an integer minimum: the same answer in any order). */
static __global__ void embedding_forward_kernel(int es, const void *w, const void *ids, bool ids64, void *y, int64_t n,
                                                int64_t V, int64_t D, unsigned long long *first_bad)
{
    const int64_t Dm = D > 0 ? D : 1; /* D == 0 still checks the ids */
    LU_CUDA_FOR(idx, n * Dm)
    {
        int64_t i = idx / Dm, k = idx % Dm, v = id_at(ids, ids64, i);
        if (v >= 0 && v < V) {
            if (D > 0) copy_elem(es, y, idx, w, v * D + k);
        } else if (k == 0) {
            atomicMin(first_bad, (unsigned long long)i);
        }
    }
}

/* Sort keys: the id, or V for an id outside [0, V) (skipped); values: positions. */
static __global__ void embedding_keys_kernel(const void *ids, bool ids64, uint32_t *keys, int32_t *pos, int64_t n,
                                             int64_t V)
{
    LU_CUDA_FOR(i, n)
    {
        int64_t v = id_at(ids, ids64, i);
        keys[i] = v >= 0 && v < V ? (uint32_t)v : (uint32_t)V;
        pos[i] = (int32_t)i;
    }
}

/* The thread of column k at the first position j of a run of id v writes
 * dw[v, k] = sum over the run, in position order, of dy[pos, k]. */
static __global__ void embedding_sum_kernel(int dt, const void *dy, const uint32_t *keys, const int32_t *pos, void *dw,
                                            int64_t n, int64_t V, int64_t D)
{
    LU_CUDA_FOR(idx, n * D)
    {
        int64_t j = idx / D, k = idx % D;
        uint32_t v = keys[j];
        if (v >= V || (j > 0 && keys[j - 1] == v)) continue;
        float acc = 0.0f;
        for (int64_t r = j; r < n && keys[r] == v; r++) acc += lu_dev_load(dy, dt, (int64_t)pos[r] * D + k);
        lu_dev_store(dw, dt, (int64_t)v * D + k, acc);
    }
}

static lu_status embedding_shapes(const lu_tensor *w, const lu_tensor *ids, const lu_tensor *y)
{
    if (w->ndim != 2 || (ids->dtype != LU_I32 && ids->dtype != LU_I64) || !y ||
        lu_tensor_numel(y) != lu_tensor_numel(ids) * w->shape[1]) {
        char sw[LU_SHAPE_STR_MAX], si[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "embedding: weight %s, ids %s %s and y do not fit [V, D], i32/i64 [S..], "
                         "[S.., D]", lu_shape_str(w, sw, sizeof sw), lu_shape_str(ids, si, sizeof si),
                         lu_dtype_name(ids->dtype));
    }
    return LU_OK;
}

/* in = [weight, ids], out = [y]. */
static lu_status embedding_forward(const lu_op_call *c)
{
    const lu_tensor *w = c->in[0], *ids = c->in[1];
    lu_tensor *y = c->out[0];
    LU_TRY(embedding_shapes(w, ids, y));
    if (y->dtype != w->dtype)
        return lu_errorf(LU_ERR_DTYPE, "embedding: weight is %s, y %s", lu_dtype_name(w->dtype),
                         lu_dtype_name(y->dtype));
    int64_t n = lu_tensor_numel(ids), V = w->shape[0], D = w->shape[1];
    if (n == 0) return LU_OK;
    void *bad;
    LU_TRY(lu_cuda_scratch_alloc(&bad, sizeof(unsigned long long)));
    unsigned long long first = ULLONG_MAX;
    cudaError_t e = cudaMemsetAsync(bad, 0xff, sizeof first, 0);
    if (e == cudaSuccess) {
        embedding_forward_kernel<<<lu_cuda_blocks(n * (D > 0 ? D : 1)), LU_CUDA_THREADS>>>(
            (int)lu_dtype_size(w->dtype), lu_tensor_data(w), lu_tensor_data(ids), ids->dtype == LU_I64,
            lu_tensor_data(y), n, V, D, (unsigned long long *)bad);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaMemcpy(&first, bad, sizeof first, cudaMemcpyDeviceToHost);
    lu_cuda_scratch_free(bad);
    if (e != cudaSuccess) return lu_cuda_fail(e, __FILE__, __LINE__, "embedding forward");
    if (first != ULLONG_MAX) {
        int64_t v = 0;
        LU_TRY(lu_cuda_index_at(ids, (int64_t)first, &v));
        return lu_errorf(LU_ERR_INVALID, "embedding: id %lld at position %lld is outside [0, %lld)", (long long)v,
                         (long long)first, (long long)V);
    }
    return LU_OK;
}

/* Sorts (id, position) pairs by id and adds up each id's rows. */
static lu_status embedding_grad(lu_dtype dt, const lu_tensor *dy, const lu_tensor *ids, lu_tensor *dw)
{
    int64_t n = lu_tensor_numel(ids), V = dw->shape[0], D = dw->shape[1];
    int end_bit = 1;
    while (end_bit < 32 && ((uint64_t)1 << end_bit) <= (uint64_t)V) end_bit++; /* keys are <= V */
    size_t temp_bytes = 0;
    LU_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const uint32_t *)NULL, (uint32_t *)NULL,
                                                  (const int32_t *)NULL, (int32_t *)NULL, (int)n, 0, end_bit, 0));
    /* keys in, keys out, positions in, positions out, CUB's temporary storage; 256-byte aligned. */
    size_t slot = ((size_t)n * 4 + 255) / 256 * 256;
    void *buf;
    LU_TRY(lu_cuda_scratch_alloc(&buf, 4 * slot + temp_bytes));
    char *b = (char *)buf;
    uint32_t *keys_in = (uint32_t *)b, *keys_out = (uint32_t *)(b + slot);
    int32_t *pos_in = (int32_t *)(b + 2 * slot), *pos_out = (int32_t *)(b + 3 * slot);
    embedding_keys_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(lu_tensor_data(ids), ids->dtype == LU_I64, keys_in,
                                                                  pos_in, n, V);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        e = cub::DeviceRadixSort::SortPairs(b + 4 * slot, temp_bytes, keys_in, keys_out, pos_in, pos_out, (int)n, 0,
                                            end_bit, 0);
    if (e == cudaSuccess) e = cudaMemsetAsync(lu_tensor_data(dw), 0, lu_tensor_nbytes(dw), 0);
    if (e == cudaSuccess) {
        embedding_sum_kernel<<<lu_cuda_blocks(n * D), LU_CUDA_THREADS>>>(dt, lu_tensor_data(dy), keys_out, pos_out,
                                                                        lu_tensor_data(dw), n, V, D);
        e = cudaGetLastError();
    }
    lu_cuda_scratch_free(buf);
    if (e != cudaSuccess) return lu_cuda_fail(e, __FILE__, __LINE__, "embedding backward");
    return LU_OK;
}

/* in = [dy, weight, ids, y], out = [dweight, -]. */
static lu_status embedding_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *w = c->in[1], *ids = c->in[2];
    lu_tensor *dw = c->out[0];
    if (!dw) return LU_OK;
    const lu_tensor *ts[3] = {dy, w, dw};
    LU_TRY(lu_cuda_check_float(c, ts, 3, w->dtype));
    if (!lu_tensor_same_shape(dw, w))
        return lu_errorf(LU_ERR_SHAPE, "embedding backward: dweight does not have weight's shape");
    if (dy) LU_TRY(embedding_shapes(w, ids, dy));
    int64_t n = lu_tensor_numel(ids);
    if (n > INT_MAX || w->shape[0] >= UINT32_MAX)
        return lu_errorf(LU_ERR_UNSUPPORTED, "embedding backward: %lld ids or %lld rows exceed the cuda kernel's range",
                         (long long)n, (long long)w->shape[0]);
    if (!dy || n == 0 || w->shape[1] == 0) {
        LU_TRY(lu_cuda_zero(dw));
        return LU_OK;
    }
    return embedding_grad(w->dtype, dy, ids, dw);
}

extern "C" void lu_cuda_register_embedding(lu_backend *b)
{
    b->forward[LU_OP_EMBEDDING] = embedding_forward;
    b->backward[LU_OP_EMBEDDING] = embedding_backward;
}
