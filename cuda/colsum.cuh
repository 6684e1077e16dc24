/* colsum.cuh - stage 2 of the two-stage reductions of norm.cu and reduce.cu: stage 1 leaves
 * part[c * n + j], chunk c's partial sum of output j; this adds the chunks up per output in a
 * fixed order (so the result depends only on the shape: no atomics). */
#ifndef LU_CUDA_COLSUM_CUH
#define LU_CUDA_COLSUM_CUH

#include "device.cuh"

/* The block: 32 outputs wide, LU_COLSUM_Y threads high. */
#define LU_COLSUM_Y 32

/* y[j] = scale * sum over c < chunks of part[c * n + j], for j < n. Thread (x, y) of a block sums
 * chunks y, y + LU_COLSUM_Y, ... of output 32 * block + x in order, then the output's
 * LU_COLSUM_Y partial sums add up in y order: a fixed order with LU_COLSUM_Y loads in flight per
 * output, where one thread walking every chunk (thousands, for a sum over everything or a
 * norm's weight gradient over B*T rows) waits on each load in turn. */
static __global__ void __launch_bounds__(LU_CUDA_WARP * LU_COLSUM_Y)
    lu_colsum_kernel(int dt, const float *part, int64_t n, int64_t chunks, float scale, void *y)
{
    __shared__ float acc[LU_COLSUM_Y][LU_CUDA_WARP + 1];
    int64_t j = (int64_t)blockIdx.x * LU_CUDA_WARP + threadIdx.x;
    float s = 0.0f;
    if (j < n)
        for (int64_t c = threadIdx.y; c < chunks; c += LU_COLSUM_Y) s += part[c * n + j];
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < n) {
        float t = 0.0f;
        for (int k = 0; k < LU_COLSUM_Y; k++) t += acc[k][threadIdx.x];
        lu_dev_store(y, dt, j, t * scale);
    }
}

/* lu_colsum_kernel's grid for n outputs (n < 2^31 * 32) and block. */
static inline unsigned lu_colsum_grid(int64_t n) { return (unsigned)((n + LU_CUDA_WARP - 1) / LU_CUDA_WARP); }
#define LU_COLSUM_BLOCK dim3(LU_CUDA_WARP, LU_COLSUM_Y)

#endif
