/* cli_lm.c - `luthier lm`: a Hugging Face decoder directory (hf_model.h) on the command line.
 *
 *   lm forward  --model DIR --input-ids IDS.safetensors --out OUT.safetensors [--labels LABELS.safetensors]
 *       IDS holds input_ids [B, T] (i32/i64); OUT receives logits [B, T, V] f32. With labels
 *       ([B, T], -100 ignored, shifted inside as transformers does) it prints one JSON line
 *       {"loss": ..., "grad_norm": ...}: the masked mean cross-entropy and the global L2 norm of
 *       all parameter gradients of that loss.
 *   lm generate --model DIR (--prompt TEXT [--chat] | --input-ids FILE) --max-new-tokens N
 *               [--greedy | --temperature T --top-p P --top-k K --seed S] [--print-ids]
 *       Streams the continuation as text (with DIR/tokenizer.json); --print-ids then prints the
 *       whole sequence's ids (prompt + continuation) as one JSON array line. --chat renders the
 *       prompt as a user turn of the Qwen3 chat template, non-thinking, with the generation prompt.
 *   lm chat --model DIR [--system TEXT] [--max-new-tokens N] [sampling options]
 *       Reads user turns from stdin, one per line, keeps the history, streams each reply; exits
 *       on end of input or "/exit". */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/optim.h"
#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/chat_template.h"
#include "models/generate.h"
#include "models/gguf.h"
#include "models/hf_model.h"
#include "models/tokenizer.h"

static const char *usage_text =
    "usage: luthier lm forward --model DIR --input-ids IDS.safetensors --out OUT.safetensors\n"
    "                          [--labels LABELS.safetensors]\n"
    "       luthier lm generate --model DIR (--prompt TEXT [--chat] | --input-ids FILE) --max-new-tokens N\n"
    "                          [--greedy | --temperature T --top-p P --top-k K --seed S] [--print-ids]\n"
    "       luthier lm chat --model DIR [--system TEXT] [--max-new-tokens N] [sampling options]\n"
    "       luthier lm eval --model DIR|FILE.gguf --tasks T.jsonl[,...] [options] (see lm eval --help)\n"
    "\n"
    "  DIR is a Hugging Face model directory (config.json, model.safetensors or a sharded index;\n"
    "  tokenizer.json for text). Sampling is greedy unless --temperature, --top-p, --top-k or --seed\n"
    "  is given (defaults 1, 1, 0 = off, 0).\n";

typedef struct lm_args {
    const char *model, *input_ids, *out, *labels, *prompt, *system;
    bool chat, print_ids, greedy, sampled;
    int64_t max_new_tokens;
    lu_sampling sampling;
} lm_args;

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "luthier lm: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nrun 'luthier lm --help' for the usage\n");
    return 2;
}

static bool parse_number(const char *s, double *out)
{
    char *end;
    errno = 0;
    *out = s ? strtod(s, &end) : 0;
    return s && *s && !*end && !errno;
}

/* Fills a from argv[2..]; returns 0, or the exit code (2: usage, after a message). */
static int parse_args(int argc, char **argv, lm_args *a)
{
    *a = (lm_args){.max_new_tokens = -1, .sampling = {.temperature = 1, .top_p = 1}};
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **str = !strcmp(k, "--model")       ? &a->model
                           : !strcmp(k, "--input-ids") ? &a->input_ids
                           : !strcmp(k, "--out")       ? &a->out
                           : !strcmp(k, "--labels")    ? &a->labels
                           : !strcmp(k, "--prompt")    ? &a->prompt
                           : !strcmp(k, "--system")    ? &a->system
                                                       : NULL;
        double x;
        if (str) {
            if (!v) return usage_error("%s needs a value", k);
            *str = v;
            i++;
        } else if (!strcmp(k, "--chat")) {
            a->chat = true;
        } else if (!strcmp(k, "--print-ids")) {
            a->print_ids = true;
        } else if (!strcmp(k, "--greedy")) {
            a->greedy = true;
        } else if (!strcmp(k, "--max-new-tokens") || !strcmp(k, "--top-k") || !strcmp(k, "--seed")) {
            if (!parse_number(v, &x) || x < 0 || x != (double)(int64_t)x)
                return usage_error("%s needs a non-negative integer", k);
            if (!strcmp(k, "--max-new-tokens")) a->max_new_tokens = (int64_t)x;
            else if (!strcmp(k, "--top-k")) a->sampling.top_k = (int64_t)x, a->sampled = true;
            else a->sampling.seed = (uint64_t)x, a->sampled = true;
            i++;
        } else if (!strcmp(k, "--temperature") || !strcmp(k, "--top-p")) {
            if (!parse_number(v, &x)) return usage_error("%s needs a number", k);
            if (!strcmp(k, "--temperature")) a->sampling.temperature = x;
            else a->sampling.top_p = x;
            a->sampled = true;
            i++;
        } else {
            return usage_error("unknown option '%s'", k);
        }
    }
    if (!a->model) return usage_error("%s needs --model DIR", argv[1]);
    if (a->greedy && a->sampled) return usage_error("%s", "--greedy excludes --temperature, --top-p, --top-k and --seed");
    a->sampling.greedy = !a->sampled;
    if (lu_sampling_check(&a->sampling)) return usage_error("%s", lu_error_message());
    return 0;
}

