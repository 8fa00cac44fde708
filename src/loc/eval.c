/* Labels, per-frame scoring and the summary of an accuracy evaluation
 * (see eval.h for the definitions). */
#include "loc/eval.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/err.h"
#include "map/map.h"

const int gl_eval_recall_k[GL_EVAL_N_RECALL] = {1, 5, 10};
const double gl_eval_success_m[GL_EVAL_N_SUCCESS] = {25, 50, 100, 250};
const double gl_eval_coarse_km[GL_EVAL_N_COARSE] = {1, 25, 200, 750, 2500};

/* A labels file larger than this is not a list of frames. */
#define GL__EVAL_MAX_CSV (256u * 1024u * 1024u)
/* Columns of a labels row. */
#define GL__EVAL_MAX_FIELDS 256

/* --- labels ------------------------------------------------------------------ */

/* One CSV record: its fields, unquoted and NUL-terminated, in place. */
struct gl__csv {
  char *p, *end; /* the unread text */
  unsigned line; /* line of the next character */
  char *field[GL__EVAL_MAX_FIELDS];
  size_t n;
};

/* Reads the next record (RFC 4180: quoted fields may hold commas, doubled
 * quotes and line breaks) into c->field, rewriting the text in place.
 * Returns 1 for a record, 0 at the end, GL_EFORMAT for an unterminated
 * quote or too many fields (*bad_line says where). */
static int gl__csv_next(struct gl__csv *c, unsigned *bad_line) {
  c->n = 0;
  if (c->p >= c->end)
    return 0;
  *bad_line = c->line;
  for (;;) {
    if (c->n == GL__EVAL_MAX_FIELDS)
      return GL_EFORMAT;
    char *out = c->p, *start = c->p;
    c->field[c->n++] = start;
    /* A quote after leading blanks opens a quoted field. */
    char *q = c->p;
    while (q < c->end && (*q == ' ' || *q == '\t'))
      q++;
    if (q < c->end && *q == '"') {
      c->p = q + 1;
      for (;;) {
        if (c->p >= c->end)
          return GL_EFORMAT;
        if (*c->p == '"') {
          if (c->p + 1 < c->end && c->p[1] == '"') {
            *out++ = '"';
            c->p += 2;
            continue;
          }
          c->p++;
          break;
        }
        if (*c->p == '\n')
          c->line++;
        *out++ = *c->p++;
      }
      /* Blanks may follow the closing quote. */
      while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r'))
        c->p++;
    } else {
      while (c->p < c->end && *c->p != ',' && *c->p != '\n')
        *out++ = *c->p++;
      if (out > start && out[-1] == '\r')
        out--;
    }
    if (c->p < c->end && *c->p == ',') {
      *out = 0;
      c->p++;
      continue;
    }
    if (c->p < c->end && *c->p == '\n') {
      c->p++;
      c->line++;
    } else if (c->p < c->end) {
      return GL_EFORMAT; /* text after a closing quote */
    }
    *out = 0;
    return 1;
  }
}

/* s without leading and trailing blanks, in place. */
static char *gl__trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1]))
    s[--n] = 0;
  return s;
}

static bool gl__blank_record(const struct gl__csv *c) {
  return c->n == 1 && *gl__trim(c->field[0]) == 0;
}

/* A number filling all of s (blanks around allowed). */
static bool gl__number(char *s, double *out) {
  s = gl__trim(s);
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno == ERANGE || !isfinite(v))
    return false;
  *out = v;
  return true;
}

