/* bench_lm.c - `luthier bench lm`: CPU prefill and KV-cached decode throughput (tokens/s) of a
 * Qwen3-0.6B-shaped decoder with random weights (formats.md §1.1: 28 layers, hidden 1024,
 * 16 query / 8 kv heads, head_dim 128, intermediate 3072, vocab 151936), beside transformers'
 * eager CPU forward on the same shapes, measured in the same run by a python3 child process
 * with the same thread count, and the ratio. Without torch/transformers it says so. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/rng.h"
#include "experiments/runner/cli.h"
#include "models/decoder.h"

typedef struct lm_bench_opts {
    int layers;
    int64_t prompt_len, new_tokens;
    bool reference;
} lm_bench_opts;

typedef struct lm_rates {
    double prefill, decode; /* tokens/s */
} lm_rates;

static lu_decoder_config qwen3_06b_shape(int layers)
{
    return (lu_decoder_config){.vocab_size = 151936, .hidden_size = 1024, .intermediate_size = 3072,
                               .num_layers = layers, .num_heads = 16, .num_kv_heads = 8, .head_dim = 128,
                               .rope_theta = 1e6, .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true,
                               .init_std = 0.02, .max_position_embeddings = 40960, .bos_token_id = -1,
                               .dtype = LU_F32};
}

/* U(-a, a) with the std of transformers' N(0, 0.02) init, norms at 1: the timing does not
 * depend on the values, and the uniform draw is several times faster than the normal one. */
static lu_status init_uniform(lu_params *p)
{
    const double a = 0.02 * 1.7320508075688772;
    for (int i = 0; i < p->n; i++) {
        lu_tensor *t = p->items[i].t;
        LU_TRY(t->ndim == 1 ? lu_tensor_fill(t, 1.0) : lu_tensor_rand_uniform(t, -a, a, 1, (uint32_t)i));
    }
    return LU_OK;
}

static int64_t argmax_last(const lu_tensor *logits, float *buf)
{
    int64_t V = logits->shape[2], best = 0;
    if (lu_tensor_to_host(logits, LU_F32, buf)) return -1;
    for (int64_t i = 1; i < V; i++)
        if (buf[i] > buf[best]) best = i;
    return best;
}

/* Prefill of prompt_len tokens (logits of the last one only, as generation needs), then
 * new_tokens greedy steps against the cache; first a short untimed warm-up of both. */
static lu_status run_luthier(lu_decoder *m, const lm_bench_opts *o, lm_rates *r)
{
    int64_t V = m->cfg.vocab_size, *ids = malloc((size_t)o->prompt_len * sizeof *ids);
    float *logits = malloc((size_t)V * sizeof *logits);
    lu_kv_cache *kc = lu_kv_cache_new(m, 1, o->prompt_len + o->new_tokens);
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    lu_status s = ids && logits && kc && arena ? LU_OK : lu_errorf(LU_ERR_NOMEM, "bench lm: out of memory");
    lu_arena *prev = lu_arena_activate(arena);
    for (int64_t i = 0; i < o->prompt_len && !s; i++) ids[i] = (i * 7919 + 13) % V;
    for (int pass = 0; pass < 2 && !s; pass++) {
        int64_t n_prompt = pass || o->prompt_len < 8 ? o->prompt_len : 8, n_new = pass ? o->new_tokens : 2;
        kc->length = 0;
        lu_arena_reset(arena);
        double t0 = lu_bench_now();
        lu_tensor *t = lu_tensor_from_host(LU_I64, LU_SHAPE(1, n_prompt), LU_CPU, ids);
        lu_tensor *y = t ? lu_decoder_forward_cached(m, t, kc, true) : NULL;
        int64_t tok = y ? argmax_last(y, logits) : -1;
        double t1 = lu_bench_now();
        for (int64_t i = 0; i < n_new && tok >= 0; i++) {
            lu_arena_reset(arena);
            t = lu_tensor_from_host(LU_I64, LU_SHAPE(1, 1), LU_CPU, &tok);
            y = t ? lu_decoder_forward_cached(m, t, kc, true) : NULL;
            tok = y ? argmax_last(y, logits) : -1;
        }
        double t2 = lu_bench_now();
        if (tok < 0) s = lu_error_code();
        r->prefill = (double)n_prompt / (t1 - t0);
        r->decode = (double)n_new / (t2 - t1);
    }
    lu_arena_activate(prev);
    lu_arena_free(arena);
    lu_kv_cache_free(kc);
    free(logits);
    free(ids);
    return s;
}

/* transformers eager on CPU, same shapes and protocol; prints one line "prefill decode" or
 * "error <why>". torchaudio is blocked when it fails to load: transformers imports it if
 * present and nothing here needs audio. */
