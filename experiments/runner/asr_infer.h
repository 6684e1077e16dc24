/* asr_infer.h - `luthier asr transcribe` (experiments/runner/asr_infer.c). */
#ifndef LU_ASR_INFER_H
#define LU_ASR_INFER_H

#include <stdio.h>

/* argv[0] is "transcribe"; returns the exit code (0 ok, 1 failure, 2 usage). */
int lu_asr_transcribe_cli(int argc, char **argv);
void lu_asr_transcribe_usage(FILE *f);

#endif
