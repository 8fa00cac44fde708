/* An evaluation run in the CLI (see evaluate.h). */
#include "evaluate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

int gl_cli_eval_init(struct gl_cli_eval *ev, const char *prog, const char *labels_path,
                     struct gl_map *map, const char *pack_dir) {
  memset(ev, 0, sizeof *ev);
  ev->prog = prog;
  char err[1024];
  int rc = gl_eval_labels_load(labels_path, &ev->labels, err, sizeof err);
  if (rc) {
    fprintf(stderr, "%s: %s\n", prog, err);
    return rc;
  }
  size_t n = ev->labels.n;
  ev->paths = calloc(n, sizeof *ev->paths);
  ev->frames = calloc(n, sizeof *ev->frames);
  if (!ev->paths || !ev->frames)
    goto nomem;
  for (size_t i = 0; i < n; i++) {
    ev->paths[i] = ev->labels.v[i].path;
    ev->frames[i] = (struct gl_eval_frame){.truth_lat = ev->labels.v[i].lat,
                                           .truth_lon = ev->labels.v[i].lon,
                                           .truth_heading = ev->labels.v[i].heading_deg,
                                           .heading_err_deg = NAN,
                                           .true_tile = -1,
                                           .error_m = INFINITY};
  }
  if (!map)
    return 0;
  ev->map = gl_map_ref(map);
  ev->pack_dir = pack_dir;
  ev->n_tiles = gl_map_tile_count(map);
  double *lat = malloc((ev->n_tiles ? ev->n_tiles : 1) * sizeof *lat);
  double *lon = malloc((ev->n_tiles ? ev->n_tiles : 1) * sizeof *lon);
  ev->tiles = calloc(ev->n_tiles ? ev->n_tiles : 1, sizeof *ev->tiles);
  if (!lat || !lon || !ev->tiles) {
    free(lat);
    free(lon);
    goto nomem;
  }
  /* Tile ids run from 1 to the tile count (map.h). */
  for (size_t t = 0; t < ev->n_tiles; t++) {
    struct gl_map_tile tile;
    if ((rc = gl_map_tile_get(map, (int64_t)t + 1, &tile)) != GL_OK) {
      fprintf(stderr, "%s: %s: cannot read tile %zu: %s\n", prog, pack_dir ? pack_dir : "map",
              t + 1, gl_strerror(rc));
      free(lat);
      free(lon);
      return rc;
    }
    lat[t] = tile.lat;
    lon[t] = tile.lon;
    ev->tiles[t] = (struct gl_cli_png_tile){tile.min_lat, tile.max_lat, tile.min_lon, tile.max_lon};
  }
  for (size_t i = 0; i < n; i++) {
    long k =
        gl_eval_nearest(lat, lon, ev->n_tiles, ev->frames[i].truth_lat, ev->frames[i].truth_lon);
    ev->frames[i].true_tile = k < 0 ? -1 : (int64_t)k + 1;
  }
  free(lat);
  free(lon);
  return 0;
nomem:
  fprintf(stderr, "%s: out of memory\n", prog);
  return GL_ENOMEM;
}

void gl_cli_eval_fini(struct gl_cli_eval *ev) {
  gl_map_close(ev->map);
  free(ev->tiles);
  free(ev->frames);
  free(ev->paths);
  gl_eval_labels_free(&ev->labels);
  memset(ev, 0, sizeof *ev);
}

void gl_cli_eval_rows_begin(struct gl_cli_eval *ev, FILE *f, bool csv) {
  ev->rows = f;
  ev->csv = csv;
  /* Flights add the track's status and error. */
  const bool fl = ev->labels.flights;
  if (csv)
    fprintf(f,
            "file,status,est_lat,est_lon,truth_lat,truth_lon,error_m,true_tile,rank,latency_ms,"
            "score,confidence%s\n",
            fl ? ",track_status,track_error_m" : "");
  else
    fprintf(f, "%-32s %-13s %12s %13s %12s %13s %10s %9s %5s %10s%s\n", "file", "status", "est_lat",
            "est_lon", "truth_lat", "truth_lon", "error_m", "true_tile", "rank", "latency_ms",
            fl ? "  track      track_error_m" : "");
  fflush(f);
}

