/* The fine stage: overlap scanning of dense features over the map.
 *
 * A global descriptor tells which part of the map a frame may show; it
 * cannot tell one field from the next across years. The fine stage
 * correlates a low-level feature map of the frame with a dense feature map
 * of the reference imagery (stored in the map pack, see map.h), over
 * headings and shifts, and turns the best alignments into estimates with a
 * sub-tile position and a heading. python/geoloc_train/fine.py is the
 * reference of every step below; tests hold the two together.
 *
 * Notation. The fine stage's input is S x S pixels (S = input_size, 64 for
 * the shipped model, or the dense head's own size, config dense_head.size,
 * when the model's head reads the layer: gl_nn_model_fine_size) and covers
 * one map tile, tile_m metres, so a model pixel is p = tile_m / S metres.
 * Feature layer L of the backbone (MobileNetV2
 * block L; 6 by default: 32 channels at stride s = 8) turns an image into a
 * grid of cells of s x s pixels, c = s * p metres each (40 m by default), C
 * channels a cell.
 *
 *  1. Query warp (gl_img_warp). For a heading hypothesis h (degrees
 *     clockwise from north of the direction the frame's top looks at), the
 *     frame is resampled into an S x S image turned north-up: output pixel
 *     (i, j) with centre offset (u, v) = (j + 1/2 - S/2, i + 1/2 - S/2)
 *     samples the frame at
 *        x = (S/2 + cos h u + sin h v) W/S - 1/2,
 *        y = (S/2 - sin h u + cos h v) H/S - 1/2
 *     (frame pixel centres at integers), bilinearly, with coordinates
 *     outside the frame reflected into it (x -> -x, x -> 2(W-1) - x, as
 *     often as needed), never filled with a constant. When the frame is
 *     larger than the output (f = max(W, H) / S > 1), each output pixel
 *     averages n x n such samples at the sub-pixel offsets ((a + 1/2)/n -
 *     1/2) of (u, v), n = min(ceil(f), 4): the warp antialiases. Values are
 *     rounded to the nearest integer. The fine stage first resizes the
 *     frame so to 2S x 2S (h = 0) and turns that image to every heading
 *     (n = 2): a frame of 2S pixels or less is warped exactly as above, a
 *     larger one is antialiased in two steps at a fraction of the cost.
 *  2. Query features. The network runs on every warped image up to layer L:
 *     Q_h, an (S/s) x (S/s) grid (8 x 8) of C-vectors, each L2-normalised
 *     (gl_nn_cells; with a fused block, config dense_head.fuse_layer, S is
 *     the fused block's input, s its stride, and each cell joins the head's
 *     cell of the image's k x k means with the fused block's: nn.h).
 *     Only the cells whose centre lies within S/2 pixels of the image
 *     centre are used (the disc the frame covers at every heading: 52 of
 *     64 cells); K_q is their set.
 *  3. Reference features (map.h, "dense layer"). Each source raster is read
 *     at p metres per pixel on a canvas aligned to the pack's grid (origin
 *     on multiples of c) and run through the same layers in blocks of 512 x
 *     512 pixels with a margin of context on each side
 *     (gl_nn_model_feature_margin: 64 pixels for block 6, whose receptive
 *     field is 59 pixels, 112 for block 10's 171), so blocks join
 *     exactly; pixels outside the canvas are reflected. D_y[r][q] is the
 *     L2-normalised cell at row r, column q of source y; cells with missing
 *     imagery are zero.
 *  4. Score. For heading h and a placement of the query's top-left cell on
 *     reference cell (r, q):
 *        score_y(h, r, q) = 1/|K_q| sum over (a, b) in K_q of
 *                           <Q_h[a][b], D_y[r + a][q + b]>
 *     the mean cosine similarity of the aligned cells, in [-1, 1]. When the
 *     headings span the full circle (no compass), each source's scores
 *     are lowered by `centering` times their mean over all headings:
 *        score_y(h, r, q) -= centering * mean over h' of score_y(h', r, q),
 *     a place that matches equally at every heading (a uniform field, a
 *     blurred frame) is not a match; on the validation split this took
 *     success@100 m from 62 % to 67 % (one-year map, where centring the
 *     best year is the same). The mean is the score of the mean
 *     of the headings' query cells (the score is linear in them), one more
 *     query row, so a scan of a few headings (a locked track's) centres on
 *     all of them at the cost of one. Then score(h, r, q) = max over
 *     sources y: a multi-year map scores each place by its best year.
 *     With a compass the few headings scanned say nothing of that, and it
 *     is not done. The scores are computed the cheaper of two ways
 *     (fine.c, gl__score): a correlation of every query cell with every
 *     reference cell in reach (one matrix product a heading, BLAS; a score
 *     is a sum along its diagonals), or each placement's cells gathered in
 *     the query's order and scored at every heading by one matrix product
 *     over a chunk of placements (only the products a score needs, but each
 *     cell copied once for every placement over it). Gathering wins where
 *     the placements are few next to the cells they cover (the candidates'
 *     windows, a tracking box) or the headings many; the correlation wins
 *     on a dense region (a prior's circle) with a compass.
 *  5. Search region. For each of the global stage's top K tiles, the
 *     placements whose query centre lies within `radius` cells of the tile
 *     centre; with a prior (or a small map), every placement whose centre
 *     lies within the prior's circle (or on the map). Headings: every
 *     `step_deg` from 0 when the frame's heading is unknown; with a compass
 *     heading hc, hc + k step_deg for |k step_deg| <= tolerance_deg.
 *  6. Estimates. The best (h, r, q) in the region is the first estimate;
 *     then the best one more than `nms_m` metres from every estimate so far,
 *     and so on. The position is the query centre, refined to sub-cell
 *     precision by a parabola through the scores of the neighbouring
 *     placements along each axis (delta = (s- - s+) / (2 (s- - 2 s0 + s+)),
 *     clamped to +-1/2 cell); the heading is h, refined the same way over the
 *     neighbouring headings when they were scored. The estimates' confidence
 *     is the softmax of score / temperature over those returned, and the
 *     radius half a cell divided by the square root of the confidence: half
 *     a cell for an estimate that stands alone, more when others compete.
 *
 * Memory: a gl_loc_fine is created once per worker thread for the largest
 * search it will serve; gl_loc_fine_run allocates nothing. */
