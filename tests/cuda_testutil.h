/* cuda_testutil.h - what the GPU-vs-CPU tests share (test_cuda*.c), as in test_cuda.c: the same
 * op call runs on both backends with the same inputs, and each output is compared by the
 * normalised error sum((a - b)^2) / sum(b^2), NaN/Inf mismatches failing. bf16 kernels run on
 * the bf16-rounded inputs against the CPU in f32 on the same values. CUDA is first touched inside
 * a test body: Criterion forks each test, and a CUDA context does not survive a fork. Only for
 * builds with LUTHIER_HAVE_CUDA. */
#ifndef LU_CUDA_TESTUTIL_H
#define LU_CUDA_TESTUTIL_H

#include <math.h>
#include <string.h>

#include "core/backend.h"
#include "cuda/cuda_backend.h"
#include "testutil.h"

#define TOL_F32 1e-7
#define TOL_BF16 1e-4

static inline void require_gpu(void)
{
    if (!lu_device_available(LU_CUDA)) cr_skip_test("no CUDA GPU: %s", lu_cuda_unavailable_reason());
}

/* The third pass of scripts/test.sh runs the GPU op suites on the emulator's race checker (a
 * LUTHIER_EMU_RACECHECK build: LU_TEST_RACECHECK), for the kernels' shared-memory accesses. A test
 * whose kernels the pass runs in other tests, and which only runs them on larger inputs or a
 * second time, skips there, naming those tests: the checker would see nothing new in it. */
#ifdef LU_TEST_RACECHECK
#define RACE_CHECKER_PASS true
#else
#define RACE_CHECKER_PASS false
#endif

/* Kernel variants (switched by environment variables) that a test runs in f16 and in bf16, which
 * differ in their conversions alone and not in what they read and write where, run in bf16 alone
 * on the CPU emulator (its passes under ASan and the race checker), in both on a GPU; the default
 * kernels run in both everywhere. */
#ifdef LU_CUDA_EMU
#define ON_EMULATOR true
#else
#define ON_EMULATOR false
#endif

static inline void skip_under_race_checker(const char *covered_by)
{
    if (RACE_CHECKER_PASS) cr_skip_test("race checker pass: its kernels run in %s", covered_by);
}

/* A test of the shapes that a GPU run times, whose kernels and code paths smaller shapes of other
 * tests take: on a GPU alone. */
static inline void skip_on_emulator(const char *covered_by)
{
    if (ON_EMULATOR) cr_skip_test("CUDA emulator: its kernels and paths run in %s", covered_by);
}

/* Asserts sum((got - ref)^2) / sum(ref^2) < tol; non-finite reference values must be matched
 * exactly (NaN by NaN, +-Inf by the same infinity). */
static inline void assert_nmse(const lu_tensor *got, const lu_tensor *ref, double tol, const char *what)
{
    cr_assert(got && ref, "%s: missing tensor", what);
    cr_assert(lu_tensor_same_shape(got, ref), "%s: shapes differ", what);
    int64_t n = lu_tensor_numel(ref);
    double *g = tu_to_doubles(got), *r = tu_to_doubles(ref), num = 0, den = 0, worst = -1;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        bool ok = isfinite(r[i]) ? isfinite(g[i]) : (isnan(r[i]) ? isnan(g[i]) : g[i] == r[i]);
        if (!ok) {
            double gi = g[i], ri = r[i];
            free(g);
            free(r);
            cr_assert_fail("%s: element %lld is %g on cuda, %g on cpu", what, (long long)i, gi, ri);
        }
        if (isfinite(r[i])) {
            double e = (g[i] - r[i]) * (g[i] - r[i]);
            num += e;
            den += r[i] * r[i];
            if (e > worst) {
                worst = e;
                at = i;
            }
        }
    }
    double err = den > 0 ? num / den : num, g_at = n ? g[at] : 0, r_at = n ? r[at] : 0;
    free(g);
    free(r);
    /* The worst element says where to look: its flat index, and the shape to unravel it. */
    char shape[LU_SHAPE_STR_MAX];
    cr_assert(err < tol, "%s: normalised error %.3g, tolerance %.3g; worst element %lld of %s: %g on cuda, %g on cpu",
              what, err, tol, (long long)at, lu_shape_str(ref, shape, sizeof shape), g_at, r_at);
}

