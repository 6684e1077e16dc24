/* attention_wgmma.cu - the ATTENTION forward and backward on Hopper's warpgroup MMA
 * (wgmma.mma_async, sm_90a) for bf16 and f16 with D == Dv in {64, 128} (Dsum stays in
 * attention_mma.cu).
 *
 * Forward: att_forward_mma_kernel (attention_mma.cu) at 16 query rows a warp, same semantics, key
 * tiles and online softmax (att_softmax_tile), where the four warps of a warpgroup compute
 * S = Q K^T for their 64 rows with one m64n64k16 instruction per 16 columns of D (Q and K read
 * from shared memory through matrix descriptors, no ldmatrix) and O += P V with one m64nDk16
 * instruction per 16 keys (P from registers, as mma.sync takes its A operand; V from shared
 * memory, N-major). This is the instruction FlashAttention-3 (arXiv 2407.08608) builds on, without
 * its TMA, warp specialisation and pingpong scheduling: tiles come by cp.async, double-buffered, as
 * in the mma.sync kernel, and the tensor cores work while the other warpgroups an SM holds do
 * their softmax. dK/dV: att_backward_dkdv_mma_kernel on one warpgroup of 64 keys, its four
 * products on wgmma (att_backward_dkdv_wgmma_kernel); dQ: att_backward_dq_mma_kernel on one
 * warpgroup of 64 queries (att_backward_dq_wgmma_kernel).
 *
 * Tiles are stored in the 128-byte swizzled layout (PTX ISA, "Shared Memory Matrix Layout"): a
 * tile of R rows of D 16-bit elements is D / 64 column blocks of R rows x 128 bytes, each
 * 1024-byte aligned, and the 16-byte piece c of row r sits at piece c ^ (r % 8) of its row, so
 * that the eight rows of a core matrix fall in eight different 16-byte bank groups. The same
 * bytes are K-major for K (the B operand of S = Q K^T: n = keys, k = d) and N-major for V (the B
 * operand of O = P V: k = keys, n = d). Descriptors: stride-dimension offset 1024 bytes (between
 * groups of 8 rows), leading-dimension offset (N-major only) the bytes between column blocks; a
 * k step of 16 columns within a 128-byte row moves the start address by 32 bytes, the hardware
 * applying the swizzle to the address it forms.
 *
 * wgmma needs code built for sm_90a (CMAKE_CUDA_ARCHITECTURES 90a); a build without it, another
 * GPU, or LUTHIER_ATT_WGMMA=0 leaves both to the mma.sync kernels (lu_att_wgmma_usable). */
#include "attention_mma.cuh"

#define ATT_WG_THREADS 128 /* a warpgroup */

extern __shared__ __align__(16) unsigned char att_wg_smem[];

/* ---- PTX wrappers ---- */

/* A thread's accumulator operands of wgmma, 8, 16 or 32 floats from d[i] (64: two ATT_F32), and
 * their places in the instruction (ATT_R16, ATT_R32, ATT_R64). */
#define ATT_F8(d, i)                                                                                                   \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]),        \
        "+f"(d[i + 7])
#define ATT_F16(d, i) ATT_F8(d, i), ATT_F8(d, i + 8)
#define ATT_F32(d, i) ATT_F16(d, i), ATT_F16(d, i + 16)
#define ATT_R16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define ATT_R32                                                                                                        \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
    "%24, %25, %26, %27, %28, %29, %30, %31}"
#define ATT_R64                                                                                                        \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
    "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "  \
    "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

#if defined(LU_CUDA_EMU)
static inline void att_wg_fence() {}
template <int N> static inline void att_wg_pin(float *) {}
static inline void att_wg_commit() { lu_emu::wgmma_commit(); }
template <int N> static inline void att_wg_wait() { lu_emu::wgmma_wait(N); }
template <bool BF16, int N> static inline void att_wgmma_ss(float d[N / 2], uint64_t da, uint64_t db, bool scale_d)
{
    lu_emu::wgmma(d, N, NULL, da, db, scale_d, false, BF16);
}
template <bool BF16, int N> static inline void att_wgmma_rs(float d[N / 2], const uint32_t a[4], uint64_t db)
{
    lu_emu::wgmma(d, N, a, 0, db, true, true, BF16);
}
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Orders this thread's register writes before the warpgroup's next wgmma reads them. */
static __device__ __forceinline__ void att_wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
/* Pins the N accumulators d[] in their registers at this point, so that the compiler neither
 * reads nor moves them while wgmmas that write them are in flight (which would make ptxas
 * serialise every wgmma of the kernel, warning C7514). */
