/* bench_merge.c - `luthier bench merge`: merge throughput (GB of input weights read per second)
 * of `luthier merge` on Luth's gradient SLERP config (experiments/luth/merge-luth-0.6b-slerp-
 * gradient.yaml, bfloat16) over two Qwen3-0.6B-shaped models with random weights (formats.md
 * §1.1), beside mergekit's run_merge on the same files and config, measured in the same run by
 * scripts/bench_merge_reference.py, and beside a plain sequential read of the input files (with
 * the page cache dropped by posix_fadvise, then warm). Both merges run with the page cache warm:
 * ours as a child process (wall time, CPU time and peak RSS from wait4), mergekit inside its
 * python; both report the largest RssAnon too, since RSS counts touched pages of mmap'd inputs.
 * The two outputs are compared value by value at the end, so the figures are for the same work.
 *
 * The models ("base" and "tuned" = base + noise, as a fine-tune is) are bf16 HF directories
 * sharded into 512 MB safetensors files, written by lu_hf_save once into --dir and reused. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/rng.h"
#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/decoder.h"
#include "models/hf_model.h"

#define REFERENCE_SCRIPT "scripts/bench_merge_reference.py"
#define MAX_FILES 64

extern char **environ;

typedef struct merge_bench_opts {
    const char *dir, *python;
    int threads;
    bool reference;
} merge_bench_opts;

/* One row of the table; memory in KiB, 0: not measured. */
typedef struct merge_run {
    double seconds, cpu;        /* wall and CPU (user + system) seconds */
    long peak_kb, base_kb;      /* getrusage maximum RSS; the reference's before its merge */
    long anon_kb, base_anon_kb; /* largest RssAnon sampled every 10 ms (heap, not file pages) */
    char why[512];              /* non-empty: not measured, and why */
} merge_run;

/* dir/name into out (PATH_MAX bytes); false when too long. Not inlined: gcc would warn that the
 * lengths it sees at each call could exceed PATH_MAX. */
__attribute__((noinline)) static bool join(char *out, const char *dir, const char *name)
{
    return snprintf(out, PATH_MAX, "%s/%s", dir, name) < PATH_MAX;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* mkdir -p. */
static bool make_dirs(const char *path)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return false;
    for (char *c = p + 1; *c; c++)
        if (*c == '/') {
            *c = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) return false;
            *c = '/';
        }
    return mkdir(p, 0755) == 0 || errno == EEXIST;
}

/* Removes a directory of plain files (a merge output); absent is fine. */
static void remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[PATH_MAX];
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && join(p, dir, e->d_name)) unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static int cmp_path(const void *a, const void *b) { return strcmp(a, b); }

/* The .safetensors files of a model directory, sorted by name; returns their count. */
static int list_shards(const char *dir, char paths[][PATH_MAX], int64_t *bytes)
{
    DIR *d = opendir(dir);
    int n = 0;
    *bytes = 0;
    for (struct dirent *e; d && (e = readdir(d)) && n < MAX_FILES;) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") || !join(paths[n], dir, e->d_name)) continue;
        struct stat st;
        if (stat(paths[n], &st) == 0) *bytes += st.st_size, n++;
    }
    if (d) closedir(d);
    qsort(paths, (size_t)n, PATH_MAX, cmp_path);
    return n;
}

/* U(-a, a) with the std of transformers' N(0, 0.02) init and norms at 1 (as bench lm); "tuned"
 * adds U(-a/4, a/4) noise to every tensor, so that SLERP sees a fine-tune's angles on the
 * matrices (cos about 0.97, far from the colinear fallback at 0.9995; the norm weights, 1 plus
 * noise, take that fallback). */
