/* task_asr.c - the `asr` task: an early-exit CTC speech recogniser (EE-Conformer, Splitformer
 * or early-exit Zipformer; models/conformer.h, models/zipformer.h) trained on HDF5 feature
 * stores written by `luthier data prepare-speech` (models/asr_data.h).
 *
 * Data: utterances sorted by length and cut into batches of bounded padded frames, the batch
 * order shuffled per epoch by the seed (lu_asr_buckets), so micro-batch `position` is a pure
 * function of the config and resuming is exact. Features are normalised per dimension with the
 * mean and deviation of the first data.cmvn_utts training utterances, then SpecAugment masks
 * (models/features.h) are drawn from (seed + utterance, position).
 * Tokens: characters (CTC blank 0, <unk> 1, word boundary 2, then the alphabet) or a BPE model
 * trained on the normalised training transcripts at create time (deterministic, so a resumed
 * run rebuilds the same units; tokens.file keeps a copy).
 * Loss: sum_i w_i CTC_i over the exits, each CTC with blank 0, torch's mean reduction (each
 * utterance's loss divided by its target length, averaged over the batch) and zero_infinity, as
 * the authors' train.py (asr.md 7.1) - for every architecture, so the loss scale does not depend
 * on the batch size. Evaluation: greedy CTC decoding of every exit on the held-out store and the
 * corpus WER per exit; then, for a few thresholds of each confidence criterion
 * (models/exit_policy.h), the corpus WER when every utterance uses the first exit the policy
 * accepts, the mean 1-based index of those exits, and what stopping costs. The evaluation runs
 * batches exit by exit, timing each step; a batch stops once every utterance in it has reached
 * its exit, so the compute is that of the batch's latest exit: *_layer_frac is the fraction of
 * encoder layers run (Splitformer branches not counted), *_time_frac the fraction of the encoder
 * wall time of the full forward, summed from the step times measured on this evaluation's full
 * pass (the early-stopped run executes exactly those steps; the confidence scoring is not timed),
 * and *_utt_layer_frac the fraction of layers when every utterance runs alone up to its own exit
 * (as `luthier asr transcribe --exit auto` does).
 * Checkpoints are self-contained (model.self_contained): the buffer asr.assets holds what
 * inference needs beyond the weights, so `luthier asr transcribe --checkpoint` runs without the
 * training data (lu_asr_task_open). */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <hdf5.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/dist.h"
#include "core/fileio.h"
#include "core/ops.h"
#include "experiments/runner/task.h"
#include "experiments/runner/task_asr.h"
#include "experiments/runner/trainer.h"
#include "models/asr_data.h"
#include "models/bpe.h"
#include "models/conformer.h"
#include "models/ctc_decode.h"
#include "models/exit_policy.h"
#include "models/features.h"
#include "models/wer.h"
#include "models/zipformer.h"

enum { ARCH_EE_CONFORMER, ARCH_SPLITFORMER, ARCH_EE_ZIPFORMER };
enum { NORM_NONE, NORM_UPPER, NORM_CLEAN_UPPER, NORM_WORDS_UPPER };
enum { TOKENS_CHARS, TOKENS_BPE };

#define MAX_EXITS LU_ASR_MAX_EXITS /* entries of wer_keys */
#define DEMO_MAX 8

typedef struct asr_config {
    char *train_features, *valid_features;
    int64_t max_frames, max_train_frames, cmvn_utts, eval_utts;
    int text_norm;
    int tokens_kind;
    char *alphabet, *tokens_file;
    int64_t bpe_vocab_size;
    bool specaug;
    int64_t sa_time_masks, sa_time_width, sa_freq_masks, sa_freq_width;
    double sa_time_ratio;
    int arch;
    int64_t d_model, num_heads, ffn_dim, n_exits, layers_per_exit, kernel, max_len;
    double dropout;
    lu_cfg_list split_exits;
    int64_t split_num_layers, split_factor;
    bool ctc_utterance_lengths;
    char *zipformer_config;
    lu_cfg_list exit_weights;
    bool self_contained;
    int64_t demo_examples;
} asr_config;

#define F(sec, key, type, member, req, def, choices, help) \
    {sec, key, type, offsetof(asr_config, member), req, def, choices, help}
static const lu_cfg_field asr_schema[] = {
    F("data", "train_features", LU_CFG_STRING, train_features, true, NULL, NULL, "training feature store (luthier data prepare-speech)"),
    F("data", "valid_features", LU_CFG_STRING, valid_features, true, NULL, NULL, "held-out feature store (WER per exit)"),
    F("data", "max_frames", LU_CFG_INT, max_frames, false, "12000", NULL, "padded feature frames per micro-batch (utterances x longest)"),
    F("data", "max_train_frames", LU_CFG_INT, max_train_frames, false, "2000", NULL, "longer training utterances are dropped (100 frames/s)"),
    F("data", "cmvn_utts", LU_CFG_INT, cmvn_utts, false, "1000", NULL, "training utterances for the feature mean/deviation (0: no normalisation)"),
    F("data", "eval_utts", LU_CFG_INT, eval_utts, false, "0", NULL, "held-out utterances evaluated (0: all)"),
    F("data", "text_norm", LU_CFG_ENUM, text_norm, false, "words_upper", "none|upper|clean_upper|words_upper",
      "transcript normalisation: upper = upper-case; clean_upper = asr.md 7.2 cleaning + upper; words_upper = upper, ASCII punctuation except ' becomes a space"),
    F("tokens", "kind", LU_CFG_ENUM, tokens_kind, false, "chars", "chars|bpe", "CTC output units"),
    F("tokens", "alphabet", LU_CFG_STRING, alphabet, false, "", NULL, "chars: the characters in id order (empty: those of the training transcripts)"),
    F("tokens", "bpe_vocab_size", LU_CFG_INT, bpe_vocab_size, false, "256", NULL, "bpe: units, with asr.md 7.2 ids (0 @ = blank, 126 <pad>, 127 <unk>)"),
    F("tokens", "file", LU_CFG_STRING, tokens_file, false, NULL, NULL, "where to save the token set (luthier-bpe JSON); empty: not saved"),
    F("specaug", "enabled", LU_CFG_BOOL, specaug, false, "true", NULL, "SpecAugment on training batches"),
    F("specaug", "time_masks", LU_CFG_INT, sa_time_masks, false, "2", NULL, "time masks per utterance"),
    F("specaug", "time_width", LU_CFG_INT, sa_time_width, false, "40", NULL, "widest time mask (frames)"),
    F("specaug", "time_ratio", LU_CFG_FLOAT, sa_time_ratio, false, "0.2", NULL, "widest time mask as a fraction of the utterance"),
    F("specaug", "freq_masks", LU_CFG_INT, sa_freq_masks, false, "2", NULL, "frequency masks per utterance"),
    F("specaug", "freq_width", LU_CFG_INT, sa_freq_width, false, "15", NULL, "widest frequency mask (bins)"),
    F("model", "arch", LU_CFG_ENUM, arch, false, "ee_conformer", "ee_conformer|splitformer|ee_zipformer", "architecture"),
    F("model", "d_model", LU_CFG_INT, d_model, false, "144", NULL, "Conformer width"),
    F("model", "num_heads", LU_CFG_INT, num_heads, false, "4", NULL, "Conformer attention heads"),
    F("model", "ffn_dim", LU_CFG_INT, ffn_dim, false, "576", NULL, "Conformer feed-forward width"),
    F("model", "n_exits", LU_CFG_INT, n_exits, false, "6", NULL, "Conformer exits (blocks)"),
    F("model", "layers_per_exit", LU_CFG_INT, layers_per_exit, false, "1", NULL, "Conformer layers per exit block"),
    F("model", "kernel", LU_CFG_INT, kernel, false, "15", NULL, "depthwise convolution kernel (odd)"),
    F("model", "dropout", LU_CFG_FLOAT, dropout, false, "0.1", NULL, "Conformer dropout"),
    F("model", "max_len", LU_CFG_INT, max_len, false, "2000", NULL, "positional-encoding length (frames at 25 Hz)"),
    F("model", "split_exits", LU_CFG_INT_LIST, split_exits, false, NULL, NULL, "splitformer: blocks with a parallel branch (empty: first and last)"),
    F("model", "split_num_layers", LU_CFG_INT, split_num_layers, false, "1", NULL, "splitformer: layers per parallel branch"),
    F("model", "split_factor", LU_CFG_INT, split_factor, false, "2", NULL, "splitformer: branch decimation"),
    F("model", "ctc_utterance_lengths", LU_CFG_BOOL, ctc_utterance_lengths, false, "true", NULL,
      "CTC input lengths per utterance (false: the padded length, as the authors' train.py)"),
    F("model", "zipformer_config", LU_CFG_STRING, zipformer_config, false, NULL, NULL, "ee_zipformer: JSON of icefall Zipformer2 arguments"),
    F("model", "exit_weights", LU_CFG_FLOAT_LIST, exit_weights, false, NULL, NULL, "CTC loss weight per exit (empty: all 1)"),
    F("model", "self_contained", LU_CFG_BOOL, self_contained, false, "true", NULL,
      "checkpoints hold the token set, feature settings and normalisation (asr.assets); false: the layout of checkpoints "
      "written before, to evaluate or resume those"),
    F("demo", "examples", LU_CFG_INT, demo_examples, false, "3", NULL, "reference/hypothesis pairs the demo prints"),
    {0},
};
#undef F

