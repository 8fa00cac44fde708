/* The tracker's filter (src/track/track.h) on cases small enough to check
 * by hand: synthetic score maps with a peak where the vehicle is. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/err.h"
#include "test.h"
#include "track/track.h"

#define CELL 40.0
#define SEC 1000000ull

/* A deterministic uniform in [0, 1). */
static double rnd(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(*s >> 11) / 9007199254740992.0;
}

/* Scores every window cell: a peak of 0.5 at (tr, tq) (grid cells) with a
 * one-cell spread, 0.1 elsewhere, noise of +-0.02; a second, weaker peak at
 * (dr, dq) when dr >= 0. */
static void measure(struct gl_track *t, double tr, double tq, double dr, double dq, uint64_t *s) {
  int32_t r0, q0;
  uint32_t wr, wc;
  gl_track_window(t, &r0, &q0, &wr, &wc);
  float *sc = gl_track_scores(t), *hd = gl_track_headings(t);
  for (uint32_t r = 0; r < wr; r++)
    for (uint32_t q = 0; q < wc; q++) {
      double a = r0 + r - tr, b = q0 + q - tq;
      double v = 0.1 + 0.4 * exp(-(a * a + b * b) / 2) + 0.04 * (rnd(s) - 0.5);
      if (dr >= 0) {
        a = r0 + r - dr;
        b = q0 + q - dq;
        v += 0.3 * exp(-(a * a + b * b) / 2);
      }
      sc[(size_t)r * wc + q] = (float)v;
      hd[(size_t)r * wc + q] = 90;
    }
}

static struct gl_track *make(uint32_t rows, uint32_t cols) {
  struct gl_track_params p;
  gl_track_params_init(&p);
  struct gl_track *t = NULL;
  char err[256];
  CHECK_EQ_INT(gl_track_create(&p, rows, cols, CELL, &t, err, sizeof err), 0);
  return t;
}

static int step(struct gl_track *t, uint64_t time, const double *vel, double tr, double tq,
                double hr, double hq, struct gl_track_state *st, uint64_t *s) {
  char err[256];
  int rc = gl_track_predict(t, time, vel, hr, hq, NAN, err, sizeof err);
  if (rc)
    return rc;
  measure(t, tr, tq, -1, -1, s);
  gl_track_update(t, st);
  return 0;
}

/* A vehicle that stays put: locked within the lock frames, on the spot. */
static void test_static(void) {
  struct gl_track *t = make(100, 100);
  struct gl_track_state st;
  uint64_t s = 1;
  for (int i = 0; i < 20; i++) {
    CHECK_EQ_INT(step(t, 1000 * SEC + i * SEC, NULL, 30, 40, 30, 40, &st, &s), 0);
    if (i == 0)
      CHECK_EQ_INT(st.status, GL_TRACK_ACQUIRING);
    if (i >= 2)
      CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  }
  CHECK(fabs(st.r - 30) < 0.3 && fabs(st.q - 40) < 0.3);
  CHECK(st.confidence > 0.95);
  CHECK(st.radius_m >= CELL / 2 && st.radius_m <= 60);
  CHECK(st.heading_deg == 90);
  gl_track_destroy(t);
}

/* A constant-speed line, 12 m/s east, with and without the velocity. */
static void test_line(void) {
  for (int with_vel = 0; with_vel < 2; with_vel++) {
    struct gl_track *t = make(60, 200);
    struct gl_track_state st;
    uint64_t s = 2;
    const double vel[2] = {0, 12};
    double worst = 0;
    for (int i = 0; i < 80; i++) {
      double q = 20 + 12.0 * i / CELL;
      CHECK_EQ_INT(step(t, i * SEC, with_vel ? vel : NULL, 30, q, 30, q, &st, &s), 0);
      if (i >= 3) {
        CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
        worst = fmax(worst, hypot(st.r - 30, st.q - q));
      }
    }
    CHECK(worst < 0.5);
    gl_track_destroy(t);
  }
}

/* Without measurements the track moves with the given velocity. */
static void test_velocity_moves(void) {
  struct gl_track *t = make(50, 50);
  struct gl_track_state st;
  uint64_t s = 3;
  char err[256];
  for (int i = 0; i < 5; i++)
    step(t, i * SEC, NULL, 20, 20, 20, 20, &st, &s);
  const double vel[2] = {-40, 80}; /* 1 cell south, 2 cells east in a second */
  CHECK_EQ_INT(gl_track_predict(t, 5 * SEC, vel, NAN, NAN, NAN, err, sizeof err), 0);
  gl_track_update(t, &st); /* no scores: prediction only */
  CHECK(fabs(st.r - 21) < 0.2 && fabs(st.q - 22) < 0.2);
  gl_track_destroy(t);
}

/* A kidnap: the vehicle is moved 40 cells; the track is lost, then locks
 * at the new place, and never holds a lock on the wrong place. */
