/* The tracker (track.h): a grid Bayes filter over the map's placements. */
#include "track/track.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "loc/fine.h"
#include "map/dense.h"

/* Step 3's radius holds this share of the mass. */
#define GL__RADIUS_MASS 0.68
/* Histogram bins of step 3's radius, per cell. */
#define GL__BINS_PER_CELL 4

void gl_track_params_init(struct gl_track_params *p) {
  *p = (struct gl_track_params){
      .max_speed_mps = 25,
      .velocity_sigma_mps = 2,
      .base_sigma_m = 15,
      .temperature = 0.03,
      .reacquire = 0.01,
      .lock_radius_m = 100,
      .lock_confidence = 0.8,
      .lost_confidence = 0.6,
      .lock_frames = 2,
      .lost_frames = 3,
      .fixed_lag = 0,
      .max_gap_s = 300,
      .window_cells = 96,
      .scan_cells = 16,
      .heading_window_deg = 30,
      .turn_rate_dps = 30,
      .hint_confidence = 0.9,
  };
}

int gl_track_params_check(const struct gl_track_params *p, char *err, size_t errlen) {
  if (!(p->max_speed_mps >= 0.1 && p->max_speed_mps <= 1000))
    return gl_fail(err, errlen, GL_EINVAL, "track max speed %g m/s is not in 0.1..1000",
                   p->max_speed_mps);
  if (!(p->velocity_sigma_mps >= 0 && p->velocity_sigma_mps <= 100) ||
      !(p->base_sigma_m >= 0 && p->base_sigma_m <= 10000))
    return gl_fail(err, errlen, GL_EINVAL,
                   "track velocity sigma %g m/s (0..100) or base sigma %g m (0..10000) out of range",
                   p->velocity_sigma_mps, p->base_sigma_m);
  if (!(p->temperature >= 1e-4 && p->temperature <= 10))
    return gl_fail(err, errlen, GL_EINVAL, "track temperature %g is not in 1e-4..10",
                   p->temperature);
  if (!(p->reacquire >= 0 && p->reacquire <= 0.5))
    return gl_fail(err, errlen, GL_EINVAL, "track reacquire %g is not in 0..0.5", p->reacquire);
  if (!(p->lock_radius_m > 0 && p->lock_radius_m <= 1e5))
    return gl_fail(err, errlen, GL_EINVAL, "track lock radius %g m is not in (0, 1e5]",
                   p->lock_radius_m);
  if (!(p->lock_confidence >= 0 && p->lock_confidence <= 1) ||
      !(p->lost_confidence >= 0 && p->lost_confidence <= p->lock_confidence))
    return gl_fail(err, errlen, GL_EINVAL,
                   "track lock confidence %g and lost confidence %g must satisfy 0 <= lost <= "
                   "lock <= 1",
                   p->lock_confidence, p->lost_confidence);
  if (!(p->hint_confidence >= 0 && p->hint_confidence <= 1))
    return gl_fail(err, errlen, GL_EINVAL, "track hint confidence %g is not in 0..1",
                   p->hint_confidence);
  if (p->lock_frames < 1 || p->lock_frames > 1000)
    return gl_fail(err, errlen, GL_EINVAL, "track lock frames %u is not in 1..1000",
                   p->lock_frames);
  if (p->fixed_lag > GL_TRACK_MAX_LAG)
    return gl_fail(err, errlen, GL_EINVAL, "track fixed lag %u frames is not in 0..%d",
                   p->fixed_lag, GL_TRACK_MAX_LAG);
  if (p->lost_frames < 1 || p->lost_frames > 1000)
    return gl_fail(err, errlen, GL_EINVAL, "track lost frames %u is not in 1..1000",
                   p->lost_frames);
  if (!(p->max_gap_s > 0 && p->max_gap_s <= 1e6))
    return gl_fail(err, errlen, GL_EINVAL, "track max gap %g s is not in (0, 1e6]", p->max_gap_s);
  if (!(p->heading_window_deg >= 0 && p->heading_window_deg <= 180) ||
      !(p->turn_rate_dps >= 0 && p->turn_rate_dps <= 3600))
    return gl_fail(err, errlen, GL_EINVAL,
                   "track heading window %g deg (0..180) or turn rate %g deg/s (0..3600) out of "
                   "range",
                   p->heading_window_deg, p->turn_rate_dps);
  if (p->window_cells < 8 || p->window_cells > 1024 || p->scan_cells < 1 || p->scan_cells > 64)
    return gl_fail(err, errlen, GL_EINVAL,
                   "track window %u cells (8..1024) or scan box %u cells (1..64) out of range",
                   p->window_cells, p->scan_cells);
  return 0;
}

