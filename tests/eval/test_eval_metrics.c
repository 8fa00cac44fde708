/* Unit tests of the evaluation module (src/loc/eval.h): the summary on
 * hand-computable frames, nearest-rank percentiles, the true tile, the
 * scoring of a frame, and the labels reader with its errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "loc/eval.h"
#include "map/map.h"
#include "test.h"

static char tmpdir[] = "/tmp/gl-eval-XXXXXX";

#define NEAR(a, b) (fabs((a) - (b)) < 1e-12)

static struct gl_eval_frame frame(double err_m, int rank, bool ok, double latency_ms) {
  struct gl_eval_frame f = {.truth_lat = 47,
                            .truth_lon = -99,
                            .true_tile = 1,
                            .answered = true,
                            .ok = ok,
                            .has_estimate = isfinite(err_m),
                            .error_m = err_m,
                            .rank = rank,
                            .latency_ms = latency_ms};
  return f;
}

/* Four frames: errors 10, 40 and 120 m, and one without an estimate; the
 * true tile at ranks 1, 3, 7 and nowhere. */
static void test_summary_four(void) {
  struct gl_eval_frame f[4] = {frame(10, 1, true, 4), frame(40, 3, true, 1), frame(120, 7, true, 2),
                               frame(INFINITY, 0, false, 3)};
  f[3].has_estimate = false;
  struct gl_eval_summary s;
  CHECK_EQ_INT(gl_eval_summarize(f, 4, 2.0, &s), 0);
  CHECK_EQ_U64(s.frames, 4);
  CHECK_EQ_U64(s.estimated, 3);
  CHECK_EQ_U64(s.not_ok, 1);
  CHECK_EQ_U64(s.ranked, 4);
  CHECK(NEAR(s.recall[0], 0.25));
  CHECK(NEAR(s.recall[1], 0.50));
  CHECK(NEAR(s.recall[2], 0.75));
  CHECK(NEAR(s.success[0], 0.25)); /* 25 m: 10 */
  CHECK(NEAR(s.success[1], 0.50)); /* 50 m: 10, 40 */
  CHECK(NEAR(s.success[2], 0.50)); /* 100 m: 10, 40 */
  CHECK(NEAR(s.success[3], 0.75)); /* 250 m: 10, 40, 120 */
  for (int k = 0; k < GL_EVAL_N_COARSE; k++)
    CHECK(NEAR(s.coarse[k], 0.75));
  CHECK(NEAR(s.median_m, 40)); /* rank ceil(0.5 * 4) = 2 */
  CHECK(isinf(s.p90_m));       /* rank ceil(0.9 * 4) = 4: the failure */
  CHECK(NEAR(s.latency_p50_ms, 2));
  CHECK(NEAR(s.latency_p90_ms, 4));
  CHECK(NEAR(s.fps, 2.0));
  CHECK(NEAR(s.seconds, 2.0));
}

/* Five frames at 5, 30, 60, 200 and 1500 m; no map (true tile unknown). */
static void test_summary_five(void) {
  struct gl_eval_frame f[5] = {frame(1500, 0, true, 1), frame(60, 0, true, 1), frame(5, 0, true, 1),
                               frame(200, 0, true, 1), frame(30, 0, true, 1)};
  for (int i = 0; i < 5; i++)
    f[i].true_tile = -1;
  struct gl_eval_summary s;
  CHECK_EQ_INT(gl_eval_summarize(f, 5, 0.5, &s), 0);
  CHECK_EQ_U64(s.ranked, 0);
  CHECK(isnan(s.recall[0]) && isnan(s.recall[1]) && isnan(s.recall[2]));
  CHECK(NEAR(s.success[0], 0.2));
  CHECK(NEAR(s.success[1], 0.4));
  CHECK(NEAR(s.success[2], 0.6));
  CHECK(NEAR(s.success[3], 0.8));
  CHECK(NEAR(s.coarse[0], 0.8)); /* 1 km */
  CHECK(NEAR(s.coarse[1], 1.0)); /* 25 km */
  CHECK(NEAR(s.median_m, 60));   /* rank 3 of 5 */
  CHECK(NEAR(s.p90_m, 1500));    /* rank ceil(4.5) = 5 */
  CHECK(NEAR(s.fps, 10));
  CHECK_EQ_U64(s.not_ok, 0);
  /* An empty run. */
  CHECK_EQ_INT(gl_eval_summarize(NULL, 0, 1.0, &s), 0);
  CHECK(isnan(s.median_m) && isnan(s.success[0]) && isnan(s.recall[0]));
}

