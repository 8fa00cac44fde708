/* The fine stage's query warp (src/loc/fine.h step 1): a frame resized to
 * 2S x 2S once, then turned to every heading at S x S with 2 x 2 samples a
 * pixel. The resampler's AVX2 path against its scalar path (the peer: the
 * same bytes, checked here too, one column at a time in double precision),
 * one thread, the fine stage's 36 headings of a real frame.
 *
 * Prints ms for the 36 turns on each path, best of ROUNDS rounds (the two
 * paths interleaved in each round, so that a noisy machine slows them
 * alike), and the ratio scalar / AVX2: above 1 where the vector path is
 * faster.
 *
 * usage: warp FRAME [S] [reps]     (S: the fine stage's input, 128 for
 *                                   the shipped model's fused cells)
 * e.g.   build/bench/warp data/demo/frames/000000.jpg 128 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "img/img.h"
#include "img/img_internal.h"

#define ROUNDS 5
#define HEADINGS 36

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Seconds for the 36 turns of base (2S x 2S) to S x S, over reps
 * repetitions. */
static double turns(const struct gl_image *base, uint32_t S, uint8_t *out, int reps, bool simd) {
  double t0 = now_s();
  for (int r = 0; r < reps; r++)
    for (int h = 0; h < HEADINGS; h++)
      gl__img_warp_by(base, h * 10.0, S, S, out + (size_t)h * S * S * 3, simd);
  return (now_s() - t0) / reps;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: warp FRAME [S] [reps]\n");
    return 2;
  }
  const uint32_t S = argc > 2 ? (uint32_t)atoi(argv[2]) : 128;
  const int reps = argc > 3 ? atoi(argv[3]) : 5;
  if (S < 8 || S > 1024 || reps < 1) {
    fprintf(stderr, "warp: S must be 8..1024 and reps at least 1\n");
    return 2;
  }
  if (!gl__img_simd()) {
    printf("warp: no AVX2 on this CPU, only the scalar path runs: nothing to compare\n");
    return 0;
  }
  char err[512];
  struct gl_image frame;
  if (gl_img_load(argv[1], 1u << 26, &frame, err, sizeof err)) {
    fprintf(stderr, "warp: %s\n", err);
    return 1;
  }
  struct gl_image base = {malloc((size_t)4 * S * S * 3), 2 * S, 2 * S};
  uint8_t *a = malloc((size_t)HEADINGS * S * S * 3), *b = malloc((size_t)HEADINGS * S * S * 3);
  if (!base.rgb || !a || !b) {
    fprintf(stderr, "warp: out of memory\n");
    return 1;
  }
  gl_img_warp(&frame, 0, base.width, base.height, base.rgb);
  double ts = INFINITY, tv = INFINITY;
  for (int r = 0; r < ROUNDS; r++) {
    double t = turns(&base, S, a, reps, false);
    ts = t < ts ? t : ts;
    t = turns(&base, S, b, reps, true);
    tv = t < tv ? t : tv;
  }
  if (memcmp(a, b, (size_t)HEADINGS * S * S * 3) != 0) {
    fprintf(stderr, "warp: the two paths gave different pixels\n");
    return 1;
  }
  printf("frame %ux%u, base %ux%u, %d turns to %ux%u, 2x2 samples, one thread, best of %d:\n",
         frame.width, frame.height, base.width, base.height, HEADINGS, S, S, ROUNDS);
  printf("  scalar  %8.2f ms\n  avx2    %8.2f ms\n  ratio   %8.2f (scalar / avx2)\n", ts * 1e3,
         tv * 1e3, ts / tv);
  free(frame.rgb);
  free(base.rgb);
  free(a);
  free(b);
  return 0;
}
