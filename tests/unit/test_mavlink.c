/* MAVLink GPS_INPUT: the CRC, GPS time, the fix rules, the packet's bytes,
 * and the UDP and serial links. (tests/autopilot decodes the packets with
 * an implementation we did not write; this checks our own side.) */
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client/mavlink.h"
#include "client/report.h"
#include "core/err.h"
#include "test.h"

/* 2026-11-22 10:05:07.25 UTC */
#define T_US 1795341907250000ull

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }
static float getf(const uint8_t *p) {
  uint32_t v = get32(p);
  float f;
  memcpy(&f, &v, sizeof f);
  return f;
}

/* Checks the v2 framing and CRC of pkt; copies the payload, zero-padded to
 * 65 bytes as a receiver restores it. */
static int unframe(const uint8_t *pkt, size_t n, uint8_t crc_extra, uint32_t *msgid,
                   uint8_t payload[65]) {
  if (n < 12 || pkt[0] != 0xFD || (size_t)pkt[1] + 12 != n || pkt[2] != 0 || pkt[3] != 0)
    return 0;
  uint16_t crc = gl_mavlink_crc(0xFFFF, pkt + 1, n - 3);
  crc = gl_mavlink_crc(crc, &crc_extra, 1);
  if (crc != get16(pkt + n - 2))
    return 0;
  *msgid = pkt[7] | (uint32_t)pkt[8] << 8 | (uint32_t)pkt[9] << 16;
  memset(payload, 0, 65);
  memcpy(payload, pkt + 10, pkt[1]);
  return 1;
}

static void test_crc(void) {
  /* The check value of CRC-16/MCRF4XX. */
  CHECK_EQ_INT(gl_mavlink_crc(0xFFFF, "123456789", 9), 0x6F91);
  /* Continuing a CRC is the same as one pass. */
  CHECK_EQ_INT(gl_mavlink_crc(gl_mavlink_crc(0xFFFF, "1234", 4), "56789", 5), 0x6F91);
}

static void test_gps_time(void) {
  uint16_t week;
  uint32_t ms;
  gl_mavlink_gps_time(T_US, &week, &ms);
  CHECK_EQ_INT(week, 2446);
  CHECK_EQ_INT(ms, 36325250); /* 10:05:07.25 + 18 s, on Sunday of week 2446 */
  /* The leap seconds are today's 18 for any date: the GPS epoch itself
   * reads as 18 s into week 0 (the times we convert are recent). */
  gl_mavlink_gps_time(315964800ull * 1000000u, &week, &ms);
  CHECK_EQ_INT(week, 0);
  CHECK_EQ_INT(ms, 18000);
  gl_mavlink_gps_time(0, &week, &ms); /* before the GPS epoch */
  CHECK_EQ_INT(week, 0);
  CHECK_EQ_INT(ms, 0);
}

static struct gl_mavlink_fix fix_locked(void) {
  return (struct gl_mavlink_fix){.time_us = T_US,
                                 .track_status = 2,
                                 .lat = 47.0123456,
                                 .lon = -99.2000001,
                                 .radius_m = 12.5f,
                                 .confidence = 0.9f,
                                 .heading_deg = 0.0f,
                                 .vn = NAN,
                                 .ve = NAN};
}

