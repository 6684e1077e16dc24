/* emu.cpp - the CPU emulator of the CUDA runtime and of the execution model (README.md beside).
 *
 * A launch runs its blocks one after the other on the calling thread. Each CUDA thread of a block
 * is a fiber (a stack of its own and a hand-written context switch on x86-64, ucontext
 * elsewhere): the scheduler takes the warps in turn, resumes each lane until it finishes, reaches
 * the block barrier or joins a warp collective, completes a collective as soon as every lane it
 * names has joined, and moves to the next warp when its lanes are all done or at the barrier;
 * then the barrier opens and the next round begins. Warps and lanes go in thread order on even
 * rounds and in reverse order on odd ones, so that a read of shared memory that lacks its barrier
 * sees the wrong data one way or the other; cp.async copies land at their wait on even rounds and
 * at once on odd ones, for the same reason. What the hardware does not allow (a warp collective whose
 * mask names a lane that exited, a barrier nobody else reaches, a misaligned ldmatrix address)
 * aborts with the kernel, block and thread named. A build with LUTHIER_EMU_RACECHECK also checks
 * every access to shared memory for data races (the race checker, below). */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <vector>

#include "lu_emu_device.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

/* AddressSanitizer is told of every stack switch, so that it checks kernels' memory accesses
 * (device memory is host memory here) without mistaking a fiber's stack for an overflow. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
static inline void __asan_unpoison_memory_region(const volatile void *, size_t) {}
static inline void __sanitizer_start_switch_fiber(void **, const void *, size_t) {}
static inline void __sanitizer_finish_switch_fiber(void *, const void **, size_t *) {}
#endif

namespace lu_emu {

uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;

enum fiber_state { F_NEW, F_RUN, F_BLOCK, F_WARP, F_DONE };

struct pending_copy {
    void *dst;
    const void *src;
    int bytes;
    bool in;
    int group;
    void *pc; /* where the kernel issued it */
};

/* A wgmma's results for one thread (n / 2 <= 128 of them), until the wait_group that covers its
 * commit group. */
struct pending_wgmma {
    float *acc;
    int n; /* accumulators */
    int group;
    float d[128];
    pending_wgmma() {} /* uninitialised: emplace_back() would zero d for each wgmma */
};

struct fiber {
    int state;
    uint3 tid;
    char *stack;
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t ctx;
#endif
    int sync_op, sync_pred, sync_result;
    warp_req *req;
    void *req_pc; /* where the kernel called its warp collective */
    void *asan_fake_stack;
    std::vector<pending_copy> copies;
    int groups_committed;
    std::vector<pending_wgmma> wgmmas;
    int wgmma_groups_committed;
};

static const size_t STACK_BYTES = 256 << 10;
static const size_t PAGE = 4096;
static const size_t STATIC_SMEM_BYTES = 48 << 10; /* an H100's limits */

/* Multiprocessors the device reports: an H100's 132, or LU_EMU_SMS (a test that wants a kernel's
 * persistent blocks to take several tiles each sets a small count). */
static int multiprocessors(void)
{
    const char *e = getenv("LU_EMU_SMS");
    long v = e ? atol(e) : 0;
    return v > 0 && v < 100000 ? (int)v : 132;
}

/* Dynamic shared memory a block may have on request: an H100's 227 KB, or LU_EMU_OPTIN_SMEM bytes
 * (a test's smaller device, e.g. an A100's 166912). */
static size_t optin_smem_bytes(void)
{
    const char *e = getenv("LU_EMU_OPTIN_SMEM");
    long v = e ? atol(e) : 0;
    return v > 0 ? (size_t)v : 232448;
}

static std::mutex launch_lock;
static std::vector<fiber> fibers;
static std::vector<char *> spare_stacks;
static fiber *cur;
static unsigned cur_round; /* the scheduler's round of the block being run */
static const char *kernel_name;
static void (*kernel_body)(void *);
static void *kernel_arg;
static std::vector<unsigned char> smem;
static std::map<const void *, int> max_dynamic_smem;
#if defined(__x86_64__)
static void *scheduler_sp;
#else
static ucontext_t scheduler_ctx;
#endif

[[noreturn]] static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda emulator: kernel %s, block (%u, %u, %u)", kernel_name ? kernel_name : "?", block_idx.x,
            block_idx.y, block_idx.z);
    if (cur) fprintf(stderr, ", thread (%u, %u, %u)", cur->tid.x, cur->tid.y, cur->tid.z);
    fprintf(stderr, ": ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

} /* namespace lu_emu */

/* ---- the race checker (a build with LUTHIER_EMU_RACECHECK: LU_EMU_RACECHECK) ----
 *
 * The kernel files are compiled with GCC's ThreadSanitizer instrumentation, which calls
 * __tsan_readN / __tsan_writeN before every memory access; the functions below, not TSan's
 * runtime, take those calls (this file is not instrumented). An access by a CUDA thread to shared
 * memory (static storage, where __shared__ puts a block's variables, and the dynamic shared
 * memory) is checked against the others of the same barrier interval, byte by byte: a thread
 * that reads what another wrote, or writes what another read or wrote, with no __syncthreads
 * between them (nor, for two lanes of one warp, a __syncwarp, which orders the whole warp even
 * with a partial mask), is a data race, and the emulator stops there naming the kernel, the
 * block, both threads and both places. A cp.async copy is a write of the issuing thread both when
 * issued and when it lands; ldmatrix reads each lane's row as that lane's. Atomics are not looked
 * at; neither is global memory (the blocks that would share it run one after another here). */
#if defined(LU_EMU_RACECHECK)
/* The executable's static storage (.data and .bss), as the linker bounds it. */
extern "C" char __data_start[], _end[];

