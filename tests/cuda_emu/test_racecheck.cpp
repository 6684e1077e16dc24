/* test_racecheck.cpp - the emulator's race checker (LUTHIER_EMU_RACECHECK, emu.cpp) on small
 * kernels written for it: each ordering CUDA gives (a block barrier, __syncwarp among a warp's
 * lanes, cp.async's wait then a barrier) lets the accesses through, and each access the ordering
 * does not cover stops the kernel (abort: the test expects SIGABRT). Built and run only in the
 * race checker's build, where this file is instrumented as the kernel files are. */
#include "lu_emu_device.h"

#include <criterion/criterion.h>
#include <signal.h>

/* A buffer of n floats in (emulated) device memory, and its copy back to the host. */
static float *dev_floats(int n)
{
    void *p = NULL;
    cr_assert(cudaMalloc(&p, (size_t)n * sizeof(float)) == cudaSuccess);
    cr_assert(cudaMemset(p, 0, (size_t)n * sizeof(float)) == cudaSuccess);
    return (float *)p;
}

static float host_float(const float *d, int i)
{
    float v;
    cr_assert(cudaMemcpy(&v, d + i, sizeof v, cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
}

/* Thread t writes s[t] and reads its neighbour's, with a barrier between them or not. */
static void neighbour_kernel(float *out, int barrier)
{
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    if (barrier) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

static void run_neighbours(int barrier)
{
    float *out = dev_floats(64);
    lu_emu::launch("neighbour_kernel", neighbour_kernel, dim3(1), dim3(64))(out, barrier);
    cr_assert(cudaGetLastError() == cudaSuccess);
    for (int t = 0; t < 64; t++) cr_assert_eq(host_float(out, t), (float)((t + 1) % 64));
    cudaFree(out);
}

Test(racecheck, a_barrier_orders_writes_before_other_threads_reads) { run_neighbours(1); }

Test(racecheck, reading_what_another_thread_wrote_without_a_barrier_stops, .signal = SIGABRT) { run_neighbours(0); }

/* Every thread reads s[0], then thread `writer` overwrites it, after a barrier or not. */
static void overwrite_kernel(float *out, int writer, int barrier)
{
    __shared__ float s[1];
    if (threadIdx.x == 0) s[0] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[0];
    if (barrier) __syncthreads();
    if ((int)threadIdx.x == writer) s[0] = 2.0f;
}

static void run_overwrite(int writer, int barrier)
{
    float *out = dev_floats(64);
    lu_emu::launch("overwrite_kernel", overwrite_kernel, dim3(1), dim3(64))(out, writer, barrier);
    cr_assert(cudaGetLastError() == cudaSuccess);
    cudaFree(out);
}

Test(racecheck, overwriting_after_a_barrier_what_others_read_is_ordered) { run_overwrite(5, 1); }

Test(racecheck, overwriting_what_other_threads_read_without_a_barrier_stops, .signal = SIGABRT)
{
    run_overwrite(5, 0);
}

/* The read-write pairs of 64 threads (two warps): lane t of each warp writes d[t] (dynamic shared
 * memory) and reads d[partner], partner in its own warp or in the other, with __syncwarp between
 * or not. */
static void warp_kernel(float *out, int other_warp, int syncwarp)
{
    float *d = (float *)lu_emu::dynamic_smem();
    const unsigned t = threadIdx.x, partner = other_warp ? (t + 32) % 64 : (t & 32) | ((t + 1) & 31);
    d[t] = (float)t;
    if (syncwarp) __syncwarp();
    out[t] = d[partner];
}

static void run_warp(int other_warp, int syncwarp)
{
    float *out = dev_floats(64);
    lu_emu::launch("warp_kernel", warp_kernel, dim3(1), dim3(64), 64 * sizeof(float))(out, other_warp, syncwarp);
    cr_assert(cudaGetLastError() == cudaSuccess);
    cudaFree(out);
}

Test(racecheck, syncwarp_orders_the_lanes_of_a_warp) { run_warp(0, 1); }

Test(racecheck, lanes_of_a_warp_without_syncwarp_stop, .signal = SIGABRT) { run_warp(0, 0); }

Test(racecheck, syncwarp_does_not_order_two_warps, .signal = SIGABRT) { run_warp(1, 1); }

/* Atomics do not race; the sum is read after a barrier. Neighbouring bytes written by different
 * threads are not the same memory. */
static void atomic_and_bytes_kernel(float *out)
{
    __shared__ float sum;
    __shared__ unsigned char flags[64];
    if (threadIdx.x == 0) sum = 0.0f;
    __syncthreads();
    atomicAdd(&sum, 1.0f);
    flags[threadIdx.x] = (unsigned char)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = sum + flags[(threadIdx.x + 1) % 64];
}

Test(racecheck, atomics_and_neighbouring_bytes_do_not_race)
{
    float *out = dev_floats(64);
    lu_emu::launch("atomic_and_bytes_kernel", atomic_and_bytes_kernel, dim3(1), dim3(64))(out);
    cr_assert(cudaGetLastError() == cudaSuccess);
    for (int t = 0; t < 64; t++) cr_assert_eq(host_float(out, t), 64.0f + (float)((t + 1) % 64));
    cudaFree(out);
}

/* Thread 0 copies 4 floats into shared memory by cp.async while every thread reads them: after
 * the wait and a barrier, or straight away. */
static void copy_kernel(const float *in, float *out, int wait)
{
    __shared__ __align__(16) float s[4];
    if (threadIdx.x == 0) {
        lu_emu::cp_async(s, in, 16, true);
        lu_emu::cp_async_commit();
        if (wait) lu_emu::cp_async_wait(0);
    }
    if (wait) __syncthreads();
    out[threadIdx.x] = s[threadIdx.x % 4];
}

static void run_copy(int wait)
{
    float *in = dev_floats(4), *out = dev_floats(32);
    const float v[4] = {1, 2, 3, 4};
    cr_assert(cudaMemcpy(in, v, sizeof v, cudaMemcpyHostToDevice) == cudaSuccess);
    lu_emu::launch("copy_kernel", copy_kernel, dim3(1), dim3(32))(in, out, wait);
    cr_assert(cudaGetLastError() == cudaSuccess);
    for (int t = 0; t < 32; t++) cr_assert_eq(host_float(out, t), v[t % 4]);
    cudaFree(in);
    cudaFree(out);
}

Test(racecheck, a_copy_waited_for_before_a_barrier_is_ordered) { run_copy(1); }

Test(racecheck, reading_a_copy_that_another_thread_issued_stops, .signal = SIGABRT) { run_copy(0); }
