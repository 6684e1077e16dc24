/* test_lm_eval.c - task files, multiple-choice scores against log-likelihoods computed here from
 * the decoder's logits, answer extraction and normalisation, perplexity against the model's loss,
 * and the `luthier lm eval` table, on a small random Qwen3 model with the small test tokenizer
 * (tests/fixtures/tokenizer/small_qwen2.json). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "experiments/runner/cli.h"
#include "models/chat_template.h"
#include "models/generate.h"
#include "models/hf_model.h"
#include "models/lm_eval.h"
#include "testutil.h"

#define TOKENIZER "tests/fixtures/tokenizer/small_qwen2.json"

static lu_decoder model;
static lu_tokenizer *tok;

/* Vocabulary covering the tokenizer (ids < 880), <|im_end|> (851) as end token, no BOS. */
static void setup(void)
{
    lu_decoder_config c = {.vocab_size = 880, .hidden_size = 16, .intermediate_size = 24, .num_layers = 2,
                           .num_heads = 2, .num_kv_heads = 1, .head_dim = 8, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                           .qk_norm = true, .tie_embeddings = true, .init_std = 0.5, .bos_token_id = -1,
                           .max_position_embeddings = 4096, .n_eos = 1, .eos_token_ids = {851}, .dtype = LU_F32};
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert(p && !lu_decoder_declare(&model, &c, p) && !lu_params_finalize(p) && !lu_decoder_init(&model, 5), "%s",
              lu_error_message());
    tok = lu_tokenizer_load(TOKENIZER);
    cr_assert(tok, "%s", lu_error_message());
}

static void teardown(void)
{
    lu_tokenizer_free(tok);
    lu_params_free(model.params);
}

TestSuite(lm_eval, .init = setup, .fini = teardown);

static lu_lmeval_task *parse(const char *text)
{
    lu_lmeval_task *t = lu_lmeval_task_parse(text, strlen(text), "dir/t.jsonl");
    cr_assert(t, "%s", lu_error_message());
    return t;
}

static int64_t *encode(const char *s, int64_t *n)
{
    int32_t *ids32;
    cr_assert_eq(lu_tokenizer_encode(tok, s, strlen(s), &ids32, n), LU_OK, "%s", lu_error_message());
    int64_t *ids = malloc((size_t)*n * sizeof *ids);
    for (int64_t i = 0; i < *n; i++) ids[i] = ids32[i];
    free(ids32);
    return ids;
}

/* log p(ids[t] | ids[< t]) summed over t >= from, in float64 from the full forward's logits. */
static double reference_ll(const int64_t *ids, int64_t n, int64_t from)
{
    lu_arena *a = lu_arena_new(LU_CPU, 0), *prev = lu_arena_activate(a);
    bool grad = lu_grad_set_enabled(false);
    lu_tensor *in = lu_tensor_from_host(LU_I64, LU_SHAPE(1, n), LU_CPU, ids);
    lu_tensor *logits = lu_decoder_forward(&model, &(lu_decoder_batch){.input_ids = in});
    cr_assert(logits, "%s", lu_error_message());
    double *l = tu_to_doubles(logits), ll = 0;
    int64_t V = model.cfg.vocab_size;
    for (int64_t t = from; t < n; t++) {
        double s = 0;
        for (int64_t v = 0; v < V; v++) s += exp(l[(t - 1) * V + v]);
        ll += l[(t - 1) * V + ids[t]] - log(s);
    }
    free(l);
    lu_grad_set_enabled(grad);
    lu_arena_activate(prev);
    lu_arena_free(a);
    return ll;
}

/* lm-eval-harness pairing: context = the first |ids(query)| tokens of ids(query + choice). */
static double choice_ll(const char *query, const char *choice, int64_t *n_cont)
{
    char whole[1024];
    snprintf(whole, sizeof whole, "%s%s", query, choice);
    int64_t nw, nc;
    int64_t *w = encode(whole, &nw), *c = encode(query, &nc);
    *n_cont = nw - nc;
    double ll = reference_ll(w, nw, nc);
    free(w);
    free(c);
    return ll;
}