namespace lu_emu {

struct race_cell {
    uint32_t epoch;                /* the barrier interval of the accesses below (stale: none yet) */
    int16_t writer, reader, rlast; /* the last writer; the reader (-1: none, RACE_MANY); the last one */
    uint16_t wsync, rsync;         /* the __syncwarp count of the writer's / last reader's warp then */
    int8_t rwarp;                  /* the one warp that every reader belongs to, else -1 */
    uint32_t wpc, rpc;             /* where they wrote and read (race_pc) */
};
static const int16_t RACE_MANY = -2;
static const size_t RACE_PAGE = 1 << 16;  /* bytes of static storage a shadow page covers */
static std::vector<race_cell *> race_pages; /* static storage's shadow, a page at first touch */
static std::vector<race_cell> race_dynamic;
static uint32_t race_epoch;        /* a new one at each block's start and each barrier it passes */
static uint16_t race_warp_syncs[32]; /* __syncwarp calls of each warp of the block */

/* Where shared-memory address a is: "a __shared__ variable" (*off: from the program's static
 * storage) or "dynamic shared memory" (*off: from its start). */
static const char *race_area(uintptr_t a, ptrdiff_t *off)
{
    if (a >= (uintptr_t)__data_start && a < (uintptr_t)_end) {
        *off = (ptrdiff_t)(a - (uintptr_t)__data_start);
        return "a __shared__ variable";
    }
    *off = (ptrdiff_t)(a - (uintptr_t)smem.data());
    return "dynamic shared memory";
}

/* Prints the source line of code address pc (the program's or a library's), by addr2line when it
 * is at hand. */
static void race_where(void *pc)
{
    Dl_info info;
    char exe[4096], cmd[8192];
    const char *file = NULL;
    if (dladdr(pc, &info) && info.dli_fname) {
        file = info.dli_fname;
        if (access(file, R_OK)) {
            ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
            exe[len > 0 ? len : 0] = 0;
            file = exe;
        }
    }
    if (file) {
        /* addr2line wants the offset in the file (a PIE or a library), pc - 1 being in the call */
        snprintf(cmd, sizeof cmd, "addr2line -Cfpie '%s' %#lx 2>/dev/null", file,
                 (unsigned long)((uintptr_t)pc - (uintptr_t)info.dli_fbase - 1));
        FILE *f = popen(cmd, "r");
        char line[1024];
        bool any = false;
        while (f && fgets(line, sizeof line, f)) {
            fprintf(stderr, "    %s", line);
            any = true;
        }
        if (f) pclose(f);
        if (any) return;
    }
    fprintf(stderr, "    %p\n", pc);
}

/* Reports thread t's access at pc, which `what` the access at other_pc of thread other, and
 * stops. */
[[noreturn]] static void race_found(int t, const void *p, const char *what, int other, void *pc, void *other_pc)
{
    ptrdiff_t off;
    const char *area = race_area((uintptr_t)p, &off);
    cur = &fibers[t];
    fprintf(stderr, "cuda emulator: data race on shared memory (%s, byte %td, %p) in kernel %s, block (%u, %u, %u): "
                    "thread %d %s",
            area, off, p, kernel_name, block_idx.x, block_idx.y, block_idx.z, t, what);
    fprintf(stderr, " thread %d, with no barrier between them.\nThread %d's access (the later one here):\n", other, t);
    race_where(pc);
    fprintf(stderr, "Thread %d's:\n", other);
    race_where(other_pc);
    fail("data race on shared memory");
}

/* The shadow of the byte at static-storage offset off. */
static race_cell &race_static_cell(uintptr_t off)
{
    if (race_pages.empty()) race_pages.assign((size_t)(_end - __data_start) / RACE_PAGE + 1, NULL);
    race_cell *&page = race_pages[off / RACE_PAGE];
    if (!page && !(page = (race_cell *)calloc(RACE_PAGE, sizeof(race_cell))))
        fail("race checker: out of memory for a shadow page");
    return page[off % RACE_PAGE];
}

/* A code address as a race_cell holds it: from the start of the program, 0 outside it. */
extern "C" char __executable_start[];
static inline uint32_t race_pc(void *pc)
{
    uintptr_t off = (uintptr_t)pc - (uintptr_t)__executable_start;
    return off < UINT32_MAX ? (uint32_t)off : 0;
}

static inline void *race_code(uint32_t off) { return off ? __executable_start + off : NULL; }

/* Thread t's access (write or read, at code pc) of p[0, n): with its warp w and that warp's
 * __syncwarp count ws, the epoch, and pc as a cell holds it. */
struct race_access_info {
    int t, w;
    uint16_t ws;
    uint32_t epoch, pc32;
    bool write;
    const void *p;
    void *pc;
};

/* Whether an access of thread u, made at its warp's __syncwarp count sync, comes before a's. */
static inline bool race_before(const race_access_info &a, int u, uint16_t sync)
{
    return u == a.t || (u / 32 == a.w && a.ws != sync);
}

/* Checks access a against the byte whose shadow is c, and records it there. */
static inline void race_cell_access(race_cell &c, const race_access_info &a)
{
    if (c.epoch != a.epoch) {
        const int16_t r = (int16_t)(a.write ? -1 : a.t);
        c = race_cell{a.epoch, (int16_t)(a.write ? a.t : -1), r, r, a.ws, a.ws, (int8_t)(a.write ? -1 : a.w),
                      a.write ? a.pc32 : 0, a.write ? 0 : a.pc32};
        return;
    }
    if (c.writer >= 0 && !race_before(a, c.writer, c.wsync))
        race_found(a.t, a.p, a.write ? "overwrites what was written by" : "reads what was written by", c.writer, a.pc,
                   race_code(c.wpc));
    if (a.write) {
        if (c.reader >= 0 && !race_before(a, c.reader, c.rsync))
            race_found(a.t, a.p, "overwrites what was read by", c.reader, a.pc, race_code(c.rpc));
        if (c.reader == RACE_MANY && !(c.rwarp == a.w && a.ws != c.rsync))
            race_found(a.t, a.p, "overwrites what was read by several threads, the last of them", c.rlast, a.pc,
                       race_code(c.rpc));
        c.writer = (int16_t)a.t;
        c.wsync = a.ws;
        c.wpc = a.pc32;
    } else {
        if (c.reader == -1) c.reader = (int16_t)a.t, c.rwarp = (int8_t)a.w;
        else if (c.reader != a.t) c.reader = RACE_MANY, c.rwarp = c.rwarp == a.w ? (int8_t)a.w : (int8_t)-1;
        c.rlast = (int16_t)a.t;
        c.rsync = a.ws;
        c.rpc = a.pc32;
    }
}

static void race_check(int t, const void *p, size_t n, bool write, void *pc)
{
    const uintptr_t addr = (uintptr_t)p;
    race_cell *cells;
    const race_access_info a = {t, t / 32, race_warp_syncs[t / 32], race_epoch, race_pc(pc), write, p, pc};
    if (addr >= (uintptr_t)__data_start && addr < (uintptr_t)_end) {
        const uintptr_t off = addr - (uintptr_t)__data_start;
        if (off % RACE_PAGE + n > RACE_PAGE) { /* across two shadow pages */
            for (size_t i = 0; i < n; i++) race_cell_access(race_static_cell(off + i), a);
            return;
        }
        cells = &race_static_cell(off);
    } else if (addr >= (uintptr_t)smem.data() && addr < (uintptr_t)smem.data() + smem.size()) {
        cells = &race_dynamic[addr - (uintptr_t)smem.data()];
    } else {
        return; /* a thread's stack, global memory */
    }
    for (size_t i = 0; i < n; i++) race_cell_access(cells[i], a);
}

static inline void race_access(const void *p, size_t n, bool write, void *pc)
{
    if (cur) race_check((int)(cur - fibers.data()), p, n, write, pc);
}

/* The same for an access that the scheduler makes for thread f (ldmatrix). */
static inline void race_access_as(fiber *f, const void *p, size_t n, bool write, void *pc)
{
    race_check((int)(f - fibers.data()), p, n, write, pc);
}

} /* namespace lu_emu */