static void print_row(const struct gl_cli_eval *ev, size_t i, const char *status) {
  const struct gl_eval_frame *x = &ev->frames[i];
  FILE *f = ev->rows;
  char est_lat[32] = "", est_lon[32] = "", error[32] = "", tile[32] = "", rank[16] = "";
  char score[32] = "", conf[32] = "";
  if (x->has_estimate) {
    snprintf(score, sizeof score, "%.4f", x->est_score);
    snprintf(conf, sizeof conf, "%.4f", x->est_confidence);
    snprintf(est_lat, sizeof est_lat, "%.7f", x->est_lat);
    snprintf(est_lon, sizeof est_lon, "%.7f", x->est_lon);
    snprintf(error, sizeof error, "%.1f", x->error_m);
  }
  if (x->true_tile >= 0) {
    snprintf(tile, sizeof tile, "%lld", (long long)x->true_tile);
    if (x->rank)
      snprintf(rank, sizeof rank, "%d", x->rank);
  }
  static const char *const tstat[] = {"-", "ACQUIRING", "LOCKED", "LOST"};
  const char *ts = tstat[x->track_status >= 0 && x->track_status <= 3 ? x->track_status : 0];
  char terr[32] = "-";
  if (x->track_status)
    snprintf(terr, sizeof terr, "%.1f", x->track_err_m);
  if (ev->csv) {
    gl_report_csv_field(f, ev->labels.v[i].file);
    fprintf(f, ",%s,%s,%s,%.7f,%.7f,%s,%s,%s,%.3f,%s,%s", status, est_lat, est_lon,
            x->truth_lat, x->truth_lon, error, tile, rank, x->latency_ms, score, conf);
    if (ev->labels.flights)
      fprintf(f, ",%s,%s", x->track_status ? ts : "", x->track_status ? terr : "");
    fputc('\n', f);
  } else {
    /* Unknown values: "-"; a rank needs the map ("n/a" without one). */
    fprintf(f, "%-32s %-13s %12s %13s %12.7f %13.7f %10s %9s %5s %10.2f", ev->labels.v[i].file,
            status, *est_lat ? est_lat : "-", *est_lon ? est_lon : "-", x->truth_lat, x->truth_lon,
            *error ? error : "-", *tile ? tile : "n/a",
            x->true_tile < 0 ? "n/a"
            : *rank          ? rank
                             : "-",
            x->latency_ms);
    if (ev->labels.flights)
      fprintf(f, "  %-10s %13s", ts, terr);
    fputc('\n', f);
  }
  fflush(f);
}

void gl_cli_eval_record(struct gl_cli_eval *ev, size_t i, const char *status, bool ok,
                        const struct gl_report_candidate *c, size_t n, double latency_ms) {
  struct gl_eval_frame *x = &ev->frames[i];
  struct gl_eval_candidate cand[128];
  if (n > sizeof cand / sizeof cand[0])
    n = sizeof cand / sizeof cand[0];
  for (size_t k = 0; k < n; k++)
    cand[k] = (struct gl_eval_candidate){c[k].lat, c[k].lon, (int64_t)c[k].tile_id,
                                         c[k].heading_deg};
  x->answered = true;
  x->ok = ok;
  x->latency_ms = latency_ms;
  gl_eval_frame_score(x, cand, n);
  x->est_score = n ? c[0].score : NAN;
  x->est_confidence = n ? c[0].confidence : NAN;
  for (int s = 0; s < GL_CLI_EVAL_MAX_STATUSES; s++) {
    if (!ev->status[s])
      ev->status[s] = status;
    if (strcmp(ev->status[s], status) == 0) {
      ev->status_count[s]++;
      break;
    }
  }
  if (ev->rows)
    print_row(ev, i, status);
}

void gl_cli_eval_record_track(struct gl_cli_eval *ev, size_t i, int status, double lat,
                              double lon) {
  struct gl_eval_frame *x = &ev->frames[i];
  x->track_status = status;
  x->track_lat = lat;
  x->track_lon = lon;
  x->track_err_m = gl_map_distance_m(x->truth_lat, x->truth_lon, lat, lon);
}

int gl_cli_eval_summarize(const struct gl_cli_eval *ev, double seconds, struct gl_eval_summary *s) {
  return gl_eval_summarize(ev->frames, ev->labels.n, seconds, s);
}

/* "12.5%", or "n/a" for NAN. */
static const char *pct(double v, char *buf, size_t n) {
  if (isnan(v))
    snprintf(buf, n, "n/a");
  else
    snprintf(buf, n, "%.1f%%", v * 100);
  return buf;
}

/* "12.3", "inf" or "n/a". */
static const char *metres(double v, char *buf, size_t n) {
  if (isnan(v))
    snprintf(buf, n, "n/a");
  else if (isinf(v))
    snprintf(buf, n, "inf");
  else
    snprintf(buf, n, "%.1f", v);
  return buf;
}

