/* libFuzzer target: gl_img_decode on arbitrary bytes, as the daemon decodes
 * a Frame's image: under the daemon's pixel limit (the default of [daemon]
 * max_decoded_pixels, 4096 x 4096), auto-detected, as raw RGB8 with a size
 * taken from the input, and as a declared JPEG whose magic the detection
 * would not take (a client may declare the format). Any result but success,
 * GL_EFORMAT or GL_ETOOBIG is a bug (GL_ENOMEM cannot happen under the
 * limit), a refusal must say why and leave no image, and a decoded image
 * must be within the limit and fully readable. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/err.h"
#include "img/img.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t max_pixels;

static void check(const uint8_t *data, size_t size, enum gl_img_format fmt, uint32_t w,
                  uint32_t h) {
  struct gl_image img;
  char err[256];
  int rc = gl_img_decode(data, size, fmt, w, h, max_pixels, &img, err, sizeof err);
  if (rc == GL_OK) {
    if (img.width == 0 || img.height == 0 || !img.rgb ||
        (uint64_t)img.width * img.height > max_pixels)
      abort();
    size_t n = (size_t)img.width * img.height * 3;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < n; i += 61)
      sink ^= img.rgb[i];
    sink ^= img.rgb[n - 1];
    (void)sink;
  } else if (rc != GL_EFORMAT && rc != GL_ETOOBIG) {
    abort();
  } else if (img.rgb || err[0] == '\0') {
    abort();
  }
  gl_img_free(&img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!max_pixels) {
    struct gl_config cfg;
    gl_config_defaults(&cfg);
    max_pixels = cfg.max_decoded_pixels;
  }
  check(data, size, GL_IMG_AUTO, 0, 0);
  /* A declared JPEG goes to libjpeg without the FF D8 FF test. */
  if (size >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] != 0xff)
    check(data, size, GL_IMG_JPEG, 0, 0);
  /* Raw RGB8 with a size taken from the input's first bytes. */
  if (size >= 2)
    check(data + 2, size - 2, GL_IMG_RGB8, data[0], data[1]);
  return 0;
}
