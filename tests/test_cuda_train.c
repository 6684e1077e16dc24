/* test_cuda_train.c - `luthier train` with train.device cuda against the same run on the CPU:
 * the parameter store moved to the GPU in place (lu_params_to_device), then the tiny ASR config
 * of test_asr_task.c (EE-Conformer with dropout and SpecAugment, on the espeak-ng fixture) and the
 * tiny SFT config of test_sft.c (from-scratch decoder on packed chats, gradient clipping) trained
 * in-process for six steps on each device. Same seed, same data order and the same Philox dropout
 * masks on both devices, so every step's logged loss agrees to a relative 1e-4 (the GPU sums in
 * another order; the gradient norm is an f32 sum there, a double one on the CPU). A GPU run stopped
 * after three steps and resumed logs the same losses, bit for bit, as one run straight through.
 * ScaledAdam trains there too; a CPU-only task is refused at the start, naming train.device. The
 * sft suite also runs mixed precision and the recomputed layers and chunked loss.
 *
 * Without a GPU (or without LUTHIER_CUDA) every test skips and says why; CUDA is first touched
 * inside a test body (Criterion forks each test). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#ifdef LUTHIER_HAVE_CUDA

#include <criterion/redirect.h>

#include "core/params.h"
#include "cuda_testutil.h"
#include "experiments/runner/cli.h"
#include "experiments/runner/trainer.h"
#include "models/sft_data.h"
#include "models/tokenizer.h"

#define STEPS 6
#define TOL_LOSS 1e-4

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/lu_cuda_train_XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

/* The fixture's features and the trainer tests' tiny config (tu_write_tiny_asr_config). */
static void asr_setup(void)
{
    make_dir();
    tu_write_tiny_asr_config(dir, STEPS);
}

/* The tiny sft config of the trainer tests (tu_write_tiny_sft_config): French chats packed into
 * 96-token sequences, a quarter held out. */
static void sft_setup(void)
{
    make_dir();
    tu_write_tiny_sft_config(dir, STEPS);
}

/* Trains dir/tiny.yaml into dir/out on `device`, with `extra` overrides (NULL-terminated). */
static lu_status train(const char *out, const char *device, int64_t stop_after, bool resume, char **extra)
{
    char cfg[128], outp[128], dev[64];
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    snprintf(outp, sizeof outp, "%s/%s", dir, out);
    snprintf(dev, sizeof dev, "train.device=%s", device);
    char *over[8] = {dev};
    int n = 1;
    for (; extra && extra[n - 1] && n < 8; n++) over[n] = extra[n - 1];
    lu_run_options o = {.config_path = cfg, .out_dir = outp, .stop_after = stop_after, .resume = resume,
                        .n_overrides = n, .overrides = over};
    return lu_train_run(&o);
}

/* The "loss" of every train line of dir/run/metrics.jsonl, in order (log_every 1: one per step). */
static int read_losses(const char *run, double *loss, int max)
{
    char path[160];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", dir, run);
    return tu_read_metric(path, "train", "loss", loss, max);
}

/* Every step's loss on cuda within TOL_LOSS (relative) of the CPU's. */
static void assert_losses_match_cpu(const char *task)
{
    double cpu[STEPS + 1], gpu[STEPS + 1];
    cr_assert_eq(read_losses("cpu", cpu, STEPS + 1), STEPS, "%s: cpu run logged another number of steps", task);
    cr_assert_eq(read_losses("cuda", gpu, STEPS + 1), STEPS, "%s: cuda run logged another number of steps", task);
    for (int i = 0; i < STEPS; i++) {
        cr_assert(isfinite(cpu[i]) && isfinite(gpu[i]), "%s step %d: loss %g on cuda, %g on cpu", task, i + 1, gpu[i], cpu[i]);
        cr_assert(fabs(gpu[i] - cpu[i]) <= TOL_LOSS * fabs(cpu[i]), "%s step %d: loss %.9g on cuda, %.9g on cpu (relative %.3g)",
                  task, i + 1, gpu[i], cpu[i], fabs(gpu[i] - cpu[i]) / fabs(cpu[i]));
    }
}

/* A cuda run stopped after 3 steps and resumed logs the straight run's losses exactly. */
static void assert_resume_is_exact(const char *task)
{
    cr_assert_eq(train("straight", "cuda", 0, false, NULL), LU_OK, "%s: %s", task, lu_error_message());
    cr_assert_eq(train("split", "cuda", 3, false, NULL), LU_OK, "%s: %s", task, lu_error_message());
    cr_assert_eq(train("split", "cuda", 0, true, NULL), LU_OK, "%s resume: %s", task, lu_error_message());
    double a[STEPS + 1], b[STEPS + 1];
    cr_assert_eq(read_losses("straight", a, STEPS + 1), STEPS);
    cr_assert_eq(read_losses("split", b, STEPS + 1), STEPS, "%s: the resumed run logged another number of steps", task);
    for (int i = 0; i < STEPS; i++)
        cr_assert(a[i] == b[i], "%s step %d: loss %.17g resumed, %.17g straight through", task, i + 1, b[i], a[i]);
}

