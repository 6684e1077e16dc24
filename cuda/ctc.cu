/* ctc.cu - the CTC loss (Graves et al., ICML 2006) on the GPU: log_probs [B, T, V] f32 or bf16,
 * recursions in double as on the CPU (core/cpu/ctc_generic.h is the reference, with its
 * formulas). Targets and lengths were validated by lu_ctc_loss.
 *
 * The recursions are serial in time, so a block of threads covers the 2S+1 states of the extended
 * label sequence l' = (blank, l_1, blank, ..., l_S, blank) and steps through time; what each step
 * waits for is kept short: the two working rows live in shared memory when they fit (else in
 * global scratch, same layout), each thread keeps the labels, skip flags and lp values of its own
 * states beside them, the next step's lp values are loaded while the current step computes (they
 * do not depend on the recursion), and the three-way log-sum-exp takes one log (ctc_lse3).
 * Beta is the alpha recursion of the reversed sequence in reversed time, so one function runs both.
 *
 * Forward: one block per utterance runs alpha over two rows, giving nll = -log Z; one thread then
 * reduces the batch in order (none / sum / mean over target lengths, zero_infinity).
 * Backward, in two kernels: ctc_tables_kernel runs alpha and beta of each utterance in two blocks
 * at once, storing every row, while a third block links each label state to the next state with
 * its label; ctc_grad_kernel then takes one block per (utterance, step), all independent:
 *   dlp[t, k] = -scale * sum_{s: l'(s) = k} exp(alpha_t(s) + beta_t(s) - log Z - lp[t, k]),
 * the terms being occupation probabilities summed in linear space as the CPU does: the blank's
 * over the even states by a block reduction of fixed order, each label's along its chain in
 * increasing state order (deterministic, no atomics). */
#include <math.h>

#include "device.cuh"

/* Threads per block; larger label sequences loop. Double math needs the registers. */
#define CTC_THREADS 256

/* Dynamic shared memory a launch may take without cudaFuncSetAttribute: the working memory of
 * a recursion goes there when it fits (stride up to 1966 states), else to global scratch. */
#define CTC_SMEM_BYTES (48 << 10)

/* The backward's scratch, mostly the alpha and beta tables: a batch whose scratch exceeds this
 * runs in chunks of utterances (at least one) rather than failing to allocate it all at once. */
#define CTC_TABLE_BYTES ((size_t)1 << 30)

extern __shared__ __align__(16) unsigned char ctc_smem[];

/* One utterance, as every thread of its block sees it. */
typedef struct ctc_utt {
    const void *targets; /* [B, S] */
    bool i64;            /* targets are i64 (else i32) */
    int64_t b, S, T, L;  /* T: input length, L = 2 * target length + 1 */
    int64_t lp0;         /* element offset of the utterance's [T, V] block */
    int blank;
} ctc_utt;

/* The integer operands and their dtypes (i32 or i64 each). */
typedef struct ctc_ints {
    const void *targets, *il, *tl;
    bool targets64, il64, tl64;
} ctc_ints;

/* The working memory of one recursion, per state r: two rows of the recursion (state r of step
 * tau at row[(tau % 2) * stride + r]), and what only r's thread reads: the lp value of the
 * state's label at the coming step, the label, and whether a skip from r - 2 reaches it. */
typedef struct ctc_work {
    double *row;
    float *lpn;
    int *lab;
    unsigned char *skip;
} ctc_work;

/* Bytes of one ctc_work, a multiple of 8 so that blocks' works can follow one another. */
static __host__ __device__ size_t ctc_work_bytes(int64_t stride)
{
    size_t n = (size_t)stride * (2 * sizeof(double) + sizeof(float) + sizeof(int) + 1);
    return (n + 7) & ~(size_t)7;
}

static __device__ ctc_work ctc_work_at(unsigned char *base, int64_t stride)
{
    ctc_work w;
    w.row = (double *)(void *)base;
    w.lpn = (float *)(void *)(w.row + 2 * stride);
    w.lab = (int *)(void *)(w.lpn + stride);
    w.skip = (unsigned char *)(w.lab + stride);
    return w;
}