static int fail(const char *what)
{
    fprintf(stderr, "luthier lm: %s%s%s\n", what ? what : "", what ? ": " : "", lu_error_message());
    return 1;
}

/* input_ids (or the file's only tensor) as i64. */
static lu_tensor *load_ids(const char *path, const char *name)
{
    lu_st_file *f = lu_st_open(path);
    if (!f) return NULL;
    const char *n = lu_st_find(f, name) >= 0 ? name : lu_st_count(f) == 1 ? lu_st_name(f, 0) : NULL;
    lu_tensor *t = n ? lu_st_load(f, n, LU_I64) : NULL;
    if (!n) lu_errorf(LU_ERR_IO, "%s: no tensor '%s'", path, name);
    lu_st_close(f);
    return t;
}

static bool is_gguf(const char *model)
{
    size_t n = strlen(model);
    return n > 5 && !strcmp(model + n - 5, ".gguf");
}

/* A Hugging Face directory, or a GGUF file (which also carries its tokenizer). */
static lu_status load_model(const char *model, lu_decoder *m, lu_params **params, lu_tokenizer **tok)
{
    if (is_gguf(model)) return lu_gguf_load_decoder(model, m, params, tok);
    return lu_hf_load(model, m, params);
}

static int run_forward(const lm_args *a)
{
    if (!a->input_ids || !a->out) return usage_error("%s", "forward needs --input-ids FILE and --out FILE");
    lu_decoder m;
    lu_params *params = NULL;
    if (load_model(a->model, &m, &params, NULL)) return fail(NULL);
    lu_tensor *ids = load_ids(a->input_ids, "input_ids");
    lu_tensor *labels = ids && a->labels ? load_ids(a->labels, "labels") : NULL;
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    lu_arena *prev = lu_arena_activate(arena);
    bool grad = lu_grad_set_enabled(a->labels != NULL);
    int rc = 1;
    if (ids && (!a->labels || labels) && arena) {
        lu_decoder_batch batch = {.input_ids = ids};
        lu_tensor *logits = lu_decoder_forward(&m, &batch);
        lu_tensor *loss = a->labels ? lu_decoder_lm_loss(logits, labels) : NULL;
        const char *name = "logits";
        if (logits && (!a->labels || loss) && lu_st_save(a->out, 1, &name, &logits, 0, NULL, NULL) == LU_OK) {
            rc = 0;
            if (loss) {
                double norm = lu_params_zero_grad(params) || lu_backward(loss) ? NAN : lu_grad_global_norm(params);
                if (norm == norm) printf("{\"loss\": %.9g, \"grad_norm\": %.9g}\n", lu_tensor_item(loss), norm);
                else rc = 1;
            }
        }
    }
    if (rc) fail(NULL);
    lu_grad_set_enabled(grad);
    lu_arena_activate(prev);
    lu_arena_free(arena);
    lu_tensor_release(ids);
    lu_tensor_release(labels);
    lu_params_free(params);
    return rc;
}

/* ---- generation ---- */

typedef struct lm_session {
    lu_decoder m;
    lu_params *params;
    lu_tokenizer *tok; /* NULL when DIR has no tokenizer.json and none is needed */
} lm_session;

static void session_close(lm_session *s)
{
    lu_tokenizer_free(s->tok);
    lu_params_free(s->params);
}

