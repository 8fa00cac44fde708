/* Clustering of matched tiles: cases small enough to check by hand.
 *
 * Matches are laid out with PROJ's geod_direct() at known distances and
 * azimuths from a base point, and results are checked with geod_inverse(),
 * so the expectations never rely on the frame the code under test uses. */
#include <geodesic.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "core/err.h"
#include "loc/loc.h"
#include "test.h"

#define T_DEFAULT 0.05
#define DEG (3.14159265358979323846 / 180.0)

static struct geod_geodesic wgs84;

/* A match `dist` metres from (lat, lon) towards azimuth `azi` degrees. */
static struct gl_loc_match at(int64_t id, double lat, double lon, double azi, double dist,
                              double score) {
  struct gl_loc_match m = {.tile_id = id, .score = score};
  double azi2;

  geod_direct(&wgs84, lat, lon, azi, dist, &m.lat, &m.lon, &azi2);
  return m;
}

static double dist_m(double lat1, double lon1, double lat2, double lon2) {
  double s12, a1, a2;

  geod_inverse(&wgs84, lat1, lon1, lat2, lon2, &s12, &a1, &a2);
  return s12;
}

/* Softmax weight of a score against the best one, as loc.h defines it. */
static double wt(double s, double best) { return exp((s - best) / T_DEFAULT); }

static struct gl_loc_workspace *ws_new(size_t cap) {
  struct gl_loc_workspace *ws = NULL;
  int rc = gl_loc_workspace_create(cap, &ws);

  CHECK_EQ_INT(rc, 0);
  return ws;
}

static void test_one(void) {
  struct gl_loc_workspace *ws = ws_new(16);
  struct gl_loc_match m = {.tile_id = 42, .lat = 47.3769, .lon = 8.5417, .score = 0.83};
  struct gl_loc_estimate e[4];
  size_t n_out = 99;

  if (!ws)
    return;
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, &m, 1, e, 4, &n_out), 0);
  if (CHECK_EQ_U64(n_out, 1)) {
    CHECK(dist_m(e[0].lat, e[0].lon, m.lat, m.lon) < 1e-6);
    CHECK(fabs(e[0].confidence - 1.0) < 1e-12);
    CHECK(fabs(e[0].score - 0.83) < 1e-12);
    CHECK(fabs(e[0].best_score - 0.83) < 1e-12);
    /* One tile says nothing about spread: the floor applies. */
    CHECK(fabs(e[0].radius_m - 40.0) < 1e-12);
    CHECK_EQ_INT(e[0].tile_id, 42);
    CHECK_EQ_U64(e[0].n_support, 1);
    CHECK_EQ_INT(e[0].support[0], 42);
  }
  gl_loc_workspace_destroy(ws);
}

/* Two groups 20 km apart. Group A (near Zurich): a 0.90 tile at P and a
 * 0.85 tile 100 m north of P. Group B: a 0.88 tile at Q and a 0.88 tile
 * 120 m east of Q. The groups come in mixed order. */
