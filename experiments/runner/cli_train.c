/* cli_train.c - argument parsing of `luthier train` and `luthier eval`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dist.h"
#include "experiments/runner/cli.h"
#include "experiments/runner/trainer.h"

static void train_usage(FILE *f, const char *verb)
{
    fprintf(f,
            "usage: luthier %s CONFIG.yaml [--out DIR] %s[section.key=value ...]\n"
            "\n"
            "  --out DIR         run directory (default: train.out_dir or runs/<name>)\n"
            "%s"
            "  section.key=value override a config value (e.g. optim.lr=1e-3)\n"
            "\n"
            "tasks:\n",
            verb, !strcmp(verb, "train") ? "[--max-steps N] [--stop-after N] [--resume] " : "[--checkpoint FILE | --avg N] ",
            !strcmp(verb, "train") ? "  --max-steps N     train for N optimiser steps in all (the schedule spans N)\n"
                                     "  --stop-after N    leave after N steps of this call with a checkpoint (resume later)\n"
                                     "  --resume          continue the run in the run directory from checkpoints/last.h5\n"
                                   : "  --checkpoint FILE checkpoint to evaluate (default: <run dir>/checkpoints/last.h5)\n"
                                     "  --avg N           average the newest N step checkpoints (train.keep_checkpoints)\n");
    for (int i = 0; lu_tasks[i]; i++) fprintf(f, "  %-16s %s\n", lu_tasks[i]->name, lu_tasks[i]->description);
    fprintf(f, "\ncommon config keys:\n");
    lu_config_print_schema(lu_train_schema, f);
}

static int parse(int argc, char **argv, lu_run_options *o, char **overrides)
{
    const char *verb = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            train_usage(stdout, verb);
            return 0;
        } else if (!strcmp(a, "--out") && i + 1 < argc) {
            o->out_dir = argv[++i];
        } else if (!strcmp(a, "--max-steps") && i + 1 < argc && !strcmp(verb, "train")) {
            char *end;
            o->max_steps = strtoll(argv[++i], &end, 10);
            if (*end || o->max_steps <= 0) {
                fprintf(stderr, "luthier %s: --max-steps needs a positive integer, got '%s'\n", verb, argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--stop-after") && i + 1 < argc && !strcmp(verb, "train")) {
            char *end;
            o->stop_after = strtoll(argv[++i], &end, 10);
            if (*end || o->stop_after <= 0) {
                fprintf(stderr, "luthier %s: --stop-after needs a positive integer, got '%s'\n", verb, argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--resume") && !strcmp(verb, "train")) {
            o->resume = true;
        } else if (!strcmp(a, "--avg") && i + 1 < argc && !strcmp(verb, "eval")) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1000) {
                fprintf(stderr, "luthier %s: --avg needs a count in 1..1000, got '%s'\n", verb, argv[i]);
                return 2;
            }
            o->avg = (int)v;
        } else if (!strcmp(a, "--checkpoint") && i + 1 < argc && !strcmp(verb, "eval")) {
            o->checkpoint = argv[++i];
        } else if (a[0] == '-') {
            fprintf(stderr, "luthier %s: unknown or incomplete option '%s'\n", verb, a);
            train_usage(stderr, verb);
            return 2;
        } else if (strchr(a, '=')) {
            overrides[o->n_overrides++] = argv[i];
        } else if (!o->config_path) {
            o->config_path = a;
        } else {
            fprintf(stderr, "luthier %s: unexpected argument '%s'\n", verb, a);
            return 2;
        }
    }
    if (!o->config_path) {
        train_usage(stderr, verb);
        return 2;
    }
    return -1;
}

static int run_verb(int argc, char **argv, lu_status (*fn)(const lu_run_options *))
{
    lu_run_options o = {0};
    char **overrides = calloc((size_t)argc + 1, sizeof *overrides);
    if (!overrides) return 1;
    int rc = parse(argc, argv, &o, overrides);
    if (rc < 0) {
        o.overrides = overrides;
        lu_status s = fn(&o);
        if (s && lu_dist_size() > 1) {
            /* The other ranks would wait for this one in their next collective: end them all. */
            fprintf(stderr, "luthier %s: rank %d of %d: %s\n", argv[0], lu_dist_rank(), lu_dist_size(), lu_error_message());
            lu_dist_abort(1);
        }
        if (s) fprintf(stderr, "luthier %s: %s\n", argv[0], lu_error_message());
        lu_dist_finalize();
        rc = s ? 1 : 0;
    }
    free(overrides);
    return rc;
}

int lu_cli_train(int argc, char **argv) { return run_verb(argc, argv, lu_train_run); }
int lu_cli_eval(int argc, char **argv) { return run_verb(argc, argv, lu_eval_run); }