#ifndef GL_LOC_FINE_H
#define GL_LOC_FINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "img/img.h"
#include "loc/loc.h"
#include "map/map.h"

enum gl_loc_fine_scoring {
  GL_LOC_FINE_SCORE_AUTO = 0,
  GL_LOC_FINE_SCORE_GATHER = 1,    /* each placement's cells gathered */
  GL_LOC_FINE_SCORE_CORRELATE = 2, /* every query cell against every cell in reach */
};

/* Parameters of the fine stage; gl_loc_fine_params_init gives the defaults
 * (chosen on the naip-xtime validation split, see data/models/README.md). */
struct gl_loc_fine_params {
  uint32_t top_k;        /* global candidates re-scored (default 50), 1..1024 */
  uint32_t radius_cells; /* shift radius around a candidate tile (default 2) */
  double step_deg;       /* heading step (default 10), divides 360, >= 1 */
  double tolerance_deg;  /* compass headings scanned within +-this (default 20) */
  double nms_m;          /* estimates at least this far apart (default 2 cells) */
  double temperature;    /* confidence softmax (default 0.02) */
  /* Scan every placement of the map instead of only the top K's windows
   * when its dense layer has at most this many cells (default 0: never; a
   * frame with a prior always scans the prior's circle). */
  uint32_t full_scan_cells;
  /* Scans over the full circle of headings score a placement minus this
   * share of its mean score over all headings (default 0.5; step 4). */
  double centering;
  /* How step 4 computes the scores (the same scores either way, to float
   * rounding): the cheaper way for each frame (default), or always one
   * (tests/track/test_scan.c, bench/fine_scan.c). */
  enum gl_loc_fine_scoring scoring;
};

void gl_loc_fine_params_init(struct gl_loc_fine_params *p);

/* Checks p; returns 0 or GL_EINVAL with err saying which value is wrong. */
int gl_loc_fine_params_check(const struct gl_loc_fine_params *p, char *err, size_t errlen);

/* Headings a frame is scanned at: every step from 0 when heading_deg is NaN
 * (unknown), else heading_deg + k step within +-tolerance. Writes at most
 * max into out and returns the count. */
uint32_t gl_loc_fine_headings(const struct gl_loc_fine_params *p, double heading_deg, float *out,
                              uint32_t max);

/* Scratch and settings of the fine stage for frames of up to max_headings
 * headings of side x side query cells of `channels` each (the feature
 * engine's grid). Returns 0, GL_EINVAL or GL_ENOMEM with err set. */
struct gl_loc_fine;
int gl_loc_fine_create(const struct gl_loc_fine_params *p, uint32_t max_headings, uint32_t side,
                       uint32_t channels, struct gl_loc_fine **out, char *err, size_t errlen);
void gl_loc_fine_destroy(struct gl_loc_fine *f);

/* Runs the fine stage of one frame on map (which must have a dense layer):
 * qfeat holds H * side * side * channels floats, the unit query cells at
 * headings[0..H) (steps 1-2 above), cand the global stage's hits of the
 * frame, best first (the first top_k are used), or prior a circle to scan
 * instead (a radius <= 0 meaning none). Writes at most max_out estimates,
 * best first, into out; their support points into f until its next run.
 * Returns 0 (with *n_out 0 when nothing could be placed), GL_EINVAL,
 * GL_ENOMEM or GL_EINTERNAL with err set. */