static const char *const wer_keys[MAX_EXITS] = {
    "wer_exit_1", "wer_exit_2", "wer_exit_3", "wer_exit_4", "wer_exit_5", "wer_exit_6", "wer_exit_7", "wer_exit_8",
    "wer_exit_9", "wer_exit_10", "wer_exit_11", "wer_exit_12", "wer_exit_13", "wer_exit_14", "wer_exit_15"};

/* Dynamic-exit policies evaluated: entropy thresholds around the 0.2-0.3 of Wright et al.'s
 * operating points, posterior thresholds from lenient to strict. */
#define DYN_KEYS(name) \
    "dyn_" name "_wer", "dyn_" name "_avg_exit", "dyn_" name "_layer_frac", "dyn_" name "_time_frac", \
        "dyn_" name "_utt_layer_frac"
static const struct {
    lu_exit_policy policy;
    const char *name, *wer_key, *exit_key, *layer_key, *time_key, *utt_layer_key;
} dyn_policies[] = {
    {{LU_EXIT_ENTROPY, 0.1}, "entropy:0.1", DYN_KEYS("entropy_0.1")},
    {{LU_EXIT_ENTROPY, 0.2}, "entropy:0.2", DYN_KEYS("entropy_0.2")},
    {{LU_EXIT_ENTROPY, 0.3}, "entropy:0.3", DYN_KEYS("entropy_0.3")},
    {{LU_EXIT_POSTERIOR, 0.8}, "posterior:0.8", DYN_KEYS("posterior_0.8")},
    {{LU_EXIT_POSTERIOR, 0.9}, "posterior:0.9", DYN_KEYS("posterior_0.9")},
    {{LU_EXIT_POSTERIOR, 0.95}, "posterior:0.95", DYN_KEYS("posterior_0.95")},
};
#undef DYN_KEYS
enum { N_DYN = sizeof dyn_policies / sizeof dyn_policies[0] };
_Static_assert(1 + MAX_EXITS + 5 * N_DYN <= LU_TASK_MAX_METRICS, "asr metrics exceed LU_TASK_MAX_METRICS");

/* The buffer of self-contained checkpoints: a JSON record (see assets_json). */
#define ASSETS_TENSOR "asr.assets"

typedef struct utt_tokens {
    int *ids;
    int n;
} utt_tokens;

typedef struct asr {
    asr_config cfg;
    uint64_t seed;
    lu_asr_store train, valid;
    int64_t *train_ids;          /* store indices of the usable training utterances */
    int64_t n_train;
    utt_tokens *train_tok, *valid_tok;
    char **valid_ref;            /* normalised references */
    lu_asr_buckets buckets;
    float *mean, *inv_std;       /* [dim] or NULL */
    lu_bpe *tokens;
    int n_exits;
    double weights[MAX_EXITS];
    int exit_layer[MAX_EXITS];   /* encoder layers below each exit */
    lu_ee_conformer conformer;
    lu_ee_zipformer zipformer;
    char *zipformer_json;        /* text of model.zipformer_config (ee_zipformer) */
    char features[16];           /* the training store's feature kind, rate and dimension */
    int sample_rate;
    int64_t dim;
    char *assets;                /* the asr.assets record (self-contained checkpoints) or NULL */
    lu_arena *host;              /* host memory of batches built for another device, or NULL */
    /* owned by a state from lu_asr_task_open (the trainer owns them otherwise) */
    lu_params *own_params;
    lu_cfg_field *own_schema;
    void *own_config;
    /* the last evaluation, for demo() */
    bool evaluated;
    double wer[MAX_EXITS];
    double dyn_wer[N_DYN], dyn_exit[N_DYN], dyn_layers[N_DYN], dyn_time[N_DYN], dyn_utt_layers[N_DYN];
    int n_demo;
    char *demo_ref[DEMO_MAX], *demo_hyp[DEMO_MAX][MAX_EXITS];
} asr;

/* ---- text and tokens ------------------------------------------------------------------------ */

static char *normalise(int mode, const char *text)
{
    if (mode == NORM_NONE) return lu_text_squeeze_spaces(text);
    if (mode == NORM_CLEAN_UPPER) {
        char *c = lu_text_clean(text), *u = c ? lu_text_upper(c) : NULL;
        free(c);
        return u;
    }
    char *u = lu_text_upper(text);
    if (!u || mode == NORM_UPPER) {
        char *q = u ? lu_text_squeeze_spaces(u) : NULL;
        free(u);
        return q;
    }
    for (char *p = u; *p; p++)
        if ((unsigned char)*p < 0x80 && *p != '\'' && !(*p >= 'A' && *p <= 'Z') && !(*p >= '0' && *p <= '9')) *p = ' ';
    char *q = lu_text_squeeze_spaces(u);
    free(u);
    return q;
}

