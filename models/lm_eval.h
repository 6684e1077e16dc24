/* lm_eval.h - zero-shot evaluation of a decoder (decoder.h) on task files, the metrics of
 * LightEval 0.10 and lm-evaluation-harness that the Luth evaluation uses (luth.md section 6).
 *
 * Task file: JSON Lines, one item per line (blank lines skipped), three types:
 *
 *   {"type": "mc", "query": "Question: ...\nAnswer:", "choices": [" A", " B"], "gold": 0}
 *       Multiple choice by log-likelihood: each choice is a continuation of the query, scored by
 *       the sum of its tokens' log-probabilities. The pair is tokenised as lm-eval-harness does
 *       (_encode_pair): ids(query + choice), whose first |ids(query)| tokens are the context.
 *       Metrics (argmax, first index on ties, as numpy):
 *         acc               argmax of the total log-likelihood
 *         acc_norm          argmax of ll / characters(choice) - lm-eval-harness "acc_norm" and
 *                           LightEval LogProbCharNorm (characters = Unicode code points, as
 *                           Python's len)
 *         acc_norm_nospace  the same without a leading space of the choice - LightEval
 *                           LogProbCharNorm(ignore_first_space=True), the
 *                           "loglikelihood_acc_norm_nospace" that Luth reports for arc_challenge_fr
 *         acc_norm_token    argmax of ll / tokens(choice) - LightEval LogProbTokenNorm (mmlu_fr)
 *       Continuations that differ only in their text (" A", " B", ...) give acc_norm = acc.
 *       The context is run once into a key/value cache that each choice continues from.
 *
 *   {"type": "gen", "prompt": "...", "answers": ["B"], "regex": "Réponse : ?([A-D])", "max_new_tokens": 1024}
 *       Greedy decoding of at most max_new_tokens tokens (the run's, or the item's optional
 *       "max_new_tokens"), stopping at the model's end tokens, and, without regex, once the
 *       first non-empty line is complete.
 *       The answer is extracted from the decoded text: with "regex" (PCRE2, UTF-8), the first
 *       capture group of the first match (the whole match without groups; no match: empty);
 *       otherwise the first non-empty line. Metrics:
 *         em   the trimmed answer equals one of the answers (trimmed)
 *         qem  equal after normalisation: Unicode case folding, accents stripped (NFKD without
 *              combining marks), punctuation removed, whitespace runs collapsed - LightEval's
 *              quasi-exact match, without its English article removal (the tasks here are French
 *              and English)
 *
 *   {"type": "ppl", "text": "..."}
 *       Token-level perplexity and bits per byte of the text, all of it scored: it follows a
 *       start token (the model's BOS, else its first end token, as lm-eval-harness starts rolling
 *       windows with the end-of-text token), in disjoint windows of at most max_length tokens,
 *       each after the last token of the previous one. Corpus-level metrics over the items:
 *         ppl            exp(sum NLL / sum tokens)
 *         bits_per_byte  sum NLL / (ln 2 * sum UTF-8 bytes)
 *
 *   {"type": "ifeval", "prompt": "...", "instruction_id_list": ["punctuation:no_comma", ...],
 *    "kwargs": [{}, ...], "max_new_tokens": 1280}
 *       IFEval (google/IFEval, jzhang86/fr_ifeval): greedy decoding as for gen items (without the
 *       first-line stop), then the instruction checkers of ifeval.h on the whole response, one
 *       kwargs object (or null) per instruction; an unknown id or bad kwargs is an error naming the
 *       line. Metrics, as LightEval's ifeval_metrics and lm-evaluation-harness:
 *         prompt_level_strict_acc  items whose response follows all their instructions
 *         inst_level_strict_acc    instructions followed, over all instructions of all items
 *         prompt_level_loose_acc, inst_level_loose_acc   the same where a response also counts
 *                                  as following if a variant does (first/last line dropped, '*'
 *                                  removed; ifeval.h)
 *
 * Chat mode renders the query/prompt as a user turn after an optional system turn with the Qwen3
 * chat template (chat_template.h) and its generation prompt, non-thinking (the empty think block)
 * for Qwen3 models (q/k norm), without it for other ChatML models (SmolLM2); the choices of mc
 * items continue the rendered text. Raw mode uses the text as is. ppl items are always raw. */
