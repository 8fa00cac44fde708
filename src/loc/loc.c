/* Mean-shift clustering of matched tiles into ranked estimates. The method
 * and its choices are described at the top of loc.h. */
#include "loc/loc.h"

#include <geodesic.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

/* WGS84, the datum of every coordinate on the wire and in the tiles table. */
#define GL__LOC_WGS84_A 6378137.0
#define GL__LOC_WGS84_F (1.0 / 298.257223563)

/* exp() of anything below this is a subnormal or zero. Clamping the
 * exponents keeps every weight positive, so no sum of weights is ever 0 and
 * no mean becomes 0/0, whatever the temperature. */
#define GL__LOC_EXP_MIN (-700.0)

#define GL__LOC_DEG (3.14159265358979323846 / 180.0)

struct gl__loc_cluster {
  double mode_x, mode_y; /* the mode in the frame of the overall best match */
  bool converged;        /* its mean-shift run ended on a step shorter than tol_m */
  uint32_t best;         /* input index of the best member */
  uint32_t count;        /* members */
  uint32_t first;        /* offset of the members in ws->members/support */
  double score;          /* soft maximum of member scores */
};

struct gl_loc_workspace {
  size_t cap;
  struct geod_geodesic geod;
  double *s;                  /* [cap] scores, copied so that the sort reads an array */
  double *w;                  /* [cap] weights exp((s - s_max) / T) */
  double *x, *y;              /* [cap] east/north metres from the overall best match */
  double *lx, *ly;            /* [cap] east/north metres from the cluster's best match */
  double *k;                  /* [cap] kernel values of one mean-shift step */
  uint32_t *order;            /* [cap] input indices by descending score */
  uint32_t *label;            /* [cap] cluster of each match */
  uint32_t *members;          /* [cap] input indices grouped by cluster, by score */
  int64_t *support;           /* [cap] tile ids laid out like members */
  struct gl__loc_cluster *cl; /* [cap] modes, then clusters */
  uint32_t *rank;             /* [cap] clusters by descending score */
  double *cscore;             /* [cap] cluster scores, for the sort */
  uint32_t *cbest;            /* [cap] input index of each cluster's best match */
};

void gl_loc_params_init(struct gl_loc_params *p) {
  if (!p)
    return;
  /* One tile of the default map grid (320 m tiles on an 80 m stride). */
  p->bandwidth_m = 320.0;
  /* Cosine similarities of the top tiles typically differ by a few
   * hundredths; at T = 0.05 a lead of 0.05 is worth a factor e. */
  p->temperature = 0.05;
  p->min_radius_m = 40.0;
  p->merge_m = 0.0;
  p->tol_m = 0.01;
  p->max_iter = 100;
  p->kernel = GL_LOC_KERNEL_GAUSSIAN;
}

void gl_loc_workspace_destroy(struct gl_loc_workspace *ws) {
  if (!ws)
    return;
  free(ws->cbest);
  free(ws->cscore);
  free(ws->rank);
  free(ws->cl);
  free(ws->support);
  free(ws->members);
  free(ws->label);
  free(ws->order);
  free(ws->k);
  free(ws->ly);
  free(ws->lx);
  free(ws->y);
  free(ws->x);
  free(ws->w);
  free(ws->s);
  free(ws);
}

