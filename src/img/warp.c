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

/* Sums per channel of a run of output columns, one array a channel so that
 * the vector path loads and stores them four at a time. */
struct gl__acc {
  double c[3][GL__COLS];
};

/* Adds the samples at sub-row offset v (already v + dv[a]) of output columns
 * j0..j1 - 1 to their sums (acc holds columns jb on), one column at a
 * time, in the reference's order (b). */
static inline __attribute__((always_inline)) void
gl__row_scalar(const struct gl_image *src, double ch, double sh, double ox, double oy, double sx,
               double sy, const double *du, uint32_t nx, double v, uint32_t out_w, uint32_t j0,
               uint32_t j1, uint32_t jb, struct gl__acc *acc) {
  const double shv = sh * v, chv = ch * v;
  for (uint32_t j = j0; j < j1; j++) {
    const double uj = j + 0.5 - out_w / 2.0;
    double s[3] = {acc->c[0][j - jb], acc->c[1][j - jb], acc->c[2][j - jb]};
    if (nx == 2) { /* the fine stage's turns: unrolled */
      const double u0 = uj + du[0], u1 = uj + du[1];
      gl__sample(src, (ox + ch * u0 + shv) * sx - 0.5, (oy - sh * u0 + chv) * sy - 0.5, s);
      gl__sample(src, (ox + ch * u1 + shv) * sx - 0.5, (oy - sh * u1 + chv) * sy - 0.5, s);
    } else
      for (uint32_t b = 0; b < nx; b++) {
        const double u = uj + du[b];
        gl__sample(src, (ox + ch * u + shv) * sx - 0.5, (oy - sh * u + chv) * sy - 0.5, s);
      }
    for (int c = 0; c < 3; c++)
      acc->c[c][j - jb] = s[c];
  }
}

/* Writes columns k0..k1 - 1 of acc as pixels: each sum over its n samples,
 * rounded to nearest (floor(v + 1/2)) and clipped to 0..255. */
