/* asr_infer.c - `luthier asr transcribe`: a trained `asr` task (its config and a checkpoint)
 * turns audio files into text. Features are computed as `luthier data prepare-speech` computed
 * the training store's (kind and sample rate read from it) and normalised as in training; one
 * exit is decoded greedily or by prefix beam search (models/ctc_decode.h). With --exit auto the
 * exits are scored in order and the first one the confidence policy accepts is decoded
 * (models/exit_policy.h); the model's forward computes every exit in one pass, so `auto` saves
 * decoding, not encoder compute, and the line reports the exit it chose. */
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "experiments/runner/asr_infer.h"
#include "experiments/runner/task_asr.h"
#include "experiments/runner/trainer.h"
#include "models/audio.h"
#include "models/ctc_decode.h"
#include "models/exit_policy.h"
#include "models/features.h"

typedef struct transcribe_args {
    const char *config, *checkpoint;
    int exit;                 /* 1-based; 0: auto; -1: the last */
    lu_exit_policy policy;
    int beam;                 /* 0: greedy */
    int first_audio;
} transcribe_args;

void lu_asr_transcribe_usage(FILE *f)
{
    fprintf(f,
            "usage: luthier asr transcribe --config CFG.yaml [--checkpoint FILE] [--exit N|auto]\n"
            "                              [--policy entropy:T|posterior:T] [--beam K] AUDIO...\n"
            "\n"
            "Loads the asr task of CFG.yaml with FILE (default: the run's checkpoints/last.h5) and prints\n"
            "one line per audio file: PATH<TAB>EXIT<TAB>TRANSCRIPT.\n"
            "  --exit N      decode exit N (1-based; default: the last)\n"
            "  --exit auto   decode the first exit whose confidence passes --policy (default\n"
            "                entropy:0.2: mean normalised frame entropy <= 0.2; posterior:T: mean\n"
            "                max-posterior >= T); the last exit when none does\n"
            "  --beam K      prefix beam search with K prefixes (default: greedy decoding)\n");
}

static int usage_error(const char *what, const char *value)
{
    fprintf(stderr, "luthier asr transcribe: %s '%s'\n", what, value);
    lu_asr_transcribe_usage(stderr);
    return 2;
}

/* -1: run; otherwise the exit code. */
static int parse(int argc, char **argv, transcribe_args *a)
{
    *a = (transcribe_args){.exit = -1, .policy = {LU_EXIT_ENTROPY, 0.2}, .first_audio = argc};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            lu_asr_transcribe_usage(stdout);
            return 0;
        }
        if (strncmp(o, "--", 2)) {
            a->first_audio = i;
            break;
        }
        if (i + 1 >= argc) return usage_error("missing value for", o);
        const char *v = argv[++i];
        char *end;
        if (!strcmp(o, "--config")) {
            a->config = v;
        } else if (!strcmp(o, "--checkpoint")) {
            a->checkpoint = v;
        } else if (!strcmp(o, "--exit")) {
            long e = strtol(v, &end, 10);
            if (!strcmp(v, "auto")) a->exit = 0;
            else if (*end || end == v || e < 1 || e > 1000) return usage_error("--exit needs a positive exit number or auto, got", v);
            else a->exit = (int)e;
        } else if (!strcmp(o, "--policy")) {
            if (lu_exit_policy_parse(v, &a->policy)) return usage_error(lu_error_message(), v);
        } else if (!strcmp(o, "--beam")) {
            long k = strtol(v, &end, 10);
            if (*end || end == v || k < 1 || k > 1000) return usage_error("--beam needs 1..1000 prefixes, got", v);
            a->beam = (int)k;
        } else {
            return usage_error("unknown option", o);
        }
    }
    if (!a->config) return usage_error("missing", "--config");
    if (a->first_audio >= argc) return usage_error("no audio file after the options", "");
    return -1;
}

/* Features of one file as the training store's, or NULL + error. */
static lu_tensor *features_of(const char *path, const char *kind, int rate)
{
    lu_audio a;
    if (lu_audio_read(path, rate, 0, &a)) return NULL;
    lu_tensor *f;
    if (!strcmp(kind, "fbank")) {
        lu_fbank_opts o = lu_fbank_defaults();
        o.sample_rate = a.rate;
        f = lu_fbank(a.samples, a.n, &o);
    } else {
        lu_mel_opts o = lu_mel_defaults();
        o.sample_rate = a.rate;
        o.log = !strcmp(kind, "logmel");
        f = lu_mel_spectrogram(a.samples, a.n, &o);
    }
    lu_audio_free(&a);
    return f;
}