static void test_packet_bytes(void) {
  struct gl_mavlink s = {.seq = 7};
  gl_mavlink_opts_default(&s.opts);
  s.opts.sysid = 42;
  s.opts.compid = 197;
  s.opts.gps_id = 1;
  struct gl_mavlink_fix f = fix_locked();
  uint8_t pkt[GL_MAVLINK_PACKET_MAX], pl[65];
  size_t n = gl_mavlink_pack_fix(&s, &f, pkt);
  uint32_t id = 0;
  if (!CHECK(unframe(pkt, n, 151, &id, pl)))
    return;
  CHECK_EQ_INT(n, 10 + 65 + 2); /* yaw 36000 keeps the whole payload */
  CHECK_EQ_INT(id, 232);
  CHECK_EQ_INT(pkt[4], 7);
  CHECK_EQ_INT(pkt[5], 42);
  CHECK_EQ_INT(pkt[6], 197);
  CHECK_EQ_INT(s.seq, 8);
  CHECK_EQ_U64(get64(pl + 0), T_US);
  CHECK_EQ_INT(get32(pl + 8), 36325250);
  CHECK_EQ_INT((int32_t)get32(pl + 12), 470123456);
  CHECK_EQ_INT((int32_t)get32(pl + 16), -992000001);
  CHECK(getf(pl + 20) == 0.0f);     /* alt */
  CHECK(getf(pl + 24) == 65535.0f); /* hdop unknown */
  CHECK(getf(pl + 28) == 65535.0f); /* vdop unknown */
  CHECK(getf(pl + 48) == 12.5f);    /* horiz_accuracy */
  CHECK_EQ_INT(get16(pl + 56), GL_MAVLINK_IGNORE_ALT | GL_MAVLINK_IGNORE_HDOP |
                                   GL_MAVLINK_IGNORE_VDOP | GL_MAVLINK_IGNORE_VEL_HORIZ |
                                   GL_MAVLINK_IGNORE_VEL_VERT | GL_MAVLINK_IGNORE_SPEED_ACCURACY |
                                   GL_MAVLINK_IGNORE_VERTICAL_ACCURACY);
  CHECK_EQ_INT(get16(pl + 58), 2446);
  CHECK_EQ_INT(pl[60], 1);             /* gps_id */
  CHECK_EQ_INT(pl[61], 3);             /* 3D fix */
  CHECK_EQ_INT(pl[62], 0);             /* satellites */
  CHECK_EQ_INT(get16(pl + 63), 36000); /* north is 36000, 0 would be unknown */
}

static void test_fix_rules(void) {
  struct gl_mavlink_opts o;
  gl_mavlink_opts_default(&o);
  struct gl_mavlink_gps_input m;
  struct gl_mavlink_fix f = fix_locked();
  f.heading_deg = -90.004f;
  gl_mavlink_gps_input_from_fix(&o, &f, &m);
  CHECK_EQ_INT(m.fix_type, GL_MAVLINK_FIX_3D);
  CHECK_EQ_INT(m.yaw, 27000);
  f.heading_deg = 359.996f; /* rounds to 360.00: north */
  gl_mavlink_gps_input_from_fix(&o, &f, &m);
  CHECK_EQ_INT(m.yaw, 36000);

  /* Locked but below min_confidence: a 2D fix, no heading. */
  f.confidence = 0.3f;
  gl_mavlink_gps_input_from_fix(&o, &f, &m);
  CHECK_EQ_INT(m.fix_type, GL_MAVLINK_FIX_2D);
  CHECK_EQ_INT(m.yaw, 0);

  /* Acquiring or lost: no fix, whatever the confidence. */
  f = fix_locked();
  f.track_status = 1;
  gl_mavlink_gps_input_from_fix(&o, &f, &m);
  CHECK_EQ_INT(m.fix_type, GL_MAVLINK_FIX_NONE);
  CHECK_EQ_INT(m.yaw, 0);
  f.track_status = 3;
  gl_mavlink_gps_input_from_fix(&o, &f, &m);
  CHECK_EQ_INT(m.fix_type, GL_MAVLINK_FIX_NONE);

  /* Untracked: the candidate's confidence decides; no candidate, no fix. */
  f = fix_locked();
  f.track_status = 0;
  f.confidence = 0.6f;
  gl_mavlink_gps_input_from_fix(&o, &f, &m);
  CHECK_EQ_INT(m.fix_type, GL_MAVLINK_FIX_3D);
  f.lat = f.lon = NAN;
  gl_mavlink_gps_input_from_fix(&o, &f, &m);
  CHECK_EQ_INT(m.fix_type, GL_MAVLINK_FIX_NONE);
  CHECK_EQ_INT(m.lat, 0);
  CHECK(m.ignore_flags & GL_MAVLINK_IGNORE_HORIZONTAL_ACCURACY);

  /* A velocity the client sent goes with the fix; an unknown radius is
   * flagged; an HDOP set by the user is sent. */
  f = fix_locked();
  f.vn = 3.5;
  f.ve = -1.25;
  f.radius_m = NAN;
  o.hdop = 0.9f;
  o.satellites = 10;
  gl_mavlink_gps_input_from_fix(&o, &f, &m);
  CHECK(!(m.ignore_flags & GL_MAVLINK_IGNORE_VEL_HORIZ));
  CHECK(m.ignore_flags & GL_MAVLINK_IGNORE_VEL_VERT);
  CHECK(m.vn == 3.5f && m.ve == -1.25f);
  CHECK(m.ignore_flags & GL_MAVLINK_IGNORE_HORIZONTAL_ACCURACY);
  CHECK(!(m.ignore_flags & GL_MAVLINK_IGNORE_HDOP));
  CHECK(m.hdop == 0.9f);
  CHECK_EQ_INT(m.satellites_visible, 10);
}

