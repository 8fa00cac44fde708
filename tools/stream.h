/* Streaming image files to geolocd, pipelined: several frames in flight,
 * each answer handed to a callback as it arrives. Shared by `geoloc query`
 * and `geoloc eval --connect`. */
#ifndef GL_TOOLS_STREAM_H
#define GL_TOOLS_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "camera.h"
#include "client/client.h"
#include "client/report.h"
#include "map/map.h"

/* The answer to one file (or why it never reached the server). */
struct gl_cli_answer {
  size_t index;       /* into the paths */
  const char *status; /* "OK", an Estimate status or Error code name, or a local failure
                         ("UNREADABLE", "BAD_IMAGE", "TOO_LARGE") */
  bool ok;            /* an Estimate with status OK */
  const struct gl_report_candidate *cand; /* best first; valid during the callback */
  size_t n;
  uint64_t capture_us; /* Unix epoch, when the frame was sent */
  double latency_ms;   /* from sending to the answer; 0 for a local failure */
  /* The stream's track after the frame (tracked streams): status (0 when
   * the answer has none, else Track.Status), position, radius, heading
   * (NaN when unknown) and confidence. */
  int track_status;
  double track_lat, track_lon;
  float track_radius_m, track_heading_deg, track_confidence;
  /* A smoothed track (fixed lag) of an earlier frame: its status (0: none),
   * its index among the paths, and its position. */
  int smoothed_status;
  size_t smoothed_index;
  double smoothed_lat, smoothed_lon;
};

/* Candidates an answer holds at most: more than the server ever sends (100). */
#define GL_CLI_MAX_CANDIDATES 128

/* The answer an Estimate gives: status, candidates (into cand, which has
 * GL_CLI_MAX_CANDIDATES places), track and smoothed track; index,
 * capture_us and latency_ms are the caller's to fill. */
void gl_cli_answer_of_estimate(const Geoloc__V1__Estimate *e, struct gl_report_candidate *cand,
                               struct gl_cli_answer *a);

struct gl_cli_stream_opts {
  struct gl_client_opts co;
  const char *prog;        /* prefix of messages: "geoloc", "geoloc eval" */
  const char *client_name; /* sent in Hello */
  const char *map;         /* NULL: the server's only map */
  uint32_t top_k;          /* 0: the server's default */
  uint32_t window;         /* frames in flight (capped by the server's limit) */
  /* After a connection that worked is lost: how long to try to connect
   * again (the frames it had in flight are then sent again); 0: give up at
   * once. */
  uint32_t reconnect_ms;
  /* Priors: NULL for none; otherwise one per path when priors_per_frame,
   * else priors[0] for every frame. A radius <= 0 sends no prior. */
  const struct gl_map_prior *priors;
  bool priors_per_frame;
  /* Compass headings: NULL for none, else one per path (NaN: none). */
  const double *headings;
  /* Tracking: ask the server to track the stream (it must agree), with the
   * vehicle's top speed (0: the server's default); capture times (NULL: the
   * time of sending) and velocities {north, east} m/s (NULL or NaN: none),
   * one per path. */
  bool track;
  double max_speed_mps;
  uint32_t fixed_lag; /* frames of fixed-lag smoothing asked for (0: none) */
  const uint64_t *times;
  const double (*vels)[2];
  /* Photos: NULL for none, else one per path (gl_cli_photo_resolve): each
   * file is turned upright by its orientation before it is sent (a JPEG
   * losslessly, anything else as RGB8), carries its camera when it has one,
   * and one whose camera was refused is answered locally (BAD_REQUEST). */
  const struct gl_cli_photo *photos;
  /* Called once the server has welcomed us, before the first frame; may
   * be NULL. */
  void (*ready_cb)(void *ctx);
  void (*answer_cb)(void *ctx, const struct gl_cli_answer *a);
  void *ctx;
};

/* Connects, says Hello and streams the n files, calling answer_cb once per
 * file. Returns 0 when every file was answered (whatever the statuses), or
 * the error that ended the stream (connection, refusal, protocol); what
 * went wrong is printed to stderr. */
int gl_cli_stream(const struct gl_cli_stream_opts *o, char *const *paths, size_t n);

#endif