static void test_percentile(void) {
  double v[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  CHECK(NEAR(gl_eval_percentile(v, 10, 50), 5));
  CHECK(NEAR(gl_eval_percentile(v, 10, 90), 9));
  CHECK(NEAR(gl_eval_percentile(v, 10, 91), 10));
  CHECK(NEAR(gl_eval_percentile(v, 10, 100), 10));
  CHECK(NEAR(gl_eval_percentile(v, 10, 1), 1));
  CHECK(NEAR(gl_eval_percentile(v, 1, 50), 1));
  CHECK(isnan(gl_eval_percentile(v, 0, 50)));
}

static void test_nearest(void) {
  /* A 3 x 3 grid about 111 m apart in latitude, 76 m in longitude. */
  double lat[9], lon[9];
  for (int i = 0; i < 9; i++) {
    lat[i] = 47.0 + 0.001 * (i / 3);
    lon[i] = -99.0 + 0.001 * (i % 3);
  }
  CHECK_EQ_INT(gl_eval_nearest(lat, lon, 9, 47.0011, -98.9989), 4);
  CHECK_EQ_INT(gl_eval_nearest(lat, lon, 9, 47.1, -98.0), 8); /* far outside: a corner */
  CHECK_EQ_INT(gl_eval_nearest(lat, lon, 9, 47.0, -99.0), 0);
  /* Exactly between two points: the lower index. */
  CHECK_EQ_INT(gl_eval_nearest(lat, lon, 9, 47.0, -98.9995), 0);
  CHECK_EQ_INT(gl_eval_nearest(lat, lon, 0, 47.0, -99.0), -1);
  /* Across the antimeridian. */
  double la2[2] = {0, 0}, lo2[2] = {179.999, 170};
  CHECK_EQ_INT(gl_eval_nearest(la2, lo2, 2, 0, -179.999), 0);
}

static void test_score(void) {
  struct gl_eval_frame f = {
      .truth_lat = 47.0, .truth_lon = -99.0, .truth_heading = 350, .true_tile = 7};
  struct gl_eval_candidate c[3] = {
      {47.001, -99.0, 3, 5}, {47.0, -99.0, 7, NAN}, {47.0, -99.0, 7, 90}};
  gl_eval_frame_score(&f, c, 3);
  CHECK(f.has_estimate);
  /* The heading error is the angle between the two, across north. */
  CHECK(NEAR(f.heading_err_deg, 15));
  CHECK_EQ_INT(f.rank, 2);
  /* 0.001 degrees of latitude at 47 N: the geodesic, about 111.2 m. */
  CHECK(NEAR(f.error_m, gl_map_distance_m(47.0, -99.0, 47.001, -99.0)));
  CHECK(f.error_m > 111.0 && f.error_m < 111.4);
  CHECK(f.est_lat == 47.001 && f.est_lon == -99.0);
  f.true_tile = 9;
  gl_eval_frame_score(&f, c, 3);
  CHECK_EQ_INT(f.rank, 0);
  f.true_tile = -1; /* unknown: never ranked */
  gl_eval_frame_score(&f, c + 1, 2);
  CHECK_EQ_INT(f.rank, 0);
  CHECK(isnan(f.heading_err_deg)); /* the first candidate has no heading */
  CHECK(NEAR(f.error_m, 0));
  gl_eval_frame_score(&f, NULL, 0);
  CHECK(!f.has_estimate && isinf(f.error_m));
}

static char *write_file(const char *name, const char *text) {
  char *p = NULL;
  if (asprintf(&p, "%s/%s", tmpdir, name) < 0)
    return NULL;
  FILE *f = fopen(p, "wb");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
  return p;
}

static void test_labels(void) {
  free(write_file("a.png", ""));
  free(write_file("b c.png", ""));
  CHECK_EQ_INT(mkdir(strcat(strcpy((char[512]){0}, tmpdir), "/sub"), 0755), 0);
  free(write_file("sub/d.jpg", ""));
  /* Columns in another order, an extra one, a quoted name with a comma
   * free space, CRLF, a BOM, blank lines, an empty heading. */
  char *csv = write_file("labels.csv", "\xEF\xBB\xBF"
                                       "heading, Lat ,extra,LON,file\r\n"
                                       "90,47.01,x,-99.1,a.png\r\n"
                                       "\r\n"
                                       "270.5,-47.5,\"y, z\",179.5,\"b c.png\"\r\n"
                                       ",0,,0,sub/d.jpg\n");
  struct gl_eval_labels l;
  char err[512] = "";
  if (CHECK_EQ_INT(gl_eval_labels_load(csv, &l, err, sizeof err), 0) && CHECK_EQ_U64(l.n, 3)) {
    CHECK_EQ_STR(l.v[0].file, "a.png");
    char want[600];
    snprintf(want, sizeof want, "%s/a.png", tmpdir);
    CHECK_EQ_STR(l.v[0].path, want);
    CHECK(l.v[0].lat == 47.01 && l.v[0].lon == -99.1 && l.v[0].heading_deg == 90);
    CHECK_EQ_INT(l.v[0].line, 2);
    CHECK_EQ_STR(l.v[1].file, "b c.png");
    CHECK(l.v[1].lat == -47.5 && l.v[1].lon == 179.5 && l.v[1].heading_deg == 270.5);
    CHECK_EQ_INT(l.v[1].line, 4);
    snprintf(want, sizeof want, "%s/sub/d.jpg", tmpdir);
    CHECK_EQ_STR(l.v[2].path, want);
    CHECK(isnan(l.v[2].heading_deg));
    CHECK_EQ_INT(l.v[2].year, 0); /* no date column */
    gl_eval_labels_free(&l);
  }
  if (err[0] && gl_test_failures)
    fprintf(stderr, "  %s\n", err);
  free(csv);

  /* The optional date column: each frame's year, 0 for an empty date or
   * without the column (above). */
  csv = write_file("dated.csv", "file,Date,lat,lon,heading\n"
                                "a.png, 2009-08-18 ,1,2,3\n"
                                "a.png,,1,2,3\n");
  if (CHECK_EQ_INT(gl_eval_labels_load(csv, &l, err, sizeof err), 0) && CHECK_EQ_U64(l.n, 2)) {
    CHECK_EQ_INT(l.v[0].year, 2009);
    CHECK_EQ_INT(l.v[1].year, 0);
    gl_eval_labels_free(&l);
  }
  free(csv);

  static const struct {
    const char *text;
    int code;
    const char *needle;
  } bad[] = {
      {"file,lat,lon\na.png,1,2\n", GL_EFORMAT, "bad.csv:1: the header has no column 'heading'"},
      {"file,lat,lon,heading\na.png,1,2,0\na.png,x,2,0\n", GL_EFORMAT,
       "bad.csv:3: lat 'x' is not a latitude"},
      {"file,lat,lon,heading\na.png,91,2,0\n", GL_EFORMAT, "bad.csv:2: lat '91'"},
      {"file,lat,lon,heading\na.png,1,200,0\n", GL_EFORMAT, "bad.csv:2: lon '200'"},
      {"file,lat,lon,heading\na.png,1,2,north\n", GL_EFORMAT, "bad.csv:2: heading 'north'"},
      {"file,lat,lon,heading\na.png,1,2\n", GL_EFORMAT, "bad.csv:2: 3 field(s), the header has 4"},
      {"file,lat,lon,heading\n\na.png,1,2,3\nnone.png,1,2,3\n", GL_ENOENT, "bad.csv:4: frame "},
      {"file,lat,lon,heading\nsub,1,2,3\n", GL_ENOENT, "not a regular file"},
      {"file,lat,lon,heading\n\"a.png,1,2,3\n", GL_EFORMAT, "bad.csv:2: unterminated quote"},
      {"file,lat,lon,heading\n,1,2,3\n", GL_EFORMAT, "bad.csv:2: the file field is empty"},
      {"", GL_EFORMAT, "bad.csv: empty"},
      {"file,lat,lon,heading\n\n", GL_EFORMAT, "a header but no frames"},
      {"file,lat,lon,heading,date\na.png,1,2,3,2009-8-18\n", GL_EFORMAT,
       "bad.csv:2: date '2009-8-18' is not a date YYYY-MM-DD"},
      {"file,lat,lon,heading,date\na.png,1,2,3,2009-13-01\n", GL_EFORMAT, "date '2009-13-01'"},
      {"file,lat,lon,heading,date\na.png,1,2,3,+009-01-01\n", GL_EFORMAT, "date '+009-01-01'"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *p = write_file("bad.csv", bad[i].text);
    err[0] = 0;
    if (!CHECK_EQ_INT(gl_eval_labels_load(p, &l, err, sizeof err), bad[i].code))
      fprintf(stderr, "  case %zu\n", i);
    CHECK_CONTAINS(err, bad[i].needle);
    CHECK(l.n == 0 && l.v == NULL);
    free(p);
  }
  char *none = NULL;
  CHECK(asprintf(&none, "%s/missing.csv", tmpdir) > 0);
  CHECK_EQ_INT(gl_eval_labels_load(none, &l, err, sizeof err), GL_ENOENT);
  CHECK_CONTAINS(err, "missing.csv");
  free(none);
}

int main(void) {
  if (!mkdtemp(tmpdir))
    return 1;
  RUN(test_summary_four);
  RUN(test_summary_five);
  RUN(test_percentile);
  RUN(test_nearest);
  RUN(test_score);
  RUN(test_labels);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (!gl_test_failures && system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmpdir);
  return TEST_END();
}
