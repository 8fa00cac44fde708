/* Helpers shared by the files of the nn module (not part of the API). */
#ifndef GL_NN_INTERNAL_H
#define GL_NN_INTERNAL_H

#include <stddef.h>

/* Aligned allocation for buffers that SIMD code reads (64 bytes: a cache
 * line, and enough for AVX-512). Free with free(). NULL on failure. */
void *gl__nn_alloc(size_t bytes);

#endif
