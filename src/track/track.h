/* Tracking a flight: a Bayes filter over map positions for one stream.
 *
 * A single frame can look like several places; a flight cannot jump between
 * them. The tracker keeps a probability grid over the map's placements (the
 * fine stage's grid of cells, fine.h: one cell c metres, 40 m for the
 * shipped model) and, frame by frame, moves it with the vehicle, weighs it
 * by what the frame shows, and reads a position, a radius and a lock status
 * off it.
 *
 * The grid. Positions are placements (r, q) of the query on the map's dense
 * grid (fine.h step 4), rows southwards, columns eastwards. The filter holds
 * a window of at most `window_cells` x `window_cells` of them, so its state
 * is bounded whatever the map's size: on a map that fits, the window is the
 * whole map and never moves; on a larger one it is placed on the frame's
 * best single-frame estimate when the track starts (or restarts after it
 * was lost and that estimate lies outside the window) and follows the
 * track, re-centred on the mode when the mode is more than a quarter of the
 * window from its centre. P(r, q) is the probability of the window's cell
 * (r, q); it sums to 1.
 *
 *  1. Prediction (gl_track_predict), dt = the capture time since the last
 *     frame, in seconds (a frame whose time goes backwards is refused; a
 *     gap over max_gap_s restarts the track). The vehicle moves by
 *     d = v dt when the frame gives its velocity v (north, east), else by
 *     d = 0 with a spread for any course:
 *        sigma^2 = base_sigma_m^2 + (velocity_sigma_mps dt)^2   with v,
 *        sigma^2 = base_sigma_m^2 + (max_speed_mps dt / 2)^2    without,
 *     so that without a velocity 95 % of the moves stay under the top speed.
 *     P <- P * K, the convolution with a Gaussian of sigma / c cells centred
 *     on the move (a separable kernel: per axis, the linear interpolation of
 *     the fractional move composed with a sampled Gaussian, normalised);
 *     mass moved off the window is lost. Then a share eps = `reacquire` of
 *     the mass is spread evenly over the window:
 *        P <- (1 - eps) P / sum(P) + eps / N,
 *     which is what lets the filter find the vehicle again after a
 *     "kidnap" (a jump no motion model explains, or a wrong start).
 *  2. Measurement (gl_track_update). The frame's fine-stage scores s(r, q)
 *     (best over headings and years, fine.h step 4) are known at the
 *     placements scored this frame: the windows around the global stage's
 *     top K (acquisition) and the box around the predicted track
 *     (gl_track_scan_box: the bounding box of the cells holding more than
 *     1e-4 of the largest probability, at most scan_cells a side around the
 *     mode; none while the mass is spread over more). While the track is
 *     locked, the box is scanned only at the headings within
 *     heading_window_deg + turn_rate_dps dt of the track's heading (a
 *     vehicle turns only so fast; every heading when none is that close),
 *     which denies a wrong place the freedom to match at any heading and,
 *     without a compass, scans 7 (at 10 frames a second) to 13 (at one)
 *     headings instead of 36 (each still centred on the mean over all of
 *     them, fine.h step 4).
 *     Unscored cells get
 *     the lowest score seen, s_bg. With s_max the highest,
 *        P(r, q) <- P(r, q) exp((s(r, q) - s_max) / temperature),
 *     normalised (when every cell's product underflows, P restarts from the
 *     likelihood alone).
 *  3. Estimate. The mode m = argmax P; the position is m moved to the
 *     vertex of the parabola through log P at m and its two neighbours,
 *     along each axis (at most half a cell); the confidence is
 *     the mass within lock_radius_m of the position; the radius is that of
 *     the smallest disc about the position holding 68 % of the mass (at
 *     least c / 2); the heading is the best heading of the scored placement
 *     at m (unknown when m was not scored).
 *  4. Status. A frame's own best estimate (the hint of gl_track_predict:
 *     the fine stage's answer for the frame alone, which owes nothing to
 *     the track) agrees with the track when it lies within lock_radius_m of
 *     the position. An estimate whose own confidence (fine.h step 6) is
 *     below hint_confidence is no evidence either way: the frame counts as
 *     one without an estimate (it can neither lock nor unlock the track). ACQUIRING until, for lock_frames frames in a row, the
 *     confidence has been at least lock_confidence and the frame agreed:
 *     LOCKED. A locked track whose confidence falls below lost_confidence,
 *     whose position jumps farther than the vehicle could have moved
 *     (max_speed_mps dt + 2 lock_radius_m), or whose frames disagree
 *     lost_frames times in a row (frames without an estimate do not count)
 *     is LOST until it locks again (the same rule as acquiring). The
 *     filter's position is answered whatever the status: a lost track
 *     still holds its best guess, but says it is not sure of it.
 *
 *  5. Fixed-lag smoothing (fixed_lag = L > 0). The filter's P_k (the
 *     forward posterior) knows frames up to k; the frames after k say more
 *     about where the vehicle was at k. After frame t the smoother answers
 *     for frame t - L: with the likelihoods l_k (step 2's exp((s - s_max) /
 *     temperature)) and step 1's transitions T_k of the last L frames kept,
 *        beta_t = 1,  beta_k(x) = sum over x' of T_k+1(x -> x') l_k+1(x')
 *                                  beta_k+1(x'),
 *     where T_k+1(x -> x') = (1 - eps) K(x' - x - d) / S + eps / N (S the
 *     mass the forward move kept), computed as the convolution of l beta
 *     with the kernel turned round plus the even share, carried across the
 *     window's moves; then P_t-L beta_t-L, normalised, is the smoothed
 *     distribution, read as in step 3. Its status is LOCKED when that
 *     confidence reaches lock_confidence and the frame's own estimate
 *     agreed with it, else what the filter said then (ACQUIRING or LOST). A
 *     (re)placed window cuts the chain: frames before it are not smoothed.
 *
 * Cost: a prediction is two 1-D convolutions of the window (a few taps at
 * frame rate); the measurement is the fine stage's scan of the small box
 * around the track, which reuses the frame's query cells and is most of
 * the tracker's time. Memory: five
 * window-sized float arrays and the scan box, allocated at creation
 * (window_cells 96: about 190 KB a stream), and with a fixed lag of L,
 * 2 (L + 1) + 3 more (L 10: 0.9 MB a stream at 96 cells); nothing per frame.
 * Smoothing costs L convolutions of the window a frame. */