/* Rounds every element of an f32 tensor's storage to bf16 in place. */
static inline void round_to_bf16(lu_tensor *t)
{
    if (!t || t->dtype != LU_F32) return;
    float *d = t->storage->data;
    size_t n = t->storage->nbytes / sizeof(float);
    for (size_t i = 0; i < n; i++) d[i] = lu_bf16_to_f32(lu_f32_to_bf16(d[i]));
}

/* A device copy of t with the same offset, shape and strides (its whole storage is copied), float
 * data converted to float_dt. */
static inline lu_tensor *to_device(const lu_tensor *t, lu_dtype float_dt)
{
    if (!t) return NULL;
    int64_t n = (int64_t)(t->storage->nbytes / lu_dtype_size(t->dtype));
    lu_tensor *base = lu_tensor_wrap(t->dtype, 1, &n, LU_CPU, t->storage->data, NULL, NULL);
    cr_assert(base, "%s", lu_error_message());
    lu_tensor *dev = lu_tensor_convert(base, lu_dtype_is_float(t->dtype) ? float_dt : t->dtype, LU_CUDA);
    cr_assert(dev, "upload: %s", lu_error_message());
    lu_tensor *v = lu_detach(dev);
    v->ndim = t->ndim;
    memcpy(v->shape, t->shape, sizeof v->shape);
    memcpy(v->stride, t->stride, sizeof v->stride);
    v->offset = t->offset;
    lu_tensor_release(dev);
    lu_tensor_release(base);
    return v;
}

static inline lu_status run_kernel(lu_device dev, bool backward, lu_op op, lu_tensor **in, int n_in, lu_tensor **out,
                                   int n_out, const void *params)
{
    lu_backend *b = lu_backend_get(dev);
    cr_assert(b, "%s", lu_error_message());
    lu_kernel k = backward ? b->backward[op] : b->forward[op];
    cr_assert(k, "the %s backend has no %s %s kernel", b->name, lu_op_name(op), backward ? "backward" : "forward");
    lu_op_call call = {.op = op, .n_in = n_in, .n_out = n_out, .params = params};
    memcpy(call.in, in, (size_t)n_in * sizeof *in);
    memcpy(call.out, out, (size_t)n_out * sizeof *out);
    lu_status s = k(&call);
    if (s == LU_OK) s = b->synchronize();
    return s;
}

/* One kernel call: CPU tensors in/out (NULL slots allowed; outputs preallocated and, for
 * in-place ops, initialised). The device gets copies, float tensors as dev_dt except those whose
 * bit is set in keep_f32_in/out; both run; outputs, and inputs too when `inplace`, are compared
 * (exactly when tol is 0). */
typedef struct kcase {
    lu_op op;
    bool backward, inplace;
    const void *params;
    lu_tensor *in[LU_MAX_IO];
    int n_in;
    lu_tensor *out[LU_MAX_IO];
    int n_out;
    lu_dtype dev_dt;
    unsigned keep_f32_in, keep_f32_out;
    double tol;
} kcase;

static inline void assert_matches(const lu_tensor *got, const lu_tensor *ref, double tol, const char *what)
{
    if (tol == 0) tu_assert_tensors_close(got, ref, 0, 0, what);
    else assert_nmse(got, ref, tol, what);
}