static void test_kidnap(void) {
  struct gl_track *t = make(80, 80);
  struct gl_track_state st;
  uint64_t s = 4;
  int lost_at = -1, relock_at = -1;
  for (int i = 0; i < 40; i++) {
    double r = i < 20 ? 20 : 60, q = i < 20 ? 20 : 60;
    CHECK_EQ_INT(step(t, i * SEC, NULL, r, q, r, q, &st, &s), 0);
    if (i >= 20 && st.status == GL_TRACK_LOST && lost_at < 0)
      lost_at = i;
    if (i >= 20 && lost_at >= 0 && st.status == GL_TRACK_LOCKED && relock_at < 0)
      relock_at = i;
    if (st.status == GL_TRACK_LOCKED)
      CHECK(hypot(st.r - r, st.q - q) < 2);
  }
  CHECK(lost_at >= 20 && lost_at <= 23);
  CHECK(relock_at > lost_at && relock_at <= 28);
  CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  gl_track_destroy(t);
}

/* A decoy half as strong as the truth never wins the track. */
static void test_decoy(void) {
  struct gl_track *t = make(60, 60);
  struct gl_track_state st;
  uint64_t s = 5;
  char err[256];
  for (int i = 0; i < 30; i++) {
    CHECK_EQ_INT(gl_track_predict(t, i * SEC, NULL, 10, 10, NAN, err, sizeof err), 0);
    measure(t, 10, 10, 40, 45, &s);
    gl_track_update(t, &st);
  }
  CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  CHECK(hypot(st.r - 10, st.q - 10) < 0.5);
  gl_track_destroy(t);
}

/* A locked track whose frames' own estimates point elsewhere three times
 * in a row is LOST, though the filter holds its place; agreement locks it
 * again. Frames without an estimate of their own cannot lock a track. */
static void test_disagreement(void) {
  struct gl_track *t = make(60, 60);
  struct gl_track_state st;
  uint64_t s = 8;
  int i = 0;
  for (; i < 5; i++)
    step(t, i * SEC, NULL, 30, 30, 30, 30, &st, &s);
  CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  for (int k = 0; k < 3; k++, i++) {
    step(t, i * SEC, NULL, 30, 30, 5, 50, &st, &s);
    CHECK_EQ_INT(st.status, k < 2 ? GL_TRACK_LOCKED : GL_TRACK_LOST);
  }
  CHECK(hypot(st.r - 30, st.q - 30) < 0.5);
  for (int k = 0; k < 2; k++, i++)
    step(t, i * SEC, NULL, 30, 30, 30, 30, &st, &s);
  CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  gl_track_destroy(t);
  t = make(60, 60);
  for (i = 0; i < 5; i++)
    step(t, i * SEC, NULL, 30, 30, NAN, NAN, &st, &s);
  CHECK_EQ_INT(st.status, GL_TRACK_ACQUIRING);
  CHECK(hypot(st.r - 30, st.q - 30) < 0.5);
  gl_track_destroy(t);
}

/* Fixed-lag smoothing: frames that match two places alike leave the
 * filter split; later frames settle it, and the smoothed answer for the
 * early frames takes their word, L frames late. */
static void test_fixed_lag(void) {
  struct gl_track_params p;
  gl_track_params_init(&p);
  p.fixed_lag = 5;
  struct gl_track *t = NULL;
  char err[256];
  CHECK_EQ_INT(gl_track_create(&p, 60, 60, CELL, &t, err, sizeof err), 0);
  struct gl_track_state st, sm;
  uint64_t s = 9;
  int smoothed = 0;
  for (int i = 0; i < 14; i++) {
    CHECK_EQ_INT(gl_track_predict(t, i * SEC, NULL, 10, 10, NAN, err, sizeof err), 0);
    /* Frames 0-4: the truth (10, 10) and a twin (40, 45) alike. */
    measure(t, 10, 10, i < 5 ? 40 : -1, 45, &s);
    if (i < 5) { /* make the twin as strong as the truth */
      int32_t r0, q0;
      uint32_t wr, wc;
      gl_track_window(t, &r0, &q0, &wr, &wc);
      float *sc = gl_track_scores(t);
      for (uint32_t r = 0; r < wr; r++)
        for (uint32_t q = 0; q < wc; q++) {
          double a = r0 + r - 40.0, b = q0 + q - 45.0;
          sc[(size_t)r * wc + q] += (float)(0.1 * exp(-(a * a + b * b) / 2));
        }
    }
    gl_track_update(t, &st);
    if (i == 2)
      CHECK(st.confidence < 0.7); /* the filter alone is split */
    bool has = gl_track_smoothed(t, &sm);
    CHECK(has == (i >= 5));
    if (has && i - 5 < 5) { /* an early, split frame, answered 5 frames late */
      CHECK(hypot(sm.r - 10, sm.q - 10) < 0.5);
      CHECK(sm.confidence > 0.9);
      smoothed++;
    }
  }
  CHECK_EQ_INT(smoothed, 5);
  CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  /* A restart (a long gap) cuts the chain. */
  CHECK_EQ_INT(gl_track_predict(t, 1000 * SEC, NULL, 10, 10, NAN, err, sizeof err), 0);
  gl_track_update(t, &st);
  CHECK(!gl_track_smoothed(t, &sm));
  gl_track_destroy(t);
  p.fixed_lag = GL_TRACK_MAX_LAG + 1;
  CHECK_EQ_INT(gl_track_params_check(&p, err, sizeof err), GL_EINVAL);
}