static int session_open(lm_session *s, const char *dir, bool need_tokenizer)
{
    *s = (lm_session){0};
    if (is_gguf(dir)) return load_model(dir, &s->m, &s->params, &s->tok) ? fail(NULL) : 0;
    if (load_model(dir, &s->m, &s->params, NULL)) return fail(NULL);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *probe = fopen(path, "rb");
    if (probe) fclose(probe);
    if (probe || need_tokenizer) {
        s->tok = lu_tokenizer_load(path);
        if (!s->tok) {
            session_close(s);
            return fail(NULL);
        }
    }
    return 0;
}

/* Qwen3 models get the non-thinking prompt (an empty think block); other ChatML models (SmolLM2
 * from GGUF) the same template without it, which is what enable_thinking renders. */
static bool chatml_plain(const lm_session *s) { return !s->m.cfg.qk_norm; }

typedef struct stream_ctx {
    lu_tokenizer_stream *text; /* or NULL: no text output */
    bool failed;
} stream_ctx;

static int on_token(int64_t token, void *p)
{
    stream_ctx *c = p;
    if (!c->text) return 0;
    const char *piece = lu_tokenizer_stream_push(c->text, (int32_t)token);
    if (!piece) {
        c->failed = true;
        return 1;
    }
    fputs(piece, stdout);
    fflush(stdout);
    return 0;
}

/* Generates after prompt, streaming text when the session has a tokenizer; *n_out new tokens
 * go to a new array *out (caller frees). */
static lu_status generate_streamed(lm_session *s, const int64_t *prompt, int64_t n_prompt, const lm_args *a,
                                   int64_t **out, int64_t *n_out)
{
    *out = malloc((size_t)(a->max_new_tokens ? a->max_new_tokens : 1) * sizeof **out);
    stream_ctx c = {.text = s->tok ? lu_tokenizer_stream_new(s->tok, true) : NULL};
    if (!*out || (s->tok && !c.text)) {
        free(*out);
        *out = NULL;
        lu_tokenizer_stream_free(c.text);
        return lu_errorf(LU_ERR_NOMEM, "lm: out of memory");
    }
    lu_generate_opts o = {.max_new_tokens = a->max_new_tokens, .sampling = a->sampling, .on_token = on_token, .ctx = &c};
    *n_out = lu_generate(&s->m, prompt, n_prompt, &o, *out);
    if (c.text && !c.failed) {
        const char *rest = lu_tokenizer_stream_flush(c.text);
        if (rest) fputs(rest, stdout);
        fflush(stdout);
    }
    lu_tokenizer_stream_free(c.text);
    if (*n_out < 0 || c.failed) {
        free(*out);
        *out = NULL;
        return lu_error_code();
    }
    return LU_OK;
}

/* Tokens of a rendered or raw text, as i64. */
static int64_t *encode_text(const lu_tokenizer *t, const char *text, int64_t *n)
{
    int32_t *ids32 = NULL;
    if (lu_tokenizer_encode(t, text, strlen(text), &ids32, n)) return NULL;
    int64_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
    if (!ids) lu_errorf(LU_ERR_NOMEM, "lm: out of memory");
    for (int64_t i = 0; ids && i < *n; i++) ids[i] = ids32[i];
    free(ids32);
    return ids;
}

