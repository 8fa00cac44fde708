/* The resampler's two paths (src/img/warp.c): the AVX2 path, four output
 * columns at a time, must give the scalar path's bytes exactly (the Python
 * reference, tests/python/test_fine_c.py and test_footprint_c.py, holds
 * whichever path the CPU takes) for every kind of call: turns at
 * any heading, reflection far outside the frame, frames of one pixel or
 * one row, widths that are not multiples of four, 1 to 16 samples a side,
 * and the frame's last pixel (which the vector path leaves to the scalar
 * one: every frame here ends at an unreadable page, so a read past it
 * faults). Skipped (77) on a CPU without AVX2, where only the scalar path
 * runs. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "img/img.h"
#include "img/img_internal.h"
#include "../unit/test.h"

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint32_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 32);
}

static double uniform(double lo, double hi) { return lo + (hi - lo) * (next() / 4294967296.0); }

/* Whether the scalar path's bytes a and the vector path's b are the same;
 * the first difference is reported with what was called. */
static bool same_bytes(const uint8_t *a, const uint8_t *b, size_t n, const char *what) {
  size_t i = 0;
  while (i < n && a[i] == b[i])
    i++;
  if (i < n)
    fprintf(stderr, "%s: byte %zu is %u (scalar), %u\n", what, i, a[i], b[i]);
  return CHECK(i == n);
}

/* Both paths of the resampler on one call. */
static void same(const struct gl_image *src, double ch, double sh, double ox, double oy, double sx,
                 double sy, uint32_t nx, uint32_t ny, uint32_t ow, uint32_t oh) {
  size_t n = (size_t)ow * oh * 3;
  uint8_t *a = malloc(n), *b = malloc(n);
  if (CHECK(a && b)) {
    char what[160];
    snprintf(what, sizeof what, "%ux%u frame to %ux%u, %ux%u samples", src->width, src->height, ow,
             oh, nx, ny);
    gl__img_resample_by(src, ch, sh, ox, oy, sx, sy, nx, ny, ow, oh, a, false);
    gl__img_resample_by(src, ch, sh, ox, oy, sx, sy, nx, ny, ow, oh, b, true);
    same_bytes(a, b, n, what);
  }
  free(a);
  free(b);
}

/* A frame of random pixels whose last byte ends right before a page that
 * cannot be read, so that a read past the frame (the vector path's 4-byte
 * gathers) faults here instead of reading malloc's slack unseen. */
static size_t map_len(size_t n) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return (n + page - 1) / page * page + page;
}

static struct gl_image noise(uint32_t w, uint32_t h) {
  const size_t n = (size_t)w * h * 3, page = (size_t)sysconf(_SC_PAGESIZE), len = map_len(n);
  uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED || mprotect(m + len - page, page, PROT_NONE)) {
    fprintf(stderr, "test_warp: cannot map a frame of %zu bytes\n", n);
    exit(1);
  }
  struct gl_image im = {m + len - page - n, w, h};
  for (size_t i = 0; i < n; i++)
    im.rgb[i] = (uint8_t)next();
  return im;
}

static void unmap(struct gl_image *im) {
  const size_t n = (size_t)im->width * im->height * 3, len = map_len(n);
  munmap(im->rgb + n + (size_t)sysconf(_SC_PAGESIZE) - len, len);
}

/* The fine stage's turns (gl_img_warp: a 2S frame to S at every 10
 * degrees, 2 x 2 samples) and its one-step resize of other frames. */
static void test_turns(void) {
  static const uint32_t sides[][2] = {{256, 256}, {128, 128}, {130, 98}, {37, 61}};
  uint8_t *a = malloc(128 * 128 * 3), *b = malloc(128 * 128 * 3);
  if (!CHECK(a && b))
    goto done;
  for (size_t k = 0; k < sizeof sides / sizeof sides[0]; k++) {
    struct gl_image im = noise(sides[k][0], sides[k][1]);
    for (int hd = 0; hd < 360; hd += 10) {
      for (uint32_t out = 60; out <= 128; out += 68) {
        char what[160];
        snprintf(what, sizeof what, "%ux%u frame turned %d degrees to %u", im.width, im.height, hd,
                 out);
        gl__img_warp_by(&im, hd, out, out, a, false);
        gl__img_warp_by(&im, hd, out, out, b, true);
        same_bytes(a, b, (size_t)out * out * 3, what);
      }
    }
    unmap(&im);
  }
done:
  free(a);
  free(b);
}

/* Random affine calls: any scale, centre and heading (far off the frame,
 * so that most samples reflect), any sample counts and output shapes. */
static void test_random(void) {
  for (int t = 0; t < 400; t++) {
    uint32_t w = 1 + next() % (t % 4 == 0 ? 3 : 90), h = 1 + next() % (t % 5 == 0 ? 2 : 70);
    struct gl_image im = noise(w, h);
    uint32_t ow = 1 + next() % 41, oh = 1 + next() % 23;
    uint32_t nx = 1 + next() % (t % 7 == 0 ? 16 : 4), ny = 1 + next() % (t % 11 == 0 ? 16 : 4);
    double a = uniform(0, 2 * M_PI), sx = uniform(0.05, 6), sy = uniform(0.05, 6);
    double ox = uniform(-3, 3) * w, oy = uniform(-3, 3) * h;
    same(&im, cos(a), sin(a), ox / sx, oy / sy, sx, sy, nx, ny, ow, oh);
    unmap(&im);
  }
}

/* The identity (heading 0, one sample, the frame's own size) gives the
 * frame back, its last pixel included: the vector path's guard for the
 * 4-byte reads is taken there. */
static void test_identity(void) {
  for (uint32_t w = 1; w <= 9; w++) {
    struct gl_image im = noise(w, 5);
    uint8_t *out = malloc((size_t)w * 5 * 3);
    if (!CHECK(out))
      return;
    for (int simd = 0; simd <= 1; simd++) {
      gl__img_resample_by(&im, 1, 0, w / 2.0, 2.5, 1, 1, 1, 1, w, 5, out, simd);
      CHECK(memcmp(out, im.rgb, (size_t)w * 5 * 3) == 0);
    }
    free(out);
    unmap(&im);
  }
}

int main(void) {
  if (!gl__img_simd()) {
    printf("no AVX2 on this CPU: only the scalar path runs\n");
    return 77;
  }
  RUN(test_identity);
  RUN(test_turns);
  RUN(test_random);
  return TEST_END();
}
