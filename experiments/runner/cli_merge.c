/* cli_merge.c - `luthier merge MERGE.yaml --out DIR`: mergekit-compatible merging (models/merge.h). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "experiments/runner/cli.h"
#include "models/merge.h"

static const char *usage_text =
    "usage: luthier merge MERGE.yaml --out DIR [--out-shard-size N] [--seed S]\n"
    "\n"
    "Merges Hugging Face model directories as mergekit-yaml does (methods linear, slerp, nuslerp,\n"
    "task_arithmetic, ties, dare_ties, dare_linear, model_stock), streaming tensor by tensor.\n"
    "Relative model paths in MERGE.yaml are resolved against its directory. DIR must not exist\n"
    "(or be empty).\n"
    "\n"
    "  --out DIR             output model directory (safetensors, config.json, tokenizer files)\n"
    "  --out-shard-size N    parameters per safetensors shard, with K/M/B suffixes (default 5B)\n"
    "  --seed S              seed of the DARE random masks (default 0)\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "luthier merge: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nrun 'luthier merge --help' for the usage\n");
    return 2;
}

/* mergekit's parse_kmb: "5B", "500M", "1000". */
static bool parse_kmb(const char *s, int64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    double scale = 1;
    if (*end) {
        char c = (char)toupper((unsigned char)*end);
        scale = c == 'K' ? 1e3 : c == 'M' ? 1e6 : c == 'B' ? 1e9 : 0;
        if (!scale || end[1]) return false;
    }
    if (end == s || !(v > 0)) return false;
    *out = (int64_t)(v * scale);
    return *out > 0;
}

int lu_cli_merge(int argc, char **argv)
{
    const char *config = NULL, *out = NULL;
    lu_merge_options opt = {.progress = isatty(fileno(stderr)) != 0};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (k[0] != '-') {
            if (config) return usage_error("unexpected argument '%s'", k);
            config = k;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) return usage_error("%s needs a value", k);
        if (!strcmp(k, "--out"))
            out = v;
        else if (!strcmp(k, "--out-shard-size")) {
            if (!parse_kmb(v, &opt.max_shard_params)) return usage_error("--out-shard-size needs a count like 5B, got '%s'", v);
        } else if (!strcmp(k, "--seed")) {
            char *end;
            opt.seed = strtoull(v, &end, 10);
            if (!*v || *end) return usage_error("--seed needs a non-negative integer, got '%s'", v);
        } else
            return usage_error("unknown option '%s'", k);
    }
    if (!config) return usage_error("%s", "needs MERGE.yaml");
    if (!out) return usage_error("%s", "needs --out DIR");
    if (lu_merge_run(config, out, &opt) != LU_OK) {
        fprintf(stderr, "luthier merge: %s\n", lu_error_message());
        return 1;
    }
    printf("merged into %s\n", out);
    return 0;
}