static lu_status write_models(const char *base_dir, const char *tuned_dir)
{
    lu_decoder_config cfg = {.vocab_size = 151936, .hidden_size = 1024, .intermediate_size = 3072, .num_layers = 28,
                             .num_heads = 16, .num_kv_heads = 8, .head_dim = 128, .rope_theta = 1e6,
                             .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true, .init_std = 0.02,
                             .max_position_embeddings = 40960, .bos_token_id = 151643, .n_eos = 1,
                             .eos_token_ids = {151645}, .dtype = LU_BF16};
    const double a = 0.02 * 1.7320508075688772;
    const int64_t shard = (int64_t)512 << 20;
    lu_decoder m;
    lu_params *p = lu_params_new(LU_CPU);
    lu_status s = p ? lu_decoder_declare(&m, &cfg, p) : lu_error_code();
    if (!s) s = lu_params_finalize(p);
    for (int i = 0; !s && i < p->n; i++) {
        lu_tensor *t = p->items[i].t;
        s = t->ndim == 1 ? lu_tensor_fill(t, 1.0) : lu_tensor_rand_uniform(t, -a, a, 1, (uint32_t)i);
    }
    fprintf(stderr, "bench merge: writing two Qwen3-0.6B-shaped bf16 models into %s and %s (once)\n", base_dir, tuned_dir);
    if (!s) s = lu_hf_save(base_dir, &m, LU_BF16, shard);
    for (int i = 0; !s && i < p->n; i++) {
        lu_tensor *t = p->items[i].t, *noise = lu_tensor_empty(LU_F32, t->ndim, t->shape, LU_CPU);
        s = noise ? lu_tensor_rand_uniform(noise, -a / 4, a / 4, 2, (uint32_t)i) : lu_error_code();
        float *x = lu_tensor_data(t);
        const float *y = noise ? lu_tensor_data(noise) : NULL;
        for (int64_t e = 0; !s && e < lu_tensor_numel(t); e++) x[e] += y[e];
        lu_tensor_release(noise);
    }
    if (!s) s = lu_hf_save(tuned_dir, &m, LU_BF16, shard);
    lu_params_free(p);
    return s;
}

/* Luth's configs/mergekit/merge_slerp.yaml (luth.md §5) with absolute paths. */
static lu_status write_config(const char *path, const char *base_dir, const char *tuned_dir)
{
    FILE *f = fopen(path, "w");
    if (!f) return lu_errorf(LU_ERR_IO, "bench merge: cannot write %s: %s", path, strerror(errno));
    fprintf(f,
            "slices:\n"
            "  - sources:\n"
            "      - model: %s\n"
            "        layer_range: [0, 28]\n"
            "      - model: %s\n"
            "        layer_range: [0, 28]\n"
            "merge_method: slerp\n"
            "base_model: %s\n"
            "parameters:\n"
            "  t:\n"
            "    - filter: self_attn\n"
            "      value: [0, 0.5, 0.3, 0.7, 1]\n"
            "    - filter: mlp\n"
            "      value: [1, 0.5, 0.7, 0.3, 0]\n"
            "    - value: 0.5\n"
            "dtype: bfloat16\n",
            tuned_dir, base_dir, base_dir);
    return fclose(f) == 0 ? LU_OK : lu_errorf(LU_ERR_IO, "bench merge: cannot write %s", path);
}

/* Sequential read() of the files in 16 MB blocks; with drop, their pages are first dropped from
 * the page cache (POSIX_FADV_DONTNEED needs no privilege; pages mapped elsewhere may stay). */
static lu_status read_files(char paths[][PATH_MAX], int n, bool drop, double *seconds)
{
    size_t size = (size_t)16 << 20;
    char *buf = malloc(size);
    if (!buf) return lu_errorf(LU_ERR_NOMEM, "bench merge: out of memory");
    for (int i = 0; drop && i < n; i++) {
        int fd = open(paths[i], O_RDONLY);
        if (fd >= 0) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), close(fd);
    }
    lu_status s = LU_OK;
    double t0 = lu_bench_now();
    for (int i = 0; !s && i < n; i++) {
        int fd = open(paths[i], O_RDONLY);
        if (fd < 0) s = lu_errorf(LU_ERR_IO, "bench merge: cannot open %s: %s", paths[i], strerror(errno));
        ssize_t r = 1;
        while (!s && (r = read(fd, buf, size)) > 0) {}
        if (!s && r < 0) s = lu_errorf(LU_ERR_IO, "bench merge: cannot read %s: %s", paths[i], strerror(errno));
        if (fd >= 0) close(fd);
    }
    *seconds = lu_bench_now() - t0;
    free(buf);
    return s;
}

