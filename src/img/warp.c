/* The north-up warp of a frame (src/loc/fine.h, step 1). Written here
 * rather than taken from a library: it must match the reference in
 * python/geoloc_train/fine.py sample for sample (reflection at the edges,
 * the antialiasing pattern), which no imaging library's rotate promises. */
#include <math.h>

#include "img/img.h"

/* Reflects x into [0, n - 1] (the edge sample is not repeated). */
static inline double gl__reflect(double x, uint32_t n) {
  if (x >= 0 && x <= n - 1) /* nearly every sample: no division */
    return x;
  if (n == 1)
    return 0;
  double p = 2.0 * (n - 1);
  x = fmod(fabs(x), p);
  return x > n - 1 ? p - x : x;
}

void gl_img_warp(const struct gl_image *src, double heading_deg, uint32_t out_w, uint32_t out_h,
                 uint8_t *out) {
  const double h = heading_deg * (M_PI / 180.0);
  const double ch = cos(h), sh = sin(h);
  const uint32_t W = src->width, H = src->height;
  const double sx = (double)W / out_w, sy = (double)H / out_h;
  double f = fmax(sx, sy);
  uint32_t n = f > 1 ? (uint32_t)ceil(f) : 1;
  if (n > 4)
    n = 4;
  const size_t row = (size_t)W * 3;
  for (uint32_t i = 0; i < out_h; i++) {
    for (uint32_t j = 0; j < out_w; j++) {
      double acc[3] = {0, 0, 0};
      for (uint32_t a = 0; a < n; a++) {
        double v = i + 0.5 - out_h / 2.0 + ((a + 0.5) / n - 0.5);
        for (uint32_t b = 0; b < n; b++) {
          double u = j + 0.5 - out_w / 2.0 + ((b + 0.5) / n - 0.5);
          double x = gl__reflect((out_w / 2.0 + ch * u + sh * v) * sx - 0.5, W);
          double y = gl__reflect((out_h / 2.0 - sh * u + ch * v) * sy - 0.5, H);
          uint32_t x0 = (uint32_t)x, y0 = (uint32_t)y;
          uint32_t x1 = x0 + 1 < W ? x0 + 1 : W - 1, y1 = y0 + 1 < H ? y0 + 1 : H - 1;
          double fx = x - x0, fy = y - y0;
          const uint8_t *p00 = src->rgb + y0 * row + (size_t)x0 * 3;
          const uint8_t *p01 = src->rgb + y0 * row + (size_t)x1 * 3;
          const uint8_t *p10 = src->rgb + y1 * row + (size_t)x0 * 3;
          const uint8_t *p11 = src->rgb + y1 * row + (size_t)x1 * 3;
          for (int c = 0; c < 3; c++)
            acc[c] += (1 - fy) * ((1 - fx) * p00[c] + fx * p01[c]) +
                      fy * ((1 - fx) * p10[c] + fx * p11[c]);
        }
      }
      uint8_t *o = out + ((size_t)i * out_w + j) * 3;
      for (int c = 0; c < 3; c++) {
        double val = floor(acc[c] / (n * n) + 0.5);
        o[c] = (uint8_t)(val < 0 ? 0 : val > 255 ? 255 : val);
      }
    }
  }
}