static const char *reference_script =
    "import sys, time\n"
    "try:\n"
    "    try:\n"
    "        import torchaudio\n"
    "    except Exception:\n"
    "        sys.modules['torchaudio'] = None\n"
    "    import torch\n"
    "    from transformers import Qwen3Config, Qwen3ForCausalLM\n"
    "except Exception as e:\n"
    "    print('error', type(e).__name__, str(e).splitlines()[0] if str(e) else ''); sys.exit(0)\n"
    "L, P, N, T = (int(a) for a in sys.argv[1:5])\n"
    "torch.set_num_threads(T)\n"
    "cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=L,\n"
    "    num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,\n"
    "    rope_parameters={'rope_type': 'default', 'rope_theta': 1e6}, attn_implementation='eager')\n"
    "model = Qwen3ForCausalLM(cfg).float().eval()\n"
    "ids = (torch.arange(P) * 7919 + 13) % 151936\n"
    "def run(p, n):\n"
    "    with torch.no_grad():\n"
    "        t0 = time.perf_counter()\n"
    "        out = model(ids[None, :p], use_cache=True, logits_to_keep=1)\n"
    "        tok = out.logits[:, -1].argmax(-1, keepdim=True)\n"
    "        t1 = time.perf_counter()\n"
    "        past = out.past_key_values\n"
    "        for _ in range(n):\n"
    "            out = model(tok, past_key_values=past, use_cache=True)\n"
    "            past = out.past_key_values\n"
    "            tok = out.logits[:, -1].argmax(-1, keepdim=True)\n"
    "        t2 = time.perf_counter()\n"
    "    return p / (t1 - t0), n / (t2 - t1)\n"
    "run(8, 2)\n"
    "print('%.6g %.6g' % run(P, N))\n";

/* Fills r, or returns false with the reason in why. */
static bool run_reference(const lm_bench_opts *o, lm_rates *r, char *why, size_t why_size)
{
    char path[] = "/tmp/luthier_bench_lm_XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        snprintf(why, why_size, "cannot write a temporary script");
        return false;
    }
    fputs(reference_script, f);
    fclose(f);
    char cmd[512], line[512] = "";
    snprintf(cmd, sizeof cmd, "python3 %s %d %lld %lld %d 2>/dev/null", path, o->layers, (long long)o->prompt_len,
             (long long)o->new_tokens, omp_get_max_threads());
    FILE *p = popen(cmd, "r");
    bool got = p && fgets(line, sizeof line, p);
    int rc = p ? pclose(p) : -1;
    remove(path);
    line[strcspn(line, "\n")] = 0;
    if (got && rc == 0 && sscanf(line, "%lf %lf", &r->prefill, &r->decode) == 2) return true;
    if (got && !strncmp(line, "error ", 6))
        snprintf(why, why_size, "python3 could not import torch/transformers (%.200s)", line + 6);
    else snprintf(why, why_size, "python3 failed (exit status %d)", rc);
    return false;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: luthier bench lm [--layers N] [--prompt-tokens N] [--new-tokens N] [--no-reference]\n"
               "  CPU prefill and decode tokens/s of a Qwen3-0.6B-shaped model with random weights\n"
               "  (28 layers by default; --layers shrinks it), beside transformers on CPU and the ratio.\n");
}

int lu_bench_lm(int argc, char **argv)
{
    lm_bench_opts o = {.layers = 28, .prompt_len = 512, .new_tokens = 64, .reference = true};
    for (int i = 1; i < argc; i++) {
        long long x;
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-reference")) {
            o.reference = false;
        } else if (!strcmp(a, "--layers") || !strcmp(a, "--prompt-tokens") || !strcmp(a, "--new-tokens")) {
            if (!lu_bench_int_arg("lm", a, v, 1, 1 << 20, &x)) return 2;
            i++;
            if (!strcmp(a, "--layers")) o.layers = (int)(x > 1000 ? 1000 : x);
            else if (!strcmp(a, "--prompt-tokens")) o.prompt_len = x;
            else o.new_tokens = x;
        } else {
            fprintf(stderr, "luthier bench lm: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    lu_decoder_config cfg = qwen3_06b_shape(o.layers);
    lu_decoder m;
    lu_params *params = lu_params_new(LU_CPU);
    lm_rates ours = {0}, ref = {0};
    bool ok = params && !lu_decoder_declare(&m, &cfg, params) && !lu_params_finalize(params) &&
              !init_uniform(params) && !run_luthier(&m, &o, &ours);
    lu_params_free(params);
    if (!ok) {
        fprintf(stderr, "luthier bench lm: %s\n", lu_error_message());
        return 1;
    }
    printf("lm: Qwen3-0.6B shape, %d layers, f32, %d threads, prompt %lld tokens, %lld new tokens\n", o.layers,
           omp_get_max_threads(), (long long)o.prompt_len, (long long)o.new_tokens);
    char why[256] = "not requested (--no-reference)";
    bool have_ref = o.reference && run_reference(&o, &ref, why, sizeof why);
    const char *names[2] = {"prefill", "decode"};
    double a[2] = {ours.prefill, ours.decode}, b[2] = {ref.prefill, ref.decode};
    for (int k = 0; k < 2; k++) {
        if (have_ref)
            printf("  %-8s luthier %10.1f tok/s   transformers %10.1f tok/s   ratio %.2fx\n", names[k], a[k], b[k],
                   a[k] / b[k]);
        else
            printf("  %-8s luthier %10.1f tok/s   transformers: not measured\n", names[k], a[k]);
    }
    if (!have_ref) printf("  reference could not be measured: %s\n", why);
    return 0;
}
