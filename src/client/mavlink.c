/* MAVLink v2 GPS_INPUT packets and their links (see mavlink.h). */
#include "client/mavlink.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"

/* CRC_EXTRA of each message we send: the checksum of its XML definition
 * (name and fields) that the receiver folds into the CRC, so a packet of a
 * message it knows differently is refused. From common.xml / minimal.xml. */
#define GL__CRC_EXTRA_HEARTBEAT 50u
#define GL__CRC_EXTRA_GPS_INPUT 151u

#define GL__GPS_INPUT_LEN 65u /* 63 + the yaw extension */
#define GL__HEARTBEAT_LEN 9u

/* Seconds from the Unix epoch to the GPS epoch (1980-01-06), and GPS time's
 * lead over UTC (the leap seconds since 1980: 18 since 2017-01-01, and no
 * new one announced since). */
#define GL__GPS_EPOCH_UNIX_S 315964800ull
#define GL__GPS_LEAP_S 18ull
#define GL__MS_PER_WEEK 604800000ull

uint16_t gl_mavlink_crc(uint16_t crc, const void *data, size_t n) {
  const uint8_t *p = data;
  for (size_t i = 0; i < n; i++) {
    uint8_t t = (uint8_t)(p[i] ^ (crc & 0xff));
    t ^= (uint8_t)(t << 4);
    crc = (uint16_t)((crc >> 8) ^ ((uint16_t)t << 8) ^ ((uint16_t)t << 3) ^ (t >> 4));
  }
  return crc;
}

void gl_mavlink_gps_time(uint64_t unix_us, uint16_t *week, uint32_t *week_ms) {
  uint64_t ms = unix_us / 1000u;
  if (ms < GL__GPS_EPOCH_UNIX_S * 1000u) {
    *week = 0;
    *week_ms = 0;
    return;
  }
  uint64_t gps_ms = ms - GL__GPS_EPOCH_UNIX_S * 1000u + GL__GPS_LEAP_S * 1000u;
  *week = (uint16_t)(gps_ms / GL__MS_PER_WEEK);
  *week_ms = (uint32_t)(gps_ms % GL__MS_PER_WEEK);
}

void gl_mavlink_opts_default(struct gl_mavlink_opts *o) {
  *o = (struct gl_mavlink_opts){
      .sysid = 1, .compid = 191, .gps_id = 0, .min_confidence = 0.5f, .satellites = 0, .hdop = NAN};
}

/* The fix type by the rules of gl_mavlink_gps_input_from_fix. */
static uint8_t gl__fix_type(const struct gl_mavlink_opts *o, const struct gl_mavlink_fix *f,
                            bool have_pos) {
  if (!have_pos)
    return GL_MAVLINK_FIX_NONE;
  if (f->track_status != 0 && f->track_status != 2) /* ACQUIRING, LOST, unspecified */
    return GL_MAVLINK_FIX_NONE;
  return f->confidence >= o->min_confidence ? GL_MAVLINK_FIX_3D : GL_MAVLINK_FIX_2D;
}

void gl_mavlink_gps_input_from_fix(const struct gl_mavlink_opts *o, const struct gl_mavlink_fix *f,
                                   struct gl_mavlink_gps_input *m) {
  const bool have_pos = f->lat >= -90.0 && f->lat <= 90.0 && f->lon >= -180.0 && f->lon <= 180.0;
  *m = (struct gl_mavlink_gps_input){
      .time_usec = f->time_us,
      .gps_id = o->gps_id,
      .satellites_visible = o->satellites,
      .fix_type = gl__fix_type(o, f, have_pos),
      /* Altitude, vertical velocity and accuracy: geoloc sees the ground
       * from above and knows nothing of its own height; speed accuracy:
       * nobody measured one. */
      .ignore_flags = GL_MAVLINK_IGNORE_ALT | GL_MAVLINK_IGNORE_VDOP | GL_MAVLINK_IGNORE_VEL_VERT |
                      GL_MAVLINK_IGNORE_SPEED_ACCURACY | GL_MAVLINK_IGNORE_VERTICAL_ACCURACY,
      /* common.xml: a DOP that is unknown is UINT16_MAX, so a receiver that
       * reads it despite the flag sees a useless DOP rather than a perfect
       * one. */
      .hdop = UINT16_MAX,
      .vdop = UINT16_MAX,
  };
  gl_mavlink_gps_time(f->time_us, &m->time_week, &m->time_week_ms);
  if (have_pos) {
    m->lat = (int32_t)llround(f->lat * 1e7);
    m->lon = (int32_t)llround(f->lon * 1e7);
  }
  if (have_pos && isfinite(f->radius_m) && f->radius_m > 0)
    m->horiz_accuracy = f->radius_m;
  else
    m->ignore_flags |= GL_MAVLINK_IGNORE_HORIZONTAL_ACCURACY;
  if (isfinite(o->hdop) && o->hdop > 0)
    m->hdop = o->hdop;
  else
    m->ignore_flags |= GL_MAVLINK_IGNORE_HDOP;
  if (isfinite(f->vn) && isfinite(f->ve)) {
    m->vn = (float)f->vn;
    m->ve = (float)f->ve;
  } else {
    m->ignore_flags |= GL_MAVLINK_IGNORE_VEL_HORIZ;
  }
  /* Only a fix the autopilot navigates on carries a heading: one with
   * EK3_SRC1_YAW = GPS takes any yaw it is sent, fix or not. 0 means
   * unknown, so north is 36000. */
  if (m->fix_type == GL_MAVLINK_FIX_3D && isfinite(f->heading_deg)) {
    double h = fmod((double)f->heading_deg, 360.0);
    if (h < 0)
      h += 360.0;
    long cd = lround(h * 100.0);
    m->yaw = (uint16_t)(cd == 0 ? 36000 : cd);
  }
}