/* What GCC's -fsanitize=thread instrumentation calls. */
extern "C" {
#define LU_RACE_ACCESS(n)                                                                                            \
    void __tsan_read##n(void *p) { lu_emu::race_access(p, n, false, __builtin_return_address(0)); }                 \
    void __tsan_write##n(void *p) { lu_emu::race_access(p, n, true, __builtin_return_address(0)); }                 \
    void __tsan_unaligned_read##n(void *p) { lu_emu::race_access(p, n, false, __builtin_return_address(0)); }       \
    void __tsan_unaligned_write##n(void *p) { lu_emu::race_access(p, n, true, __builtin_return_address(0)); }
LU_RACE_ACCESS(1)
LU_RACE_ACCESS(2)
LU_RACE_ACCESS(4)
LU_RACE_ACCESS(8)
LU_RACE_ACCESS(16)
#undef LU_RACE_ACCESS
void __tsan_read_range(void *p, unsigned long n) { lu_emu::race_access(p, n, false, __builtin_return_address(0)); }
void __tsan_write_range(void *p, unsigned long n) { lu_emu::race_access(p, n, true, __builtin_return_address(0)); }
void __tsan_func_entry(void *) {}
void __tsan_func_exit(void) {}
void __tsan_init(void) {}
void __tsan_vptr_update(void **, void *) {}
void __tsan_vptr_read(void **) {}
}

namespace lu_emu {
static inline void race_new_epoch(void) { race_epoch++; }
static inline void race_block_start(void)
{
    race_epoch++;
    memset(race_warp_syncs, 0, sizeof race_warp_syncs);
    if (race_dynamic.size() < smem.size()) race_dynamic.resize(smem.size());
}
static inline void race_syncwarp(int w) { race_warp_syncs[w % 32]++; }
} /* namespace lu_emu */
#else
namespace lu_emu {
static inline void race_access(const void *, size_t, bool, void *) {}
static inline void race_access_as(fiber *, const void *, size_t, bool, void *) {}
static inline void race_new_epoch(void) {}
static inline void race_block_start(void) {}
static inline void race_syncwarp(int) {}
} /* namespace lu_emu */
#endif

namespace lu_emu {

/* ---- fibers ---- */

#if defined(__x86_64__)
/* lu_emu_switch(&save, to): saves the callee-saved registers on the current stack, stores the stack
 * pointer in save, and resumes the stack `to`. The floating-point control state (MXCSR, x87
 * control word) is left alone: every fiber runs with the host thread's, which kernels never
 * change, and restoring it at each switch would cost more than the rest of the switch. */
extern "C" void lu_emu_switch(void **save, void *to);
asm(".text\n"
    ".globl lu_emu_switch\n"
    ".type lu_emu_switch, @function\n"
    "lu_emu_switch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size lu_emu_switch, .-lu_emu_switch\n");
#endif

static const void *scheduler_stack_bottom;
static size_t scheduler_stack_size;

static void to_scheduler(void)
{
    fiber *f = cur;
    /* A finished fiber's stack is given up: no fake stack to keep. */
    __sanitizer_start_switch_fiber(f->state == F_DONE ? NULL : &f->asan_fake_stack, scheduler_stack_bottom,
                                   scheduler_stack_size);
#if defined(__x86_64__)
    lu_emu_switch(&f->sp, scheduler_sp);
#else
    swapcontext(&f->ctx, &scheduler_ctx);
#endif
    __sanitizer_finish_switch_fiber(f->asan_fake_stack, NULL, NULL);
}

static void finish_copies(fiber *f, int groups_left, bool all);

static void fiber_main(void)
{
    __sanitizer_finish_switch_fiber(NULL, &scheduler_stack_bottom, &scheduler_stack_size);
    kernel_body(kernel_arg);
    finish_copies(cur, 0, true);
    if (!cur->wgmmas.empty()) fail("the thread exits with a wgmma in flight (no wgmma.wait_group covers it)");
    cur->state = F_DONE;
    to_scheduler();
    abort(); /* a finished fiber is never resumed */
}

static char *take_stack(void)
{
    if (!spare_stacks.empty()) {
        char *s = spare_stacks.back();
        spare_stacks.pop_back();
        return s;
    }
    /* A guard page below the stack turns an overflow into a fault rather than corruption. */
    void *m = mmap(NULL, STACK_BYTES + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) fail("cannot map a %zu-byte fiber stack: %s", STACK_BYTES, strerror(errno));
    mprotect(m, PAGE, PROT_NONE);
    return (char *)m + PAGE;
}

static void start(fiber *f)
{
    f->stack = take_stack();
#if defined(__x86_64__)
    /* The frame lu_emu_switch pops: r15 .. rbp, then fiber_main as the return address, entered
     * with the stack 8 off a 16-byte boundary as after a call. */
    uint64_t *top = (uint64_t *)(f->stack + STACK_BYTES);
    uint64_t *sp = top - 8;
    memset(sp, 0, 8 * sizeof *sp);
    sp[6] = (uint64_t)(uintptr_t)fiber_main;
    f->sp = sp;
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = STACK_BYTES;
    f->ctx.uc_link = NULL;
    makecontext(&f->ctx, fiber_main, 0);
#endif
    f->state = F_RUN;
}

static void resume(fiber *f)
{
    cur = f;
    thread_idx = f->tid;
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, f->stack, STACK_BYTES);
#if defined(__x86_64__)
    lu_emu_switch(&scheduler_sp, f->sp);
#else
    swapcontext(&scheduler_ctx, &f->ctx);
#endif
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
    cur = NULL;
    if (f->state == F_DONE) {
        /* The frames a finished fiber never returned from (fiber_main's, to_scheduler's) leave
         * their red zones behind; every frame below them returned and cleared its own. */
#if defined(__x86_64__)
        char *low = (char *)f->sp - 256 > f->stack ? (char *)f->sp - 256 : f->stack;
        __asan_unpoison_memory_region(low, (size_t)(f->stack + STACK_BYTES - low));
#else
        __asan_unpoison_memory_region(f->stack, STACK_BYTES);
#endif
        spare_stacks.push_back(f->stack);
        f->stack = NULL;
    }
}

/* ---- barriers and collectives (called from fibers) ---- */

static void in_kernel(const char *what)
{
    if (!cur) {
        fprintf(stderr, "cuda emulator: %s called outside a kernel\n", what);
        abort();
    }
}

int block_sync(int op, int pred)
{
    in_kernel("__syncthreads");
    cur->sync_op = op;
    cur->sync_pred = pred != 0;
    cur->state = F_BLOCK;
    to_scheduler();
    return cur->sync_result;
}

void warp_collective(warp_req *req)
{
    in_kernel("a warp collective");
    cur->req = req;
    cur->req_pc = __builtin_return_address(0);
    cur->state = F_WARP;
    to_scheduler();
}

void *dynamic_smem(void) { return smem.data(); }

/* ---- cp.async: a copy lands when a wait_group that covers its group returns ---- */

