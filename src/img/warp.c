/* Resampling of frames: the north-up warp (src/loc/fine.h, step 1), the
 * footprint crop (footprint.c) and the EXIF orientation. Written here rather
 * than taken from a library: they must match the references in
 * python/geoloc_train/fine.py and footprint.py sample for sample
 * (reflection at the edges, the antialiasing pattern), which no imaging
 * library's rotate or resize promises. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "img/img.h"
#include "img/img_internal.h"

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

/* uint8 -> double by table: faster than the conversion instruction in the
 * sampling loop, and the same values. */
#define GL__D4(k) k, k + 1, k + 2, k + 3
#define GL__D16(k) GL__D4(k), GL__D4(k + 4), GL__D4(k + 8), GL__D4(k + 12)
#define GL__D64(k) GL__D16(k), GL__D16(k + 16), GL__D16(k + 32), GL__D16(k + 48)
static const double gl__u8d[256] = {GL__D64(0), GL__D64(64), GL__D64(128), GL__D64(192)};

/* Adds to s[0..2] the bilinear sample of src at (x, y) before reflection,
 * in the reference's order of operations (each term as fine.py writes it),
 * so that the results stay those of the reference to the last bit. */
static inline __attribute__((always_inline)) void gl__sample(const struct gl_image *src, double x,
                                                             double y, double *s) {
  const uint32_t W = src->width, H = src->height;
  const size_t row = (size_t)W * 3;
  x = gl__reflect(x, W);
  y = gl__reflect(y, H);
  uint32_t x0 = (uint32_t)x, y0 = (uint32_t)y;
  uint32_t x1 = x0 + 1 < W ? x0 + 1 : W - 1, y1 = y0 + 1 < H ? y0 + 1 : H - 1;
  double fx = x - x0, fy = y - y0;
  const uint8_t *p00 = src->rgb + y0 * row + (size_t)x0 * 3;
  const uint8_t *p01 = src->rgb + y0 * row + (size_t)x1 * 3;
  const uint8_t *p10 = src->rgb + y1 * row + (size_t)x0 * 3;
  const uint8_t *p11 = src->rgb + y1 * row + (size_t)x1 * 3;
  const double *d = gl__u8d;
  for (int c = 0; c < 3; c++)
    s[c] += (1 - fy) * ((1 - fx) * d[p00[c]] + fx * d[p01[c]]) +
            fy * ((1 - fx) * d[p10[c]] + fx * d[p11[c]]);
}

/* Output columns summed at a time (their sums live on the stack). */
#define GL__COLS 64

void gl__img_resample(const struct gl_image *src, double ch, double sh, double ox, double oy,
                      double sx, double sy, uint32_t nx, uint32_t ny, uint32_t out_w,
                      uint32_t out_h, uint8_t *out) {
  /* The sub-sample offsets, and the terms of a row, computed once; each
   * pixel's samples are still summed in the reference's order (a, then b). */
  double du[GL__IMG_MAX_SAMPLES], dv[GL__IMG_MAX_SAMPLES];
  for (uint32_t b = 0; b < nx; b++)
    du[b] = (b + 0.5) / nx - 0.5;
  for (uint32_t a = 0; a < ny; a++)
    dv[a] = (a + 0.5) / ny - 0.5;
  for (uint32_t i = 0; i < out_h; i++) {
    for (uint32_t j0 = 0; j0 < out_w; j0 += GL__COLS) {
      const uint32_t j1 = out_w - j0 > GL__COLS ? j0 + GL__COLS : out_w;
      double acc[GL__COLS][3] = {{0}};
      for (uint32_t a = 0; a < ny; a++) {
        const double v = i + 0.5 - out_h / 2.0 + dv[a];
        const double shv = sh * v, chv = ch * v;
        for (uint32_t j = j0; j < j1; j++) {
          const double uj = j + 0.5 - out_w / 2.0;
          if (nx == 2) { /* the fine stage's turns: unrolled */
            const double u0 = uj + du[0], u1 = uj + du[1];
            gl__sample(src, (ox + ch * u0 + shv) * sx - 0.5, (oy - sh * u0 + chv) * sy - 0.5,
                       acc[j - j0]);
            gl__sample(src, (ox + ch * u1 + shv) * sx - 0.5, (oy - sh * u1 + chv) * sy - 0.5,
                       acc[j - j0]);
            continue;
          }
          for (uint32_t b = 0; b < nx; b++) {
            const double u = uj + du[b];
            gl__sample(src, (ox + ch * u + shv) * sx - 0.5, (oy - sh * u + chv) * sy - 0.5,
                       acc[j - j0]);
          }
        }
      }
      for (uint32_t j = j0; j < j1; j++) {
        uint8_t *o = out + ((size_t)i * out_w + j) * 3;
        for (int c = 0; c < 3; c++) {
          double val = floor(acc[j - j0][c] / (nx * ny) + 0.5);
          o[c] = (uint8_t)(val < 0 ? 0 : val > 255 ? 255 : val);
        }
      }
    }
  }
}

void gl_img_warp(const struct gl_image *src, double heading_deg, uint32_t out_w, uint32_t out_h,
                 uint8_t *out) {
  const double h = heading_deg * (M_PI / 180.0);
  const double sx = (double)src->width / out_w, sy = (double)src->height / out_h;
  double f = fmax(sx, sy);
  uint32_t n = f > 1 ? (uint32_t)ceil(f) : 1;
  if (n > 4)
    n = 4;
  gl__img_resample(src, cos(h), sin(h), out_w / 2.0, out_h / 2.0, sx, sy, n, n, out_w, out_h, out);
}

void gl_img_orient(const struct gl_image *src, unsigned orientation, struct gl_image *dst) {
  const uint32_t W = src->width, H = src->height;
  const bool swap = orientation >= 5 && orientation <= 8;
  dst->width = swap ? H : W;
  dst->height = swap ? W : H;
  if (orientation < 2 || orientation > 8) {
    memcpy(dst->rgb, src->rgb, (size_t)W * H * 3);
    return;
  }
  const uint32_t DW = dst->width, DH = dst->height;
  for (uint32_t y = 0; y < DH; y++) {
    for (uint32_t x = 0; x < DW; x++) {
      /* The stored pixel (px, py) that shows at (x, y): TIFF/EXIF
       * orientation, where the stored row 0 is the visual top (1), right
       * (6: rotate 90 clockwise to view), bottom (3) or left (8); 2, 4, 5
       * and 7 are their mirror images. */
      uint32_t px, py;
      switch (orientation) {
      case 2:
        px = W - 1 - x;
        py = y;
        break;
      case 3:
        px = W - 1 - x;
        py = H - 1 - y;
        break;
      case 4:
        px = x;
        py = H - 1 - y;
        break;
      case 5:
        px = y;
        py = x;
        break;
      case 6:
        px = y;
        py = H - 1 - x;
        break;
      case 7:
        px = W - 1 - y;
        py = H - 1 - x;
        break;
      default:
        px = W - 1 - y;
        py = x;
        break; /* 8 */
      }
      memcpy(dst->rgb + ((size_t)y * DW + x) * 3, src->rgb + ((size_t)py * W + px) * 3, 3);
    }
  }
}