static __device__ __forceinline__ int64_t load_int(const void *p, bool i64, int64_t i)
{
    return i64 ? ((const int64_t *)p)[i] : ((const int32_t *)p)[i];
}

static __device__ __forceinline__ int64_t ctc_label(const ctc_utt *u, int64_t s)
{
    return s % 2 ? load_int(u->targets, u->i64, u->b * u->S + s / 2) : u->blank;
}

/* The path may jump from s-2 to s: l'(s) is a label that differs from l'(s-2). */
static __device__ __forceinline__ bool ctc_can_skip(const ctc_utt *u, int64_t s)
{
    return s >= 2 && s % 2 == 1 && ctc_label(u, s) != ctc_label(u, s - 2);
}

/* log(exp(a) + exp(b)); -inf is the log of zero. */
static __device__ __forceinline__ double ctc_logaddexp(double a, double b)
{
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    return a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
}

/* log(e^a + e^b + e^c), -inf for log 0, as m + log(sum of e^(x - m)) with m the largest (the
 * CPU's ctc_lse3): the three exps are independent, so a step waits for one exp and one log where
 * two chained logaddexps wait for two of each. */
static __device__ __forceinline__ double ctc_lse3(double a, double b, double c)
{
    double m = a > b ? a : b;
    m = m > c ? m : c;
    if (m == -INFINITY) return m;
    return m + log(exp(a - m) + exp(b - m) + exp(c - m));
}

static __device__ ctc_utt ctc_utt_of(const ctc_ints *in, int64_t b, int64_t S, int64_t T, int64_t V, int blank)
{
    ctc_utt u;
    u.targets = in->targets;
    u.i64 = in->targets64;
    u.b = b;
    u.S = S;
    u.T = load_int(in->il, in->il64, b);
    u.L = 2 * load_int(in->tl, in->tl64, b) + 1;
    u.lp0 = b * T * V;
    u.blank = blank;
    return u;
}

/* d loss / d nll[b] for the batch reduction (dloss has the dtype of log_probs). */
static __device__ double ctc_scale(int dt, const void *dloss, int reduction, const ctc_utt *u, int64_t B)
{
    int64_t len = (u->L - 1) / 2;
    if (reduction == LU_REDUCE_NONE) return lu_dev_load(dloss, dt, u->b);
    if (reduction == LU_REDUCE_SUM) return lu_dev_load(dloss, dt, 0);
    return lu_dev_load(dloss, dt, 0) / ((double)(len > 1 ? len : 1) * (double)B);
}

/* The alpha recursion of utterance u (dir 0), or its beta recursion (dir 1): beta is alpha over
 * the reversed sequence in reversed time, state r being s = L-1-r and step tau being t = T-1-tau
 * (L is odd, so r and s have one parity and the skip rules mirror). Every thread works on the
 * states r = threadIdx.x + k * blockDim.x at every step. Row t is stored in physical order at
 * table + t * stride unless table is NULL. Returns log Z to every thread (u->T >= 1); the caller
 * synchronises before w is reused. */
