#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn_internal.h"

int gl__nn_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

void gl__nn_prefix(char *err, size_t errlen, const char *prefix) {
  if (!err || !errlen)
    return;
  size_t plen = strlen(prefix) + 2, mlen = strnlen(err, errlen - 1);
  if (plen >= errlen)
    return;
  if (mlen > errlen - 1 - plen)
    mlen = errlen - 1 - plen; /* cut the end of the message, keep the prefix */
  memmove(err + plen, err, mlen);
  memcpy(err, prefix, plen - 2);
  memcpy(err + plen - 2, ": ", 2);
  err[plen + mlen] = 0;
}

void *gl__nn_alloc(size_t bytes) {
  void *p = NULL;
  /* Whole cache lines, so that no other allocation shares the last one. */
  size_t n = (bytes + 63) / 64 * 64;
  if (posix_memalign(&p, 64, n ? n : 64) != 0)
    return NULL;
  return p;
}
