/* Accuracy of localization on labelled frames (the naip-xtime protocol,
 * docs/ARCHITECTURE.md section 10): the labels file, the scoring of one
 * frame and the summary over a run. Used by `geoloc eval` and `geoloc query
 * --labels`.
 *
 * Definitions:
 *  - The true tile of a frame is the map tile whose centre is nearest to
 *    the frame's true position (geodesic distance on WGS84).
 *  - Rank: the 1-based position of the first candidate whose tile_id (its
 *    best-scoring tile) is the true tile; 0 when none is. R@k is the share
 *    of frames with 1 <= rank <= k, over the frames whose true tile is
 *    known.
 *  - Error: the geodesic distance from the first candidate's position to
 *    the truth; infinite for a frame without a candidate (a failure at
 *    every threshold).
 *  - Success within d: the share of all frames with error <= d.
 *  - Percentiles are nearest-rank: the p-th is the smallest error e such
 *    that at least p % of the frames have an error <= e (so the median of
 *    4 frames is the 2nd smallest, p90 the largest). It is infinite when
 *    more than (100 - p) % of the frames have no estimate. */
#ifndef GL_LOC_EVAL_H
#define GL_LOC_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --- labels ------------------------------------------------------------------ */

/* What happened to a flight just before a frame (the `event` column). */
enum gl_eval_event {
  GL_EVAL_EVENT_NONE = 0,
  GL_EVAL_EVENT_START,  /* "start": the flight's first frame */
  GL_EVAL_EVENT_GAP,    /* "gap": the first frame after a pause in the frames */
  GL_EVAL_EVENT_KIDNAP, /* "kidnap": the first frame after a jump no motion explains */
};

/* One labelled frame. */
struct gl_eval_label {
  char *file;         /* as written in the labels file */
  char *path;         /* file resolved against the labels file's directory */
  double lat, lon;    /* true position, WGS84 degrees */
  double heading_deg; /* camera heading, degrees clockwise from north; NAN when empty */
  unsigned line;      /* line number in the labels file */
  /* Flights (optional columns flight, time_us, vel_n, vel_e, event): the
   * flight's number (-1 without the column), the capture time in
   * microseconds, the vehicle's velocity north/east in m/s (NaN when
   * empty or absent) and the event before the frame. */
  int64_t flight;
  uint64_t time_us;
  double vel_n, vel_e;
  enum gl_eval_event event;
  /* The year of the optional date column (the capture date of the frame's
   * imagery, YYYY-MM-DD); 0 without the column or with an empty date. */
  int year;
};

struct gl_eval_labels {
  struct gl_eval_label *v;
  size_t n;
  bool flights; /* the file has the flight and time_us columns */
};

/* Reads a labels file: CSV (RFC 4180 quoting), a header row naming at least
 * the columns file, lat, lon and heading in any order (names are matched
 * without regard to case or surrounding blanks; other columns are
 * ignored), then one row per frame. Blank lines are skipped. A relative
 * file is taken relative to the directory of the labels file. Flights add
 * the columns flight and time_us (both or neither; a flight's rows
 * consecutive, its times never decreasing) and optionally vel_n, vel_e and
 * event ("", start, gap or kidnap). An optional date column (YYYY-MM-DD,
 * or empty) gives each frame's year.
 *
 * Returns 0 with *out filled (free with gl_eval_labels_free); GL_ENOENT
 * when the labels file or a listed frame does not exist; GL_EFORMAT for a
 * missing column, a row with too few fields, a value that is not a number
 * or out of range, or a file without rows; GL_EIO; GL_ENOMEM. err says
 * what, as "PATH:LINE: ..." where a line is at fault. */
int gl_eval_labels_load(const char *path, struct gl_eval_labels *out, char *err, size_t errlen);

void gl_eval_labels_free(struct gl_eval_labels *l);

/* --- scoring ----------------------------------------------------------------- */

/* A candidate as the scoring needs it: position and best tile. */
struct gl_eval_candidate {
  double lat, lon;
  int64_t tile_id;
  double heading_deg; /* estimated heading; NaN when the candidate has none */
};