int gl_loc_workspace_create(size_t max_matches, struct gl_loc_workspace **out) {
  struct gl_loc_workspace *ws;
  size_t n = max_matches;

  if (!out)
    return GL_EINVAL;
  *out = NULL;
  if (n == 0 || n > GL_LOC_MAX_MATCHES)
    return GL_EINVAL;
  ws = calloc(1, sizeof *ws);
  if (!ws)
    return GL_ENOMEM;
  ws->cap = n;
  geod_init(&ws->geod, GL__LOC_WGS84_A, GL__LOC_WGS84_F);
  /* Every array is freed by destroy, which tolerates the NULL ones left by
   * a failure half-way, so one check covers them all. */
  ws->s = calloc(n, sizeof *ws->s);
  ws->w = calloc(n, sizeof *ws->w);
  ws->x = calloc(n, sizeof *ws->x);
  ws->y = calloc(n, sizeof *ws->y);
  ws->lx = calloc(n, sizeof *ws->lx);
  ws->ly = calloc(n, sizeof *ws->ly);
  ws->k = calloc(n, sizeof *ws->k);
  ws->order = calloc(n, sizeof *ws->order);
  ws->label = calloc(n, sizeof *ws->label);
  ws->members = calloc(n, sizeof *ws->members);
  ws->support = calloc(n, sizeof *ws->support);
  ws->cl = calloc(n, sizeof *ws->cl);
  ws->rank = calloc(n, sizeof *ws->rank);
  ws->cscore = calloc(n, sizeof *ws->cscore);
  ws->cbest = calloc(n, sizeof *ws->cbest);
  if (!ws->s || !ws->w || !ws->x || !ws->y || !ws->lx || !ws->ly || !ws->k || !ws->order ||
      !ws->label || !ws->members || !ws->support || !ws->cl || !ws->rank || !ws->cscore ||
      !ws->cbest) {
    gl_loc_workspace_destroy(ws);
    return GL_ENOMEM;
  }
  *out = ws;
  return GL_OK;
}

/* True when item a ranks before item b: higher key first, then lower tie
 * value (the input index), so that the order is total and the results do not
 * depend on the sort algorithm. */
static bool gl__loc_before(uint32_t a, uint32_t b, const double *key, const uint32_t *tie) {
  uint32_t ta, tb;

  if (key[a] != key[b])
    return key[a] > key[b];
  ta = tie ? tie[a] : a;
  tb = tie ? tie[b] : b;
  return ta < tb;
}

static void gl__loc_sift(uint32_t *idx, size_t root, size_t n, const double *key,
                         const uint32_t *tie) {
  for (;;) {
    size_t child = 2 * root + 1;
    uint32_t tmp;

    if (child >= n)
      return;
    /* The heap keeps the item that ranks last on top. */
    if (child + 1 < n && gl__loc_before(idx[child], idx[child + 1], key, tie))
      child++;
    if (!gl__loc_before(idx[root], idx[child], key, tie))
      return;
    tmp = idx[root];
    idx[root] = idx[child];
    idx[child] = tmp;
    root = child;
  }
}

/* Sorts idx[0..n) into ranking order. Heapsort rather than qsort(): glibc's
 * qsort() may call malloc() for large arrays, and this path allocates
 * nothing. */
static void gl__loc_sort(uint32_t *idx, size_t n, const double *key, const uint32_t *tie) {
  for (size_t i = n / 2; i-- > 0;)
    gl__loc_sift(idx, i, n, key, tie);
  for (size_t end = n; end-- > 1;) {
    uint32_t tmp = idx[0];

    idx[0] = idx[end];
    idx[end] = tmp;
    gl__loc_sift(idx, 0, end, key, tie);
  }
}

static double gl__loc_exp(double v) { return exp(v < GL__LOC_EXP_MIN ? GL__LOC_EXP_MIN : v); }

/* East/north metres of (lat, lon) seen from (lat0, lon0): the azimuthal
 * equidistant projection, exact in distance and azimuth from the origin. */
static void gl__loc_project(const struct geod_geodesic *g, double lat0, double lon0, double lat,
                            double lon, double *east, double *north) {
  double s12 = 0.0, azi1 = 0.0, azi2 = 0.0;

  geod_inverse(g, lat0, lon0, lat, lon, &s12, &azi1, &azi2);
  *east = s12 * sin(azi1 * GL__LOC_DEG);
  *north = s12 * cos(azi1 * GL__LOC_DEG);
}

static bool gl__loc_params_ok(const struct gl_loc_params *p) {
  return isfinite(p->bandwidth_m) && p->bandwidth_m > 0.0 && isfinite(p->temperature) &&
         p->temperature > 0.0 && isfinite(p->min_radius_m) && p->min_radius_m >= 0.0 &&
         isfinite(p->merge_m) && p->merge_m >= 0.0 && isfinite(p->tol_m) && p->tol_m > 0.0 &&
         p->max_iter >= 1 &&
         (p->kernel == GL_LOC_KERNEL_GAUSSIAN || p->kernel == GL_LOC_KERNEL_FLAT);
}