void gl_eval_labels_free(struct gl_eval_labels *l) {
  if (!l)
    return;
  for (size_t i = 0; i < l->n; i++) {
    free(l->v[i].file);
    free(l->v[i].path);
  }
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

/* Reads the whole file into a NUL-terminated buffer. */
static int gl__read_text(const char *path, char **out, size_t *len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return gl_fail(err, errlen, errno == ENOENT ? GL_ENOENT : GL_EIO, "%s: %s", path,
                   strerror(errno));
  char *buf = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  for (;;) {
    if (cap - n < 65536) {
      if (cap > GL__EVAL_MAX_CSV) {
        rc = gl_fail(err, errlen, GL_EFORMAT, "%s: larger than %u MiB, not a labels file", path,
                     GL__EVAL_MAX_CSV >> 20);
        break;
      }
      char *b = realloc(buf, cap + 65536 + 1);
      if (!b) {
        rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
        break;
      }
      buf = b;
      cap += 65536;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) {
      if (ferror(f))
        rc = gl_fail(err, errlen, GL_EIO, "%s: read error", path);
      break;
    }
  }
  fclose(f);
  if (rc) {
    free(buf);
    return rc;
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return 0;
}

/* The flight columns of one row (ocol: flight, time_us, vel_n, vel_e,
 * event; SIZE_MAX for a missing one) into l, checked against the previous
 * row of the same flight. */
static int gl__flight_fields(struct gl__csv *c, const size_t *ocol,
                             const struct gl_eval_labels *prev, struct gl_eval_label *l,
                             const char *path, unsigned at, char *err, size_t errlen) {
  double v;
  if (ocol[0] == SIZE_MAX)
    return 0;
  const char *fs = gl__trim(c->field[ocol[0]]), *ts = gl__trim(c->field[ocol[1]]);
  char *end;
  errno = 0;
  long long fl = strtoll(fs, &end, 10);
  if (!*fs || *end || fl < 0 || errno)
    return gl_fail(err, errlen, GL_EFORMAT, "%s:%u: flight '%s' is not a flight number", path, at,
                   fs);
  errno = 0;
  unsigned long long t = strtoull(ts, &end, 10);
  if (!*ts || *end || *ts == '-' || errno)
    return gl_fail(err, errlen, GL_EFORMAT, "%s:%u: time_us '%s' is not a time in microseconds",
                   path, at, ts);
  l->flight = fl;
  l->time_us = t;
  for (int k = 0; k < 2; k++) {
    if (ocol[2 + k] == SIZE_MAX)
      continue;
    char *x = gl__trim(c->field[ocol[2 + k]]);
    if (*x && (!gl__number(x, &v) || fabs(v) > 1e4))
      return gl_fail(err, errlen, GL_EFORMAT, "%s:%u: velocity '%s' is not a speed in m/s", path,
                     at, x);
    *(k ? &l->vel_e : &l->vel_n) = *x ? v : NAN;
  }
  if (ocol[4] != SIZE_MAX) {
    static const char *const ev[] = {"", "start", "gap", "kidnap"};
    const char *x = gl__trim(c->field[ocol[4]]);
    int k = 0;
    while (k < 4 && strcasecmp(x, ev[k]) != 0)
      k++;
    if (k == 4)
      return gl_fail(err, errlen, GL_EFORMAT,
                     "%s:%u: event '%s' is not one of start, gap, kidnap (or empty)", path, at, x);
    l->event = (enum gl_eval_event)k;
  }
  if (prev->n) {
    const struct gl_eval_label *p = &prev->v[prev->n - 1];
    if (p->flight == l->flight && p->time_us > l->time_us)
      return gl_fail(err, errlen, GL_EFORMAT, "%s:%u: time_us goes back within flight %lld", path,
                     at, fl);
    for (size_t i = 0; p->flight != l->flight && i + 1 < prev->n; i++)
      if (prev->v[i].flight == l->flight)
        return gl_fail(err, errlen, GL_EFORMAT,
                       "%s:%u: flight %lld's rows are not consecutive", path, at, fl);
  }
  return 0;
}

/* The year of a date field: YYYY-MM-DD (year 1..9999, month 1..12, day
 * 1..31), or 0 for an empty field. False when it is neither. */
static bool gl__year(char *field, int *year) {
  const char *d = gl__trim(field);
  int y, m, day, end = 0;
  *year = 0;
  if (!*d)
    return true;
  if (strlen(d) != 10 || sscanf(d, "%4d-%2d-%2d%n", &y, &m, &day, &end) != 3 || end != 10 ||
      !isdigit((unsigned char)d[0]) || !isdigit((unsigned char)d[5]) ||
      !isdigit((unsigned char)d[8]) || y < 1 || m < 1 || m > 12 || day < 1 || day > 31)
    return false;
  *year = y;
  return true;
}

int gl_eval_labels_load(const char *path, struct gl_eval_labels *out, char *err, size_t errlen) {
  static const char *const want[] = {"file", "lat", "lon", "heading"};
  enum { C_FILE, C_LAT, C_LON, C_HEADING, C_N };
  memset(out, 0, sizeof *out);
  char *text = NULL, *dir = NULL;
  size_t len = 0, cap = 0;
  int rc = gl__read_text(path, &text, &len, err, errlen);
  if (rc)
    return rc;
  const char *slash = strrchr(path, '/');
  dir = slash ? strndup(path, (size_t)(slash - path) + 1) : strdup("");
  if (!dir) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  struct gl__csv c = {.p = text, .end = text + len, .line = 1};
  if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
    c.p += 3; /* a UTF-8 byte order mark */
  unsigned at = 1;
  int r;
  /* The header: the first record that is not blank. */
  while ((r = gl__csv_next(&c, &at)) == 1 && gl__blank_record(&c))
    ;
  if (r < 0) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "%s:%u: unterminated quote or too many fields", path, at);
    goto fail;
  }
  if (r == 0) {
    rc = gl_fail(err, errlen, GL_EFORMAT,
                 "%s: empty; a labels file starts with a header naming file,lat,lon,heading", path);
    goto fail;
  }
  size_t col[C_N], n_header = c.n;
  for (int k = 0; k < C_N; k++) {
    col[k] = SIZE_MAX;
    for (size_t i = 0; i < c.n && col[k] == SIZE_MAX; i++)
      if (strcasecmp(gl__trim(c.field[i]), want[k]) == 0)
        col[k] = i;
    if (col[k] == SIZE_MAX) {
      rc = gl_fail(err, errlen, GL_EFORMAT,
                   "%s:%u: the header has no column '%s' (it needs file, lat, lon and heading, "
                   "in any order)",
                   path, at, want[k]);
      goto fail;
    }
  }
  /* The optional columns: a flight's, and the imagery's date. */
  static const char *const opt_names[] = {"flight", "time_us", "vel_n", "vel_e", "event", "date"};
  enum { O_FLIGHT, O_TIME, O_VN, O_VE, O_EVENT, O_DATE, O_N };
  size_t ocol[O_N];
  for (int k = 0; k < O_N; k++) {
    ocol[k] = SIZE_MAX;
    for (size_t i = 0; i < c.n && ocol[k] == SIZE_MAX; i++)
      if (strcasecmp(gl__trim(c.field[i]), opt_names[k]) == 0)
        ocol[k] = i;
  }
  if ((ocol[O_FLIGHT] == SIZE_MAX) != (ocol[O_TIME] == SIZE_MAX)) {
    rc = gl_fail(err, errlen, GL_EFORMAT,
                 "%s:%u: flights need both the flight and the time_us columns", path, at);
    goto fail;
  }
  out->flights = ocol[O_FLIGHT] != SIZE_MAX;
  while ((r = gl__csv_next(&c, &at)) != 0) {
    if (r < 0) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s:%u: unterminated quote or too many fields", path,
                   at);
      goto fail;
    }
    if (gl__blank_record(&c))
      continue;
    if (c.n != n_header) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s:%u: %zu field(s), the header has %zu", path, at,
                   c.n, n_header);
      goto fail;
    }
    struct gl_eval_label l = {
        .line = at, .heading_deg = NAN, .flight = -1, .vel_n = NAN, .vel_e = NAN};
    if ((rc = gl__flight_fields(&c, ocol, out, &l, path, at, err, errlen)))
      goto fail;
    if (ocol[O_DATE] != SIZE_MAX && !gl__year(c.field[ocol[O_DATE]], &l.year)) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s:%u: date '%s' is not a date YYYY-MM-DD", path, at,
                   gl__trim(c.field[ocol[O_DATE]]));
      goto fail;
    }
    const char *file = gl__trim(c.field[col[C_FILE]]);
    if (!*file) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s:%u: the file field is empty", path, at);
      goto fail;
    }
    if (!gl__number(c.field[col[C_LAT]], &l.lat) || !(l.lat >= -90 && l.lat <= 90)) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s:%u: lat '%s' is not a latitude in [-90, 90]", path,
                   at, gl__trim(c.field[col[C_LAT]]));
      goto fail;
    }
    if (!gl__number(c.field[col[C_LON]], &l.lon) || !(l.lon >= -180 && l.lon <= 180)) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s:%u: lon '%s' is not a longitude in [-180, 180]",
                   path, at, gl__trim(c.field[col[C_LON]]));
      goto fail;
    }
    char *h = gl__trim(c.field[col[C_HEADING]]);
    if (*h && !gl__number(h, &l.heading_deg)) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s:%u: heading '%s' is not a number of degrees", path,
                   at, h);
      goto fail;
    }
    if (out->n == cap) {
      size_t ncap = cap ? cap * 2 : 64;
      struct gl_eval_label *v = realloc(out->v, ncap * sizeof *v);
      if (!v) {
        rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
        goto fail;
      }
      out->v = v;
      cap = ncap;
    }
    l.file = strdup(file);
    if (l.file && asprintf(&l.path, "%s%s", file[0] == '/' ? "" : dir, file) < 0)
      l.path = NULL;
    if (!l.file || !l.path) {
      free(l.file);
      rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
      goto fail;
    }
    out->v[out->n++] = l;
    struct stat st;
    const char *why = stat(l.path, &st) != 0 ? strerror(errno)
                      : !S_ISREG(st.st_mode) ? "not a regular file"
                                             : NULL;
    if (why) {
      rc = gl_fail(err, errlen, GL_ENOENT, "%s:%u: frame %s: %s", path, at, l.path, why);
      goto fail;
    }
  }
  if (out->n == 0) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "%s: a header but no frames", path);
    goto fail;
  }
  free(dir);
  free(text);
  return 0;