static void test_two_groups(void) {
  struct gl_loc_workspace *ws = ws_new(16);
  const double plat = 47.0, plon = 8.0;
  struct gl_loc_match q = at(0, plat, plon, 90.0, 20000.0, 0.0);
  struct gl_loc_match m[4];
  struct gl_loc_estimate e[4];
  size_t n_out = 0;
  double wa, wb, sa, sb, ca, cb, north;

  if (!ws)
    return;
  m[0] = at(11, q.lat, q.lon, 90.0, 120.0, 0.88);
  m[1] = at(1, plat, plon, 0.0, 0.0, 0.90);
  m[2] = at(10, q.lat, q.lon, 0.0, 0.0, 0.88);
  m[3] = at(2, plat, plon, 0.0, 100.0, 0.85);

  for (int kernel = 0; kernel < 2; kernel++) {
    struct gl_loc_params p;

    gl_loc_params_init(&p);
    p.kernel = kernel ? GL_LOC_KERNEL_FLAT : GL_LOC_KERNEL_GAUSSIAN;
    CHECK_EQ_INT(gl_loc_cluster(ws, &p, m, 4, e, 4, &n_out), 0);
    if (!CHECK_EQ_U64(n_out, 2))
      continue;

    /* Scores: soft maxima. A = 0.90 + T log(1 + e^-1) = 0.915663,
     * B = 0.88 + T log 2 = 0.914657, so A ranks first by a hair. */
    sa = 0.90 + T_DEFAULT * log(1.0 + wt(0.85, 0.90));
    sb = 0.88 + T_DEFAULT * log(2.0);
    CHECK(fabs(e[0].score - sa) < 1e-12);
    CHECK(fabs(e[1].score - sb) < 1e-12);
    CHECK(e[0].score > e[1].score);
    CHECK_EQ_INT(e[0].tile_id, 1);
    /* B's tiles tie; the one first in the input counts as the best. */
    CHECK_EQ_INT(e[1].tile_id, 11);

    /* Confidences: softmax of score / T. */
    ca = 1.0 / (1.0 + exp((sb - sa) / T_DEFAULT));
    cb = 1.0 - ca;
    CHECK(fabs(e[0].confidence - ca) < 1e-12);
    CHECK(fabs(e[1].confidence - cb) < 1e-12);
    CHECK(fabs(e[0].confidence + e[1].confidence - 1.0) < 1e-12);

    /* A's centre: on the meridian of P, 100 * wb / (wa + wb) m north. */
    wa = 1.0;
    wb = wt(0.85, 0.90);
    north = 100.0 * wb / (wa + wb);
    {
      struct gl_loc_match want = at(0, plat, plon, 0.0, north, 0.0);

      CHECK(dist_m(e[0].lat, e[0].lon, want.lat, want.lon) < 0.01);
      CHECK(fabs(dist_m(e[0].lat, e[0].lon, plat, plon) - north) < 0.01);
    }
    /* B's centre: halfway between its equal tiles. */
    CHECK(fabs(dist_m(e[1].lat, e[1].lon, m[0].lat, m[0].lon) - 60.0) < 0.01);
    CHECK(fabs(dist_m(e[1].lat, e[1].lon, m[2].lat, m[2].lon) - 60.0) < 0.01);

    /* Membership and support order (best first). */
    CHECK_EQ_U64(e[0].n_support, 2);
    CHECK_EQ_U64(e[1].n_support, 2);
    CHECK_EQ_INT(e[0].support[0], 1);
    CHECK_EQ_INT(e[0].support[1], 2);
    CHECK_EQ_INT(e[1].support[0], 11);
    CHECK_EQ_INT(e[1].support[1], 10);
    /* Radius of B: both members 60 m from the centre. Of A: the weighted
     * RMS sqrt(wa wb) / (wa + wb) * 100 = 44.3 m, just above the floor. */
    CHECK(fabs(e[1].radius_m - 60.0) < 0.01);
    CHECK(fabs(e[0].radius_m - sqrt(wa * wb) / (wa + wb) * 100.0) < 0.01);
    CHECK(e[0].radius_m > 40.0);
  }

  /* Only the best one asked for: its confidence is then 1. */
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 4, e, 1, &n_out), 0);
  if (CHECK_EQ_U64(n_out, 1)) {
    CHECK_EQ_INT(e[0].tile_id, 1);
    CHECK(fabs(e[0].confidence - 1.0) < 1e-12);
  }
  /* max_out 0: valid, nothing written. */
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 4, NULL, 0, &n_out), 0);
  CHECK_EQ_U64(n_out, 0);
  gl_loc_workspace_destroy(ws);
}

/* The weighted centre satisfies sum w_i (x_i - c) = 0. Checked here from
 * the centre's own point of view with geod_inverse(), for an irregular
 * group, independently of any projection. */
static void test_weighted_mean_property(void) {
  struct gl_loc_workspace *ws = ws_new(16);
  const double lat = -33.86, lon = 151.21;
  struct gl_loc_match m[5];
  struct gl_loc_estimate e[2];
  size_t n_out = 0;
  double sx = 0.0, sy = 0.0, sw = 0.0;

  if (!ws)
    return;
  m[0] = at(1, lat, lon, 0.0, 0.0, 0.91);
  m[1] = at(2, lat, lon, 17.0, 80.0, 0.89);
  m[2] = at(3, lat, lon, 133.0, 110.0, 0.86);
  m[3] = at(4, lat, lon, 250.0, 95.0, 0.90);
  m[4] = at(5, lat, lon, 301.0, 140.0, 0.84);
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 5, e, 2, &n_out), 0);
  if (!CHECK_EQ_U64(n_out, 1)) {
    gl_loc_workspace_destroy(ws);
    return;
  }
  for (int i = 0; i < 5; i++) {
    double s12, a1, a2, w = wt(m[i].score, 0.91);

    geod_inverse(&wgs84, e[0].lat, e[0].lon, m[i].lat, m[i].lon, &s12, &a1, &a2);
    sx += w * s12 * sin(a1 * DEG);
    sy += w * s12 * cos(a1 * DEG);
    sw += w;
  }
  CHECK(hypot(sx, sy) / sw < 0.01);
  CHECK_EQ_U64(e[0].n_support, 5);
  CHECK_EQ_INT(e[0].support[0], 1);
  CHECK_EQ_INT(e[0].support[1], 4);
  CHECK_EQ_INT(e[0].support[4], 5);
  gl_loc_workspace_destroy(ws);
}

