/* cli_asr.c - `luthier asr forward`: runs an ASR encoder imported from PyTorch on a padded batch
 * read from safetensors and writes its output, for parity checks against the reference
 * implementations (torchaudio Conformer, icefall Zipformer2). */
#include <stdio.h>
#include <string.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/safetensors.h"
#include "experiments/runner/asr_infer.h"
#include "experiments/runner/cli.h"
#include "models/conformer.h"
#include "models/zipformer.h"

#define ARENA_BLOCK (64u << 20)

typedef struct asr_forward_args {
    const char *arch, *config, *weights, *input, *out;
} asr_forward_args;

static void asr_usage(FILE *f)
{
    fprintf(f,
            "usage: luthier asr forward --arch conformer|zipformer --config CFG.json --weights W.safetensors\n"
            "                           --input IN.safetensors --out OUT.safetensors\n"
            "\n"
            "Runs an encoder in eval mode on a padded batch.\n"
            "  --arch conformer   torchaudio.models.Conformer; CFG.json holds its arguments (input_dim,\n"
            "                     num_heads, ffn_dim, num_layers, depthwise_conv_kernel_size; dropout is\n"
            "                     ignored); W holds its state dict (conformer_layers.*, converted by\n"
            "                     scripts/convert_torch_to_safetensors.py); IN holds x [B,T,D] f32 and\n"
            "                     lengths [B] int; OUT receives y [B,T,D] and lengths\n"
            "  --arch zipformer   icefall Zipformer2 with Conv2dSubsampling (AsrModel.forward_encoder);\n"
            "                     CFG.json holds Zipformer2 arguments (output_downsampling_factor,\n"
            "                     downsampling_factor, encoder_dim, num_encoder_layers, encoder_unmasked_dim,\n"
            "                     query_head_dim, pos_head_dim, value_head_dim, num_heads, feedforward_dim,\n"
            "                     cnn_module_kernel, pos_dim; causal false; optional feature_dim 80 and\n"
            "                     layer{1,2,3}_channels 8/32/128); W holds encoder_embed.* and encoder.*\n"
            "                     (other tensors of an AsrModel checkpoint are ignored); IN holds x [B,T,F]\n"
            "                     f32 and x_lens [B] int; OUT receives encoder_out [B,T',C] and\n"
            "                     encoder_out_lens\n");
    fprintf(f, "\n");
    lu_asr_transcribe_usage(f);
}

/* -1: run; otherwise the exit code. */
static int parse_forward(int argc, char **argv, asr_forward_args *a)
{
    struct { const char *flag; const char **dst; } opts[] = {
        {"--arch", &a->arch}, {"--config", &a->config}, {"--weights", &a->weights},
        {"--input", &a->input}, {"--out", &a->out},
    };
    enum { N_OPTS = sizeof opts / sizeof opts[0] };
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            asr_usage(stdout);
            return 0;
        }
        int k = 0;
        while (k < N_OPTS && strcmp(argv[i], opts[k].flag)) k++;
        if (k == N_OPTS || i + 1 >= argc) {
            fprintf(stderr, "luthier asr forward: unknown or incomplete option '%s'\n", argv[i]);
            asr_usage(stderr);
            return 2;
        }
        *opts[k].dst = argv[++i];
    }
    for (int k = 0; k < N_OPTS; k++)
        if (!*opts[k].dst) {
            fprintf(stderr, "luthier asr forward: missing %s\n", opts[k].flag);
            asr_usage(stderr);
            return 2;
        }
    if (strcmp(a->arch, "conformer") && strcmp(a->arch, "zipformer")) {
        fprintf(stderr, "luthier asr forward: unknown --arch '%s' (conformer or zipformer)\n", a->arch);
        return 2;
    }
    return -1;
}

/* Reads x [B,T,input_dim] and lengths [B] (integer dtype) from the input file. */
static lu_status read_input(const char *path, const lu_conformer_config *c, lu_tensor **x, lu_tensor **lengths)
{
    lu_st_file *f = lu_st_open(path);
    if (!f) return lu_error_code();
    lu_status s = LU_OK;
    int ix = lu_st_find(f, "x"), il = lu_st_find(f, "lengths");
    lu_dtype ldt = LU_F32;
    if (ix < 0 || il < 0) s = lu_errorf(LU_ERR_FORMAT, "%s: needs tensors 'x' and 'lengths'", path);
    else if ((s = lu_st_info(f, il, &ldt, NULL, NULL)) == LU_OK && ldt != LU_I32 && ldt != LU_I64)
        s = lu_errorf(LU_ERR_DTYPE, "%s: 'lengths' must be an integer tensor, got %s", path, lu_dtype_name(ldt));
    if (s == LU_OK && (!(*x = lu_st_load(f, "x", LU_F32)) || !(*lengths = lu_st_load(f, "lengths", LU_I64))))
        s = lu_error_code();
    lu_st_close(f);
    char sx[LU_SHAPE_STR_MAX];
    if (s == LU_OK && ((*x)->ndim != 3 || (*x)->shape[2] != c->input_dim))
        s = lu_errorf(LU_ERR_SHAPE, "%s: x %s must be [B, T, input_dim = %lld]", path, lu_shape_str(*x, sx, sizeof sx),
                      (long long)c->input_dim);
    return s;
}

