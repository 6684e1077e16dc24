/* test_checkpoint.c - HDF5 checkpoints: bit-exact round trips of parameters, optimiser state and
 * meta, every validation error, atomic saves under simulated failures, and a bit-exact resume
 * of a small training run. */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/checkpoint.h"
#include "core/schedule.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------------------------- */

static char dir[64];
static char path[128];

static void make_dir(void)
{
    strcpy(dir, "/tmp/lu_ckpt_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/run.h5", dir);
}

/* The directory holds plain files and at most empty directories. */
static void remove_dir(void)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[384];
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            remove(p);
        }
    }
    if (d) closedir(d);
    remove(dir);
}

TestSuite(checkpoint, .init = make_dir, .fini = remove_dir);

static void fill_random(lu_tensor *t, uint64_t seed)
{
    lu_tensor *r = lu_dtype_is_float(t->dtype) ? tu_rand(t->dtype, t->ndim, t->shape, -2, 2, seed)
                                               : tu_randint(t->dtype, t->ndim, t->shape, 1000000, seed);
    cr_assert_eq(lu_tensor_copy(t, r), LU_OK);
    lu_tensor_release(r);
}

/* A store with every storage kind a checkpoint must carry; `seed` picks the values. */
static lu_params *model_store(uint64_t seed)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "enc/layers.0.w", LU_F32, LU_SHAPE(3, 5), true);
    lu_params_add(p, "enc.emb%1", LU_BF16, LU_SHAPE(4, 3), true);
    lu_params_add(p, "pos_ids", LU_I64, LU_SHAPE(6), false);
    lu_params_add(p, "gain", LU_F64, LU_SHAPE(2), true);
    lu_params_add(p, "mask", LU_U8, LU_SHAPE(2, 2), false);
    lu_params_add(p, "temperature", LU_F32, 0, (int64_t[]){1}, true);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    for (int i = 0; i < p->n; i++) fill_random(p->items[i].t, seed * 17 + (uint64_t)i);
    return p;
}

static void assert_stores_equal(const lu_params *a, const lu_params *b, const char *what)
{
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        cr_assert_eq(!a->flat[d], !b->flat[d]);
        if (!a->flat[d]) continue;
        cr_assert(!memcmp(lu_tensor_data(a->flat[d]), lu_tensor_data(b->flat[d]), lu_tensor_nbytes(a->flat[d])),
                  "%s: %s buffers differ", what, lu_dtype_name((lu_dtype)d));
    }
}

static void save_ok(lu_params *p, lu_optim *o, const lu_ckpt_meta *m)
{
    cr_assert_eq(lu_ckpt_save(path, p, o, m), LU_OK, "%s", lu_error_message());
}

/* ---- round trips ---------------------------------------------------------------------------- */

Test(checkpoint, params_round_trip_bit_exactly_for_every_dtype)
{
    lu_params *a = model_store(1), *b = model_store(2);
    /* A bf16 NaN with a payload must come back as the same bits. */
    ((uint16_t *)lu_tensor_data(lu_params_get(a, "enc.emb%1")))[5] = 0x7fc3;
    save_ok(a, NULL, NULL);
    cr_assert_eq(lu_ckpt_load(path, b, NULL, NULL), LU_OK, "%s", lu_error_message());
    assert_stores_equal(a, b, "params");
    lu_params_free(a);
    lu_params_free(b);
}