/* The transition into a frame (step 1), for the smoother. */
struct gl__step {
  bool moved;        /* false: the window was (re)placed, all prior forgotten */
  double dr, dq, s;  /* the kernel's move and spread, cells */
  double sum, eps;   /* the mass after the move; the share spread evenly */
};

/* One frame kept for fixed-lag smoothing. */
struct gl__lag {
  float *alpha, *lik; /* the posterior and the likelihood, window-sized */
  int32_t r0, q0;     /* the window they live in */
  struct gl__step step;
  double hint_r, hint_q;
  enum gl_track_status status;
};

struct gl_track {
  struct gl_track_params p;
  uint32_t R, C; /* the placement grid */
  double cell;
  uint32_t wr, wc; /* the window */
  int32_t r0, q0;
  float *P, *tmp, *score, *head; /* [wr][wc] */
  float *bscore, *bhead;         /* [scan_cells^2]: the scan box */
  double *kern;                  /* [2 * (wr + wc) + 8] */
  double *hist;                  /* radius histogram */
  uint32_t nbins;
  bool started, have_fix;
  uint64_t t_us;
  double dt;
  enum gl_track_status status;
  uint32_t good;     /* frames in a row that would hold a lock */
  uint32_t disagree; /* frames in a row whose own estimate is elsewhere */
  double hint_r, hint_q; /* this frame's own best placement, NaN when none */
  bool hint_weak;        /* ... whose confidence is under hint_confidence */
  struct gl__step step;  /* the transition into this frame */
  bool measured;         /* this frame's likelihood is in tmp */
  /* Fixed-lag smoothing: the last fixed_lag + 1 frames, a ring; stored
   * counts those since the last (re)placement of the window. */
  struct gl__lag *lag;
  uint32_t lag_head, stored;
  float *beta, *gbuf, *gscratch; /* window-sized */
  double last_r, last_q; /* the previous estimate, grid cells */
  double heading;        /* the previous estimate's heading; NaN when unknown */
};

int gl_track_create(const struct gl_track_params *p, uint32_t rows, uint32_t cols, double cell_m,
                    struct gl_track **out, char *err, size_t errlen) {
  *out = NULL;
  int rc = gl_track_params_check(p, err, errlen);
  if (rc)
    return rc;
  if (!rows || !cols || rows > (1u << 24) || cols > (1u << 24) || !(cell_m > 0 && cell_m < 1e5))
    return gl_fail(err, errlen, GL_EINVAL, "track grid %ux%u of %g m", rows, cols, cell_m);
  struct gl_track *t = calloc(1, sizeof *t);
  if (!t)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  t->p = *p;
  t->R = rows;
  t->C = cols;
  t->cell = cell_m;
  t->wr = rows < p->window_cells ? rows : p->window_cells;
  t->wc = cols < p->window_cells ? cols : p->window_cells;
  size_t n = (size_t)t->wr * t->wc, b = (size_t)p->scan_cells * p->scan_cells;
  t->nbins = (uint32_t)ceil(hypot(t->wr, t->wc) * GL__BINS_PER_CELL) + 1;
  if (!(t->P = malloc(n * sizeof(float))) || !(t->tmp = malloc(n * sizeof(float))) ||
      !(t->score = malloc(n * sizeof(float))) || !(t->head = malloc(n * sizeof(float))) ||
      !(t->bscore = malloc(b * sizeof(float))) || !(t->bhead = malloc(b * sizeof(float))) ||
      !(t->kern = malloc((2 * (size_t)(t->wr + t->wc) + 8) * sizeof(double))) ||
      !(t->hist = malloc(t->nbins * sizeof(double)))) {
    gl_track_destroy(t);
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  }
  if (p->fixed_lag) {
    bool ok = (t->lag = calloc(p->fixed_lag + 1, sizeof *t->lag)) &&
              (t->beta = malloc(n * sizeof(float))) && (t->gbuf = malloc(n * sizeof(float))) &&
              (t->gscratch = malloc(n * sizeof(float)));
    for (uint32_t i = 0; ok && i <= p->fixed_lag; i++)
      ok = (t->lag[i].alpha = malloc(n * sizeof(float))) &&
           (t->lag[i].lik = malloc(n * sizeof(float)));
    if (!ok) {
      gl_track_destroy(t);
      return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    }
  }
  gl_track_reset(t);
  *out = t;
  return 0;
}