static __device__ double ctc_recursion(const ctc_utt *u, int dir, int dt, const void *lp, int64_t V, ctc_work w,
                                       double *table, int64_t stride)
{
    int64_t L = u->L, T = u->T;
    for (int64_t r = threadIdx.x; r < L; r += blockDim.x) {
        int64_t s = dir ? L - 1 - r : r, t0 = dir ? T - 1 : 0, t1 = dir ? T - 2 : 1;
        int lab = (int)ctc_label(u, s);
        w.lab[r] = lab;
        w.skip[r] = dir ? s + 2 < L && ctc_can_skip(u, s + 2) : ctc_can_skip(u, s);
        double v = r < 2 ? (double)lu_dev_load(lp, dt, u->lp0 + t0 * V + lab) : -INFINITY;
        w.row[r] = v;
        if (table) table[t0 * stride + s] = v;
        w.lpn[r] = T > 1 ? lu_dev_load(lp, dt, u->lp0 + t1 * V + lab) : 0.0f;
    }
    __syncthreads();
    for (int64_t tau = 1; tau < T; tau++) {
        int64_t t = dir ? T - 1 - tau : tau, tn = dir ? t - 1 : t + 1;
        const double *prev = w.row + ((tau - 1) % 2) * stride;
        double *cur = w.row + (tau % 2) * stride;
        for (int64_t r = threadIdx.x; r < L; r += blockDim.x) {
            int lab = w.lab[r];
            float next = tau + 1 < T ? lu_dev_load(lp, dt, u->lp0 + tn * V + lab) : 0.0f;
            double v = ctc_lse3(prev[r], r >= 1 ? prev[r - 1] : -INFINITY, w.skip[r] ? prev[r - 2] : -INFINITY);
            v += (double)w.lpn[r];
            cur[r] = v;
            if (table) table[t * stride + (dir ? L - 1 - r : r)] = v;
            w.lpn[r] = next;
        }
        __syncthreads();
    }
    const double *last = w.row + ((T - 1) % 2) * stride;
    return ctc_logaddexp(last[L - 1], L >= 2 ? last[L - 2] : -INFINITY);
}

/* nll[b] = -log Z (+inf when no alignment exists). work: a ctc_work per block in global memory,
 * or NULL for one in shared memory. */
static __global__ void __launch_bounds__(CTC_THREADS)
    ctc_forward_kernel(int dt, const void *lp, ctc_ints in, int64_t B, int64_t T, int64_t V, int64_t S, int blank,
                       int ndt, void *nll, unsigned char *work, int64_t stride)
{
    ctc_work w = ctc_work_at(work ? work + (size_t)blockIdx.x * ctc_work_bytes(stride) : ctc_smem, stride);
    for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
        ctc_utt u = ctc_utt_of(&in, b, S, T, V, blank);
        double logz;
        if (u.T == 0) logz = u.L == 1 ? 0.0 : -INFINITY;
        else logz = ctc_recursion(&u, 0, dt, lp, V, w, NULL, stride);
        if (threadIdx.x == 0) lu_dev_store(nll, ndt, b, (float)-logz);
        __syncthreads(); /* the rows are reused by the next utterance */
    }
}

/* The batch loss from the saved nll, in batch order (one thread). */
static __global__ void ctc_loss_kernel(int ndt, const void *nll, const void *tl, bool tl64, int64_t B, int reduction,
                                       bool zero_infinity, void *loss)
{
    double total = 0.0;
    for (int64_t b = 0; b < B; b++) {
        double v = lu_dev_load(nll, ndt, b);
        if (zero_infinity && isinf(v)) v = 0.0;
        int64_t len = load_int(tl, tl64, b);
        if (reduction == LU_REDUCE_NONE) lu_dev_store(loss, ndt, b, (float)v);
        else if (reduction == LU_REDUCE_SUM) total += v;
        else total += v / (double)(len > 1 ? len : 1);
    }
    if (reduction == LU_REDUCE_SUM) lu_dev_store(loss, ndt, 0, (float)total);
    else if (reduction == LU_REDUCE_MEAN) lu_dev_store(loss, ndt, 0, (float)(total / (double)B));
}

/* Backward, first part, for utterance b0 + blockIdx.x (index i in the chunk's scratch): block
 * y = 0 runs alpha into alpha [i][T][stride] and stores log Z at logz[i], y = 1 runs beta into
 * beta [i][T][stride], and y = 2 fills next [i][stride] (for each label state s, odd: the next
 * state with its label, -1 at the end of the chain) and first (1 where no earlier state has it).
 * work: two ctc_works per utterance in global memory, or NULL for shared memory. Utterances
 * without a gradient are skipped here and in ctc_grad_kernel alike. */