template <int N> static __device__ __forceinline__ void att_wg_pin(float *d)
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
static __device__ __forceinline__ void att_wg_commit()
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
/* Waits until at most N committed wgmma groups are in flight. */
template <int N> static __device__ __forceinline__ void att_wg_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* One wgmma.mma_async.sync.aligned.m64n<NS>k16.f32.<T>.<T>: R the accumulators' operand list, A
 * the A operand (a descriptor, or a list of four registers), B B's descriptor, P the operand whose
 * nonzero value sets scale-d, IMM the immediates (scales of A and B, transposes), IN the inputs
 * (ATT_IN(...)), then the accumulators' constraints. */
#define ATT_IN(...) __VA_ARGS__
#define ATT_WGMMA(T, NS, R, A, B, P, IMM, IN, ...)                                                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                                        \
                 "wgmma.mma_async.sync.aligned.m64n" NS "k16.f32." T "." T " " R ", " A ", " B ", p, " IMM ";\n}\n"   \
                 : __VA_ARGS__                                                                                         \
                 : IN)

/* d (64 x N over the warpgroup, N 32 or 64) = A B + (scale_d ? d : 0): A 64 x 16 (descriptor da,
 * K-major), B 16 x N (descriptor db, K-major). */
template <bool BF16, int N>
static __device__ __forceinline__ void att_wgmma_ss(float d[N / 2], uint64_t da, uint64_t db, bool scale_d)
{
    static_assert(N == 32 || N == 64, "32 or 64 columns");
    if (N == 32 && BF16)
        ATT_WGMMA("bf16", "32", ATT_R16, "%16", "%17", "%18", "1, 1, 0, 0", ATT_IN("l"(da), "l"(db), "r"((int)scale_d)),
                  ATT_F16(d, 0));
    else if (N == 32)
        ATT_WGMMA("f16", "32", ATT_R16, "%16", "%17", "%18", "1, 1, 0, 0", ATT_IN("l"(da), "l"(db), "r"((int)scale_d)),
                  ATT_F16(d, 0));
    else if (BF16)
        ATT_WGMMA("bf16", "64", ATT_R32, "%32", "%33", "%34", "1, 1, 0, 0", ATT_IN("l"(da), "l"(db), "r"((int)scale_d)),
                  ATT_F32(d, 0));
    else
        ATT_WGMMA("f16", "64", ATT_R32, "%32", "%33", "%34", "1, 1, 0, 0", ATT_IN("l"(da), "l"(db), "r"((int)scale_d)),
                  ATT_F32(d, 0));
}

/* d (64 x N) += A B: A 64 x 16 from registers (a warp's 16 rows in mma.sync's A layout), B 16 x N
 * (descriptor db, N-major). */
template <bool BF16, int N>
static __device__ __forceinline__ void att_wgmma_rs(float d[N / 2], const uint32_t a[4], uint64_t db)
{
    static_assert(N == 64 || N == 128, "head dims 64 and 128");
#define ATT_RS_IN ATT_IN("r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))
    if (N == 64 && BF16)
        ATT_WGMMA("bf16", "64", ATT_R32, "{%32, %33, %34, %35}", "%36", "%37", "1, 1, 1", ATT_RS_IN, ATT_F32(d, 0));
    else if (N == 64)
        ATT_WGMMA("f16", "64", ATT_R32, "{%32, %33, %34, %35}", "%36", "%37", "1, 1, 1", ATT_RS_IN, ATT_F32(d, 0));
    else if (BF16)
        ATT_WGMMA("bf16", "128", ATT_R64, "{%64, %65, %66, %67}", "%68", "%69", "1, 1, 1", ATT_RS_IN, ATT_F32(d, 0),
                  ATT_F32(d, 32));
    else
        ATT_WGMMA("f16", "128", ATT_R64, "{%64, %65, %66, %67}", "%68", "%69", "1, 1, 1", ATT_RS_IN, ATT_F32(d, 0),
                  ATT_F32(d, 32));
#undef ATT_RS_IN
}
#else
/* Device code for GPUs without wgmma (and the host pass): the kernel traps (it is never launched
 * there, lu_att_wgmma_usable). */
