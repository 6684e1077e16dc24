/* test_emu_wgmma.cpp - the emulator's wgmma.mma_async (emu.cpp) on matrices laid out in shared
 * memory by this file, as the PTX ISA's "Shared Memory Matrix Layout" draws them: core matrices of
 * 8 rows x 16 bytes without swizzle; with the 128-byte swizzle, atoms of 8 rows x 128 bytes whose
 * 16-byte chunk c of row r sits at chunk c ^ r. A (64 x 16) comes from a descriptor (K-major) or
 * from registers, B (16 x N) from a descriptor (K-major, or N-major: transposed); the products of
 * small integers are exact, so every accumulator must equal the host's product. The emulator's
 * layouts are checked here against this file's, not against a GPU: the attention tests on a GPU
 * are that check. Built in every emulator build. */
#include "lu_emu_device.h"

#include <criterion/criterion.h>

#include <vector>

enum { NONE = 0, SW128 = 1 };

/* One case: A's source (descriptor or registers), its k columns k0 .. k0 + 15 of a row of KA, the
 * layouts, B's majorness, N, and whether D starts from 1 (scale-d) or 0. */
struct wg_case {
    bool a_regs;
    int a_mode, k0, ka;
    int b_mode;
    bool b_nmajor;
    int n;
    bool accumulate;
};

static uint16_t bf16_of(int v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(u >> 16); /* small integers are exact in bf16 */
}

/* Byte offset of A (m, k) in its tile: K-major, rows of ka elements. */
static size_t a_offset(const wg_case &c, int m, int k)
{
    if (c.a_mode == SW128) return (size_t)(m / 8) * 1024 + (m % 8) * 128 + ((k / 8) ^ (m % 8)) * 16 + (k % 8) * 2;
    /* Core matrices: 8 rows of 8 k's; k-neighbours LBO = 128 bytes apart, row groups SBO = ka * 16. */
    return (size_t)(m / 8) * c.ka * 16 + (k / 8) * 128 + (m % 8) * 16 + (k % 8) * 2;
}

/* Byte offset of B (k, n) in its tile (16 x n). */
static size_t b_offset(const wg_case &c, int k, int n)
{
    if (!c.b_nmajor) { /* rows are n's, 16 k's each */
        if (c.b_mode == SW128) return (size_t)(n / 8) * 1024 + (n % 8) * 128 + ((k / 8) ^ (n % 8)) * 16 + (k % 8) * 2;
        return (size_t)(n / 8) * 256 + (k / 8) * 128 + (n % 8) * 16 + (k % 8) * 2;
    }
    /* N-major: rows are k's, n's along them. */
    if (c.b_mode == SW128) /* atoms of 64 n's x 8 k's: k groups SBO = 1024 apart, n atoms LBO = 2048 */
        return (size_t)(n / 64) * 2048 + (k / 8) * 1024 + (k % 8) * 128 + (((n % 64) / 8) ^ (k % 8)) * 16 +
               (n % 8) * 2;
    /* core matrices of 8 k's x 8 n's: n groups SBO = 128 apart, k groups LBO = n / 8 * 128 */
    return (size_t)(n / 8) * 128 + (k / 8) * (c.n / 8) * 128 + (k % 8) * 16 + (n % 8) * 2;
}

static uint64_t desc(uint32_t addr, uint32_t lbo, uint32_t sbo, int mode)
{
    return (uint64_t)(addr >> 4) | (uint64_t)(lbo >> 4) << 16 | (uint64_t)(sbo >> 4) << 32 | (uint64_t)mode << 62;
}

#define A_BYTES 8192 /* A's tile: 64 rows of up to 64 k's */

/* Thread 0 lays A and B out from the host's pictures; every thread takes its A fragment (when
 * from registers), runs the wgmma and writes its accumulators at their (row, column). */