static int by_bytes(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* The distinct non-space characters of the lines, by code point (UTF-8 byte order). */
static char *alphabet_of(char *const *lines, int64_t n)
{
    int cap = 64, count = 0;
    char (*chars)[5] = malloc((size_t)cap * sizeof *chars);
    for (int64_t i = 0; chars && i < n; i++)
        for (const unsigned char *p = (const unsigned char *)lines[i]; *p;) {
            int len = *p < 0x80 ? 1 : *p < 0xE0 ? 2 : *p < 0xF0 ? 3 : 4;
            char c[5] = {0};
            memcpy(c, p, (size_t)len);
            p += len;
            if (c[0] == ' ') continue;
            bool seen = false;
            for (int k = 0; k < count && !seen; k++) seen = !strcmp(chars[k], c);
            if (seen) continue;
            if (count == cap) {
                void *grown = realloc(chars, (size_t)(cap *= 2) * sizeof *chars);
                if (!grown) {
                    free(chars);
                    return NULL;
                }
                chars = grown;
            }
            memcpy(chars[count++], c, 5);
        }
    if (!chars) return NULL;
    qsort(chars, (size_t)count, sizeof *chars, by_bytes);
    char *out = malloc((size_t)count * 4 + 1);
    if (out) {
        out[0] = 0;
        for (int k = 0; k < count; k++) strcat(out, chars[k]);
    }
    free(chars);
    return out;
}

static lu_status build_tokens(asr *s, char *const *train_text, int64_t n)
{
    const asr_config *c = &s->cfg;
    if (c->tokens_kind == TOKENS_CHARS) {
        char *alpha = c->alphabet && c->alphabet[0] ? strdup(c->alphabet) : alphabet_of(train_text, n);
        if (!alpha) return lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
        s->tokens = lu_bpe_chars(alpha);
        free(alpha);
    } else {
        lu_bpe_config bc = lu_bpe_config_default();
        bc.vocab_size = (int)c->bpe_vocab_size;
        s->tokens = lu_bpe_train((const char *const *)train_text, (int)n, &bc);
    }
    if (!s->tokens) return lu_error_code();
    if (c->tokens_file && c->tokens_file[0]) LU_TRY(lu_bpe_save(s->tokens, c->tokens_file));
    return LU_OK;
}

/* ---- create --------------------------------------------------------------------------------- */

static int64_t out_frames(const asr *s, int64_t t)
{
    if (s->cfg.arch == ARCH_EE_ZIPFORMER) return (lu_zipformer_embed_frames(t) + 1) / 2;
    return lu_ee_conformer_out_frames(t);
}

static lu_status declare_model(asr *s, int64_t dim, lu_params *params)
{
    const asr_config *c = &s->cfg;
    int64_t V = lu_bpe_size(s->tokens);
    if (c->arch == ARCH_EE_ZIPFORMER) {
        if (!s->zipformer_json) return lu_errorf(LU_ERR_CONFIG, "asr: model.arch ee_zipformer needs model.zipformer_config");
        const char *name = c->zipformer_config ? c->zipformer_config : "model.zipformer_config";
        lu_ee_zipformer_config zc = {.vocab_size = V};
        LU_TRY(lu_zipformer_config_parse_json(s->zipformer_json, name, &zc.enc));
        if (zc.enc.feature_dim != dim)
            return lu_errorf(LU_ERR_CONFIG, "asr: %s has feature_dim %lld, the feature store has %lld", name,
                             (long long)zc.enc.feature_dim, (long long)dim);
        lu_ee_zipformer_default_exits(&zc);
        s->n_exits = zc.n_exits;
        for (int i = 0, layers = 0, k = 0; i < zc.enc.num_stacks; i++) {
            layers += zc.enc.num_encoder_layers[i];
            if (k < zc.n_exits && zc.exit_stacks[k] == i) s->exit_layer[k++] = layers;
        }
        if (s->n_exits > MAX_EXITS) return lu_errorf(LU_ERR_CONFIG, "asr: at most %d exits, got %d", MAX_EXITS, s->n_exits);
        return lu_ee_zipformer_declare(&s->zipformer, &zc, params);
    }
    if (c->n_exits < 1 || c->n_exits > MAX_EXITS)
        return lu_errorf(LU_ERR_CONFIG, "asr: model.n_exits must be in [1, %d], got %lld", MAX_EXITS, (long long)c->n_exits);
    lu_ee_conformer_config ec = {
        .block = {.input_dim = c->d_model, .num_heads = (int)c->num_heads, .ffn_dim = c->ffn_dim,
                  .num_layers = (int)c->layers_per_exit, .depthwise_conv_kernel_size = (int)c->kernel, .dropout = c->dropout},
        .n_mels = dim, .vocab_size = V, .n_exits = (int)c->n_exits, .max_len = c->max_len,
        .split_num_layers = (int)c->split_num_layers, .split_factor = (int)c->split_factor,
        .ctc_utterance_lengths = c->ctc_utterance_lengths,
    };
    if (c->arch == ARCH_SPLITFORMER) {
        if (c->split_exits.n > LU_CONFORMER_MAX_EXITS)
            return lu_errorf(LU_ERR_CONFIG, "asr: model.split_exits has %d entries, at most %d", c->split_exits.n, LU_CONFORMER_MAX_EXITS);
        ec.n_split = c->split_exits.n ? c->split_exits.n : (c->n_exits > 1 ? 2 : 1);
        for (int k = 0; k < ec.n_split; k++)
            ec.split_exits[k] = c->split_exits.n ? (int)c->split_exits.i[k] : (k == 0 ? 0 : (int)c->n_exits - 1);
    }
    s->n_exits = ec.n_exits;
    for (int i = 0; i < s->n_exits; i++) s->exit_layer[i] = (i + 1) * (int)c->layers_per_exit;
    return lu_ee_conformer_declare(&s->conformer, &ec, params);
}

/* Per-dimension mean and 1/deviation over the first cmvn_utts training utterances. */
static lu_status compute_cmvn(asr *s)
{
    int64_t dim = s->train.dim, n = s->cfg.cmvn_utts < s->n_train ? s->cfg.cmvn_utts : s->n_train;
    if (n <= 0) return LU_OK;
    double *sum = calloc((size_t)dim, sizeof *sum), *sq = calloc((size_t)dim, sizeof *sq);
    s->mean = malloc((size_t)dim * sizeof *s->mean);
    s->inv_std = malloc((size_t)dim * sizeof *s->inv_std);
    float *buf = NULL;
    int64_t frames = 0;
    lu_status st = sum && sq && s->mean && s->inv_std ? LU_OK : lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    for (int64_t k = 0; k < n && !st; k++) {
        int64_t u = s->train_ids[k], T = lu_asr_store_frames(&s->train, u);
        float *grown = realloc(buf, (size_t)(T * dim) * sizeof *buf);
        if (!grown) {
            st = lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
            break;
        }
        buf = grown;
        if ((st = lu_asr_store_read(&s->train, u, buf))) break;
        for (int64_t t = 0; t < T; t++)
            for (int64_t d = 0; d < dim; d++) sum[d] += buf[t * dim + d], sq[d] += (double)buf[t * dim + d] * buf[t * dim + d];
        frames += T;
    }
    for (int64_t d = 0; !st && d < dim; d++) {
        double m = sum[d] / (double)frames, var = sq[d] / (double)frames - m * m;
        s->mean[d] = (float)m;
        s->inv_std[d] = (float)(1.0 / sqrt(var > 1e-10 ? var : 1e-10));
    }
    free(buf);
    free(sum);
    free(sq);
    return st;
}

static lu_status encode(asr *s, const char *text, utt_tokens *t, char **normalised_out)
{
    char *norm = normalise(s->cfg.text_norm, text);
    if (!norm) return lu_error_code();
    lu_status st = lu_bpe_encode(s->tokens, norm, &t->ids, &t->n);
    if (normalised_out) *normalised_out = norm;
    else free(norm);
    return st;
}

/* ---- self-contained checkpoints -------------------------------------------------------------- */

/* What inference needs beyond the weights, as JSON: {"format": "luthier-asr-assets",
 * "features": the store's kind, "sample_rate", "dim", "cmvn_mean" and "cmvn_inv_std" ([dim];
 * absent without normalisation), "tokens": the luthier-bpe JSON text (models/bpe.h),
 * "zipformer_config": the JSON text of model.zipformer_config (ee_zipformer only)}. cJSON prints
 * a number with the digits that read it back (15, else 17), so each float comes back bit-exact. */
static char *assets_json(const asr *s)
{
    cJSON *root = cJSON_CreateObject();
    char *tokens = lu_bpe_to_json(s->tokens), *text = NULL;
    bool ok = root && tokens && cJSON_AddStringToObject(root, "format", "luthier-asr-assets") &&
              cJSON_AddStringToObject(root, "features", s->features) &&
              cJSON_AddNumberToObject(root, "sample_rate", s->sample_rate) &&
              cJSON_AddNumberToObject(root, "dim", (double)s->dim) && cJSON_AddStringToObject(root, "tokens", tokens);
    if (ok && s->mean) {
        cJSON *mean = cJSON_CreateFloatArray(s->mean, (int)s->dim), *inv = cJSON_CreateFloatArray(s->inv_std, (int)s->dim);
        ok = mean && inv;
        if (mean) cJSON_AddItemToObject(root, "cmvn_mean", mean);
        if (inv) cJSON_AddItemToObject(root, "cmvn_inv_std", inv);
    }
    if (ok && s->zipformer_json) ok = cJSON_AddStringToObject(root, "zipformer_config", s->zipformer_json);
    if (ok) text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    free(tokens);
    if (!text) lu_errorf(LU_ERR_NOMEM, "asr: out of memory writing %s", ASSETS_TENSOR);
    return text;
}

/* Reads the record of assets_json into a state that has no data stores. */
static lu_status assets_read(asr *s, const char *text, const char *path)
{
    cJSON *root = cJSON_Parse(text);
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "features");
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(root, "sample_rate");
    const cJSON *dim = cJSON_GetObjectItemCaseSensitive(root, "dim");
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    const cJSON *mean = cJSON_GetObjectItemCaseSensitive(root, "cmvn_mean");
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(root, "cmvn_inv_std");
    const cJSON *zip = cJSON_GetObjectItemCaseSensitive(root, "zipformer_config");
    lu_status st = LU_OK;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "luthier-asr-assets") || !cJSON_IsString(kind) ||
        strlen(kind->valuestring) >= sizeof s->features || !cJSON_IsNumber(rate) || rate->valuedouble < 1 ||
        !cJSON_IsNumber(dim) || dim->valuedouble < 1 || !cJSON_IsString(tokens) || (zip && !cJSON_IsString(zip)) ||
        !mean != !inv || (mean && (!cJSON_IsArray(mean) || !cJSON_IsArray(inv) ||
                                   cJSON_GetArraySize(mean) != dim->valueint || cJSON_GetArraySize(inv) != dim->valueint))) {
        st = lu_errorf(LU_ERR_FORMAT, "checkpoint '%s': tensor '%s' is not a luthier-asr-assets record (features, "
                       "sample_rate, dim, tokens, and dim values per normalisation array)", path, ASSETS_TENSOR);
    } else {
        snprintf(s->features, sizeof s->features, "%s", kind->valuestring);
        s->sample_rate = rate->valueint;
        s->dim = dim->valueint;
        if (!(s->tokens = lu_bpe_from_json(tokens->valuestring, ASSETS_TENSOR))) st = lu_error_context("checkpoint '%s': ", path);
        if (!st && zip && !(s->zipformer_json = strdup(zip->valuestring))) st = lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    }
    if (!st && mean) {
        s->mean = malloc((size_t)s->dim * sizeof *s->mean);
        s->inv_std = malloc((size_t)s->dim * sizeof *s->inv_std);
        if (!s->mean || !s->inv_std) st = lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
        for (int64_t d = 0; !st && d < s->dim; d++) {
            const cJSON *m = cJSON_GetArrayItem(mean, (int)d), *v = cJSON_GetArrayItem(inv, (int)d);
            if (!cJSON_IsNumber(m) || !cJSON_IsNumber(v))
                st = lu_errorf(LU_ERR_FORMAT, "checkpoint '%s': tensor '%s': normalisation value %lld is not a number", path,
                               ASSETS_TENSOR, (long long)d);
            else s->mean[d] = (float)m->valuedouble, s->inv_std[d] = (float)v->valuedouble;
        }
    }
    cJSON_Delete(root);
    return st;
}

/* Declares asr.assets, a u8 buffer of the record's length (filled by asr_init or a checkpoint). */
static lu_status declare_assets(lu_params *params, size_t n)
{
    return lu_params_add(params, ASSETS_TENSOR, LU_U8, LU_SHAPE((int64_t)n), false) ? LU_OK : lu_error_code();
}