static void gl__round_scalar(const struct gl__acc *acc, uint32_t n, uint32_t k0, uint32_t k1,
                             uint8_t *o) {
  for (uint32_t k = k0; k < k1; k++)
    for (int c = 0; c < 3; c++) {
      /* floor(v) is the truncation of v >= 0, without a call to libm's
       * floor (baseline x86-64 has no rounding instruction); a negative v
       * (a sum of pixels cannot be one) is clipped to 0 first. */
      const double v = acc->c[c][k] / n + 0.5;
      o[k * 3 + c] = (uint8_t)(v < 0 ? 0 : v >= 255 ? 255 : (uint32_t)v);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GL__HAVE_AVX2_PATH 1

/* Whether all four lanes' (x, y) lie in [0, W - 1] x [0, H - 1] (a NaN
 * does not). */
__attribute__((target("avx2"), always_inline)) static inline bool
gl__inside(__m256d x, __m256d y, __m256d wmax, __m256d hmax) {
  const __m256d z = _mm256_setzero_pd();
  const __m256d in = _mm256_and_pd(
      _mm256_and_pd(_mm256_cmp_pd(x, z, _CMP_GE_OQ), _mm256_cmp_pd(x, wmax, _CMP_LE_OQ)),
      _mm256_and_pd(_mm256_cmp_pd(y, z, _CMP_GE_OQ), _mm256_cmp_pd(y, hmax, _CMP_LE_OQ)));
  return _mm256_movemask_pd(in) == 0xf;
}

/* The same sums for four columns at once with AVX2: every lane does the
 * scalar path's operations in its order, and no multiply-add is fused (the
 * target is avx2 without fma, and the project builds with
 * -ffp-contract=off), so the results are the same to the last bit
 * (tests/img/test_warp.c holds the two paths together). A lane whose
 * coordinate needs reflecting is reflected by gl__reflect; a group that
 * would read the image's last pixel (a 4-byte gather there reads one byte
 * past it) is done by the scalar path. Bounded to images under 2^31 bytes
 * (the caller checks). */
__attribute__((target("avx2"))) static void gl__row_avx2(const struct gl_image *src, double ch,
                                                         double sh, double ox, double oy, double sx,
                                                         double sy, const double *du, uint32_t nx,
                                                         double v, uint32_t out_w, uint32_t j0,
                                                         uint32_t j1, struct gl__acc *acc) {
  const uint32_t W = src->width, H = src->height;
  const int32_t last = (int32_t)((size_t)W * H * 3 - 3); /* the last pixel's offset */
  const double shv = sh * v, chv = ch * v;
  const __m256d one = _mm256_set1_pd(1.0), half = _mm256_set1_pd(0.5);
  const __m256d wmax = _mm256_set1_pd(W - 1.0), hmax = _mm256_set1_pd(H - 1.0);
  const __m128i row = _mm_set1_epi32((int32_t)W * 3), three = _mm_set1_epi32(3),
                one_i = _mm_set1_epi32(1), wm1 = _mm_set1_epi32((int32_t)W - 1),
                hm1 = _mm_set1_epi32((int32_t)H - 1), lastv = _mm_set1_epi32(last),
                byte = _mm_set1_epi32(0xff);
  const int *base = (const int *)(const void *)src->rgb;
  uint32_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    const __m256d uj =
        _mm256_sub_pd(_mm256_add_pd(_mm256_set_pd(j + 3.0, j + 2.0, j + 1.0, j + 0.0), half),
                      _mm256_set1_pd(out_w / 2.0));
    __m256d s[3];
    for (int c = 0; c < 3; c++)
      s[c] = _mm256_loadu_pd(&acc->c[c][j - j0]);
    bool scalar = false;
    for (uint32_t b = 0; b < nx && !scalar; b++) {
      const __m256d u = _mm256_add_pd(uj, _mm256_set1_pd(du[b]));
      __m256d x = _mm256_sub_pd(
          _mm256_mul_pd(
              _mm256_add_pd(_mm256_add_pd(_mm256_set1_pd(ox), _mm256_mul_pd(_mm256_set1_pd(ch), u)),
                            _mm256_set1_pd(shv)),
              _mm256_set1_pd(sx)),
          half);
      __m256d y = _mm256_sub_pd(
          _mm256_mul_pd(
              _mm256_add_pd(_mm256_sub_pd(_mm256_set1_pd(oy), _mm256_mul_pd(_mm256_set1_pd(sh), u)),
                            _mm256_set1_pd(chv)),
              _mm256_set1_pd(sy)),
          half);
      if (!gl__inside(x, y, wmax, hmax)) { /* near an edge: reflect lane by lane */
        double xs[4], ys[4];
        _mm256_storeu_pd(xs, x);
        _mm256_storeu_pd(ys, y);
        for (int l = 0; l < 4; l++) {
          xs[l] = gl__reflect(xs[l], W);
          ys[l] = gl__reflect(ys[l], H);
        }
        x = _mm256_loadu_pd(xs);
        y = _mm256_loadu_pd(ys);
        /* A coordinate that is still outside (NaN, from parameters no
         * caller passes) would send the gather anywhere: the scalar path. */
        if (!gl__inside(x, y, wmax, hmax)) {
          scalar = true;
          break;
        }
      }
      const __m128i x0 = _mm256_cvttpd_epi32(x), y0 = _mm256_cvttpd_epi32(y);
      const __m256d fx = _mm256_sub_pd(x, _mm256_cvtepi32_pd(x0));
      const __m256d fy = _mm256_sub_pd(y, _mm256_cvtepi32_pd(y0));
      const __m128i x1 = _mm_min_epi32(_mm_add_epi32(x0, one_i), wm1);
      const __m128i y1 = _mm_min_epi32(_mm_add_epi32(y0, one_i), hm1);
      const __m128i r0 = _mm_mullo_epi32(y0, row), r1 = _mm_mullo_epi32(y1, row);
      const __m128i c0 = _mm_mullo_epi32(x0, three), c1 = _mm_mullo_epi32(x1, three);
      const __m128i o11 = _mm_add_epi32(r1, c1);
      if (!_mm_testz_si128(_mm_cmpeq_epi32(o11, lastv), _mm_cmpeq_epi32(o11, lastv))) {
        scalar = true; /* this group reads the last pixel: redo it below */
        break;
      }
      const __m128i p00 = _mm_i32gather_epi32(base, _mm_add_epi32(r0, c0), 1);
      const __m128i p01 = _mm_i32gather_epi32(base, _mm_add_epi32(r0, c1), 1);
      const __m128i p10 = _mm_i32gather_epi32(base, _mm_add_epi32(r1, c0), 1);
      const __m128i p11 = _mm_i32gather_epi32(base, o11, 1);
      const __m256d gx = _mm256_sub_pd(one, fx), gy = _mm256_sub_pd(one, fy);
      for (int c = 0; c < 3; c++) {
        const __m256d d00 = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(p00, 8 * c), byte));
        const __m256d d01 = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(p01, 8 * c), byte));
        const __m256d d10 = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(p10, 8 * c), byte));
        const __m256d d11 = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(p11, 8 * c), byte));
        const __m256d top = _mm256_add_pd(_mm256_mul_pd(gx, d00), _mm256_mul_pd(fx, d01));
        const __m256d bot = _mm256_add_pd(_mm256_mul_pd(gx, d10), _mm256_mul_pd(fx, d11));
        s[c] = _mm256_add_pd(s[c], _mm256_add_pd(_mm256_mul_pd(gy, top), _mm256_mul_pd(fy, bot)));
      }
    }
    if (scalar) /* the sums of these four columns are still those loaded */
      gl__row_scalar(src, ch, sh, ox, oy, sx, sy, du, nx, v, out_w, j, j + 4, j0, acc);
    else
      for (int c = 0; c < 3; c++)
        _mm256_storeu_pd(&acc->c[c][j - j0], s[c]);
  }
  if (j < j1)
    gl__row_scalar(src, ch, sh, ox, oy, sx, sy, du, nx, v, out_w, j, j1, j0, acc);
}

