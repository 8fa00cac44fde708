/* Internal to the img module: one decoder per format behind gl_img_decode. */
#ifndef GL_IMG_IMG_INTERNAL_H
#define GL_IMG_IMG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "img/img.h"

/* Each decoder fills *out only on success and returns 0 or a GL_E* code with
 * err set ("PNG: ...", "JPEG: ..."). max_pixels is checked against the
 * header before any pixel buffer is allocated. */
int gl__img_decode_png(const uint8_t *data, size_t len, uint64_t max_pixels, struct gl_image *out,
                       char *err, size_t errlen);
int gl__img_decode_jpeg(const uint8_t *data, size_t len, uint64_t max_pixels, struct gl_image *out,
                        char *err, size_t errlen);

/* snprintf into err (which may be NULL or errlen 0); returns code. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
int gl__img_err(int code, char *err, size_t errlen, const char *fmt, ...);

#endif