/* Lands the copies of every committed group but the newest groups_left (all: every copy, at the
 * thread's exit). */
static void finish_copies(fiber *f, int groups_left, bool all)
{
    std::vector<pending_copy> keep;
    for (const pending_copy &c : f->copies) {
        if (all || c.group < f->groups_committed - groups_left) {
            race_access(c.dst, (size_t)c.bytes, true, c.pc);
            if (c.in) memcpy(c.dst, c.src, c.bytes);
            else memset(c.dst, 0, c.bytes);
        } else {
            keep.push_back(c);
        }
    }
    f->copies.swap(keep);
}

void cp_async(void *dst, const void *src, int bytes, bool in)
{
    in_kernel("cp.async");
    if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of %d bytes: only 4, 8 or 16 are copied", bytes);
    if (((uintptr_t)dst | (in ? (uintptr_t)src : 0)) & (uintptr_t)(bytes - 1))
        fail("cp.async of %d bytes from %p to %p: not %d-byte aligned", bytes, src, dst, bytes);
    /* A copy may land any time between its issue and the wait that covers it: on even rounds at
     * the wait (a read before the wait sees the old data), on odd ones at once (an overwrite of
     * data other warps still read shows). */
    void *pc = __builtin_return_address(0);
    race_access(dst, (size_t)bytes, true, pc);
    if (cur_round % 2) {
        if (in) memcpy(dst, src, bytes);
        else memset(dst, 0, bytes);
        return;
    }
    cur->copies.push_back(pending_copy{dst, src, bytes, in, cur->groups_committed, pc});
}

void cp_async_commit(void)
{
    in_kernel("cp.async.commit_group");
    cur->groups_committed++;
}

void cp_async_wait(int groups_left)
{
    in_kernel("cp.async.wait_group");
    finish_copies(cur, groups_left, false);
}

/* ---- wgmma: results land when a wait_group covers their commit group ---- */

/* Lands thread f's wgmma results of every committed group but the newest groups_left. */
static void finish_wgmmas(fiber *f, int groups_left)
{
    size_t kept = 0; /* in place: the vector keeps its storage from one wgmma to the next */
    for (size_t i = 0; i < f->wgmmas.size(); i++) {
        pending_wgmma &p = f->wgmmas[i];
        if (p.group < f->wgmma_groups_committed - groups_left) memcpy(p.acc, p.d, (size_t)p.n * sizeof(float));
        else if (kept++ != i) f->wgmmas[kept - 1] = p;
    }
    f->wgmmas.resize(kept);
}

void wgmma(float *acc, int n, const uint32_t a[4], uint64_t desc_a, uint64_t desc_b, bool scale_d, bool trans_b,
           bool bf16)
{
    in_kernel("wgmma.mma_async");
    warp_req q = {};
    q.op = bf16 ? W_WGMMA_BF16 : W_WGMMA_F16;
    q.mask = 0xffffffffu;
    q.acc = acc;
    q.n = n;
    q.a_regs = a != NULL;
    if (a) memcpy(q.a, a, sizeof q.a);
    q.desc_a = desc_a;
    q.desc_b = desc_b;
    q.scale_d = scale_d;
    q.trans_b = trans_b;
    cur->req = &q;
    cur->req_pc = __builtin_return_address(0);
    cur->state = F_WARP;
    to_scheduler();
    /* On odd rounds the results land at once (a read before the wait shows on even ones). */
    if (cur_round % 2) {
        cur->wgmma_groups_committed++;
        finish_wgmmas(cur, 0);
        cur->wgmma_groups_committed--;
    }
}

void wgmma_commit(void)
{
    in_kernel("wgmma.commit_group");
    cur->wgmma_groups_committed++;
}

void wgmma_wait(int groups_left)
{
    in_kernel("wgmma.wait_group");
    finish_wgmmas(cur, groups_left);
}

uint32_t shared_address(const void *p)
{
    in_kernel("a shared-memory address");
    const unsigned char *c = (const unsigned char *)p;
    if (c < smem.data() || c > smem.data() + smem.size())
        fail("%p is not in the block's dynamic shared memory (the emulator gives addresses in it only)", p);
    return (uint32_t)(c - smem.data());
}

/* ---- the scheduler ---- */

static const char *warp_op_name(int op)
{
    static const char *names[] = {"__shfl_xor_sync", "__shfl_down_sync", "__shfl_up_sync", "__shfl_sync",
                                  "__any_sync",      "__all_sync",       "__ballot_sync",  "__syncwarp",
                                  "ldmatrix",        "ldmatrix.trans",   "mma.sync (bf16)", "mma.sync (f16)",
                                  "wgmma (bf16)",    "wgmma (f16)"};
    return op >= 0 && op < (int)(sizeof names / sizeof names[0]) ? names[op] : "?";
}

/* The tensor-core arithmetic below (16-bit values to float, the products and sums of mma.sync and
 * wgmma) runs for every lane of every such instruction: it is left out of the sanitizers'
 * instrumentation, which took half or more of the attention suite's time under ASan + UBSan. It
 * reads and writes register copies and operand tiles at indices fixed by the lane numbers and the
 * shape, never memory a kernel gave (wgmma's operands are read from shared memory before). */
#define LU_EMU_ARITH __attribute__((no_sanitize("address", "undefined")))

LU_EMU_ARITH static float half_bits_to_float(uint16_t h, bool bf16)
{
    if (bf16) {
        const uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    _Float16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
}

/* The 16-bit element e (0: low half) of a 32-bit fragment register. */
LU_EMU_ARITH static float elem(uint32_t reg, int e, bool bf16)
{
    return half_bits_to_float((uint16_t)(reg >> (16 * e)), bf16);
}

/* D (rows x n) += A (rows x 16) B (16 x n) of an mma.sync (16 x 8) or a wgmma (64 x n), the sum
 * over k in order for each element; four columns a vector, eight a step, the partial sums in
 * registers. */
template <int LD>
LU_EMU_ARITH static void mma_products(double (*D)[LD], const float (*A)[16], const double (*B)[LD], int rows, int n)
{
    typedef double v4d __attribute__((vector_size(32)));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < n; c += 8) {
            v4d lo, hi;
            memcpy(&lo, &D[r][c], sizeof lo);
            memcpy(&hi, &D[r][c + 4], sizeof hi);
            for (int k = 0; k < 16; k++) {
                v4d bl, bh;
                memcpy(&bl, &B[k][c], sizeof bl);
                memcpy(&bh, &B[k][c + 4], sizeof bh);
                lo += A[r][k] * bl;
                hi += A[r][k] * bh;
            }
            memcpy(&D[r][c], &lo, sizeof lo);
            memcpy(&D[r][c + 4], &hi, sizeof hi);
        }
}

/* mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: the PTX ISA's fragment layouts, with
 * g = lane / 4 and t = lane % 4: A (16 x 16) a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..],
 * a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]; B (16 x 8) b[0] = B[2t..2t+1][g],
 * b[1] = B[2t+8..2t+9][g]; C and D (16 x 8) c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..]. */