/* A state before create/open fills it. */
static asr *asr_new(const asr_config *c, uint64_t seed)
{
    asr *s = calloc(1, sizeof *s);
    if (!s) {
        lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
        return NULL;
    }
    s->cfg = *c;
    s->seed = seed;
    s->train.file = s->train.feats = s->valid.file = s->valid.feats = -1;
    return s;
}

static lu_status asr_create(void **state, const void *config, uint64_t seed, lu_params *params)
{
    const asr_config *c = config;
    asr *s = asr_new(c, seed);
    if (!(*state = s)) return lu_error_code();
    if (c->max_frames < 1 || c->max_train_frames < 8)
        return lu_errorf(LU_ERR_CONFIG, "asr: data.max_frames must be >= 1 and data.max_train_frames >= 8");
    LU_TRY(lu_asr_store_open(c->train_features, &s->train));
    LU_TRY(lu_asr_store_open(c->valid_features, &s->valid));
    if (s->train.dim != s->valid.dim)
        return lu_errorf(LU_ERR_CONFIG, "asr: %s has %lld features per frame, %s has %lld", c->train_features,
                         (long long)s->train.dim, c->valid_features, (long long)s->valid.dim);
    snprintf(s->features, sizeof s->features, "%s", s->train.features);
    s->sample_rate = s->train.sample_rate;
    s->dim = s->train.dim;
    if (c->arch == ARCH_EE_ZIPFORMER && c->zipformer_config &&
        !(s->zipformer_json = lu_file_read(c->zipformer_config, (size_t)1 << 20, NULL)))
        return lu_error_context("asr: model.zipformer_config: ");
    int64_t n = s->train.n;
    char **norm = calloc((size_t)n, sizeof *norm);
    s->train_tok = calloc((size_t)n, sizeof *s->train_tok);
    s->train_ids = malloc((size_t)n * sizeof *s->train_ids);
    s->valid_tok = calloc((size_t)s->valid.n, sizeof *s->valid_tok);
    s->valid_ref = calloc((size_t)s->valid.n, sizeof *s->valid_ref);
    if (!norm || !s->train_tok || !s->train_ids || !s->valid_tok || !s->valid_ref) {
        free(norm);
        return lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    }
    lu_status st = LU_OK;
    for (int64_t i = 0; i < n && !st; i++)
        if (!(norm[i] = normalise(c->text_norm, s->train.text[i]))) st = lu_error_code();
    if (!st) st = build_tokens(s, norm, n);
    for (int64_t i = 0; i < n; i++) free(norm[i]);
    free(norm);
    LU_TRY(st);
    LU_TRY(declare_model(s, s->train.dim, params));
    if (c->exit_weights.n && c->exit_weights.n != s->n_exits)
        return lu_errorf(LU_ERR_CONFIG, "asr: model.exit_weights has %d entries for %d exits", c->exit_weights.n, s->n_exits);
    for (int i = 0; i < s->n_exits; i++) s->weights[i] = c->exit_weights.n ? c->exit_weights.f[i] : 1.0;
    /* Usable training utterances: not too long, and with at least as many output frames as
     * target tokens (otherwise CTC has no alignment). */
    int64_t too_long = 0, too_short = 0;
    for (int64_t i = 0; i < n; i++) {
        LU_TRY(encode(s, s->train.text[i], &s->train_tok[i], NULL));
        int64_t T = lu_asr_store_frames(&s->train, i);
        if (T > c->max_train_frames) too_long++;
        else if (s->train_tok[i].n == 0 || out_frames(s, T) < s->train_tok[i].n) too_short++;
        else s->train_ids[s->n_train++] = i;
    }
    if (too_long || too_short)
        fprintf(stderr, "asr: %lld training utterances kept, %lld longer than %lld frames and %lld without a CTC alignment dropped\n",
                (long long)s->n_train, (long long)too_long, (long long)c->max_train_frames, (long long)too_short);
    if (s->n_train == 0) return lu_errorf(LU_ERR_CONFIG, "asr: no usable training utterance in %s", c->train_features);
    for (int64_t i = 0; i < s->valid.n; i++) LU_TRY(encode(s, s->valid.text[i], &s->valid_tok[i], &s->valid_ref[i]));
    int64_t *frames = malloc((size_t)s->n_train * sizeof *frames);
    if (!frames) return lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    for (int64_t k = 0; k < s->n_train; k++) frames[k] = lu_asr_store_frames(&s->train, s->train_ids[k]);
    st = lu_asr_buckets_make(frames, s->n_train, c->max_frames, seed, &s->buckets);
    free(frames);
    LU_TRY(st);
    LU_TRY(compute_cmvn(s));
    if (!c->self_contained) return LU_OK;
    if (!(s->assets = assets_json(s))) return lu_error_code();
    return declare_assets(params, strlen(s->assets));
}

static lu_status asr_init(void *state, uint64_t seed)
{
    asr *s = state;
    lu_params *p = s->cfg.arch == ARCH_EE_ZIPFORMER ? s->zipformer.params : s->conformer.params;
    LU_TRY(s->cfg.arch == ARCH_EE_ZIPFORMER ? lu_ee_zipformer_init(&s->zipformer, seed)
                                            : lu_ee_conformer_init(&s->conformer, seed));
    if (!s->assets) return LU_OK;
    /* After the model's init, which fills every tensor of the store. */
    lu_tensor *t = lu_params_get(p, ASSETS_TENSOR);
    lu_tensor *h = t ? lu_tensor_wrap(LU_U8, t->ndim, t->shape, LU_CPU, s->assets, NULL, NULL) : NULL;
    lu_status st = h ? lu_tensor_copy(t, h) : lu_error_code();
    lu_tensor_release(h);
    return st;
}

static int64_t asr_epoch_size(void *state)
{
    return ((asr *)state)->buckets.n_batches;
}

/* ---- batches and the loss ------------------------------------------------------------------- */

typedef struct batch {
    lu_tensor *feats, *lengths, *targets, *target_lengths;
} batch;

static lu_device model_device(const asr *s)
{
    return (s->cfg.arch == ARCH_EE_ZIPFORMER ? s->zipformer.params : s->conformer.params)->device;
}

/* Pads utterances `ids` of `store` into a batch on the host (in the active arena); `aug`
 * applies SpecAugment keyed by (seed + utterance, position). */
static lu_status host_batch(asr *s, const lu_asr_store *store, const utt_tokens *tok, const int64_t *ids, int64_t B,
                            bool aug, int64_t position, batch *b)
{
    int64_t D = store->dim, T = 0, S = 1;
    for (int64_t k = 0; k < B; k++) {
        int64_t t = lu_asr_store_frames(store, ids[k]);
        T = t > T ? t : T;
        S = tok[ids[k]].n > S ? tok[ids[k]].n : S;
    }
    b->feats = lu_tensor_zeros(LU_F32, LU_SHAPE(B, T, D), LU_CPU);
    b->lengths = lu_tensor_empty(LU_I64, LU_SHAPE(B), LU_CPU);
    b->targets = lu_tensor_zeros(LU_I32, LU_SHAPE(B, S), LU_CPU);
    b->target_lengths = lu_tensor_empty(LU_I64, LU_SHAPE(B), LU_CPU);
    if (!b->feats || !b->lengths || !b->targets || !b->target_lengths) return lu_error_code();
    float *x = lu_tensor_data(b->feats);
    int64_t *len = lu_tensor_data(b->lengths), *tl = lu_tensor_data(b->target_lengths);
    int32_t *tg = lu_tensor_data(b->targets);
    lu_specaug_opts so = {.n_time_masks = (int)s->cfg.sa_time_masks, .max_time_width = (int)s->cfg.sa_time_width,
                          .max_time_ratio = s->cfg.sa_time_ratio, .n_freq_masks = (int)s->cfg.sa_freq_masks,
                          .max_freq_width = (int)s->cfg.sa_freq_width, .mask_value = 0};
    for (int64_t k = 0; k < B; k++) {
        int64_t u = ids[k], t = lu_asr_store_frames(store, u);
        float *row = x + k * T * D;
        LU_TRY(lu_asr_store_read(store, u, row));
        if (s->mean)
            for (int64_t i = 0; i < t; i++)
                for (int64_t d = 0; d < D; d++) row[i * D + d] = (row[i * D + d] - s->mean[d]) * s->inv_std[d];
        if (aug) {
            /* Masks after normalisation, so mask value 0 is the mean. */
            lu_tensor *view = lu_tensor_from_host(LU_F32, LU_SHAPE(t, D), LU_CPU, row);
            if (!view) return lu_error_code();
            LU_TRY(lu_specaugment(view, &so, s->seed + (uint64_t)u * 0x9E3779B97F4A7C15ull, (uint64_t)position));
            memcpy(row, lu_tensor_data(view), (size_t)(t * D) * sizeof *row);
        }
        len[k] = t;
        tl[k] = tok[u].n;
        for (int i = 0; i < tok[u].n; i++) tg[k * S + i] = tok[u].ids[i];
    }
    return LU_OK;
}

