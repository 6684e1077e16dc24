/* lu_emu_device.h - the device side of CUDA C++ for the CPU emulator only (README.md beside):
 * included first in every kernel file of an emulated build (transform.py turns `k<<<g, b, s>>>(..)`
 * into `lu_emu::launch("k", k, g, b, s)(..)`). Kernels are plain C++ functions; each CUDA thread
 * runs them on a fiber of its own, one block at a time on the calling host thread, so __shared__
 * variables are function statics, atomics are plain read-modify-writes, and barriers, warp
 * collectives (shuffles, votes, ldmatrix, mma.sync) and cp.async are calls into emu.cpp, which
 * switches fibers until every thread taking part has arrived. */
#ifndef LU_EMU_DEVICE_H
#define LU_EMU_DEVICE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
/* One block runs at a time, so a function static is the block's shared memory. */
#define __shared__ static
/* The race checker's build (LU_EMU_RACECHECK, emu.cpp) does not see the accesses of a function
 * marked so. */
#if defined(LU_EMU_RACECHECK)
#define LU_EMU_UNCHECKED __attribute__((no_sanitize_thread, noinline))
#else
#define LU_EMU_UNCHECKED
#endif
#define __constant__ static

/* The vector types luthier's kernels use, with the GPU's alignment. */
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned int x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned int x, y, z, w;
};
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
static inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w)
{
    return uint4{x, y, z, w};
}

namespace lu_emu {

extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;

/* Runs body(arg) as every thread of the launch; a bad configuration becomes the runtime's last
 * error (as a failed launch does), a fault in a kernel aborts naming the kernel, block and thread. */
void run_kernel(const char *name, const void *fn, dim3 grid, dim3 block, size_t smem, void (*body)(void *), void *arg);
void *dynamic_smem(void);

enum block_op { SYNC_PLAIN, SYNC_AND, SYNC_OR, SYNC_COUNT };
int block_sync(int op, int pred);

enum warp_op {
    W_SHFL_XOR, W_SHFL_DOWN, W_SHFL_UP, W_SHFL_IDX, W_ANY, W_ALL, W_BALLOT, W_SYNCWARP,
    W_LDSM, W_LDSM_T, W_MMA_BF16, W_MMA_F16, W_WGMMA_BF16, W_WGMMA_F16 /* the last two: a warpgroup's */
};
/* What a lane brings to a warp collective and what it gets back. */
struct warp_req {
    int op;
    unsigned mask;
    int arg, width;
    uint64_t value;
    const void *ptr;
    uint32_t a[4], b[2];
    float c[4];
    uint64_t out;
    uint32_t r[4];
    float d[4];
    /* wgmma: the thread's accumulator (n / 2 floats), A from a[] or desc_a, B from desc_b */
    float *acc;
    int n;
    uint64_t desc_a, desc_b;
    bool a_regs, scale_d, trans_b;
};
/* Posts this lane's request and waits for the warp; the results are in *req on return. */
void warp_collective(warp_req *req);

/* Kernel arguments that are pointers must be NULL or point into (or just past) a cudaMalloc
 * allocation: a host pointer would fault on the GPU, here it aborts naming kernel and argument. */
bool device_pointer(const void *p);
[[noreturn]] void bad_pointer_argument(const char *kernel, int index, const void *p);

template <class T> static inline void check_argument(const char *kernel, int index, const T &v)
{
    if constexpr (std::is_pointer_v<T>)
        if (v && !device_pointer((const void *)v)) bad_pointer_argument(kernel, index, (const void *)v);
}

template <class Tuple, size_t... I>
static inline void check_arguments(const char *kernel, const Tuple &t, std::index_sequence<I...>)
{
    (check_argument(kernel, (int)I, std::get<I>(t)), ...);
}

/* cp.async of 4, 8 or 16 bytes, or as many zero bytes where !in; lands by the wait_group that
 * covers it (emu.cpp: at it, or at once on odd scheduler rounds). */
void cp_async(void *dst, const void *src, int bytes, bool in);
void cp_async_commit(void);
void cp_async_wait(int groups_left);

template <class... P> struct launcher {
    const char *name;
    void (*fn)(P...);
    dim3 grid, block;
    size_t smem;

    template <class... A> void operator()(A &&...a) const
    {
        /* The arguments converted to the parameters' types, as a call converts them; every
         * thread gets its own copy, as every CUDA thread sees its own parameters. */
        struct ctx {
            void (*fn)(P...);
            const std::tuple<P...> *args;
        };
        const std::tuple<P...> args(std::forward<A>(a)...);
        check_arguments(name, args, std::index_sequence_for<P...>{});
        ctx c = {fn, &args};
        run_kernel(name, reinterpret_cast<const void *>(fn), grid, block, smem,
                   [](void *p) {
                       const ctx *k = (const ctx *)p;
                       std::tuple<P...> mine = *k->args;
                       std::apply(k->fn, std::move(mine));
                   },
                   &c);
    }
};

template <class... P>
launcher<P...> launch(const char *name, void (*fn)(P...), dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = 0)
{
    return launcher<P...>{name, fn, grid, block, smem};
}

/* A kernel template launched with its arguments deduced from the call (transform.py wraps the
 * name in a generic lambda): the arguments are kept as given and converted at each thread's call.
 * Its address is unknown, so its dynamic shared memory is checked against the opt-in maximum. */
template <class F> struct deduced_launcher {
    const char *name;
    F f;
    dim3 grid, block;
    size_t smem;

    template <class... A> void operator()(A &&...a) const
    {
        struct ctx {
            const F *f;
            const std::tuple<std::decay_t<A>...> *args;
        };
        const std::tuple<std::decay_t<A>...> args(std::forward<A>(a)...);
        check_arguments(name, args, std::index_sequence_for<A...>{});
        ctx c = {&f, &args};
        run_kernel(name, NULL, grid, block, smem,
                   [](void *p) {
                       const ctx *k = (const ctx *)p;
                       std::tuple<std::decay_t<A>...> mine = *k->args;
                       std::apply(*k->f, std::move(mine));
                   },
                   &c);
    }
};

template <class F>
deduced_launcher<F> launch(const char *name, F f, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = 0)
{
    return deduced_launcher<F>{name, f, grid, block, smem};
}

template <class T> static inline uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}