LU_EMU_ARITH static void resolve_mma(fiber *lanes[32], bool bf16)
{
    /* Products of 16-bit values are exact in double; each sum is rounded to float once. */
    float A[16][16];
    double B[16][8], D[16][8];
    for (int l = 0; l < 32; l++) {
        const warp_req *q = lanes[l]->req;
        int g = l / 4, t = l % 4;
        for (int e = 0; e < 2; e++) {
            A[g][2 * t + e] = elem(q->a[0], e, bf16);
            A[g + 8][2 * t + e] = elem(q->a[1], e, bf16);
            A[g][2 * t + 8 + e] = elem(q->a[2], e, bf16);
            A[g + 8][2 * t + 8 + e] = elem(q->a[3], e, bf16);
            B[2 * t + e][g] = elem(q->b[0], e, bf16);
            B[2 * t + 8 + e][g] = elem(q->b[1], e, bf16);
            D[g][2 * t + e] = q->c[e];
            D[g + 8][2 * t + e] = q->c[2 + e];
        }
    }
    mma_products<8>(D, A, B, 16, 8);
    for (int l = 0; l < 32; l++) {
        warp_req *q = lanes[l]->req;
        int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++) q->d[i] = (float)D[g + 8 * (i / 2)][2 * t + i % 2];
    }
}

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i .. 8i+7 give the row addresses of
 * matrix i; lane l gets, of each matrix, row l/4's elements 2(l%4) and 2(l%4)+1 (with .trans:
 * column l/4's elements in rows 2(l%4) and 2(l%4)+1). */
static void resolve_ldmatrix(fiber *lanes[32], bool trans)
{
    for (int l = 0; l < 32; l++)
        if ((uintptr_t)lanes[l]->req->ptr & 15) {
            cur = lanes[l];
            fail("ldmatrix row address %p is not 16-byte aligned", lanes[l]->req->ptr);
        }
    for (int l = 0; l < 32; l++) race_access_as(lanes[l], lanes[l]->req->ptr, 16, false, lanes[l]->req_pc);
    for (int l = 0; l < 32; l++) {
        int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++) {
            uint16_t e[2];
            for (int k = 0; k < 2; k++) {
                const uint16_t *row = (const uint16_t *)lanes[8 * i + (trans ? 2 * t + k : g)]->req->ptr;
                e[k] = row[trans ? g : 2 * t + k];
            }
            lanes[l]->req->r[i] = (uint32_t)e[0] | (uint32_t)e[1] << 16;
        }
    }
}

/* The byte address in shared memory of element (mn, k) of a wgmma operand that descriptor desc
 * describes (PTX ISA, "Matrix Descriptor Format" and "Shared Memory Matrix Layout"; CuTe's
 * canonical GMMA layouts), for 16-bit elements, T = 8 of them in 16 bytes. The descriptor: start
 * address >> 4 in bits 0-13, the leading-dimension byte offset LBO >> 4 in 16-29, the
 * stride-dimension byte offset SBO >> 4 in 32-45, the base offset in 49-51 and the swizzle in
 * 62-63 (0 none, 1 128-byte; the 64- and 32-byte ones, 2 and 3, are not emulated):
 *   K-major, no swizzle: 8 x 16-byte core matrices, rows 16 bytes apart, SBO between the 8-row
 *     groups along M/N, LBO between the two 8-element halves of k;
 *   K-major, 128-byte swizzle: rows 128 bytes apart, SBO between 8-row groups, the 16 k's
 *     contiguous;
 *   MN-major, no swizzle: 8 contiguous mn's a 16-byte row, k rows 16 bytes apart, SBO between
 *     groups of 8 mn's, LBO between groups of 8 k's;
 *   MN-major, 128-byte swizzle: 64 contiguous mn's a row, k rows 128 bytes apart, LBO between
 *     groups of 64 mn's, SBO between groups of 8 k's;
 * then the swizzle: bits 4-6 of the address take the XOR of bits 7-9 (test_emu_wgmma.cpp). */
struct wgmma_operand {
    uint64_t desc;
    uint32_t start, lbo, sbo, W; /* W: 128 with the 128-byte swizzle, else 0 */
    bool mn_major;
};

static wgmma_operand wgmma_operand_of(uint64_t desc, bool mn_major)
{
    const int mode = (int)(desc >> 62), base = (int)(desc >> 49 & 7);
    if (base)
        fail("wgmma descriptor %#llx has base offset %d, which the emulator does not take", (unsigned long long)desc,
             base);
    if (mode > 1)
        fail("wgmma descriptor %#llx has the %d-byte swizzle, which the emulator does not take",
             (unsigned long long)desc, mode == 2 ? 64 : 32);
    return wgmma_operand{desc,
                         (uint32_t)(desc & 0x3fff) << 4,
                         (uint32_t)(desc >> 16 & 0x3fff) << 4,
                         (uint32_t)(desc >> 32 & 0x3fff) << 4,
                         mode == 1 ? 128u : 0u,
                         mn_major};
}

static uint32_t wgmma_elem_addr(const wgmma_operand &o, int mn, int k)
{
    const uint32_t W = o.W, lbo = o.lbo, sbo = o.sbo;
    uint32_t off;
    if (!o.mn_major)
        off = W ? (uint32_t)(mn % 8) * W + (uint32_t)(mn / 8) * sbo + (uint32_t)k * 2
                : (uint32_t)(mn % 8) * 16 + (uint32_t)(mn / 8) * sbo + (uint32_t)(k % 8) * 2 + (uint32_t)(k / 8) * lbo;
    else
        off = W ? (uint32_t)(mn % (W / 2)) * 2 + (uint32_t)(mn / (W / 2)) * lbo + (uint32_t)(k % 8) * W +
                      (uint32_t)(k / 8) * sbo
                : (uint32_t)(mn % 8) * 2 + (uint32_t)(mn / 8) * sbo + (uint32_t)(k % 8) * 16 + (uint32_t)(k / 8) * lbo;
    uint32_t a = o.start + off;
    if (W) a ^= (a >> 7 & 7) << 4;
    return a;
}

/* Element (mn, k) of operand o, for k < 16, mn < rows, into out[k][mn] (ld elements a row). */
template <typename F>
static void wgmma_load(const wgmma_operand &o, int rows, bool bf16, fiber *reader, void *pc, F *out, int ld)
{
    for (int k = 0; k < 16; k++)
        for (int mn = 0; mn < rows; mn++) {
            const uint32_t a = wgmma_elem_addr(o, mn, k);
            if ((size_t)a + 2 > smem.size())
                fail("wgmma descriptor %#llx reads shared address %u, past the block's %zu bytes",
                     (unsigned long long)o.desc, a, smem.size());
            const unsigned char *p = smem.data() + a;
            race_access_as(reader, p, 2, false, pc);
            uint16_t h;
            memcpy(&h, p, sizeof h);
            out[k * ld + mn] = half_bits_to_float(h, bf16);
        }
}