static __device__ __forceinline__ void att_wg_fence() {}
template <int N> static __device__ __forceinline__ void att_wg_pin(float *) {}
static __device__ __forceinline__ void att_wg_commit() {}
template <int N> static __device__ __forceinline__ void att_wg_wait() {}
template <bool BF16, int N> static __device__ __forceinline__ void att_wgmma_ss(float *, uint64_t, uint64_t, bool) {}
template <bool BF16, int N> static __device__ __forceinline__ void att_wgmma_rs(float *, const uint32_t *, uint64_t) {}
#endif

/* ---- fragments and descriptors ---- */

/* The A operand (16 x 16, 16 bits) of the accumulator fragments x0, x1 of two neighbouring 8-column
 * blocks, rounded as mma.sync's kernels round it (att_gemm_xb). */
template <bool BF16>
static __device__ __forceinline__ void att_frag_of(uint32_t r[4], const float (&x0)[4], const float (&x1)[4])
{
    r[0] = att_pack<BF16>(x0[0], x0[1]);
    r[1] = att_pack<BF16>(x0[2], x0[3]);
    r[2] = att_pack<BF16>(x1[0], x1[1]);
    r[3] = att_pack<BF16>(x1[2], x1[3]);
}

/* The matrix descriptor of the swizzled tile region at p: 128-byte swizzle, 1024 bytes between
 * groups of 8 rows, lbo bytes between column blocks (N-major operands). */
static __device__ __forceinline__ uint64_t att_desc(const void *p, uint32_t lbo)
{
    return (uint64_t)((lu_saddr(p) & 0x3ffff) >> 4) | (uint64_t)(lbo >> 4) << 16 | (uint64_t)(1024 >> 4) << 32 |
           1ull << 62;
}

/* The descriptor d moved by `bytes` (a multiple of 16) in shared memory. */
static __device__ __forceinline__ uint64_t att_desc_at(uint64_t d, int bytes) { return d + (uint64_t)(bytes >> 4); }

/* Does any of the 64 rows r0 .. r0 + 63 (a warpgroup's) see a key of [j0, j0 + ATT_BK)? Every
 * warp of the group computes the same answer, so that the group's wgmmas are taken or skipped
 * together. */
static __device__ __forceinline__ bool att_group_sees(const int *lo, const int *hi, int r0, int j0)
{
    const int lane = threadIdx.x % LU_CUDA_WARP;
    bool see = false;
#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int r = r0 + lane + LU_CUDA_WARP * x;
        see |= max(lo[r], j0) < min(hi[r], j0 + ATT_BK);
    }
    return __any_sync(ATT_FULL, see);
}

/* ---- the products ---- */

/* d (64 x N over the warpgroup) = A B^T over D columns, issued (the caller fences, commits and
 * waits): A the swizzled tile region at descriptor da with a_rows rows a column block, B at db
 * with b_rows; column block kk / 4, 32 bytes a step in it. */
template <bool BF16, int N, int D>
static __device__ __forceinline__ void att_wg_scores(float *d, uint64_t da, int a_rows, uint64_t db, int b_rows)
{
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        att_wgmma_ss<BF16, N>(d, att_desc_at(da, kk / 4 * a_rows * 128 + kk % 4 * 32),
                              att_desc_at(db, kk / 4 * b_rows * 128 + kk % 4 * 32), kk > 0);
}

/* acc0 += X0 B0 and, where TWO, acc1 += X1 B1, and waits for them: X the 64 x K accumulator
 * fragments x (a warp's 16 rows), rounded to 16 bits as mma.sync's kernels round them; B the
 * N-major K x D tile region at descriptor b, 16 rows (2048 bytes) a step. */