/* host_batch on the model's device. For another device than the CPU the batch is built in
 * s->host (reset per batch: host tensors made while a device arena is active would otherwise
 * come from the heap and outlive the step), then each tensor is copied into the active arena. */
static lu_status make_batch(asr *s, const lu_asr_store *store, const utt_tokens *tok, const int64_t *ids, int64_t B,
                            bool aug, int64_t position, batch *b)
{
    lu_device dev = model_device(s);
    if (dev == LU_CPU) return host_batch(s, store, tok, ids, B, aug, position, b);
    if (!s->host && !(s->host = lu_arena_new(LU_CPU, 0))) return lu_error_code();
    lu_arena_reset(s->host);
    lu_arena *prev = lu_arena_activate(s->host);
    batch h;
    lu_status st = host_batch(s, store, tok, ids, B, aug, position, &h);
    lu_arena_activate(prev);
    LU_TRY(st);
    lu_tensor **from[] = {&h.feats, &h.lengths, &h.targets, &h.target_lengths};
    lu_tensor **to[] = {&b->feats, &b->lengths, &b->targets, &b->target_lengths};
    for (int i = 0; i < 4; i++)
        if (!(*to[i] = lu_tensor_convert(*from[i], (*from[i])->dtype, dev))) return lu_error_code();
    return LU_OK;
}

/* Forward: exits[i] [B,T',V] log-probabilities and the per-utterance output lengths. */
static lu_status forward(asr *s, const batch *b, bool training, int64_t position, lu_tensor **exits, lu_tensor **out_len)
{
    if (s->cfg.arch == ARCH_EE_ZIPFORMER) return lu_ee_zipformer_forward(&s->zipformer, b->feats, b->lengths, exits, out_len);
    lu_conformer_run run = {.training = training, .seed = s->seed, .step = (uint64_t)position};
    return lu_ee_conformer_forward(&s->conformer, b->feats, b->lengths, &run, exits, out_len);
}

/* The encoder of either family exit by exit, in eval mode (conformer.h, zipformer.h). */
typedef struct exit_steps {
    asr *s;
    lu_ee_conformer_steps conformer;
    lu_ee_zipformer_steps zipformer;
} exit_steps;

static lu_status steps_begin(asr *s, const batch *b, exit_steps *e)
{
    e->s = s;
    if (s->cfg.arch == ARCH_EE_ZIPFORMER) return lu_ee_zipformer_begin(&s->zipformer, b->feats, b->lengths, &e->zipformer);
    return lu_ee_conformer_begin(&s->conformer, b->feats, b->lengths, NULL, &e->conformer);
}

/* Log-probabilities [B,T',V] of the next exit (a Zipformer runs stacks until one has an exit). */
static lu_tensor *steps_next(exit_steps *e)
{
    if (e->s->cfg.arch != ARCH_EE_ZIPFORMER) return lu_ee_conformer_next(&e->conformer);
    lu_tensor *x = NULL;
    while (!x)
        if (lu_ee_zipformer_next(&e->zipformer, &x)) return NULL;
    return x;
}

static lu_tensor *steps_lengths(const exit_steps *e)
{
    if (e->s->cfg.arch == ARCH_EE_ZIPFORMER) return lu_ee_zipformer_steps_lengths(&e->zipformer);
    return lu_ee_conformer_steps_lengths(&e->conformer);
}

/* Encoder layers run so far (Splitformer branches not counted). */
static int steps_layers(const exit_steps *e)
{
    if (e->s->cfg.arch != ARCH_EE_ZIPFORMER) return e->conformer.done * e->conformer.m->cfg.block.num_layers;
    int n = 0;
    for (int i = 0; i < e->zipformer.done; i++) n += e->zipformer.m->cfg.enc.num_encoder_layers[i];
    return n;
}