/* A thread's n / 2 accumulators d in D and back: rows r0 and r0 + 8 (r0 = 16 * warp + lane / 4)
 * of its columns of each 8, t = lane % 4 (the PTX ISA's wgmma D fragment). */
LU_EMU_ARITH static void wgmma_d_in(double (*D)[256], const float *d, int r0, int t, int n, bool scale_d)
{
    for (int c = 2 * t; c < n; c += 8, d += 4)
        for (int h = 0; h < 2; h++) {
            D[r0 + 8 * h][c] = scale_d ? d[2 * h] : 0.0;
            D[r0 + 8 * h][c + 1] = scale_d ? d[2 * h + 1] : 0.0;
        }
}

LU_EMU_ARITH static void wgmma_d_out(float *d, const double (*D)[256], int r0, int t, int n)
{
    for (int c = 2 * t; c < n; c += 8, d += 4)
        for (int h = 0; h < 2; h++) {
            d[2 * h] = (float)D[r0 + 8 * h][c];
            d[2 * h + 1] = (float)D[r0 + 8 * h][c + 1];
        }
}

/* Completes the wgmma of warp w's warpgroup if its four warps have joined it; true if it did. */
static bool resolve_wgmma(int w, int nthreads)
{
    const int g0 = w / 4 * 128;
    fiber *first = &fibers[32 * w];
    const warp_req *r0 = first->req;
    if (g0 + 128 > nthreads) {
        cur = first;
        fail("%s needs a whole warpgroup: the block has %d threads", warp_op_name(r0->op), nthreads);
    }
    for (int i = g0; i < g0 + 128; i++) {
        fiber *f = &fibers[i];
        if (f->state == F_DONE) {
            cur = first;
            fail("%s: thread %d of the warpgroup has exited", warp_op_name(r0->op), i);
        }
        if (f->state != F_WARP || f->req->op != r0->op) return false; /* still on its way */
        const warp_req *q = f->req;
        if (q->n != r0->n || q->desc_b != r0->desc_b || q->a_regs != r0->a_regs ||
            (!q->a_regs && q->desc_a != r0->desc_a) || q->scale_d != r0->scale_d || q->trans_b != r0->trans_b) {
            cur = f;
            fail("%s: threads %d and %d of a warpgroup give it different shapes, descriptors or flags",
                 warp_op_name(r0->op), g0 + 32 * (w % 4), i);
        }
    }
    const int n = r0->n;
    const bool bf16 = r0->op == W_WGMMA_BF16;
    if (n < 8 || n > 256 || n % 8) {
        cur = first;
        fail("%s with n = %d (8 to 256, a multiple of 8)", warp_op_name(r0->op), n);
    }
    /* A 64 x 16 and B 16 x n; products of 16-bit values are exact in double, each sum is rounded
     * to float once (as resolve_mma). */
    static float A[64][16];
    static double B[16][256], D[64][256];
    for (int i = g0; i < g0 + 128; i++) {
        const warp_req *q = fibers[i].req;
        const int r = (i - g0) / 32 * 16, g = i % 32 / 4, t = i % 4;
        if (q->a_regs)
            for (int e = 0; e < 2; e++) {
                A[r + g][2 * t + e] = elem(q->a[0], e, bf16);
                A[r + g + 8][2 * t + e] = elem(q->a[1], e, bf16);
                A[r + g][2 * t + 8 + e] = elem(q->a[2], e, bf16);
                A[r + g + 8][2 * t + 8 + e] = elem(q->a[3], e, bf16);
            }
    }
    if (!r0->a_regs) {
        static float At[16][64];
        wgmma_load(wgmma_operand_of(r0->desc_a, false), 64, bf16, first, first->req_pc, &At[0][0], 64);
        for (int m = 0; m < 64; m++)
            for (int k = 0; k < 16; k++) A[m][k] = At[k][m];
    }
    wgmma_load(wgmma_operand_of(r0->desc_b, r0->trans_b), n, bf16, first, first->req_pc, &B[0][0], 256);
    /* Each thread's accumulators as its earlier wgmmas left them, landed or not, into D. */
    pending_wgmma *pend[128];
    for (int i = g0; i < g0 + 128; i++) {
        fiber *f = &fibers[i];
        const warp_req *q = f->req;
        const int r = (i - g0) / 32 * 16 + i % 32 / 4, t = i % 4;
        pending_wgmma *p = NULL;
        for (pending_wgmma &x : f->wgmmas)
            if (x.acc == q->acc) p = &x;
        if (!p) {
            f->wgmmas.emplace_back();
            p = &f->wgmmas.back();
            p->acc = q->acc;
            p->n = n / 2;
            memcpy(p->d, q->acc, (size_t)p->n * sizeof(float));
        }
        p->group = f->wgmma_groups_committed;
        pend[i - g0] = p;
        wgmma_d_in(D, p->d, r, t, n, q->scale_d);
    }
    mma_products<256>(D, A, B, 64, n);
    for (int i = g0; i < g0 + 128; i++) {
        const int r = (i - g0) / 32 * 16 + i % 32 / 4, t = i % 4;
        wgmma_d_out(pend[i - g0]->d, D, r, t, n);
    }
    for (int i = g0; i < g0 + 128; i++) fibers[i].state = F_RUN;
    return true;
}

static void resolve_shuffle(fiber *lanes[32], unsigned mask)
{
    uint64_t in[32];
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1) in[l] = lanes[l]->req->value;
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1)) continue;
        warp_req *q = lanes[l]->req;
        int w = q->width, base = l & ~(w - 1), src = l;
        if (w < 1 || w > 32 || (w & (w - 1))) {
            cur = lanes[l];
            fail("%s with width %d (a power of two up to 32)", warp_op_name(q->op), w);
        }
        if (q->op == W_SHFL_XOR) src = l ^ q->arg;
        else if (q->op == W_SHFL_DOWN) src = l + q->arg;
        else if (q->op == W_SHFL_UP) src = l - q->arg;
        else src = base + (q->arg & (w - 1));
        if (src < base || src >= base + w) src = l; /* outside the lane's segment: its own value */
        if (!(mask >> src & 1)) {
            cur = lanes[l];
            fail("%s reads lane %d, which is not in the mask %#x", warp_op_name(q->op), src, mask);
        }
        q->out = in[src];
    }
}

/* Completes warp w's collective if every lane its mask names has joined it; true if it did. Run
 * after every collective of every warp, it reads the emulator's own records of the lanes, never
 * memory a kernel gave: left out of the sanitizers' instrumentation, as LU_EMU_ARITH (its
 * resolve_ functions, which do read shared memory, are not inlined into it and keep theirs). */
