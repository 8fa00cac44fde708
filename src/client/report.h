/* Printing ranked estimates as a table, CSV, GeoJSON, NMEA or MAVLink, for
 * the CLI commands that produce them (query, locate). */
#ifndef GL_CLIENT_REPORT_H
#define GL_CLIENT_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "client/mavlink.h"

enum gl_report_format {
  GL_REPORT_TABLE,
  GL_REPORT_CSV,
  GL_REPORT_GEOJSON,
  GL_REPORT_NMEA,
  GL_REPORT_MAVLINK /* binary MAVLink v2 GPS_INPUT packets */
};

struct gl_report_candidate {
  double lat, lon;
  float score, confidence, radius_m;
  uint64_t tile_id;
  float heading_deg; /* estimated heading of the frame's top; NaN when unknown */
};

struct gl_report {
  FILE *f;
  enum gl_report_format fmt;
  unsigned features; /* GeoJSON features written so far */
  /* MAVLink: the packets' ids and fix rules, and their sequence;
   * gl_report_begin sets the defaults, which a caller may change after. */
  struct gl_mavlink mavlink;
};

/* Parses "table", "csv", "geojson", "nmea" or "mavlink". Returns 0 or
 * GL_EINVAL. */
int gl_report_format_parse(const char *name, enum gl_report_format *out);

/* Writes the header (CSV, table) or the opening of the collection (GeoJSON). */
void gl_report_begin(struct gl_report *r, FILE *f, enum gl_report_format fmt);

/* Writes one frame's answer: status is "OK" or the name of what went wrong
 * (an Error code or an Estimate status), candidates best first. time_us
 * (Unix epoch, UTC) stamps NMEA sentences and MAVLink packets; NMEA carries
 * only the best candidate, and nothing for a frame without one; MAVLink one
 * GPS_INPUT packet, of the best candidate or (none) with no fix. */
void gl_report_frame(struct gl_report *r, const char *image, const char *status,
                     const struct gl_report_candidate *c, size_t n, uint64_t time_us,
                     double latency_ms);

/* A stream's track after a frame (Estimate.track). */
struct gl_report_track {
  const char *status; /* "ACQUIRING", "LOCKED" or "LOST" */
  double lat, lon;
  float radius_m, confidence;
  float heading_deg; /* NaN when unknown */
};

/* Writes a tracked frame's track, after its gl_report_frame: a row of rank
 * "track" whose status is the track's (table, CSV), a feature with
 * "track": status (GeoJSON); for NMEA, the fix sentences of the track
 * while it is LOCKED, and for MAVLink the track's GPS_INPUT packet (no fix
 * unless LOCKED), which then stand for the frame (the caller writes no
 * gl_report_frame of a tracked frame for NMEA or MAVLink:
 * gl_report_track_only). */
void gl_report_track(struct gl_report *r, const char *image, const struct gl_report_track *t,
                     uint64_t time_us, double latency_ms);

/* True for the formats in which a tracked frame is written by its track
 * alone (NMEA, MAVLink: a receiver takes every fix as the position). */
bool gl_report_track_only(enum gl_report_format fmt);

/* Track.Status from its name ("ACQUIRING": 1, "LOCKED": 2, "LOST": 3; 0 for
 * anything else). */
int gl_report_track_status(const char *name);

/* Writes s as one CSV field (RFC 4180: a field with a comma, quote or line
 * break is quoted, quotes doubled). */
void gl_report_csv_field(FILE *f, const char *s);

/* Closes the GeoJSON collection and flushes. */
void gl_report_end(struct gl_report *r);

#endif