void gl_cli_eval_print_line(const struct gl_eval_summary *s, FILE *f) {
  char a[3][32], m[2][32], sc[32];
  /* Before the summary line, which stays the last one. */
  if (s->headed)
    fprintf(f, "eval: heading error median %.1f, p90 %.1f degrees over %zu frames\n",
            s->heading_median_deg, s->heading_p90_deg, s->headed);
  fprintf(f,
          "eval: %zu frames, R@1 %s, R@5 %s, R@10 %s, median %s m, p90 %s m, success@100m %s, "
          "%.1f frames/s\n",
          s->frames, pct(s->recall[0], a[0], 32), pct(s->recall[1], a[1], 32),
          pct(s->recall[2], a[2], 32), metres(s->median_m, m[0], 32), metres(s->p90_m, m[1], 32),
          pct(s->success[2], sc, 32), isfinite(s->fps) ? s->fps : 0.0);
  fflush(f);
}

void gl_cli_eval_print_brief(const struct gl_eval_summary *s, FILE *f) {
  char m[32], sc[32];
  fprintf(f, "summary: %zu frames, median error %s m, success@100m %s, %.1f frames/s\n", s->frames,
          metres(s->median_m, m, sizeof m), pct(s->success[2], sc, sizeof sc),
          isfinite(s->fps) ? s->fps : 0.0);
  fflush(f);
}

void gl_cli_eval_print_summary(const struct gl_cli_eval *ev, const struct gl_eval_summary *s,
                               FILE *f, bool csv) {
  char b[32];
  if (csv) {
    fputs("frames,estimated,not_ok", f);
    for (int k = 0; k < GL_EVAL_N_RECALL; k++)
      fprintf(f, ",r_at_%d", gl_eval_recall_k[k]);
    for (int k = 0; k < GL_EVAL_N_SUCCESS; k++)
      fprintf(f, ",success_%gm", gl_eval_success_m[k]);
    fputs(",median_m,p90_m", f);
    for (int k = 0; k < GL_EVAL_N_COARSE; k++)
      fprintf(f, ",within_%gkm", gl_eval_coarse_km[k]);
    fputs(",latency_p50_ms,latency_p90_ms,seconds,frames_per_s\n", f);
    fprintf(f, "%zu,%zu,%zu", s->frames, s->estimated, s->not_ok);
    /* Fractions; an empty field where a value is unknown. */
    for (int k = 0; k < GL_EVAL_N_RECALL; k++)
      isnan(s->recall[k]) ? (void)fputs(",", f) : (void)fprintf(f, ",%.4f", s->recall[k]);
    for (int k = 0; k < GL_EVAL_N_SUCCESS; k++)
      fprintf(f, ",%.4f", s->success[k]);
    fprintf(f, ",%s,%s", metres(s->median_m, b, sizeof b), metres(s->p90_m, (char[32]){0}, 32));
    for (int k = 0; k < GL_EVAL_N_COARSE; k++)
      fprintf(f, ",%.4f", s->coarse[k]);
    fprintf(f, ",%.3f,%.3f,%.3f,%.3f\n", s->latency_p50_ms, s->latency_p90_ms, s->seconds, s->fps);
    fflush(f);
    gl_cli_eval_print_line(s, stderr);
    return;
  }
  fprintf(f, "%-22s %zu\n", "frames", s->frames);
  fprintf(f, "%-22s %zu\n", "with an estimate", s->estimated);
  fprintf(f, "%-22s %zu\n", "answers not OK", s->not_ok);
  for (int k = 0; k < GL_CLI_EVAL_MAX_STATUSES && ev->status[k]; k++)
    if (strcmp(ev->status[k], "OK") != 0)
      fprintf(f, "  %-20s %zu\n", ev->status[k], ev->status_count[k]);
  size_t unanswered = 0;
  for (size_t i = 0; i < ev->labels.n; i++)
    unanswered += !ev->frames[i].answered;
  if (unanswered)
    fprintf(f, "  %-20s %zu\n", "(no answer)", unanswered);
  for (int k = 0; k < GL_EVAL_N_RECALL; k++) {
    char name[32];
    snprintf(name, sizeof name, "R@%d", gl_eval_recall_k[k]);
    fprintf(f, "%-22s %s%s\n", name, pct(s->recall[k], b, sizeof b),
            ev->map ? "" : "  (needs the map pack: --pack)");
  }
  for (int k = 0; k < GL_EVAL_N_SUCCESS; k++) {
    char name[32];
    snprintf(name, sizeof name, "success@%gm", gl_eval_success_m[k]);
    fprintf(f, "%-22s %s\n", name, pct(s->success[k], b, sizeof b));
  }
  fprintf(f, "%-22s %s m\n", "median error", metres(s->median_m, b, sizeof b));
  fprintf(f, "%-22s %s m\n", "p90 error", metres(s->p90_m, b, sizeof b));
  if (s->headed)
    fprintf(f, "%-22s median %.1f  p90 %.1f degrees (%zu frames)\n", "heading error",
            s->heading_median_deg, s->heading_p90_deg, s->headed);
  for (int k = 0; k < GL_EVAL_N_COARSE; k++) {
    char name[32];
    snprintf(name, sizeof name, "within %g km", gl_eval_coarse_km[k]);
    fprintf(f, "%-22s %s\n", name, pct(s->coarse[k], b, sizeof b));
  }
  fprintf(f, "%-22s p50 %.2f  p90 %.2f\n", "latency ms",
          isnan(s->latency_p50_ms) ? 0.0 : s->latency_p50_ms,
          isnan(s->latency_p90_ms) ? 0.0 : s->latency_p90_ms);
  fprintf(f, "%-22s %.2f s\n", "wall time", s->seconds);
  fprintf(f, "%-22s %.1f\n", "frames/s", isfinite(s->fps) ? s->fps : 0.0);
  gl_cli_eval_print_line(s, f);
}