#ifndef GL_TRACK_TRACK_H
#define GL_TRACK_TRACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest fixed lag a tracker keeps, in frames. */
#define GL_TRACK_MAX_LAG 30

enum gl_track_status {
  GL_TRACK_ACQUIRING = 1,
  GL_TRACK_LOCKED = 2,
  GL_TRACK_LOST = 3,
};

/* Parameters; gl_track_params_init gives the defaults (chosen on flights
 * over the validation half, see data/models/README.md). */
struct gl_track_params {
  double max_speed_mps;      /* top speed without a velocity (default 25), 0.1..1000 */
  double velocity_sigma_mps; /* error of a given velocity (default 2), 0..100 */
  double base_sigma_m;       /* spread added every frame (default 15), 0..10000 */
  double temperature;        /* of the likelihood (default 0.03), 1e-4..10 */
  double reacquire;          /* eps, mass spread evenly each frame (default 0.01), 0..0.5 */
  double lock_radius_m;      /* confidence radius (default 100), > 0 */
  double lock_confidence;    /* default 0.8, 0..1 */
  double lost_confidence;    /* default 0.6, 0..lock_confidence */
  uint32_t lock_frames;      /* default 2, 1..1000 */
  uint32_t lost_frames;      /* default 3, 1..1000 */
  uint32_t fixed_lag;        /* frames of fixed-lag smoothing (step 5), 0 (default) ..30 */
  double max_gap_s;          /* a longer gap restarts the track (default 300), > 0 */
  uint32_t window_cells;     /* window side (default 96), 8..1024 */
  uint32_t scan_cells;       /* scan box side (default 16), 1..64 */
  double heading_window_deg; /* a locked track's headings: +-this (default 30), 0..180 */
  double turn_rate_dps;      /* plus this times dt (default 30 deg/s), 0..3600 */
  double hint_confidence;    /* a frame's own estimate counts (step 4) from this
                                confidence up (default 0.9), 0..1 */
};

void gl_track_params_init(struct gl_track_params *p);

/* Returns 0 or GL_EINVAL with err saying which value is wrong. */
int gl_track_params_check(const struct gl_track_params *p, char *err, size_t errlen);