template <class T> static inline T from_bits(uint64_t b)
{
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}

template <class T> static inline T shuffle(int op, unsigned mask, T v, int arg, int width)
{
    warp_req r = {};
    r.op = op;
    r.mask = mask;
    r.arg = arg;
    r.width = width;
    r.value = to_bits(v);
    warp_collective(&r);
    return from_bits<T>(r.out);
}

static inline uint64_t vote(int op, unsigned mask, int pred)
{
    warp_req r = {};
    r.op = op;
    r.mask = mask;
    r.value = pred != 0;
    warp_collective(&r);
    return r.out;
}

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 and mma.sync.aligned.m16n8k16.row.col.f32
 * with bf16 or f16 operands, for kernels that use them through wrappers (attention_mma.cu). */
static inline void ldmatrix_x4(uint32_t r[4], const void *row, bool trans)
{
    warp_req q = {};
    q.op = trans ? W_LDSM_T : W_LDSM;
    q.mask = 0xffffffffu;
    q.ptr = row;
    warp_collective(&q);
    memcpy(r, q.r, sizeof q.r);
}

static inline void mma_m16n8k16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1, bool bf16)
{
    warp_req q = {};
    q.op = bf16 ? W_MMA_BF16 : W_MMA_F16;
    q.mask = 0xffffffffu;
    memcpy(q.a, a, sizeof q.a);
    q.b[0] = b0;
    q.b[1] = b1;
    memcpy(q.c, c, sizeof q.c);
    warp_collective(&q);
    memcpy(c, q.d, sizeof q.d);
}

/* wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16} (sm_90a), for kernels that use it
 * through wrappers (attention_wgmma.cu). The 128 threads of a warpgroup join: D (64 x n) =
 * A (64 x 16) B (16 x n) + (scale_d ? D : 0), where A comes from each warp's registers a (16 rows
 * a warp, in mma.sync's A layout) or from the shared-memory matrix descriptor desc_a (K-major), B
 * from desc_b (K-major, or N-major where trans_b), and each thread's n / 2 accumulators acc[] are
 * laid out as n / 8 mma.sync accumulators of its warp's 16 rows. The results land at the
 * wgmma.wait_group that covers the commit group (emu.cpp: at it, or at once on odd rounds). */
void wgmma(float *acc, int n, const uint32_t a[4], uint64_t desc_a, uint64_t desc_b, bool scale_d, bool trans_b,
           bool bf16);