void gl_track_destroy(struct gl_track *t) {
  if (!t)
    return;
  free(t->P);
  free(t->tmp);
  free(t->score);
  free(t->head);
  free(t->bscore);
  free(t->bhead);
  free(t->kern);
  free(t->hist);
  for (uint32_t i = 0; t->lag && i <= t->p.fixed_lag; i++) {
    free(t->lag[i].alpha);
    free(t->lag[i].lik);
  }
  free(t->lag);
  free(t->beta);
  free(t->gbuf);
  free(t->gscratch);
  free(t);
}

bool gl_track_fits(const struct gl_track *t, uint32_t rows, uint32_t cols, double cell_m) {
  return t->R == rows && t->C == cols && t->cell == cell_m;
}

void gl_track_reset(struct gl_track *t) {
  t->started = t->have_fix = false;
  t->heading = NAN;
  t->status = GL_TRACK_ACQUIRING;
  t->good = t->disagree = 0;
  t->stored = 0;
  t->dt = 0;
}

/* Places the window on (r, q) (the grid's centre when NaN), clamped to the
 * grid, with the mass spread evenly over it. */
static void gl__place(struct gl_track *t, double r, double q) {
  if (isnan(r) || isnan(q)) {
    r = t->R / 2.0;
    q = t->C / 2.0;
  }
  double r0 = fmin(fmax(round(r - t->wr / 2.0), 0), (double)(t->R - t->wr));
  double q0 = fmin(fmax(round(q - t->wc / 2.0), 0), (double)(t->C - t->wc));
  t->r0 = (int32_t)r0;
  t->q0 = (int32_t)q0;
  size_t n = (size_t)t->wr * t->wc;
  for (size_t i = 0; i < n; i++)
    t->P[i] = 1.0f / (float)n;
}

/* Step 1's kernel along one axis for a move of d cells and a spread of s
 * cells: k[j] is the weight of a shift by lo + j cells; returns the tap
 * count. Taps beyond lim cells cannot reach the window and are cut. */
static uint32_t gl__kernel(double d, double s, int32_t lim, double *k, int32_t *lo) {
  double fi = floor(d), f = d - fi;
  int32_t J = s > 1e-3 ? (int32_t)ceil(3 * s) : 0;
  if (J > lim)
    J = lim;
  int32_t i = (int32_t)fmax(fmin(fi, 1e6), -1e6);
  *lo = i - J;
  uint32_t n = (uint32_t)(2 * J + 2);
  double gz = 0;
  for (int32_t j = -J; j <= J; j++)
    gz += J ? exp(-(double)j * j / (2 * s * s)) : 1;
  for (uint32_t a = 0; a < n; a++)
    k[a] = 0;
  for (int32_t j = -J; j <= J; j++) {
    double g = (J ? exp(-(double)j * j / (2 * s * s)) : 1) / gz;
    k[j + J] += (1 - f) * g;     /* shift i + j */
    k[j + J + 1] += f * g;       /* shift i + 1 + j */
  }
  return n;
}

/* buf <- buf * K (step 1), one axis at a time through scratch. */
static void gl__convolve(struct gl_track *t, float *buf, float *scratch, double dr, double dq,
                         double s) {
  const int32_t wr = (int32_t)t->wr, wc = (int32_t)t->wc;
  int32_t lo;
  uint32_t n = gl__kernel(dq, s, wr + wc, t->kern, &lo);
  for (int32_t r = 0; r < wr; r++) {
    const float *in = buf + (size_t)r * wc;
    float *o = scratch + (size_t)r * wc;
    for (int32_t x = 0; x < wc; x++) {
      double acc = 0;
      for (uint32_t a = 0; a < n; a++) {
        int64_t src = (int64_t)x - (lo + (int32_t)a);
        if (src >= 0 && src < wc)
          acc += t->kern[a] * in[src];
      }
      o[x] = (float)acc;
    }
  }
  n = gl__kernel(dr, s, wr + wc, t->kern, &lo);
  for (int32_t x = 0; x < wr; x++)
    for (int32_t q = 0; q < wc; q++) {
      double acc = 0;
      for (uint32_t a = 0; a < n; a++) {
        int64_t src = (int64_t)x - (lo + (int32_t)a);
        if (src >= 0 && src < wr)
          acc += t->kern[a] * scratch[(size_t)src * wc + q];
      }
      buf[(size_t)x * wc + q] = (float)acc;
    }
}