fail:
  gl_eval_labels_free(out);
  free(dir);
  free(text);
  return rc;
}

/* --- scoring ----------------------------------------------------------------- */

/* Metres per degree of latitude and of longitude at the equator (WGS84,
 * rounded): only for the planar preselection. */
#define GL__M_PER_DEG_LAT 111132.0
#define GL__M_PER_DEG_LON 111319.5

long gl_eval_nearest(const double *lat, const double *lon, size_t n, double qlat, double qlon) {
  if (n == 0)
    return -1;
  double kx = cos(qlat * M_PI / 180.0) * GL__M_PER_DEG_LON;
  double best_planar = INFINITY;
  for (size_t i = 0; i < n; i++) {
    double x = remainder(lon[i] - qlon, 360.0) * kx, y = (lat[i] - qlat) * GL__M_PER_DEG_LAT;
    best_planar = fmin(best_planar, sqrt(x * x + y * y));
  }
  /* The planar distance is within a fraction of a percent of the geodesic
   * one for points a few hundred kilometres apart away from the poles; 5 %
   * plus 50 m of slack keeps every point that could be the nearest. Far
   * away or near a pole, every point goes to the geodesic. */
  bool all = best_planar > 500e3 || fabs(qlat) > 80;
  double slack = best_planar * 1.05 + 50;
  long best = -1;
  double best_d = INFINITY;
  for (size_t i = 0; i < n; i++) {
    if (!all) {
      double x = remainder(lon[i] - qlon, 360.0) * kx, y = (lat[i] - qlat) * GL__M_PER_DEG_LAT;
      if (sqrt(x * x + y * y) > slack)
        continue;
    }
    double d = gl_map_distance_m(qlat, qlon, lat[i], lon[i]);
    if (d < best_d) {
      best_d = d;
      best = (long)i;
    }
  }
  return best;
}