int gl_cli_eval_report(const struct gl_cli_eval *ev, const char *png_path) {
  uint32_t w = 0, h = 0;
  int rc = gl_cli_report_png(png_path, ev->map ? ev->pack_dir : NULL, ev->tiles, ev->n_tiles,
                             ev->frames, ev->labels.n, ev->prog, &w, &h);
  if (rc == 0)
    fprintf(stderr, "%s: report: wrote %s (%u x %u px)\n", ev->prog, png_path, w, h);
  return rc;
}

/* "12.3 s", "never" or "n/a". */
static const char *secs(double v, char *buf, size_t n) {
  if (isnan(v))
    return "n/a";
  if (isinf(v))
    return "never";
  snprintf(buf, n, "%.1f s", v);
  return buf;
}

void gl_cli_eval_record_smoothed(struct gl_cli_eval *ev, size_t i, int status, double lat,
                                 double lon) {
  struct gl_eval_frame *x = &ev->frames[i];
  x->smooth_status = status;
  x->smooth_lat = lat;
  x->smooth_lon = lon;
  x->smooth_err_m = gl_map_distance_m(x->truth_lat, x->truth_lon, lat, lon);
}

int gl_cli_eval_print_flights(const struct gl_cli_eval *ev, const struct gl_eval_summary *s,
                              double track_ms, FILE *f) {
  struct gl_eval_flights t, sm = {0};
  const size_t n = ev->labels.n;
  int rc = gl_eval_flights_summarize(&ev->labels, ev->frames, n, &t);
  if (rc)
    return rc;
  /* Smoothed: each frame's smoothed track where it got one, else its own. */
  bool smoothed = false;
  for (size_t i = 0; i < n && !smoothed; i++)
    smoothed = ev->frames[i].smooth_status != 0;
  if (smoothed) {
    struct gl_eval_frame *fs = malloc(n * sizeof *fs);
    if (!fs)
      return GL_ENOMEM;
    for (size_t i = 0; i < n; i++) {
      fs[i] = ev->frames[i];
      if (fs[i].smooth_status) {
        fs[i].track_status = fs[i].smooth_status;
        fs[i].track_lat = fs[i].smooth_lat;
        fs[i].track_lon = fs[i].smooth_lon;
        fs[i].track_err_m = fs[i].smooth_err_m;
      }
    }
    rc = gl_eval_flights_summarize(&ev->labels, fs, n, &sm);
    free(fs);
    if (rc)
      return rc;
  }
  char a[32], b[32], c[32], d[32];
  fprintf(f, "\nflights: %zu flights, %zu frames     per-frame   tracked%s\n", t.flights, t.frames,
          smoothed ? "  smoothed" : "");
  static const char *const name[3] = {"success@25m ", "success@50m ", "success@100m"};
  for (int k = 0; k < 3; k++) {
    fprintf(f, "  %s                %9s %9s", name[k], pct(s->success[k], a, sizeof a),
            pct(t.success[k], b, sizeof b));
    if (smoothed)
      fprintf(f, " %9s", pct(sm.success[k], c, sizeof c));
    fputc('\n', f);
  }
  fprintf(f, "  median error                %7.1f m %7.1f m", s->median_m, t.median_m);
  if (smoothed)
    fprintf(f, " %7.1f m", sm.median_m);
  fprintf(f, "\n  p90 error                   %7.1f m %7.1f m", s->p90_m, t.p90_m);
  if (smoothed)
    fprintf(f, " %7.1f m", sm.p90_m);
  fputc('\n', f);
  if (smoothed)
    fprintf(f,
            "smoothed: locked %s of frames; of the locked frames %s within 100 m, wrong locks "
            "%s (the last frames of each flight keep their online track)\n",
            pct(sm.locked, a, sizeof a), pct(sm.locked_success100, b, sizeof b),
            pct(sm.wrong_lock, c, sizeof c));
  fprintf(f,
          "tracked: locked %s of frames; of the locked frames %s within 100 m, median %.1f m, "
          "wrong locks (over 100 m) %s\n",
          pct(t.locked, a, sizeof a), pct(t.locked_success100, b, sizeof b), t.locked_median_m,
          pct(t.wrong_lock, c, sizeof c));
  fprintf(f, "tracked: first lock within 100 m after median %s (worst %s)", 
          secs(t.first_lock_median_s, a, sizeof a), secs(t.first_lock_max_s, b, sizeof b));
  if (t.kidnaps)
    fprintf(f, "; after a kidnap, locked again within 100 m after median %s (worst %s) over %zu",
            secs(t.relock_median_s, c, sizeof c), secs(t.relock_max_s, d, sizeof d), t.kidnaps);
  fputc('\n', f);
  if (track_ms > 0)
    fprintf(f, "tracked: tracking took %.2f ms a frame\n", track_ms);
  fprintf(f, "track: %zu frames, locked %s, locked success@100m %s, wrong locks %s, median %.1f m\n",
          t.frames, pct(t.locked, a, sizeof a), pct(t.locked_success100, b, sizeof b),
          pct(t.wrong_lock, c, sizeof c), t.median_m);
  return 0;
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

int gl_cli_eval_print_years(const struct gl_cli_eval *ev, FILE *f) {
  const size_t n = ev->labels.n;
  bool tracked = false;
  for (size_t i = 0; i < n && !tracked; i++)
    tracked = ev->labels.flights && ev->frames[i].track_status != 0;
  int *years = malloc(n * sizeof *years);
  struct gl_eval_frame *fs = malloc(n * sizeof *fs);
  struct gl_eval_label *ls = malloc(n * sizeof *ls);
  int rc = GL_ENOMEM;
  if (!years || !fs || !ls)
    goto done;
  for (size_t i = 0; i < n; i++)
    years[i] = ev->labels.v[i].year;
  qsort(years, n, sizeof *years, cmp_int);
  /* The distinct years in order, the frames without a date (0) last. */
  size_t ny = 0;
  bool undated = years[0] == 0;
  for (size_t i = 0; i < n; i++)
    if (years[i] != 0 && (ny == 0 || years[ny - 1] != years[i]))
      years[ny++] = years[i];
  if (ny == 0) {
    rc = GL_EFORMAT; /* no frame has a date */
    goto done;
  }
  if (undated)
    years[ny++] = 0;
  fprintf(f, "\nby year   frames  success@25m  success@100m  median m%s\n",
          tracked ? "  tracked@100m  locked  wrong locks" : "");
  for (size_t k = 0; k < ny; k++) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
      if (ev->labels.v[i].year == years[k]) {
        fs[m] = ev->frames[i];
        ls[m++] = ev->labels.v[i];
      }
    struct gl_eval_summary s;
    if ((rc = gl_eval_summarize(fs, m, 0, &s)))
      goto done;
    char yb[16], a[32], b[32], c[32];
    if (years[k])
      snprintf(yb, sizeof yb, "%d", years[k]);
    else
      snprintf(yb, sizeof yb, "-");
    fprintf(f, "%-7s %8zu %12s %13s %9s", yb, m, pct(s.success[0], a, sizeof a),
            pct(s.success[2], b, sizeof b), metres(s.median_m, c, sizeof c));
    if (tracked) {
      /* A flight's frames share its imagery's date, so a year holds whole
       * flights. */
      struct gl_eval_labels sub = {.v = ls, .n = m, .flights = true};
      struct gl_eval_flights t;
      if ((rc = gl_eval_flights_summarize(&sub, fs, m, &t)))
        goto done;
      fprintf(f, " %13s %7s %12s", pct(t.success[2], a, sizeof a), pct(t.locked, b, sizeof b),
              pct(t.wrong_lock, c, sizeof c));
    }
    fputc('\n', f);
  }
  rc = 0;
done:
  free(years);
  free(fs);
  free(ls);
  return rc;
}
