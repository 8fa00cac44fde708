/* libFuzzer target: gl_img_decode on arbitrary bytes, as the daemon sees
 * camera frames. Any result but success, GL_EFORMAT or GL_ETOOBIG is a bug
 * (GL_ENOMEM cannot happen under the pixel limit used here), and a decoded
 * image must be fully readable. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "img/img.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const uint8_t *data, size_t size, enum gl_img_format fmt, uint32_t w,
                  uint32_t h) {
  struct gl_image img;
  char err[256];
  int rc = gl_img_decode(data, size, fmt, w, h, 1u << 22, &img, err, sizeof err);
  if (rc == GL_OK) {
    size_t n = (size_t)img.width * img.height * 3;
    if (img.width == 0 || img.height == 0 || !img.rgb)
      abort();
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
  check(data, size, GL_IMG_AUTO, 0, 0);
  /* Raw RGB8 with a size taken from the input's first bytes. */
  if (size >= 2)
    check(data + 2, size - 2, GL_IMG_RGB8, data[0], data[1]);
  return 0;
}