static void test_antimeridian(void) {
  struct gl_loc_workspace *ws = ws_new(16);
  struct gl_loc_match m[4];
  struct gl_loc_estimate e[4];
  size_t n_out = 0;

  if (!ws)
    return;
  /* Four equal tiles 50 m around (10 N, 180): two on each side of the
   * antimeridian, one written as +180-ish and one as -180-ish. */
  m[0] = at(1, 10.0, 180.0, 90.0, 50.0, 0.8);
  m[1] = at(2, 10.0, 180.0, 270.0, 50.0, 0.8);
  m[2] = at(3, 10.0, 180.0, 0.0, 50.0, 0.8);
  m[3] = at(4, 10.0, 180.0, 180.0, 50.0, 0.8);
  CHECK(m[0].lon < 0.0 && m[1].lon > 0.0);
  /* A longitude outside [-180, 180] is accepted too. */
  m[2].lon += 360.0;
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 4, e, 4, &n_out), 0);
  if (CHECK_EQ_U64(n_out, 1)) {
    CHECK(dist_m(e[0].lat, e[0].lon, 10.0, 180.0) < 0.01);
    CHECK(e[0].lon >= -180.0 && e[0].lon <= 180.0);
    CHECK(fabs(e[0].radius_m - 50.0) < 0.01);
    CHECK(fabs(e[0].confidence - 1.0) < 1e-12);
    CHECK_EQ_U64(e[0].n_support, 4);
  }
  gl_loc_workspace_destroy(ws);
}

static void test_pole(void) {
  struct gl_loc_workspace *ws = ws_new(16);
  struct gl_loc_match m[6];
  struct gl_loc_estimate e[4];
  size_t n_out = 0;

  if (!ws)
    return;
  /* Four equal tiles 60 m from the north pole on the meridians 0, 90, 180
   * and -90: their longitudes differ by up to 180 degrees, their positions
   * by 85-120 m. */
  for (int i = 0; i < 4; i++)
    m[i] = at(i + 1, 90.0, 0.0, 180.0, 60.0, 0.7);
  m[0].lon = 0.0;
  m[1].lon = 90.0;
  m[2].lon = 180.0;
  m[3].lon = -90.0;
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 4, e, 4, &n_out), 0);
  if (CHECK_EQ_U64(n_out, 1)) {
    CHECK(dist_m(e[0].lat, e[0].lon, 90.0, 0.0) < 0.01);
    CHECK(fabs(e[0].radius_m - 60.0) < 0.01);
    CHECK_EQ_U64(e[0].n_support, 4);
  }

  /* The best tile exactly on the pole (with an arbitrary longitude) and the
   * south pole as a far-away second cluster. */
  m[4] = (struct gl_loc_match){.tile_id = 5, .lat = 90.0, .lon = 45.0, .score = 0.9};
  m[5] = (struct gl_loc_match){.tile_id = 6, .lat = -90.0, .lon = 0.0, .score = 0.5};
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m + 4, 2, e, 4, &n_out), 0);
  if (CHECK_EQ_U64(n_out, 2)) {
    CHECK(dist_m(e[0].lat, e[0].lon, 90.0, 0.0) < 0.01);
    CHECK(dist_m(e[1].lat, e[1].lon, -90.0, 0.0) < 0.01);
    CHECK_EQ_INT(e[0].tile_id, 5);
    CHECK(isfinite(e[0].lat) && isfinite(e[0].lon) && isfinite(e[1].lon));
  }
  gl_loc_workspace_destroy(ws);
}

