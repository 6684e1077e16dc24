/* test_sft.c - supervised fine-tuning data and training: packing and loss masking, truncation
 * and drop accounting, malformed lines, deterministic shuffling and split, the shard reader, the
 * `sft` task through the trainer (loss decreases, exact resume, HF export), the paper configs and
 * the comparison of starting, fine-tuned and merged models (luth_compare.h), the `luthier data
 * prepare-chat` and `luthier bench sft` command lines, and the step's gradient clipping on a GPU
 * (when one is present) against the CPU. Conversations: tests/fixtures/sft/chat.jsonl
 * (12 short French chats, hand-written) and bad.jsonl (malformed lines 2, 5 and 7). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/metrics.h"
#include "core/optim.h"
#include "experiments/runner/cli.h"
#include "experiments/runner/luth_compare.h"
#include "experiments/runner/trainer.h"
#include "models/chat_template.h"
#include "models/hf_model.h"
#include "models/sft_data.h"
#include "testutil.h"

#define CHAT "tests/fixtures/sft/chat.jsonl"
#define BAD "tests/fixtures/sft/bad.jsonl"

static char dir[256];
static lu_tokenizer *tok;

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/lu_sft_XXXXXX");
    cr_assert(mkdtemp(dir));
    tok = lu_tokenizer_load("tests/fixtures/tokenizer/small_qwen2.json");
    cr_assert(tok, "%s", lu_error_message());
}

static void teardown(void)
{
    lu_tokenizer_free(tok);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(sft, .init = setup, .fini = teardown, .timeout = 120);

static lu_sft_options options(const char *input, const char *out, int64_t seq_len)
{
    static char path[8][512];
    static int k;
    char *p = path[k++ % 8];
    snprintf(p, 512, "%s/%s", dir, out);
    return (lu_sft_options){.input = input, .out_dir = p, .tok = tok, .tokenizer_name = "small_qwen2.json",
                            .seq_len = seq_len, .seed = 11, .valid_fraction = 0, .shard_tokens = 1 << 20,
                            .pad_id = lu_tokenizer_token_id(tok, "<|endoftext|>")};
}

/* The conversations of a JSONL file encoded as lu_sft_prepare does. */
typedef struct sample { int32_t *ids; uint8_t *mask; int64_t n; } sample;

static int load_samples(const char *path, sample *out, int max)
{
    FILE *f = fopen(path, "r");
    cr_assert(f);
    char line[4096];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        cJSON *root = cJSON_Parse(line);
        cr_assert(root);
        const cJSON *msgs = cJSON_GetObjectItem(root, "messages"), *it;
        lu_chat_message m[8];
        int nm = 0;
        cJSON_ArrayForEach(it, msgs) m[nm++] = (lu_chat_message){cJSON_GetObjectItem(it, "role")->valuestring,
                                                                 cJSON_GetObjectItem(it, "content")->valuestring, NULL};
        cr_assert_eq(lu_chat_encode(tok, m, nm, false, &out[n].ids, &out[n].mask, &out[n].n), LU_OK, "%s", lu_error_message());
        cJSON_Delete(root);
        n++;
    }
    fclose(f);
    return n;
}

static void free_samples(sample *s, int n)
{
    for (int i = 0; i < n; i++) free(s[i].ids), free(s[i].mask);
}

/* Every sequence of a split, back to back. */
typedef struct split_data { int64_t n, T; int32_t *ids, *labels, *cu; int *n_cu; } split_data;

static split_data read_split(const char *out, const char *split)
{
    lu_sft_data *d = lu_sft_data_open(out, split);
    cr_assert(d, "%s", lu_error_message());
    split_data s = {.n = lu_sft_data_count(d), .T = lu_sft_data_seq_len(d)};
    s.ids = malloc((size_t)(s.n * s.T) * 4);
    s.labels = malloc((size_t)(s.n * s.T) * 4);
    s.cu = malloc((size_t)(s.n * (s.T + 1)) * 4);
    s.n_cu = malloc((size_t)s.n * sizeof(int));
    for (int64_t i = 0; i < s.n; i++)
        cr_assert_eq(lu_sft_data_read(d, i, s.ids + i * s.T, s.labels + i * s.T, s.cu + i * (s.T + 1), &s.n_cu[i]), LU_OK);
    lu_sft_data_close(d);
    return s;
}

static void free_split(split_data *s)
{
    free(s->ids), free(s->labels), free(s->cu), free(s->n_cu);
}

/* ---- packing ------------------------------------------------------------------------------- */