int gl_track_predict(struct gl_track *t, uint64_t time_us, const double *vel, double hint_r,
                     double hint_q, double hint_conf, char *err, size_t errlen) {
  if (t->started && time_us < t->t_us)
    return gl_fail(err, errlen, GL_EINVAL,
                   "capture_time_us %llu is %.6f s before the previous frame's; a tracked "
                   "stream's frames must not go back in time",
                   (unsigned long long)time_us, (double)(t->t_us - time_us) / 1e6);
  if (vel && !(isfinite(vel[0]) && isfinite(vel[1])))
    return gl_fail(err, errlen, GL_EINVAL, "velocity %g,%g m/s is not finite", vel[0], vel[1]);
  double dt = t->started ? (double)(time_us - t->t_us) / 1e6 : 0;
  t->hint_r = hint_r;
  t->hint_q = hint_q;
  t->hint_weak = hint_conf < t->p.hint_confidence; /* it still places the window */
  if (t->started && dt > t->p.max_gap_s)
    gl_track_reset(t);
  const size_t n = (size_t)t->wr * t->wc;
  const bool partial = t->wr < t->R || t->wc < t->C;
  t->step = (struct gl__step){0}; /* a (re)placed window: a fresh start */
  if (!t->started) {
    gl__place(t, hint_r, hint_q);
    dt = 0;
  } else if (partial && t->status != GL_TRACK_LOCKED && !isnan(hint_r) &&
             (hint_r < t->r0 || hint_r >= t->r0 + (double)t->wr || hint_q < t->q0 ||
              hint_q >= t->q0 + (double)t->wc)) {
    gl__place(t, hint_r, hint_q); /* not held, and the frame points elsewhere */
  } else {
    double v = vel ? t->p.velocity_sigma_mps * dt : t->p.max_speed_mps * dt / 2;
    double s = sqrt(t->p.base_sigma_m * t->p.base_sigma_m + v * v) / t->cell;
    double dr = vel ? -vel[0] * dt / t->cell : 0, dq = vel ? vel[1] * dt / t->cell : 0;
    gl__convolve(t, t->P, t->tmp, dr, dq, s);
    t->step = (struct gl__step){.moved = true, .dr = dr, .dq = dq, .s = s};
  }
  double sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += t->P[i];
  const double eps = t->p.reacquire;
  if (!(sum > 1e-30)) { /* everything moved off the window */
    for (size_t i = 0; i < n; i++)
      t->P[i] = 1.0f / (float)n;
    t->step.moved = false;
  } else {
    t->step.sum = sum;
    t->step.eps = eps;
    for (size_t i = 0; i < n; i++)
      t->P[i] = (float)((1 - eps) * t->P[i] / sum + eps / (double)n);
  }
  for (size_t i = 0; i < n; i++)
    t->score[i] = t->head[i] = NAN;
  t->t_us = time_us;
  t->dt = dt;
  t->started = true;
  return 0;
}

void gl_track_window(const struct gl_track *t, int32_t *r0, int32_t *q0, uint32_t *rows,
                     uint32_t *cols) {
  *r0 = t->r0;
  *q0 = t->q0;
  *rows = t->wr;
  *cols = t->wc;
}

float *gl_track_scores(struct gl_track *t) { return t->score; }
float *gl_track_headings(struct gl_track *t) { return t->head; }

/* The mode of a window distribution P: the index of its largest cell. */
static size_t gl__mode(const struct gl_track *t, const float *P) {
  size_t m = 0, n = (size_t)t->wr * t->wc;
  for (size_t i = 1; i < n; i++)
    if (P[i] > P[m])
      m = i;
  return m;
}