static void test_truncation_and_heartbeat(void) {
  struct gl_mavlink s = {.seq = 255};
  gl_mavlink_opts_default(&s.opts);
  struct gl_mavlink_fix f = fix_locked();
  f.track_status = 1; /* no fix: 1 at offset 61, then satellites and yaw are 0 */
  uint8_t pkt[GL_MAVLINK_PACKET_MAX], pl[65];
  size_t n = gl_mavlink_pack_fix(&s, &f, pkt);
  uint32_t id;
  CHECK_EQ_INT(pkt[1], 62);
  CHECK_EQ_INT(n, 10 + 62 + 2);
  CHECK(unframe(pkt, n, 151, &id, pl));
  CHECK_EQ_INT(pl[61], 1);
  CHECK_EQ_INT(s.seq, 0); /* wrapped */

  n = gl_mavlink_pack_heartbeat(&s, pkt);
  CHECK_EQ_INT(n, 10 + 9 + 2);
  if (CHECK(unframe(pkt, n, 50, &id, pl))) {
    CHECK_EQ_INT(id, 0);
    CHECK_EQ_INT(pl[4], 18); /* MAV_TYPE_ONBOARD_CONTROLLER */
    CHECK_EQ_INT(pl[8], 3);
  }
  CHECK_EQ_INT(pkt[4], 0);
  CHECK_EQ_INT(pkt[6], 191);
}

static void test_report_format(void) {
  /* --format mavlink: one packet per frame, the track's for a tracked one. */
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  struct gl_report r;
  enum gl_report_format fmt;
  CHECK(gl_report_format_parse("mavlink", &fmt) == GL_OK);
  CHECK(gl_report_track_only(fmt) && gl_report_track_only(GL_REPORT_NMEA) &&
        !gl_report_track_only(GL_REPORT_CSV));
  gl_report_begin(&r, f, fmt);
  struct gl_report_candidate c = {47.5, 8.25, 0.9f, 0.8f, 30.0f, 7, NAN};
  gl_report_frame(&r, "a.jpg", "OK", &c, 1, T_US, 1.0);
  gl_report_frame(&r, "b.jpg", "BUSY", NULL, 0, T_US, 1.0);
  struct gl_report_track t = {"LOCKED", 47.6, 8.3, 20.0f, 0.95f, 45.0f};
  gl_report_track(&r, "c.jpg", &t, T_US, 1.0);
  gl_report_end(&r);
  fclose(f);
  uint8_t pl[65];
  uint32_t id;
  size_t off = 0;
  uint8_t fixes[3] = {0};
  int k = 0;
  while (off < len && k < 3) {
    size_t n = (size_t)(uint8_t)buf[off + 1] + 12;
    if (!CHECK(off + n <= len && unframe((uint8_t *)buf + off, n, 151, &id, pl)))
      break;
    CHECK_EQ_INT(buf[off + 4], k); /* sequence */
    fixes[k++] = pl[61];
    if (k == 3)
      CHECK_EQ_INT(get16(pl + 63), 4500);
    off += n;
  }
  CHECK_EQ_INT(k, 3);
  CHECK_EQ_INT(off, len);
  CHECK_EQ_INT(fixes[0], 3);
  CHECK_EQ_INT(fixes[1], 1);
  CHECK_EQ_INT(fixes[2], 3);
  free(buf);
  CHECK_EQ_INT(gl_report_track_status("LOST"), 3);
  CHECK_EQ_INT(gl_report_track_status("?"), 0);
}

