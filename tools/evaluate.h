/* An evaluation run in the CLI: labelled frames, their answers scored
 * against the truth, per-frame rows, the summary and the picture. Shared by
 * `geoloc eval` (in-process or through geolocd) and `geoloc query
 * --labels`; the metrics themselves are src/loc/eval.h. */
#ifndef GL_TOOLS_EVALUATE_H
#define GL_TOOLS_EVALUATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "client/report.h"
#include "loc/eval.h"
#include "map/map.h"
#include "report_png.h"

#define GL_CLI_EVAL_MAX_STATUSES 32

struct gl_cli_eval {
  const char *prog;
  struct gl_eval_labels labels;
  char **paths;                 /* labels.v[i].path, for streaming */
  struct gl_eval_frame *frames; /* one per label */
  /* The map the frames are scored on; NULL when there is none (then the
   * true tile, R@k and the tile outline are unknown). */
  struct gl_map *map;
  const char *pack_dir;
  struct gl_cli_png_tile *tiles; /* bounds by tile id - 1 */
  size_t n_tiles;
  /* Per-frame rows: NULL for none. */
  FILE *rows;
  bool csv;
  /* Answers by status name. */
  const char *status[GL_CLI_EVAL_MAX_STATUSES];
  size_t status_count[GL_CLI_EVAL_MAX_STATUSES];
};

/* Reads the labels and, with a map (a reference is taken; pack_dir is its
 * directory), the tile centres and bounds, and finds each frame's true
 * tile. Prints what went wrong and returns a GL_E* code on failure. */
int gl_cli_eval_init(struct gl_cli_eval *ev, const char *prog, const char *labels_path,
                     struct gl_map *map, const char *pack_dir);
void gl_cli_eval_fini(struct gl_cli_eval *ev);

/* Per-frame rows go to f (a table, or CSV when csv): file, status,
 * estimate, truth, error, true tile, rank, latency. Writes the header. */
void gl_cli_eval_rows_begin(struct gl_cli_eval *ev, FILE *f, bool csv);

/* Records the answer to frame i: candidates best first (n may be 0),
 * status "OK" or what went wrong. Prints its row when rows are on. */
void gl_cli_eval_record(struct gl_cli_eval *ev, size_t i, const char *status, bool ok,
                        const struct gl_report_candidate *c, size_t n, double latency_ms);

/* Records the stream's track after frame i (status as enum
 * gl_track_status, position WGS84) and its error. */
void gl_cli_eval_record_track(struct gl_cli_eval *ev, size_t i, int status, double lat,
                              double lon);

/* Records the smoothed track of frame i (fixed-lag runs). */
void gl_cli_eval_record_smoothed(struct gl_cli_eval *ev, size_t i, int status, double lat,
                                 double lon);

/* With flights in the labels and tracks recorded: the per-frame and the
 * tracked figures side by side, the lock figures, and (track_ms > 0) what
 * tracking cost a frame, to f. Returns 0, or a GL_E* code. */
int gl_cli_eval_print_flights(const struct gl_cli_eval *ev, const struct gl_eval_summary *s,
                              double track_ms, FILE *f);

/* A row per year of the labels' date column (frames without a date last,
 * as "-"): frames, success within 25 and 100 m, median error; with tracks
 * also the tracked success within 100 m, the share of frames locked and
 * the wrong locks. Returns 0, GL_EFORMAT when no frame has a date, or
 * GL_ENOMEM. */
int gl_cli_eval_print_years(const struct gl_cli_eval *ev, FILE *f);

/* Summarizes the run (seconds of wall time) into *s. Returns 0 or
 * GL_ENOMEM. */
int gl_cli_eval_summarize(const struct gl_cli_eval *ev, double seconds, struct gl_eval_summary *s);

/* The full summary: a table of every metric to f, and as its last line
 * `eval: N frames, R@1 x%, R@5 x%, R@10 x%, median N m, p90 N m,
 * success@100m x%, N frames/s`. With csv, f gets the metrics as one CSV
 * record under a header instead, and the `eval:` line goes to stderr. */
void gl_cli_eval_print_summary(const struct gl_cli_eval *ev, const struct gl_eval_summary *s,
                               FILE *f, bool csv);

/* The `eval:` line alone. */
void gl_cli_eval_print_line(const struct gl_eval_summary *s, FILE *f);

/* The short summary of `geoloc query --labels`: `summary: N frames,
 * median error N m, success@100m x%, N frames/s`. */
void gl_cli_eval_print_brief(const struct gl_eval_summary *s, FILE *f);

/* Draws the run into a PNG (see report_png.h) and says where on stderr.
 * Returns 0 or a GL_E* code. */
int gl_cli_eval_report(const struct gl_cli_eval *ev, const char *png_path);

#endif