Test(sft, labels_are_exactly_the_assistant_answer_and_its_im_end)
{
    lu_chat_message m[] = {{"system", "Sois bref.", NULL}, {"user", "Bonjour", NULL}, {"assistant", "Salut !", NULL}};
    int32_t *ids;
    uint8_t *mask;
    int64_t n;
    cr_assert_eq(lu_chat_encode(tok, m, 3, false, &ids, &mask, &n), LU_OK, "%s", lu_error_message());
    int64_t T = n + 7, used = 0;
    int32_t *row = malloc((size_t)T * 4), *labels = malloc((size_t)T * 4), cu[4];
    int n_cu = 0;
    cr_assert(lu_sft_pack_append(row, labels, cu, &n_cu, &used, T, ids, mask, n));
    lu_sft_pack_finish(row, labels, cu, &n_cu, used, T, 0);
    int32_t kept[64];
    int nk = 0;
    for (int64_t t = 0; t < T; t++)
        if (labels[t] != -100) {
            cr_assert_eq(labels[t], row[t], "a label is the input token itself (the loss shifts)");
            kept[nk++] = labels[t];
        }
    char *text = lu_tokenizer_decode(tok, kept, nk, false);
    cr_assert_str_eq(text, "Salut !<|im_end|>");
    cr_assert_eq(n_cu, 3);
    cr_assert(cu[0] == 0 && cu[1] == n && cu[2] == T, "cu_seqlens %d %d %d", cu[0], cu[1], cu[2]);
    for (int64_t t = n; t < T; t++) cr_assert_eq(row[t], 0, "padding");
    free(text), free(ids), free(mask), free(row), free(labels);
}

Test(sft, pack_refuses_a_sample_that_does_not_fit)
{
    int32_t ids[5] = {1, 2, 3, 4, 5}, row[8], labels[8], cu[9];
    uint8_t mask[5] = {0, 1, 1, 1, 1};
    int n_cu = 0;
    int64_t used = 0;
    cr_assert(lu_sft_pack_append(row, labels, cu, &n_cu, &used, 8, ids, mask, 5));
    cr_assert_not(lu_sft_pack_append(row, labels, cu, &n_cu, &used, 8, ids, mask, 5));
    cr_assert(lu_sft_pack_append(row, labels, cu, &n_cu, &used, 8, ids, mask, 3));
    cr_assert_eq(used, 8);
    cr_assert(n_cu == 3 && cu[1] == 5 && cu[2] == 8);
    cr_assert_eq(labels[5], -100, "a sample's first token is never a target");
    cr_assert_eq(labels[6], 2);
}

Test(sft, packed_sequences_hold_every_sample_with_its_boundaries)
{
    sample smp[16];
    int ns = load_samples(CHAT, smp, 16);
    lu_sft_options o = options(CHAT, "out", 160);
    lu_sft_stats st;
    cr_assert_eq(lu_sft_prepare(&o, &st), LU_OK, "%s", lu_error_message());
    cr_assert_eq(st.train.samples, ns);
    split_data d = read_split(o.out_dir, "train");
    cr_assert_eq(d.n, st.train.sequences);
    int32_t im_start = lu_tokenizer_token_id(tok, "<|im_start|>");
    int64_t tokens = 0, targets = 0, segments = 0;
    for (int64_t i = 0; i < d.n; i++) {
        const int32_t *cu = d.cu + i * (d.T + 1), *ids = d.ids + i * d.T, *lab = d.labels + i * d.T;
        cr_assert(cu[0] == 0 && cu[d.n_cu[i] - 1] == d.T);
        for (int k = 0; k + 1 < d.n_cu[i]; k++) {
            cr_assert_lt(cu[k], cu[k + 1]);
            if (ids[cu[k]] != im_start) { /* the padding: last, all pad, no label */
                cr_assert_eq(k + 2, d.n_cu[i]);
                for (int t = cu[k]; t < d.T; t++) cr_assert(ids[t] == o.pad_id && lab[t] == -100);
                continue;
            }
            segments++;
            tokens += cu[k + 1] - cu[k];
            cr_assert_eq(lab[cu[k]], -100);
            for (int t = cu[k]; t < cu[k + 1]; t++) targets += lab[t] != -100;
        }
    }
    int64_t want_targets = 0;
    for (int i = 0; i < ns; i++)
        for (int64_t t = 1; t < smp[i].n; t++) want_targets += smp[i].mask[t];
    cr_assert_eq(segments, ns);
    cr_assert_eq(tokens, st.train.tokens);
    cr_assert_eq(targets, want_targets);
    cr_assert_eq(st.train.target_tokens, want_targets);
    free_split(&d);
    free_samples(smp, ns);
}

/* Loss of one packed row of three samples, times its target count, equals the sum of the
 * per-sample losses times theirs: cu_seqlens stops attention across samples. */
