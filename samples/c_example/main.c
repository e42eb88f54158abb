/* Run a sparsec-compiled model from C: only sparsec.h and the generated model header needed.
 *
 *   make                       # compiles ../mlp_sparse.onnx and this program
 *   ./build/example input.bin  # input.bin: raw float32 values of input 0 (default: all 0.5)
 *
 * Prints every output value, one per line. */
#include <stdio.h>
#include <stdlib.h>

#include "sparsec.h"
#include "mlp_sparse.h"

int main(int argc, char **argv)
{
  char message[512];
  if (sparsec_cpu_check(message, sizeof message) != SPARSEC_OK) {
    fprintf(stderr, "%s\n", message);
    return 1;
  }

  static sparsec_model_input0_t input[SPARSEC_MODEL_INPUT0_ELEMENTS];
  static sparsec_model_output0_t output[SPARSEC_MODEL_OUTPUT0_ELEMENTS];
  if (argc > 1) {
    FILE *file = fopen(argv[1], "rb");
    if (!file || fread(input, sizeof input[0], SPARSEC_MODEL_INPUT0_ELEMENTS, file) !=
                     SPARSEC_MODEL_INPUT0_ELEMENTS) {
      fprintf(stderr, "cannot read %d values for input %s from %s\n",
              SPARSEC_MODEL_INPUT0_ELEMENTS, SPARSEC_MODEL_INPUT0_NAME, argv[1]);
      return 1;
    }
    fclose(file);
  } else {
    for (size_t i = 0; i < SPARSEC_MODEL_INPUT0_ELEMENTS; i++)
      input[i] = 0.5f;
  }

  sparsec_context *context = NULL;
  int status = sparsec_create(&context);
  if (status != SPARSEC_OK) {
    fprintf(stderr, "sparsec_create: %s\n", sparsec_status_message(status));
    return 1;
  }
  const void *inputs[SPARSEC_MODEL_NUM_INPUTS] = { input };
  void *outputs[SPARSEC_MODEL_NUM_OUTPUTS] = { output };
  status = sparsec_run(context, inputs, outputs);
  if (status != SPARSEC_OK) {
    fprintf(stderr, "sparsec_run: %s\n", sparsec_last_error(context));
    sparsec_destroy(context);
    return 1;
  }
  for (size_t i = 0; i < SPARSEC_MODEL_OUTPUT0_ELEMENTS; i++)
    printf("%.9g\n", (double)output[i]);
  sparsec_destroy(context);
  return 0;
}