Test(checkpoint, meta_and_long_config_text_round_trip)
{
    lu_params *p = model_store(1);
    size_t n = 200000;
    char *config = malloc(n + 1);
    for (size_t i = 0; i < n; i++) config[i] = "model: zipformer # é\n"[i % 22];
    config[n] = 0;
    lu_ckpt_meta m = {.step = 123456789012LL, .epoch = 7, .data_position = -3, .rng_seed = UINT64_MAX - 5,
                      .config_text = config};
    save_ok(p, NULL, &m);
    lu_ckpt_meta got = {.config_text = "kept"};
    cr_assert_eq(lu_ckpt_load(path, p, NULL, &got), LU_OK, "%s", lu_error_message());
    cr_assert_eq(got.step, m.step);
    cr_assert_eq(got.epoch, 7);
    cr_assert_eq(got.data_position, -3);
    cr_assert_eq(got.rng_seed, UINT64_MAX - 5);
    cr_assert_str_eq(got.config_text, "kept");
    cr_assert_not_null(got.loaded_config_text);
    cr_assert_str_eq(got.loaded_config_text, config);
    free(got.loaded_config_text);
    free(config);
    lu_params_free(p);
}

Test(checkpoint, missing_config_loads_as_null)
{
    lu_params *p = model_store(1);
    lu_ckpt_meta m = {.step = 4};
    save_ok(p, NULL, &m);
    lu_ckpt_meta got;
    memset(&got, 0xff, sizeof got);
    cr_assert_eq(lu_ckpt_load(path, p, NULL, &got), LU_OK);
    cr_assert_null(got.loaded_config_text);
    cr_assert_eq(got.step, 4);
    lu_params_free(p);
}

static lu_optim *adamw_for(lu_params *p)
{
    lu_optim_config c;
    lu_optim_config_defaults(&c, LU_OPTIM_ADAMW);
    lu_optim *o = lu_optim_new(p, &c);
    cr_assert_not_null(o, "%s", lu_error_message());
    return o;
}

Test(checkpoint, optimizer_state_round_trips_bit_exactly)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "w", LU_F32, LU_SHAPE(4, 3), true);
    lu_params_add(p, "v", LU_F64, LU_SHAPE(5), true);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    lu_optim *o = adamw_for(p);
    for (int s = 0; s < 2; s++) {
        for (int d = 0; d < LU_DTYPE_COUNT; d++)
            if (p->flat_grad[d]) fill_random(p->flat_grad[d], 40 + (uint64_t)(s * 8 + d));
        cr_assert_eq(lu_optim_step(o, 1e-2), LU_OK);
    }
    save_ok(p, o, NULL);
    lu_params *q = lu_params_new(LU_CPU);
    lu_params_add(q, "w", LU_F32, LU_SHAPE(4, 3), true);
    lu_params_add(q, "v", LU_F64, LU_SHAPE(5), true);
    cr_assert_eq(lu_params_finalize(q), LU_OK);
    lu_optim *o2 = adamw_for(q);
    cr_assert_eq(lu_ckpt_load(path, q, o2, NULL), LU_OK, "%s", lu_error_message());
    assert_stores_equal(lu_optim_state(o), lu_optim_state(o2), "optimizer state");
    assert_stores_equal(p, q, "params");
    cr_assert_eq(lu_optim_steps(o2), 2);
    lu_optim_free(o);
    lu_optim_free(o2);
    lu_params_free(p);
    lu_params_free(q);
}

Test(checkpoint, load_without_optimizer_ignores_its_state)
{
    lu_params *p = model_store(1), *q = model_store(2);
    lu_optim *o = adamw_for(p);
    save_ok(p, o, NULL);
    cr_assert_eq(lu_ckpt_load(path, q, NULL, NULL), LU_OK, "%s", lu_error_message());
    assert_stores_equal(p, q, "params");
    lu_optim_free(o);
    lu_params_free(p);
    lu_params_free(q);
}

/* ---- validation errors ---------------------------------------------------------------------- */

static void assert_load_fails(lu_params *p, lu_optim *o, lu_status code, const char *needle)
{
    cr_assert_eq(lu_ckpt_load(path, p, o, NULL), code, "got %s: %s", lu_status_name(lu_error_code()),
                 lu_error_message());
    tu_assert_error_contains(path);
    tu_assert_error_contains(needle);
}

