#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn_internal.h"

void *gl__nn_alloc(size_t bytes) {
  void *p = NULL;
  /* Whole cache lines, so that no other allocation shares the last one. */
  size_t n = (bytes + 63) / 64 * 64;
  if (posix_memalign(&p, 64, n ? n : 64) != 0)
    return NULL;
  return p;
}
