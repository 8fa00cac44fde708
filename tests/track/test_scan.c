/* The fine stage's windowed scan (gl_loc_fine_scan, which the tracker
 * measures with) against brute force on a real pack: every placement of a
 * box scored directly from the query cells and the dense layer's cells, as
 * fine.h step 4 defines the score (each year centred on its mean over the
 * 36 headings, then the best year), at every heading and at the few a
 * locked track scans; and the tracker stepping through the frame on that
 * pack.
 *
 * usage: test_scan MODEL.safetensors PACK.map FRAME.png
 * (tests/python/test_track_c.py builds the pack and the frame) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "img/img.h"
#include "loc/fine.h"
#include "map/dense.h"
#include "nn/nn.h"
#include "test.h"
#include "track/track.h"

#define BOX 12
/* A locked track's headings: within TOL degrees of HC (90..150). */
#define HC 123.0
#define TOL 35.0

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: test_scan MODEL PACK FRAME\n");
    return 2;
  }
  char err[512];
  struct gl_nn_model *model = NULL;
  struct gl_map *map = NULL;
  struct gl_image frame = {0};
  struct gl_loc_fine_frame *ff = NULL;
  struct gl_nn_cells *cells = NULL;
  CHECK_EQ_INT(gl_nn_model_load(argv[1], &model, err, sizeof err), 0);
  CHECK_EQ_INT(gl_map_open(argv[2], gl_nn_model_sha256(model), &map, err, sizeof err), 0);
  CHECK_EQ_INT(gl_img_load(argv[3], 1u << 24, &frame, err, sizeof err), 0);
  const struct gl_map_dense *d = map ? gl_map_dense(map) : NULL;
  CHECK(d != NULL);
  if (!d)
    return TEST_END();
  struct gl_loc_fine_params p;
  gl_loc_fine_params_init(&p);
  CHECK_EQ_INT(gl_loc_fine_frame_create(model, d->layer, &p, 2, &ff, err, sizeof err), 0);

  /* The frame's own run (unknown heading: 36 headings, centred), then a
   * box west of the map's middle, part inside the prior's circle. */
  struct gl_loc_estimate est[4];
  size_t ne = 0;
  struct gl_map_prior prior = {0};
  double lat, lon;
  gl_map_xy_to_wgs84(map, d->x0 + d->cols * d->cell_m / 2, d->y0 - d->rows * d->cell_m / 2, &lat,
                     &lon);
  prior = (struct gl_map_prior){lat, lon, 400};
  CHECK_EQ_INT(gl_loc_fine_frame(ff, map, &frame, NAN, NULL, 0, &prior, est, 4, &ne, err,
                                 sizeof err),
               0);
  const uint32_t side = gl_loc_fine_frame_side(ff);
  const int32_t r0 = (int32_t)(d->rows - side) / 2 - BOX / 2 - 3, q0 = -2; /* runs off the west edge */
  /* Each scan right after the frame's run, which scored the placements of
   * the prior's circle: the box's placements in it are taken from the run,
   * the others scored afresh (the forced ways below, scanning twice,
   * score their second scan all afresh). */
  float score[BOX * BOX], head[BOX * BOX], sscore[BOX * BOX], shead[BOX * BOX];
  const int32_t *pr, *pq;
  const float *sc, *hs;
  uint32_t hn;
  CHECK_EQ_INT(gl_loc_fine_frame_scan(ff, map, r0, q0, BOX, BOX, NAN, 0, score, head, err,
                                      sizeof err),
               0);
  size_t fresh = gl_loc_fine_frame_scores(ff, &pr, &pq, &sc, &hs, &hn), on_map = 0;
  for (int i = 0; i < BOX * BOX; i++)
    on_map += !isnan(score[i]);
  printf("scan: %zu placements on the map, %zu from the frame's run\n", on_map, on_map - fresh);
  CHECK(fresh > 0 && fresh < on_map);
  CHECK_EQ_INT(gl_loc_fine_frame(ff, map, &frame, NAN, NULL, 0, &prior, est, 4, &ne, err,
                                 sizeof err),
               0);
  CHECK_EQ_INT(gl_loc_fine_frame_scan(ff, map, r0, q0, BOX, BOX, HC, TOL, sscore, shead, err,
                                      sizeof err),
               0);
  CHECK_EQ_INT(gl_loc_fine_frame_scores(ff, &pr, &pq, &sc, &hs, &hn), fresh);
  CHECK_EQ_INT(hn, 7); /* 90, 100, .., 150 */
  CHECK(hn > 0 && hs[0] == 90.0f && hs[hn - 1] == 150.0f);
  /* The two ways of scoring (fine.h step 4), each forced: the same scores
   * as the way the stage chose, to float rounding. */
  for (int way = GL_LOC_FINE_SCORE_GATHER; way <= GL_LOC_FINE_SCORE_CORRELATE; way++) {
    struct gl_loc_fine_params pw = p;
    struct gl_loc_fine_frame *fw = NULL;
    float sw[BOX * BOX], hw[BOX * BOX], ssw[BOX * BOX], shw[BOX * BOX];
    pw.scoring = (enum gl_loc_fine_scoring)way;
    CHECK_EQ_INT(gl_loc_fine_frame_create(model, d->layer, &pw, 2, &fw, err, sizeof err), 0);
    CHECK_EQ_INT(gl_loc_fine_frame(fw, map, &frame, NAN, NULL, 0, &prior, est, 4, &ne, err,
                                   sizeof err),
                 0);
    CHECK_EQ_INT(gl_loc_fine_frame_scan(fw, map, r0, q0, BOX, BOX, NAN, 0, sw, hw, err,
                                        sizeof err),
                 0);
    CHECK_EQ_INT(gl_loc_fine_frame_scan(fw, map, r0, q0, BOX, BOX, HC, TOL, ssw, shw, err,
                                        sizeof err),
                 0);
    double diff = 0;
    for (int i = 0; i < BOX * BOX; i++) {
      CHECK_EQ_INT(isnan(sw[i]), isnan(score[i]));
      CHECK_EQ_INT(isnan(ssw[i]), isnan(sscore[i]));
      if (!isnan(sw[i]))
        diff = fmax(diff, fmax(fabs((double)sw[i] - score[i]), fabs((double)ssw[i] - sscore[i])));
    }
    printf("scan, scoring way %d: worst |difference| to the chosen way %.2e\n", way, diff);
    CHECK(diff < 1e-5);
    gl_loc_fine_frame_destroy(fw);
  }

  /* Brute force: the same query cells, computed here. */
  const uint32_t H = 36;
  uint32_t S, fside, ch, stride;
  CHECK_EQ_INT(gl_nn_cells_create(model, d->layer, H, 2, &cells, err, sizeof err), 0);
  gl_nn_cells_shape(cells, &S, &fside, &ch, &stride);
  CHECK_EQ_INT(fside, side);
  float headings[36];
  for (uint32_t h = 0; h < H; h++)
    headings[h] = (float)(10 * h);
  uint8_t *pix = malloc((size_t)H * S * S * 3), *base = malloc(4 * (size_t)S * S * 3);
  struct gl_image imgs[36];
  for (uint32_t h = 0; h < H; h++)
    imgs[h] = (struct gl_image){pix + (size_t)h * S * S * 3, S, S};
  gl_loc_fine_warp(&frame, headings, H, S, base, imgs);
  float *q = malloc((size_t)H * side * side * ch * sizeof(float));
  CHECK_EQ_INT(gl_nn_cells_compute(cells, imgs, H, q), 0);
  double worst = 0, other = 0; /* other: against the best year centred */
  int off_map = 0, compared = 0;
  for (int32_t a = 0; a < BOX; a++)
    for (int32_t b = 0; b < BOX; b++) {
      int32_t r = r0 + a, c = q0 + b;
      float got = score[a * BOX + b];
      if (r < 0 || c < 0 || r > (int32_t)(d->rows - side) || c > (int32_t)(d->cols - side)) {
        CHECK(isnan(got));
        off_map++;
        continue;
      }
      double s[36], sy[8][36], ymean[8], os[36];
      CHECK(d->years <= 8);
      for (uint32_t y = 0; y < d->years && y < 8; y++) {
        double mean = 0;
        for (uint32_t h = 0; h < H; h++) {
          double acc = 0;
          uint32_t nk = 0;
          for (uint32_t i = 0; i < side; i++)
            for (uint32_t j = 0; j < side; j++) {
              double dy = i + 0.5 - side / 2.0, dx = j + 0.5 - side / 2.0;
              if (dx * dx + dy * dy > side * side / 4.0)
                continue;
              const float *qc = q + (((size_t)h * side + i) * side + j) * ch;
              const float *dc =
                  d->cells + (((size_t)y * d->rows + (size_t)(r + (int32_t)i)) * d->cols +
                              (size_t)(c + (int32_t)j)) *
                                 ch;
              double n2 = 0, dot = 0;
              for (uint32_t k = 0; k < ch; k++) {
                n2 += (double)qc[k] * qc[k];
                dot += (double)qc[k] * dc[k];
              }
              acc += n2 > 0 ? dot / sqrt(n2) : 0;
              nk++;
            }
          sy[y][h] = acc / nk;
          mean += sy[y][h] / H;
        }
        for (uint32_t h = 0; h < H; h++) /* centred on its own mean */
          sy[y][h] -= p.centering * mean;
        ymean[y] = mean;
      }
      double omean = 0, obest = -INFINITY;
      for (uint32_t h = 0; h < H; h++) { /* the best year */
        s[h] = -INFINITY;
        double o = -INFINITY;
        for (uint32_t y = 0; y < d->years && y < 8; y++) {
          s[h] = fmax(s[h], sy[y][h]);
          o = fmax(o, sy[y][h] + p.centering * ymean[y]);
        }
        os[h] = o;
        omean += o / H;
      }
      for (uint32_t h = 0; h < H; h++) /* the best year's scores centred instead */
        obest = fmax(obest, os[h] - p.centering * omean);
      double best = -INFINITY, sbest = -INFINITY;
      uint32_t sh = 0, bh = 0;
      for (uint32_t h = 0; h < H; h++) {
        if (s[h] > best)
          bh = h;
        best = fmax(best, s[h]);
        if (fabs(fmod(headings[h] - HC + 540.0, 360.0) - 180.0) <= TOL && s[h] > sbest) {
          sbest = s[h];
          sh = h;
        }
      }
      worst = fmax(worst, fmax(fabs(best - got), fabs(sbest - sscore[a * BOX + b])));
      other = fmax(other, fabs(obest - best));
      /* The headings: the best one's, or one that ties with it; within the
       * locked track's window for the subset. */
      if (headings[bh] != head[a * BOX + b])
        CHECK(fabs(s[(uint32_t)lround(head[a * BOX + b] / 10) % 36] - best) < 1e-4);
      if (headings[sh] != shead[a * BOX + b])
        CHECK(fabs(s[(uint32_t)lround(shead[a * BOX + b] / 10) % 36] - sbest) < 1e-4);
      CHECK(fabs(fmod(shead[a * BOX + b] - HC + 540.0, 360.0) - 180.0) <= TOL);
      compared++;
    }
  printf("scan: %d placements compared at 36 headings and at %g +- %g, %d off the map, worst "
         "|difference| %.2e\n",
         compared, HC, TOL, off_map, worst);
  CHECK(off_map > 0 && compared > BOX * BOX / 2);
  CHECK(worst < 1e-4);
  /* The two years differ enough that centring the best year's scores
   * instead would not pass. */
  printf("scan: centring the best year instead would differ by up to %.2e\n", other);
  CHECK(other > 1e-3);

  /* The tracker on this pack: a frame seen three times in place locks. */
  uint32_t R, C;
  double cell;
  struct gl_track *t = NULL;
  struct gl_track_params tp;
  gl_track_params_init(&tp);
  CHECK_EQ_INT(gl_track_grid(map, ff, &R, &C, &cell), 0);
  CHECK_EQ_INT(gl_track_create(&tp, R, C, cell, &t, err, sizeof err), 0);
  struct gl_track_fix fix = {0};
  for (int i = 0; i < 3 && t; i++) {
    CHECK_EQ_INT(gl_loc_fine_frame(ff, map, &frame, NAN, NULL, 0, &prior, est, 4, &ne, err,
                                   sizeof err),
                 0);
    CHECK_EQ_INT(gl_track_frame(t, ff, map, 1000000ull * (uint64_t)i, NULL, est[0].lat,
                                est[0].lon, est[0].confidence, &fix, err, sizeof err),
                 0);
  }
  CHECK_EQ_INT(fix.s.status, GL_TRACK_LOCKED);
  CHECK(gl_map_distance_m(fix.lat, fix.lon, est[0].lat, est[0].lon) < 20);
  printf("track: locked at %.7f,%.7f, %.1f m from the frame's own estimate, radius %.0f m\n",
         fix.lat, fix.lon, gl_map_distance_m(fix.lat, fix.lon, est[0].lat, est[0].lon),
         fix.s.radius_m);
  CHECK_EQ_INT(gl_track_frame(t, ff, map, 0, NULL, NAN, NAN, NAN, &fix, err, sizeof err), GL_EINVAL);
  gl_track_destroy(t);
  free(q);
  free(pix);
  free(base);
  gl_nn_cells_destroy(cells);
  gl_loc_fine_frame_destroy(ff);
  gl_img_free(&frame);
  gl_map_close(map);
  gl_nn_model_destroy(model);
  return TEST_END();
}