Test(checkpoint, load_rejects_wrong_shape_naming_the_tensor)
{
    lu_params *p = model_store(1);
    save_ok(p, NULL, NULL);
    lu_params *q = lu_params_new(LU_CPU);
    lu_params_add(q, "enc/layers.0.w", LU_F32, LU_SHAPE(5, 3), true);
    lu_params_add(q, "enc.emb%1", LU_BF16, LU_SHAPE(4, 3), true);
    lu_params_add(q, "pos_ids", LU_I64, LU_SHAPE(6), false);
    lu_params_add(q, "gain", LU_F64, LU_SHAPE(2), true);
    lu_params_add(q, "mask", LU_U8, LU_SHAPE(2, 2), false);
    lu_params_add(q, "temperature", LU_F32, 0, (int64_t[]){1}, true);
    lu_params_finalize(q);
    assert_load_fails(q, NULL, LU_ERR_SHAPE, "'enc/layers.0.w' has shape [3, 5] in the file, [5, 3] in the model");
    lu_params_free(p);
    lu_params_free(q);
}

Test(checkpoint, load_rejects_dtype_mismatch)
{
    lu_params *p = model_store(1);
    save_ok(p, NULL, NULL);
    lu_params *q = lu_params_new(LU_CPU);
    lu_params_add(q, "enc/layers.0.w", LU_F32, LU_SHAPE(3, 5), true);
    lu_params_add(q, "enc.emb%1", LU_F16, LU_SHAPE(4, 3), true);
    lu_params_finalize(q);
    assert_load_fails(q, NULL, LU_ERR_DTYPE, "'enc.emb%1' is bf16 in the file, f16 in the model");
    lu_params_free(p);
    lu_params_free(q);
}

Test(checkpoint, load_rejects_missing_and_extra_tensors)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "a", LU_F32, LU_SHAPE(2), true);
    lu_params_add(p, "b/c", LU_F32, LU_SHAPE(2), true);
    lu_params_finalize(p);
    save_ok(p, NULL, NULL);
    lu_params *more = lu_params_new(LU_CPU);
    lu_params_add(more, "a", LU_F32, LU_SHAPE(2), true);
    lu_params_add(more, "b/c", LU_F32, LU_SHAPE(2), true);
    lu_params_add(more, "new.w", LU_F32, LU_SHAPE(2), true);
    lu_params_finalize(more);
    assert_load_fails(more, NULL, LU_ERR_FORMAT, "tensor 'new.w' is missing from /params");
    lu_params *fewer = lu_params_new(LU_CPU);
    lu_params_add(fewer, "a", LU_F32, LU_SHAPE(2), true);
    lu_params_finalize(fewer);
    assert_load_fails(fewer, NULL, LU_ERR_FORMAT, "tensor 'b/c' in /params is not in the model");
    lu_params_free(p);
    lu_params_free(more);
    lu_params_free(fewer);
}

Test(checkpoint, load_checks_everything_before_writing_any_value)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "first", LU_F32, LU_SHAPE(3), true);
    lu_params_add(p, "last", LU_F32, LU_SHAPE(2), true);
    lu_params_finalize(p);
    fill_random(p->flat[LU_F32], 5);
    save_ok(p, NULL, NULL);
    lu_params *q = lu_params_new(LU_CPU);
    lu_tensor *first = lu_params_add(q, "first", LU_F32, LU_SHAPE(3), true);
    lu_params_add(q, "last", LU_F32, LU_SHAPE(4), true);
    lu_params_finalize(q);
    cr_assert_eq(lu_ckpt_load(path, q, NULL, NULL), LU_ERR_SHAPE);
    double zeros[3] = {0, 0, 0};
    tu_assert_close(first, zeros, 3, 0, 0, "'first' untouched by a failed load");
    lu_params_free(p);
    lu_params_free(q);
}

Test(checkpoint, load_rejects_garbage_and_missing_files)
{
    lu_params *p = model_store(1);
    FILE *f = fopen(path, "w");
    fputs("this is not an HDF5 file, just some text that is long enough to look like data\n", f);
    fclose(f);
    assert_load_fails(p, NULL, LU_ERR_FORMAT, "not an HDF5 file");
    unlink(path);
    assert_load_fails(p, NULL, LU_ERR_IO, "cannot read");
    lu_params_free(p);
}

