/* The fine stage's two ways of scoring (src/loc/fine.h step 4) against each
 * other, on a real pack and frame: gathering each placement's cells, and
 * correlating every query cell with every cell in reach, each forced, and
 * the stage's own choice between them (auto). A box of placements is
 * scanned as the tracker scans one (gl_loc_fine_frame_scan), at every
 * heading (no compass: 36) and at the 5 headings of a compass, for boxes
 * from a tracking box (16 cells a side) to a prior's circle (48).
 *
 * Prints ms a scan for each way, best of 5 rounds (the ways interleaved in
 * each round, so that a noisy machine slows them alike), and the ratio of
 * each forced way to auto: above 1 where auto is faster. Then a locked
 * track's box without a compass (the stage's own way): scanned at every
 * heading against only those within +-45 and +-60 degrees of the track's
 * (src/track/track.h: at 2 and 1 frames a second), each still centred on
 * the mean over all 36, and the ratio of every heading's time to each.
 *
 * usage: fine_scan MODEL.safetensors PACK.map FRAME [reps]
 * e.g.   build/bench/fine_scan data/models/geoloc-naip-mnv2-64.safetensors \
 *            east.map frame.jpg
 * The pack must have a dense layer at least 56 cells a side. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "img/img.h"
#include "loc/fine.h"
#include "map/dense.h"
#include "nn/nn.h"

#define ROUNDS 5
#define WAYS 3
#define MAX_BOX 48

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Seconds a scan of the n x n box at (r0, q0) takes, over reps scans, at the
 * headings within tol of hc (NaN: all); -1 with the error printed when a
 * scan fails. */
static double time_scan(struct gl_loc_fine_frame *ff, struct gl_map *map, int32_t r0, int32_t q0,
                        uint32_t n, double hc, double tol, int reps, float *score, float *head) {
  char err[512];
  double t0 = now_s();
  for (int i = 0; i < reps; i++)
    if (gl_loc_fine_frame_scan(ff, map, r0, q0, n, n, hc, tol, score, head, err, sizeof err)) {
      fprintf(stderr, "fine_scan: %s\n", err);
      return -1;
    }
  return (now_s() - t0) / reps;
}

