/* MAVLink v2 GPS_INPUT packets from position estimates, so that an autopilot
 * (ArduPilot with GPS_TYPE 14 "MAV", PX4) takes geoloc as a GPS receiver,
 * and the links that carry them (UDP, a serial port).
 *
 * This is a small encoder of our own, not the generated c_library_v2: we
 * send two messages (GPS_INPUT and HEARTBEAT), Debian packages no generated
 * headers, and a vendored copy would be megabytes of headers (and a licence
 * to carry) for what is a hundred lines here. The wire layouts and CRC_EXTRA
 * bytes below are those of common.xml / minimal.xml; tests/autopilot checks
 * every field and the CRC with an implementation we did not write
 * (node-mavlink). */
#ifndef GL_CLIENT_MAVLINK_H
#define GL_CLIENT_MAVLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GL_MAVLINK_STX 0xFDu /* MAVLink 2 start byte */
/* Header (10) + the largest payload we send (GPS_INPUT, 65) + CRC (2); no
 * signature: we never sign. */
#define GL_MAVLINK_PACKET_MAX 77u

#define GL_MAVLINK_MSG_HEARTBEAT 0u
#define GL_MAVLINK_MSG_GPS_INPUT 232u

/* GPS_INPUT_IGNORE_FLAGS: fields the receiver must not use. */
enum {
  GL_MAVLINK_IGNORE_ALT = 1,
  GL_MAVLINK_IGNORE_HDOP = 2,
  GL_MAVLINK_IGNORE_VDOP = 4,
  GL_MAVLINK_IGNORE_VEL_HORIZ = 8,
  GL_MAVLINK_IGNORE_VEL_VERT = 16,
  GL_MAVLINK_IGNORE_SPEED_ACCURACY = 32,
  GL_MAVLINK_IGNORE_HORIZONTAL_ACCURACY = 64,
  GL_MAVLINK_IGNORE_VERTICAL_ACCURACY = 128,
};

/* GPS_FIX_TYPE values we send. */
enum {
  GL_MAVLINK_FIX_NONE = 1, /* NO_FIX: a receiver that has no position */
  GL_MAVLINK_FIX_2D = 2,   /* a position the autopilots do not navigate on */
  GL_MAVLINK_FIX_3D = 3,   /* a position ArduPilot's and PX4's EKFs use */
};

/* GPS_INPUT (id 232), field by field. */
struct gl_mavlink_gps_input {
  uint64_t time_usec;                                  /* Unix epoch */
  uint32_t time_week_ms;                               /* GPS time of week */
  int32_t lat, lon;                                    /* degE7 */
  float alt;                                           /* m MSL */
  float hdop, vdop;                                    /* UINT16_MAX when unknown */
  float vn, ve, vd;                                    /* m/s NED */
  float speed_accuracy, horiz_accuracy, vert_accuracy; /* m/s, m, m */
  uint16_t ignore_flags;                               /* GL_MAVLINK_IGNORE_* */
  uint16_t time_week;
  uint8_t gps_id, fix_type, satellites_visible;
  uint16_t yaw; /* cdeg clockwise from north, 1..36000; 0: unknown */
};

/* CRC-16/MCRF4XX (MAVLink's "X.25" checksum) of n bytes, continuing crc
 * (0xFFFF to start). */
uint16_t gl_mavlink_crc(uint16_t crc, const void *data, size_t n);

/* GPS week and millisecond of the week of unix_us (microseconds since the
 * Unix epoch, UTC): GPS time runs from 1980-01-06 and is ahead of UTC by
 * the leap seconds since (18 since 2017). */
void gl_mavlink_gps_time(uint64_t unix_us, uint16_t *week, uint32_t *week_ms);

/* The settings of a stream of GPS_INPUT packets. */
struct gl_mavlink_opts {
  uint8_t sysid;  /* MAVLink system id (default 1: the vehicle's) */
  uint8_t compid; /* component id (default 191, MAV_COMP_ID_ONBOARD_COMPUTER) */
  uint8_t gps_id; /* which GPS of the autopilot (0: GPS1) */
  /* Below this confidence a position is sent as a 2D fix, which the
   * autopilots show but do not navigate on (default 0.5). */
  float min_confidence;
  /* What geoloc does not measure but some autopilot checks ask for: the
   * satellites_visible claimed (default 0, the truth) and the HDOP (NaN,
   * the default: unknown, sent as UINT16_MAX and flagged ignored). */
  uint8_t satellites;
  float hdop;
};