static void test_equal_scores(void) {
  struct gl_loc_workspace *ws = ws_new(16);
  const double lat = 51.5, lon = -0.12;
  struct gl_loc_match m[8];
  struct gl_loc_estimate e[4];
  size_t n_out = 0;

  if (!ws)
    return;
  /* A square of four equal tiles: the centre is the square's centre. */
  for (int i = 0; i < 4; i++)
    m[i] = at(i + 1, lat, lon, 45.0 + 90.0 * i, 70.0, 0.6);
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 4, e, 4, &n_out), 0);
  if (CHECK_EQ_U64(n_out, 1)) {
    CHECK(dist_m(e[0].lat, e[0].lon, lat, lon) < 0.01);
    CHECK(fabs(e[0].score - (0.6 + T_DEFAULT * log(4.0))) < 1e-12);
    CHECK(fabs(e[0].radius_m - 70.0) < 0.01);
    /* Equal scores: the first one in the input counts as the best. */
    CHECK_EQ_INT(e[0].tile_id, 1);
  }

  /* The same square 5 km east, equal scores everywhere: two estimates of
   * confidence 1/2; the tie goes to the cluster met first in the input. */
  for (int i = 0; i < 4; i++)
    m[4 + i] = at(11 + i, m[i].lat, m[i].lon, 90.0, 5000.0, 0.6);
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m + 4, 4, e, 4, &n_out), 0);
  CHECK_EQ_U64(n_out, 1);
  {
    struct gl_loc_match mix[8] = {m[4], m[0], m[5], m[1], m[6], m[2], m[7], m[3]};

    CHECK_EQ_INT(gl_loc_cluster(ws, NULL, mix, 8, e, 4, &n_out), 0);
    if (CHECK_EQ_U64(n_out, 2)) {
      CHECK(fabs(e[0].confidence - 0.5) < 1e-12);
      CHECK(fabs(e[1].confidence - 0.5) < 1e-12);
      CHECK_EQ_INT(e[0].tile_id, 11);
      CHECK_EQ_INT(e[1].tile_id, 1);
      CHECK(fabs(dist_m(e[0].lat, e[0].lon, lat, lon) - 5000.0) < 1.0);
      CHECK(dist_m(e[1].lat, e[1].lon, lat, lon) < 0.01);
    }
  }
  gl_loc_workspace_destroy(ws);
}

static void test_empty_and_limits(void) {
  struct gl_loc_workspace *ws = NULL;
  struct gl_loc_match *m;
  struct gl_loc_estimate e[4];
  size_t n_out = 7;

  CHECK_EQ_INT(gl_loc_workspace_create(0, &ws), GL_EINVAL);
  CHECK(ws == NULL);
  CHECK_EQ_INT(gl_loc_workspace_create(GL_LOC_MAX_MATCHES + 1, &ws), GL_EINVAL);
  CHECK_EQ_INT(gl_loc_workspace_create(8, NULL), GL_EINVAL);
  gl_loc_workspace_destroy(NULL);

  ws = ws_new(8);
  if (!ws)
    return;
  /* n == 0: nothing to cluster, not an error. */
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, NULL, 0, e, 4, &n_out), 0);
  CHECK_EQ_U64(n_out, 0);

  m = calloc(GL_LOC_MAX_MATCHES + 1, sizeof *m);
  if (!CHECK(m != NULL)) {
    gl_loc_workspace_destroy(ws);
    return;
  }
  for (size_t i = 0; i <= GL_LOC_MAX_MATCHES; i++)
    m[i] = (struct gl_loc_match){.tile_id = (int64_t)i, .lat = 1.0, .lon = 2.0, .score = 0.5};
  /* Above the workspace's capacity. */
  n_out = 7;
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 9, e, 4, &n_out), GL_EINVAL);
  CHECK_EQ_U64(n_out, 0);
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 8, e, 4, &n_out), 0);
  CHECK_EQ_U64(n_out, 1);
  gl_loc_workspace_destroy(ws);

  /* Above the global limit, with the largest workspace. */
  ws = ws_new(GL_LOC_MAX_MATCHES);
  if (ws) {
    CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, GL_LOC_MAX_MATCHES + 1, e, 4, &n_out), GL_EINVAL);
    CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, GL_LOC_MAX_MATCHES, e, 4, &n_out), 0);
    CHECK_EQ_U64(n_out, 1);
    if (n_out == 1)
      CHECK_EQ_U64(e[0].n_support, GL_LOC_MAX_MATCHES);
  }
  gl_loc_workspace_destroy(ws);
  free(m);
}