/* RssAnon of /proc/<pid>/status in KiB (0 when unreadable). */
static long rss_anon_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = 0;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "RssAnon: %ld", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

/* Runs `luthier merge CONFIG --out OUT` as a child with `threads` OpenMP threads: its wall time
 * and peak RSS (wait4). */
static void run_luthier(const merge_bench_opts *o, const char *config, const char *out, merge_run *r)
{
    char exe[PATH_MAX], threads[16];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) {
        snprintf(r->why, sizeof r->why, "cannot find the luthier executable (/proc/self/exe)");
        return;
    }
    exe[len] = 0;
    snprintf(threads, sizeof threads, "%d", o->threads);
    setenv("OMP_NUM_THREADS", threads, 1);
    setenv("OPENBLAS_NUM_THREADS", threads, 1);
    /* A child's peak RSS starts at the peak of the address space it leaves at exec, here this
     * process's (posix_spawn shares it until then): reset that peak to the current RSS first
     * (clear_refs 5, Linux 4.0+), or the child would report the models' generation. */
    FILE *cr = fopen("/proc/self/clear_refs", "w");
    if (cr) fputs("5", cr), fclose(cr);
    char *argv[] = {exe, "merge", (char *)config, "--out", (char *)out, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    double t0 = lu_bench_now();
    int err = posix_spawn(&pid, exe, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    int status = 0;
    struct rusage ru;
    pid_t done = 0;
    while (!err && (done = wait4(pid, &status, WNOHANG, &ru)) == 0) {
        long kb = rss_anon_kb(pid);
        r->anon_kb = kb > r->anon_kb ? kb : r->anon_kb;
        usleep(10000);
    }
    if (err || done < 0) {
        snprintf(r->why, sizeof r->why, "cannot run %.200s merge: %s", exe, strerror(err ? err : errno));
        return;
    }
    r->seconds = lu_bench_now() - t0;
    r->cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    r->peak_kb = ru.ru_maxrss;
    if (!WIFEXITED(status) || WEXITSTATUS(status))
        snprintf(r->why, sizeof r->why, "luthier merge failed (status %d; its message is above)", status);
}

/* Runs the reference script; it prints one JSON line {"seconds", "cpu_seconds", "peak_rss_kb",
 * "baseline_rss_kb", "peak_anon_kb", "baseline_anon_kb", "mergekit"} or {"error"}. Other lines
 * are kept: the last one explains a failure. */
static void run_reference(const merge_bench_opts *o, const char *config, const char *out, merge_run *r, char *version,
                          size_t vsize)
{
    snprintf(r->why, sizeof r->why, "no result from %s", REFERENCE_SCRIPT);
    if (!exists(REFERENCE_SCRIPT)) {
        snprintf(r->why, sizeof r->why, "%s not found (run from the repository root)", REFERENCE_SCRIPT);
        return;
    }
    char cmd[4 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' %s --config '%s' --out '%s' --threads %d 2>&1", o->python, REFERENCE_SCRIPT, config,
             out, o->threads);
    FILE *p = popen(cmd, "r");
    if (!p) {
        snprintf(r->why, sizeof r->why, "cannot start %s", o->python);
        return;
    }
    char line[4096], last[256] = "";
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        cJSON *j = line[0] == '{' ? cJSON_Parse(line) : NULL;
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(j, "seconds");
        const cJSON *peak = cJSON_GetObjectItemCaseSensitive(j, "peak_rss_kb");
        const cJSON *base = cJSON_GetObjectItemCaseSensitive(j, "baseline_rss_kb");
        const cJSON *ver = cJSON_GetObjectItemCaseSensitive(j, "mergekit");
        const cJSON *cpu = cJSON_GetObjectItemCaseSensitive(j, "cpu_seconds");
        const cJSON *anon = cJSON_GetObjectItemCaseSensitive(j, "peak_anon_kb");
        const cJSON *base_anon = cJSON_GetObjectItemCaseSensitive(j, "baseline_anon_kb");
        if (cJSON_IsString(err)) {
            snprintf(r->why, sizeof r->why, "%s", err->valuestring);
        } else if (cJSON_IsNumber(sec) && cJSON_IsNumber(peak) && cJSON_IsNumber(base)) {
            r->seconds = sec->valuedouble;
            r->peak_kb = (long)peak->valuedouble;
            r->base_kb = (long)base->valuedouble;
            r->cpu = cJSON_IsNumber(cpu) ? cpu->valuedouble : 0;
            r->anon_kb = cJSON_IsNumber(anon) ? (long)anon->valuedouble : 0;
            r->base_anon_kb = cJSON_IsNumber(base_anon) ? (long)base_anon->valuedouble : 0;
            if (cJSON_IsString(ver)) snprintf(version, vsize, "%s", ver->valuestring);
            r->why[0] = 0;
        } else if (line[0]) {
            snprintf(last, sizeof last, "%.255s", line);
        }
        cJSON_Delete(j);
    }
    int status = pclose(p), rc = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (rc != 0 && !strncmp(r->why, "no result", 9)) {
        if (rc == 127) snprintf(r->why, sizeof r->why, "%s not found", o->python);
        else snprintf(r->why, sizeof r->why, "%s failed (exit status %d): %.200s", o->python, rc, last);
    }
}

