/* cuda_backend.h - what the files of the CUDA backend share: the checking macros that turn a
 * failed CUDA or cuBLAS call into an lu_errorf naming file and line, the registration function
 * of each kernel file, and the device-side helpers (dtype loads/stores, strided layouts) that the
 * .cu files use. Included by C11 host files and by the .cu kernel files; core never includes it. */
#ifndef LU_CUDA_BACKEND_H
#define LU_CUDA_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "core/backend.h"

/* Records "FILE:LINE: EXPR failed: <cuda error string>" and returns LU_ERR_DEVICE
 * (LU_ERR_NOMEM for cudaErrorMemoryAllocation). */
lu_status lu_cuda_fail(cudaError_t err, const char *file, int line, const char *expr);
/* The same for a cuBLAS status (passed as int so that this header needs no cuBLAS). */
lu_status lu_cublas_fail(int status, const char *file, int line, const char *expr);
/* Loads cuBLAS and cuBLASLt the first time (cublas_load.c: they are not linked, their start-up
 * costs every process 140 ms); an error says which library could not be loaded and why. */
lu_status lu_cublas_load(void);
/* "cuBLAS 13.1.0 (/path/libcublas.so.13)", loading it, or why it cannot be loaded, into out. */
void lu_cublas_describe(char *out, size_t size);

/* Why lu_cuda_backend_init found no usable GPU ("" when it found one). */
const char *lu_cuda_unavailable_reason(void);

/* One per kernel file. */
void lu_cuda_register_layout(lu_backend *b);
void lu_cuda_register_matmul(lu_backend *b);
void lu_cuda_register_linear(lu_backend *b);
void lu_cuda_register_elementwise(lu_backend *b);
void lu_cuda_register_norm(lu_backend *b);
void lu_cuda_register_optim(lu_backend *b);
void lu_cuda_register_reduce(lu_backend *b);
void lu_cuda_register_loss(lu_backend *b);
void lu_cuda_register_ctc(lu_backend *b);
void lu_cuda_register_concat_gather(lu_backend *b);
void lu_cuda_register_attention(lu_backend *b);
void lu_cuda_register_conv(lu_backend *b);
void lu_cuda_register_batchnorm(lu_backend *b);
void lu_cuda_register_resample(lu_backend *b);
void lu_cuda_register_dropout(lu_backend *b);
void lu_cuda_register_rope(lu_backend *b);
void lu_cuda_register_embedding(lu_backend *b);
/* The NCCL communicator (nccl.c; nothing without NCCL). */
void lu_cuda_register_comm(lu_backend *b);
/* "NCCL 2.27.3", or what stands for it, into out. */
void lu_cuda_comm_describe(char *out, size_t size);
/* Makes GPU (index mod the number of GPUs) this process's device, before anything touches the
 * GPU (data-parallel runs: one GPU per process by local rank). */
lu_status lu_cuda_select_device(int index);

/* Launches an empty kernel and returns the launch's error (cudaErrorNoKernelImageForDevice: the
 * build has no code for this GPU), clearing it. */
cudaError_t lu_cuda_probe_launch(void);
/* The architectures this build holds code for ("sm_80,sm_90": CMAKE_CUDA_ARCHITECTURES). */
const char *lu_cuda_built_archs(void);

/* Fills n elements of dt at dst with the element whose bytes are `pattern` (dtype size bytes,
 * little-endian, as lu_dtype_convert writes it). */
lu_status lu_cuda_fill_pattern(void *dst, size_t elem_size, size_t n, uint64_t pattern);
/* Converts n contiguous device elements between dtypes, as lu_dtype_convert does on the host. */
lu_status lu_cuda_convert(void *dst, lu_dtype dst_dt, const void *src, lu_dtype src_dt, size_t n);
/* Row-major strided-batched products C_i = op(A_i) op(B_i) + beta C_i (matmul.c), m x n x k,
 * operand i at X + i*sX elements (a stride may be 0: one operand for all); ta/tb say A/B are
 * stored transposed. A and B are of dtype dt, C of c_dt (dt, or f32 for an fp32 accumulator). */
lu_status lu_cuda_gemm(lu_dtype dt, lu_dtype c_dt, int64_t batch, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                       const void *a, int64_t sa, const void *b, int64_t sb, float beta, void *c, int64_t sc);
/* GEMMs that LINEAR ran with a cuBLASLt epilogue (bias, bias gradient) in this process so far
 * (linear.c): tests and the benchmark tell by it whether the fused path ran. */
int64_t lu_cuda_linear_fused_gemms(void);
/* Whether ATTENTION's forward and backward go to the wgmma kernels (attention_wgmma.cu): a
 * compute capability 9 GPU, a build with sm_90a code, and LUTHIER_ATT_WGMMA not 0 (read at each
 * call). */
bool lu_att_wgmma_usable(void);

#ifdef __cplusplus
}
#endif

#define LU_CUDA_CHECK(expr)                                                    \
    do {                                                                       \
        cudaError_t lu_cuda_e_ = (expr);                                       \
        if (lu_cuda_e_ != cudaSuccess)                                         \
            return lu_cuda_fail(lu_cuda_e_, __FILE__, __LINE__, #expr);        \
    } while (0)

#define LU_CUBLAS_CHECK(expr)                                                  \
    do {                                                                       \
        int lu_cublas_s_ = (int)(expr);                                        \
        if (lu_cublas_s_ != 0)                                                 \
            return lu_cublas_fail(lu_cublas_s_, __FILE__, __LINE__, #expr);   \
    } while (0)

/* Checks the launch of the kernel just queued (bad configuration, no kernel image, ...). */
#define LU_CUDA_CHECK_LAUNCH() LU_CUDA_CHECK(cudaGetLastError())

#endif