Test(sft, packed_loss_equals_sum_of_separate_losses)
{
    sample smp[16];
    int ns = load_samples(CHAT, smp, 16);
    cr_assert_geq(ns, 3);
    lu_params *p = lu_params_new(LU_CPU);
    lu_decoder m;
    lu_decoder_config c = {.vocab_size = lu_tokenizer_vocab_size(tok), .hidden_size = 32, .intermediate_size = 48,
                           .num_layers = 2, .num_heads = 4, .num_kv_heads = 2, .head_dim = 8, .rope_theta = 10000,
                           .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true, .init_std = 0.5};
    cr_assert_eq(lu_decoder_declare(&m, &c, p), LU_OK);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    cr_assert_eq(lu_decoder_init(&m, 5), LU_OK);
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    lu_arena *prev = lu_arena_activate(arena);
    int64_t T = smp[0].n + smp[1].n + smp[2].n + 6, used = 0;
    lu_tensor *ids = lu_tensor_empty(LU_I32, LU_SHAPE(1, T), LU_CPU), *labels = lu_tensor_empty(LU_I32, LU_SHAPE(1, T), LU_CPU);
    lu_tensor *pos = lu_tensor_empty(LU_I32, LU_SHAPE(1, T), LU_CPU);
    int32_t cu[8];
    int n_cu = 0;
    for (int i = 0; i < 3; i++)
        cr_assert(lu_sft_pack_append(lu_tensor_data(ids), lu_tensor_data(labels), cu, &n_cu, &used, T, smp[i].ids, smp[i].mask, smp[i].n));
    lu_sft_pack_finish(lu_tensor_data(ids), lu_tensor_data(labels), cu, &n_cu, used, T, 0);
    lu_tensor *cut = lu_tensor_empty(LU_I32, LU_SHAPE(n_cu), LU_CPU);
    memcpy(lu_tensor_data(cut), cu, sizeof(int32_t) * (size_t)n_cu);
    for (int k = 0; k + 1 < n_cu; k++)
        for (int t = cu[k]; t < cu[k + 1]; t++) ((int32_t *)lu_tensor_data(pos))[t] = t - cu[k];
    int64_t n_all = 0;
    for (int64_t t = 1; t < T; t++) n_all += ((int32_t *)lu_tensor_data(labels))[t] != -100;
    lu_decoder_batch b = {.input_ids = ids, .positions = pos, .cu_seqlens = cut};
    lu_tensor *packed = lu_decoder_loss(&m, &b, labels);
    cr_assert(packed, "%s", lu_error_message());
    double sum = 0;
    for (int i = 0; i < 3; i++) {
        lu_tensor *id1 = lu_tensor_empty(LU_I32, LU_SHAPE(1, smp[i].n), LU_CPU), *lb1 = lu_tensor_empty(LU_I32, LU_SHAPE(1, smp[i].n), LU_CPU);
        int64_t n1 = 0;
        for (int64_t t = 0; t < smp[i].n; t++) {
            ((int32_t *)lu_tensor_data(id1))[t] = smp[i].ids[t];
            ((int32_t *)lu_tensor_data(lb1))[t] = t > 0 && smp[i].mask[t] ? smp[i].ids[t] : -100;
            n1 += t > 0 && smp[i].mask[t];
        }
        lu_decoder_batch b1 = {.input_ids = id1};
        lu_tensor *l1 = lu_decoder_loss(&m, &b1, lb1);
        cr_assert(l1, "%s", lu_error_message());
        sum += lu_tensor_item(l1) * (double)n1;
    }
    double whole = lu_tensor_item(packed) * (double)n_all;
    cr_assert(fabs(whole - sum) <= 1e-4 * fabs(sum), "packed %.8g vs separate %.8g (tolerance 1e-4 relative)", whole, sum);
    lu_arena_activate(prev);
    lu_arena_free(arena);
    lu_params_free(p);
    free_samples(smp, ns);
}

/* ---- accounting ---------------------------------------------------------------------------- */

/* Expected counts, computed from the encodings: keep min(n, T) (0 when dropping an overlong
 * sample), drop what has no target left. */
static void expect(const sample *s, int ns, int64_t T, bool drop, lu_sft_split_stats *e)
{
    memset(e, 0, sizeof *e);
    for (int i = 0; i < ns; i++) {
        int64_t keep = s[i].n > T ? (drop ? 0 : T) : s[i].n, targets = 0;
        for (int64_t t = 1; t < keep; t++) targets += s[i].mask[t];
        if (!targets) {
            e->dropped_samples++;
            e->dropped_tokens += s[i].n;
            continue;
        }
        e->samples++;
        e->tokens += keep;
        e->target_tokens += targets;
        if (keep < s[i].n) e->truncated_samples++, e->truncated_tokens += s[i].n - keep;
    }
}

Test(sft, truncation_is_counted_in_samples_and_tokens)
{
    sample smp[16];
    int ns = load_samples(CHAT, smp, 16);
    lu_sft_options o = options(CHAT, "out", 40);
    lu_sft_stats st;
    cr_assert_eq(lu_sft_prepare(&o, &st), LU_OK, "%s", lu_error_message());
    lu_sft_split_stats e;
    expect(smp, ns, 40, false, &e);
    cr_assert_gt(e.truncated_samples, 0, "the fixture must have samples over 40 tokens");
    cr_assert_eq(st.train.samples, e.samples);
    cr_assert_eq(st.train.tokens, e.tokens);
    cr_assert_eq(st.train.target_tokens, e.target_tokens);
    cr_assert_eq(st.train.truncated_samples, e.truncated_samples);
    cr_assert_eq(st.train.truncated_tokens, e.truncated_tokens);
    cr_assert_eq(st.train.dropped_samples, e.dropped_samples);
    cr_assert_eq(st.train.dropped_tokens, e.dropped_tokens);
    free_samples(smp, ns);
}

Test(sft, drop_mode_drops_overlong_samples_and_counts_them)
{
    sample smp[16];
    int ns = load_samples(CHAT, smp, 16);
    lu_sft_options o = options(CHAT, "out", 40);
    o.drop_overlong = true;
    lu_sft_stats st;
    cr_assert_eq(lu_sft_prepare(&o, &st), LU_OK, "%s", lu_error_message());
    lu_sft_split_stats e;
    expect(smp, ns, 40, true, &e);
    cr_assert_gt(e.dropped_samples, 0);
    cr_assert_eq(st.train.truncated_samples, 0);
    cr_assert_eq(st.train.samples, e.samples);
    cr_assert_eq(st.train.dropped_samples, e.dropped_samples);
    cr_assert_eq(st.train.dropped_tokens, e.dropped_tokens);
    cr_assert_eq(st.train.tokens, e.tokens);
    free_samples(smp, ns);
}