template <bool BF16, int D, int K, bool TWO>
static __device__ __forceinline__ void att_wg_accumulate(float (&acc0)[D / 8][4], const float (&x0)[K / 8][4],
                                                         uint64_t b0, float (&acc1)[D / 8][4],
                                                         const float (&x1)[K / 8][4], uint64_t b1)
{
    uint32_t f0[K / 16][4], f1[K / 16][4];
#pragma unroll
    for (int kk = 0; kk < K / 16; kk++) {
        att_frag_of<BF16>(f0[kk], x0[2 * kk], x0[2 * kk + 1]);
        if (TWO) att_frag_of<BF16>(f1[kk], x1[2 * kk], x1[2 * kk + 1]);
    }
    att_wg_pin<D / 2>(&acc0[0][0]);
    if (TWO) att_wg_pin<D / 2>(&acc1[0][0]);
    att_wg_fence();
#pragma unroll
    for (int kk = 0; kk < K / 16; kk++) att_wgmma_rs<BF16, D>(&acc0[0][0], f0[kk], att_desc_at(b0, kk * 2048));
    if (TWO)
#pragma unroll
        for (int kk = 0; kk < K / 16; kk++) att_wgmma_rs<BF16, D>(&acc1[0][0], f1[kk], att_desc_at(b1, kk * 2048));
    att_wg_commit();
    att_wg_wait<0>();
    att_wg_pin<D / 2>(&acc0[0][0]);
    if (TWO) att_wg_pin<D / 2>(&acc1[0][0]);
}

/* ---- forward ---- */

/* Shared memory: up to 1024 bytes to align the tiles; Q [D / 64][BQ][64]; K, V [2][D / 64][ATT_BK]
 * [64] (16-bit, swizzled); row_lo, row_hi [BQ] int; with BQ = 64 WGS queries. */
static size_t att_wgmma_smem(int d, int wgs)
{
    const int bq = 64 * wgs;
    return 1024 + (size_t)(bq + 4 * ATT_BK) * d * 2 + (size_t)bq * 2 * sizeof(int);
}

/* One block of WGS warpgroups per (64 WGS queries, query head, batch), the tiles with the most
 * keys (causal: the last) first; a warp owns 16 rows, as att_forward_mma_kernel at MT = 1, whose
 * every row's arithmetic this is, in the same order but for the sums of the tensor cores. */
template <bool BF16, int D, int WGS>
static __global__ void __launch_bounds__(WGS * ATT_WG_THREADS, 2)
    att_forward_wgmma_kernel(att_args a, void *o, void *lse)
{
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* never launched there (lu_att_wgmma_usable); the rest compiles with empty wrappers */
#endif
    constexpr int BQ = WGS * 64, NT = WGS * ATT_WG_THREADS;
    const int lane = threadIdx.x % LU_CUDA_WARP, wp = threadIdx.x / LU_CUDA_WARP, wg = threadIdx.x / ATT_WG_THREADS;
    unsigned char *base = att_wg_smem + ((1024 - (lu_saddr(att_wg_smem) & 1023)) & 1023);
    uint16_t *Qs = (uint16_t *)base, *Ks = Qs + BQ * D, *Vs = Ks + 2 * ATT_BK * D;
    int *row_lo = (int *)(Vs + 2 * ATT_BK * D), *row_hi = row_lo + BQ;

    const int tk = (int)a.rg.tk;
    const att_fwd_block fb = att_fwd_block_of(&a, BQ, D);
    const int64_t kbase = fb.kbase, kstride = a.hkv * D;
    const uint16_t *k = (const uint16_t *)a.k, *v = (const uint16_t *)a.v;

    att_ranges(&a, fb.i0, BQ, row_lo, row_hi);
    att_load_rows<D, BQ, NT, true>(Qs, (const uint16_t *)a.q, fb.qbase, a.hq * D, fb.i0, (int)a.rg.tq);
    __syncthreads();
    int klo, khi;
    att_union(row_lo, row_hi, BQ, tk, &klo, &khi);
    const int ntiles = khi > klo ? (khi - klo + ATT_BK - 1) / ATT_BK : 0;
    if (ntiles > 0) {
        att_load_rows<D, ATT_BK, NT, true>(Ks, k, kbase, kstride, klo, tk);
        att_load_rows<D, ATT_BK, NT, true>(Vs, v, kbase, kstride, klo, tk);
    }
    lu_cp_commit();

    /* The softmax state of rows g and g + 8 of the warp's 16 (att_softmax_tile). */
    const float sl2 = a.scale * ATT_LOG2E;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const att_rows rows = att_rows_of(row_lo, row_hi, wp * 16 + lane / 4);
    const uint64_t qdesc = att_desc(Qs + wg * 64 * 64, 0);
    for (int it = 0; it < ntiles; it++) {
        const int j0 = klo + it * ATT_BK;
        att_prefetch_kv<D, NT, D, ATT_BK, true>(Ks, Vs, k, v, kbase, kstride, it, ntiles, j0, tk);
        const uint16_t *Kt = Ks + (it & 1) * ATT_BK * D, *Vt = Vs + (it & 1) * ATT_BK * D;
        if (att_group_sees(row_lo, row_hi, wg * 64, j0)) {
            /* S = Q K^T, the online softmax, O += P V. */
            float s[ATT_BK / 8][4];
            att_wg_fence();
            att_wg_scores<BF16, ATT_BK, D>(&s[0][0], qdesc, BQ, att_desc(Kt, 0), ATT_BK);
            att_wg_commit();
            att_wg_wait<0>();
            att_softmax_tile<D>(s, m, l, acc, &rows, j0, &a, fb.b, tk, sl2);
            const uint64_t vdesc = att_desc(Vt, ATT_BK * 128);
            att_wg_accumulate<BF16, D, ATT_BK, false>(acc, s, vdesc, acc, s, vdesc);
        }
        __syncthreads(); /* every warpgroup is done with this buffer before it is refilled */
    }
    lu_cp_wait<0>();
    att_store_rows<BF16, D>(acc, m, l, &a, o, lse, fb.b, fb.h, fb.i0 + wp * 16);
}

