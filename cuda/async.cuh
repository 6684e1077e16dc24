/* async.cuh - asynchronous copies from global to shared memory (cp.async, sm_80), shared by the
 * depthwise convolution (conv.cu) and the attention kernels (attention_mma.cuh). A thread issues
 * copies, lu_cp_commit closes its group of them, lu_cp_wait<N> waits until at most N of its groups
 * are in flight; a block barrier after the wait shows the copies to the whole block. On the CPU
 * emulator (tests/cuda_emu) the same calls carry out the same instructions. */
#ifndef LU_CUDA_ASYNC_CUH
#define LU_CUDA_ASYNC_CUH

#include "device.cuh"

#ifdef LU_CUDA_EMU
static inline uint32_t lu_saddr(const void *p) { return lu_emu::shared_address(p); }
template <int BYTES> static inline void lu_cp_async(void *dst, const void *src)
{
    lu_emu::cp_async(dst, src, BYTES, true);
}
template <int BYTES> static inline void lu_cp_async_zfill(void *dst, const void *src, bool in)
{
    lu_emu::cp_async(dst, src, BYTES, in);
}
static inline void lu_cp_commit() { lu_emu::cp_async_commit(); }
template <int N> static inline void lu_cp_wait() { lu_emu::cp_async_wait(N); }
#else
/* The shared-memory address of p, a pointer into shared memory, as PTX's shared state space has it. */
static __device__ __forceinline__ uint32_t lu_saddr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* BYTES = 4, 8 or 16 bytes from src (global) to dst (shared), both aligned to BYTES. */
template <int BYTES> static __device__ __forceinline__ void lu_cp_async(void *dst, const void *src)
{
    if (BYTES == 16) /* .cg: around L1, which only 16-byte copies may take */
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(lu_saddr(dst)), "l"(src));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(lu_saddr(dst)), "l"(src), "n"(BYTES));
}

/* The same where in, else BYTES zero bytes to dst; src is then not read (but is still formed as an
 * address: pass one that is valid). */
template <int BYTES> static __device__ __forceinline__ void lu_cp_async_zfill(void *dst, const void *src, bool in)
{
    if (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(lu_saddr(dst)), "l"(src),
                     "r"(in ? 16 : 0));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(lu_saddr(dst)), "l"(src), "n"(BYTES),
                     "r"(in ? BYTES : 0));
}

static __device__ __forceinline__ void lu_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N> static __device__ __forceinline__ void lu_cp_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

#endif
