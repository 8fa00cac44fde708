/* Internal to the img module: one decoder per format behind gl_img_decode. */
#ifndef GL_IMG_IMG_INTERNAL_H
#define GL_IMG_IMG_INTERNAL_H

#include <stdbool.h>
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

/* The sampling of gl_img_warp and gl_img_footprint_crop: output pixel
 * (i, j) of out_w x out_h, centre offset (u, v) = (j + 1/2 - out_w/2,
 * i + 1/2 - out_h/2), averages the nx x ny bilinear samples of src at
 *   x = (ox + ch u' + sh v') sx - 1/2,  y = (oy - sh u' + ch v') sy - 1/2,
 * u' = u + (b + 1/2)/nx - 1/2, v' = v + (a + 1/2)/ny - 1/2, coordinates
 * reflected into the frame; rounded to nearest. nx, ny: 1..GL__IMG_MAX_SAMPLES. */
#define GL__IMG_MAX_SAMPLES 16
void gl__img_resample(const struct gl_image *src, double ch, double sh, double ox, double oy,
                      double sx, double sy, uint32_t nx, uint32_t ny, uint32_t out_w,
                      uint32_t out_h, uint8_t *out);
/* The same, and gl_img_warp, with the vector path (AVX2, four output
 * columns at a time) allowed or not: both give the same bytes; the scalar
 * path is the fallback on CPUs without AVX2 and the peer tests and
 * bench/warp.c hold the vector path to. gl__img_simd: whether this CPU
 * takes the vector path. */
void gl__img_resample_by(const struct gl_image *src, double ch, double sh, double ox, double oy,
                         double sx, double sy, uint32_t nx, uint32_t ny, uint32_t out_w,
                         uint32_t out_h, uint8_t *out, bool simd);
void gl__img_warp_by(const struct gl_image *src, double heading_deg, uint32_t out_w, uint32_t out_h,
                     uint8_t *out, bool simd);
bool gl__img_simd(void);

/* snprintf into err (which may be NULL or errlen 0); returns code. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
int gl__img_err(int code, char *err, size_t errlen, const char *fmt, ...);

#endif