static void steps_end(exit_steps *e)
{
    if (e->s->cfg.arch == ARCH_EE_ZIPFORMER) lu_ee_zipformer_steps_end(&e->zipformer);
    else lu_ee_conformer_steps_end(&e->conformer);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Every exit of a batch, block by block: exits[i], out_len, and seconds[i] the wall time from
 * exit i-1 (the batch's features, for i = 0) to exit i. A GPU runs kernels asynchronously: each
 * exit's are waited for before the clock is read. */
static lu_status forward_timed(asr *s, const batch *b, lu_tensor **exits, lu_tensor **out_len, double *seconds)
{
    exit_steps e;
    lu_device dev = model_device(s);
    lu_backend *backend = lu_backend_get(dev);
    if (!backend) return lu_error_code();
    if (dev != LU_CPU) LU_TRY(backend->synchronize());
    double t0 = now_seconds();
    lu_status st = steps_begin(s, b, &e);
    for (int i = 0; i < s->n_exits && !st; i++) {
        if (!(exits[i] = steps_next(&e))) st = lu_error_code();
        if (!st && dev != LU_CPU) st = backend->synchronize();
        double t = now_seconds();
        seconds[i] = t - t0;
        t0 = t;
    }
    if (!st && !(*out_len = steps_lengths(&e))) st = lu_error_code();
    steps_end(&e);
    return st;
}

/* sum_i w_i CTC_i (see the file comment). */
static lu_tensor *exit_loss(asr *s, const batch *b, lu_tensor **exits, lu_tensor *out_len)
{
    lu_tensor *input_lengths = out_len;
    if (s->cfg.arch != ARCH_EE_ZIPFORMER && !s->cfg.ctc_utterance_lengths)
        input_lengths = lu_tensor_full(LU_I64, LU_SHAPE(exits[0]->shape[0]), lu_tensor_device(exits[0]),
                                       (double)exits[0]->shape[1]);
    lu_tensor *loss = NULL;
    for (int i = 0; i < s->n_exits; i++) {
        lu_tensor *l = lu_ctc_loss(exits[i], b->targets, input_lengths, b->target_lengths, 0, LU_REDUCE_MEAN, true);
        if (s->weights[i] != 1.0) l = lu_scale(l, s->weights[i]);
        loss = i ? lu_add(loss, l) : l;
    }
    return loss;
}

static lu_tensor *asr_loss(void *state, int64_t position, int64_t step, double *items)
{
    (void)step;
    asr *s = state;
    const int64_t *idx;
    int64_t B;
    lu_asr_buckets_at(&s->buckets, position, &idx, &B);
    int64_t *ids = malloc((size_t)B * sizeof *ids);
    if (!ids) {
        lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
        return NULL;
    }
    double seconds = 0;
    for (int64_t k = 0; k < B; k++) ids[k] = s->train_ids[idx[k]], seconds += s->train.duration[ids[k]];
    batch b;
    lu_status st = make_batch(s, &s->train, s->train_tok, ids, B, s->cfg.specaug, position, &b);
    free(ids);
    if (st) return NULL;
    *items = seconds;
    lu_tensor *exits[MAX_EXITS] = {0}, *out_len = NULL;
    if (forward(s, &b, true, position, exits, &out_len)) return NULL;
    return exit_loss(s, &b, exits, out_len);
}

/* ---- evaluation ----------------------------------------------------------------------------- */

static void clear_demo(asr *s)
{
    for (int k = 0; k < s->n_demo; k++) {
        free(s->demo_ref[k]);
        for (int i = 0; i < s->n_exits; i++) free(s->demo_hyp[k][i]);
    }
    s->n_demo = 0;
}

/* Decodes every exit of one batch and adds its word errors to totals; utt[k * n_exits + i]
 * receives utterance k's counts at exit i. */
static lu_status score_batch(asr *s, const int64_t *ids, int64_t B, lu_tensor **exits, lu_tensor *out_len,
                             lu_wer_counts *totals, lu_wer_counts *utt)
{
    lu_ctc_hyp *hyp = calloc((size_t)B, sizeof *hyp);
    int *n_out = calloc((size_t)B, sizeof *n_out);
    lu_status st = hyp && n_out ? LU_OK : lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    for (int i = 0; i < s->n_exits && !st; i++) {
        if ((st = lu_ctc_decode_batch(exits[i], out_len, NULL, hyp, n_out))) break;
        for (int64_t k = 0; k < B && !st; k++) {
            char *text = lu_bpe_decode(s->tokens, hyp[k].tokens, hyp[k].n_tokens);
            lu_wer_counts c;
            if (!text) st = lu_error_code();
            else if (!(st = lu_wer_align_words(s->valid_ref[ids[k]], text, &c))) {
                lu_wer_accumulate(&totals[i], &c);
                utt[k * s->n_exits + i] = c;
            }
            int d = (int)ids[k];
            if (!st && d < s->n_demo) s->demo_hyp[d][i] = text, text = NULL;
            free(text);
        }
        for (int64_t k = 0; k < B; k++) lu_ctc_hyp_free(&hyp[k]);
    }
    free(hyp);
    free(n_out);
    return st;
}

/* Confidence scores[k * n_exits + i] of utterance k at exit i under both criteria. */
static lu_status score_exits(const asr *s, int64_t B, lu_tensor **exits, lu_tensor *out_len, double *entropy,
                             double *posterior)
{
    int64_t T = exits[0]->shape[1], V = exits[0]->shape[2];
    int64_t *len = malloc((size_t)B * sizeof *len);
    float *logp = malloc((size_t)(B * T * V) * sizeof *logp);
    lu_status st = len && logp ? lu_tensor_to_host(out_len, LU_I64, len) : lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    for (int i = 0; i < s->n_exits && !st; i++) {
        if (exits[i]->shape[1] != T || exits[i]->shape[2] != V) {
            st = lu_errorf(LU_ERR_SHAPE, "asr: exit %d has [%lld, %lld] frames x units, exit 1 [%lld, %lld]", i + 1,
                           (long long)exits[i]->shape[1], (long long)exits[i]->shape[2], (long long)T, (long long)V);
            break;
        }
        if ((st = lu_tensor_to_host(exits[i], LU_F32, logp))) break;
        for (int64_t k = 0; k < B; k++) {
            int64_t frames = len[k] < T ? len[k] : T;
            entropy[k * s->n_exits + i] = lu_exit_score(LU_EXIT_ENTROPY, logp + k * T * V, frames, V);
            posterior[k * s->n_exits + i] = lu_exit_score(LU_EXIT_POSTERIOR, logp + k * T * V, frames, V);
        }
    }
    free(len);
    free(logp);
    return st;
}

/* Each policy's results over the evaluation (see the file comment). */
typedef struct dyn_totals {
    lu_wer_counts counts[N_DYN];
    double exit_sum[N_DYN];           /* 1-based exits, summed over utterances */
    double layers[N_DYN], full_layers; /* encoder layers run, times the batch's utterances */
    double utt_layers[N_DYN];          /* layers up to each utterance's own exit, summed */
    double seconds[N_DYN], full_seconds;
} dyn_totals;

/* Adds each policy's chosen exits of a batch to the totals; the batch runs up to the latest
 * of them. seconds[i]: measured time of exit step i. */
static void choose_exits(const asr *s, int64_t B, const double *entropy, const double *posterior,
                         const lu_wer_counts *utt, const double *seconds, dyn_totals *d)
{
    int last = s->n_exits - 1;
    for (int i = 0; i <= last; i++) d->full_seconds += seconds[i];
    d->full_layers += (double)B * s->exit_layer[last];
    for (int p = 0; p < N_DYN; p++) {
        const lu_exit_policy *pol = &dyn_policies[p].policy;
        const double *scores = pol->criterion == LU_EXIT_ENTROPY ? entropy : posterior;
        int stop = 0;
        for (int64_t k = 0; k < B; k++) {
            int e = lu_exit_select(pol, scores + k * s->n_exits, s->n_exits);
            lu_wer_accumulate(&d->counts[p], &utt[k * s->n_exits + e]);
            d->exit_sum[p] += e + 1;
            d->utt_layers[p] += s->exit_layer[e];
            stop = e > stop ? e : stop;
        }
        for (int i = 0; i <= stop; i++) d->seconds[p] += seconds[i];
        d->layers[p] += (double)B * s->exit_layer[stop];
    }
}

static void put_counts(double *v, int *n, const lu_wer_counts *c)
{
    v[(*n)++] = (double)c->hits;
    v[(*n)++] = (double)c->substitutions;
    v[(*n)++] = (double)c->deletions;
    v[(*n)++] = (double)c->insertions;
    v[(*n)++] = (double)c->ref_len;
}

static void get_counts(const double *v, int *n, lu_wer_counts *c)
{
    c->hits = (int64_t)v[(*n)++];
    c->substitutions = (int64_t)v[(*n)++];
    c->deletions = (int64_t)v[(*n)++];
    c->insertions = (int64_t)v[(*n)++];
    c->ref_len = (int64_t)v[(*n)++];
}

/* A data-parallel evaluation: each rank scored batches rank, rank + world, ... of vb. Every sum
 * becomes the sum over the ranks (counts travel as doubles: exact below 2^53), and each demo
 * utterance's transcripts come from the rank that decoded it. */
static lu_status share_evaluation(asr *s, const lu_asr_buckets *vb, lu_wer_counts *totals, dyn_totals *dyn,
                                  double *loss_sum, int64_t *loss_utts)
{
    double v[2 + 5 * MAX_EXITS + 9 * N_DYN + 2];
    int n = 0;
    v[n++] = *loss_sum;
    v[n++] = (double)*loss_utts;
    for (int i = 0; i < s->n_exits; i++) put_counts(v, &n, &totals[i]);
    for (int p = 0; p < N_DYN; p++) {
        put_counts(v, &n, &dyn->counts[p]);
        v[n++] = dyn->exit_sum[p];
        v[n++] = dyn->layers[p];
        v[n++] = dyn->utt_layers[p];
        v[n++] = dyn->seconds[p];
    }
    v[n++] = dyn->full_layers;
    v[n++] = dyn->full_seconds;
    LU_TRY(lu_dist_all_reduce_doubles(v, n, LU_DIST_SUM));
    n = 0;
    *loss_sum = v[n++];
    *loss_utts = (int64_t)v[n++];
    for (int i = 0; i < s->n_exits; i++) get_counts(v, &n, &totals[i]);
    for (int p = 0; p < N_DYN; p++) {
        get_counts(v, &n, &dyn->counts[p]);
        dyn->exit_sum[p] = v[n++];
        dyn->layers[p] = v[n++];
        dyn->utt_layers[p] = v[n++];
        dyn->seconds[p] = v[n++];
    }
    dyn->full_layers = v[n++];
    dyn->full_seconds = v[n++];
    for (int k = 0; k < s->n_demo; k++) {
        int owner = -1;
        for (int64_t b = 0; b < vb->n_batches && owner < 0; b++)
            for (int64_t j = vb->start[b]; j < vb->start[b + 1]; j++)
                if (vb->order[j] == k) owner = (int)(b % lu_dist_size());
        for (int i = 0; i < s->n_exits && owner >= 0; i++) LU_TRY(lu_dist_broadcast_string(&s->demo_hyp[k][i], owner));
    }
    return LU_OK;
}

/* Loss, WER per exit and the dynamic-exit policies over the held-out utterances. With several
 * ranks each scores a share of the batches and the sums are shared (collective_eval). */
static lu_status asr_evaluate(void *state, lu_task_metrics *out)
{
    asr *s = state;
    int64_t n = s->cfg.eval_utts > 0 && s->cfg.eval_utts < s->valid.n ? s->cfg.eval_utts : s->valid.n;
    clear_demo(s);
    s->n_demo = (int)(s->cfg.demo_examples < DEMO_MAX ? s->cfg.demo_examples : DEMO_MAX);
    if (s->n_demo > n) s->n_demo = (int)n;
    for (int k = 0; k < s->n_demo; k++) {
        s->demo_ref[k] = strdup(s->valid_ref[k]);
        for (int i = 0; i < s->n_exits; i++) s->demo_hyp[k][i] = NULL;
    }
    int64_t *frames = malloc((size_t)n * sizeof *frames);
    if (!frames) return lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    for (int64_t i = 0; i < n; i++) frames[i] = lu_asr_store_frames(&s->valid, i);
    lu_asr_buckets vb;
    lu_status st = lu_asr_buckets_make(frames, n, s->cfg.max_frames, 0, &vb);
    free(frames);
    LU_TRY(st);
    lu_arena *arena = lu_arena_new(model_device(s), 0);
    if (!arena) {
        lu_asr_buckets_free(&vb);
        return lu_error_code();
    }
    lu_arena *prev = lu_arena_activate(arena);
    bool grad = lu_grad_set_enabled(false);
    lu_wer_counts totals[MAX_EXITS] = {0};
    dyn_totals dyn = {0};
    double loss_sum = 0;
    int64_t loss_utts = 0;
    for (int64_t k = lu_dist_rank(); k < vb.n_batches && !st; k += lu_dist_size()) {
        lu_arena_reset(arena);
        const int64_t *ids = vb.order + vb.start[k];
        int64_t B = vb.start[k + 1] - vb.start[k];
        batch b;
        lu_tensor *exits[MAX_EXITS] = {0}, *out_len = NULL, *loss = NULL;
        double seconds[MAX_EXITS] = {0};
        if (!(st = make_batch(s, &s->valid, s->valid_tok, ids, B, false, 0, &b)) &&
            !(st = forward_timed(s, &b, exits, &out_len, seconds))) {
            if (!(loss = exit_loss(s, &b, exits, out_len))) st = lu_error_code();
            else loss_sum += lu_tensor_item(loss) * (double)B, loss_utts += B;
        }
        lu_wer_counts *utt = calloc((size_t)(B * s->n_exits), sizeof *utt);
        double *entropy = malloc((size_t)(B * s->n_exits) * sizeof *entropy);
        double *posterior = malloc((size_t)(B * s->n_exits) * sizeof *posterior);
        if (!st && !(utt && entropy && posterior)) st = lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
        if (!st) st = score_batch(s, ids, B, exits, out_len, totals, utt);
        if (!st) st = score_exits(s, B, exits, out_len, entropy, posterior);
        if (!st) choose_exits(s, B, entropy, posterior, utt, seconds, &dyn);
        free(utt);
        free(entropy);
        free(posterior);
    }
    lu_grad_set_enabled(grad);
    lu_arena_activate(prev);
    lu_arena_free(arena);
    if (!st && lu_dist_size() > 1) st = share_evaluation(s, &vb, totals, &dyn, &loss_sum, &loss_utts);
    lu_asr_buckets_free(&vb);
    LU_TRY(st);
    out->n = 1 + s->n_exits;
    out->keys[0] = "valid_loss";
    out->values[0] = loss_sum / (double)loss_utts;
    for (int i = 0; i < s->n_exits; i++) {
        out->keys[1 + i] = wer_keys[i];
        out->values[1 + i] = s->wer[i] = 100.0 * lu_wer_rate(&totals[i]);
    }
    for (int p = 0; p < N_DYN; p++) {
        out->keys[out->n] = dyn_policies[p].wer_key;
        out->values[out->n++] = s->dyn_wer[p] = 100.0 * lu_wer_rate(&dyn.counts[p]);
        out->keys[out->n] = dyn_policies[p].exit_key;
        out->values[out->n++] = s->dyn_exit[p] = dyn.exit_sum[p] / (double)n;
        out->keys[out->n] = dyn_policies[p].layer_key;
        out->values[out->n++] = s->dyn_layers[p] = dyn.layers[p] / dyn.full_layers;
        out->keys[out->n] = dyn_policies[p].time_key;
        out->values[out->n++] = s->dyn_time[p] = dyn.full_seconds > 0 ? dyn.seconds[p] / dyn.full_seconds : 1.0;
        out->keys[out->n] = dyn_policies[p].utt_layer_key;
        out->values[out->n++] = s->dyn_utt_layers[p] = dyn.utt_layers[p] / dyn.full_layers;
    }
    s->evaluated = true;
    return LU_OK;
}

/* A Markdown table of WER per exit, then reference/hypothesis pairs of the first and last exit. */
static void asr_demo(void *state, FILE *f)
{
    asr *s = state;
    if (!s->evaluated) return;
    fprintf(f, "\n| exit | encoder layers | WER %% |\n|---:|---:|---:|\n");
    for (int i = 0; i < s->n_exits; i++) fprintf(f, "| %d | %d | %.1f |\n", i + 1, s->exit_layer[i], s->wer[i]);
    fprintf(f, "\n| dynamic exit | WER %% | mean exit | encoder layers run %% | encoder time %% | layers, one utterance at a time %% |\n"
               "|---|---:|---:|---:|---:|---:|\n");
    for (int p = 0; p < N_DYN; p++)
        fprintf(f, "| %s | %.1f | %.2f | %.1f | %.1f | %.1f |\n", dyn_policies[p].name, s->dyn_wer[p], s->dyn_exit[p],
                100.0 * s->dyn_layers[p], 100.0 * s->dyn_time[p], 100.0 * s->dyn_utt_layers[p]);
    for (int k = 0; k < s->n_demo; k++) {
        fprintf(f, "\nREF:            %s\n", s->demo_ref[k]);
        fprintf(f, "HYP exit 1:     %s\n", s->demo_hyp[k][0] ? s->demo_hyp[k][0] : "");
        fprintf(f, "HYP exit %d:%*s%s\n", s->n_exits, s->n_exits < 10 ? 5 : 4, "",
                s->demo_hyp[k][s->n_exits - 1] ? s->demo_hyp[k][s->n_exits - 1] : "");
    }
}

static void asr_destroy(void *state)
{
    asr *s = state;
    clear_demo(s);
    for (int64_t i = 0; s->train_tok && i < s->train.n; i++) free(s->train_tok[i].ids);
    for (int64_t i = 0; s->valid_tok && i < s->valid.n; i++) free(s->valid_tok[i].ids);
    for (int64_t i = 0; s->valid_ref && i < s->valid.n; i++) free(s->valid_ref[i]);
    free(s->train_tok);
    free(s->valid_tok);
    free(s->valid_ref);
    free(s->train_ids);
    free(s->mean);
    free(s->inv_std);
    lu_asr_buckets_free(&s->buckets);
    lu_bpe_free(s->tokens);
    lu_arena_free(s->host);
    lu_asr_store_close(&s->train);
    lu_asr_store_close(&s->valid);
    free(s->zipformer_json);
    free(s->assets);
    lu_params_free(s->own_params);
    if (s->own_schema) lu_config_free(s->own_schema, s->own_config);
    free(s->own_schema);
    free(s->own_config);
    free(s);
}

/* ---- opening a checkpoint for inference (task_asr.h) ------------------------------------------ */

#define PATH_LEN 4096

/* A resolved config read outside the trainer: the common sections and the asr ones. */
typedef struct full_config {
    lu_train_config common;
    asr_config task;
} full_config;

static lu_cfg_field *full_schema(void)
{
    int nc = 0, nt = 0;
    while (lu_train_schema[nc].key) nc++;
    while (asr_schema[nt].key) nt++;
    lu_cfg_field *f = calloc((size_t)(nc + nt + 1), sizeof *f);
    if (!f) {
        lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
        return NULL;
    }
    for (int i = 0; i < nc; i++) f[i] = lu_train_schema[i], f[i].offset += offsetof(full_config, common);
    for (int i = 0; i < nt; i++) f[nc + i] = asr_schema[i], f[nc + i].offset += offsetof(full_config, task);
    return f;
}

/* Parses a config after checking its top-level `task:` line names asr (another task's sections
 * would otherwise read as unknown keys). */
static lu_status parse_config(const char *text, const char *name, const lu_cfg_field *schema, full_config *fc)
{
    for (const char *l = text; l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, "task:", 5)) continue;
        l += 5 + strspn(l + 5, " \t\"'");
        size_t n = strcspn(l, " \t\"'\r\n#");
        if (n != 3 || strncmp(l, "asr", 3))
            return lu_errorf(LU_ERR_CONFIG, "%s: task '%.*s', not asr", name, (int)(n < 64 ? n : 64), l);
        break;
    }
    return lu_config_parse(text, name, schema, fc, 0, NULL);
}