void gl_track_scan_box(const struct gl_track *t, int32_t *r0, int32_t *q0, uint32_t *rows,
                       uint32_t *cols) {
  *r0 = *q0 = 0;
  *rows = *cols = 0;
  const size_t n = (size_t)t->wr * t->wc, m = gl__mode(t, t->P);
  const double thr = fmax(1e-4 * t->P[m], 2 * t->p.reacquire / (double)n);
  if (!(t->P[m] > thr))
    return; /* spread evenly: nothing stands out */
  int64_t a = t->wr, b = -1, c = t->wc, d = -1;
  for (uint32_t r = 0; r < t->wr; r++)
    for (uint32_t q = 0; q < t->wc; q++)
      if (t->P[(size_t)r * t->wc + q] > thr) {
        a = r < a ? r : a;
        b = r > b ? r : b;
        c = q < c ? q : c;
        d = q > d ? q : d;
      }
  /* At most scan_cells a side, about the mode. */
  const int64_t S = t->p.scan_cells, mr = (int64_t)(m / t->wc), mq = (int64_t)(m % t->wc);
  if (b - a + 1 > S) {
    a = mr - S / 2 > a ? mr - S / 2 : a;
    b = a + S - 1 < b ? a + S - 1 : b;
  }
  if (d - c + 1 > S) {
    c = mq - S / 2 > c ? mq - S / 2 : c;
    d = c + S - 1 < d ? c + S - 1 : d;
  }
  *r0 = t->r0 + (int32_t)a;
  *q0 = t->q0 + (int32_t)c;
  *rows = (uint32_t)(b - a + 1);
  *cols = (uint32_t)(d - c + 1);
}

/* Moves the window so that local cell (mr, mq) is near its centre. */
static void gl__follow(struct gl_track *t, int64_t mr, int64_t mq) {
  if (t->wr == t->R && t->wc == t->C)
    return;
  int64_t dr = mr - t->wr / 2, dq = mq - t->wc / 2;
  if (llabs(dr) <= t->wr / 4 && llabs(dq) <= t->wc / 4)
    return;
  int64_t nr0 = t->r0 + dr, nq0 = t->q0 + dq;
  nr0 = nr0 < 0 ? 0 : nr0 > (int64_t)(t->R - t->wr) ? (int64_t)(t->R - t->wr) : nr0;
  nq0 = nq0 < 0 ? 0 : nq0 > (int64_t)(t->C - t->wc) ? (int64_t)(t->C - t->wc) : nq0;
  dr = nr0 - t->r0;
  dq = nq0 - t->q0;
  for (int64_t r = 0; r < t->wr; r++)
    for (int64_t q = 0; q < t->wc; q++) {
      int64_t sr = r + dr, sq = q + dq;
      t->tmp[r * t->wc + q] =
          sr >= 0 && sr < t->wr && sq >= 0 && sq < t->wc ? t->P[sr * t->wc + sq] : 0;
    }
  float *x = t->P;
  t->P = t->tmp;
  t->tmp = x;
  t->r0 = (int32_t)nr0;
  t->q0 = (int32_t)nq0;
}

/* The offset of the vertex of the parabola through (-1, log a), (0, log b),
 * (1, log c), b being the largest; clamped to +-1/2 (0 for a flat top). */
static double gl__vertex(double a, double b, double c) {
  const double tiny = 1e-30;
  double la = log(a + tiny), lb = log(b + tiny), lc = log(c + tiny), den = la - 2 * lb + lc;
  if (!(den < 0))
    return 0;
  double d = (la - lc) / (2 * den);
  return d < -0.5 ? -0.5 : d > 0.5 ? 0.5 : d;
}

/* Step 3 on a window distribution P: the position (window cells), the
 * confidence and the radius (m); returns the mode's index. */
static size_t gl__estimate(struct gl_track *t, const float *P, double *er, double *eq,
                           double *conf, double *radius) {
  const uint32_t wc = t->wc;
  const size_t m = gl__mode(t, P);
  const int64_t mr = (int64_t)(m / wc), mq = (int64_t)(m % wc);
  /* Sub-cell: the vertex of the parabola through log P at the mode and its
   * neighbours, along each axis. */
  *er = (double)mr;
  *eq = (double)mq;
  if (mr > 0 && mr + 1 < t->wr)
    *er += gl__vertex(P[m - wc], P[m], P[m + wc]);
  if (mq > 0 && mq + 1 < wc)
    *eq += gl__vertex(P[m - 1], P[m], P[m + 1]);
  const double bin = 1.0 / GL__BINS_PER_CELL, lock_c = t->p.lock_radius_m / t->cell;
  double c = 0;
  memset(t->hist, 0, t->nbins * sizeof(double));
  for (uint32_t r = 0; r < t->wr; r++)
    for (uint32_t q = 0; q < wc; q++) {
      double p = P[(size_t)r * wc + q], d = hypot(r - *er, q - *eq);
      uint32_t b = (uint32_t)(d / bin);
      t->hist[b < t->nbins ? b : t->nbins - 1] += p;
      if (d <= lock_c)
        c += p;
    }
  double cum = 0, rad = 0;
  for (uint32_t b = 0; b < t->nbins; b++) {
    cum += t->hist[b];
    if (cum >= GL__RADIUS_MASS) {
      rad = (b + 1) * bin;
      break;
    }
  }
  *conf = c;
  *radius = fmax(rad, 0.5) * t->cell;
  return m;
}