/* ---- malformed input ----------------------------------------------------------------------- */

Test(sft, skip_mode_reports_each_malformed_line_by_number)
{
    lu_sft_options o = options(BAD, "out", 128);
    o.skip_malformed = true;
    char *log = NULL;
    size_t log_len = 0;
    o.log = open_memstream(&log, &log_len);
    lu_sft_stats st;
    cr_assert_eq(lu_sft_prepare(&o, &st), LU_OK, "%s", lu_error_message());
    fclose(o.log);
    cr_assert_eq(st.lines, 7, "the blank line 4 is not a sample");
    cr_assert_eq(st.malformed, 3);
    cr_assert_eq(st.first_malformed_line, 2);
    cr_assert_eq(st.train.samples, 4);
    cr_assert(strstr(log, "bad.jsonl:2: invalid JSON"), "%s", log);
    cr_assert(strstr(log, "bad.jsonl:5: ") && strstr(log, "robot"), "%s", log);
    cr_assert(strstr(log, "bad.jsonl:7: no \"messages\" array"), "%s", log);
    free(log);
}

Test(sft, fail_mode_stops_at_the_first_malformed_line_and_leaves_nothing)
{
    lu_sft_options o = options(BAD, "out", 128);
    lu_sft_stats st;
    cr_assert_neq(lu_sft_prepare(&o, &st), LU_OK);
    tu_assert_error_contains("bad.jsonl:2: invalid JSON");
    struct stat sb;
    cr_assert_neq(stat(o.out_dir, &sb), 0, "no output directory after a failure");
    char cmd[400];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q tmp", dir);
    cr_assert_neq(system(cmd), 0, "no temporary directory left behind");
}

Test(sft, existing_output_directory_is_refused)
{
    lu_sft_options o = options(CHAT, "out", 128);
    lu_sft_stats st;
    cr_assert_eq(lu_sft_prepare(&o, &st), LU_OK, "%s", lu_error_message());
    cr_assert_neq(lu_sft_prepare(&o, &st), LU_OK);
    tu_assert_error_contains("already exists");
}

/* ---- order and split ----------------------------------------------------------------------- */

Test(sft, shuffling_is_deterministic_by_seed)
{
    lu_sft_options a = options(CHAT, "a", 64), b = options(CHAT, "b", 64), c = options(CHAT, "c", 64);
    c.seed = 12;
    lu_sft_stats st;
    cr_assert_eq(lu_sft_prepare(&a, &st), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_sft_prepare(&b, &st), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_sft_prepare(&c, &st), LU_OK, "%s", lu_error_message());
    split_data da = read_split(a.out_dir, "train"), db = read_split(b.out_dir, "train"), dc = read_split(c.out_dir, "train");
    cr_assert_eq(da.n, db.n);
    cr_assert(!memcmp(da.ids, db.ids, (size_t)(da.n * da.T) * 4), "same seed, same sequences");
    cr_assert(!memcmp(da.labels, db.labels, (size_t)(da.n * da.T) * 4));
    bool differs = da.n != dc.n || memcmp(da.ids, dc.ids, (size_t)(da.n * da.T) * 4);
    cr_assert(differs, "another seed gives another order");
    free_split(&da), free_split(&db), free_split(&dc);
}

Test(sft, valid_split_is_by_sample_and_independent_of_packing)
{
    lu_sft_options a = options(CHAT, "a", 128), b = options(CHAT, "b", 512);
    a.valid_fraction = b.valid_fraction = 0.3;
    lu_sft_stats sa, sb;
    cr_assert_eq(lu_sft_prepare(&a, &sa), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_sft_prepare(&b, &sb), LU_OK, "%s", lu_error_message());
    cr_assert_gt(sa.valid.samples, 0);
    cr_assert_gt(sa.train.samples, 0);
    cr_assert_eq(sa.train.samples + sa.valid.samples, 12);
    cr_assert_eq(sa.valid.samples, sb.valid.samples);
    cr_assert_eq(sa.valid.target_tokens, sb.valid.target_tokens, "the same samples are held out");
    split_data v = read_split(a.out_dir, "valid");
    cr_assert_eq(v.n, sa.valid.sequences);
    free_split(&v);
}

