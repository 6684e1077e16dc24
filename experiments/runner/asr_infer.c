/* asr_infer.c - `luthier asr transcribe`: a trained `asr` model (a checkpoint, which holds its
 * config, token set and feature settings; experiments/runner/task_asr.h) turns audio files into
 * text. Features are computed as `luthier data prepare-speech` computed the training store's and
 * normalised as in training; the encoder runs exit by exit and stops at the exit asked for
 * (--exit N) or at the first one the confidence policy accepts (--exit auto;
 * models/exit_policy.h), whose log-probabilities are decoded greedily or by prefix beam search
 * (models/ctc_decode.h). Each line reports the exit used; with --exit auto a summary on stderr
 * gives the mean exit and the share of encoder layers run. */
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "experiments/runner/asr_infer.h"
#include "experiments/runner/task_asr.h"
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
            "usage: luthier asr transcribe --checkpoint FILE|RUN_DIR [--config CFG.yaml] [--exit N|auto]\n"
            "                              [--policy entropy:T|posterior:T] [--beam K] AUDIO...\n"
            "       luthier asr transcribe --config CFG.yaml [options] AUDIO...   (the run's last checkpoint)\n"
            "\n"
            "Loads a trained asr model and prints one line per audio file: PATH<TAB>EXIT<TAB>TRANSCRIPT.\n"
            "The checkpoint holds the config, token set and feature settings; RUN_DIR means its\n"
            "checkpoints/last.h5. Checkpoints written before they held the token set need the training\n"
            "data their config names.\n"
            "  --config CFG  use this config instead of the checkpoint's\n"
            "  --exit N      run the encoder up to exit N and decode it (1-based; default: the last)\n"
            "  --exit auto   run the encoder exit by exit and stop at the first exit whose confidence\n"
            "                passes --policy (default entropy:0.2: mean normalised frame entropy <= 0.2;\n"
            "                posterior:T: mean max-posterior >= T), the last exit when none does; a\n"
            "                summary of exits and encoder layers run goes to stderr\n"
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
    if (!a->config && !a->checkpoint) return usage_error("missing", "--checkpoint");
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

/* Transcribes one file: the exit used and encoder layers run, and the text (malloc'd). */
static lu_status transcribe(void *state, const transcribe_args *a, const char *path, int *exit_used, int *layers,
                            char **text)
{
    int rate;
    int64_t dim;
    const char *kind = lu_asr_task_features(state, &rate, &dim);
    lu_tensor *feats = features_of(path, kind, rate);
    if (!feats) return lu_error_code();
    lu_asr_exit_out out = {0};
    lu_status st = feats->shape[1] == dim ? LU_OK
                 : lu_errorf(LU_ERR_SHAPE, "%s: %lld features per frame, the model takes %lld", path,
                             (long long)feats->shape[1], (long long)dim);
    if (!st) st = lu_asr_task_run(state, lu_tensor_data(feats), feats->shape[0], a->exit > 0 ? a->exit : 0,
                                  a->exit == 0 ? &a->policy : NULL, &out);
    lu_tensor_release(feats);
    LU_TRY(st);
    lu_ctc_hyp hyp = {0};
    if (a->beam) {
        lu_ctc_beam_opts o = lu_ctc_beam_opts_default();
        o.beam_size = a->beam;
        int n_out;
        st = lu_ctc_beam_search(out.logp, (int)out.frames, (int)out.vocab, &o, &hyp, &n_out);
    } else {
        st = lu_ctc_greedy(out.logp, (int)out.frames, (int)out.vocab, 0, &hyp);
    }
    free(out.logp);
    if (!st && !(*text = lu_asr_task_detokenize(state, hyp.tokens, hyp.n_tokens))) st = lu_error_code();
    lu_ctc_hyp_free(&hyp);
    *exit_used = out.exit;
    *layers = out.layers;
    return st;
}

int lu_asr_transcribe_cli(int argc, char **argv)
{
    transcribe_args a;
    int rc = parse(argc, argv, &a);
    if (rc >= 0) return rc;
    void *state = NULL;
    if (lu_asr_task_open(a.checkpoint, a.config, &state)) {
        fprintf(stderr, "luthier asr transcribe: %s\n", lu_error_message());
        return 1;
    }
    int n_exits = lu_asr_task_n_exits(state);
    if (a.exit > n_exits) {
        fprintf(stderr, "luthier asr transcribe: --exit %d, the model has exits 1..%d\n", a.exit, n_exits);
        lu_asr_task_close(state);
        return 2;
    }
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    if (!arena) {
        fprintf(stderr, "luthier asr transcribe: %s\n", lu_error_message());
        lu_asr_task_close(state);
        return 1;
    }
    lu_arena *prev = lu_arena_activate(arena);
    rc = 0;
    int done = 0;
    double exit_sum = 0, layer_sum = 0;
    for (int i = a.first_audio; i < argc; i++) {
        lu_arena_reset(arena);
        int exit_used = 0, layers = 0;
        char *text = NULL;
        if (transcribe(state, &a, argv[i], &exit_used, &layers, &text)) {
            fprintf(stderr, "luthier asr transcribe: %s: %s\n", argv[i], lu_error_message());
            rc = 1;
        } else {
            printf("%s\t%d\t%s\n", argv[i], exit_used, text);
            done++;
            exit_sum += exit_used;
            layer_sum += layers;
        }
        free(text);
    }
    fflush(stdout);
    if (a.exit == 0 && done)
        fprintf(stderr, "luthier asr transcribe: %d files, mean exit %.2f of %d, %.1f%% of the encoder layers run\n", done,
                exit_sum / done, n_exits, 100.0 * layer_sum / ((double)done * lu_asr_task_exit_layers(state, n_exits - 1)));
    lu_arena_activate(prev);
    lu_arena_free(arena);
    lu_asr_task_close(state);
    return rc;
}