/* Keeps this frame for the smoother: its posterior, likelihood, window,
 * transition, own estimate and status. */
static void gl__keep(struct gl_track *t) {
  const size_t n = (size_t)t->wr * t->wc;
  t->lag_head = (t->lag_head + 1) % (t->p.fixed_lag + 1);
  struct gl__lag *l = &t->lag[t->lag_head];
  memcpy(l->alpha, t->P, n * sizeof(float));
  if (t->measured)
    memcpy(l->lik, t->tmp, n * sizeof(float));
  else
    for (size_t i = 0; i < n; i++)
      l->lik[i] = 1;
  l->r0 = t->r0;
  l->q0 = t->q0;
  l->step = t->step;
  l->hint_r = t->hint_weak ? NAN : t->hint_r;
  l->hint_q = t->hint_weak ? NAN : t->hint_q;
  l->status = t->status;
  t->stored = !t->step.moved ? 1 : t->stored <= t->p.fixed_lag ? t->stored + 1 : t->stored;
}

bool gl_track_smoothed(struct gl_track *t, struct gl_track_state *out) {
  const uint32_t L = t->p.fixed_lag;
  if (!L || t->stored <= L)
    return false;
  const size_t n = (size_t)t->wr * t->wc;
  const int32_t wr = (int32_t)t->wr, wc = (int32_t)t->wc;
  /* beta_k(x) = sum over x' of T_k+1(x -> x') lik_k+1(x') beta_k+1(x'),
   * from beta_t = 1 back to t - L; T is step 1's move and spread followed
   * by the even spread of eps, and the window's moves between frames. */
  for (size_t i = 0; i < n; i++)
    t->beta[i] = 1;
  for (uint32_t back = 0; back < L; back++) {
    const struct gl__lag *nx = &t->lag[(t->lag_head + L + 1 - back) % (L + 1)];
    const struct gl__lag *cur = &t->lag[(t->lag_head + L + 1 - back - 1) % (L + 1)];
    double gsum = 0;
    for (size_t i = 0; i < n; i++)
      gsum += t->gbuf[i] = nx->lik[i] * t->beta[i];
    gl__convolve(t, t->gbuf, t->gscratch, -nx->step.dr, -nx->step.dq, nx->step.s);
    const double a = (1 - nx->step.eps) / nx->step.sum, b = nx->step.eps / (double)n * gsum;
    /* From the next frame's window to this one's. */
    const int32_t sr = cur->r0 - nx->r0, sq = cur->q0 - nx->q0;
    float mx = 0;
    for (int32_t r = 0; r < wr; r++)
      for (int32_t q = 0; q < wc; q++) {
        int32_t rr = r + sr, qq = q + sq;
        float v = rr >= 0 && rr < wr && qq >= 0 && qq < wc
                      ? (float)(a * t->gbuf[(size_t)rr * wc + qq] + b)
                      : 0;
        t->beta[(size_t)r * wc + q] = v;
        mx = v > mx ? v : mx;
      }
    for (size_t i = 0; mx > 0 && i < n; i++)
      t->beta[i] /= mx;
  }
  const struct gl__lag *old = &t->lag[(t->lag_head + 1) % (L + 1)];
  double z = 0;
  for (size_t i = 0; i < n; i++)
    z += t->gbuf[i] = old->alpha[i] * t->beta[i];
  if (!(z > 0))
    return false;
  for (size_t i = 0; i < n; i++)
    t->gbuf[i] = (float)(t->gbuf[i] / z);
  double er, eq, conf, radius;
  gl__estimate(t, t->gbuf, &er, &eq, &conf, &radius);
  const double gr = old->r0 + er, gq = old->q0 + eq;
  const bool agrees = !isnan(old->hint_r) &&
                      hypot(old->hint_r - gr, old->hint_q - gq) * t->cell <= t->p.lock_radius_m;
  *out = (struct gl_track_state){
      .status = conf >= t->p.lock_confidence && agrees ? GL_TRACK_LOCKED
                : old->status == GL_TRACK_ACQUIRING     ? GL_TRACK_ACQUIRING
                                                        : GL_TRACK_LOST,
      .r = gr,
      .q = gq,
      .radius_m = radius,
      .confidence = conf,
      .heading_deg = NAN,
  };
  return true;
}

