/* libFuzzer target: the architecture config of a model file (the JSON
 * string in its __metadata__ "config"), gl__nn_config_parse, and what the
 * loader derives from an accepted config: the MobileNetV2 shape, the
 * fusion weights and the tensor set the file must then hold.
 *
 * An accepted config must give an architecture whose channel counts are
 * positive and whose tensor set has unique names with non-zero shapes (the
 * list is bounded, as the loader bounds it by the file's tensor count); a
 * refused one is GL_EFORMAT with a message. The fuzz_safetensors target
 * reaches the parser too, but only through a file whose header it has to
 * get right first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "nn/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TENSORS 20000

#define REQUIRE(cond)                                                                              \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                                   \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static int spec_cmp(const void *a, const void *b) {
  return strcmp(((const struct gl__nn_tensor_spec *)a)->name,
                ((const struct gl__nn_tensor_spec *)b)->name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The loader hands the parser a C string (cut at a NUL, as here). */
  char *json = malloc(size + 1);
  REQUIRE(json);
  memcpy(json, data, size);
  json[size] = 0;

  struct gl__nn_config cfg;
  char err[512];
  err[0] = 0;
  int rc = gl__nn_config_parse(json, &cfg, err, sizeof err);
  free(json);
  if (rc) {
    REQUIRE(rc == GL_EFORMAT);
    REQUIRE(err[0] != 0);
    return 0;
  }
  REQUIRE(cfg.input_h >= 32 && cfg.input_w >= 32);
  REQUIRE(cfg.n_levels >= 1 && cfg.n_levels <= GL__NN_MAX_LEVELS);
  REQUIRE(cfg.descriptor || cfg.num_classes > 0);

  struct gl__nn_arch a;
  gl__nn_arch_init(&cfg, &a);
  for (int f = 0; f < GL__NN_FEATURES; f++)
    REQUIRE(a.cout[f] > 0 && a.cin[f] > 0);
  double w[GL__NN_MAX_LEVELS];
  gl__nn_fusion_init(&cfg, w);

  struct gl__nn_tensor_spec *spec = NULL;
  size_t n = 0;
  /* The loader lists at most twice the file's tensors and 1024 more; a
   * config that implies more is refused (GL_ETOOBIG) without the list. */
  rc = gl__nn_expected_tensors(&cfg, MAX_TENSORS, &spec, &n);
  REQUIRE(rc == 0 || rc == GL_ETOOBIG);
  if (rc)
    return 0;
  REQUIRE(n > 0 && n <= MAX_TENSORS);
  for (size_t i = 0; i < n; i++) {
    REQUIRE(spec[i].ndim >= 1 && spec[i].ndim <= 4);
    for (uint32_t k = 0; k < spec[i].ndim; k++)
      REQUIRE(spec[i].shape[k] > 0);
  }
  qsort(spec, n, sizeof *spec, spec_cmp);
  for (size_t i = 1; i < n; i++)
    REQUIRE(strcmp(spec[i - 1].name, spec[i].name) != 0);
  free(spec);
  return 0;
}