static void test_bad_input(void) {
  struct gl_loc_workspace *ws = ws_new(8);
  struct gl_loc_match m[2] = {
      {.tile_id = 1, .lat = 10.0, .lon = 20.0, .score = 0.5},
      {.tile_id = 2, .lat = 10.001, .lon = 20.0, .score = 0.4},
  };
  struct gl_loc_estimate e[2];
  struct gl_loc_params p;
  size_t n_out = 5;

  if (!ws)
    return;
  CHECK_EQ_INT(gl_loc_cluster(NULL, NULL, m, 2, e, 2, &n_out), GL_EINVAL);
  CHECK_EQ_U64(n_out, 0);
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 2, e, 2, NULL), GL_EINVAL);
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, NULL, 2, e, 2, &n_out), GL_EINVAL);
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 2, NULL, 2, &n_out), GL_EINVAL);

  m[1].score = NAN;
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 2, e, 2, &n_out), GL_EINVAL);
  m[1].score = 0.4;
  m[1].lat = 90.5;
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 2, e, 2, &n_out), GL_EINVAL);
  m[1].lat = 10.001;
  m[1].lon = INFINITY;
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 2, e, 2, &n_out), GL_EINVAL);
  m[1].lon = 20.0;

  gl_loc_params_init(&p);
  p.bandwidth_m = 0.0;
  CHECK_EQ_INT(gl_loc_cluster(ws, &p, m, 2, e, 2, &n_out), GL_EINVAL);
  gl_loc_params_init(&p);
  p.temperature = 0.0;
  CHECK_EQ_INT(gl_loc_cluster(ws, &p, m, 2, e, 2, &n_out), GL_EINVAL);
  gl_loc_params_init(&p);
  p.max_iter = 0;
  CHECK_EQ_INT(gl_loc_cluster(ws, &p, m, 2, e, 2, &n_out), GL_EINVAL);
  gl_loc_params_init(&p);
  p.kernel = (enum gl_loc_kernel)7;
  CHECK_EQ_INT(gl_loc_cluster(ws, &p, m, 2, e, 2, &n_out), GL_EINVAL);
  gl_loc_params_init(&p);
  p.min_radius_m = -1.0;
  CHECK_EQ_INT(gl_loc_cluster(ws, &p, m, 2, e, 2, &n_out), GL_EINVAL);

  /* Still usable after the errors. */
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 2, e, 2, &n_out), 0);
  CHECK_EQ_U64(n_out, 1);
  gl_loc_workspace_destroy(ws);
}

/* A plus of five equal tiles (centre and four at distance d): weighted RMS
 * spread sqrt(4 d^2 / 5), with the 40 m floor. */
static void test_radius_grows(void) {
  struct gl_loc_workspace *ws = ws_new(8);
  const double ds[] = {20.0, 60.0, 120.0};
  double prev = 0.0;

  if (!ws)
    return;
  for (size_t k = 0; k < 3; k++) {
    struct gl_loc_match m[5];
    struct gl_loc_estimate e[2];
    size_t n_out = 0;
    double want = sqrt(0.8) * ds[k];

    m[0] = at(1, 40.0, -100.0, 0.0, 0.0, 0.7);
    for (int i = 0; i < 4; i++)
      m[1 + i] = at(2 + i, 40.0, -100.0, 90.0 * i, ds[k], 0.7);
    CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, 5, e, 2, &n_out), 0);
    if (!CHECK_EQ_U64(n_out, 1))
      continue;
    if (want < 40.0)
      want = 40.0;
    CHECK(fabs(e[0].radius_m - want) < 0.01);
    CHECK(e[0].radius_m >= prev);
    CHECK(dist_m(e[0].lat, e[0].lon, 40.0, -100.0) < 0.01);
    prev = e[0].radius_m;
  }
  CHECK(prev > 100.0);
  gl_loc_workspace_destroy(ws);
}

/* Extreme temperatures leave no NaN; a tiny one makes the best match's
 * cluster take all the confidence and its centre the best match. */