void gl_track_update(struct gl_track *t, struct gl_track_state *out) {
  const size_t n = (size_t)t->wr * t->wc;
  const uint32_t wc = t->wc;
  /* 2. Measurement. */
  float smin = INFINITY, smax = -INFINITY;
  for (size_t i = 0; i < n; i++)
    if (!isnan(t->score[i])) {
      smin = t->score[i] < smin ? t->score[i] : smin;
      smax = t->score[i] > smax ? t->score[i] : smax;
    }
  t->measured = smax >= smin;
  if (smax >= smin) {
    const double T = t->p.temperature;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
      double s = isnan(t->score[i]) ? smin : t->score[i];
      t->tmp[i] = (float)exp((s - smax) / T);
      sum += (double)t->P[i] * t->tmp[i];
    }
    if (sum > 1e-30) {
      for (size_t i = 0; i < n; i++)
        t->P[i] = (float)((double)t->P[i] * t->tmp[i] / sum);
    } else {
      double z = 0;
      for (size_t i = 0; i < n; i++)
        z += t->tmp[i];
      for (size_t i = 0; i < n; i++)
        t->P[i] = (float)(t->tmp[i] / z);
    }
  }

  /* 3. Estimate. */
  double er, eq, conf, radius;
  const size_t m = gl__estimate(t, t->P, &er, &eq, &conf, &radius);
  const int64_t mr = (int64_t)(m / wc), mq = (int64_t)(m % wc);
  const double gr = t->r0 + er, gq = t->q0 + eq;

  /* 4. Status. */
  bool jumped = false;
  if (t->status == GL_TRACK_LOCKED && t->have_fix) {
    double lim = t->p.max_speed_mps * t->dt + 2 * t->p.lock_radius_m;
    jumped = hypot(gr - t->last_r, gq - t->last_q) * t->cell > lim;
  }
  /* The frame's own estimate, which owes nothing to the track, confirms
   * it or not. */
  const bool has_hint = !isnan(t->hint_r) && !isnan(t->hint_q) && !t->hint_weak;
  const bool agrees =
      has_hint && hypot(t->hint_r - gr, t->hint_q - gq) * t->cell <= t->p.lock_radius_m;
  t->disagree = has_hint && !agrees ? t->disagree + 1 : has_hint ? 0 : t->disagree;
  t->good = conf >= t->p.lock_confidence && !jumped && agrees ? t->good + 1 : 0;
  if (t->status == GL_TRACK_LOCKED) {
    if (conf < t->p.lost_confidence || jumped || t->disagree >= t->p.lost_frames)
      t->status = GL_TRACK_LOST;
  } else if (t->good >= t->p.lock_frames) {
    t->status = GL_TRACK_LOCKED;
  }
  if (t->p.fixed_lag)
    gl__keep(t);
  t->have_fix = true;
  t->heading = t->head[m];
  t->last_r = gr;
  t->last_q = gq;
  *out = (struct gl_track_state){
      .status = t->status,
      .r = gr,
      .q = gq,
      .radius_m = radius,
      .confidence = conf,
      .heading_deg = t->head[m],
  };
  gl__follow(t, mr, mq);
}

/* --- a tracked frame against a map ---------------------------------------------- */

int gl_track_grid(const struct gl_map *map, const struct gl_loc_fine_frame *ff, uint32_t *rows,
                  uint32_t *cols, double *cell_m) {
  const struct gl_map_dense *d = gl_map_dense(map);
  uint32_t side = gl_loc_fine_frame_side(ff);
  if (!d || d->rows < side || d->cols < side)
    return GL_EINVAL;
  *rows = d->rows - side + 1;
  *cols = d->cols - side + 1;
  *cell_m = d->cell_m;
  return 0;
}