Test(sft, shards_split_by_tokens_and_read_back_in_order)
{
    lu_sft_options a = options(CHAT, "one", 64), b = options(CHAT, "many", 64);
    b.shard_tokens = 2 * 64 + 5;
    lu_sft_stats sa, sb;
    cr_assert_eq(lu_sft_prepare(&a, &sa), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_sft_prepare(&b, &sb), LU_OK, "%s", lu_error_message());
    cr_assert_eq(sa.train.shards, 1);
    cr_assert_eq(sb.train.shards, (sb.train.sequences + 1) / 2, "2 sequences per shard");
    split_data da = read_split(a.out_dir, "train"), db = read_split(b.out_dir, "train");
    cr_assert_eq(da.n, db.n);
    cr_assert(!memcmp(da.ids, db.ids, (size_t)(da.n * da.T) * 4));
    lu_sft_data *d = lu_sft_data_open(b.out_dir, "train");
    int n_cu;
    cr_assert_neq(lu_sft_data_read(d, da.n, da.ids, da.labels, da.cu, &n_cu), LU_OK);
    tu_assert_error_contains("out of range");
    lu_sft_data_close(d);
    cr_assert_null(lu_sft_data_open(b.out_dir, "valid"));
    tu_assert_error_contains("no valid sequences");
    free_split(&da), free_split(&db);
}

/* ---- the task through the trainer ----------------------------------------------------------- */

static void write_config(void) { tu_write_tiny_sft_config(dir, 6); }

static lu_status train(const char *out, int64_t stop_after, bool resume, int n_over, char **over)
{
    char cfg[512], outp[512];
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    snprintf(outp, sizeof outp, "%s/%s", dir, out);
    lu_run_options o = {.config_path = cfg, .out_dir = outp, .stop_after = stop_after, .resume = resume,
                        .n_overrides = n_over, .overrides = over};
    return lu_train_run(&o);
}

Test(sft, task_trains_and_the_loss_decreases)
{
    write_config();
    char *over[] = {"train.max_steps=40", "train.log_every=40", "train.save_every=0"};
    cr_assert_eq(train("run", 0, false, 3, over), LU_OK, "%s", lu_error_message());
    char path[512];
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", dir);
    double last;
    int64_t step;
    cr_assert_eq(lu_metrics_read_last(path, "eval", "valid_loss", &last, &step), LU_OK, "%s", lu_error_message());
    double uniform = log((double)lu_tokenizer_vocab_size(tok));
    cr_assert_lt(last, uniform - 1.0, "held-out loss %g after 40 steps, uniform is %g", last, uniform);
    cr_assert_eq(lu_metrics_read_last(path, "train", "loss", &last, &step), LU_OK);
    cr_assert_lt(last, uniform - 1.5, "train loss %g after 40 steps", last);
}

/* model.gradient_checkpointing and model.loss_chunk_tokens (a chunk that does not divide the
 * 2 x 96 tokens) train as the plain run: the same losses, to f32 rounding, every step. */
