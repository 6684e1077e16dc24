/* cli.h - the verbs of the luthier executable. Each runner takes (argc, argv) with argv[0] the
 * verb, prints errors itself and returns the process exit code (0 ok, 1 failure, 2 usage). */
#ifndef LU_CLI_H
#define LU_CLI_H

#include <stdbool.h>
#include <stddef.h>

#define LU_VERSION "0.1.0"

typedef struct lu_cli_verb {
    const char *name;
    int (*run)(int argc, char **argv);
} lu_cli_verb;

extern const lu_cli_verb lu_cli_verbs[]; /* terminated by {NULL, NULL} */

int lu_cli_train(int argc, char **argv);
int lu_cli_eval(int argc, char **argv);
int lu_cli_bench(int argc, char **argv);
int lu_bench_lm(int argc, char **argv);     /* bench_lm.c: bench lm (argv[0] = "lm") */
int lu_bench_asr(int argc, char **argv);    /* bench_asr.c: bench asr (argv[0] = "asr") */
int lu_bench_sft(int argc, char **argv);    /* bench_sft.c: bench sft (argv[0] = "sft") */
int lu_bench_merge(int argc, char **argv);  /* bench_merge.c: bench merge (argv[0] = "merge") */
int lu_bench_gpu(int argc, char **argv);    /* bench_gpu.c: bench gpu (argv[0] = "gpu") */
/* The current CUDA device's name, capability, SM count and runtime version, or "no CUDA GPU". */
void lu_bench_gpu_name(char *out, size_t size);
/* bench.c: monotonic seconds, and a qsort comparison of doubles (medians). */
double lu_bench_now(void);
int lu_bench_cmp_double(const void *a, const void *b);
/* bench.c: an integer option value of `luthier bench NAME` in [lo, hi]; otherwise prints
 * "luthier bench NAME: FLAG needs an integer in [lo, hi], got 'V'" and returns false. */
bool lu_bench_int_arg(const char *bench, const char *flag, const char *v, long long lo, long long hi, long long *out);
int lu_cli_lm(int argc, char **argv);       /* cli_lm.c: lm forward / generate / chat */
int lu_cli_lm_eval(int argc, char **argv);  /* cli_lm_eval.c: lm eval (argv[0] = "eval") */
int lu_cli_features(int argc, char **argv); /* cli_features.c: features fbank / mel */
int lu_cli_asr(int argc, char **argv);      /* cli_asr.c: asr forward / transcribe */
int lu_cli_merge(int argc, char **argv);    /* cli_merge.c: merge MERGE.yaml --out DIR */
int lu_cli_data(int argc, char **argv);     /* cli_data.c: data prepare-chat / prepare-speech */
int lu_cli_version(int argc, char **argv);  /* version.c: version, build, devices */
int lu_data_prepare_chat(int argc, char **argv);   /* data_chat.c */
int lu_data_prepare_speech(int argc, char **argv); /* data_speech.c */

#endif
