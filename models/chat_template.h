/* chat_template.h - the Qwen3 chat template (tests/fixtures/tokenizer/qwen3_chat_template.jinja, the
 * template of Qwen/Qwen3-0.6B), rendered character for character as transformers'
 * apply_chat_template renders it, without tools (formats.md section 4):
 *
 *   system (first message):  <|im_start|>system\n{content}<|im_end|>\n
 *   user, later system:      <|im_start|>{role}\n{content}<|im_end|>\n
 *   assistant:               <|im_start|>assistant\n{content}<|im_end|>\n, or, for the last message
 *                            and for those with reasoning after the last user query,
 *                            <|im_start|>assistant\n<think>\n{reasoning}\n</think>\n\n{content}<|im_end|>\n
 *                            (reasoning = `reasoning`, else the text before </think> in content)
 *   tool (consecutive ones share one user turn):
 *                            <|im_start|>user\n<tool_response>\n{content}\n</tool_response>...<|im_end|>\n
 *   generation prompt:       <|im_start|>assistant\n, then <think>\n\n</think>\n\n if !enable_thinking
 *
 * For supervised fine-tuning the renderer also returns segments: byte ranges of the text labelled by
 * what they hold, so that the tokens of assistant answers (and their <|im_end|>) can be masked in. */
#ifndef LU_CHAT_TEMPLATE_H
#define LU_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "models/tokenizer.h"

typedef struct lu_chat_message {
    const char *role;      /* "system", "user", "assistant" or "tool" */
    const char *content;
    const char *reasoning; /* assistant reasoning_content; NULL: absent (then taken from <think> in content) */
} lu_chat_message;

typedef enum lu_chat_part {
    LU_CHAT_FRAME,     /* template text: <|im_start|>role\n, <|im_end|>\n, the generation prompt */
    LU_CHAT_INPUT,     /* content of a system, user or tool message */
    LU_CHAT_THINK,     /* an assistant turn's <think>\n...\n</think>\n\n block */
    LU_CHAT_ANSWER,    /* an assistant turn's content */
    LU_CHAT_ANSWER_END /* the <|im_end|> closing an assistant turn (trained on: it is the stop token) */
} lu_chat_part;

/* Bytes [start, end) of the rendered text; message is its index, -1 for the generation prompt.
 * Segments are in order, non-empty, and cover the whole text. */
typedef struct lu_chat_segment {
    size_t start, end;
    int message;
    lu_chat_part part;
} lu_chat_segment;

/* Renders n >= 1 messages to a new NUL-terminated string (caller frees); NULL + error naming the
 * message for an unknown role or a NULL content. enable_thinking only changes the generation prompt,
 * as in the template. */
char *lu_chat_render(const lu_chat_message *m, int n, bool add_generation_prompt, bool enable_thinking);
/* Same, and *segs (caller frees) receives *n_segs segments describing the text. */
char *lu_chat_render_segments(const lu_chat_message *m, int n, bool add_generation_prompt, bool enable_thinking,
                              lu_chat_segment **segs, int *n_segs);

/* Tokenizes a rendered conversation (no generation prompt) for training: *mask (caller frees, one byte
 * per token) is 1 for the tokens of assistant answers and their <|im_end|>, and of the <think> blocks
 * when train_think, 0 elsewhere; a token counts where its first byte lies. */
lu_status lu_chat_encode(const lu_tokenizer *t, const lu_chat_message *m, int n, bool train_think, int32_t **ids,
                         uint8_t **mask, int64_t *n_tokens);

#endif