static inline void check_case(kcase *k, const char *what)
{
    if (k->dev_dt == LU_BF16) {
        for (int i = 0; i < k->n_in; i++) round_to_bf16(k->in[i]);
        for (int j = 0; j < k->n_out; j++) round_to_bf16(k->out[j]);
    }
    lu_tensor *din[LU_MAX_IO] = {0}, *dout[LU_MAX_IO] = {0};
    for (int i = 0; i < k->n_in; i++) din[i] = to_device(k->in[i], k->keep_f32_in >> i & 1 ? LU_F32 : k->dev_dt);
    for (int j = 0; j < k->n_out; j++) dout[j] = to_device(k->out[j], k->keep_f32_out >> j & 1 ? LU_F32 : k->dev_dt);
    cr_assert_eq(run_kernel(LU_CPU, k->backward, k->op, k->in, k->n_in, k->out, k->n_out, k->params), LU_OK,
                 "%s on cpu: %s", what, lu_error_message());
    cr_assert_eq(run_kernel(LU_CUDA, k->backward, k->op, din, k->n_in, dout, k->n_out, k->params), LU_OK,
                 "%s on cuda: %s", what, lu_error_message());
    char name[160];
    for (int j = 0; j < k->n_out; j++) {
        if (!k->out[j]) continue;
        snprintf(name, sizeof name, "%s, output %d", what, j);
        assert_matches(dout[j], k->out[j], k->tol, name);
    }
    for (int i = 0; k->inplace && i < k->n_in; i++) {
        if (!k->in[i]) continue;
        snprintf(name, sizeof name, "%s, updated input %d", what, i);
        assert_matches(din[i], k->in[i], k->tol, name);
    }
    for (int i = 0; i < k->n_in; i++) lu_tensor_release(din[i]);
    for (int j = 0; j < k->n_out; j++) lu_tensor_release(dout[j]);
}

static inline lu_tensor *empty(lu_dtype dt, int ndim, const int64_t *shape)
{
    lu_tensor *t = lu_tensor_empty(dt, ndim, shape, LU_CPU);
    cr_assert(t, "%s", lu_error_message());
    return t;
}

/* Runs the CPU forward of op to get the outputs a backward case needs. */
static inline void cpu_forward(lu_op op, lu_tensor **in, int n_in, lu_tensor **out, int n_out, const void *params)
{
    cr_assert_eq(run_kernel(LU_CPU, false, op, in, n_in, out, n_out, params), LU_OK, "cpu %s: %s", lu_op_name(op),
                 lu_error_message());
}

static inline void release_all(lu_tensor **ts, int n)
{
    for (int i = 0; i < n; i++) lu_tensor_release(ts[i]);
}

/* Runs the device side of k twice on the same inputs and asserts bit-identical outputs. */
static inline void check_deterministic(kcase *k, const char *what)
{
    lu_tensor *din[LU_MAX_IO] = {0}, *d1[LU_MAX_IO] = {0}, *d2[LU_MAX_IO] = {0};
    for (int i = 0; i < k->n_in; i++) din[i] = to_device(k->in[i], k->keep_f32_in >> i & 1 ? LU_F32 : k->dev_dt);
    for (int j = 0; j < k->n_out; j++) {
        d1[j] = to_device(k->out[j], k->keep_f32_out >> j & 1 ? LU_F32 : k->dev_dt);
        d2[j] = to_device(k->out[j], k->keep_f32_out >> j & 1 ? LU_F32 : k->dev_dt);
    }
    cr_assert_eq(run_kernel(LU_CUDA, k->backward, k->op, din, k->n_in, d1, k->n_out, k->params), LU_OK, "%s: %s",
                 what, lu_error_message());
    cr_assert_eq(run_kernel(LU_CUDA, k->backward, k->op, din, k->n_in, d2, k->n_out, k->params), LU_OK, "%s: %s",
                 what, lu_error_message());
    char name[200];
    for (int j = 0; j < k->n_out; j++) {
        if (!d1[j]) continue;
        snprintf(name, sizeof name, "%s, output %d run twice", what, j);
        tu_assert_tensors_close(d2[j], d1[j], 0, 0, name);
    }
    release_all(din, k->n_in);
    release_all(d1, k->n_out);
    release_all(d2, k->n_out);
}

#endif