/* The run's checkpoints/last.h5, the run directory named as the trainer names it: train.out_dir,
 * else runs/<name>, the name defaulting to the config file's name without its extension. */
static lu_status run_checkpoint(const lu_train_config *c, const char *config_path, char *path)
{
    const char *base = strrchr(config_path, '/') ? strrchr(config_path, '/') + 1 : config_path;
    const char *dot = strrchr(base, '.');
    int n = c->out_dir ? snprintf(path, PATH_LEN, "%s/checkpoints/last.h5", c->out_dir)
          : c->name    ? snprintf(path, PATH_LEN, "runs/%s/checkpoints/last.h5", c->name)
                       : snprintf(path, PATH_LEN, "runs/%.*s/checkpoints/last.h5", (int)(dot ? dot - base : (long)strlen(base)), base);
    return n < PATH_LEN ? LU_OK : lu_errorf(LU_ERR_IO, "asr: path too long: %s", path);
}

/* A checkpoint file, or a run directory's checkpoints/last.h5. */
static lu_status checkpoint_path(const char *given, char *path)
{
    struct stat sb;
    bool dir = stat(given, &sb) == 0 && S_ISDIR(sb.st_mode);
    int n = snprintf(path, PATH_LEN, dir ? "%s/checkpoints/last.h5" : "%s", given);
    return n < PATH_LEN ? LU_OK : lu_errorf(LU_ERR_IO, "asr: path too long: %s", given);
}

/* The config text and the asr.assets record of a checkpoint (NULL when absent), read before a
 * parameter store exists, from the layout of core/checkpoint.h: the /meta attribute "config"
 * and the dataset /params/asr.assets. */