/* gl__round_scalar four columns at a time (the same division, floor and
 * clip: exact operations). */
__attribute__((target("avx2"))) static void gl__round_avx2(const struct gl__acc *acc, uint32_t n,
                                                           uint32_t k1, uint8_t *o) {
  const __m256d dn = _mm256_set1_pd(n), half = _mm256_set1_pd(0.5), lo = _mm256_setzero_pd(),
                hi = _mm256_set1_pd(255);
  uint32_t k = 0;
  for (; k + 4 <= k1; k += 4) {
    int32_t v[3][4];
    for (int c = 0; c < 3; c++) {
      __m256d x =
          _mm256_floor_pd(_mm256_add_pd(_mm256_div_pd(_mm256_loadu_pd(&acc->c[c][k]), dn), half));
      x = _mm256_min_pd(_mm256_max_pd(x, lo), hi);
      _mm_storeu_si128((__m128i *)(void *)v[c], _mm256_cvttpd_epi32(x));
    }
    for (int l = 0; l < 4; l++)
      for (int c = 0; c < 3; c++)
        o[(k + l) * 3 + c] = (uint8_t)v[c][l];
  }
  gl__round_scalar(acc, n, k, k1, o);
}
#endif

bool gl__img_simd(void) {
#ifdef GL__HAVE_AVX2_PATH
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

void gl__img_resample_by(const struct gl_image *src, double ch, double sh, double ox, double oy,
                         double sx, double sy, uint32_t nx, uint32_t ny, uint32_t out_w,
                         uint32_t out_h, uint8_t *out, bool simd) {
  /* The sub-sample offsets computed once; each pixel's samples are still
   * summed in the reference's order (a, then b). */
  double du[GL__IMG_MAX_SAMPLES], dv[GL__IMG_MAX_SAMPLES];
  for (uint32_t b = 0; b < nx; b++)
    du[b] = (b + 0.5) / nx - 0.5;
  for (uint32_t a = 0; a < ny; a++)
    dv[a] = (a + 0.5) / ny - 0.5;
  simd = simd && gl__img_simd() && (size_t)src->width * src->height * 3 < INT32_MAX;
  for (uint32_t i = 0; i < out_h; i++) {
    for (uint32_t j0 = 0; j0 < out_w; j0 += GL__COLS) {
      const uint32_t j1 = out_w - j0 > GL__COLS ? j0 + GL__COLS : out_w;
      struct gl__acc acc = {{{0}}};
      for (uint32_t a = 0; a < ny; a++) {
        const double v = i + 0.5 - out_h / 2.0 + dv[a];
#ifdef GL__HAVE_AVX2_PATH
        if (simd) {
          gl__row_avx2(src, ch, sh, ox, oy, sx, sy, du, nx, v, out_w, j0, j1, &acc);
          continue;
        }
#endif
        gl__row_scalar(src, ch, sh, ox, oy, sx, sy, du, nx, v, out_w, j0, j1, j0, &acc);
      }
      uint8_t *o = out + ((size_t)i * out_w + j0) * 3;
#ifdef GL__HAVE_AVX2_PATH
      if (simd) {
        gl__round_avx2(&acc, nx * ny, j1 - j0, o);
        continue;
      }
#endif
      gl__round_scalar(&acc, nx * ny, 0, j1 - j0, o);
    }
  }
}

void gl__img_resample(const struct gl_image *src, double ch, double sh, double ox, double oy,
                      double sx, double sy, uint32_t nx, uint32_t ny, uint32_t out_w,
                      uint32_t out_h, uint8_t *out) {
  gl__img_resample_by(src, ch, sh, ox, oy, sx, sy, nx, ny, out_w, out_h, out, true);
}

void gl__img_warp_by(const struct gl_image *src, double heading_deg, uint32_t out_w, uint32_t out_h,
                     uint8_t *out, bool simd) {
  const double h = heading_deg * (M_PI / 180.0);
  const double sx = (double)src->width / out_w, sy = (double)src->height / out_h;
  double f = fmax(sx, sy);
  uint32_t n = f > 1 ? (uint32_t)ceil(f) : 1;
  if (n > 4)
    n = 4;
  gl__img_resample_by(src, cos(h), sin(h), out_w / 2.0, out_h / 2.0, sx, sy, n, n, out_w, out_h,
                      out, simd);
}

void gl_img_warp(const struct gl_image *src, double heading_deg, uint32_t out_w, uint32_t out_h,
                 uint8_t *out) {
  gl__img_warp_by(src, heading_deg, out_w, out_h, out, true);
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
