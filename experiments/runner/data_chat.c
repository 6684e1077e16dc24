/* data_chat.c - `luthier data prepare-chat`: chat JSONL -> packed token shards for SFT
 * (models/sft_data.h holds the pipeline and the file layout). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "experiments/runner/cli.h"
#include "models/gguf.h"
#include "models/sft_data.h"

static const char *usage_text =
    "usage: luthier data prepare-chat --input FILE.jsonl --tokenizer TOK --out DIR --seq-len N\n"
    "                                 [--seed S] [--valid-fraction F] [--on-error skip|fail]\n"
    "                                 [--overlong truncate|drop] [--shard-tokens N] [--train-think]\n"
    "\n"
    "  Renders each {\"messages\": [...]} line with the Qwen3 chat template, tokenises it with a loss\n"
    "  mask on the assistant answers and their <|im_end|>, holds out a fraction of the samples\n"
    "  (by sample, deterministic), shuffles each split by seed and packs the samples into sequences\n"
    "  of N tokens without attention across samples. Writes DIR/train/shard-*.h5,\n"
    "  DIR/valid/shard-*.h5 and DIR/summary.json (into DIR.tmp.PID, renamed when complete).\n"
    "\n"
    "  --tokenizer       tokenizer.json, a directory holding one, or a .gguf model file\n"
    "  --seed            shuffling and split seed (default 1234)\n"
    "  --valid-fraction  held-out share of the samples, in [0, 1) (default 0.05)\n"
    "  --on-error        malformed JSONL line: skip it (reported with its line number) or fail\n"
    "                    (default fail)\n"
    "  --overlong        a sample longer than N tokens: keep its first N tokens or drop it\n"
    "                    (default truncate)\n"
    "  --shard-tokens    tokens per shard file (default 16777216)\n"
    "  --train-think     also train on the <think> blocks of the last assistant turn\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "luthier data prepare-chat: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nrun 'luthier data prepare-chat --help' for the usage\n");
    return 2;
}

static bool parse_int(const char *s, long long *out)
{
    char *end;
    *out = strtoll(s, &end, 10);
    return *s && !*end;
}

static lu_tokenizer *load_tokenizer(const char *path)
{
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".gguf")) {
        lu_gguf *g = lu_gguf_open(path);
        lu_tokenizer *t = g ? lu_gguf_read_tokenizer(g) : NULL;
        lu_gguf_close(g);
        return t;
    }
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        char file[4096];
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
        return lu_tokenizer_load(file);
    }
    return lu_tokenizer_load(path);
}

static void print_split(const char *name, const lu_sft_split_stats *s)
{
    printf("| %-5s | %8lld | %11lld | %11lld | %12lld / %13lld | %11lld / %12lld | %9lld | %6lld |\n", name,
           (long long)s->samples, (long long)s->tokens, (long long)s->target_tokens, (long long)s->truncated_samples,
           (long long)s->truncated_tokens, (long long)s->dropped_samples, (long long)s->dropped_tokens,
           (long long)s->sequences, (long long)s->shards);
}

int lu_data_prepare_chat(int argc, char **argv)
{
    lu_sft_options o = {.seed = 1234, .valid_fraction = 0.05, .shard_tokens = 1 << 24, .log = stderr};
    const char *tok_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!strcmp(k, "--train-think")) {
            o.train_think = true;
            continue;
        }
        if (i + 1 >= argc) return usage_error("%s needs a value", k);
        const char *v = argv[++i];
        long long n = 0;
        if (!strcmp(k, "--input")) o.input = v;
        else if (!strcmp(k, "--tokenizer")) tok_path = v;
        else if (!strcmp(k, "--out")) o.out_dir = v;
        else if (!strcmp(k, "--seq-len")) {
            if (!parse_int(v, &n) || n < 2) return usage_error("--seq-len must be an integer >= 2, got '%s'", v);
            o.seq_len = n;
        } else if (!strcmp(k, "--seed")) {
            if (!parse_int(v, &n) || n < 0) return usage_error("--seed must be a non-negative integer, got '%s'", v);
            o.seed = (uint64_t)n;
        } else if (!strcmp(k, "--shard-tokens")) {
            if (!parse_int(v, &n) || n < 1) return usage_error("--shard-tokens must be a positive integer, got '%s'", v);
            o.shard_tokens = n;
        } else if (!strcmp(k, "--valid-fraction")) {
            char *end;
            o.valid_fraction = strtod(v, &end);
            if (!*v || *end || !(o.valid_fraction >= 0 && o.valid_fraction < 1))
                return usage_error("--valid-fraction must be a number in [0, 1), got '%s'", v);
        } else if (!strcmp(k, "--on-error")) {
            if (strcmp(v, "skip") && strcmp(v, "fail")) return usage_error("--on-error must be skip or fail, got '%s'", v);
            o.skip_malformed = !strcmp(v, "skip");
        } else if (!strcmp(k, "--overlong")) {
            if (strcmp(v, "truncate") && strcmp(v, "drop")) return usage_error("--overlong must be truncate or drop, got '%s'", v);
            o.drop_overlong = !strcmp(v, "drop");
        } else return usage_error("unknown option '%s'", k);
    }
    if (!o.input || !tok_path || !o.out_dir || !o.seq_len)
        return usage_error("%s", "--input, --tokenizer, --out and --seq-len are required");
    lu_tokenizer *tok = load_tokenizer(tok_path);
    if (!tok) {
        fprintf(stderr, "luthier data prepare-chat: %s\n", lu_error_message());
        return 1;
    }
    int32_t pad = lu_tokenizer_token_id(tok, "<|endoftext|>");
    o.pad_id = pad >= 0 ? pad : 0;
    o.tok = tok;
    o.tokenizer_name = tok_path;
    lu_sft_stats st;
    lu_status s = lu_sft_prepare(&o, &st);
    lu_tokenizer_free(tok);
    if (s) {
        fprintf(stderr, "luthier data prepare-chat: %s\n", lu_error_message());
        return 1;
    }
    printf("%s: %lld lines, %lld malformed (skipped) -> %s (sequences of %lld tokens)\n\n", o.input, (long long)st.lines,
           (long long)st.malformed, o.out_dir, (long long)o.seq_len);
    printf("| split | samples  | tokens      | trained     | truncated (samples / tokens) | dropped (samples / tokens) | sequences | shards |\n");
    printf("|-------|----------|-------------|-------------|------------------------------|----------------------------|-----------|--------|\n");
    print_split("train", &st.train);
    print_split("valid", &st.valid);
    double cap = (double)(st.train.sequences * o.seq_len);
    if (cap > 0) printf("\npacking efficiency (train): %.1f%% of the sequence capacity holds tokens\n", 100.0 * (double)st.train.tokens / cap);
    return 0;
}