static lu_status checkpoint_peek(const char *path, char **config, char **assets)
{
    *config = *assets = NULL;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (access(path, R_OK)) return lu_errorf(LU_ERR_IO, "checkpoint '%s': cannot read: %s", path, strerror(errno));
    if (H5Fis_hdf5(path) <= 0) return lu_errorf(LU_ERR_FORMAT, "checkpoint '%s': not an HDF5 file", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return lu_errorf(LU_ERR_FORMAT, "checkpoint '%s': cannot open (truncated or damaged HDF5 file)", path);
    lu_status st = LU_OK;
    if (H5Lexists(f, "meta", H5P_DEFAULT) > 0 && H5Aexists_by_name(f, "meta", "config", H5P_DEFAULT) > 0) {
        hid_t a = H5Aopen_by_name(f, "meta", "config", H5P_DEFAULT, H5P_DEFAULT), t = H5Tcopy(H5T_C_S1);
        char *v = NULL;
        if (t >= 0) H5Tset_size(t, H5T_VARIABLE), H5Tset_cset(t, H5T_CSET_UTF8);
        if (a < 0 || t < 0 || H5Aread(a, t, &v) < 0 || !v)
            st = lu_errorf(LU_ERR_FORMAT, "checkpoint '%s': cannot read the config attribute of /meta", path);
        else if (!(*config = strdup(v))) st = lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
        if (v) H5free_memory(v);
        if (t >= 0) H5Tclose(t);
        if (a >= 0) H5Aclose(a);
    }
    if (!st && H5Lexists(f, "params", H5P_DEFAULT) > 0 && H5Lexists(f, "params/" ASSETS_TENSOR, H5P_DEFAULT) > 0) {
        hid_t d = H5Dopen2(f, "params/" ASSETS_TENSOR, H5P_DEFAULT), sp = d >= 0 ? H5Dget_space(d) : -1;
        hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
        if (n < 0 || !(*assets = malloc((size_t)n + 1)) || H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, *assets) < 0)
            st = lu_errorf(LU_ERR_FORMAT, "checkpoint '%s': cannot read tensor '%s'", path, ASSETS_TENSOR);
        else (*assets)[n] = 0;
        if (sp >= 0) H5Sclose(sp);
        if (d >= 0) H5Dclose(d);
    }
    H5Fclose(f);
    return st;
}

lu_status lu_asr_task_open(const char *checkpoint, const char *config_path, void **state)
{
    *state = NULL;
    char path[PATH_LEN], name[PATH_LEN + 32];
    char *text = NULL, *stored = NULL, *assets = NULL;
    full_config *fc = calloc(1, sizeof *fc);
    lu_cfg_field *schema = full_schema();
    lu_params *params = NULL;
    asr *s = NULL;
    lu_status st = fc && schema ? LU_OK : lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    if (!st && !checkpoint && !config_path) st = lu_errorf(LU_ERR_INVALID, "asr: needs a checkpoint or the run's config");
    if (!st && config_path && !(text = lu_file_read(config_path, (size_t)1 << 20, NULL))) st = lu_error_context("asr config: ");
    bool parsed = false;
    if (!st && !checkpoint) {
        parsed = !(st = parse_config(text, config_path, schema, fc));
        if (!st) st = run_checkpoint(&fc->common, config_path, path);
    } else if (!st) {
        st = checkpoint_path(checkpoint, path);
    }
    if (!st) st = checkpoint_peek(path, &stored, &assets);
    if (!st && !text && !stored)
        st = lu_errorf(LU_ERR_FORMAT, "checkpoint '%s' holds no config (it was saved without one): give the run's config (--config)", path);
    if (!st && !parsed) {
        snprintf(name, sizeof name, "%s", text ? config_path : path);
        st = parse_config(text ? text : stored, name, schema, fc);
    }
    if (!st && !(params = lu_params_new(LU_CPU))) st = lu_error_code();
    if (!st && assets) {
        /* Self-contained: the record replaces the training data. */
        if (!(s = asr_new(&fc->task, (uint64_t)fc->common.seed))) st = lu_error_code();
        if (!st) st = assets_read(s, assets, path);
        if (!st) st = declare_model(s, s->dim, params);
        if (!st) st = declare_assets(params, strlen(assets));
    } else if (!st) {
        /* An older checkpoint: the token set and normalisation come from the data, as in training. */
        void *v = NULL;
        fc->task.self_contained = false;
        st = asr_create(&v, &fc->task, (uint64_t)fc->common.seed, params);
        s = v;
        if (st)
            st = lu_error_context("checkpoint '%s' has no tensor '%s' (it predates self-contained checkpoints), so the token set "
                                  "and feature normalisation come from the training data its config names: ", path, ASSETS_TENSOR);
    }
    if (!st) st = lu_params_finalize(params);
    lu_ckpt_meta meta = {0};
    if (!st) st = lu_ckpt_load(path, params, NULL, &meta);
    if (!st) fprintf(stderr, "loaded %s (step %lld)\n", path, (long long)meta.step);
    free(meta.loaded_config_text);
    free(text);
    free(stored);
    free(assets);
    if (s) {
        s->own_params = params;
        s->own_schema = schema;
        s->own_config = fc;
    } else {
        lu_params_free(params);
        if (schema) lu_config_free(schema, fc);
        free(schema);
        free(fc);
    }
    if (st) {
        if (s) asr_destroy(s);
        return st;
    }
    *state = s;
    return LU_OK;
}

void lu_asr_task_close(void *state)
{
    if (state) asr_destroy(state);
}

/* ---- inference (task_asr.h) ------------------------------------------------------------------ */

int lu_asr_task_n_exits(void *state)
{
    return ((asr *)state)->n_exits;
}

const char *lu_asr_task_features(void *state, int *sample_rate, int64_t *dim)
{
    asr *s = state;
    *sample_rate = s->sample_rate;
    *dim = s->dim;
    return s->features;
}

int lu_asr_task_exit_layers(void *state, int exit)
{
    return ((asr *)state)->exit_layer[exit];
}

/* Copies exit i's log-probabilities [1,T',V] to out->logp (allocated at the first exit copied). */
static lu_status exit_to_host(lu_tensor *x, int i, lu_asr_exit_out *out)
{
    char sx[LU_SHAPE_STR_MAX];
    if (x->ndim != 3 || x->shape[0] != 1 || (out->logp && (x->shape[1] != out->t_out || x->shape[2] != out->vocab)))
        return lu_errorf(LU_ERR_SHAPE, "asr: exit %d gives %s log-probabilities, expected [1, %lld, %lld]", i + 1,
                         lu_shape_str(x, sx, sizeof sx), (long long)out->t_out, (long long)out->vocab);
    if (!out->logp) {
        out->t_out = x->shape[1];
        out->vocab = x->shape[2];
        if (!(out->logp = malloc((size_t)(out->t_out * out->vocab) * sizeof *out->logp)))
            return lu_errorf(LU_ERR_NOMEM, "asr: out of memory");
    }
    return lu_tensor_to_host(x, LU_F32, out->logp);
}

lu_status lu_asr_task_run(void *state, const float *feats, int64_t T, int exit, const lu_exit_policy *policy,
                          lu_asr_exit_out *out)
{
    asr *s = state;
    *out = (lu_asr_exit_out){0};
    if (exit < 0 || exit > s->n_exits)
        return lu_errorf(LU_ERR_INVALID, "asr: exit %d, the model has exits 1..%d", exit, s->n_exits);
    int64_t D = s->dim;
    batch b = {.feats = lu_tensor_empty(LU_F32, LU_SHAPE(1, T, D), LU_CPU),
               .lengths = lu_tensor_full(LU_I64, LU_SHAPE(1), LU_CPU, (double)T)};
    if (!b.feats || !b.lengths) return lu_error_code();
    float *x = lu_tensor_data(b.feats);
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++)
            x[t * D + d] = s->mean ? (feats[t * D + d] - s->mean[d]) * s->inv_std[d] : feats[t * D + d];
    int last = exit ? exit - 1 : s->n_exits - 1;
    bool deciding = !exit && policy;
    bool grad = lu_grad_set_enabled(false);
    exit_steps e;
    lu_status st = steps_begin(s, &b, &e);
    lu_tensor *len = st ? NULL : steps_lengths(&e);
    if (!st && (!len || lu_tensor_to_host(len, LU_I64, &out->frames))) st = lu_error_code();
    for (int i = 0; !st && i <= last; i++) {
        lu_tensor *lp = steps_next(&e);
        if (!lp) {
            st = lu_error_code();
            break;
        }
        out->exit = i + 1;
        out->layers = steps_layers(&e);
        if (i < last && !deciding) continue;
        if ((st = exit_to_host(lp, i, out))) break;
        if (out->frames > out->t_out) out->frames = out->t_out;
        if (deciding && lu_exit_accepts(policy, lu_exit_score(policy->criterion, out->logp, out->frames, out->vocab))) break;
    }
    steps_end(&e);
    lu_grad_set_enabled(grad);
    if (st) {
        free(out->logp);
        *out = (lu_asr_exit_out){0};
    }
    return st;
}

char *lu_asr_task_detokenize(void *state, const int *ids, int n)
{
    return lu_bpe_decode(((asr *)state)->tokens, ids, n);
}

const lu_task lu_task_asr = {
    .name = "asr",
    .description = "early-exit CTC speech recognition (EE-Conformer, Splitformer, EE-Zipformer)",
    .schema = asr_schema,
    .config_size = sizeof(asr_config),
    .any_device = true,
    .create = asr_create,
    .init_params = asr_init,
    .epoch_size = asr_epoch_size,
    .loss = asr_loss,
    .evaluate = asr_evaluate,
    .collective_eval = true,
    .demo = asr_demo,
    .destroy = asr_destroy,
};