/* Compares every tensor of ours with the same name in theirs (values as f32): *equal of *total
 * values are identical; *max_rel is the largest |ours - theirs| / max |theirs| of a tensor (the
 * measure of tests/test_merge.c); *missing counts our tensors they lack. */
static lu_status compare_outputs(const char *ours, const char *theirs, int64_t *equal, int64_t *total, double *max_rel,
                                 int *missing)
{
    char a[MAX_FILES][PATH_MAX], b[MAX_FILES][PATH_MAX];
    int64_t bytes;
    int na = list_shards(ours, a, &bytes), nb = list_shards(theirs, b, &bytes);
    lu_st_file *fa[MAX_FILES] = {0}, *fb[MAX_FILES] = {0};
    lu_status s = na && nb ? LU_OK : lu_errorf(LU_ERR_IO, "bench merge: no safetensors in %s or %s", ours, theirs);
    for (int i = 0; !s && i < na; i++) fa[i] = lu_st_open(a[i]), s = fa[i] ? LU_OK : lu_error_code();
    for (int i = 0; !s && i < nb; i++) fb[i] = lu_st_open(b[i]), s = fb[i] ? LU_OK : lu_error_code();
    *equal = *total = 0;
    *max_rel = 0;
    *missing = 0;
    for (int i = 0; !s && i < na; i++)
        for (int k = 0; !s && k < lu_st_count(fa[i]); k++) {
            const char *name = lu_st_name(fa[i], k);
            lu_st_file *other = NULL;
            for (int j = 0; j < nb && !other; j++)
                if (lu_st_find(fb[j], name) >= 0) other = fb[j];
            if (!other) {
                (*missing)++;
                continue;
            }
            lu_tensor *x = lu_st_load(fa[i], name, LU_F32), *y = lu_st_load(other, name, LU_F32);
            if (!x || !y || lu_tensor_numel(x) != lu_tensor_numel(y)) {
                s = x && y ? lu_errorf(LU_ERR_SHAPE, "bench merge: %s has another size in %s", name, theirs)
                           : lu_error_code();
            } else {
                const float *u = lu_tensor_data(x), *v = lu_tensor_data(y);
                double diff = 0, scale = 0;
                for (int64_t e = 0; e < lu_tensor_numel(x); e++) {
                    *equal += u[e] == v[e];
                    diff = fmax(diff, fabs((double)u[e] - v[e]));
                    scale = fmax(scale, fabs((double)v[e]));
                }
                if (diff > 0) *max_rel = fmax(*max_rel, scale > 0 ? diff / scale : INFINITY);
                *total += lu_tensor_numel(x);
            }
            lu_tensor_release(x);
            lu_tensor_release(y);
        }
    for (int i = 0; i < na; i++) lu_st_close(fa[i]);
    for (int i = 0; i < nb; i++) lu_st_close(fb[i]);
    return s;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: luthier bench merge [--dir DIR] [--threads N] [--python PYTHON] [--no-reference]\n"
               "  GB/s of input weights read by `luthier merge` on Luth's gradient SLERP config (bfloat16) over\n"
               "  two random Qwen3-0.6B-shaped models, beside mergekit (python " REFERENCE_SCRIPT ")\n"
               "  on the same files in the same run, a plain sequential read of the files, and the ratio.\n"
               "  --dir DIR        cache of the two models (written once, 2 x 1.2 GB) and the merge outputs\n"
               "                   (removed after the run; default data/bench/merge)\n"
               "  --threads N      OpenMP threads of luthier and torch threads of mergekit (default: OpenMP's\n"
               "                   maximum)\n"
               "  --python PYTHON  interpreter that can import mergekit (default python3; see\n"
               "                   scripts/make_merge_fixtures.py for a venv, e.g. /tmp/mkvenv/bin/python)\n"
               "  --no-reference   skip mergekit\n");
}

