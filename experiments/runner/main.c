/* main.c - the luthier command line: dispatches to the verb's runner. */
#include <stdio.h>
#include <string.h>

#include "experiments/runner/cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: luthier <verb> [args]\n"
            "\n"
            "verbs:\n"
            "  train CONFIG.yaml [--out DIR] [--max-steps N] [--resume] [section.key=value ...]\n"
            "  eval CONFIG.yaml [--checkpoint FILE]\n"
            "  lm forward | generate | chat | eval --model DIR|FILE.gguf ...\n"
            "  merge MERGE.yaml --out DIR (mergekit YAML)\n"
            "  data prepare-chat | prepare-speech ...\n"
            "  features fbank | mel --audio FILE --out OUT.safetensors\n"
            "  asr forward | transcribe ...\n"
            "  bench ops | lm | asr | sft | merge | gpu\n"
            "  version (build and devices)\n"
            "\n"
            "Run 'luthier <verb> --help' for a verb's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    for (const lu_cli_verb *v = lu_cli_verbs; v->name; v++)
        if (!strcmp(v->name, verb)) return v->run(argc - 1, argv + 1);
    fprintf(stderr, "luthier: unknown verb '%s'\n\n", verb);
    usage(stderr);
    return 2;
}