/* The defaults above. */
void gl_mavlink_opts_default(struct gl_mavlink_opts *o);

/* What one answered frame says, as the autopilot is to see it. */
struct gl_mavlink_fix {
  uint64_t time_us;  /* the frame's capture time, Unix epoch */
  int track_status;  /* 0: not tracked (a frame's best candidate), else Track.Status */
  double lat, lon;   /* NaN when the frame has no position */
  float radius_m;    /* the estimate's radius; NaN or <= 0 when unknown */
  float confidence;  /* 0..1 */
  float heading_deg; /* the frame's top, clockwise from north; NaN when unknown */
  double vn, ve;     /* the vehicle's velocity as the client sent it; NaN: none */
};

/* The GPS_INPUT of a fix. fix_type: tracked, a 3D fix while the track is
 * LOCKED with at least min_confidence, 2D below it, NO_FIX while ACQUIRING
 * or LOST; untracked, 3D or 2D by the candidate's confidence, NO_FIX
 * without a candidate. horiz_accuracy is the radius; yaw the heading. What
 * geoloc does not know (altitude, vertical velocity and accuracy, speed
 * accuracy, the DOPs, horizontal velocity unless the client sent it) is
 * flagged in ignore_flags. */
void gl_mavlink_gps_input_from_fix(const struct gl_mavlink_opts *o, const struct gl_mavlink_fix *f,
                                   struct gl_mavlink_gps_input *out);

/* A stream of packets from one component: its settings and the sequence
 * number of its next packet. */
struct gl_mavlink {
  struct gl_mavlink_opts opts;
  uint8_t seq;
};

/* Frames m as a MAVLink v2 packet into buf (GL_MAVLINK_PACKET_MAX bytes)
 * and returns its length; advances s->seq. */
size_t gl_mavlink_pack_gps_input(struct gl_mavlink *s, const struct gl_mavlink_gps_input *m,
                                 uint8_t *buf);

/* The packet of a fix: gl_mavlink_gps_input_from_fix, then packed. */
size_t gl_mavlink_pack_fix(struct gl_mavlink *s, const struct gl_mavlink_fix *f, uint8_t *buf);

/* A HEARTBEAT of an onboard controller (MAV_TYPE_ONBOARD_CONTROLLER, no
 * autopilot, ACTIVE), which routers and ground stations list components by. */
size_t gl_mavlink_pack_heartbeat(struct gl_mavlink *s, uint8_t *buf);

/* --- links ------------------------------------------------------------------ */

/* Where packets go: "udp:HOST:PORT" ("udp:[v6]:PORT"), or
 * "serial:/dev/ttyX[:BAUD]" (raw 8N1, default 57600 baud). */
struct gl_mavlink_out;

/* Parses spec and returns a link that is not open yet. Returns 0, or
 * GL_EINVAL (GL_ENOMEM) with err. */
int gl_mavlink_out_new(const char *spec, struct gl_mavlink_out **out, char *err, size_t errlen);

/* Opens (or reopens) the link now: resolves the UDP host, or opens and sets
 * up the serial port. Returns 0, or GL_EADDR / GL_EIO with err. */
int gl_mavlink_out_connect(struct gl_mavlink_out *o, char *err, size_t errlen);

/* Sends one packet, without blocking for long: a link that is closed, or
 * that failed, is opened again first, at most once a second. A serial port
 * that fails (unplugged) is closed, to be reopened by a later send. Returns
 * 0; GL_EBUSY when the link could not take the packet now (dropped); GL_EIO
 * when it is down. Allocates nothing, but to reopen a link. */
int gl_mavlink_out_send(struct gl_mavlink_out *o, const uint8_t *pkt, size_t n);

/* Text of the link's last failure ("" when none). */
const char *gl_mavlink_out_error(const struct gl_mavlink_out *o);

/* The spec it was made from. */
const char *gl_mavlink_out_spec(const struct gl_mavlink_out *o);

void gl_mavlink_out_free(struct gl_mavlink_out *o);

#endif