static bool gl__loc_match_ok(const struct gl_loc_match *m) {
  /* geodesic.h accepts longitudes in [-540, 540]; latitudes beyond the
   * poles mean a corrupt tiles table, not a place. */
  return isfinite(m->lat) && m->lat >= -90.0 && m->lat <= 90.0 && isfinite(m->lon) &&
         m->lon >= -540.0 && m->lon <= 540.0 && isfinite(m->score);
}

/* exp(x) for -708 <= x <= 0, within two ulps, for the kernel of the
 * mean-shift: written without branches or calls so that the loop over the
 * matches runs in SIMD registers (libm's exp() is a call per match, and the
 * kernel was most of the clustering time). Its last bit moves a mode by a
 * rounding error, far below tol_m; estimates are computed from the members
 * a mode gathers, with libm, not from the mode.
 *
 * x = n ln2 + r with |r| <= ln2 / 2 (Cody and Waite: ln2 in two parts, the
 * first with enough trailing zero bits that n * GL__LOC_LN2_HI is exact),
 * exp(r) by its Taylor series to r^13 (truncation error below 1e-17), and
 * 2^n built directly in the exponent bits. */
#define GL__LOC_LOG2E 1.4426950408889634
#define GL__LOC_LN2_HI 6.93147180369123816490e-01
#define GL__LOC_LN2_LO 1.90821492927058770002e-10
#define GL__LOC_ROUND 6755399441055744.0 /* 1.5 * 2^52: adding it rounds to an integer */