static __global__ void __launch_bounds__(CTC_THREADS)
    ctc_tables_kernel(int dt, const void *lp, ctc_ints in, int64_t b0, int64_t B, int64_t T, int64_t V, int64_t S,
                      int blank, int reduction, const void *dloss, double *alpha, double *beta, double *logz, int *next,
                      int *first, unsigned char *work, int64_t stride)
{
    int64_t i = blockIdx.x;
    int part = (int)blockIdx.y;
    ctc_utt u = ctc_utt_of(&in, b0 + i, S, T, V, blank);
    if (u.T == 0 || ctc_scale(dt, dloss, reduction, &u, B) == 0.0) return; /* uniform over the block */
    if (part == 2) {
        /* labels differ from blank: only odd states can share a label's */
        for (int64_t s = 1 + 2 * (int64_t)threadIdx.x; s < u.L; s += 2 * (int64_t)blockDim.x) {
            int64_t k = ctc_label(&u, s), nx = -1;
            bool is_first = true;
            for (int64_t q = s + 2; q < u.L && nx < 0; q += 2)
                if (ctc_label(&u, q) == k) nx = q;
            for (int64_t q = s - 2; q >= 0 && is_first; q -= 2) is_first = ctc_label(&u, q) != k;
            next[i * stride + s] = (int)nx;
            first[i * stride + s] = is_first;
        }
        return;
    }
    ctc_work w = ctc_work_at(work ? work + (size_t)(2 * i + part) * ctc_work_bytes(stride) : ctc_smem, stride);
    double *table = (part ? beta : alpha) + (size_t)i * T * stride;
    double lz = ctc_recursion(&u, part, dt, lp, V, w, table, stride);
    if (part == 0 && threadIdx.x == 0) logz[i] = lz;
}

/* Backward, second part: one block per (utterance b0 + i, step t), item i * T + t, from the
 * tables of ctc_tables_kernel. dlp was zeroed: labels absent from l' and steps t >= the input
 * length keep 0, as do utterances without a gradient; an infeasible utterance (log Z = -inf)
 * gets NaN, or 0 under zero_infinity, on its steps. */
static __global__ void __launch_bounds__(CTC_THREADS)
    ctc_grad_kernel(int dt, const void *lp, ctc_ints in, int64_t b0, int64_t nb, int64_t B, int64_t T, int64_t V,
                    int64_t S, int blank, int reduction, bool zero_infinity, const void *dloss, void *dlp,
                    const double *alpha, const double *beta, const double *logz, const int *next, const int *first,
                    int64_t stride)
{
    for (int64_t item = blockIdx.x; item < nb * T; item += gridDim.x) {
        int64_t i = item / T, t = item % T;
        ctc_utt u = ctc_utt_of(&in, b0 + i, S, T, V, blank);
        if (t >= u.T) continue; /* uniform over the block, as every condition of this loop */
        double scale = ctc_scale(dt, dloss, reduction, &u, B);
        if (scale == 0.0) continue;
        int64_t row = u.lp0 + t * V;
        double lz = logz[i];
        if (isinf(lz)) {
            float fill = zero_infinity ? 0.0f : NAN;
            for (int64_t k = threadIdx.x; k < V; k += blockDim.x) lu_dev_store(dlp, dt, row + k, fill);
            continue;
        }
        const double *at = alpha + ((size_t)i * T + t) * stride, *bt = beta + ((size_t)i * T + t) * stride;
        const int *nx = next + i * stride, *fs = first + i * stride;
        double lp_blank = lu_dev_load(lp, dt, row + blank), occ_blank = 0.0;
        for (int64_t s = threadIdx.x; s < u.L; s += blockDim.x) {
            if (s % 2 == 0) {
                occ_blank += exp(at[s] + bt[s] - lz - lp_blank);
            } else if (fs[s]) {
                int64_t k = ctc_label(&u, s);
                double lpk = lu_dev_load(lp, dt, row + k), occ = 0.0;
                for (int64_t q = s; q >= 0; q = nx[q]) occ += exp(at[q] + bt[q] - lz - lpk);
                if (occ > 0.0) lu_dev_store(dlp, dt, row + k, (float)(-scale * occ));
            }
        }
        occ_blank = lu_dev_block_sum(occ_blank);
        if (threadIdx.x == 0 && occ_blank > 0.0) lu_dev_store(dlp, dt, row + blank, (float)(-scale * occ_blank));
    }
}