static lu_status conformer_forward(const asr_forward_args *a)
{
    lu_conformer_config cfg;
    LU_TRY(lu_conformer_config_load_json(a->config, &cfg));
    lu_params *p = lu_params_new(LU_CPU);
    lu_arena *arena = lu_arena_new(LU_CPU, ARENA_BLOCK);
    lu_status s = p && arena ? LU_OK : lu_errorf(LU_ERR_NOMEM, "asr forward: out of memory");
    if (s == LU_OK) s = lu_conformer_declare(p, "", &cfg);
    if (s == LU_OK) s = lu_params_finalize(p);
    if (s == LU_OK) s = lu_conformer_load_safetensors(p, a->weights);
    if (s == LU_OK) {
        lu_arena *prev = lu_arena_activate(arena);
        bool grad = lu_grad_set_enabled(false);
        lu_tensor *x = NULL, *lengths = NULL, *y = NULL;
        s = read_input(a->input, &cfg, &x, &lengths);
        if (s == LU_OK && !(y = lu_conformer_forward(p, "", &cfg, x, lengths, NULL))) s = lu_error_code();
        if (s == LU_OK) {
            const char *names[2] = {"y", "lengths"};
            lu_tensor *const ts[2] = {y, lengths};
            s = lu_st_save(a->out, 2, names, ts, 0, NULL, NULL);
        }
        lu_grad_set_enabled(grad);
        lu_arena_activate(prev);
    }
    lu_arena_free(arena);
    lu_params_free(p);
    return s;
}

static lu_status zipformer_forward(const asr_forward_args *a)
{
    static const char *const prefixes[] = {"encoder_embed.", "encoder."};
    lu_zipformer_config cfg;
    LU_TRY(lu_zipformer_config_load_json(a->config, &cfg));
    lu_params *p = lu_params_new(LU_CPU);
    lu_arena *arena = lu_arena_new(LU_CPU, ARENA_BLOCK);
    lu_status s = p && arena ? LU_OK : lu_errorf(LU_ERR_NOMEM, "asr forward: out of memory");
    if (s == LU_OK) s = lu_zipformer_declare(p, &cfg);
    if (s == LU_OK) s = lu_params_finalize(p);
    if (s == LU_OK) s = lu_zipformer_load_safetensors(p, a->weights, 2, prefixes);
    if (s == LU_OK) {
        lu_arena *prev = lu_arena_activate(arena);
        bool grad = lu_grad_set_enabled(false);
        lu_tensor *x = NULL, *x_lens = NULL, *y = NULL, *y_lens = NULL;
        lu_st_file *f = lu_st_open(a->input);
        if (!f) s = lu_error_code();
        else if (lu_st_find(f, "x") < 0 || lu_st_find(f, "x_lens") < 0)
            s = lu_errorf(LU_ERR_FORMAT, "%s: needs tensors 'x' and 'x_lens'", a->input);
        else if (!(x = lu_st_load(f, "x", LU_F32)) || !(x_lens = lu_st_load(f, "x_lens", LU_I64)))
            s = lu_error_code();
        lu_st_close(f);
        if (s == LU_OK && !(y = lu_zipformer_forward(p, &cfg, x, x_lens, &y_lens, NULL))) s = lu_error_code();
        if (s == LU_OK) {
            const char *names[2] = {"encoder_out", "encoder_out_lens"};
            lu_tensor *const ts[2] = {y, y_lens};
            s = lu_st_save(a->out, 2, names, ts, 0, NULL, NULL);
        }
        lu_grad_set_enabled(grad);
        lu_arena_activate(prev);
    }
    lu_arena_free(arena);
    lu_params_free(p);
    return s;
}

int lu_cli_asr(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        asr_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "transcribe")) return lu_asr_transcribe_cli(argc - 1, argv + 1);
    if (strcmp(argv[1], "forward")) {
        fprintf(stderr, "luthier asr: unknown subcommand '%s' (forward, transcribe)\n", argv[1]);
        asr_usage(stderr);
        return 2;
    }
    asr_forward_args a = {0};
    int rc = parse_forward(argc, argv, &a);
    if (rc >= 0) return rc;
    if (!strcmp(a.arch, "zipformer") ? zipformer_forward(&a) : conformer_forward(&a)) {
        fprintf(stderr, "luthier asr forward: %s\n", lu_error_message());
        return 1;
    }
    return 0;
}