static inline double gl__loc_exp_neg(double x) {
  double t = x * GL__LOC_LOG2E + GL__LOC_ROUND;
  double n = t - GL__LOC_ROUND;
  double r = (x - n * GL__LOC_LN2_HI) - n * GL__LOC_LN2_LO;
  /* Estrin's scheme: four levels of multiply-add instead of Horner's
   * thirteen, so that the vector units are not waiting on one long chain. */
  double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  double q0 = 1.0 + r, q1 = 1.0 / 2 + r * (1.0 / 6), q2 = 1.0 / 24 + r * (1.0 / 120);
  double q3 = 1.0 / 720 + r * (1.0 / 5040), q4 = 1.0 / 40320 + r * (1.0 / 362880);
  double q5 = 1.0 / 3628800 + r * (1.0 / 39916800);
  double q6 = 1.0 / 479001600 + r * (1.0 / 6227020800);
  double s0 = q0 + r2 * q1, s1 = q2 + r2 * q3, s2 = q4 + r2 * q5;
  double p = (s0 + r4 * s1) + r8 * (s2 + r4 * q6);
  /* The low bits of t hold n (-1022 <= n <= 0) in two's complement;
   * shifted into the exponent field and biased they make 2^n. */
  uint64_t bits;
  memcpy(&bits, &t, sizeof bits);
  bits = (bits + 1023u) << 52;
  double scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* One mean-shift step from (cx, cy): the kernel weights K(|x_j - c|) w_j
 * of every match into k, and their sums, weighted by x, by y and plain,
 * into s[0..2]. The kernel loop runs apart from the sums so that it
 * vectorizes, and its exponent is clamped in a loop of its own (a select
 * among the arithmetic keeps GCC from vectorizing): below -708 the pull of
 * a match dozens of bandwidths away becomes exp(-708), about 3e-308,
 * instead of a subnormal or zero, nil either way. The sums run in four
 * lanes (match j in lane j % 4), added up in a fixed order at the end.
 * Cloned for AVX2 (4 doubles a register, the baseline has 2); C17 does not
 * contract a * b + c into an FMA, and the order of every sum is written out,
 * so both clones compute the same bits. */
__attribute__((target_clones("arch=x86-64-v3", "default"))) static void
gl__loc_step(double *restrict k, const double *restrict x, const double *restrict y,
             const double *restrict w, size_t n, double cx, double cy, double h2,
             enum gl_loc_kernel kernel, double s[3]) {
  const double inv_2h2 = 1.0 / (2.0 * h2);
  double lx[4] = {0.0, 0.0, 0.0, 0.0}, ly[4] = {0.0, 0.0, 0.0, 0.0};
  double lw[4] = {0.0, 0.0, 0.0, 0.0};
  size_t j;

  if (kernel == GL_LOC_KERNEL_FLAT) {
#pragma omp simd
    for (j = 0; j < n; j++) {
      double dx = x[j] - cx, dy = y[j] - cy;

      k[j] = dx * dx + dy * dy <= h2 ? w[j] : 0.0;
    }
  } else {
#pragma omp simd
    for (j = 0; j < n; j++) {
      double dx = x[j] - cx, dy = y[j] - cy, e = -(dx * dx + dy * dy) * inv_2h2;

      k[j] = e < -708.0 ? -708.0 : e;
    }
#pragma omp simd
    for (j = 0; j < n; j++)
      k[j] = gl__loc_exp_neg(k[j]) * w[j];
  }
  for (j = 0; j + 4 <= n; j += 4) {
    for (size_t l = 0; l < 4; l++) {
      lx[l] += k[j + l] * x[j + l];
      ly[l] += k[j + l] * y[j + l];
      lw[l] += k[j + l];
    }
  }
  for (size_t l = 0; j < n; j++, l++) {
    lx[l] += k[j] * x[j];
    ly[l] += k[j] * y[j];
    lw[l] += k[j];
  }
  s[0] = (lx[0] + lx[1]) + (lx[2] + lx[3]);
  s[1] = (ly[0] + ly[1]) + (ly[2] + ly[3]);
  s[2] = (lw[0] + lw[1]) + (lw[2] + lw[3]);
}

/* Climbs from (*px, *py) to a mode of the weighted kernel density and
 * returns true, leaving the mode in (*px, *py); or returns false as soon as
 * the climb comes within sqrt(stop2) metres of one of the n_modes modes
 * already found whose own run converged: it is then climbing to that mode,
 * which would be dropped as a duplicate at the end (the same reasoning that
 * lets a match near a mode seed nothing, applied along the way; most seeds
 * of scattered matches end there). */
static bool gl__loc_shift(struct gl_loc_workspace *ws, size_t n, size_t n_modes,
                          const struct gl_loc_params *p, double stop2, double *px, double *py,
                          bool *converged) {
  const double h2 = p->bandwidth_m * p->bandwidth_m, tol2 = p->tol_m * p->tol_m;
  double cx = *px, cy = *py;

  *converged = false;
  for (int it = 0; it < p->max_iter; it++) {
    double sum[3], nx, ny, step2;

    gl__loc_step(ws->k, ws->x, ws->y, ws->w, n, cx, cy, h2, p->kernel, sum);
    /* A flat window can end up empty (matches on a ring around the mean);
     * the point reached so far is then as good a mode as any. */
    if (!(sum[2] > 0.0))
      break;
    nx = sum[0] / sum[2];
    ny = sum[1] / sum[2];
    /* Compared squared: hypot() is a slow libm call. */
    step2 = (nx - cx) * (nx - cx) + (ny - cy) * (ny - cy);
    cx = nx;
    cy = ny;
    if (step2 < tol2) {
      *converged = true;
      break;
    }
    for (size_t m = 0; m < n_modes; m++) {
      double dx = ws->cl[m].mode_x - cx, dy = ws->cl[m].mode_y - cy;

      if (ws->cl[m].converged && dx * dx + dy * dy <= stop2)
        return false;
    }
  }
  *px = cx;
  *py = cy;
  return true;
}

/* Finishes cluster c: projects its members about its best match, writes the
 * weighted centre, spread and score into e. */
static void gl__loc_finish(struct gl_loc_workspace *ws, const struct gl_loc_params *p,
                           const struct gl_loc_match *m, const struct gl__loc_cluster *c,
                           struct gl_loc_estimate *e) {
  const struct gl_loc_match *b = &m[c->best];
  const uint32_t *mem = ws->members + c->first;
  double sw = 0.0, sx = 0.0, sy = 0.0, ss = 0.0, cx, cy, dist, azi, lat = b->lat, lon = b->lon;
  double azi2 = 0.0;

  for (uint32_t k = 0; k < c->count; k++) {
    const struct gl_loc_match *mk = &m[mem[k]];
    /* Relative to the cluster's best score, not the overall one, so that
     * the weights of a weak cluster cannot all round to the clamp. */
    double wk = gl__loc_exp((mk->score - b->score) / p->temperature);

    gl__loc_project(&ws->geod, b->lat, b->lon, mk->lat, mk->lon, &ws->lx[k], &ws->ly[k]);
    sw += wk;
    sx += wk * ws->lx[k];
    sy += wk * ws->ly[k];
  }
  cx = sx / sw;
  cy = sy / sw;
  for (uint32_t k = 0; k < c->count; k++) {
    const struct gl_loc_match *mk = &m[mem[k]];
    double wk = gl__loc_exp((mk->score - b->score) / p->temperature);
    double dx = ws->lx[k] - cx, dy = ws->ly[k] - cy;

    ss += wk * (dx * dx + dy * dy);
  }
  dist = hypot(cx, cy);
  azi = atan2(cx, cy) / GL__LOC_DEG;
  /* Called even at distance 0, so that the longitude comes back wrapped
   * into [-180, 180] like every other centre. */
  geod_direct(&ws->geod, b->lat, b->lon, azi, dist, &lat, &lon, &azi2);

  e->lat = lat;
  e->lon = lon;
  e->score = c->score;
  e->best_score = b->score;
  e->confidence = 0.0;
  e->radius_m = sqrt(ss / sw);
  if (!(e->radius_m >= p->min_radius_m))
    e->radius_m = p->min_radius_m;
  e->heading_deg = NAN;
  e->tile_id = b->tile_id;
  e->n_support = c->count;
  e->support = ws->support + c->first;
}

int gl_loc_cluster(struct gl_loc_workspace *ws, const struct gl_loc_params *p,
                   const struct gl_loc_match *m, size_t n, struct gl_loc_estimate *out,
                   size_t max_out, size_t *n_out) {
  struct gl_loc_params defaults;
  const struct gl_loc_match *best;
  double merge2, cover2, stop2, top, total;
  size_t n_modes = 0, n_cl = 0, n_ret;

  if (n_out)
    *n_out = 0;
  if (!ws || !n_out || (n > 0 && !m) || (max_out > 0 && !out) || n > ws->cap)
    return GL_EINVAL;
  if (!p) {
    gl_loc_params_init(&defaults);
    p = &defaults;
  }
  if (!gl__loc_params_ok(p))
    return GL_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!gl__loc_match_ok(&m[i]))
      return GL_EINVAL;
  if (n == 0)
    return GL_OK;

  /* 1. Rank the matches and weight them against the best. */
  for (size_t i = 0; i < n; i++) {
    ws->s[i] = m[i].score;
    ws->order[i] = (uint32_t)i;
  }
  gl__loc_sort(ws->order, n, ws->s, NULL);
  best = &m[ws->order[0]];
  for (size_t i = 0; i < n; i++)
    ws->w[i] = gl__loc_exp((m[i].score - best->score) / p->temperature);

  /* 2. Place every match in metres about the best one. */
  for (size_t i = 0; i < n; i++)
    gl__loc_project(&ws->geod, best->lat, best->lon, m[i].lat, m[i].lon, &ws->x[i], &ws->y[i]);

  /* 3. Mean-shift from the matches not yet covered by a mode. */
  merge2 = p->merge_m > 0.0 ? p->merge_m * p->merge_m : p->bandwidth_m * p->bandwidth_m;
  cover2 = 0.25 * p->bandwidth_m * p->bandwidth_m;
  /* A climb stops near a converged mode at half the bandwidth, the distance
   * at which a match seeds nothing, or at half the merge distance when that
   * is smaller: a small merge_m asks for nearby modes to be kept apart. */
  stop2 = fmin(cover2, 0.25 * merge2);
  for (size_t r = 0; r < n; r++) {
    uint32_t i = ws->order[r];
    double cx = ws->x[i], cy = ws->y[i];
    bool keep = true, converged;

    for (size_t k = 0; k < n_modes && keep; k++) {
      double dx = ws->cl[k].mode_x - cx, dy = ws->cl[k].mode_y - cy;

      keep = dx * dx + dy * dy > cover2;
    }
    if (!keep)
      continue;
    if (!gl__loc_shift(ws, n, n_modes, p, stop2, &cx, &cy, &converged))
      continue;
    for (size_t k = 0; k < n_modes && keep; k++) {
      double dx = ws->cl[k].mode_x - cx, dy = ws->cl[k].mode_y - cy;

      keep = dx * dx + dy * dy >= merge2;
    }
    if (!keep)
      continue;
    ws->cl[n_modes].mode_x = cx;
    ws->cl[n_modes].mode_y = cy;
    ws->cl[n_modes].converged = converged;
    ws->cl[n_modes].count = 0;
    n_modes++;
  }

  /* Each match joins its nearest mode; ties go to the earlier mode, which
   * came from the better seed. */
  for (size_t i = 0; i < n; i++) {
    double best_d2 = INFINITY;
    uint32_t lab = 0;

    for (size_t k = 0; k < n_modes; k++) {
      double dx = ws->cl[k].mode_x - ws->x[i], dy = ws->cl[k].mode_y - ws->y[i];
      double d2 = dx * dx + dy * dy;

      if (d2 < best_d2) {
        best_d2 = d2;
        lab = (uint32_t)k;
      }
    }
    ws->label[i] = lab;
    ws->cl[lab].count++;
  }

  /* Group the members by cluster, keeping score order inside each group, and
   * drop the modes nobody joined (possible when a seed lies nearer to
   * another mode than to the one it climbed to). */
  {
    uint32_t off = 0;

    for (size_t k = 0; k < n_modes; k++) {
      ws->cl[k].first = off;
      off += ws->cl[k].count;
      ws->cl[k].count = 0;
    }
  }
  for (size_t r = 0; r < n; r++) {
    uint32_t i = ws->order[r];
    struct gl__loc_cluster *c = &ws->cl[ws->label[i]];
    uint32_t at = c->first + c->count++;

    if (c->count == 1)
      c->best = i;
    ws->members[at] = i;
    ws->support[at] = m[i].tile_id;
  }
  for (size_t k = 0; k < n_modes; k++) {
    if (ws->cl[k].count == 0)
      continue;
    ws->cl[n_cl++] = ws->cl[k];
  }

  /* 4-5. Score the clusters, rank them, finish the best max_out. */
  for (size_t k = 0; k < n_cl; k++) {
    const struct gl__loc_cluster *c = &ws->cl[k];
    const uint32_t *mem = ws->members + c->first;
    double top_s = m[c->best].score, sw = 0.0;

    for (uint32_t j = 0; j < c->count; j++)
      sw += gl__loc_exp((m[mem[j]].score - top_s) / p->temperature);
    ws->cl[k].score = top_s + p->temperature * log(sw);
    ws->cscore[k] = ws->cl[k].score;
    ws->cbest[k] = c->best;
    ws->rank[k] = (uint32_t)k;
  }
  gl__loc_sort(ws->rank, n_cl, ws->cscore, ws->cbest);

  n_ret = n_cl < max_out ? n_cl : max_out;
  for (size_t r = 0; r < n_ret; r++)
    gl__loc_finish(ws, p, m, &ws->cl[ws->rank[r]], &out[r]);
  if (n_ret == 0)
    return GL_OK;
  top = out[0].score;
  total = 0.0;
  for (size_t r = 0; r < n_ret; r++) {
    out[r].confidence = gl__loc_exp((out[r].score - top) / p->temperature);
    total += out[r].confidence;
  }
  for (size_t r = 0; r < n_ret; r++)
    out[r].confidence /= total;
  *n_out = n_ret;
  return GL_OK;
}