void wgmma_commit(void);
void wgmma_wait(int groups_left);
/* The shared-memory address of p (in the block's dynamic shared memory), as a descriptor holds it. */
uint32_t shared_address(const void *p);

} /* namespace lu_emu */

#define threadIdx (::lu_emu::thread_idx)
#define blockIdx (::lu_emu::block_idx)
#define blockDim (::lu_emu::block_dim)
#define gridDim (::lu_emu::grid_dim)
static constexpr int warpSize = 32;

static inline void __syncthreads(void) { lu_emu::block_sync(lu_emu::SYNC_PLAIN, 1); }
static inline int __syncthreads_and(int p) { return lu_emu::block_sync(lu_emu::SYNC_AND, p); }
static inline int __syncthreads_or(int p) { return lu_emu::block_sync(lu_emu::SYNC_OR, p); }
static inline int __syncthreads_count(int p) { return lu_emu::block_sync(lu_emu::SYNC_COUNT, p); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { lu_emu::vote(lu_emu::W_SYNCWARP, mask, 1); }
/* Fibers switch only at barriers and collectives: memory is ordered already. */
static inline void __threadfence(void) {}
static inline void __threadfence_block(void) {}

template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    return lu_emu::shuffle(lu_emu::W_SHFL_XOR, mask, v, lane_mask, width);
}
template <class T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    return lu_emu::shuffle(lu_emu::W_SHFL_DOWN, mask, v, (int)delta, width);
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    return lu_emu::shuffle(lu_emu::W_SHFL_UP, mask, v, (int)delta, width);
}
template <class T> static inline T __shfl_sync(unsigned mask, T v, int lane, int width = 32)
{
    return lu_emu::shuffle(lu_emu::W_SHFL_IDX, mask, v, lane, width);
}
static inline int __any_sync(unsigned mask, int p) { return (int)lu_emu::vote(lu_emu::W_ANY, mask, p); }
static inline int __all_sync(unsigned mask, int p) { return (int)lu_emu::vote(lu_emu::W_ALL, mask, p); }
static inline unsigned __ballot_sync(unsigned mask, int p) { return (unsigned)lu_emu::vote(lu_emu::W_BALLOT, mask, p); }

namespace lu_emu {
/* *p = f(*p), returning the old value. One block's threads never run at the same time, so a plain
 * read-modify-write is atomic; atomics do not race, so the race checker does not see it. */
template <class T, class F> LU_EMU_UNCHECKED static inline T atomic_rmw(T *p, F f)
{
    T o = *p;
    *p = f(o);
    return o;
}
} /* namespace lu_emu */

template <class T, class U> static inline T atomicAdd(T *p, U v)
{
    return lu_emu::atomic_rmw(p, [v](T o) { return (T)(o + v); });
}
template <class T, class U> static inline T atomicSub(T *p, U v)
{
    return lu_emu::atomic_rmw(p, [v](T o) { return (T)(o - v); });
}
template <class T, class U> static inline T atomicMin(T *p, U v)
{
    return lu_emu::atomic_rmw(p, [v](T o) { return (T)v < o ? (T)v : o; });
}
template <class T, class U> static inline T atomicMax(T *p, U v)
{
    return lu_emu::atomic_rmw(p, [v](T o) { return (T)v > o ? (T)v : o; });
}
template <class T, class U> static inline T atomicExch(T *p, U v)
{
    return lu_emu::atomic_rmw(p, [v](T) { return (T)v; });
}
template <class T, class U, class V> static inline T atomicCAS(T *p, U cmp, V v)
{
    return lu_emu::atomic_rmw(p, [cmp, v](T o) { return o == (T)cmp ? (T)v : o; });
}

static inline float __uint_as_float(unsigned u) { return lu_emu::from_bits<float>(u); }
static inline unsigned __float_as_uint(float f) { return (unsigned)lu_emu::to_bits(f); }
static inline float __int_as_float(int i) { return lu_emu::from_bits<float>((uint32_t)i); }
static inline int __float_as_int(float f) { return (int)(uint32_t)lu_emu::to_bits(f); }
static inline double __longlong_as_double(long long v) { return lu_emu::from_bits<double>((uint64_t)v); }
static inline long long __double_as_longlong(double d) { return (long long)lu_emu::to_bits(d); }
template <class T> static inline T __ldg(const T *p) { return *p; }
static inline size_t __cvta_generic_to_shared(const void *p) { return (size_t)p; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
using std::max;
using std::min;

#endif
