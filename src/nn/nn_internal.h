/* Helpers shared by the files of the nn module (not part of the API). */
#ifndef GL_NN_INTERNAL_H
#define GL_NN_INTERNAL_H

#include <stddef.h>

/* Formats a message into err (when errlen > 0) and returns code, so that a
 * failure reads `return gl__nn_fail(err, errlen, GL_EFORMAT, "...", ...)`. */
int gl__nn_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prepends "prefix: " to the message already in err. */
void gl__nn_prefix(char *err, size_t errlen, const char *prefix);

/* Aligned allocation for buffers that SIMD code reads (64 bytes: a cache
 * line, and enough for AVX-512). Free with free(). NULL on failure. */
void *gl__nn_alloc(size_t bytes);

#endif