/* Checks the operands: log_probs [B, T, V] f32/bf16, targets [B, S], lengths [B] (i32 or i64). */
static lu_status ctc_check(const lu_op_call *c, const lu_tensor *lp, const lu_tensor *targets, const lu_tensor *il,
                           const lu_tensor *tl)
{
    const lu_tensor *ts[1] = {lp};
    LU_TRY(lu_cuda_check_float(c, ts, 1, lp->dtype));
    bool ok = lp->ndim == 3 && targets->ndim == 2 && targets->shape[0] == lp->shape[0] &&
              lu_tensor_numel(il) == lp->shape[0] && lu_tensor_numel(tl) == lp->shape[0];
    if (!ok) {
        char sl[LU_SHAPE_STR_MAX], st[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "ctc_loss: log_probs %s, targets %s and the lengths do not fit",
                         lu_shape_str(lp, sl, sizeof sl), lu_shape_str(targets, st, sizeof st));
    }
    const lu_tensor *ints[3] = {targets, il, tl};
    for (int i = 0; i < 3; i++)
        if (ints[i]->dtype != LU_I32 && ints[i]->dtype != LU_I64)
            return lu_errorf(LU_ERR_DTYPE, "ctc_loss: targets and lengths must be i32 or i64, got %s, %s, %s",
                             lu_dtype_name(targets->dtype), lu_dtype_name(il->dtype), lu_dtype_name(tl->dtype));
    return LU_OK;
}

static ctc_ints ctc_ints_of(const lu_tensor *targets, const lu_tensor *il, const lu_tensor *tl)
{
    ctc_ints in = {lu_tensor_data(targets), lu_tensor_data(il), lu_tensor_data(tl), targets->dtype == LU_I64,
                   il->dtype == LU_I64, tl->dtype == LU_I64};
    return in;
}

static unsigned ctc_grid(int64_t n) { return (unsigned)(n < 65535 ? n : 65535); }

/* in = [log_probs, targets, input_lengths, target_lengths], out = [loss ([] or [B]), nll [B]]. */
static lu_status ctc_forward(const lu_op_call *c)
{
    const lu_ctc_params *p = (const lu_ctc_params *)c->params;
    const lu_tensor *lp = c->in[0], *targets = c->in[1], *il = c->in[2], *tl = c->in[3];
    lu_tensor *loss = c->out[0], *nll = c->out[1];
    LU_TRY(ctc_check(c, lp, targets, il, tl));
    int64_t B = lp->shape[0], T = lp->shape[1], V = lp->shape[2], S = targets->shape[1], stride = 2 * S + 1;
    if (!lu_cuda_is_float(nll->dtype) || nll->dtype != loss->dtype || lu_tensor_numel(nll) != B ||
        lu_tensor_numel(loss) != (p->reduction == LU_REDUCE_NONE ? B : 1))
        return lu_errorf(LU_ERR_SHAPE, "ctc_loss: loss (%lld elements) and nll (%lld) do not fit a batch of %lld",
                         (long long)lu_tensor_numel(loss), (long long)lu_tensor_numel(nll), (long long)B);
    if (B > 0) {
        unsigned grid = ctc_grid(B);
        size_t wb = ctc_work_bytes(stride);
        bool shared = wb <= CTC_SMEM_BYTES;
        unsigned char *work = NULL;
        if (!shared) LU_TRY(lu_cuda_scratch_alloc((void **)&work, (size_t)grid * wb));
        ctc_forward_kernel<<<grid, CTC_THREADS, shared ? wb : 0>>>(lp->dtype, lu_tensor_data(lp),
                                                                   ctc_ints_of(targets, il, tl), B, T, V, S, p->blank,
                                                                   nll->dtype, lu_tensor_data(nll), work, stride);
        LU_CUDA_CHECK_LAUNCH();
        lu_cuda_scratch_free(work);
    }
    ctc_loss_kernel<<<1, 1>>>(nll->dtype, lu_tensor_data(nll), lu_tensor_data(tl), tl->dtype == LU_I64, B, (int)p->reduction,
                              p->zero_infinity, lu_tensor_data(loss));
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dloss, dnll, log_probs, targets, input_lengths, target_lengths, loss, nll], out = [dlp].
 * dnll is ignored: nll is a saved statistic. */