Test(sft, recomputation_keys_train_as_the_plain_run)
{
    write_config();
    char *over[] = {"model.gradient_checkpointing=true", "model.loss_chunk_tokens=37"};
    cr_assert_eq(train("plain", 0, false, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(train("recomputed", 0, false, 2, over), LU_OK, "%s", lu_error_message());
    double a[8], b[8];
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/plain/metrics.jsonl", dir);
    snprintf(pb, sizeof pb, "%s/recomputed/metrics.jsonl", dir);
    cr_assert_eq(tu_read_metric(pa, "train", "loss", a, 8), 6);
    cr_assert_eq(tu_read_metric(pb, "train", "loss", b, 8), 6);
    for (int i = 0; i < 6; i++)
        cr_assert(fabs(a[i] - b[i]) <= 1e-5 * fabs(a[i]), "step %d loss: recomputed %.9g, plain %.9g", i + 1, b[i], a[i]);
    char *bad[] = {"model.loss_chunk_tokens=-1"};
    cr_assert_neq(train("bad", 0, false, 1, bad), LU_OK);
    tu_assert_error_contains("model.loss_chunk_tokens");
}

/* Same checkpoint whether the run went straight through or stopped after 3 steps and resumed. */
Test(sft, resume_after_interruption_is_bit_exact)
{
    write_config();
    cr_assert_eq(train("straight", 0, false, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(train("split", 3, false, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(train("split", 0, true, 0, NULL), LU_OK, "%s", lu_error_message());
    for (int k = 0; k < 2; k++) {
        char pa[512], pb[512];
        snprintf(pa, sizeof pa, "%s/straight/%s", dir, k ? "model/model.safetensors" : "checkpoints/last.h5");
        snprintf(pb, sizeof pb, "%s/split/%s", dir, k ? "model/model.safetensors" : "checkpoints/last.h5");
        lu_params *p[2];
        lu_decoder m[2];
        for (int r = 0; r < 2; r++) {
            char mdir[512];
            snprintf(mdir, sizeof mdir, "%s/%s/model", dir, r ? "split" : "straight");
            cr_assert_eq(lu_hf_load(mdir, &m[r], &p[r]), LU_OK, "%s", lu_error_message());
        }
        if (k == 0) { /* the checkpoints hold the same weights as each export */
            for (int r = 0; r < 2; r++) {
                lu_params *q = lu_params_new(LU_CPU);
                lu_decoder mq;
                cr_assert_eq(lu_decoder_declare(&mq, &m[r].cfg, q), LU_OK);
                cr_assert_eq(lu_params_finalize(q), LU_OK);
                lu_ckpt_meta meta = {0};
                cr_assert_eq(lu_ckpt_load(r ? pb : pa, q, NULL, &meta), LU_OK, "%s", lu_error_message());
                free(meta.loaded_config_text);
                cr_assert_eq(meta.step, 6);
                for (int i = 0; i < q->n; i++)
                    cr_assert(!memcmp(lu_tensor_data(q->items[i].t), lu_tensor_data(lu_params_get(p[r], q->items[i].name)),
                                      (size_t)lu_tensor_numel(q->items[i].t) * 4), "%s", q->items[i].name);
                lu_params_free(q);
            }
        }
        for (int i = 0; i < p[0]->n; i++)
            cr_assert(!memcmp(lu_tensor_data(p[0]->items[i].t), lu_tensor_data(lu_params_get(p[1], p[0]->items[i].name)),
                              (size_t)lu_tensor_numel(p[0]->items[i].t) * 4), "%s differs after resume", p[0]->items[i].name);
        lu_params_free(p[0]);
        lu_params_free(p[1]);
    }
}

Test(sft, exported_model_reloads_with_the_trained_shape)
{
    write_config();
    cr_assert_eq(train("run", 0, false, 0, NULL), LU_OK, "%s", lu_error_message());
    char mdir[512];
    snprintf(mdir, sizeof mdir, "%s/run/model", dir);
    lu_decoder m;
    lu_params *p;
    cr_assert_eq(lu_hf_load(mdir, &m, &p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(m.cfg.vocab_size, lu_tokenizer_vocab_size(tok), "vocabulary from the data's summary");
    cr_assert_eq(m.cfg.hidden_size, 32);
    cr_assert(m.cfg.qk_norm && m.cfg.tie_embeddings);
    lu_params_free(p);
}

Test(sft, missing_data_directory_is_reported)
{
    write_config();
    char *over[] = {"data.dir=/nonexistent/sft"};
    cr_assert_neq(train("run", 0, false, 1, over), LU_OK);
    tu_assert_error_contains("/nonexistent/sft");
}

Test(sft, bf16_compute_on_the_cpu_is_refused_naming_the_keys)
{
    write_config();
    char *over[] = {"model.compute_dtype=bf16"};
    cr_assert_neq(train("run", 0, false, 1, over), LU_OK);
    tu_assert_error_contains("model.compute_dtype bf16 needs train.device cuda");
}

/* ---- the Luth comparison: starting vs fine-tuned vs merged ---------------------------------- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static double metric(const cJSON *compare, int model, const char *task, const char *name)
{
    const cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(compare, "models"), model);
    const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(m, "tasks"), task),
                                                             "metrics"), name);
    cr_assert(cJSON_IsNumber(v), "model %d task %s metric %s is missing", model, task, name);
    return v->valuedouble;
}

/* A from-scratch model becomes the starting point of a second run with compare.* set: SLERP at
 * t = 0 gives back the starting model's scores exactly, at t = 1 the fine-tuned model's. */
Test(sft, compare_evaluates_start_fine_tuned_and_merged_models)
{
    write_config();
    char *over0[] = {"train.max_steps=4", "train.save_every=0"};
    cr_assert_eq(train("start", 0, false, 2, over0), LU_OK, "%s", lu_error_message());
    char path[1400], tasks[600], start[600];
    snprintf(start, sizeof start, "%s/start/model", dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", start);
    char cmd[1500];
    snprintf(cmd, sizeof cmd, "cp tests/fixtures/tokenizer/small_qwen2.json %s", path);
    cr_assert_eq(system(cmd), 0);
    snprintf(tasks, sizeof tasks, "%s/tasks", dir);
    cr_assert_eq(mkdir(tasks, 0755), 0);
    snprintf(path, sizeof path, "%s/qa-mc-fr.jsonl", tasks);
    write_file(path, "{\"type\": \"mc\", \"query\": \"Bonjour\", \"choices\": [\"oui\", \"non merci\"], \"gold\": 0}\n"
                     "{\"type\": \"mc\", \"query\": \"Quelle heure ?\", \"choices\": [\"midi\", \"rien\", \"le soir\"], \"gold\": 2}\n");
    snprintf(path, sizeof path, "%s/text-ppl-en.jsonl", tasks);
    write_file(path, "{\"type\": \"ppl\", \"text\": \"The cat sat on the mat.\"}\n{\"type\": \"ppl\", \"text\": \"Hello world\"}\n");
    snprintf(path, sizeof path, "%s/notes.txt", tasks); /* not a task file: ignored */
    write_file(path, "x");

    char model_over[700], tasks_over[700];
    snprintf(model_over, sizeof model_over, "model.path=%s", start);
    snprintf(tasks_over, sizeof tasks_over, "compare.tasks=%s", tasks);
    char *over[] = {model_over, tasks_over, "compare.merge_t=0", "train.max_steps=6", "train.save_every=0"};
    cr_assert_eq(train("ft", 0, false, 5, over), LU_OK, "%s", lu_error_message());
    snprintf(path, sizeof path, "%s/ft/compare.json", dir);
    cJSON *c = tu_read_json(path);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(c, "models")), 3);
    double base_ppl = metric(c, 0, "text-ppl-en", "ppl"), ft_ppl = metric(c, 1, "text-ppl-en", "ppl");
    cr_assert(base_ppl > 1 && ft_ppl > 1 && base_ppl != ft_ppl, "ppl %g -> %g: fine-tuning changed nothing", base_ppl, ft_ppl);
    cr_assert_eq(metric(c, 2, "text-ppl-en", "ppl"), base_ppl, "t = 0 is the starting model");
    cr_assert_eq(metric(c, 2, "qa-mc-fr", "acc"), metric(c, 0, "qa-mc-fr", "acc"));
    cJSON_Delete(c);
    snprintf(path, sizeof path, "%s/ft/compare.md", dir);
    FILE *f = fopen(path, "r");
    cr_assert(f);
    static char md[1 << 14];
    md[fread(md, 1, sizeof md - 1, f)] = 0;
    fclose(f);
    cr_assert(strstr(md, "**French**") && strstr(md, "**English**") && strstr(md, "| qa-mc-fr | acc_norm (n=2) |") &&
              strstr(md, "| text-ppl-en | ppl (n=2) |") && strstr(md, "SLERP merge (t=0)"), "%s", md);
    cr_assert(strstr(md, "**French**") < strstr(md, "**English**"));

    /* Again at t = 1, the merged directory rebuilt. */
    snprintf(cmd, sizeof cmd, "rm -rf %s/ft/merged", dir);
    cr_assert_eq(system(cmd), 0);
    char run[600];
    snprintf(run, sizeof run, "%s/ft", dir);
    lu_compare_opts o = {.tasks = tasks, .chat = false, .merge = LU_COMPARE_SLERP, .t = 1, .export_dtype = LU_F32};
    cr_assert_eq(lu_luth_compare(run, start, &o), LU_OK, "%s", lu_error_message());
    snprintf(path, sizeof path, "%s/ft/compare.json", dir);
    c = tu_read_json(path);
    cr_assert_eq(metric(c, 2, "text-ppl-en", "ppl"), metric(c, 1, "text-ppl-en", "ppl"), "t = 1 is the fine-tuned model");
    cJSON_Delete(c);

    o.t = 1.5;
    cr_assert_neq(lu_luth_compare(run, start, &o), LU_OK);
    tu_assert_error_contains("compare.merge_t must be in [0, 1]");
    o.t = 0.5;
    o.tasks = start; /* a directory without task files */
    cr_assert_neq(lu_luth_compare(run, start, &o), LU_OK);
    tu_assert_error_contains("names no .jsonl task file");
    o.tasks = tasks;
    cr_assert_neq(lu_luth_compare(run, NULL, &o), LU_OK);
    tu_assert_error_contains("model.path is not set");
}

/* ---- configs and command line ---------------------------------------------------------------- */

Test(sft, paper_configs_mirror_the_luth_recipe)
{
    const char *files[] = {"experiments/luth/sft-qwen3-0.6b.yaml", "experiments/luth/sft-qwen3-1.7b.yaml"};
    const lu_task *task = lu_task_find("sft");
    cr_assert(task);
    int nc = 0, nt = 0;
    while (lu_train_schema[nc].key) nc++;
    while (task->schema[nt].key) nt++;
    size_t off = (sizeof(lu_train_config) + 15) & ~(size_t)15;
    for (int k = 0; k < 2; k++) {
        lu_cfg_field *schema = calloc((size_t)(nc + nt + 1), sizeof *schema);
        void *block = calloc(1, off + task->config_size);
        memcpy(schema, lu_train_schema, (size_t)nc * sizeof *schema);
        for (int i = 0; i < nt; i++) {
            schema[nc + i] = task->schema[i];
            schema[nc + i].offset += off;
        }
        cr_assert_eq(lu_config_load(files[k], schema, block, 0, NULL), LU_OK, "%s", lu_error_message());
        const lu_train_config *c = block;
        cr_assert_str_eq(c->task, "sft");
        cr_assert_float_eq(c->lr, 2e-5, 1e-12);
        cr_assert_float_eq(c->warmup_ratio, 0.1, 1e-12);
        cr_assert_float_eq(c->clip_norm, 0.1, 1e-12);
        cr_assert_float_eq(c->weight_decay, 0.01, 1e-12);
        cr_assert_eq(c->epochs, 3);
        cr_assert_eq(c->grad_accum, 4);
        cr_assert_eq(c->sched_kind, LU_SCHED_COSINE);
        lu_config_free(schema, block);
        free(schema);
        free(block);
    }
}

Test(sft, command_line_prepares_and_rejects_bad_usage)
{
    char out[512];
    snprintf(out, sizeof out, "%s/cli", dir);
    char *ok[] = {"prepare-chat", "--input", BAD, "--tokenizer", "tests/fixtures/tokenizer/small_qwen2.json", "--out", out,
                  "--seq-len", "128", "--on-error", "skip", "--valid-fraction", "0"};
    cr_assert_eq(lu_data_prepare_chat(13, ok), 0, "%s", lu_error_message());
    char path[600];
    snprintf(path, sizeof path, "%s/summary.json", out);
    cr_assert_eq(access(path, R_OK), 0);
    char *bad_flag[] = {"prepare-chat", "--input", BAD, "--on-error", "ignore"};
    cr_assert_eq(lu_data_prepare_chat(5, bad_flag), 2);
    char *missing[] = {"prepare-chat", "--input", BAD};
    cr_assert_eq(lu_data_prepare_chat(3, missing), 2);
    snprintf(out, sizeof out, "%s/cli2", dir);
    char *fails[] = {"prepare-chat", "--input", BAD, "--tokenizer", "tests/fixtures/tokenizer/small_qwen2.json", "--out", out,
                     "--seq-len", "128"};
    cr_assert_eq(lu_data_prepare_chat(9, fails), 1, "malformed line with the default --on-error fail");
}

/* ---- `luthier bench sft` usage, and the step's gradient clipping on a GPU ---- */

/* Runs `luthier bench sft ARGS` (stdout discarded) with its stderr in err; returns its exit code. */
static int bench_sft(char *err, size_t cap, int argc, char **argv)
{
    FILE *keep = stderr, *f = tmpfile();
    cr_assert(f, "cannot create a temporary file for stderr");
    stderr = f;
    int rc = tu_run_captured(lu_bench_sft, argc, argv, NULL, 0);
    fflush(f);
    stderr = keep;
    rewind(f);
    err[fread(err, 1, cap - 1, f)] = 0;
    fclose(f);
    return rc;
}

Test(sft, bench_usage_errors_name_the_option_and_exit_non_zero)
{
    struct { int argc; char *argv[5]; int rc; const char *says; } cases[] = {
        {3, {"sft", "--device", "tpu"}, 2, "--device is cpu or cuda, got 'tpu'"},
        {3, {"sft", "--dtype", "bf16"}, 2, "--dtype bf16 needs --device cuda"},
        {5, {"sft", "--device", "cuda", "--dtype", "f64"}, 2, "--dtype f64 needs --device cpu"},
        {3, {"sft", "--shape", "qwen3-7b"}, 2, "unknown --shape 'qwen3-7b'"},
        {5, {"sft", "--shape", "qwen3-0.6b", "--model", "x"}, 2, "--model and --shape exclude each other"},
        {3, {"sft", "--attn", "sdpa,flex"}, 2, "--attn takes up to 2 of sdpa, eager, flash_attention_2"},
        {3, {"sft", "--seq-len", "60"}, 2, "samples of 60 tokens leave none labelled"},
    };
    char err[1024];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = bench_sft(err, sizeof err, cases[i].argc, cases[i].argv);
        cr_assert_eq(rc, cases[i].rc, "%s %s: exit %d", cases[i].argv[1], cases[i].argv[2], rc);
        cr_assert(strstr(err, cases[i].says), "%s %s: stderr '%s' lacks '%s'", cases[i].argv[1], cases[i].argv[2], err,
                  cases[i].says);
    }
    if (lu_device_available(LU_CUDA)) return; /* the GPU case would run the whole benchmark */
    char *gpu[] = {"sft", "--device", "cuda", "--no-reference"};
    cr_assert_eq(bench_sft(err, sizeof err, 4, gpu), 1);
    cr_assert(strstr(err, "--device cuda: "), "stderr: %s", err);
}

/* A store of two f32 parameters around a buffer (whose gradient slot stays zero), 2^24 + 9000
 * elements in all: the device path of the clipping sums more than one chunk. */
static lu_params *clip_store(lu_device dev)
{
    lu_params *p = lu_params_new(dev);
    cr_assert(p, "%s", lu_error_message());
    cr_assert(lu_params_add(p, "a", LU_F32, 1, (int64_t[]){(1 << 24) - 1000}, true) &&
              lu_params_add(p, "buffer", LU_F32, 1, (int64_t[]){3000}, false) &&
              lu_params_add(p, "b", LU_F32, 2, (int64_t[]){7, 1000}, true) && !lu_params_finalize(p),
              "%s", lu_error_message());
    lu_tensor *g = tu_rand(LU_F32, 1, p->flat_grad[LU_F32]->shape, -1, 1, 5);
    cr_assert_eq(lu_tensor_copy(p->items[0].t->grad, lu_slice(g, 0, 0, (1 << 24) - 1000, 1)), LU_OK);
    cr_assert_eq(lu_tensor_copy(p->items[2].t->grad, lu_reshape(lu_slice(g, 0, 1 << 24, (1 << 24) + 7000, 1),
                                                               LU_SHAPE(7, 1000))), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_tensor_fill(lu_params_get(p, "buffer"), 3.0), LU_OK);
    lu_tensor_release(g);
    return p;
}

Test(sft, clipping_on_cuda_matches_the_cpu_and_keeps_the_gradients_there)
{
    if (!lu_device_available(LU_CUDA)) cr_skip_test("no CUDA GPU here (or luthier built without LUTHIER_CUDA)");
    lu_params *pc = clip_store(LU_CPU), *pg = clip_store(LU_CUDA);
    double nc = lu_clip_grad_norm(pc, 0.1), ng = lu_clip_grad_norm(pg, 0.1);
    /* f32 partial sums on the GPU against double on the CPU. */
    cr_assert(fabs(ng - nc) <= 1e-5 * nc, "norm: cuda %.9g, cpu %.9g", ng, nc);
    lu_tensor *g = lu_tensor_convert(pg->flat_grad[LU_F32], LU_F32, LU_CPU);
    cr_assert(g, "%s", lu_error_message());
    tu_assert_tensors_close(g, pc->flat_grad[LU_F32], 0, 1e-5, "clipped gradients, cuda against cpu");
    lu_tensor_release(g);
    lu_params_free(pc);
    lu_params_free(pg);
}