void gl_eval_frame_score(struct gl_eval_frame *f, const struct gl_eval_candidate *c, size_t n) {
  f->has_estimate = n > 0;
  f->rank = 0;
  f->heading_err_deg = NAN;
  if (n == 0) {
    f->error_m = INFINITY;
    return;
  }
  if (!isnan(c[0].heading_deg) && !isnan(f->truth_heading)) {
    double d = fmod(fabs(c[0].heading_deg - f->truth_heading), 360.0);
    f->heading_err_deg = d > 180 ? 360 - d : d;
  }
  f->est_lat = c[0].lat;
  f->est_lon = c[0].lon;
  f->error_m = gl_map_distance_m(f->truth_lat, f->truth_lon, c[0].lat, c[0].lon);
  for (size_t i = 0; i < n && f->true_tile >= 0 && !f->rank; i++)
    if (c[i].tile_id == f->true_tile)
      f->rank = (int)i + 1;
}

/* --- summary ------------------------------------------------------------------ */

static int gl__cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double gl_eval_percentile(const double *v, size_t n, double p) {
  if (n == 0)
    return NAN;
  /* Nearest rank: ceil(p/100 * n), 1-based; the product is rounded first
   * so that 90 % of 10 frames is rank 9, not 10 through 9.000000000000002. */
  double r = ceil(round(p / 100.0 * (double)n * 1e9) / 1e9);
  size_t i = r < 1 ? 0 : (size_t)r - 1;
  return v[i < n ? i : n - 1];
}