int gl_loc_fine_run(struct gl_loc_fine *f, struct gl_map *map, const float *qfeat,
                    const float *headings, uint32_t H, const struct gl_map_hit *cand,
                    uint32_t n_cand, const struct gl_map_prior *prior, struct gl_loc_estimate *out,
                    size_t max_out, size_t *n_out, char *err, size_t errlen);

/* Scores of a box of placements, for the tracker (src/track): for every
 * placement (r, q) with r0 <= r < r0 + rows and q0 <= q < q0 + cols (the
 * top-left cell of the query on the dense grid, as in step 4), its best
 * score over the headings sel[0..S) (indices into the frame's H headings;
 * NULL: all of them) and the years, step 4's centring over all H included,
 * into score[(r - r0) * cols + (q - q0)], and that heading into heading[];
 * NaN for placements off the map. rows * cols is at most 4096 and (rows +
 * side) * (cols + side) within the stage's reach (64 x 64 always fits).
 * same_query: qfeat and headings are those of f's last gl_loc_fine_run on
 * this map, whose scores are then taken for the placements it scored
 * instead of being computed again (when no scan came between; the same to
 * float rounding). Returns 0
 * or GL_EINVAL/GL_ENOMEM with err set. */
int gl_loc_fine_scan(struct gl_loc_fine *f, struct gl_map *map, const float *qfeat,
                     const float *headings, uint32_t H, const uint32_t *sel, uint32_t S,
                     bool same_query, int32_t r0, int32_t q0, uint32_t rows, uint32_t cols,
                     float *score, float *heading, char *err, size_t errlen);

/* The placements the last run or scan of f scored (a scan: those it did
 * not take from the run): returns their number P,
 * points r, q (top-left cells) at P entries and score at the P x H scores
 * (placement-major; step 4's, centring included) of the H headings it
 * scored, valid until f's next run or scan. */
size_t gl_loc_fine_scores(const struct gl_loc_fine *f, const int32_t **r, const int32_t **q,
                          const float **score, uint32_t *H);

/* --- one frame, end to end ----------------------------------------------------- */

/* Step 1 for H headings: out[h] (S x S each) is the frame turned north-up
 * for headings[h], through the 2S x 2S resize in base (4 S^2 * 3 bytes). */
void gl_loc_fine_warp(const struct gl_image *frame, const float *headings, uint32_t H, uint32_t S,
                      uint8_t *base, const struct gl_image *out);

/* What the fine stage of one frame needs besides the map: the feature
 * engine of the map's layer, the warped images, the query cells and the
 * stage's scratch. One per worker thread; gl_loc_fine_frame allocates
 * nothing. */
struct gl_nn_model;
struct gl_loc_fine_frame;

/* Plans for frames against maps whose dense layer is backbone block
 * `layer` of model, at most max_headings headings (360 / step). threads:
 * the feature engine's CPU threads (0: all cores). */
int gl_loc_fine_frame_create(const struct gl_nn_model *model, uint32_t layer,
                             const struct gl_loc_fine_params *p, uint32_t threads,
                             struct gl_loc_fine_frame **out, char *err, size_t errlen);
void gl_loc_fine_frame_destroy(struct gl_loc_fine_frame *ff);

/* The backbone block the frame stage was planned for. */
uint32_t gl_loc_fine_frame_layer(const struct gl_loc_fine_frame *ff);

/* The side of the frame's query grid in cells (8 for the shipped model). */
uint32_t gl_loc_fine_frame_side(const struct gl_loc_fine_frame *ff);

/* Steps 1-6 for one decoded frame: warps it at the headings the stage's
 * parameters give for heading_deg (NaN: unknown), computes the query cells
 * and runs gl_loc_fine_run with the global hits or the prior. Returns as
 * gl_loc_fine_run; GL_EINVAL also for a map whose dense layer is another
 * layer. */
int gl_loc_fine_frame(struct gl_loc_fine_frame *ff, struct gl_map *map,
                      const struct gl_image *frame, double heading_deg,
                      const struct gl_map_hit *hits, uint32_t n_hits,
                      const struct gl_map_prior *prior, struct gl_loc_estimate *out, size_t max_out,
                      size_t *n_out, char *err, size_t errlen);

/* gl_loc_fine_scan and gl_loc_fine_scores for the frame the last
 * gl_loc_fine_frame call ran (its query cells and headings). The scan
 * scores the frame's headings within tol degrees of hc, or all of them when
 * hc is NaN or none is that close; headings gets the H headings the last
 * run or scan scored, degrees. */
int gl_loc_fine_frame_scan(struct gl_loc_fine_frame *ff, struct gl_map *map, int32_t r0, int32_t q0,
                           uint32_t rows, uint32_t cols, double hc, double tol, float *score,
                           float *heading, char *err, size_t errlen);
size_t gl_loc_fine_frame_scores(const struct gl_loc_fine_frame *ff, const int32_t **r,
                                const int32_t **q, const float **score, const float **headings,
                                uint32_t *H);

#endif