Test(checkpoint, load_rejects_truncated_file)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "big", LU_F32, LU_SHAPE(64, 64), true);
    lu_params_finalize(p);
    save_ok(p, NULL, NULL);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(truncate(path, sb.st_size / 2), 0);
    cr_assert_neq(lu_ckpt_load(path, p, NULL, NULL), LU_OK);
    tu_assert_error_contains(path);
    lu_params_free(p);
}

Test(checkpoint, load_rejects_state_of_another_optimizer)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "w", LU_F32, LU_SHAPE(3, 2), true);
    lu_params_finalize(p);
    save_ok(p, NULL, NULL);
    lu_optim *adamw = adamw_for(p);
    assert_load_fails(p, adamw, LU_ERR_FORMAT, "no optimiser state");
    save_ok(p, adamw, NULL);
    lu_optim_config c;
    lu_optim_config_defaults(&c, LU_OPTIM_SCALED_ADAM);
    lu_optim *sa = lu_optim_new(p, &c);
    assert_load_fails(p, sa, LU_ERR_FORMAT, "the optimiser state is for adamw, the run uses scaled_adam");
    lu_optim_free(adamw);
    lu_optim_free(sa);
    lu_params_free(p);
}

/* ---- atomic saves --------------------------------------------------------------------------- */

static void assert_previous_checkpoint_intact(lu_params *saved)
{
    lu_params *q = model_store(99);
    cr_assert_eq(lu_ckpt_load(path, q, NULL, NULL), LU_OK, "previous checkpoint damaged: %s", lu_error_message());
    assert_stores_equal(saved, q, "previous checkpoint");
    lu_params_free(q);
}

static bool temp_file_left(void)
{
    char tmp[192];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    return access(tmp, F_OK) == 0;
}

Test(checkpoint, failed_save_of_unfinalized_store_keeps_previous_file)
{
    lu_params *p = model_store(1);
    save_ok(p, NULL, NULL);
    lu_params *bad = lu_params_new(LU_CPU);
    lu_params_add(bad, "w", LU_F32, LU_SHAPE(2), true);
    cr_assert_eq(lu_ckpt_save(path, bad, NULL, NULL), LU_ERR_STATE);
    tu_assert_error_contains("not finalized");
    assert_previous_checkpoint_intact(p);
    cr_assert(!temp_file_left());
    lu_params_free(bad);
    lu_params_free(p);
}

Test(checkpoint, failed_save_when_temp_name_is_taken_keeps_previous_file)
{
    lu_params *p = model_store(1), *other = model_store(2);
    save_ok(p, NULL, NULL);
    char tmp[192];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    cr_assert_eq(mkdir(tmp, 0700), 0);
    cr_assert_eq(lu_ckpt_save(path, other, NULL, NULL), LU_ERR_IO);
    tu_assert_error_contains("temporary file");
    assert_previous_checkpoint_intact(p);
    lu_params_free(p);
    lu_params_free(other);
}

Test(checkpoint, failed_save_on_full_disk_keeps_previous_file_and_removes_temp)
{
    /* RLIMIT_FSIZE makes writes past 64 KiB fail with EFBIG, as a full disk would. */
    lu_params *small = model_store(1);
    save_ok(small, NULL, NULL);
    lu_params *big = lu_params_new(LU_CPU);
    lu_params_add(big, "huge", LU_F32, LU_SHAPE(256, 1024), true);
    lu_params_finalize(big);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = (struct rlimit){64 << 10, old.rlim_max};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    lu_status s = lu_ckpt_save(path, big, NULL, NULL);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0); /* the test runner writes files too */
    cr_assert_neq(s, LU_OK);
    tu_assert_error_contains(path);
    cr_assert(!temp_file_left());
    assert_previous_checkpoint_intact(small);
    lu_params_free(big);
    lu_params_free(small);
}