static void test_temperature(void) {
  struct gl_loc_workspace *ws = ws_new(8);
  struct gl_loc_match m[3];
  struct gl_loc_estimate e[3];
  struct gl_loc_params p;
  size_t n_out = 0;

  if (!ws)
    return;
  m[0] = at(1, 0.0, 0.0, 0.0, 0.0, 0.9);
  m[1] = at(2, 0.0, 0.0, 0.0, 100.0, 0.8);
  m[2] = at(3, 0.0, 0.0, 90.0, 30000.0, -0.9);
  gl_loc_params_init(&p);
  p.temperature = 1e-9;
  CHECK_EQ_INT(gl_loc_cluster(ws, &p, m, 3, e, 3, &n_out), 0);
  if (CHECK_EQ_U64(n_out, 2)) {
    CHECK(isfinite(e[0].lat) && isfinite(e[0].confidence) && isfinite(e[1].confidence));
    CHECK(dist_m(e[0].lat, e[0].lon, 0.0, 0.0) < 0.01);
    CHECK(e[0].confidence > 0.999999);
    CHECK(fabs(e[0].confidence + e[1].confidence - 1.0) < 1e-12);
  }
  p.temperature = 1e6;
  CHECK_EQ_INT(gl_loc_cluster(ws, &p, m, 3, e, 3, &n_out), 0);
  if (CHECK_EQ_U64(n_out, 2)) {
    /* Near-flat weights: the centre is the plain midpoint, 50 m north. */
    CHECK(fabs(dist_m(e[0].lat, e[0].lon, 0.0, 0.0) - 50.0) < 0.01);
    CHECK(fabs(e[0].confidence - 2.0 / 3.0) < 1e-6);
  }
  gl_loc_workspace_destroy(ws);
}

/* The worst case the limit allows stays fast: 4096 matches in 64 groups
 * spread over 10 degrees, and 4096 isolated matches. */
static void test_max_load(void) {
  struct gl_loc_workspace *ws = ws_new(GL_LOC_MAX_MATCHES);
  struct gl_loc_match *m = calloc(GL_LOC_MAX_MATCHES, sizeof *m);
  struct gl_loc_estimate e[8];
  size_t n_out = 0;
  clock_t t0;
  double secs;

  if (!ws || !CHECK(m != NULL)) {
    gl_loc_workspace_destroy(ws);
    free(m);
    return;
  }
  for (size_t i = 0; i < GL_LOC_MAX_MATCHES; i++) {
    size_t g = i / 64, k = i % 64;
    double glat = 45.0 + (double)(g % 8), glon = 5.0 + (double)(g / 8);

    m[i] = at((int64_t)i, glat, glon, (double)k * 37.0, 5.0 * (double)(k % 16),
              0.5 + 0.001 * (double)(g % 13) - 0.0001 * (double)k);
  }
  t0 = clock();
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, GL_LOC_MAX_MATCHES, e, 8, &n_out), 0);
  secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
  fprintf(stderr, "     4096 matches in 64 groups: %.3f s\n", secs);
  CHECK_EQ_U64(n_out, 8);
  if (n_out == 8) {
    double sum = 0.0;

    for (size_t r = 0; r < n_out; r++) {
      CHECK_EQ_U64(e[r].n_support, 64);
      sum += e[r].confidence;
      if (r > 0)
        CHECK(e[r].score <= e[r - 1].score);
    }
    CHECK(fabs(sum - 1.0) < 1e-12);
  }

  for (size_t i = 0; i < GL_LOC_MAX_MATCHES; i++)
    m[i] = at((int64_t)i, 30.0 + 0.01 * (double)(i % 64), 10.0 + 0.01 * (double)(i / 64), 0.0, 0.0,
              0.5);
  t0 = clock();
  CHECK_EQ_INT(gl_loc_cluster(ws, NULL, m, GL_LOC_MAX_MATCHES, e, 8, &n_out), 0);
  secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
  fprintf(stderr, "     4096 isolated matches: %.3f s\n", secs);
  CHECK_EQ_U64(n_out, 8);
  if (n_out == 8)
    CHECK(fabs(e[0].confidence - 1.0 / 8.0) < 1e-12);
  gl_loc_workspace_destroy(ws);
  free(m);
}

int main(void) {
  geod_init(&wgs84, 6378137.0, 1.0 / 298.257223563);
  RUN(test_one);
  RUN(test_two_groups);
  RUN(test_weighted_mean_property);
  RUN(test_antimeridian);
  RUN(test_pole);
  RUN(test_equal_scores);
  RUN(test_empty_and_limits);
  RUN(test_bad_input);
  RUN(test_radius_grows);
  RUN(test_temperature);
  RUN(test_max_load);
  return TEST_END();
}