/* Little-endian stores, whatever the host's byte order. */
static uint8_t *gl__put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  return p + 2;
}

static uint8_t *gl__put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
  return p + 4;
}

static uint8_t *gl__put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
  return p + 8;
}

static uint8_t *gl__putf(uint8_t *p, float f) {
  uint32_t v;
  memcpy(&v, &f, sizeof v);
  return gl__put32(p, v);
}

/* Wraps the len-byte payload already at buf + 10 into a v2 packet. */
static size_t gl__frame(struct gl_mavlink *s, uint32_t msgid, uint8_t crc_extra, size_t len,
                        uint8_t *buf) {
  /* MAVLink 2 drops the payload's trailing zero bytes (the receiver puts
   * them back), keeping at least one. */
  while (len > 1 && buf[10 + len - 1] == 0)
    len--;
  buf[0] = GL_MAVLINK_STX;
  buf[1] = (uint8_t)len;
  buf[2] = 0; /* incompat_flags: not signed */
  buf[3] = 0; /* compat_flags */
  buf[4] = s->seq++;
  buf[5] = s->opts.sysid;
  buf[6] = s->opts.compid;
  buf[7] = (uint8_t)msgid;
  buf[8] = (uint8_t)(msgid >> 8);
  buf[9] = (uint8_t)(msgid >> 16);
  uint16_t crc = gl_mavlink_crc(0xFFFF, buf + 1, 9 + len);
  crc = gl_mavlink_crc(crc, &crc_extra, 1);
  gl__put16(buf + 10 + len, crc);
  return 10 + len + 2;
}

size_t gl_mavlink_pack_gps_input(struct gl_mavlink *s, const struct gl_mavlink_gps_input *m,
                                 uint8_t *buf) {
  /* Fields in wire order: by type size, largest first, in XML order
   * within a size; then the extension (yaw). */
  uint8_t *p = buf + 10;
  p = gl__put64(p, m->time_usec);
  p = gl__put32(p, m->time_week_ms);
  p = gl__put32(p, (uint32_t)m->lat);
  p = gl__put32(p, (uint32_t)m->lon);
  p = gl__putf(p, m->alt);
  p = gl__putf(p, m->hdop);
  p = gl__putf(p, m->vdop);
  p = gl__putf(p, m->vn);
  p = gl__putf(p, m->ve);
  p = gl__putf(p, m->vd);
  p = gl__putf(p, m->speed_accuracy);
  p = gl__putf(p, m->horiz_accuracy);
  p = gl__putf(p, m->vert_accuracy);
  p = gl__put16(p, m->ignore_flags);
  p = gl__put16(p, m->time_week);
  *p++ = m->gps_id;
  *p++ = m->fix_type;
  *p++ = m->satellites_visible;
  p = gl__put16(p, m->yaw);
  return gl__frame(s, GL_MAVLINK_MSG_GPS_INPUT, GL__CRC_EXTRA_GPS_INPUT, (size_t)(p - (buf + 10)),
                   buf);
}

size_t gl_mavlink_pack_fix(struct gl_mavlink *s, const struct gl_mavlink_fix *f, uint8_t *buf) {
  struct gl_mavlink_gps_input m;
  gl_mavlink_gps_input_from_fix(&s->opts, f, &m);
  return gl_mavlink_pack_gps_input(s, &m, buf);
}

