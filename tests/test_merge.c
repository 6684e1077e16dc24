/* test_merge.c - `luthier merge` against mergekit 0.1.5 itself (tests/fixtures/merge, made by
 * scripts/make_merge_fixtures.py): every deterministic method and config form (gradients, filters,
 * per-model and slice parameters, slices with remapped layers, tied embeddings, bf16) equal to
 * mergekit's output within f32 rounding; DARE statistically (torch's Bernoulli stream cannot be
 * reproduced); the output directory (shards, config, tokenizer) and the errors. */
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "models/merge.h"
#include "testutil.h"

#define FIX "tests/fixtures/merge"

static char root[64];
static char out[128];

static void make_root(void)
{
    strcpy(root, "/tmp/lu_merge_XXXXXX");
    cr_assert_not_null(mkdtemp(root));
    snprintf(out, sizeof out, "%s/out", root);
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[PATH_MAX];
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(p);
        else
            remove(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static void cleanup(void) { remove_tree(root); }

static void run_config(const char *name, const lu_merge_options *opt)
{
    char cfg[256];
    snprintf(cfg, sizeof cfg, FIX "/configs/%s.yaml", name);
    lu_status s = lu_merge_run(cfg, out, opt);
    cr_assert_eq(s, LU_OK, "merge %s: %s", name, lu_error_message());
}

static double max_abs(const lu_tensor *t)
{
    double *v = tu_to_doubles(t), m = 0;
    for (int64_t i = 0; i < lu_tensor_numel(t); i++) m = fmax(m, fabs(v[i]));
    free(v);
    return m;
}

/* Every tensor of `got` equals the tensor of the same name in `ref`, and the names are the same:
 * |got - ref| <= rtol * (|ref| + max|ref|). */
static void assert_files_equal(const char *got_path, const char *ref_path, double rtol)
{
    lu_st_file *got = lu_st_open(got_path), *ref = lu_st_open(ref_path);
    cr_assert(got && ref, "%s", lu_error_message());
    cr_assert_eq(lu_st_count(got), lu_st_count(ref), "%s has %d tensors, mergekit %d", got_path, lu_st_count(got),
                 lu_st_count(ref));
    for (int i = 0; i < lu_st_count(ref); i++) {
        const char *name = lu_st_name(ref, i);
        cr_assert_geq(lu_st_find(got, name), 0, "missing %s", name);
        lu_dtype dg, dr;
        lu_st_info(got, lu_st_find(got, name), &dg, NULL, NULL);
        lu_st_info(ref, i, &dr, NULL, NULL);
        cr_assert_eq(dg, dr, "%s: dtype %s, mergekit %s", name, lu_dtype_name(dg), lu_dtype_name(dr));
        lu_tensor *a = lu_st_load(got, name, LU_F64), *b = lu_st_load(ref, name, LU_F64);
        cr_assert(a && b);
        tu_assert_tensors_close(a, b, rtol * max_abs(b), rtol, name);
        lu_tensor_release(a);
        lu_tensor_release(b);
    }
    lu_st_close(got);
    lu_st_close(ref);
}

static void check_against_mergekit(const char *name, double rtol)
{
    make_root();
    run_config(name, NULL);
    char got[256], ref[256];
    snprintf(got, sizeof got, "%s/model.safetensors", out);
    snprintf(ref, sizeof ref, FIX "/expected/%s/model.safetensors", name);
    assert_files_equal(got, ref, rtol);
}

/* ---- deterministic methods against mergekit ------------------------------------------------------- */

Test(merge, linear_per_model_weights_with_filters_and_gradients_match_mergekit, .fini = cleanup)
{
    check_against_mergekit("linear", 1e-6);
}

Test(merge, linear_without_normalize_matches_mergekit, .fini = cleanup) { check_against_mergekit("linear_nonorm", 1e-6); }

Test(merge, slerp_with_filtered_layer_gradients_matches_mergekit, .fini = cleanup)
{
    check_against_mergekit("slerp", 1e-6);
}

Test(merge, slerp_in_bfloat16_matches_mergekit_within_one_rounding, .fini = cleanup)
{
    check_against_mergekit("slerp_bf16", 1.0 / 128);
}

Test(merge, task_arithmetic_with_lambda_matches_mergekit, .fini = cleanup)
{
    check_against_mergekit("task_arithmetic", 1e-6);
}

Test(merge, ties_with_density_gradient_and_filtered_weights_matches_mergekit, .fini = cleanup)
{
    check_against_mergekit("ties", 1e-6);
}

Test(merge, dare_ties_at_density_one_matches_mergekit, .fini = cleanup) { check_against_mergekit("dare_ties_dense", 1e-6); }

Test(merge, model_stock_matches_mergekit, .fini = cleanup) { check_against_mergekit("model_stock", 1e-6); }

Test(merge, nuslerp_with_base_matches_mergekit, .fini = cleanup) { check_against_mergekit("nuslerp", 1e-6); }

Test(merge, nuslerp_per_row_without_base_matches_mergekit, .fini = cleanup)
{
    check_against_mergekit("nuslerp_rows", 1e-6);
}

Test(merge, slices_with_remapped_layers_and_slice_parameters_match_mergekit, .fini = cleanup)
{
    check_against_mergekit("slices", 1e-6);
}

/* ---- DARE: the random part ------------------------------------------------------------------------ */

/* Fraction of entries of the merged model equal to the base's (both deltas dropped). */
static double fraction_at_base(const char *merged)
{
    lu_st_file *m = lu_st_open(merged), *b = lu_st_open(FIX "/models/base/model.safetensors");
    cr_assert(m && b, "%s", lu_error_message());
    int64_t same = 0, total = 0;
    for (int i = 0; i < lu_st_count(m); i++) {
        const char *name = lu_st_name(m, i);
        lu_tensor *x = lu_st_load(m, name, LU_F32);
        lu_tensor *y = lu_st_load(b, lu_st_find(b, name) >= 0 ? name : "model.embed_tokens.weight", LU_F32);
        const float *px = lu_tensor_data(x), *py = lu_tensor_data(y);
        for (int64_t e = 0; e < lu_tensor_numel(x); e++) same += px[e] == py[e];
        total += lu_tensor_numel(x);
        lu_tensor_release(x);
        lu_tensor_release(y);
    }
    lu_st_close(m);
    lu_st_close(b);
    return (double)same / (double)total;
}

Test(merge, dare_linear_drops_at_the_rate_mergekit_does, .fini = cleanup)
{
    make_root();
    run_config("dare_linear", NULL);
    char got[256];
    snprintf(got, sizeof got, "%s/model.safetensors", out);
    /* Density 0.5 for both models: an entry stays at the base with probability 0.25. ~6.6k
     * entries: sigma = 0.0053; 5 sigma bounds. */
    double ours = fraction_at_base(got), theirs = fraction_at_base(FIX "/expected/dare_linear/model.safetensors");
    cr_assert(fabs(ours - 0.25) < 0.027, "luthier keeps base at %.4f, expected 0.25", ours);
    cr_assert(fabs(theirs - 0.25) < 0.027, "mergekit keeps base at %.4f, expected 0.25", theirs);
}

Test(merge, dare_is_reproducible_for_a_seed_and_changes_with_it, .fini = cleanup)
{
    make_root();
    lu_merge_options o1 = {.seed = 3}, o2 = {.seed = 4};
    run_config("dare_ties", &o1);
    char a[256], b[256], c[256];
    snprintf(a, sizeof a, "%s/a", root);
    rename(out, a);
    run_config("dare_ties", &o1);
    snprintf(b, sizeof b, "%s/b", root);
    rename(out, b);
    run_config("dare_ties", &o2);
    snprintf(a, sizeof a, "%s/a/model.safetensors", root);
    snprintf(b, sizeof b, "%s/b/model.safetensors", root);
    snprintf(c, sizeof c, "%s/model.safetensors", out);
    assert_files_equal(b, a, 0);
    lu_st_file *fa = lu_st_open(a), *fc = lu_st_open(c);
    lu_tensor *x = lu_st_load(fa, "model.layers.0.mlp.up_proj.weight", LU_F32);
    lu_tensor *y = lu_st_load(fc, "model.layers.0.mlp.up_proj.weight", LU_F32);
    cr_assert_neq(memcmp(lu_tensor_data(x), lu_tensor_data(y), 512 * sizeof(float)), 0, "seed 4 gave seed 3's mask");
    lu_tensor_release(x);
    lu_tensor_release(y);
    lu_st_close(fa);
    lu_st_close(fc);
}

Test(merge, random_sparsify_keeps_density_and_preserves_l1_norm)
{
    enum { N = 100000 };
    double *d = malloc(N * sizeof *d), l1 = 0, kept_l1 = 0;
    int64_t kept = 0;
    for (int i = 0; i < N; i++) l1 += fabs(d[i] = sin(i * 0.37) + 0.1);
    lu_merge_sparsify_random(d, N, 0.3, true, 11, 0, 0);
    double scale = 0;
    for (int i = 0; i < N; i++)
        if (d[i] != 0) {
            kept++;
            kept_l1 += fabs(d[i]);
            double s = d[i] / (sin(i * 0.37) + 0.1);
            if (scale == 0) scale = s;
            cr_assert_float_eq(s, scale, 1e-9, "entry %d rescaled by %g, others by %g", i, s, scale);
        }
    /* Binomial(N, 0.3): sigma = 145; 5 sigma. */
    cr_assert(llabs(kept - 30000) < 725, "kept %lld of %d at density 0.3", (long long)kept, N);
    cr_assert_float_eq(kept_l1, l1, 1e-9 * l1, "L1 %g after rescale, %g before", kept_l1, l1);
    free(d);
}

Test(merge, random_sparsify_is_unbiased_over_streams)
{
    enum { N = 8, S = 20000 };
    const double delta[N] = {1, -2, 0.5, 3, -1, 2, -0.5, 1.5};
    double mean[N] = {0};
    for (int s = 0; s < S; s++) {
        double d[N];
        memcpy(d, delta, sizeof d);
        lu_merge_sparsify_random(d, N, 0.5, false, 5, (uint64_t)s, 1);
        for (int i = 0; i < N; i++) mean[i] += d[i] / 0.5 / S; /* 1/density rescale: E = delta */
    }
    /* sigma of the mean = |delta| / sqrt(S) = 0.0071 |delta|; 5 sigma. */
    for (int i = 0; i < N; i++)
        cr_assert(fabs(mean[i] - delta[i]) < 0.036 * fabs(delta[i]), "entry %d: mean %g, delta %g", i, mean[i], delta[i]);
}

/* ---- kernels -------------------------------------------------------------------------------------- */

Test(merge, magnitude_sparsify_keeps_the_largest_entries)
{
    double d[7] = {0.1, -5, 2, -0.3, 4, 0.2, -3};
    cr_assert_eq(lu_merge_sparsify_magnitude(d, 7, 0.5), LU_OK); /* k = int(3.5) = 3 */
    const double want[7] = {0, -5, 0, 0, 4, 0, -3};
    for (int i = 0; i < 7; i++) cr_assert_eq(d[i], want[i], "entry %d: %g, want %g", i, d[i], want[i]);
}

Test(merge, slerp_of_colinear_tensors_falls_back_to_lerp)
{
    const float v0[5] = {1, -2, 3, 0.5f, 4}, v1[5] = {2, -4, 6, 1, 8};
    const float *x[2] = {v0, v1};
    float got[5];
    lu_merge_args a;
    lu_merge_args_defaults(&a, LU_MERGE_SLERP);
    a.n = 2;
    a.x = x;
    a.base = 0;
    a.numel = 5;
    a.t = 0.3;
    cr_assert_eq(lu_merge_tensor(&a, got), LU_OK);
    for (int i = 0; i < 5; i++) cr_assert_float_eq(got[i], 0.7 * v0[i] + 0.3 * v1[i], 1e-6, "entry %d", i);
}

/* ---- the output directory ------------------------------------------------------------------------- */

static bool exists(const char *dir, const char *name)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

Test(merge, writes_base_config_with_dtype_and_copies_the_tokenizer, .fini = cleanup)
{
    make_root();
    run_config("slerp_bf16", NULL);
    cr_assert(exists(out, "tokenizer_config.json") && exists(out, "special_tokens_map.json") &&
              exists(out, "chat_template.jinja"));
    cr_assert(!exists(out, "model.safetensors.index.json"));
    char p[PATH_MAX], text[4096] = {0};
    snprintf(p, sizeof p, "%s/config.json", out);
    FILE *f = fopen(p, "r");
    cr_assert_not_null(f);
    cr_assert_gt(fread(text, 1, sizeof text - 1, f), 0);
    fclose(f);
    cr_assert_not_null(strstr(text, "\"torch_dtype\":\t\"bfloat16\""), "config.json: %s", text);
    cr_assert_not_null(strstr(text, "\"tie_word_embeddings\":\ttrue"), "the base's config is the donor: %s", text);
}

Test(merge, shards_by_parameter_count_with_an_index, .fini = cleanup)
{
    make_root();
    lu_merge_options o = {.max_shard_params = 2000};
    run_config("model_stock", &o);
    cr_assert(exists(out, "model.safetensors.index.json"));
    cr_assert(!exists(out, "model.safetensors"));
    lu_st_file *ref = lu_st_open(FIX "/expected/model_stock/model.safetensors");
    int found = 0, shards = 0;
    char p[PATH_MAX];
    for (int k = 1; k < 20; k++)
        for (int n = k; n < 20; n++) {
            snprintf(p, sizeof p, "%s/model-%05d-of-%05d.safetensors", out, k, n);
            lu_st_file *f = access(p, F_OK) == 0 ? lu_st_open(p) : NULL;
            if (!f) continue;
            shards++;
            for (int i = 0; i < lu_st_count(f); i++) {
                lu_tensor *a = lu_st_load(f, lu_st_name(f, i), LU_F64), *b = lu_st_load(ref, lu_st_name(f, i), LU_F64);
                cr_assert(a && b, "%s", lu_error_message());
                tu_assert_tensors_close(a, b, 1e-6 * max_abs(b), 1e-6, lu_st_name(f, i));
                lu_tensor_release(a);
                lu_tensor_release(b);
                found++;
            }
            lu_st_close(f);
        }
    cr_assert_gt(shards, 2);
    cr_assert_eq(found, lu_st_count(ref), "shards hold %d tensors, mergekit wrote %d", found, lu_st_count(ref));
    lu_st_close(ref);
}

/* ---- errors --------------------------------------------------------------------------------------- */

/* Writes root/c.yaml with `text` (model paths absolute) and runs it into out. */
static lu_status run_text(const char *text)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/c.yaml", root);
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return lu_merge_run(p, out, NULL);
}

static char models_dir[PATH_MAX];


static void config_with_models(char *buf, size_t n, const char *fmt)
{
    cr_assert_not_null(realpath(FIX "/models", models_dir));
    cr_assert_lt(snprintf(buf, n, fmt, models_dir, models_dir), (int)n);
}

Test(merge, unknown_method_is_an_error_naming_it, .fini = cleanup)
{
    make_root();
    char c[2048];
    config_with_models(c, sizeof c, "merge_method: frankenmerge\nmodels:\n  - model: %s/ft_a\n  - model: %s/ft_b\n");
    cr_assert_neq(run_text(c), LU_OK);
    tu_assert_error_contains("line 1: unknown merge_method 'frankenmerge'");
}

Test(merge, missing_model_directory_is_an_error, .fini = cleanup)
{
    make_root();
    char c[2048];
    config_with_models(c, sizeof c, "merge_method: linear\nmodels:\n  - model: %s/ft_a\n  - model: %s/nowhere\n");
    cr_assert_neq(run_text(c), LU_OK);
    tu_assert_error_contains("nowhere' not found");
    cr_assert(!exists(root, "out"));
}

Test(merge, bad_yaml_reports_the_line, .fini = cleanup)
{
    make_root();
    cr_assert_neq(run_text("merge_method: linear\nmodels:\n  - model: [a\n  - b: c\n"), LU_OK);
    tu_assert_error_contains("line 4");
}

Test(merge, missing_required_parameter_is_an_error, .fini = cleanup)
{
    make_root();
    char c[2048];
    config_with_models(c, sizeof c,
                       "merge_method: slerp\nbase_model: %s/base\nmodels:\n  - model: %s/ft_a\nparameters:\n"
                       "  t:\n    - filter: mlp\n      value: 0.5\n");
    cr_assert_neq(run_text(c), LU_OK);
    tu_assert_error_contains("missing required parameter 't'");
}

Test(merge, existing_nonempty_output_is_an_error, .fini = cleanup)
{
    make_root();
    cr_assert_eq(mkdir(out, 0755), 0);
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/keep", out);
    fclose(fopen(p, "w"));
    cr_assert_neq(lu_merge_run(FIX "/configs/linear.yaml", out, NULL), LU_OK);
    tu_assert_error_contains("exists and is not an empty directory");
    cr_assert(exists(out, "keep"));
}

Test(merge, shape_mismatch_between_models_is_an_error, .fini = cleanup)
{
    make_root();
    /* root/odd: ft_a with model.norm.weight of 8 entries instead of 16. */
    char odd[256], p[PATH_MAX];
    snprintf(odd, sizeof odd, "%s/odd", root);
    cr_assert_eq(mkdir(odd, 0755), 0);
    snprintf(p, sizeof p, "cp " FIX "/models/ft_a/config.json %s/", odd);
    cr_assert_eq(system(p), 0);
    lu_st_file *f = lu_st_open(FIX "/models/ft_a/model.safetensors");
    int n = lu_st_count(f);
    const char **names = calloc((size_t)n, sizeof *names);
    lu_tensor **ts = calloc((size_t)n, sizeof *ts);
    for (int i = 0; i < n; i++) {
        names[i] = lu_st_name(f, i);
        ts[i] = lu_st_load(f, names[i], LU_F32);
        if (!strcmp(names[i], "model.norm.weight")) {
            lu_tensor_release(ts[i]);
            ts[i] = tu_rand(LU_F32, 1, (int64_t[]){8}, 0, 1, 1);
        }
    }
    snprintf(p, sizeof p, "%s/model.safetensors", odd);
    cr_assert_eq(lu_st_save(p, n, names, ts, 0, NULL, NULL), LU_OK, "%s", lu_error_message());
    for (int i = 0; i < n; i++) lu_tensor_release(ts[i]);
    free(ts);
    free(names);
    lu_st_close(f);
    char c[2 * PATH_MAX];
    cr_assert_not_null(realpath(FIX "/models", models_dir));
    snprintf(c, sizeof c, "merge_method: linear\nmodels:\n  - model: %s/ft_b\n    parameters: {weight: 1}\n"
                          "  - model: %s\n    parameters: {weight: 1}\n", models_dir, odd);
    cr_assert_neq(run_text(c), LU_OK);
    tu_assert_error_contains("shape mismatch for model.norm.weight");
    cr_assert(!exists(root, "out"));
}