/* Transcribes one file: *exit_used (1-based) and the text (malloc'd). */
static lu_status transcribe(void *state, const transcribe_args *a, const char *path, int *exit_used, char **text)
{
    int rate, n_exits = lu_asr_task_n_exits(state);
    int64_t dim, frames;
    const char *kind = lu_asr_task_features(state, &rate, &dim);
    lu_tensor *feats = features_of(path, kind, rate);
    if (!feats) return lu_error_code();
    lu_tensor *exits[LU_ASR_MAX_EXITS] = {0};
    lu_status st = feats->shape[1] == dim ? LU_OK
                 : lu_errorf(LU_ERR_SHAPE, "%s: %lld features per frame, the model takes %lld", path,
                             (long long)feats->shape[1], (long long)dim);
    if (!st) st = lu_asr_task_forward(state, lu_tensor_data(feats), feats->shape[0], exits, &frames);
    lu_tensor_release(feats);
    LU_TRY(st);
    int64_t T = exits[0]->shape[1], V = exits[0]->shape[2];
    if (frames > T) frames = T;
    for (int i = 1; i < n_exits; i++)
        if (exits[i]->shape[1] != T || exits[i]->shape[2] != V)
            return lu_errorf(LU_ERR_SHAPE, "asr transcribe: exit %d has %lld frames x %lld units, exit 1 %lld x %lld", i + 1,
                             (long long)exits[i]->shape[1], (long long)exits[i]->shape[2], (long long)T, (long long)V);
    float *logp = malloc((size_t)(T * V) * sizeof *logp);
    if (!logp) return lu_errorf(LU_ERR_NOMEM, "asr transcribe: out of memory");
    int e = a->exit > 0 ? a->exit - 1 : n_exits - 1;
    if (a->exit == 0)
        for (int i = 0; i < n_exits - 1 && !st; i++) {
            if ((st = lu_tensor_to_host(exits[i], LU_F32, logp))) break;
            if (lu_exit_accepts(&a->policy, lu_exit_score(a->policy.criterion, logp, frames, V))) {
                e = i;
                break;
            }
        }
    if (!st) st = lu_tensor_to_host(exits[e], LU_F32, logp);
    lu_ctc_hyp hyp = {0};
    if (!st && a->beam) {
        lu_ctc_beam_opts o = lu_ctc_beam_opts_default();
        o.beam_size = a->beam;
        int n_out;
        st = lu_ctc_beam_search(logp, (int)frames, (int)V, &o, &hyp, &n_out);
    } else if (!st) {
        st = lu_ctc_greedy(logp, (int)frames, (int)V, 0, &hyp);
    }
    free(logp);
    if (!st && !(*text = lu_asr_task_detokenize(state, hyp.tokens, hyp.n_tokens))) st = lu_error_code();
    lu_ctc_hyp_free(&hyp);
    *exit_used = e + 1;
    return st;
}

int lu_asr_transcribe_cli(int argc, char **argv)
{
    transcribe_args a;
    int rc = parse(argc, argv, &a);
    if (rc >= 0) return rc;
    lu_run_options opt = {.config_path = a.config, .checkpoint = a.checkpoint};
    lu_loaded_task *t = lu_task_open(&opt);
    if (!t) {
        fprintf(stderr, "luthier asr transcribe: %s\n", lu_error_message());
        return 1;
    }
    void *state = lu_loaded_task_state(t);
    if (lu_loaded_task_kind(t) != &lu_task_asr) {
        fprintf(stderr, "luthier asr transcribe: %s is a '%s' task, not asr\n", a.config, lu_loaded_task_kind(t)->name);
        lu_task_close(t);
        return 2;
    }
    int n_exits = lu_asr_task_n_exits(state);
    if (a.exit > n_exits) {
        fprintf(stderr, "luthier asr transcribe: --exit %d, the model has exits 1..%d\n", a.exit, n_exits);
        lu_task_close(t);
        return 2;
    }
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    if (!arena) {
        fprintf(stderr, "luthier asr transcribe: %s\n", lu_error_message());
        lu_task_close(t);
        return 1;
    }
    lu_arena *prev = lu_arena_activate(arena);
    rc = 0;
    for (int i = a.first_audio; i < argc; i++) {
        lu_arena_reset(arena);
        int exit_used = 0;
        char *text = NULL;
        if (transcribe(state, &a, argv[i], &exit_used, &text)) {
            fprintf(stderr, "luthier asr transcribe: %s: %s\n", argv[i], lu_error_message());
            rc = 1;
        } else {
            printf("%s\t%d\t%s\n", argv[i], exit_used, text);
        }
        free(text);
    }
    fflush(stdout);
    lu_arena_activate(prev);
    lu_arena_free(arena);
    lu_task_close(t);
    return rc;
}