static void test_specs(void) {
  struct gl_mavlink_out *o = NULL;
  char err[256];
  static const char *const bad[] = {"tcp:1.2.3.4:5", "udp:",           "udp:host",
                                    "udp:host:0",    "udp:host:70000", "udp:[::1]14550",
                                    "udp::14550",    "serial:",        "serial:/dev/ttyS0:12345",
                                    "udp:h:1x"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_EQ_INT(gl_mavlink_out_new(bad[i], &o, err, sizeof err), GL_EINVAL);
    CHECK(o == NULL);
  }
  static const char *const good[] = {"udp:127.0.0.1:14550", "udp:[::1]:14550", "udp:localhost:1",
                                     "serial:/dev/ttyACM0", "serial:/dev/ttyAMA0:921600"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    CHECK_EQ_INT(gl_mavlink_out_new(good[i], &o, err, sizeof err), GL_OK);
    if (o)
      CHECK_EQ_STR(gl_mavlink_out_spec(o), good[i]);
    gl_mavlink_out_free(o);
  }
}

static void test_udp(void) {
  int rx = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (!CHECK(rx >= 0 && bind(rx, (struct sockaddr *)&a, sizeof a) == 0 &&
             getsockname(rx, (struct sockaddr *)&a, &al) == 0))
    return;
  char spec[64], err[256];
  snprintf(spec, sizeof spec, "udp:127.0.0.1:%u", ntohs(a.sin_port));
  struct gl_mavlink_out *o;
  if (!CHECK(gl_mavlink_out_new(spec, &o, err, sizeof err) == GL_OK))
    return;
  CHECK_EQ_INT(gl_mavlink_out_connect(o, err, sizeof err), GL_OK);
  struct gl_mavlink s = {0};
  gl_mavlink_opts_default(&s.opts);
  struct gl_mavlink_fix f = fix_locked();
  uint8_t pkt[GL_MAVLINK_PACKET_MAX], got[256];
  size_t n = gl_mavlink_pack_fix(&s, &f, pkt);
  CHECK_EQ_INT(gl_mavlink_out_send(o, pkt, n), GL_OK);
  struct pollfd pf = {.fd = rx, .events = POLLIN};
  CHECK(poll(&pf, 1, 2000) == 1);
  ssize_t r = recv(rx, got, sizeof got, 0);
  CHECK_EQ_INT(r, (ssize_t)n);
  CHECK(r == (ssize_t)n && memcmp(got, pkt, n) == 0);
  gl_mavlink_out_free(o);
  close(rx);
}

static void test_serial(void) {
  /* A pseudo-terminal stands for the autopilot's UART. */
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  if (!CHECK(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0))
    return;
  char spec[128], err[256];
  snprintf(spec, sizeof spec, "serial:%s:115200", ptsname(m));
  struct gl_mavlink_out *o;
  if (!CHECK(gl_mavlink_out_new(spec, &o, err, sizeof err) == GL_OK))
    return;
  CHECK_EQ_INT(gl_mavlink_out_connect(o, err, sizeof err), GL_OK);
  struct gl_mavlink s = {0};
  gl_mavlink_opts_default(&s.opts);
  struct gl_mavlink_fix f = fix_locked();
  uint8_t pkt[GL_MAVLINK_PACKET_MAX], got[256];
  size_t n = gl_mavlink_pack_fix(&s, &f, pkt);
  CHECK_EQ_INT(gl_mavlink_out_send(o, pkt, n), GL_OK);
  size_t have = 0;
  while (have < n) {
    struct pollfd pf = {.fd = m, .events = POLLIN};
    if (poll(&pf, 1, 2000) != 1)
      break;
    ssize_t r = read(m, got + have, sizeof got - have);
    if (r <= 0)
      break;
    have += (size_t)r;
  }
  CHECK_EQ_INT(have, n);
  CHECK(have == n && memcmp(got, pkt, n) == 0); /* raw: no byte rewritten */
  /* The far end goes away: the port fails, is closed, and is not reopened
   * more than once a second. */
  close(m);
  int rc = gl_mavlink_out_send(o, pkt, n);
  CHECK(rc == GL_EIO || rc == GL_EBUSY);
  CHECK_EQ_INT(gl_mavlink_out_send(o, pkt, n), GL_EIO);
  CHECK(gl_mavlink_out_error(o)[0] != '\0');
  gl_mavlink_out_free(o);
}

int main(void) {
  RUN(test_crc);
  RUN(test_gps_time);
  RUN(test_packet_bytes);
  RUN(test_fix_rules);
  RUN(test_truncation_and_heartbeat);
  RUN(test_report_format);
  RUN(test_specs);
  RUN(test_udp);
  RUN(test_serial);
  return TEST_END();
}
