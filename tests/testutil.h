/* testutil.h - the shared helpers of luthier's Criterion tests: random tensors, the one
 * tensor-compare assertion, and the finite-difference gradient check.
 *
 * Gradient checks run in float64: the inputs are f64 tensors, the CPU kernels compute in f64,
 * the loss is a fixed random projection sum(y * r) accumulated in double, and each checked
 * element gets a central difference (L(x+h) - L(x-h)) / 2h. */
#ifndef LU_TESTUTIL_H
#define LU_TESTUTIL_H

#include <criterion/criterion.h>
#include <cjson/cJSON.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/rng.h"

/* Uniform [lo, hi) tensor on the CPU; seed picks the stream. */
lu_tensor *tu_rand(lu_dtype dt, int ndim, const int64_t *shape, double lo, double hi, uint64_t seed);
/* Integer tensor with values in [0, hi). */
lu_tensor *tu_randint(lu_dtype dt, int ndim, const int64_t *shape, int64_t hi, uint64_t seed);
/* Host copy of a tensor as doubles (caller frees). */
double *tu_to_doubles(const lu_tensor *t);
/* Asserts |got - ref| <= atol + rtol * |ref| elementwise (NaN/Inf must match), naming `what`,
 * the first failing index and both values. */
void tu_assert_close(const lu_tensor *got, const double *ref, int64_t n, double atol, double rtol, const char *what);
void tu_assert_tensors_close(const lu_tensor *got, const lu_tensor *ref, double atol, double rtol, const char *what);
/* Tensor `name` of a safetensors fixture file, converted to dt; a missing file or tensor fails
 * the test with the reason. */
lu_tensor *tu_load_fixture(const char *file, const char *name, lu_dtype dt);
/* A JSON fixture or output file whose top level is an object; failing the test with the reason
 * otherwise (free it with cJSON_Delete). */
cJSON *tu_read_json(const char *path);
/* Runs a command-line entry point (luthier's verbs) with stdout in a temporary file; its first
 * cap - 1 bytes go to out, NUL-terminated (out NULL: discarded). Returns fn's exit code. */
int tu_run_captured(int (*fn)(int, char **), int argc, char **argv, char *out, size_t cap);
/* The same with file descriptor 1 redirected (what the verb writes to it any way), the whole
 * output returned (free it); *rc gets fn's exit code. */
char *tu_run_captured_text(int (*fn)(int, char **), int argc, const char **argv, int *rc);
/* The features of tests/fixtures/asr (prepare-speech) in dir/feats.h5 and the tiny ASR config
 * the trainer tests share in dir/tiny.yaml: an EE-Conformer of d 16, 2 heads, 3 exits x 1 layer,
 * kernel 3, dropout 0.1, SpecAugment, max_steps steps logged each, a checkpoint every 3. */
void tu_write_tiny_asr_config(const char *dir, int max_steps);
/* Writes dir/name with printf-style contents (a config, a small data file); failing the test when
 * it cannot. */
void tu_write_file(const char *dir, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* tests/fixtures/sft/chat.jsonl prepared for the sft task in dir/data (the small Qwen2 tokenizer,
 * sequences of 96 tokens, a quarter held out) and the tiny sft config the trainer tests share in
 * dir/tiny.yaml: a 1-layer decoder of width 32, 2 packed sequences per micro-batch, max_steps
 * steps logged each, a checkpoint every 3. */
void tu_write_tiny_sft_config(const char *dir, int max_steps);
/* A small French text in dir/text.txt and the tiny bytelm config the trainer tests share in
 * dir/tiny.yaml: a 1-layer Qwen3-style model of width 16, 6 steps logged every 2, a checkpoint
 * every 3 (no BatchNorm: training is fully deterministic). */
void tu_write_tiny_bytelm_config(const char *dir);
/* The values of `key` in the `event` lines of a metrics.jsonl, in order (at most max; more, a
 * line that is not JSON or an event line without a numeric key fails the test); returns the count. */
int tu_read_metric(const char *path, const char *event, const char *key, double *values, int max);
/* Asserts a call returned NULL/failed and the error message contains `needle`. */
void tu_assert_error_contains(const char *needle);

/* The function under test: builds the output from the inputs (ops only). */
typedef lu_tensor *(*tu_fn)(lu_tensor **in, void *ctx);
/* Checks d sum(f(in) * r) / d in[i] for every float input with check[i] set, against central
 * differences with step h; at most max_elems elements per input are checked (spread evenly).
 * Inputs must be f64 CPU tensors. */
void tu_gradcheck(tu_fn f, lu_tensor **in, int n_in, const bool *check, void *ctx, double h, double atol,
                  double rtol, int64_t max_elems, const char *what);

#endif
