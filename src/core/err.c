#include "core/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *gl_strerror(int err) {
  switch (err) {
  case GL_OK:
    return "success";
#define GL__ERR_TEXT(name, text) \
  case GL_##name:                \
    return text;
    GL_ERRNO_MAP(GL__ERR_TEXT)
#undef GL__ERR_TEXT
  default:
    return "unknown error";
  }
}

const char *gl_err_name(int err) {
  switch (err) {
  case GL_OK:
    return "GL_OK";
#define GL__ERR_NAME(name, text) \
  case GL_##name:                \
    return "GL_" #name;
    GL_ERRNO_MAP(GL__ERR_NAME)
#undef GL__ERR_NAME
  default:
    return "GL_E?";
  }
}

int gl_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

void gl_err_prefix(char *err, size_t errlen, const char *prefix) {
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