static lu_status ctc_backward(const lu_op_call *c)
{
    const lu_ctc_params *p = (const lu_ctc_params *)c->params;
    const lu_tensor *dloss = c->in[0], *lp = c->in[2], *targets = c->in[3], *il = c->in[4], *tl = c->in[5];
    lu_tensor *dlp = c->out[0];
    if (!dlp) return LU_OK;
    LU_TRY(ctc_check(c, lp, targets, il, tl));
    const lu_tensor *ts[3] = {lp, dloss, dlp};
    LU_TRY(lu_cuda_check_float(c, ts, 3, lp->dtype));
    int64_t B = lp->shape[0], T = lp->shape[1], V = lp->shape[2], S = targets->shape[1], stride = 2 * S + 1;
    if (lu_tensor_numel(dlp) == 0) return LU_OK;
    LU_TRY(lu_cuda_zero(dlp));
    if (!dloss) return LU_OK;
    /* Per utterance of a chunk: alpha and beta [T][stride] and log Z (doubles), two ctc_works
     * unless they are in shared memory, next and first [stride] (ints). */
    size_t table = (size_t)T * (size_t)stride, wb = ctc_work_bytes(stride);
    bool shared = wb <= CTC_SMEM_BYTES;
    size_t per_utt = (2 * table + 1) * sizeof(double) + (shared ? 0 : 2 * wb) + 2 * (size_t)stride * sizeof(int);
    int64_t chunk = (int64_t)(CTC_TABLE_BYTES / per_utt);
    chunk = chunk < 1 ? 1 : chunk < B ? chunk : B;
    chunk = chunk < 65535 ? chunk : 65535;
    double *alpha;
    LU_TRY(lu_cuda_scratch_alloc((void **)&alpha, (size_t)chunk * per_utt));
    double *beta = alpha + (size_t)chunk * table, *logz = beta + (size_t)chunk * table;
    unsigned char *work = shared ? NULL : (unsigned char *)(void *)(logz + chunk);
    int *next = (int *)(void *)((unsigned char *)(void *)(logz + chunk) + (shared ? 0 : (size_t)chunk * 2 * wb));
    int *first = next + (size_t)chunk * stride;
    ctc_ints in = ctc_ints_of(targets, il, tl);
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
        int64_t nb = B - b0 < chunk ? B - b0 : chunk;
        ctc_tables_kernel<<<dim3((unsigned)nb, 3), CTC_THREADS, shared ? wb : 0>>>(
            lp->dtype, lu_tensor_data(lp), in, b0, B, T, V, S, p->blank, (int)p->reduction, lu_tensor_data(dloss),
            alpha, beta, logz, next, first, work, stride);
        LU_CUDA_CHECK_LAUNCH();
        ctc_grad_kernel<<<ctc_grid(nb * T), CTC_THREADS>>>(lp->dtype, lu_tensor_data(lp), in, b0, nb, B, T, V, S,
                                                           p->blank, (int)p->reduction, p->zero_infinity,
                                                           lu_tensor_data(dloss), lu_tensor_data(dlp), alpha, beta,
                                                           logz, next, first, stride);
        LU_CUDA_CHECK_LAUNCH();
    }
    lu_cuda_scratch_free(alpha);
    return LU_OK;
}

extern "C" void lu_cuda_register_ctc(lu_backend *b)
{
    b->forward[LU_OP_CTC_LOSS] = ctc_forward;
    b->backward[LU_OP_CTC_LOSS] = ctc_backward;
}