#ifndef LU_LM_EVAL_H
#define LU_LM_EVAL_H

#include "models/decoder.h"
#include "models/ifeval.h"
#include "models/tokenizer.h"

typedef enum lu_lmeval_type { LU_LMEVAL_MC, LU_LMEVAL_GEN, LU_LMEVAL_PPL, LU_LMEVAL_IFEVAL } lu_lmeval_type;

typedef struct lu_lmeval_item {
    lu_lmeval_type type;
    char *text;      /* mc query, gen or ifeval prompt, ppl text */
    int n_choices;   /* mc */
    char **choices;
    int gold;
    int n_answers;   /* gen */
    char **answers;
    char *regex;     /* gen, or NULL */
    int64_t max_new_tokens; /* gen, ifeval: the item's bound, 0: the run's */
    int n_instructions;      /* ifeval */
    lu_ifeval_instruction **instructions;
    int line;        /* line in the file */
} lu_lmeval_item;

typedef struct lu_lmeval_task {
    char *name;      /* the file name without directory and .jsonl */
    lu_lmeval_type type; /* every item of a task has the same type */
    int n_items;
    lu_lmeval_item *items;
} lu_lmeval_task;

/* Parses a task; errors name the file and line ("t.jsonl:3: mc item: gold 4 out of range for 3
 * choices"). A task with items of mixed types or no item is an error. */
lu_lmeval_task *lu_lmeval_task_parse(const char *text, size_t len, const char *name);
lu_lmeval_task *lu_lmeval_task_load(const char *path);
void lu_lmeval_task_free(lu_lmeval_task *t);

typedef struct lu_lmeval_opts {
    bool chat;
    const char *system;      /* chat system message, or NULL for none */
    int64_t limit;           /* first `limit` items; <= 0: all */
    int64_t max_new_tokens;  /* gen; <= 0: 256 */
    int64_t max_length;      /* ppl window; <= 0: min(max_position_embeddings, 1024) */
    bool progress;           /* progress line on stderr (rank 0's share when shared) */
    bool shared;             /* every rank of a data-parallel job runs the task, scoring the items i
                              * with i % ranks == rank; the counts and sums meet on every rank */
} lu_lmeval_opts;

#define LU_LMEVAL_MAX_METRICS 4

typedef struct lu_lmeval_result {
    int64_t n;               /* items evaluated */
    int n_metrics;
    const char *metric[LU_LMEVAL_MAX_METRICS]; /* static names: "acc", "acc_norm", ... */
    double value[LU_LMEVAL_MAX_METRICS];       /* accuracies in [0, 1]; ppl; bits per byte */
} lu_lmeval_result;

/* Runs the task; forward passes allocate in a private arena. */
lu_status lu_lmeval_run(lu_decoder *m, const lu_tokenizer *tok, const lu_lmeval_task *task, const lu_lmeval_opts *o,
                      lu_lmeval_result *r);

/* Total log-likelihood of continuation after context and its token count (the mc score). */
lu_status lu_lmeval_loglikelihood(lu_decoder *m, const lu_tokenizer *tok, const char *context, const char *continuation,
                                double *ll, int64_t *n_tokens);

/* The IFEval results of a response to an ifeval item: per instruction, strict and loose. */
lu_status lu_lmeval_ifeval_score(const lu_lmeval_item *it, const char *response, bool *strict, bool *loose);

/* The answer of a generated text: regex (first group) or first non-empty line, trimmed; new string. */
char *lu_lmeval_extract(const char *generated, const char *regex);
/* qem normalisation; new string. */
char *lu_lmeval_normalize(const char *s);

#endif