size_t gl_mavlink_pack_heartbeat(struct gl_mavlink *s, uint8_t *buf) {
  uint8_t *p = gl__put32(buf + 10, 0); /* custom_mode */
  *p++ = 18;                           /* type: MAV_TYPE_ONBOARD_CONTROLLER */
  *p++ = 8;                            /* autopilot: MAV_AUTOPILOT_INVALID (not one) */
  *p++ = 0;                            /* base_mode */
  *p++ = 4;                            /* system_status: MAV_STATE_ACTIVE */
  *p++ = 3;                            /* mavlink_version */
  return gl__frame(s, GL_MAVLINK_MSG_HEARTBEAT, GL__CRC_EXTRA_HEARTBEAT, GL__HEARTBEAT_LEN, buf);
}

/* --- links ------------------------------------------------------------------ */

enum gl__link { GL__UDP, GL__SERIAL };

struct gl_mavlink_out {
  enum gl__link kind;
  char *spec;
  char *host, *port; /* UDP, in buf */
  char *path;        /* serial, in buf */
  speed_t speed;
  char *buf;
  int fd;     /* -1 while closed */
  bool tried; /* an open was tried at last_try_ms */
  uint64_t last_try_ms;
  char err[200];
};

static const struct {
  unsigned baud;
  speed_t speed;
} gl__bauds[] = {
    {1200, B1200},       {2400, B2400},       {4800, B4800},       {9600, B9600},
    {19200, B19200},     {38400, B38400},     {57600, B57600},     {115200, B115200},
    {230400, B230400},   {460800, B460800},   {500000, B500000},   {921600, B921600},
    {1000000, B1000000}, {1500000, B1500000}, {2000000, B2000000}, {3000000, B3000000},
};

/* Parses "udp:HOST:PORT" or "serial:PATH[:BAUD]" into o (buf holds the
 * pieces). */
static int gl__parse_spec(struct gl_mavlink_out *o, char *err, size_t errlen) {
  const char *spec = o->spec;
  if (strncmp(spec, "udp:", 4) == 0) {
    o->kind = GL__UDP;
    char *h = o->buf + 4, *colon;
    if (*h == '[') {
      char *close = strchr(h, ']');
      if (!close || close[1] != ':')
        goto bad;
      *close = '\0';
      h++;
      colon = close + 1;
    } else if (!(colon = strrchr(h, ':'))) {
      goto bad;
    }
    *colon = '\0';
    o->host = h;
    o->port = colon + 1;
    char *end;
    errno = 0;
    unsigned long port = strtoul(o->port, &end, 10);
    if (!*o->host || !*o->port || *end || errno || port < 1 || port > 65535 ||
        strspn(o->port, "0123456789") != strlen(o->port))
      goto bad;
    return GL_OK;
  }
  if (strncmp(spec, "serial:", 7) == 0) {
    o->kind = GL__SERIAL;
    o->path = o->buf + 7;
    unsigned baud = 57600;
    char *colon = strrchr(o->path, ':');
    if (colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1)) {
      *colon = '\0';
      unsigned long b = strtoul(colon + 1, NULL, 10);
      baud = b > 100000000ul ? 0 : (unsigned)b;
      size_t i = 0;
      while (i < sizeof gl__bauds / sizeof gl__bauds[0] && gl__bauds[i].baud != baud)
        i++;
      if (i == sizeof gl__bauds / sizeof gl__bauds[0])
        return gl_fail(err, errlen, GL_EINVAL, "mavlink link '%s': unsupported baud rate %s", spec,
                       colon + 1);
    }
    for (size_t i = 0; i < sizeof gl__bauds / sizeof gl__bauds[0]; i++)
      if (gl__bauds[i].baud == baud)
        o->speed = gl__bauds[i].speed;
    if (!*o->path)
      goto bad;
    return GL_OK;
  }
bad:
  return gl_fail(err, errlen, GL_EINVAL,
                 "mavlink link '%s': want udp:HOST:PORT or serial:/dev/ttyX[:BAUD]", spec);
}

int gl_mavlink_out_new(const char *spec, struct gl_mavlink_out **out, char *err, size_t errlen) {
  struct gl_mavlink_out *o = calloc(1, sizeof *o);
  int rc = GL_ENOMEM;
  *out = NULL;
  if (!o || !(o->spec = strdup(spec)) || !(o->buf = strdup(spec))) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  o->fd = -1;
  if ((rc = gl__parse_spec(o, err, errlen)) != GL_OK)
    goto fail;
  *out = o;
  return GL_OK;
fail:
  gl_mavlink_out_free(o);
  return rc;
}

static void gl__close(struct gl_mavlink_out *o) {
  if (o->fd >= 0)
    close(o->fd);
  o->fd = -1;
}