/* The outcome of one frame. */
struct gl_eval_frame {
  double truth_lat, truth_lon;
  double truth_heading;    /* the label's heading; NaN when empty */
  int64_t true_tile;       /* -1 when unknown (no map) */
  bool answered;           /* an answer (of any status) was recorded */
  bool ok;                 /* the answer's status was OK */
  bool has_estimate;       /* at least one candidate */
  double est_lat, est_lon; /* the first candidate, when has_estimate */
  double error_m;          /* metres; INFINITY without an estimate */
  /* Angle between the first candidate's heading and the true heading,
   * 0..180 degrees; NaN when either is unknown. */
  double heading_err_deg;
  int rank;                /* see the file comment; 0 also when true_tile is unknown */
  double latency_ms;
  /* The first candidate's score and confidence as answered; NaN without
   * an estimate. */
  double est_score, est_confidence;
  /* The stream's track after the frame (tracked runs): status (0 when
   * there is none; else enum gl_track_status's value), position and its
   * error in metres. */
  int track_status;
  double track_lat, track_lon, track_err_m;
  /* The smoothed track of the frame (fixed-lag runs), as above; 0 status
   * when the frame got none (the last frames of a stream). */
  int smooth_status;
  double smooth_lat, smooth_lon, smooth_err_m;
};

/* Index (0-based) of the point of lat/lon[0..n-1] nearest to (qlat, qlon)
 * by geodesic distance (ties: the lowest index), or -1 when n is 0. A
 * planar pass in a local frame around the query preselects; the geodesic
 * decides among the points the planar pass cannot tell apart. */
long gl_eval_nearest(const double *lat, const double *lon, size_t n, double qlat, double qlon);

/* Fills f's estimate, error and rank from the candidates c[0..n-1], best
 * first (n may be 0). truth_lat/lon and true_tile must be set. */
void gl_eval_frame_score(struct gl_eval_frame *f, const struct gl_eval_candidate *c, size_t n);

/* --- summary ------------------------------------------------------------------ */

#define GL_EVAL_N_RECALL 3  /* R@1, R@5, R@10 */
#define GL_EVAL_N_SUCCESS 4 /* within 25, 50, 100, 250 m */
#define GL_EVAL_N_COARSE 5  /* within 1, 25, 200, 750, 2500 km */

extern const int gl_eval_recall_k[GL_EVAL_N_RECALL];
extern const double gl_eval_success_m[GL_EVAL_N_SUCCESS];
extern const double gl_eval_coarse_km[GL_EVAL_N_COARSE];

struct gl_eval_summary {
  size_t frames;                         /* all frames */
  size_t estimated;                      /* frames with at least one candidate */
  size_t not_ok;                         /* frames whose answer was not OK, or that got none */
  size_t ranked;                         /* frames whose true tile is known: the R@k denominator */
  double recall[GL_EVAL_N_RECALL];       /* fractions; NAN when ranked is 0 */
  double success[GL_EVAL_N_SUCCESS];     /* fractions of all frames */
  double coarse[GL_EVAL_N_COARSE];       /* fractions of all frames */
  double median_m, p90_m;                /* nearest-rank; NAN when frames is 0 */
  size_t headed;                         /* frames with a heading error */
  double heading_median_deg, heading_p90_deg; /* over those; NAN when none */
  double latency_p50_ms, latency_p90_ms; /* over the frames with an answer */
  double seconds;                        /* wall time of the run */
  double fps;                            /* frames / seconds */
};

/* Summarizes n frames run in `seconds` of wall time. Returns 0 or
 * GL_ENOMEM (it sorts copies of the errors and latencies). */
int gl_eval_summarize(const struct gl_eval_frame *f, size_t n, double seconds,
                      struct gl_eval_summary *out);

/* --- flights -------------------------------------------------------------------- */

/* The tracked figures of a run over flights (labels with flights, frames
 * with a track). "Locked" is track status 2 (LOCKED). */
struct gl_eval_flights {
  size_t flights, frames;
  double success[3];         /* tracked position within 25, 50, 100 m, share of all frames */
  double median_m, p90_m;    /* of the tracked position, all frames */
  double locked;             /* share of frames locked */
  double locked_success100;  /* share of the locked frames within 100 m */
  double locked_median_m;    /* median error of the locked frames */
  double wrong_lock;         /* share of the locked frames more than 100 m off */
  /* Seconds of capture time from a flight's start to its first locked
   * frame within 100 m, and from a kidnap to the first such frame after
   * it: median and worst over the flights (INFINITY when one never gets
   * there; NAN when there are none). */
  double first_lock_median_s, first_lock_max_s;
  size_t kidnaps;
  double relock_median_s, relock_max_s;
};

/* Summarizes the tracks of the n frames f of labels l (the same order).
 * Returns 0, GL_EINVAL (labels without flights) or GL_ENOMEM. */
int gl_eval_flights_summarize(const struct gl_eval_labels *l, const struct gl_eval_frame *f,
                              size_t n, struct gl_eval_flights *out);

/* Nearest-rank percentile p (0 < p <= 100) of the n ascending values v;
 * NAN when n is 0. */
double gl_eval_percentile(const double *v, size_t n, double p);

#endif