static void wg_kernel(wg_case c, const uint16_t *a, const uint16_t *b, float *out)
{
    unsigned char *s = (unsigned char *)lu_emu::dynamic_smem(); /* 1024-byte aligned offsets from 0 */
    if (threadIdx.x == 0) {
        for (int m = 0; m < 64; m++)
            for (int k = 0; k < c.ka; k++) memcpy(s + a_offset(c, m, k), &a[m * c.ka + k], 2);
        for (int k = 0; k < 16; k++)
            for (int n = 0; n < c.n; n++) memcpy(s + A_BYTES + b_offset(c, k, n), &b[k * c.n + n], 2);
    }
    __syncthreads();
    const int t = (int)threadIdx.x, w = t / 32, g = t % 32 / 4, q = t % 4;
    uint32_t fa[4];
    for (int i = 0; i < 4; i++) { /* mma.sync's A layout: (g, 2q), (g + 8, 2q), (g, 2q + 8), (g + 8, 2q + 8) */
        const int m = 16 * w + g + 8 * (i % 2), k = c.k0 + 2 * q + 8 * (i / 2);
        fa[i] = (uint32_t)a[m * c.ka + k] | (uint32_t)a[m * c.ka + k + 1] << 16;
    }
    const uint32_t a_addr = lu_emu::shared_address(s) + (uint32_t)(c.a_mode == SW128 ? c.k0 * 2 : c.k0 / 8 * 128);
    const uint64_t da = desc(a_addr, 128, c.a_mode == SW128 ? 1024 : (uint32_t)c.ka * 16, c.a_mode);
    const uint32_t b_addr = lu_emu::shared_address(s + A_BYTES);
    const uint64_t db = c.b_nmajor ? (c.b_mode == SW128 ? desc(b_addr, 2048, 1024, SW128)
                                                        : desc(b_addr, (uint32_t)c.n / 8 * 128, 128, NONE))
                                   : desc(b_addr, 128, c.b_mode == SW128 ? 1024 : 256, c.b_mode);
    float acc[128];
    for (int j = 0; j < c.n / 2; j++) acc[j] = 1.0f;
    lu_emu::wgmma(acc, c.n, c.a_regs ? fa : NULL, da, db, c.accumulate, c.b_nmajor, true);
    lu_emu::wgmma_commit();
    lu_emu::wgmma_wait(0);
    for (int j = 0; j < c.n / 2; j++) {
        const int row = 16 * w + g + 8 * (j % 4 / 2), col = j / 4 * 8 + 2 * q + j % 2;
        out[row * c.n + col] = acc[j];
    }
}

static void check(const wg_case &c)
{
    std::vector<uint16_t> ha(64 * c.ka), hb(16 * c.n);
    std::vector<int> ia(64 * c.ka), ib(16 * c.n);
    for (size_t i = 0; i < ia.size(); i++) ha[i] = bf16_of(ia[i] = (int)(i * 7 % 11) - 5);
    for (size_t i = 0; i < ib.size(); i++) hb[i] = bf16_of(ib[i] = (int)(i * 5 % 13) - 6);
    uint16_t *da, *db;
    float *dout;
    cr_assert(cudaMalloc((void **)&da, ha.size() * 2) == cudaSuccess);
    cr_assert(cudaMalloc((void **)&db, hb.size() * 2) == cudaSuccess);
    cr_assert(cudaMalloc((void **)&dout, (size_t)64 * c.n * 4) == cudaSuccess);
    cr_assert(cudaMemcpy(da, ha.data(), ha.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
    cr_assert(cudaMemcpy(db, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
    lu_emu::launch("wg_kernel", wg_kernel, dim3(1), dim3(128), A_BYTES + 8192)(c, da, db, dout);
    cr_assert(cudaGetLastError() == cudaSuccess);
    std::vector<float> out((size_t)64 * c.n);
    cr_assert(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < c.n; n++) {
            int want = c.accumulate ? 1 : 0;
            for (int k = 0; k < 16; k++) want += ia[m * c.ka + c.k0 + k] * ib[k * c.n + n];
            cr_assert_eq(out[(size_t)m * c.n + n], (float)want, "D[%d][%d] = %g, want %d", m, n,
                         out[(size_t)m * c.n + n], want);
        }
    cudaFree(da);
    cudaFree(db);
    cudaFree(dout);
}

Test(emu_wgmma, a_and_b_k_major_128_byte_swizzle_a_k_step_inside_the_row)
{
    check({.a_regs = false, .a_mode = SW128, .k0 = 16, .ka = 64, .b_mode = SW128, .b_nmajor = false, .n = 64,
           .accumulate = false});
}

Test(emu_wgmma, a_from_registers_b_n_major_128_byte_swizzle_two_atoms_along_n)
{
    check({.a_regs = true, .a_mode = NONE, .k0 = 0, .ka = 16, .b_mode = SW128, .b_nmajor = true, .n = 128,
           .accumulate = true});
}

Test(emu_wgmma, core_matrices_without_swizzle_k_and_n_major)
{
    check({.a_regs = false, .a_mode = NONE, .k0 = 8, .ka = 32, .b_mode = NONE, .b_nmajor = false, .n = 32,
           .accumulate = true});
    check({.a_regs = false, .a_mode = NONE, .k0 = 0, .ka = 16, .b_mode = NONE, .b_nmajor = true, .n = 64,
           .accumulate = false});
}