/* ---- bit-exact resume ----------------------------------------------------------------------- */

/* y = (x_s @ W1) @ W2 with x_s drawn from stream s, backward with a fixed dy. */
static lu_params *tiny_model(uint64_t seed)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "l1.w", LU_F32, LU_SHAPE(5, 6), true);
    lu_params_add(p, "l2.w", LU_F32, LU_SHAPE(6, 3), true);
    lu_params_add(p, "l2.gain", LU_F32, LU_SHAPE(1), true);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    fill_random(p->flat[LU_F32], seed);
    return p;
}

static void train(lu_params *p, lu_optim *o, const lu_schedule *sched, int64_t from, int64_t to)
{
    lu_tensor *w1 = lu_params_get(p, "l1.w"), *w2 = lu_params_get(p, "l2.w"), *gain = lu_params_get(p, "l2.gain");
    lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(4, 3), -1, 1, 7);
    for (int64_t s = from; s < to; s++) {
        cr_assert_eq(lu_params_zero_grad(p), LU_OK);
        lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(4, 5), -1, 1, 1000 + (uint64_t)s);
        lu_tensor *h = lu_matmul(x, w1, false, false), *y = lu_matmul(h, w2, false, false);
        cr_assert_eq(lu_backward_from(y, dy), LU_OK, "%s", lu_error_message());
        /* The scalar gets a gradient of its own, so that its update path runs too. */
        *(float *)lu_tensor_data(gain->grad) = 0.5f - 0.1f * (float)(s % 7);
        cr_assert_eq(lu_optim_step(o, lu_schedule_lr(sched, s, 0)), LU_OK, "%s", lu_error_message());
        lu_tensor_release(x);
        lu_tensor_release(h);
        lu_tensor_release(y);
    }
    lu_tensor_release(dy);
}

static void check_resume(lu_optim_kind kind, const lu_schedule *sched, int64_t k, int64_t n)
{
    lu_optim_config c;
    lu_optim_config_defaults(&c, kind);
    lu_params *straight = tiny_model(3);
    lu_optim *os = lu_optim_new(straight, &c);
    train(straight, os, sched, 0, n);

    lu_params *first = tiny_model(3);
    lu_optim *of = lu_optim_new(first, &c);
    train(first, of, sched, 0, k);
    lu_ckpt_meta m = {.step = k};
    save_ok(first, of, &m);

    lu_params *resumed = tiny_model(77); /* different initial values: all must come from the file */
    lu_optim *orr = lu_optim_new(resumed, &c);
    lu_ckpt_meta got;
    cr_assert_eq(lu_ckpt_load(path, resumed, orr, &got), LU_OK, "%s", lu_error_message());
    cr_assert_eq(got.step, k);
    cr_assert_eq(lu_optim_steps(orr), k);
    train(resumed, orr, sched, got.step, n);

    assert_stores_equal(straight, resumed, "parameters after resume");
    assert_stores_equal(lu_optim_state(os), lu_optim_state(orr), "optimizer state after resume");
    lu_optim_free(os);
    lu_optim_free(of);
    lu_optim_free(orr);
    lu_params_free(straight);
    lu_params_free(first);
    lu_params_free(resumed);
}

Test(checkpoint, adamw_resume_is_bit_exact)
{
    lu_schedule s = {.kind = LU_SCHED_COSINE, .base_lr = 1e-2, .total_steps = 8, .warmup_steps = 2};
    check_resume(LU_OPTIM_ADAMW, &s, 3, 8);
}

Test(checkpoint, scaled_adam_resume_is_bit_exact_across_clipping_estimates)
{
    lu_schedule s = {.kind = LU_SCHED_EDEN, .base_lr = 0.045, .eden_lr_batches = 10, .eden_lr_epochs = 3.5,
                     .eden_warmup_start = 0.1, .eden_warmup_batches = 5};
    check_resume(LU_OPTIM_SCALED_ADAM, &s, 13, 24);
}