static int gl__connect_udp(struct gl_mavlink_out *o) {
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  int g = getaddrinfo(o->host, o->port, &hints, &res);
  if (g != 0) {
    snprintf(o->err, sizeof o->err, "%s: %s", o->spec, gai_strerror(g));
    return GL_EADDR;
  }
  int rc = GL_EIO;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0)
      continue;
    /* Connected, so that the kernel keeps the destination and a send
     * never blocks on a lookup. */
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      o->fd = fd;
      rc = GL_OK;
      break;
    }
    close(fd);
  }
  if (rc != GL_OK)
    snprintf(o->err, sizeof o->err, "%s: %s", o->spec, strerror(errno));
  freeaddrinfo(res);
  return rc;
}

static int gl__connect_serial(struct gl_mavlink_out *o) {
  int fd = open(o->path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    snprintf(o->err, sizeof o->err, "%s: %s", o->spec, strerror(errno));
    return GL_EIO;
  }
  struct termios t;
  if (tcgetattr(fd, &t) == 0) {
    /* Raw 8N1 at the baud rate, no flow control, no modem lines. */
    cfmakeraw(&t);
    t.c_cflag |= CLOCAL | CREAD;
    t.c_cflag &= ~(tcflag_t)(CSTOPB | CRTSCTS);
    cfsetispeed(&t, o->speed);
    cfsetospeed(&t, o->speed);
    if (tcsetattr(fd, TCSANOW, &t) != 0) {
      snprintf(o->err, sizeof o->err, "%s: %s", o->spec, strerror(errno));
      close(fd);
      return GL_EIO;
    }
  } /* else not a terminal (a FIFO, a file): bytes as they are */
  o->fd = fd;
  return GL_OK;
}

static uint64_t gl__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int gl_mavlink_out_connect(struct gl_mavlink_out *o, char *err, size_t errlen) {
  gl__close(o);
  o->tried = true;
  o->last_try_ms = gl__now_ms();
  int rc = o->kind == GL__UDP ? gl__connect_udp(o) : gl__connect_serial(o);
  if (rc != GL_OK)
    return gl_fail(err, errlen, rc, "%s", o->err);
  o->err[0] = '\0';
  return GL_OK;
}

/* Writes all of pkt to a serial port within ~50 ms. A port that cannot take
 * the start of a packet drops it whole (no half packets on the wire); one
 * that stalls in the middle leaves a broken packet, which the receiver's
 * CRC discards. */
static int gl__write_serial(struct gl_mavlink_out *o, const uint8_t *pkt, size_t n) {
  size_t done = 0;
  int waits = 0;
  while (done < n) {
    ssize_t w = write(o->fd, pkt + done, n - done);
    if (w > 0) {
      done += (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (done == 0)
        return GL_EBUSY;
      struct pollfd pf = {.fd = o->fd, .events = POLLOUT};
      if (++waits > 5 || poll(&pf, 1, 10) < 0)
        return GL_EBUSY;
      continue;
    }
    /* EIO, ENXIO, ENODEV: the adapter is gone; reopen it later. */
    snprintf(o->err, sizeof o->err, "%s: %s", o->spec, w < 0 ? strerror(errno) : "wrote nothing");
    gl__close(o);
    return GL_EIO;
  }
  return GL_OK;
}

int gl_mavlink_out_send(struct gl_mavlink_out *o, const uint8_t *pkt, size_t n) {
  if (o->fd < 0) {
    if (o->tried && gl__now_ms() - o->last_try_ms < 1000)
      return GL_EIO;
    if (gl_mavlink_out_connect(o, NULL, 0) != GL_OK)
      return GL_EIO;
  }
  if (o->kind == GL__SERIAL)
    return gl__write_serial(o, pkt, n);
  ssize_t w = send(o->fd, pkt, n, MSG_NOSIGNAL);
  if (w == (ssize_t)n)
    return GL_OK;
  if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
    return GL_EBUSY;
  /* ECONNREFUSED (nobody listens yet), ENETUNREACH: the socket stays; the
   * next packet goes when the other end is back. */
  snprintf(o->err, sizeof o->err, "%s: %s", o->spec, w < 0 ? strerror(errno) : "short send");
  return GL_EIO;
}

const char *gl_mavlink_out_error(const struct gl_mavlink_out *o) { return o->err; }

const char *gl_mavlink_out_spec(const struct gl_mavlink_out *o) { return o->spec; }

void gl_mavlink_out_free(struct gl_mavlink_out *o) {
  if (!o)
    return;
  gl__close(o);
  free(o->spec);
  free(o->buf);
  free(o);
}
