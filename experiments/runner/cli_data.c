/* cli_data.c - `luthier data`: dataset preparation subcommands. */
#include <stdio.h>
#include <string.h>

#include "experiments/runner/cli.h"

static const struct {
    const char *name, *help;
    int (*run)(int argc, char **argv);
} subcommands[] = {
    {"prepare-chat", "chat JSONL -> packed token shards (HDF5) for SFT", lu_data_prepare_chat},
    {"prepare-speech", "audio manifests (JSONL) -> features (HDF5) for ASR", lu_data_prepare_speech},
};

int lu_cli_data(int argc, char **argv)
{
    size_t n = sizeof subcommands / sizeof subcommands[0];
    if (argc >= 2)
        for (size_t i = 0; i < n; i++)
            if (!strcmp(argv[1], subcommands[i].name)) return subcommands[i].run(argc - 1, argv + 1);
    FILE *f = argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr;
    if (argc >= 2 && strcmp(argv[1], "--help")) fprintf(stderr, "luthier data: unknown subcommand '%s'\n\n", argv[1]);
    fprintf(f, "usage: luthier data <subcommand> [options]  (luthier data <subcommand> --help)\n\n");
    for (size_t i = 0; i < n; i++) fprintf(f, "  %-16s %s\n", subcommands[i].name, subcommands[i].help);
    return f == stdout ? 0 : 2;
}