static void row(const char *name, double bytes, const merge_run *r)
{
    if (r->why[0]) {
        printf("| %-26s | %7s | %7s | %9s | %8s | %8s |\n", name, "-", "-", "-", "-", "-");
        return;
    }
    char rss[32] = "-", anon[32] = "-", cpu[32] = "-";
    if (r->peak_kb) snprintf(rss, sizeof rss, "%.0f", (double)r->peak_kb / 1024);
    if (r->anon_kb) snprintf(anon, sizeof anon, "%.0f", (double)r->anon_kb / 1024);
    if (r->cpu > 0) snprintf(cpu, sizeof cpu, "%.2f", r->cpu);
    printf("| %-26s | %7.2f | %7s | %9.3f | %8s | %8s |\n", name, r->seconds, cpu, bytes / r->seconds * 1e-9, rss, anon);
}

int lu_bench_merge(int argc, char **argv)
{
    merge_bench_opts o = {.dir = "data/bench/merge", .python = "python3", .threads = omp_get_max_threads(), .reference = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-reference")) {
            o.reference = false;
        } else if (!strcmp(a, "--dir") || !strcmp(a, "--python")) {
            if (!v || !*v || strchr(v, '\'')) {
                fprintf(stderr, "luthier bench merge: %s needs a path (without single quotes)\n", a);
                return 2;
            }
            *(!strcmp(a, "--dir") ? &o.dir : &o.python) = v;
            i++;
        } else if (!strcmp(a, "--threads")) {
            long long x;
            if (!lu_bench_int_arg("merge", a, v, 1, 1024, &x)) return 2;
            o.threads = (int)x;
            i++;
        } else {
            fprintf(stderr, "luthier bench merge: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    char dir[PATH_MAX], base[PATH_MAX], tuned[PATH_MAX], config[PATH_MAX], out_ours[PATH_MAX], out_ref[PATH_MAX];
    if (!make_dirs(o.dir) || !realpath(o.dir, dir)) {
        fprintf(stderr, "luthier bench merge: cannot create %s\n", o.dir);
        return 1;
    }
    join(base, dir, "base");
    join(tuned, dir, "tuned");
    join(config, dir, "slerp.yaml");
    join(out_ours, dir, "out-luthier");
    join(out_ref, dir, "out-mergekit");
    lu_status s = LU_OK;
    char cfg_json[PATH_MAX];
    join(cfg_json, tuned, "config.json");
    if (!exists(cfg_json)) {
        remove_flat_dir(base);
        remove_flat_dir(tuned);
        s = write_models(base, tuned);
    }
    if (!s) s = write_config(config, base, tuned);
    char files[2 * MAX_FILES][PATH_MAX];
    int64_t bytes_base = 0, bytes_tuned = 0;
    int n_base = s ? 0 : list_shards(base, files, &bytes_base);
    int n_tuned = s ? 0 : list_shards(tuned, files + n_base, &bytes_tuned);
    if (!s && (!n_base || !n_tuned))
        s = lu_errorf(LU_ERR_IO, "bench merge: %s or %s holds no safetensors (remove them to rewrite)", base, tuned);
    merge_run cold = {0}, warm = {0}, ours = {0}, ref = {0};
    if (!s) s = read_files(files, n_base + n_tuned, true, &cold.seconds);
    if (!s) s = read_files(files, n_base + n_tuned, false, &warm.seconds);
    if (s) {
        fprintf(stderr, "luthier bench merge: %s\n", lu_error_message());
        return 1;
    }
    remove_flat_dir(out_ours);
    remove_flat_dir(out_ref);
    run_luthier(&o, config, out_ours, &ours);
    char version[64] = "mergekit";
    snprintf(ref.why, sizeof ref.why, "not requested (--no-reference)");
    if (o.reference) run_reference(&o, config, out_ref, &ref, version, sizeof version);
    int64_t equal = 0, total = 0;
    double max_rel = 0;
    int missing = 0;
    bool compared = !ours.why[0] && !ref.why[0];
    lu_status cs = compared ? compare_outputs(out_ours, out_ref, &equal, &total, &max_rel, &missing) : LU_OK;

    double in = (double)(bytes_base + bytes_tuned);
    printf("luthier bench merge: %d threads; SLERP with Luth's per-layer t gradients, dtype bfloat16, of two\n"
           "Qwen3-0.6B-shaped random models, %d + %d safetensors files, %.3f GB read in all, in %s\n\n",
           o.threads, n_base, n_tuned, in * 1e-9, dir);
    printf("| %-26s | %7s | %7s | %9s | %8s | %8s |\n", "reader", "seconds", "CPU s", "GB/s read", "RSS MiB", "anon MiB");
    printf("|----------------------------|---------|---------|-----------|----------|----------|\n");
    row("read(), page cache dropped", in, &cold);
    row("read(), page cache warm", in, &warm);
    row("luthier merge", in, &ours);
    char name[96];
    snprintf(name, sizeof name, "%s run_merge", version);
    row(name, in, &ref);
    if (!ours.why[0] && !ref.why[0])
        printf("\nratio (mergekit seconds / luthier seconds): %.2f (> 1: luthier is faster)\n", ref.seconds / ours.seconds);
    printf("\nBoth merges ran with the inputs in the page cache (just read). GB/s = input bytes / wall seconds;\n"
           "CPU s = user + system seconds. RSS MiB = peak resident set (getrusage), which counts the pages of\n"
           "mmap'd input files once touched; anon MiB = largest RssAnon (heap, no file pages) sampled every\n"
           "10 ms. luthier: the whole `luthier merge` process; mergekit: run_merge timed inside python.\n");
    if (!ref.why[0])
        printf("Before the merge (torch and mergekit imported) python held %.0f MiB RSS, %.0f MiB anon.\n",
               (double)ref.base_kb / 1024, (double)ref.base_anon_kb / 1024);
    if (ours.why[0]) printf("luthier merge: not measured: %s\n", ours.why);
    if (ref.why[0]) printf("mergekit: not measured: %s\n", ref.why);
    if (compared && cs) printf("outputs not compared: %s\n", lu_error_message());
    else if (compared)
        printf("outputs: %lld of %lld values identical (%.4f%%); largest |luthier - mergekit| / max |mergekit| of a\n"
               "tensor %.2g; %d of our tensors absent from mergekit's\n",
               (long long)equal, (long long)total, total ? 100.0 * (double)equal / (double)total : 0.0, max_rel, missing);
    remove_flat_dir(out_ours);
    remove_flat_dir(out_ref);
    return ours.why[0] ? 1 : 0;
}