LU_EMU_ARITH static bool resolve_warp(int w, int nthreads)
{
    fiber *lanes[32] = {NULL};
    fiber *first = NULL;
    for (int l = 0; l < 32 && 32 * w + l < nthreads; l++) {
        lanes[l] = &fibers[32 * w + l];
        if (!first && lanes[l]->state == F_WARP) first = lanes[l];
    }
    if (!first) return false;
    int op = first->req->op;
    unsigned mask = first->req->mask;
    for (int l = 0; l < 32; l++) {
        fiber *f = lanes[l];
        if (f && f->state == F_WARP && (f->req->op != op || f->req->mask != mask)) {
            cur = f;
            fail("lanes of warp %d wait at different collectives: %s (mask %#x) and %s (mask %#x)", w,
                 warp_op_name(op), mask, warp_op_name(f->req->op), f->req->mask);
        }
        if (!(mask >> l & 1)) {
            if (f && f->state == F_WARP) {
                cur = f;
                fail("%s with mask %#x, which leaves out the calling lane %d", warp_op_name(op), mask, l);
            }
            continue;
        }
        if (!f) {
            cur = first;
            fail("%s with mask %#x names lane %d, which this block (%u threads) does not have", warp_op_name(op),
                 mask, l, (unsigned)nthreads);
        }
        if (f->state == F_DONE) {
            cur = first;
            fail("%s with mask %#x: lane %d has exited", warp_op_name(op), mask, l);
        }
        if (f->state != F_WARP) return false; /* still on its way */
    }
    bool full = mask == 0xffffffffu;
    if ((op >= W_LDSM) && !full) {
        cur = first;
        fail("%s needs the whole warp (mask %#x)", warp_op_name(op), mask);
    }
    if (op == W_WGMMA_BF16 || op == W_WGMMA_F16) return resolve_wgmma(w, nthreads);
    if (op == W_MMA_BF16 || op == W_MMA_F16) resolve_mma(lanes, op == W_MMA_BF16);
    else if (op == W_LDSM || op == W_LDSM_T) resolve_ldmatrix(lanes, op == W_LDSM_T);
    else if (op <= W_SHFL_IDX) resolve_shuffle(lanes, mask);
    else {
        uint64_t ballot = 0;
        for (int l = 0; l < 32; l++)
            if (mask >> l & 1 && lanes[l]->req->value) ballot |= 1ull << l;
        uint64_t r = op == W_ANY ? ballot != 0 : op == W_ALL ? ballot == mask : ballot;
        for (int l = 0; l < 32; l++)
            if (mask >> l & 1) lanes[l]->req->out = r;
        if (op == W_SYNCWARP) race_syncwarp(w);
    }
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1) lanes[l]->state = F_RUN;
    return true;
}

/* Releases the block barrier if every thread still running waits at it; true if it did. */
static bool resolve_block(int nthreads)
{
    int op = -1, count = 0, waiting = 0;
    for (int i = 0; i < nthreads; i++) {
        fiber *f = &fibers[i];
        if (f->state == F_DONE) continue; /* exited threads no longer take part, as on the GPU */
        if (f->state != F_BLOCK) return false;
        if (op >= 0 && f->sync_op != op) {
            cur = f;
            fail("threads wait at different block barriers (__syncthreads and __syncthreads_and/or/count)");
        }
        op = f->sync_op;
        count += f->sync_pred;
        waiting++;
    }
    if (!waiting) return false;
    int r = op == SYNC_AND ? count == waiting : op == SYNC_OR ? count > 0 : count;
    race_new_epoch();
    for (int i = 0; i < nthreads; i++)
        if (fibers[i].state == F_BLOCK) {
            fibers[i].sync_result = r;
            fibers[i].state = F_RUN;
        }
    return true;
}

static void run_block(int nthreads)
{
    for (int i = 0; i < nthreads; i++) {
        fiber *f = &fibers[i];
        f->state = F_NEW;
        f->tid.x = (unsigned)i % block_dim.x;
        f->tid.y = (unsigned)i / block_dim.x % block_dim.y;
        f->tid.z = (unsigned)i / (block_dim.x * block_dim.y);
        f->copies.clear();
        f->groups_committed = 0;
        f->wgmmas.clear();
        f->wgmma_groups_committed = 0;
        f->req = NULL;
        f->asan_fake_stack = NULL;
    }
    /* Shared memory starts as garbage on a GPU; NaN bytes make a read before a write show. */
    memset(smem.data(), 0xff, smem.size());
    race_block_start();
    int nwarps = (nthreads + 31) / 32;
    /* A round takes the warps in turn; a warp's lanes run until each finishes or waits, and its
     * collectives complete at once, so the warp goes on until all its lanes are done or at the
     * block barrier. Then the barrier opens (or nothing can move: a deadlock). */
    for (unsigned round = 0;; round++) {
        const bool reverse = round % 2;
        cur_round = round;
        /* A warpgroup's wgmma completes when its last warp joins and wakes the warps before it:
         * the round goes on while any thread can run. */
        bool runnable;
        do {
            for (int wi = 0; wi < nwarps; wi++) {
                const int w = reverse ? nwarps - 1 - wi : wi, lo = 32 * w,
                          hi = lo + 32 < nthreads ? lo + 32 : nthreads;
                do {
                    for (int k = lo; k < hi; k++) {
                        fiber *f = &fibers[reverse ? hi - 1 - (k - lo) : k];
                        if (f->state == F_NEW) start(f);
                        if (f->state == F_RUN) resume(f);
                    }
                } while (resolve_warp(w, nthreads));
            }
            runnable = false;
            for (int i = 0; i < nthreads; i++) runnable |= fibers[i].state == F_RUN;
        } while (runnable);
        int done = 0, at_block = 0, at_warp = 0;
        for (int i = 0; i < nthreads; i++) {
            done += fibers[i].state == F_DONE;
            at_block += fibers[i].state == F_BLOCK;
            at_warp += fibers[i].state == F_WARP;
        }
        if (done == nthreads) return;
        if (!resolve_block(nthreads))
            fail("deadlock: %d of %d threads wait at __syncthreads, %d at warp collectives, %d have exited", at_block,
                 nthreads, at_warp, done);
    }
}

static thread_local cudaError_t last_error = cudaSuccess;

static cudaError_t record(cudaError_t e)
{
    if (e != cudaSuccess) last_error = e;
    return e;
}

