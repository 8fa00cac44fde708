/* Error codes of libgeoloc and geolocd.
 *
 * Functions return int: 0 (GL_OK) on success, a negative GL_E* code on
 * failure. One X-macro list makes the enum, gl_strerror() and gl_err_name(),
 * so a code can never lack its name or text. */
#ifndef GL_CORE_ERR_H
#define GL_CORE_ERR_H

#define GL_ERRNO_MAP(XX)                                               \
  XX(ENOMEM, "out of memory")                                          \
  XX(EINVAL, "invalid argument")                                       \
  XX(EIO, "input/output error")                                        \
  XX(ENOENT, "no such file or directory")                              \
  XX(ECONFIG, "invalid configuration")                                 \
  XX(EPROTO, "protocol violation")                                     \
  XX(EMALFORMED, "malformed message")                                  \
  XX(EFORMAT, "invalid file or data format")                           \
  XX(ETOOBIG, "message too large")                                     \
  XX(EVERSION, "unsupported protocol version")                         \
  XX(ETIMEDOUT, "timed out")                                           \
  XX(ECLOSED, "connection closed")                                     \
  XX(ECONNECT, "cannot connect")                                       \
  XX(EADDR, "invalid or unusable address")                             \
  XX(ETLS, "TLS error")                                                \
  XX(EBUSY, "resource busy")                                           \
  XX(EUNAVAIL, "service unavailable")                                  \
  XX(ENOTSUP, "operation not supported")                               \
  XX(EGPU, "GPU error")                                                \
  XX(EINTERNAL, "internal error")

enum gl_err {
  GL_OK = 0,
  GL__ERR_FIRST = -1000,
#define GL__ERR_ENUM(name, text) GL_##name,
  GL_ERRNO_MAP(GL__ERR_ENUM)
#undef GL__ERR_ENUM
  GL__ERR_END
};

/* Returns a human-readable description of err ("unknown error" for a value
 * that is not a GL_E* code). Never NULL. */
const char *gl_strerror(int err);

/* Returns the symbolic name of err ("GL_ETIMEDOUT"; "GL_OK" for 0). */
const char *gl_err_name(int err);

#include <stddef.h>

/* Formats a message into err (when errlen > 0) and returns code, so that a
 * failure reads `return gl_fail(err, errlen, GL_EFORMAT, "...", ...)`. */
int gl_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prepends "prefix: " to the message already in err, cutting the end of the
 * message when both do not fit. */
void gl_err_prefix(char *err, size_t errlen, const char *prefix);

#endif