static int64_t chars(const char *s)
{
    int64_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static const char *mc_items[][5] = {
    {"Question: Quelle est la capitale ?\nRéponse:", " Paris", " Lyon", " Marseille et Nice", " x"},
    {"Le chat dort sur", " le canapé", " la table", " un très long tapis rouge", " é"},
    {"Bonjour, comment", " allez-vous ?", " vas-tu", " ça va", " ok"},
    {"Question: 2+2 ?\nRéponse:", " A", " B", " C", " D"},
    {"Il fait", " beau", " froid aujourd'hui", " chaud", " nuit noire"},
    {"Hello", " world", " there", " my friend", " é à ü"},
};

Test(lm_eval, mc_scores_match_reference_loglikelihoods)
{
    int n_items = (int)(sizeof mc_items / sizeof mc_items[0]);
    char text[8192] = "";
    double want[4] = {0};
    for (int i = 0; i < n_items; i++) {
        double s[4][4];
        for (int c = 0; c < 4; c++) {
            const char *ch = mc_items[i][1 + c];
            int64_t nt;
            double ll = choice_ll(mc_items[i][0], ch, &nt);
            s[0][c] = ll;
            s[1][c] = ll / (double)chars(ch);
            s[2][c] = ll / (double)(chars(ch) - (ch[0] == ' '));
            s[3][c] = ll / (double)nt;
        }
        /* Gold = the argmax of the raw score for even items, its runner-up for odd ones, so
         * that accuracies are neither 0 nor 1 and the normalisations can disagree. */
        int order[4] = {0, 1, 2, 3};
        for (int a = 0; a < 4; a++)
            for (int b = a + 1; b < 4; b++)
                if (s[0][order[b]] > s[0][order[a]]) {
                    int tmp = order[a];
                    order[a] = order[b];
                    order[b] = tmp;
                }
        int gold = order[i % 2];
        for (int k = 0; k < 4; k++) {
            int best = 0;
            for (int c = 1; c < 4; c++)
                if (s[k][c] > s[k][best]) best = c;
            want[k] += best == gold;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "mc");
        cJSON_AddStringToObject(o, "query", mc_items[i][0]);
        cJSON_AddItemToObject(o, "choices", cJSON_CreateStringArray(mc_items[i] + 1, 4));
        cJSON_AddNumberToObject(o, "gold", gold);
        char *line = cJSON_PrintUnformatted(o);
        strcat(text, line);
        strcat(text, "\n");
        free(line);
        cJSON_Delete(o);
    }
    lu_lmeval_task *t = parse(text);
    lu_lmeval_result r;
    cr_assert_eq(lu_lmeval_run(&model, tok, t, &(lu_lmeval_opts){0}, &r), LU_OK, "%s", lu_error_message());
    cr_assert_eq(r.n, n_items);
    cr_assert_eq(r.n_metrics, 4);
    const char *names[] = {"acc", "acc_norm", "acc_norm_nospace", "acc_norm_token"};
    for (int k = 0; k < 4; k++) {
        cr_assert_str_eq(r.metric[k], names[k]);
        cr_assert_float_eq(r.value[k], want[k] / n_items, 1e-12, "%s: %g, want %g", names[k], r.value[k], want[k] / n_items);
    }
    cr_assert_float_eq(r.value[0], 0.5, 1e-12, "gold is the argmax in half of the items");
    lu_lmeval_task_free(t);
}

Test(lm_eval, loglikelihood_matches_reference_within_1e_5)
{
    double ll;
    int64_t nt, want_nt;
    cr_assert_eq(lu_lmeval_loglikelihood(&model, tok, "Le chat dort sur", " le canapé rouge", &ll, &nt), LU_OK, "%s",
                 lu_error_message());
    double want = choice_ll("Le chat dort sur", " le canapé rouge", &want_nt);
    cr_assert_eq(nt, want_nt);
    cr_assert(nt >= 2);
    cr_assert(fabs(ll - want) <= 1e-5 * fabs(want), "ll %.9g, want %.9g", ll, want);
}

Test(lm_eval, empty_context_is_an_error)
{
    double ll;
    int64_t nt;
    cr_assert_neq(lu_lmeval_loglikelihood(&model, tok, "", " x", &ll, &nt), LU_OK);
    tu_assert_error_contains("context encodes to no token");
}

Test(lm_eval, chat_mode_scores_the_rendered_context)
{
    lu_lmeval_task *t = parse("{\"type\":\"mc\",\"query\":\"Bonjour ?\",\"choices\":[\" oui\",\" non\"],\"gold\":1}\n");
    lu_lmeval_result r;
    cr_assert_eq(lu_lmeval_run(&model, tok, t, &(lu_lmeval_opts){.chat = true, .system = "Sois bref."}, &r), LU_OK,
                 "%s", lu_error_message());
    lu_chat_message msgs[] = {{"system", "Sois bref.", NULL}, {"user", "Bonjour ?", NULL}};
    char *ctx = lu_chat_render(msgs, 2, true, false);
    cr_assert(strstr(ctx, "<think>\n\n</think>\n\n"), "Qwen3 (q/k norm) gets the non-thinking prompt: %s", ctx);
    int64_t n;
    double oui = choice_ll(ctx, " oui", &n), non = choice_ll(ctx, " non", &n);
    cr_assert_float_eq(r.value[0], non > oui ? 1.0 : 0.0, 1e-12);
    free(ctx);
    lu_lmeval_task_free(t);
}

Test(lm_eval, extract_takes_first_nonblank_line)
{
    char *a = lu_lmeval_extract("\n\n  Paris, bien sûr. \nEt ensuite\n", NULL);
    cr_assert_str_eq(a, "Paris, bien sûr.");
    free(a);
}

Test(lm_eval, extract_regex_takes_first_group_or_whole_match)
{
    char *a = lu_lmeval_extract("Je pense... Réponse : B\nRéponse : C", "Réponse : ?([A-D])");
    cr_assert_str_eq(a, "B");
    free(a);
    a = lu_lmeval_extract("il y a 42 pommes", "[0-9]+");
    cr_assert_str_eq(a, "42");
    free(a);
    a = lu_lmeval_extract("aucune lettre", "Réponse : ([A-D])");
    cr_assert_str_eq(a, "");
    free(a);
}

Test(lm_eval, extract_invalid_regex_is_an_error)
{
    cr_assert_null(lu_lmeval_extract("x", "([A-D"));
    tu_assert_error_contains("regex '([A-D'");
}

Test(lm_eval, normalize_folds_case_accents_punctuation_and_spaces)
{
    char *a = lu_lmeval_normalize("  L'ÉTÉ,   à   Noël ! ");
    cr_assert_str_eq(a, "lete a noel");
    free(a);
    a = lu_lmeval_normalize("Straße\t\n42.");
    cr_assert_str_eq(a, "strasse 42");
    free(a);
}

/* Greedy text of the model after prompt, decoded here with lu_generate. */
static char *greedy_text(const char *prompt, int64_t max_new)
{
    int64_t n, out[64];
    int64_t *ids = encode(prompt, &n);
    int64_t got = lu_generate(&model, ids, n, &(lu_generate_opts){.max_new_tokens = max_new, .sampling = {.greedy = true}},
                              out);
    cr_assert(got > 0, "%s", lu_error_message());
    int32_t ids32[64];
    for (int64_t i = 0; i < got; i++) ids32[i] = (int32_t)out[i];
    free(ids);
    char *text = lu_tokenizer_decode(tok, ids32, got, true);
    cr_assert(text, "%s", lu_error_message());
    return text;
}

Test(lm_eval, gen_exact_match_counts_greedy_answers)
{
    char *text = greedy_text("Bonjour", 12);
    char *line = lu_lmeval_extract(text, NULL);
    cr_assert(*line, "the random model produced a blank first line: '%s'", text);
    /* Item 1: the model's own first line, padded, upper-cased and with " !" (em fails, qem matches);
     * item 2: its exact first line; item 3: a wrong answer. */
    cJSON *answers1 = cJSON_CreateArray(), *answers2 = cJSON_CreateArray();
    char padded[512];
    snprintf(padded, sizeof padded, "  %s !", line);
    for (char *c = padded; *c; c++) *c = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
    cJSON_AddItemToArray(answers1, cJSON_CreateString(padded));
    cJSON_AddItemToArray(answers2, cJSON_CreateString("zzz"));
    cJSON_AddItemToArray(answers2, cJSON_CreateString(line));
    char *a1 = cJSON_PrintUnformatted(answers1), *a2 = cJSON_PrintUnformatted(answers2);
    char task[2048];
    snprintf(task, sizeof task,
             "{\"type\":\"gen\",\"prompt\":\"Bonjour\",\"answers\":%s}\n"
             "{\"type\":\"gen\",\"prompt\":\"Bonjour\",\"answers\":%s}\n"
             "{\"type\":\"gen\",\"prompt\":\"Bonjour\",\"answers\":[\"zzz\"]}\n",
             a1, a2);
    lu_lmeval_task *t = parse(task);
    lu_lmeval_result r;
    cr_assert_eq(lu_lmeval_run(&model, tok, t, &(lu_lmeval_opts){.max_new_tokens = 12}, &r), LU_OK, "%s",
                 lu_error_message());
    cr_assert_str_eq(r.metric[0], "em");
    cr_assert_str_eq(r.metric[1], "qem");
    cr_assert_float_eq(r.value[0], 1.0 / 3, 1e-12, "em %g for line '%s'", r.value[0], line);
    cr_assert_float_eq(r.value[1], 2.0 / 3, 1e-12, "qem %g for line '%s'", r.value[1], line);
    free(a1);
    free(a2);
    cJSON_Delete(answers1);
    cJSON_Delete(answers2);
    free(line);
    free(text);
    lu_lmeval_task_free(t);
}

Test(lm_eval, perplexity_matches_the_model_loss)
{
    const char *text = "Le français est une langue romane.";
    int64_t n;
    int64_t *body = encode(text, &n), *ids = malloc((size_t)(n + 1) * sizeof *ids);
    ids[0] = 851; /* no BOS: the end token starts the text */
    memcpy(ids + 1, body, (size_t)n * sizeof *ids);
    lu_arena *a = lu_arena_new(LU_CPU, 0), *prev = lu_arena_activate(a);
    lu_tensor *in = lu_tensor_from_host(LU_I64, LU_SHAPE(1, n + 1), LU_CPU, ids);
    lu_tensor *loss = lu_decoder_loss(&model, &(lu_decoder_batch){.input_ids = in}, in);
    cr_assert(loss, "%s", lu_error_message());
    double mean = lu_tensor_item(loss);
    lu_arena_activate(prev);
    lu_arena_free(a);
    char line[256];
    snprintf(line, sizeof line, "{\"type\":\"ppl\",\"text\":\"%s\"}\n", text);
    lu_lmeval_task *t = parse(line);
    lu_lmeval_result r;
    cr_assert_eq(lu_lmeval_run(&model, tok, t, &(lu_lmeval_opts){0}, &r), LU_OK, "%s", lu_error_message());
    cr_assert_str_eq(r.metric[0], "ppl");
    cr_assert_str_eq(r.metric[1], "bits_per_byte");
    double want_bpb = mean * (double)n / (log(2.0) * (double)strlen(text));
    cr_assert(fabs(r.value[0] - exp(mean)) <= 1e-5 * exp(mean), "ppl %.9g, want %.9g", r.value[0], exp(mean));
    cr_assert(fabs(r.value[1] - want_bpb) <= 1e-5 * want_bpb, "bpb %.9g, want %.9g", r.value[1], want_bpb);
    /* Windows of 4 tokens (3 scored, each after the previous window's last token) lose context. */
    lu_lmeval_result w;
    cr_assert_eq(lu_lmeval_run(&model, tok, t, &(lu_lmeval_opts){.max_length = 4}, &w), LU_OK, "%s", lu_error_message());
    double nll = 0;
    for (int64_t pos = 0; pos < n; pos += 3) {
        int64_t k = n - pos < 3 ? n - pos : 3;
        nll -= reference_ll(ids + pos, k + 1, 1);
    }
    cr_assert(fabs(w.value[0] - exp(nll / (double)n)) <= 1e-5 * w.value[0], "windowed ppl %.9g, want %.9g", w.value[0],
              exp(nll / (double)n));
    free(body);
    free(ids);
    lu_lmeval_task_free(t);
}

static void assert_parse_error(const char *text, const char *needle)
{
    cr_assert_null(lu_lmeval_task_parse(text, strlen(text), "dir/t.jsonl"), "parsed: %s", text);
    tu_assert_error_contains(needle);
}

Test(lm_eval, malformed_lines_name_file_and_line)
{
    assert_parse_error("{\"type\":\"mc\",\"query\":\"q\",\"choices\":[\" a\"],\"gold\":0}\n\n{\"type\":\"mc\"",
                       "dir/t.jsonl:3: not a JSON object");
    assert_parse_error("{\"type\":\"mc\",\"query\":\"q\",\"choices\":[\" a\",\" b\"],\"gold\":2}",
                       "dir/t.jsonl:1: mc item: gold 2 out of range for 2 choices");
    assert_parse_error("\n{\"type\":\"mc\",\"query\":\"q\",\"choices\":[],\"gold\":0}",
                       "dir/t.jsonl:2: mc item: \"choices\" must be a non-empty array of strings");
    assert_parse_error("{\"type\":\"gen\",\"prompt\":\"p\",\"answers\":[\"a\", 3]}",
                       "dir/t.jsonl:1: gen item: \"answers\"[1] is not a string");
    assert_parse_error("{\"type\":\"gen\",\"answers\":[\"a\"]}", "dir/t.jsonl:1: gen item: \"prompt\" must be a string");
    assert_parse_error("{\"type\":\"ppl\",\"text\":\"\"}", "dir/t.jsonl:1: ppl item: empty text");
    assert_parse_error("{\"type\":\"cloze\"}", "dir/t.jsonl:1: \"type\" must be \"mc\", \"gen\", \"ppl\" or \"ifeval\"");
    assert_parse_error("{\"type\":\"ppl\",\"text\":\"a\"}\n{\"type\":\"gen\",\"prompt\":\"p\",\"answers\":[\"a\"]}",
                       "dir/t.jsonl:2: gen item in a ppl task");
    assert_parse_error("\n  \n", "dir/t.jsonl: no item");
}

Test(lm_eval, task_file_name_and_limit)
{
    lu_lmeval_task *t = lu_lmeval_task_load("tests/fixtures/lm_eval/mc_fr.jsonl");
    cr_assert(t, "%s", lu_error_message());
    cr_assert_str_eq(t->name, "mc_fr");
    cr_assert_eq(t->type, LU_LMEVAL_MC);
    cr_assert_eq(t->items[1].line, 2);
    lu_lmeval_task_free(t);
    lu_lmeval_task *g = parse("{\"type\":\"ppl\",\"text\":\"un\"}\n{\"type\":\"ppl\",\"text\":\"deux trois\"}\n");
    lu_lmeval_result r;
    cr_assert_eq(lu_lmeval_run(&model, tok, g, &(lu_lmeval_opts){.limit = 1}, &r), LU_OK, "%s", lu_error_message());
    cr_assert_eq(r.n, 1);
    lu_lmeval_task_free(g);
}

/* ---- the CLI ---- */

static char *run_cli(int *rc, int argc, const char **argv) { return tu_run_captured_text(lu_cli_lm, argc, argv, rc); }

Test(lm_eval, cli_prints_table_and_writes_json)
{
    char dir[64] = "/tmp/lu_lmeval_XXXXXX", mdir[96], tasks[256], out[96], cmd[512];
    cr_assert(mkdtemp(dir));
    snprintf(mdir, sizeof mdir, "%s/model", dir);
    cr_assert_eq(lu_hf_save(mdir, &model, LU_F32, 0), LU_OK, "%s", lu_error_message());
    snprintf(cmd, sizeof cmd, "cp " TOKENIZER " '%s/tokenizer.json'", mdir);
    cr_assert_eq(system(cmd), 0);
    snprintf(tasks, sizeof tasks, "tests/fixtures/lm_eval/mc_fr.jsonl,tests/fixtures/lm_eval/ppl_fr.jsonl");
    snprintf(out, sizeof out, "%s/results.json", dir);
    const char *argv[] = {"lm", "eval", "--model", mdir, "--tasks", tasks, "--chat", "--limit", "3", "--out", out};
    int rc;
    char *text = run_cli(&rc, 11, argv);
    cr_assert_eq(rc, 0, "%s", lu_error_message());
    cr_assert(!strncmp(text, "| task | metric | value | n |\n|---|---|---:|---:|\n", 48), "printed:\n%s", text);
    cr_assert(strstr(text, "| mc_fr | acc | "), "printed:\n%s", text);
    cr_assert(strstr(text, "| mc_fr | acc_norm_nospace | "), "printed:\n%s", text);
    cr_assert(strstr(text, "| ppl_fr | bits_per_byte | "), "printed:\n%s", text);
    int rows = 0;
    for (const char *c = text; *c; c++) rows += *c == '\n';
    cr_assert_eq(rows, 2 + 4 + 2, "printed:\n%s", text);
    FILE *f = fopen(out, "r");
    cr_assert(f);
    char buf[4096] = {0};
    cr_assert(fread(buf, 1, sizeof buf - 1, f) > 0);
    fclose(f);
    cJSON *j = cJSON_Parse(buf);
    cJSON *mc = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tasks"), "mc_fr");
    cr_assert(mc, "json: %s", buf);
    cr_assert_eq(cJSON_GetObjectItem(mc, "n")->valueint, 3);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "system")->valuestring, "You are a helpful assistant.");
    double acc = cJSON_GetObjectItem(cJSON_GetObjectItem(mc, "metrics"), "acc")->valuedouble;
    char row[64];
    snprintf(row, sizeof row, "| mc_fr | acc | %.4f | 3 |", acc);
    cr_assert(strstr(text, row), "table row %s missing:\n%s", row, text);
    cJSON_Delete(j);
    free(text);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