void run_kernel(const char *name, const void *fn, dim3 grid, dim3 block, size_t dyn_smem, void (*body)(void *),
                void *arg)
{
    /* LU_EMU_NO_KERNEL_IMAGE=1 plays a GPU that the build has no code for. */
    const char *no_image = getenv("LU_EMU_NO_KERNEL_IMAGE");
    if (no_image && strcmp(no_image, "0")) {
        record(cudaErrorNoKernelImageForDevice);
        return;
    }
    uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !nthreads || nthreads > 1024 || block.x > 1024 || block.y > 1024 ||
        block.z > 64 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        record(cudaErrorInvalidConfiguration);
        return;
    }
    /* Over 48 KB a kernel needs its cudaFuncSetAttribute (known by address; a launch that
     * deduced template arguments has none, and is held to the device's maximum). */
    auto lim = max_dynamic_smem.find(fn);
    size_t allowed = !fn ? optin_smem_bytes() : lim == max_dynamic_smem.end() ? STATIC_SMEM_BYTES : (size_t)lim->second;
    if (dyn_smem > allowed) {
        record(cudaErrorInvalidValue);
        return;
    }
    std::lock_guard<std::mutex> hold(launch_lock);
    kernel_name = name;
    kernel_body = body;
    kernel_arg = arg;
    grid_dim = grid;
    block_dim = block;
    smem.assign(dyn_smem ? dyn_smem : 16, 0);
    if (fibers.size() < nthreads) fibers.resize(nthreads);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                block_idx.x = x;
                block_idx.y = y;
                block_idx.z = z;
                run_block((int)nthreads);
            }
    kernel_name = NULL;
}

} /* namespace lu_emu */

/* ---- the runtime API ---- */

using lu_emu::record;

extern "C" {

static size_t allocated_bytes;
static std::mutex alloc_lock;
static std::map<void *, size_t> allocations;

} /* extern "C" */

bool lu_emu::device_pointer(const void *p)
{
    std::lock_guard<std::mutex> hold(alloc_lock);
    auto it = allocations.upper_bound((void *)p);
    if (it == allocations.begin()) return false;
    --it;
    return (size_t)((const char *)p - (const char *)it->first) <= it->second;
}

void lu_emu::bad_pointer_argument(const char *kernel, int index, const void *p)
{
    fprintf(stderr, "cuda emulator: kernel %s: argument %d (%p) is not device memory (a GPU would fault on it)\n",
            kernel, index, p);
    abort();
}

extern "C" {

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : record(cudaErrorInvalidDevice); }

cudaError_t cudaGetDevice(int *device)
{
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    if (device != 0) return record(cudaErrorInvalidDevice);
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)lu_emu::STATIC_SMEM_BYTES; break;
    case cudaDevAttrMultiProcessorCount: *value = lu_emu::multiprocessors(); break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)lu_emu::optin_smem_bytes(); break;
    default: return record(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

static size_t host_memory(void) { return (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE); }

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (device != 0) return record(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "luthier CUDA emulator (CPU)");
    prop->totalGlobalMem = host_memory();
    prop->sharedMemPerBlock = lu_emu::STATIC_SMEM_BYTES;
    prop->sharedMemPerBlockOptin = lu_emu::optin_smem_bytes();
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->multiProcessorCount = 132;
    prop->major = 9;
    prop->minor = 0;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *version)
{
    *version = 13000;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version)
{
    *version = 13000;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    std::lock_guard<std::mutex> hold(alloc_lock);
    *total_bytes = host_memory();
    *free_bytes = *total_bytes > allocated_bytes ? *total_bytes - allocated_bytes : 0;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t nbytes)
{
    *p = NULL;
    size_t n = (nbytes + 255) / 256 * 256;
    void *m = n ? aligned_alloc(256, n) : NULL;
    if (!m) return record(nbytes ? cudaErrorMemoryAllocation : cudaSuccess);
    /* Fresh device memory holds garbage: NaN bytes make a read of unwritten memory show. */
    memset(m, 0xff, n);
    std::lock_guard<std::mutex> hold(alloc_lock);
    allocations[m] = n;
    allocated_bytes += n;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> hold(alloc_lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return record(cudaErrorInvalidValue);
    allocated_bytes -= it->second;
    allocations.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocAsync(void **p, size_t nbytes, cudaStream_t) { return cudaMalloc(p, nbytes); }
cudaError_t cudaFreeAsync(void *p, cudaStream_t) { return cudaFree(p); }

/* The emulator has no pool: cudaMallocAsync is cudaMalloc. */
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device)
{
    if (device != 0) return record(cudaErrorInvalidDevice);
    *pool = NULL;
    return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, enum cudaMemPoolAttr, void *) { return cudaSuccess; }

/* Whether [p, p + nbytes) lies in one cudaMalloc allocation: the runtime refuses a copy or fill
 * of device memory that does not. */
static bool on_device(const void *p, size_t nbytes)
{
    std::lock_guard<std::mutex> hold(alloc_lock);
    auto it = allocations.upper_bound((void *)p);
    if (it == allocations.begin()) return false;
    --it;
    const char *base = (const char *)it->first;
    return (const char *)p >= base && (size_t)((const char *)p - base) + nbytes <= it->second;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t nbytes, enum cudaMemcpyKind kind)
{
    if ((unsigned)kind > cudaMemcpyDefault) return record(cudaErrorInvalidValue);
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (nbytes && ((dst_dev && !on_device(dst, nbytes)) || (src_dev && !on_device(src, nbytes))))
        return record(cudaErrorInvalidValue);
    if (nbytes) memmove(dst, src, nbytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t nbytes, enum cudaMemcpyKind kind, cudaStream_t)
{
    return cudaMemcpy(dst, src, nbytes, kind);
}

cudaError_t cudaMemset(void *dst, int value, size_t nbytes)
{
    if (nbytes && !on_device(dst, nbytes)) return record(cudaErrorInvalidValue);
    if (nbytes) memset(dst, value, nbytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t nbytes, cudaStream_t) { return cudaMemset(dst, value, nbytes); }

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

struct CUevent_st {
    double seconds;
};

cudaError_t cudaEventCreate(cudaEvent_t *event)
{
    *event = (cudaEvent_t)calloc(1, sizeof(struct CUevent_st));
    return *event ? cudaSuccess : record(cudaErrorMemoryAllocation);
}

cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    free(event);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    event->seconds = ts.tv_sec + 1e-9 * ts.tv_nsec;
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    *ms = (float)(1e3 * (end->seconds - start->seconds));
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = lu_emu::last_error;
    lu_emu::last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return lu_emu::last_error; }

const char *cudaGetErrorName(cudaError_t error)
{
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t error)
{
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || (size_t)value > lu_emu::optin_smem_bytes())
        return record(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> hold(lu_emu::launch_lock);
    lu_emu::max_dynamic_smem[func] = value;
    return cudaSuccess;
}

/* An H100's limits by threads and dynamic shared memory (the emulator knows neither a kernel's
 * registers nor its static shared memory): 2048 threads, 32 blocks and 228 KB a multiprocessor,
 * 1 KB of which the runtime keeps per block. */
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, const void *func, int threads, size_t smem)
{
    if (!blocks || !func || threads < 1 || threads > 1024) return record(cudaErrorInvalidValue);
    int n = 2048 / ((threads + 31) / 32 * 32);
    n = n < 32 ? n : 32;
    const size_t per_block = smem + 1024;
    if ((size_t)n * per_block > (size_t)228 << 10) n = (int)(((size_t)228 << 10) / per_block);
    *blocks = n;
    return cudaSuccess;
}

} /* extern "C" */