int gl_eval_summarize(const struct gl_eval_frame *f, size_t n, double seconds,
                      struct gl_eval_summary *out) {
  memset(out, 0, sizeof *out);
  out->frames = n;
  out->seconds = seconds;
  out->fps = seconds > 0 ? (double)n / seconds : NAN;
  double *err = malloc((n ? n : 1) * sizeof *err), *lat = malloc((n ? n : 1) * sizeof *lat);
  double *hd = malloc((n ? n : 1) * sizeof *hd);
  if (!err || !lat || !hd) {
    free(err);
    free(lat);
    free(hd);
    return GL_ENOMEM;
  }
  size_t n_lat = 0, hits[GL_EVAL_N_RECALL] = {0}, within[GL_EVAL_N_SUCCESS] = {0},
         coarse[GL_EVAL_N_COARSE] = {0};
  for (size_t i = 0; i < n; i++) {
    const struct gl_eval_frame *x = &f[i];
    double e = x->has_estimate ? x->error_m : INFINITY;
    err[i] = e;
    out->estimated += x->has_estimate;
    out->not_ok += !x->ok;
    if (x->answered)
      lat[n_lat++] = x->latency_ms;
    if (x->has_estimate && !isnan(x->heading_err_deg))
      hd[out->headed++] = x->heading_err_deg;
    if (x->true_tile >= 0) {
      out->ranked++;
      for (int k = 0; k < GL_EVAL_N_RECALL; k++)
        hits[k] += x->rank >= 1 && x->rank <= gl_eval_recall_k[k];
    }
    for (int k = 0; k < GL_EVAL_N_SUCCESS; k++)
      within[k] += e <= gl_eval_success_m[k];
    for (int k = 0; k < GL_EVAL_N_COARSE; k++)
      coarse[k] += e <= gl_eval_coarse_km[k] * 1000.0;
  }
  for (int k = 0; k < GL_EVAL_N_RECALL; k++)
    out->recall[k] = out->ranked ? (double)hits[k] / (double)out->ranked : NAN;
  for (int k = 0; k < GL_EVAL_N_SUCCESS; k++)
    out->success[k] = n ? (double)within[k] / (double)n : NAN;
  for (int k = 0; k < GL_EVAL_N_COARSE; k++)
    out->coarse[k] = n ? (double)coarse[k] / (double)n : NAN;
  qsort(err, n, sizeof *err, gl__cmp_double);
  qsort(lat, n_lat, sizeof *lat, gl__cmp_double);
  out->median_m = gl_eval_percentile(err, n, 50);
  out->p90_m = gl_eval_percentile(err, n, 90);
  out->latency_p50_ms = gl_eval_percentile(lat, n_lat, 50);
  out->latency_p90_ms = gl_eval_percentile(lat, n_lat, 90);
  qsort(hd, out->headed, sizeof *hd, gl__cmp_double);
  out->heading_median_deg = gl_eval_percentile(hd, out->headed, 50);
  out->heading_p90_deg = gl_eval_percentile(hd, out->headed, 90);
  free(hd);
  free(err);
  free(lat);
  return 0;
}

