/* Writes the fixes of known answers as geoloc does, for test_autopilot.py to
 * decode with implementations we did not write (node-mavlink, gpsd).
 *
 *   emit nmea                          < FIXES    NMEA (gl_report) to stdout
 *   emit mavlink SYS COMP GPS_ID [LINK] < FIXES   GPS_INPUT packets to stdout,
 *                                                 or to LINK (a HEARTBEAT first)
 *
 * FIXES: one line per frame, "time_us,lat,lon,radius_m,confidence,
 * heading_deg,track_status,vn,ve" ("nan" for unknown; track_status 0 for an
 * untracked frame's best candidate, else Track.Status). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/mavlink.h"
#include "client/report.h"
#include "core/err.h"

static int parse_line(const char *line, struct gl_mavlink_fix *f) {
  char *end;
  double v[9];
  const char *p = line;
  for (int i = 0; i < 9; i++) {
    v[i] = strtod(p, &end);
    if (end == p || (i < 8 && *end != ',') || (i == 8 && *end != '\n' && *end != '\0'))
      return -1;
    p = end + 1;
  }
  *f = (struct gl_mavlink_fix){.time_us = (uint64_t)v[0],
                               .lat = v[1],
                               .lon = v[2],
                               .radius_m = (float)v[3],
                               .confidence = (float)v[4],
                               .heading_deg = (float)v[5],
                               .track_status = (int)v[6],
                               .vn = v[7],
                               .ve = v[8]};
  return 0;
}

int main(int argc, char **argv) {
  const bool nmea = argc == 2 && strcmp(argv[1], "nmea") == 0;
  const bool mav = (argc == 5 || argc == 6) && strcmp(argv[1], "mavlink") == 0;
  if (!nmea && !mav) {
    fprintf(stderr, "usage: emit nmea | emit mavlink SYS COMP GPS_ID [LINK]  < FIXES\n");
    return 2;
  }
  struct gl_report r;
  gl_report_begin(&r, stdout, nmea ? GL_REPORT_NMEA : GL_REPORT_MAVLINK);
  struct gl_mavlink s = {.seq = 0};
  gl_mavlink_opts_default(&s.opts);
  struct gl_mavlink_out *out = NULL;
  char err[256];
  if (mav) {
    s.opts.sysid = (uint8_t)atoi(argv[2]);
    s.opts.compid = (uint8_t)atoi(argv[3]);
    s.opts.gps_id = (uint8_t)atoi(argv[4]);
    if (argc == 6 && (gl_mavlink_out_new(argv[5], &out, err, sizeof err) != GL_OK ||
                      gl_mavlink_out_connect(out, err, sizeof err) != GL_OK)) {
      fprintf(stderr, "emit: %s\n", err);
      return 1;
    }
  }
  uint8_t pkt[GL_MAVLINK_PACKET_MAX];
  if (out) {
    size_t n = gl_mavlink_pack_heartbeat(&s, pkt);
    gl_mavlink_out_send(out, pkt, n);
  }
  char line[512];
  int status = 0;
  while (fgets(line, sizeof line, stdin)) {
    struct gl_mavlink_fix f;
    if (parse_line(line, &f) != 0) {
      fprintf(stderr, "emit: bad line: %s", line);
      status = 1;
      break;
    }
    if (nmea) {
      /* As geoloc query writes them: a tracked frame by its track alone. */
      static const char *const names[] = {"", "ACQUIRING", "LOCKED", "LOST"};
      if (f.track_status >= 1 && f.track_status <= 3) {
        struct gl_report_track t = {names[f.track_status], f.lat,        f.lon, f.radius_m,
                                    f.confidence,          f.heading_deg};
        gl_report_track(&r, "frame", &t, f.time_us, 0);
      } else {
        struct gl_report_candidate c = {f.lat,      f.lon, 1.0f,         f.confidence,
                                        f.radius_m, 0,     f.heading_deg};
        gl_report_frame(&r, "frame", "OK", &c, isnan(f.lat) ? 0 : 1, f.time_us, 0);
      }
      continue;
    }
    size_t n = gl_mavlink_pack_fix(&s, &f, pkt);
    if (out) {
      int rc = gl_mavlink_out_send(out, pkt, n);
      if (rc != GL_OK) {
        fprintf(stderr, "emit: send: %s %s\n", gl_strerror(rc), gl_mavlink_out_error(out));
        status = 1;
      }
      /* UDP on loopback drops nothing at this pace; a pty is read as fast. */
      nanosleep(&(struct timespec){.tv_nsec = 2000000}, NULL);
    } else {
      fwrite(pkt, 1, n, stdout);
    }
  }
  gl_report_end(&r);
  gl_mavlink_out_free(out);
  return status;
}