static int run_generate(const lm_args *a)
{
    if (!!a->prompt == !!a->input_ids) return usage_error("%s", "generate needs one of --prompt TEXT and --input-ids FILE");
    if (a->chat && !a->prompt) return usage_error("%s", "--chat needs --prompt TEXT");
    if (a->max_new_tokens < 0) return usage_error("%s", "generate needs --max-new-tokens N");
    lm_session s;
    int rc = session_open(&s, a->model, a->prompt != NULL);
    if (rc) return rc;
    int64_t *prompt = NULL, n_prompt = 0, *gen = NULL, n_gen = 0;
    if (a->prompt) {
        char *text = a->chat ? lu_chat_render(&(lu_chat_message){"user", a->prompt, NULL}, 1, true, chatml_plain(&s))
                             : strdup(a->prompt);
        prompt = text ? encode_text(s.tok, text, &n_prompt) : NULL;
        free(text);
    } else {
        lu_tensor *t = load_ids(a->input_ids, "input_ids");
        if (t && (t->ndim > 2 || (t->ndim == 2 && t->shape[0] != 1))) {
            lu_errorf(LU_ERR_SHAPE, "%s: input_ids must hold one sequence ([T] or [1, T])", a->input_ids);
        } else if (t) {
            n_prompt = lu_tensor_numel(t);
            prompt = malloc((size_t)(n_prompt ? n_prompt : 1) * sizeof *prompt);
            if (!prompt) lu_errorf(LU_ERR_NOMEM, "lm generate: out of memory");
            else if (lu_tensor_to_host(t, LU_I64, prompt)) free(prompt), prompt = NULL;
        }
        lu_tensor_release(t);
    }
    bool ok = prompt != NULL;
    if (ok && n_prompt == 0) ok = lu_errorf(LU_ERR_INVALID, "lm generate: the prompt holds no token") == LU_OK;
    if (ok && generate_streamed(&s, prompt, n_prompt, a, &gen, &n_gen) == LU_OK) {
        if (s.tok) putchar('\n');
        if (a->print_ids) {
            putchar('[');
            for (int64_t i = 0; i < n_prompt + n_gen; i++)
                printf("%s%lld", i ? ", " : "", (long long)(i < n_prompt ? prompt[i] : gen[i - n_prompt]));
            printf("]\n");
        }
    } else {
        rc = fail("generate");
    }
    free(prompt);
    free(gen);
    session_close(&s);
    return rc;
}

/* ---- interactive chat ---- */

static int run_chat(const lm_args *in)
{
    lm_args a = *in;
    if (a.max_new_tokens < 0) a.max_new_tokens = 512;
    lm_session s;
    int rc = session_open(&s, a.model, true);
    if (rc) return rc;
    lu_chat_message *msgs = NULL;
    int n = 0, cap = 0;
    char *line = NULL;
    size_t line_cap = 0;
    if (a.system) {
        msgs = malloc(sizeof *msgs);
        cap = 1;
        if (msgs) msgs[n++] = (lu_chat_message){"system", strdup(a.system), NULL};
    }
    fprintf(stderr, "luthier lm chat: one message per line; /exit or end of input quits.\n");
    for (;;) {
        fprintf(stderr, "> ");
        ssize_t len = getline(&line, &line_cap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!strcmp(line, "/exit")) break;
        if (n + 2 > cap) {
            cap = 2 * cap + 4;
            lu_chat_message *grown = realloc(msgs, (size_t)cap * sizeof *msgs);
            if (!grown) {
                rc = fail("chat");
                break;
            }
            msgs = grown;
        }
        msgs[n++] = (lu_chat_message){"user", strdup(line), NULL};
        char *text = lu_chat_render(msgs, n, true, chatml_plain(&s));
        int64_t n_prompt = 0, *prompt = text ? encode_text(s.tok, text, &n_prompt) : NULL, *gen = NULL, n_gen = 0;
        free(text);
        lu_status st = prompt ? generate_streamed(&s, prompt, n_prompt, &a, &gen, &n_gen) : lu_error_code();
        free(prompt);
        putchar('\n');
        int32_t *ids32 = st ? NULL : malloc((size_t)(n_gen ? n_gen : 1) * sizeof *ids32);
        for (int64_t i = 0; ids32 && i < n_gen; i++) ids32[i] = (int32_t)gen[i];
        char *reply = ids32 ? lu_tokenizer_decode(s.tok, ids32, n_gen, true) : NULL;
        free(ids32);
        free(gen);
        if (!reply) {
            rc = fail("chat");
            break;
        }
        msgs[n++] = (lu_chat_message){"assistant", reply, NULL};
    }
    for (int i = 0; i < n; i++) free((char *)msgs[i].content);
    free(msgs);
    free(line);
    session_close(&s);
    return rc;
}

int lu_cli_lm(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "eval")) return lu_cli_lm_eval(argc - 1, argv + 1);
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
    if (strcmp(argv[1], "forward") && strcmp(argv[1], "generate") && strcmp(argv[1], "chat"))
        return usage_error("unknown command '%s' (known: forward, generate, chat)", argv[1]);
    lm_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    if (!strcmp(argv[1], "forward")) return run_forward(&a);
    if (!strcmp(argv[1], "generate")) return run_generate(&a);
    return run_chat(&a);
}