/* The filter's answer after a frame. r, q are continuous placement
 * coordinates (rows southwards, columns eastwards). */
struct gl_track_state {
  enum gl_track_status status;
  double r, q;
  double radius_m;
  double confidence;  /* 0..1 */
  double heading_deg; /* NaN when unknown */
};

struct gl_track;

/* A tracker for a grid of rows x cols placements of cell_m metres. Returns
 * 0, GL_EINVAL or GL_ENOMEM with err set. */
int gl_track_create(const struct gl_track_params *p, uint32_t rows, uint32_t cols, double cell_m,
                    struct gl_track **out, char *err, size_t errlen);
void gl_track_destroy(struct gl_track *t);

/* True when t was created for this grid. */
bool gl_track_fits(const struct gl_track *t, uint32_t rows, uint32_t cols, double cell_m);

/* Forgets the flight: the next frame starts the track afresh. */
void gl_track_reset(struct gl_track *t);

/* Step 1 to capture time time_us. vel: NULL, or the velocity {north, east}
 * in m/s. (hint_r, hint_q): the frame's best single-frame placement, or NaN;
 * it places the window when the track (re)starts; hint_conf: its
 * confidence (NaN: unknown, taken as sure), for step 4. Returns 0, or
 * GL_EINVAL when time_us is before the previous frame's (nothing changes
 * then). */
int gl_track_predict(struct gl_track *t, uint64_t time_us, const double *vel, double hint_r,
                     double hint_q, double hint_conf, char *err, size_t errlen);

/* The window of this frame (after gl_track_predict): placements r0.. r0 +
 * rows - 1, q0 .. q0 + cols - 1. */
void gl_track_window(const struct gl_track *t, int32_t *r0, int32_t *q0, uint32_t *rows,
                     uint32_t *cols);

/* This frame's measurement arrays, window-sized (rows * cols, row-major),
 * NaN after gl_track_predict: the caller writes the scores (and best
 * headings, degrees) of the placements it scored. */
float *gl_track_scores(struct gl_track *t);
float *gl_track_headings(struct gl_track *t);

/* The box of placements to scan around the predicted track (step 2); rows
 * and cols 0 when the mass is too spread to scan. */
void gl_track_scan_box(const struct gl_track *t, int32_t *r0, int32_t *q0, uint32_t *rows,
                       uint32_t *cols);

/* Steps 2-4 with the scores written since the prediction; fills *out. */
void gl_track_update(struct gl_track *t, struct gl_track_state *out);

/* Step 5 after gl_track_update: the smoothed state of the frame fixed_lag
 * frames back. False when there is none (no lag, or fewer frames since the
 * track (re)started). */
bool gl_track_smoothed(struct gl_track *t, struct gl_track_state *out);

/* --- a tracked frame against a map ---------------------------------------------- */

struct gl_map;
struct gl_loc_fine_frame;

/* The tracker's placement grid for map's dense layer and the fine stage ff
 * was planned with: rows, cols and cell size. Returns 0, or GL_EINVAL when
 * the map has no dense layer (or one smaller than a query). */
int gl_track_grid(const struct gl_map *map, const struct gl_loc_fine_frame *ff, uint32_t *rows,
                  uint32_t *cols, double *cell_m);

/* One tracked frame, after gl_loc_fine_frame ran it on map (its scores and
 * query cells are read, then its scratch is reused): steps 1-4 with hint
 * the frame's best estimate (NaN lat when none) and its confidence (NaN:
 * unknown, taken as sure), then the state's position
 * in WGS84. Returns 0, GL_EINVAL (time backwards, a map that is not the
 * tracker's; nothing changes then), the fine stage's error, or
 * GL_EINTERNAL when PROJ cannot convert the state (the filter has taken
 * the frame and starts afresh), with err set. */
struct gl_track_fix {
  struct gl_track_state s;
  double lat, lon;
  /* With a fixed lag: the smoothed state of the frame fixed_lag frames
   * back (step 5), when there is one. */
  bool has_smoothed;
  struct gl_track_state ss;
  double slat, slon;
};
int gl_track_frame(struct gl_track *t, struct gl_loc_fine_frame *ff, struct gl_map *map,
                   uint64_t time_us, const double *vel, double hint_lat, double hint_lon,
                   double hint_confidence, struct gl_track_fix *out, char *err, size_t errlen);

#endif