/* ---- the parameter store ---- */

Test(cuda_train, params_to_device_moves_values_and_keeps_every_tensor_pointer)
{
    require_gpu();
    lu_params *p = lu_params_new(LU_CPU);
    lu_tensor *w = lu_params_add(p, "w", LU_F32, LU_SHAPE(3, 4), true);
    lu_tensor *n = lu_params_add(p, "bn.count", LU_I64, LU_SHAPE(2), false);
    lu_tensor *v = lu_params_add(p, "v", LU_F32, LU_SHAPE(5), true);
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    lu_tensor *wg = w->grad, *vg = v->grad;
    float *f = lu_tensor_data(p->flat[LU_F32]), *g = lu_tensor_data(p->flat_grad[LU_F32]);
    for (int i = 0; i < 17; i++) f[i] = 0.5f * (float)i, g[i] = -0.25f * (float)i;
    ((int64_t *)lu_tensor_data(n))[1] = 9;
    /* Host copies of what the store holds, to compare with after each move. */
    lu_tensor *hv = lu_tensor_empty(LU_F32, LU_SHAPE(17), LU_CPU), *hg = lu_tensor_empty(LU_F32, LU_SHAPE(17), LU_CPU);
    lu_tensor *hn = lu_tensor_empty(LU_I64, LU_SHAPE(2), LU_CPU);
    cr_assert(hv && hg && hn && !lu_tensor_copy(hv, p->flat[LU_F32]) && !lu_tensor_copy(hg, p->flat_grad[LU_F32]) &&
              !lu_tensor_copy(hn, n), "%s", lu_error_message());

    for (int round = 0; round < 2; round++) {
        lu_device dev = round ? LU_CPU : LU_CUDA;
        cr_assert_eq(lu_params_to_device(p, dev), LU_OK, "to %s: %s", lu_device_name(dev), lu_error_message());
        cr_assert_eq(p->device, dev);
        cr_assert(lu_params_get(p, "w") == w && lu_params_get(p, "v") == v && lu_params_get(p, "bn.count") == n,
                  "the declared tensors are the same structs");
        cr_assert(w->grad == wg && v->grad == vg, "the gradients are the same structs");
        cr_assert(w->storage == p->flat[LU_F32]->storage && v->storage == w->storage && wg->storage == p->flat_grad[LU_F32]->storage,
                  "every tensor points into the new buffers");
        cr_assert_eq(lu_tensor_device(w), dev);
        cr_assert_eq(lu_tensor_device(vg), dev);
        cr_assert_eq(lu_tensor_device(n), dev);
        cr_assert_eq(v->offset, 12);
        cr_assert_eq(vg->offset, 12);
        cr_assert_eq(p->flat[LU_F32]->storage->refcount, 3, "the buffer and its two tensors hold the storage");
        cr_assert_eq(p->flat_grad[LU_F32]->storage->refcount, 3);
        tu_assert_tensors_close(p->flat[LU_F32], hv, 0, 0, "values after the move");
        tu_assert_tensors_close(p->flat_grad[LU_F32], hg, 0, 0, "gradients after the move");
        tu_assert_tensors_close(n, hn, 0, 0, "the i64 buffer after the move");
    }
    release_all((lu_tensor *[]){hv, hg, hn}, 3);
    lu_params_free(p);
}

/* ---- ASR ---- */

TestSuite(cuda_train_asr, .init = asr_setup, .fini = teardown, .timeout = 300);

Test(cuda_train_asr, tiny_conformer_losses_on_cuda_match_the_cpu)
{
    require_gpu();
    cr_redirect_stdout();
    cr_assert_eq(train("cpu", "cpu", 0, false, NULL), LU_OK, "cpu: %s", lu_error_message());
    cr_assert_eq(train("cuda", "cuda", 0, false, NULL), LU_OK, "cuda: %s", lu_error_message());
    assert_losses_match_cpu("asr");
}

Test(cuda_train_asr, resumed_cuda_run_continues_with_the_same_losses)
{
    require_gpu();
    cr_redirect_stdout();
    assert_resume_is_exact("asr");
}

Test(cuda_train_asr, scaled_adam_losses_on_cuda_match_the_cpu)
{
    require_gpu();
    cr_redirect_stdout();
    /* STEPS crosses a size-update step (every 4th) of ScaledAdam's parameter-scale learning. */
    char *extra[] = {"optim.kind=scaled_adam", NULL};
    cr_assert_eq(train("cpu", "cpu", 0, false, extra), LU_OK, "cpu: %s", lu_error_message());
    cr_assert_eq(train("cuda", "cuda", 0, false, extra), LU_OK, "cuda: %s", lu_error_message());
    assert_losses_match_cpu("asr, scaled_adam");
}

