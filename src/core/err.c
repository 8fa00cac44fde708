#include "core/err.h"

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