/* The placements the fine stage's run of the frame scored, those in the
 * window, into the window's measurement: each its best over the headings. */
static void gl__take(struct gl_track *t, const struct gl_loc_fine_frame *ff) {
  const int32_t *pr, *pq;
  const float *score, *headings;
  uint32_t H;
  size_t P = gl_loc_fine_frame_scores(ff, &pr, &pq, &score, &headings, &H);
  for (size_t p = 0; p < P; p++) {
    int64_t r = pr[p] - t->r0, q = pq[p] - t->q0;
    if (r < 0 || r >= t->wr || q < 0 || q >= t->wc)
      continue;
    uint32_t bh = 0;
    for (uint32_t h = 1; h < H; h++)
      if (score[p * H + h] > score[p * H + bh])
        bh = h;
    t->score[r * t->wc + q] = score[p * H + bh];
    t->head[r * t->wc + q] = headings[bh];
  }
}

int gl_track_frame(struct gl_track *t, struct gl_loc_fine_frame *ff, struct gl_map *map,
                   uint64_t time_us, const double *vel, double hint_lat, double hint_lon,
                   double hint_confidence, struct gl_track_fix *out, char *err, size_t errlen) {
  uint32_t R, C;
  double cell;
  if (gl_track_grid(map, ff, &R, &C, &cell) || R != t->R || C != t->C || cell != t->cell)
    return gl_fail(err, errlen, GL_EINVAL, "the map's dense grid is not the tracker's");
  const struct gl_map_dense *d = gl_map_dense(map);
  const double half = gl_loc_fine_frame_side(ff) / 2.0;
  double hr = NAN, hq = NAN, x, y;
  if (!isnan(hint_lat) && !gl_map_wgs84_to_xy(map, hint_lat, hint_lon, &x, &y)) {
    hr = (d->y0 - y) / cell - half;
    hq = (x - d->x0) / cell - half;
  }
  int rc = gl_track_predict(t, time_us, vel, hr, hq, hint_confidence, err, errlen);
  if (rc)
    return rc;
  int32_t r0, q0;
  uint32_t wr, wc;
  gl_track_window(t, &r0, &q0, &wr, &wc);
  /* The frame's own placements (the global stage's top K), then the box
   * around the predicted track, where a locked track's heading bounds the
   * headings a placement may take (step 2). */
  double hc = t->status == GL_TRACK_LOCKED ? t->heading : NAN;
  double tol = t->p.heading_window_deg + t->p.turn_rate_dps * t->dt;
  gl__take(t, ff);
  int32_t br, bq;
  uint32_t brows, bcols;
  gl_track_scan_box(t, &br, &bq, &brows, &bcols);
  if (brows && bcols) {
    if ((rc = gl_loc_fine_frame_scan(ff, map, br, bq, brows, bcols, hc, tol, t->bscore, t->bhead,
                                     err, errlen)))
      return rc;
    for (uint32_t a = 0; a < brows; a++)
      for (uint32_t b = 0; b < bcols; b++) {
        int64_t r = (int64_t)br + a - t->r0, q = (int64_t)bq + b - t->q0;
        float v = t->bscore[a * bcols + b];
        if (isnan(v) || r < 0 || r >= t->wr || q < 0 || q >= t->wc)
          continue;
        t->score[r * t->wc + q] = v;
        t->head[r * t->wc + q] = t->bhead[a * bcols + b];
      }
  }
  gl_track_update(t, &out->s);
  x = d->x0 + (out->s.q + half) * cell;
  y = d->y0 - (out->s.r + half) * cell;
  out->has_smoothed = gl_track_smoothed(t, &out->ss);
  if (gl_map_xy_to_wgs84(map, x, y, &out->lat, &out->lon) ||
      (out->has_smoothed &&
       gl_map_xy_to_wgs84(map, d->x0 + (out->ss.q + half) * cell, d->y0 - (out->ss.r + half) * cell,
                          &out->slat, &out->slon))) {
    /* The filter has taken a frame that cannot be answered: it starts
     * afresh, so that a caller counting the frames it answered stays in
     * step with the smoother's. */
    gl_track_reset(t);
    return gl_fail(err, errlen, GL_EINTERNAL, "PROJ cannot convert the track to WGS84");
  }
  return 0;
}