Test(cuda_train_asr, cpu_only_task_on_cuda_is_refused_at_start)
{
    require_gpu();
    char path[128];
    snprintf(path, sizeof path, "%s/bytelm.yaml", dir);
    tu_write_file(dir, "bytelm.yaml", "task: bytelm\ndata:\n  text_file: /nonexistent.txt\ntrain:\n  device: cuda\n");
    lu_run_options o = {.config_path = path};
    cr_assert_neq(lu_train_run(&o), LU_OK);
    tu_assert_error_contains("train.device cuda: task bytelm runs on the cpu only");
}

/* ---- SFT ---- */

TestSuite(cuda_train_sft, .init = sft_setup, .fini = teardown, .timeout = 300);

Test(cuda_train_sft, tiny_decoder_losses_on_cuda_match_the_cpu)
{
    require_gpu();
    cr_redirect_stdout();
    cr_assert_eq(train("cpu", "cpu", 0, false, NULL), LU_OK, "cpu: %s", lu_error_message());
    cr_assert_eq(train("cuda", "cuda", 0, false, NULL), LU_OK, "cuda: %s", lu_error_message());
    assert_losses_match_cpu("sft");
    char path[160];
    snprintf(path, sizeof path, "%s/cuda/model/model.safetensors", dir);
    cr_assert_eq(access(path, R_OK), 0, "the cuda run exported its model to %s", path);
}

/* Mixed precision: bf16 compute on the f32 masters follows the f32 run within bf16 rounding. */
Test(cuda_train_sft, bf16_compute_losses_follow_the_f32_run)
{
    require_gpu();
    cr_redirect_stdout();
    char *bf16[] = {"model.compute_dtype=bf16", NULL};
    cr_assert_eq(train("cpu", "cpu", 0, false, NULL), LU_OK, "cpu: %s", lu_error_message());
    cr_assert_eq(train("cuda", "cuda", 0, false, bf16), LU_OK, "cuda bf16: %s", lu_error_message());
    double f32[STEPS + 1], mixed[STEPS + 1];
    cr_assert_eq(read_losses("cpu", f32, STEPS + 1), STEPS);
    cr_assert_eq(read_losses("cuda", mixed, STEPS + 1), STEPS);
    for (int i = 0; i < STEPS; i++)
        cr_assert(fabs(mixed[i] - f32[i]) <= 2e-2 * fabs(f32[i]), "step %d: loss %.6g in bf16, %.6g in f32", i + 1,
                  mixed[i], f32[i]);
}

/* Gradient checkpointing and the chunked loss on the GPU (scratch arena on the device, the cast
 * bf16 weights read by the recomputation): the first step's loss is the plain run's to f32
 * rounding (same kernels on the same values; only the chunk sums differ in order), the later
 * ones within bf16 rounding (the tied embedding's bf16 gradient adds the chunks' parts one by
 * one, rounding each time, where the plain run has one product). */
Test(cuda_train_sft, recomputed_layers_and_chunked_loss_match_the_plain_cuda_run)
{
    require_gpu();
    cr_redirect_stdout();
    char *bf16[] = {"model.compute_dtype=bf16", NULL};
    char *recomputed[] = {"model.compute_dtype=bf16", "model.gradient_checkpointing=true",
                          "model.loss_chunk_tokens=37", NULL};
    cr_assert_eq(train("plain", "cuda", 0, false, bf16), LU_OK, "cuda plain: %s", lu_error_message());
    cr_assert_eq(train("recomputed", "cuda", 0, false, recomputed), LU_OK, "cuda recomputed: %s", lu_error_message());
    double plain[STEPS + 1], rec[STEPS + 1];
    cr_assert_eq(read_losses("plain", plain, STEPS + 1), STEPS);
    cr_assert_eq(read_losses("recomputed", rec, STEPS + 1), STEPS);
    for (int i = 0; i < STEPS; i++) {
        double tol = i == 0 ? 1e-5 : 2e-2;
        cr_assert(fabs(rec[i] - plain[i]) <= tol * fabs(plain[i]), "step %d: loss %.9g recomputed, %.9g plain", i + 1,
                  rec[i], plain[i]);
    }
}

Test(cuda_train_sft, resumed_cuda_run_continues_with_the_same_losses)
{
    require_gpu();
    cr_redirect_stdout();
    assert_resume_is_exact("sft");
}

#else

Test(cuda_train, skipped_without_cuda) { cr_skip_test("built without LUTHIER_CUDA"); }

#endif