/* Time going back is refused and changes nothing; a long gap restarts. */
static void test_time(void) {
  struct gl_track *t = make(40, 40);
  struct gl_track_state st;
  uint64_t s = 6;
  char err[256];
  for (int i = 0; i < 5; i++)
    step(t, 100 * SEC + i * SEC, NULL, 10, 10, 10, 10, &st, &s);
  CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  CHECK_EQ_INT(gl_track_predict(t, 100 * SEC, NULL, NAN, NAN, NAN, err, sizeof err), GL_EINVAL);
  CHECK_CONTAINS(err, "back in time");
  CHECK_EQ_INT(step(t, 104 * SEC, NULL, 10, 10, 10, 10, &st, &s), 0); /* same time: fine */
  CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  CHECK_EQ_INT(step(t, 1000 * SEC, NULL, 30, 30, 30, 30, &st, &s), 0); /* 15 min later */
  CHECK_EQ_INT(st.status, GL_TRACK_ACQUIRING);
  gl_track_destroy(t);
}

/* On a grid larger than the window, the window follows the vehicle (80 m/s
 * east, given). */
static void test_window_follows(void) {
  struct gl_track *t = make(300, 300);
  struct gl_track_state st;
  uint64_t s = 7;
  double worst = 0;
  const double vel[2] = {0, 2 * CELL};
  for (int i = 0; i < 120; i++) {
    double q = 20 + 2.0 * i;
    CHECK_EQ_INT(step(t, i * SEC, vel, 150, q, 150, q, &st, &s), 0);
    if (i >= 3)
      worst = fmax(worst, hypot(st.r - 150, st.q - q));
  }
  CHECK(worst < 0.5);
  CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  /* A restart far away places the window on the frame's hint. */
  for (int i = 0; i < 8; i++)
    step(t, 200 * SEC + i * SEC, NULL, 20, 250, 20, 250, &st, &s);
  CHECK_EQ_INT(step(t, 1000 * SEC, NULL, 20, 250, 20, 250, &st, &s), 0);
  CHECK(hypot(st.r - 20, st.q - 250) < 0.5);
  gl_track_destroy(t);
}

static void test_params(void) {
  struct gl_track_params p;
  struct gl_track *t = NULL;
  char err[256];
  gl_track_params_init(&p);
  CHECK_EQ_INT(gl_track_params_check(&p, err, sizeof err), 0);
  p.lost_confidence = 0.9;
  CHECK_EQ_INT(gl_track_params_check(&p, err, sizeof err), GL_EINVAL);
  gl_track_params_init(&p);
  p.max_speed_mps = NAN;
  CHECK_EQ_INT(gl_track_create(&p, 10, 10, CELL, &t, err, sizeof err), GL_EINVAL);
  CHECK(t == NULL);
  gl_track_params_init(&p);
  CHECK_EQ_INT(gl_track_create(&p, 0, 10, CELL, &t, err, sizeof err), GL_EINVAL);
}

/* With hint_confidence 0.9, a frame whose own estimate is less sure is no
 * evidence: such frames neither lock the track on the scores alone nor,
 * pointing elsewhere, unlock it; sure ones do both. */
static void test_weak_hints(void) {
  struct gl_track_params p;
  gl_track_params_init(&p);
  p.hint_confidence = 0.9;
  struct gl_track *t = NULL;
  char err[256];
  CHECK_EQ_INT(gl_track_create(&p, 100, 100, CELL, &t, err, sizeof err), 0);
  struct gl_track_state st;
  uint64_t s = 9;
  for (int i = 0; i < 27; i++) {
    /* Frames 0-9: weak hints on the spot; 10-12: sure ones; 13-22: weak
     * hints far off; 23-26: sure hints far off. */
    bool sure = (i >= 10 && i < 13) || i >= 23;
    double h = i < 13 ? 30 : 80, hq = i < 13 ? 40 : 85;
    CHECK_EQ_INT(gl_track_predict(t, i * SEC, NULL, h, hq, sure ? 0.95 : 0.5, err, sizeof err), 0);
    measure(t, 30, 40, -1, -1, &s);
    gl_track_update(t, &st);
    if (i < 10)
      CHECK_EQ_INT(st.status, GL_TRACK_ACQUIRING);
    if (i >= 11 && i < 25)
      CHECK_EQ_INT(st.status, GL_TRACK_LOCKED);
  }
  CHECK_EQ_INT(st.status, GL_TRACK_LOST); /* lost_frames 3 sure disagreements */
  p.hint_confidence = 1.5;
  CHECK_EQ_INT(gl_track_params_check(&p, err, sizeof err), GL_EINVAL);
  gl_track_destroy(t);
}

int main(void) {
  RUN(test_static);
  RUN(test_line);
  RUN(test_velocity_moves);
  RUN(test_kidnap);
  RUN(test_decoy);
  RUN(test_disagreement);
  RUN(test_fixed_lag);
  RUN(test_time);
  RUN(test_window_follows);
  RUN(test_params);
  RUN(test_weak_hints);
  return TEST_END();
}