int main(int argc, char **argv) {
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: fine_scan MODEL.safetensors PACK.map FRAME [reps]\n");
    return 2;
  }
  const int reps = argc == 5 ? atoi(argv[4]) : 20;
  static const enum gl_loc_fine_scoring way[WAYS] = {
      GL_LOC_FINE_SCORE_AUTO, GL_LOC_FINE_SCORE_GATHER, GL_LOC_FINE_SCORE_CORRELATE};
  static const uint32_t boxes[] = {8, 16, 32, MAX_BOX};
  char err[512];
  int rc = 1;
  struct gl_nn_model *model = NULL;
  struct gl_map *map = NULL;
  struct gl_image frame = {0};
  struct gl_loc_fine_frame *ff[WAYS] = {NULL};
  float *score = malloc(MAX_BOX * MAX_BOX * sizeof(float));
  float *head = malloc(MAX_BOX * MAX_BOX * sizeof(float));
  if (reps < 1 || !score || !head) {
    fprintf(stderr, "fine_scan: reps must be a positive number\n");
    goto done;
  }
  if (gl_nn_model_load(argv[1], &model, err, sizeof err) ||
      gl_map_open(argv[2], gl_nn_model_sha256(model), &map, err, sizeof err) ||
      gl_img_load(argv[3], 1u << 26, &frame, err, sizeof err)) {
    fprintf(stderr, "fine_scan: %s\n", err);
    goto done;
  }
  const struct gl_map_dense *d = gl_map_dense(map);
  if (!d || d->rows < MAX_BOX + 8 || d->cols < MAX_BOX + 8) {
    fprintf(stderr, "fine_scan: %s needs a dense layer of at least %u x %u cells\n", argv[2],
            MAX_BOX + 8, MAX_BOX + 8);
    goto done;
  }
  for (int w = 0; w < WAYS; w++) {
    struct gl_loc_fine_params p;
    gl_loc_fine_params_init(&p);
    p.scoring = way[w];
    if (gl_loc_fine_frame_create(model, d->layer, &p, 1, &ff[w], err, sizeof err)) {
      fprintf(stderr, "fine_scan: %s\n", err);
      goto done;
    }
  }
  printf("pack %s: %u x %u cells, %u year(s); %d scans a measurement\n", argv[2], d->rows, d->cols,
         d->years, reps);
  printf("%-8s %4s %10s %10s %10s %16s %16s\n", "heading", "box", "auto ms", "gather ms",
         "corr. ms", "gather / auto", "correlate / auto");
  for (int compass = 0; compass < 2; compass++) {
    /* The frame's query cells at its headings: a run over the map's middle. */
    struct gl_loc_estimate est[2];
    size_t ne;
    for (int w = 0; w < WAYS; w++)
      if (gl_loc_fine_frame(ff[w], map, &frame, compass ? 0.0 : NAN, NULL, 0, NULL, est, 2, &ne,
                            err, sizeof err)) {
        fprintf(stderr, "fine_scan: %s\n", err);
        goto done;
      }
    for (size_t b = 0; b < sizeof boxes / sizeof *boxes; b++) {
      const uint32_t n = boxes[b];
      const int32_t r0 = (int32_t)(d->rows - n) / 2 - 4, q0 = (int32_t)(d->cols - n) / 2 - 4;
      double best[WAYS] = {INFINITY, INFINITY, INFINITY};
      for (int round = 0; round < ROUNDS; round++)
        for (int w = 0; w < WAYS; w++) {
          double t = time_scan(ff[w], map, r0, q0, n, NAN, 0, reps, score, head);
          if (t < 0)
            goto done;
          best[w] = fmin(best[w], t);
        }
      printf("%-8s %4u %10.3f %10.3f %10.3f %16.2f %16.2f\n", compass ? "compass" : "unknown", n,
             best[0] * 1e3, best[1] * 1e3, best[2] * 1e3, best[1] / best[0], best[2] / best[0]);
    }
  }

  /* A locked track's box, no compass: every heading against the track's
   * window (the frame's run placed nothing, so nothing is reused). */
  {
    struct gl_loc_estimate est[2];
    size_t ne;
    static const double tol[] = {180, 45, 60};
    if (gl_loc_fine_frame(ff[0], map, &frame, NAN, NULL, 0, NULL, est, 2, &ne, err, sizeof err)) {
      fprintf(stderr, "fine_scan: %s\n", err);
      goto done;
    }
    printf("\nlocked track, no compass: %4s %10s %10s %10s %12s %12s\n", "box", "36 ms",
           "+-45 ms", "+-60 ms", "36 / +-45", "36 / +-60");
    for (size_t b = 0; b < 2; b++) {
      const uint32_t n = boxes[b];
      const int32_t r0 = (int32_t)(d->rows - n) / 2 - 4, q0 = (int32_t)(d->cols - n) / 2 - 4;
      double best[3] = {INFINITY, INFINITY, INFINITY};
      for (int round = 0; round < ROUNDS; round++)
        for (int k = 0; k < 3; k++) {
          double t = time_scan(ff[0], map, r0, q0, n, 90.0, tol[k], reps, score, head);
          if (t < 0)
            goto done;
          best[k] = fmin(best[k], t);
        }
      printf("%26s %4u %10.3f %10.3f %10.3f %12.2f %12.2f\n", "", n, best[0] * 1e3,
             best[1] * 1e3, best[2] * 1e3, best[0] / best[1], best[0] / best[2]);
    }
  }
  rc = 0;
done:
  for (int w = 0; w < WAYS; w++)
    gl_loc_fine_frame_destroy(ff[w]);
  gl_img_free(&frame);
  gl_map_close(map);
  gl_nn_model_destroy(model);
  free(score);
  free(head);
  return rc;
}