/* ---- backward: dK, dV ---- */

/* Shared memory: up to 1024 bytes to align the tiles; K, V [D / 64][ATT_BK][64]; Q, dO [NB][D / 64]
 * [QC][64] (16-bit, swizzled); att_qsteps' ranges, lse and Dsum. */
static size_t att_dkdv_wgmma_smem(int d)
{
    return 1024 + (size_t)(2 * ATT_BK + 2 * ATT_DKDV_NB * ATT_QC(d)) * d * 2 +
           ATT_QSTEP_BYTES(ATT_QC(d), ATT_DKDV_NB);
}

/* att_backward_dkdv_mma_kernel (attention_mma.cu) on a warpgroup: one block of 128 threads per
 * (ATT_BK keys, kv head, batch), a warp per 16 keys, QC queries a step. S^T and dP^T (64 keys x QC
 * queries) = K Q^T and V dO^T with K, V (A, K-major) and Q, dO (B, K-major) from shared memory,
 * then dV += P^T dO and dK += dS^T Q with P^T and dS^T from registers and dO, Q N-major. */
template <bool BF16, int D>
static __global__ void __launch_bounds__(ATT_WG_THREADS)
    att_backward_dkdv_wgmma_kernel(att_args a, const void *dO, const void *lse, const float *dsum, void *dk, void *dv)
{
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* never launched there (lu_att_wgmma_usable) */
#endif
    constexpr int QC = ATT_QC(D), NT = ATT_WG_THREADS, NB = ATT_DKDV_NB;
    unsigned char *base = att_wg_smem + ((1024 - (lu_saddr(att_wg_smem) & 1023)) & 1023);
    uint16_t *Ks = (uint16_t *)base, *Vs = Ks + ATT_BK * D, *Qs = Vs + ATT_BK * D;

    /* The block's keys and this lane's, K and V staged with the first query step. */
    const int tk = (int)a.rg.tk;
    const att_dkdv_block kb = att_dkdv_block_of(&a, D);
    const int j0 = kb.j0;
    att_qsteps<D, QC, NT, NB, true> qs((unsigned char *)(Qs + 2 * NB * QC * D), &a, dO, lse, dsum, kb.b, kb.hk, j0,
                                       min(j0 + ATT_BK, tk), Qs);
    for (int x = 0; x < 2; x++)
        att_load_rows<D, ATT_BK, NT, true>(x ? Vs : Ks, (const uint16_t *)(x ? a.v : a.k), kb.kbase, a.hkv * D, j0,
                                           tk);
    if (qs.steps > 0) qs.stage(0);
    lu_cp_commit();
    const float sl2 = a.scale * ATT_LOG2E;
    float acc_k[D / 8][4] = {}, acc_v[D / 8][4] = {};
    const uint64_t kdesc = att_desc(Ks, 0), vdesc = att_desc(Vs, 0);
    for (int st = 0; st < qs.steps; st++) {
        qs.begin(st);
        const auto q = qs.at(st);
        /* Whether a query of the step sees a key of the block, the same in every warp, so that the
         * group's wgmmas are taken or skipped together. */
        bool full;
        if (qs.sees(q, kb.j0, kb.j0 + ATT_BK, kb.wj0, &full)) {
            /* S^T = K Q^T and dP^T = V dO^T. */
            float s[QC / 8][4], dp[QC / 8][4];
            att_wg_fence();
            att_wg_scores<BF16, QC, D>(&s[0][0], kdesc, ATT_BK, att_desc(q.q, 0), QC);
            att_wg_scores<BF16, QC, D>(&dp[0][0], vdesc, ATT_BK, att_desc(q.dO, 0), QC);
            att_wg_commit();
            att_wg_wait<0>();
            if (full) att_probs_t<false>(s, dp, kb.kr, kb.kpad, q.lo, q.hi, q.lse, q.dsum, sl2, 0);
            else att_probs_t<true>(s, dp, kb.kr, kb.kpad, q.lo, q.hi, q.lse, q.dsum, sl2, 0);
            /* dV += P^T dO and dK += dS^T Q. */
            att_wg_accumulate<BF16, D, QC, true>(acc_v, s, att_desc(q.dO, QC * 128), acc_k, dp,
                                                 att_desc(q.q, QC * 128));
        }
        /* No barrier: this buffer is refilled at begin(st + 2), after the barrier of begin(st + 1). */
    }
    lu_cp_wait<0>();
    att_store_dkdv<BF16, D>(acc_k, acc_v, kb.kr, &a, kb.b, kb.hk, dk, dv);
}