/* --- flights -------------------------------------------------------------------- */

/* Median and worst of v[0..n) (sorted in place); NaN when n is 0. */
static void gl__median_max(double *v, size_t n, double *median, double *max) {
  qsort(v, n, sizeof *v, gl__cmp_double);
  *median = gl_eval_percentile(v, n, 50);
  *max = n ? v[n - 1] : NAN;
}

int gl_eval_flights_summarize(const struct gl_eval_labels *l, const struct gl_eval_frame *f,
                              size_t n, struct gl_eval_flights *out) {
  memset(out, 0, sizeof *out);
  if (!l->flights || n != l->n)
    return GL_EINVAL;
  double *err = malloc((n ? n : 1) * sizeof *err), *lerr = malloc((n ? n : 1) * sizeof *lerr);
  double *first = malloc((n ? n : 1) * sizeof *first), *relock = malloc((n ? n : 1) * sizeof *relock);
  if (!err || !lerr || !first || !relock) {
    free(err);
    free(lerr);
    free(first);
    free(relock);
    return GL_ENOMEM;
  }
  size_t nl = 0, nwrong = 0, within[3] = {0}, nfirst = 0, nrelock = 0;
  static const double lim[3] = {25, 50, 100};
  for (size_t i = 0; i < n;) {
    /* One flight: rows i .. j - 1. */
    size_t j = i;
    while (j < n && l->v[j].flight == l->v[i].flight)
      j++;
    out->flights++;
    double t_first = INFINITY, t_kid = NAN, t_relock = INFINITY;
    for (size_t k = i; k < j; k++) {
      double e = f[k].track_status ? f[k].track_err_m : INFINITY;
      bool locked = f[k].track_status == 2;
      err[k] = e;
      for (int a = 0; a < 3; a++)
        within[a] += e <= lim[a];
      if (l->v[k].event == GL_EVAL_EVENT_KIDNAP && isnan(t_kid))
        t_kid = (double)l->v[k].time_us / 1e6;
      double t = (double)(l->v[k].time_us - l->v[i].time_us) / 1e6;
      if (locked) {
        lerr[nl++] = e;
        nwrong += !(e <= 100);
        if (e <= 100 && isinf(t_first))
          t_first = t;
        if (e <= 100 && !isnan(t_kid) && isinf(t_relock))
          t_relock = (double)l->v[k].time_us / 1e6 - t_kid;
      }
    }
    first[nfirst++] = t_first;
    if (!isnan(t_kid))
      relock[nrelock++] = t_relock;
    i = j;
  }
  out->frames = n;
  for (int a = 0; a < 3; a++)
    out->success[a] = n ? (double)within[a] / (double)n : NAN;
  qsort(err, n, sizeof *err, gl__cmp_double);
  out->median_m = gl_eval_percentile(err, n, 50);
  out->p90_m = gl_eval_percentile(err, n, 90);
  out->locked = n ? (double)nl / (double)n : NAN;
  size_t ok = 0;
  for (size_t k = 0; k < nl; k++)
    ok += lerr[k] <= 100;
  out->locked_success100 = nl ? (double)ok / (double)nl : NAN;
  out->wrong_lock = nl ? (double)nwrong / (double)nl : NAN;
  qsort(lerr, nl, sizeof *lerr, gl__cmp_double);
  out->locked_median_m = gl_eval_percentile(lerr, nl, 50);
  gl__median_max(first, nfirst, &out->first_lock_median_s, &out->first_lock_max_s);
  out->kidnaps = nrelock;
  gl__median_max(relock, nrelock, &out->relock_median_s, &out->relock_max_s);
  free(err);
  free(lerr);
  free(first);
  free(relock);
  return 0;
}
