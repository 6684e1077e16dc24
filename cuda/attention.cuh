/* attention.cuh - what the two files of the CUDA ATTENTION op share: the kernel arguments, dtype
 * loads and stores, the launch checks, and the entry points of the tensor-core path
 * (attention_mma.cu) that attention.cu calls for the cases it takes. */
#ifndef LU_CUDA_ATTENTION_CUH
#define LU_CUDA_ATTENTION_CUH

#include "attention_ranges.h"
#include "device.cuh"

typedef struct att_args {
    lu_att_ranges rg; /* Tq, Tk, causal, cu_seqlens */
    const void *q, *k, *v;
    const uint8_t *mask; /* [B, Tk], nonzero = ignore; or NULL */
    int dt, lse_dt;      /* dtype of q, k, v, o and the gradients; of lse */
    int64_t b, hq, hkv, d, dv;
    float scale;
} att_args;

static __device__ __forceinline__ float att_load(const void *p, int dt, int64_t i)
{
    if (dt == LU_BF16) return lu_dev_bf16_to_f32(((const uint16_t *)p)[i]);
    if (dt == LU_F16) return lu_dev_f16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

static __device__ __forceinline__ void att_store(void *p, int dt, int64_t i, float v)
{
    if (dt == LU_BF16) ((uint16_t *)p)[i] = lu_dev_f32_to_bf16(v);
    else if (dt == LU_F16) ((uint16_t *)p)[i] = lu_dev_f32_to_f16(v);
    else ((float *)p)[i] = v;
}

/* Blocks of a flattened grid, or an error when they exceed gridDim.x. */
static inline lu_status att_grid(int64_t blocks, const char *what, unsigned *grid)
{
    if (blocks > 0x7fffffff)
        return lu_errorf(LU_ERR_UNSUPPORTED, "attention: %s needs %lld blocks, more than a cuda grid holds", what,
                         (long long)blocks);
    *grid = (unsigned)blocks;
    return LU_OK;
}

/* Whether the device gives a block smem bytes of dynamic shared memory (past 48 KB, on request). */
static inline bool att_smem_fits(size_t smem)
{
    int dev = 0, max = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return smem <= (size_t)max;
}

/* Allows `kernel` smem bytes of dynamic shared memory (past 48 KB it must be asked for), or says
 * why the device cannot. */
static inline lu_status att_smem_allow(const void *kernel, size_t smem, const att_args *a)
{
    if (smem <= LU_CUDA_SMEM_DEFAULT) return LU_OK;
    int dev = 0, max = 0;
    LU_CUDA_CHECK(cudaGetDevice(&dev));
    LU_CUDA_CHECK(cudaDeviceGetAttribute(&max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem > (size_t)max)
        return lu_errorf(LU_ERR_UNSUPPORTED, "attention: head dims D = %lld, Dv = %lld need %zu bytes of shared memory, "
                         "the device gives a block %d", (long long)a->d, (long long)a->dv, smem, max);
    LU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    return LU_OK;
}

/* ---- the tensor-core path (attention_mma.cu) ---- */

/* Does the tensor-core path take this problem: bf16 or f16, D == Dv in {64, 128}, a positive
 * scale, f32 lse, lengths that fit an int, and q, k, v and the n other 16-bit operands in ptrs
 * (NULL ones skipped) 16-byte aligned for its vector copies? */
bool lu_att_mma_takes(const att_args *a, const void *const *ptrs, int n);
/* o [B,Tq,Hq,D] and lse [B,Hq,Tq], as the general forward without weights. */
lu_status lu_att_mma_forward(const att_args *a, void *o, void *lse);
/* dq, dk, dv (any may be NULL) from dO, o and lse, through Dsum = rowsum(dO * O) [B,Hq,Tq] (f32),
 * which it computes into dsum. */
/* lu_att_mma_forward's forward on Hopper's warpgroup MMA, where lu_att_wgmma_usable (cuda_backend.h). */
lu_status lu_att_wgmma_forward(const att_args *a, void *o, void *lse);
/* dk and dv (either may be NULL) of lu_att_mma_backward on Hopper's warpgroup MMA, from Dsum. */
lu_status lu_att_wgmma_dkdv(const att_args *a, const void *dO, const void *lse, const float *dsum, void *dk, void *dv);
/* dq of lu_att_mma_backward on Hopper's warpgroup MMA, from Dsum. */
lu_status lu_att_wgmma_dq(const att_args *a, const void *dO, const void *lse, const float *dsum, void *dq);
lu_status lu_att_mma_backward(const att_args *a, const void *dO, const void *o, const void *lse, float *dsum, void *dq,
                              void *dk, void *dv);

#endif