/* ---- backward: dQ ---- */

/* Shared memory: up to 1024 bytes to align the tiles; Q, dO [D / 64][64][64]; K, V [2][D / 64]
 * [ATT_BK][64] (16-bit, swizzled); row_lo, row_hi [64] int. */
static size_t att_dq_wgmma_smem(int d)
{
    return 1024 + (size_t)(2 * 64 + 4 * ATT_BK) * d * 2 + 64 * 2 * sizeof(int);
}

/* att_backward_dq_mma_kernel (attention_mma.cu, 16 rows a warp, tiles of ATT_BK keys) on a
 * warpgroup: one block of 128 threads per (64 queries, query head, batch). S and dP (64 queries x
 * ATT_BK keys) = Q K^T and dO V^T with Q, dO (A) and K, V (B, K-major) from shared memory, then
 * dQ += dS K with dS from registers and K N-major. */
template <bool BF16, int D>
static __global__ void __launch_bounds__(ATT_WG_THREADS)
    att_backward_dq_wgmma_kernel(att_args a, const void *dO, const void *lse, const float *dsum, void *dq)
{
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* never launched there (lu_att_wgmma_usable) */
#endif
    constexpr int BQ = 64, NT = ATT_WG_THREADS;
    const int wp = threadIdx.x / LU_CUDA_WARP;
    unsigned char *base = att_wg_smem + ((1024 - (lu_saddr(att_wg_smem) & 1023)) & 1023);
    uint16_t *Qs = (uint16_t *)base, *dOs = Qs + BQ * D, *Ks = dOs + BQ * D, *Vs = Ks + 2 * ATT_BK * D;
    int *row_lo = (int *)(Vs + 2 * ATT_BK * D), *row_hi = row_lo + BQ;

    const int tq = (int)a.rg.tq, tk = (int)a.rg.tk;
    const att_fwd_block fb = att_fwd_block_of(&a, BQ, D);
    const int64_t kstride = a.hkv * D;
    const uint16_t *k = (const uint16_t *)a.k, *v = (const uint16_t *)a.v;
    att_ranges(&a, fb.i0, BQ, row_lo, row_hi);
    for (int x = 0; x < 2; x++)
        att_load_rows<D, BQ, NT, true>(x ? dOs : Qs, (const uint16_t *)(x ? dO : a.q), fb.qbase, a.hq * D, fb.i0, tq);
    __syncthreads();
    int klo, khi;
    att_union(row_lo, row_hi, BQ, tk, &klo, &khi);
    const int ntiles = khi > klo ? (khi - klo + ATT_BK - 1) / ATT_BK : 0;
    if (ntiles > 0)
        for (int x = 0; x < 2; x++)
            att_load_rows<D, ATT_BK, NT, true>(x ? Vs : Ks, x ? v : k, fb.kbase, kstride, klo, tk);
    lu_cp_commit();

    const att_rows rows = att_rows_of(row_lo, row_hi, wp * 16 + (int)threadIdx.x % LU_CUDA_WARP / 4);
    const float sl2 = a.scale * ATT_LOG2E;
    float lse2[2], ds[2], acc[D / 8][4] = {};
    att_dq_rows_state(&a, lse, dsum, fb.b, fb.h, fb.i0 + wp * 16, lse2, ds);
    const uint64_t qdesc = att_desc(Qs, 0), odesc = att_desc(dOs, 0);
    for (int it = 0; it < ntiles; it++) {
        const int j0 = klo + it * ATT_BK;
        att_prefetch_kv<D, NT, D, ATT_BK, true>(Ks, Vs, k, v, fb.kbase, kstride, it, ntiles, j0, tk);
        const uint16_t *Kt = Ks + (it & 1) * ATT_BK * D, *Vt = Vs + (it & 1) * ATT_BK * D;
        if (att_group_sees(row_lo, row_hi, 0, j0)) {
            /* S = Q K^T and dP = dO V^T, dS, dQ += dS K. */
            float s[ATT_BK / 8][4], dp[ATT_BK / 8][4];
            att_wg_fence();
            att_wg_scores<BF16, ATT_BK, D>(&s[0][0], qdesc, BQ, att_desc(Kt, 0), ATT_BK);
            att_wg_scores<BF16, ATT_BK, D>(&dp[0][0], odesc, BQ, att_desc(Vt, 0), ATT_BK);
            att_wg_commit();
            att_wg_wait<0>();
            att_dscores<ATT_BK>(s, dp, lse2, ds, &rows, j0, &a, fb.b, tk, sl2);
            const uint64_t kdesc_n = att_desc(Kt, ATT_BK * 128);
            att_wg_accumulate<BF16, D, ATT_BK, false>(acc, s, kdesc_n, acc, s, kdesc_n);
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }
    lu_cp_wait<0>();
    att_store_dq<BF16, D>(acc, &a, dq, fb.b, fb.h, fb.i0 + wp * 16);
}

/* ---- host side ---- */

bool lu_att_wgmma_usable(void)
{
    const char *e = getenv("LUTHIER_ATT_WGMMA");
    if (e && !strcmp(e, "0")) return false;
#if defined(LU_CUDA_EMU) || defined(LUTHIER_CUDA_SM90A)
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return major == 9;
#else
    return false;
#endif
}

/* Warpgroups a block: 2 (128 queries, as the mma.sync kernel's blocks) at head dim 128, 1 (64
 * queries: twice the key and value loads, blocks half the size) at 64, the faster of the two for
 * each on an H200 (benchmarks/gpu/2026-11-27-h200.md: Qwen3 shape, d 128, 359.5 TFLOP/s with 2
 * against 328.6 with 1; Zipformer shape, d 64, 254.2 with 1 against 241.0 with 2).
 * LUTHIER_ATT_WGMMA_GROUPS=1 or 2 takes that many for both. */
template <bool BF16, int D> static lu_status att_forward_wgmma_launch(const att_args &a, void *o, void *lse)
{
    const char *e = getenv("LUTHIER_ATT_WGMMA_GROUPS");
    const int wgs = e && !strcmp(e, "1") ? 1 : e && !strcmp(e, "2") ? 2 : D == 64 ? 1 : 2;
    unsigned grid = 0;
    LU_TRY(att_grid(a.b * a.hq * ((a.rg.tq + 64 * wgs - 1) / (64 * wgs)), "the forward", &grid));
    const size_t smem = att_wgmma_smem(D, wgs);
    const void *kernel = wgs == 1 ? (const void *)att_forward_wgmma_kernel<BF16, D, 1>
                                  : (const void *)att_forward_wgmma_kernel<BF16, D, 2>;
    LU_TRY(att_smem_allow(kernel, smem, &a));
    if (grid > 0 && wgs == 1) att_forward_wgmma_kernel<BF16, D, 1><<<grid, ATT_WG_THREADS, smem>>>(a, o, lse);
    else if (grid > 0) att_forward_wgmma_kernel<BF16, D, 2><<<grid, 2 * ATT_WG_THREADS, smem>>>(a, o, lse);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

lu_status lu_att_wgmma_forward(const att_args *a, void *o, void *lse)
{
    if (a->dt == LU_BF16)
        return a->d == 64 ? att_forward_wgmma_launch<true, 64>(*a, o, lse)
                          : att_forward_wgmma_launch<true, 128>(*a, o, lse);
    return a->d == 64 ? att_forward_wgmma_launch<false, 64>(*a, o, lse)
                      : att_forward_wgmma_launch<false, 128>(*a, o, lse);
}

template <bool BF16, int D>
static lu_status att_dkdv_wgmma_launch(const att_args &a, const void *dO, const void *lse, const float *dsum, void *dk,
                                       void *dv)
{
    unsigned grid = 0;
    LU_TRY(att_grid(a.b * a.hkv * ((a.rg.tk + ATT_BK - 1) / ATT_BK), "the dk/dv backward", &grid));
    const size_t smem = att_dkdv_wgmma_smem(D);
    LU_TRY(att_smem_allow((const void *)att_backward_dkdv_wgmma_kernel<BF16, D>, smem, &a));
    if (grid > 0)
        att_backward_dkdv_wgmma_kernel<BF16, D><<<grid, ATT_WG_THREADS, smem>>>(a, dO, lse, dsum, dk, dv);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

lu_status lu_att_wgmma_dkdv(const att_args *a, const void *dO, const void *lse, const float *dsum, void *dk, void *dv)
{
    if (a->dt == LU_BF16)
        return a->d == 64 ? att_dkdv_wgmma_launch<true, 64>(*a, dO, lse, dsum, dk, dv)
                          : att_dkdv_wgmma_launch<true, 128>(*a, dO, lse, dsum, dk, dv);
    return a->d == 64 ? att_dkdv_wgmma_launch<false, 64>(*a, dO, lse, dsum, dk, dv)
                      : att_dkdv_wgmma_launch<false, 128>(*a, dO, lse, dsum, dk, dv);
}

template <bool BF16, int D>
static lu_status att_dq_wgmma_launch(const att_args &a, const void *dO, const void *lse, const float *dsum, void *dq)
{
    unsigned grid = 0;
    LU_TRY(att_grid(a.b * a.hq * ((a.rg.tq + 63) / 64), "the dq backward", &grid));
    const size_t smem = att_dq_wgmma_smem(D);
    LU_TRY(att_smem_allow((const void *)att_backward_dq_wgmma_kernel<BF16, D>, smem, &a));
    if (grid > 0) att_backward_dq_wgmma_kernel<BF16, D><<<grid, ATT_WG_THREADS, smem>>>(a, dO, lse, dsum, dq);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

lu_status lu_att_wgmma_dq(const att_args *a, const void *dO, const void *lse, const float *dsum, void *dq)
{
    if (a->dt == LU_BF16)
        return a->d == 64 ? att_dq_wgmma_launch<true, 64>(*a, dO, lse, dsum, dq)
                          : att_dq_wgmma_launch<true, 128>(*a, dO, lse, dsum, dq);
    return a->d == 64 ? att_dq_wgmma_launch<false, 64>(*a, dO, lse, dsum, dq)
                      : att_dq_wgmma_launch<false, 128>(*a, dO, lse, dsum, dq);
}