Test(lm_eval, cli_usage_and_task_errors)
{
    int rc;
    const char *a1[] = {"lm", "eval", "--model", "m"};
    free(run_cli(&rc, 4, a1));
    cr_assert_eq(rc, 2);
    const char *a2[] = {"lm", "eval", "--model", "m", "--tasks", "t.jsonl", "--limit", "-1"};
    free(run_cli(&rc, 8, a2));
    cr_assert_eq(rc, 2);
    const char *a3[] = {"lm", "eval", "--model", "no/such/dir", "--tasks", "tests/fixtures/lm_eval/malformed.jsonl"};
    free(run_cli(&rc, 6, a3));
    cr_assert_eq(rc, 1);
    tu_assert_error_contains("malformed.jsonl:3: mc item: gold 2 out of range for 2 choices");
    const char *a4[] = {"lm", "eval", "--model", "m", "--tasks", "t.jsonl", "--device", "tpu"};
    free(run_cli(&rc, 8, a4));
    cr_assert_eq(rc, 2);
}

Test(lm_eval, gen_item_max_new_tokens_must_be_positive)
{
    assert_parse_error("{\"type\":\"gen\",\"prompt\":\"p\",\"answers\":[\"a\"],\"max_new_tokens\":0}",
                       "dir/t.jsonl:1: gen item: \"max_new_tokens\" must be a positive integer");
    lu_lmeval_task *t = parse("{\"type\":\"gen\",\"prompt\":\"p\",\"answers\":[\"a\"],\"max_new_tokens\":3}");
    cr_assert_eq(t->items[0].max_new_tokens, 3);
    lu_lmeval_task_free(t);
}

Test(lm_eval, extract_boxed_answer_with_nested_braces)
{
    /* The converter's math regex (scripts/convert_luth_benchmarks.py BOXED). */
    char *a = lu_lmeval_extract("Donc, la réponse finale est : $\\boxed{\\frac{1}{2}}$. J'espère que c'est correct",
                                "\\\\boxed\\{((?:[^{}]+|\\{(?1)\\})*)\\}");
    cr_assert(a, "%s", lu_error_message());
    cr_assert_str_eq(a, "\\frac{1}{2}");
    free(a);
}
