/* Feeding an autopilot (autopilot.h). */
#include "autopilot.h"

#include <math.h>
#include <stdio.h>
#include <time.h>

#include "cli.h"
#include "core/err.h"

#define HEARTBEAT_PERIOD_US 1000000u

void gl_cli_mavlink_init(struct gl_cli_mavlink *m) {
  *m = (struct gl_cli_mavlink){0};
  gl_mavlink_opts_default(&m->opts);
}

int gl_cli_mavlink_option(int o, const char *flag, const char *arg, struct gl_cli_mavlink *m) {
  uint32_t u;
  double d;
  int rc;
  switch (o) {
  case 1300: {
    /* Checked now, so that a bad LINK is wrong usage like any option. */
    struct gl_mavlink_out *out;
    char err[256];
    if (gl_mavlink_out_new(arg, &out, err, sizeof err) != GL_OK) {
      fprintf(stderr, "geoloc: %s: %s\n", flag, err);
      return GL_EINVAL;
    }
    gl_mavlink_out_free(out);
    m->link = arg;
    return GL_OK;
  }
  case 1301:
  case 1302:
  case 1303:
  case 1305:
    /* Ids 0 are "broadcast" in MAVLink: a sender has one of its own. */
    if ((rc = gl_cli_u32(flag, arg, o == 1303 || o == 1305 ? 0 : 1, 255, &u)) != GL_OK)
      return rc;
    *(o == 1301   ? &m->opts.sysid
      : o == 1302 ? &m->opts.compid
      : o == 1303 ? &m->opts.gps_id
                  : &m->opts.satellites) = (uint8_t)u;
    return GL_OK;
  case 1304:
    if ((rc = gl_cli_double(flag, arg, 0, 1, &d)) != GL_OK)
      return rc;
    m->opts.min_confidence = (float)d;
    return GL_OK;
  case 1306:
    if ((rc = gl_cli_positive(flag, arg, 100, &d)) != GL_OK)
      return rc;
    m->opts.hdop = (float)d;
    return GL_OK;
  case 1307:
    m->no_heartbeat = true;
    return GL_OK;
  }
  return GL_EINVAL;
}

void gl_cli_answer_fix(const struct gl_cli_answer *a, double vn, double ve,
                       struct gl_mavlink_fix *f) {
  *f = (struct gl_mavlink_fix){.time_us = a->capture_us,
                               .lat = NAN,
                               .lon = NAN,
                               .radius_m = NAN,
                               .heading_deg = NAN,
                               .vn = vn,
                               .ve = ve};
  if (a->track_status) {
    f->track_status = a->track_status;
    f->lat = a->track_lat;
    f->lon = a->track_lon;
    f->radius_m = a->track_radius_m;
    f->confidence = a->track_confidence;
    f->heading_deg = a->track_heading_deg;
  } else if (a->n > 0) {
    f->lat = a->cand[0].lat;
    f->lon = a->cand[0].lon;
    f->radius_m = a->cand[0].radius_m;
    f->confidence = a->cand[0].confidence;
    f->heading_deg = a->cand[0].heading_deg;
  }
}

int gl_cli_autopilot_open(struct gl_cli_autopilot *ap, const char *prog,
                          const struct gl_cli_mavlink *m, bool must_open) {
  char err[256];
  *ap = (struct gl_cli_autopilot){.prog = prog, .heartbeat = !m->no_heartbeat};
  ap->stream.opts = m->opts;
  if (!m->link)
    return GL_OK;
  int rc = gl_mavlink_out_new(m->link, &ap->out, err, sizeof err);
  if (rc != GL_OK) {
    fprintf(stderr, "%s: --mavlink: %s\n", prog, err);
    return rc;
  }
  if ((rc = gl_mavlink_out_connect(ap->out, err, sizeof err)) != GL_OK) {
    if (must_open) {
      fprintf(stderr, "%s: --mavlink: %s\n", prog, err);
      gl_cli_autopilot_close(ap);
      return rc;
    }
    fprintf(stderr, "%s: mavlink: %s (trying again every second)\n", prog, err);
    ap->down = true;
  }
  return GL_OK;
}

/* Sends one packet, telling when the link goes down and comes back. */
static void autopilot_put(struct gl_cli_autopilot *ap, const uint8_t *pkt, size_t n) {
  int rc = gl_mavlink_out_send(ap->out, pkt, n);
  if (rc == GL_OK) {
    ap->sent++;
    if (ap->down)
      fprintf(stderr, "%s: mavlink: %s is back\n", ap->prog, gl_mavlink_out_spec(ap->out));
    ap->down = false;
    return;
  }
  ap->dropped++;
  if (rc == GL_EIO && !ap->down)
    fprintf(stderr, "%s: mavlink: %s (packets are dropped until it is back)\n", ap->prog,
            gl_mavlink_out_error(ap->out));
  if (rc == GL_EIO)
    ap->down = true;
}

void gl_cli_autopilot_tick(struct gl_cli_autopilot *ap) {
  if (!ap->out || !ap->heartbeat)
    return;
  uint64_t now = gl_cli_clock_us(CLOCK_MONOTONIC);
  if (now < ap->next_heartbeat_us)
    return;
  ap->next_heartbeat_us = now + HEARTBEAT_PERIOD_US;
  uint8_t pkt[GL_MAVLINK_PACKET_MAX];
  autopilot_put(ap, pkt, gl_mavlink_pack_heartbeat(&ap->stream, pkt));
}

void gl_cli_autopilot_send(struct gl_cli_autopilot *ap, const struct gl_mavlink_fix *f) {
  if (!ap->out)
    return;
  gl_cli_autopilot_tick(ap);
  uint8_t pkt[GL_MAVLINK_PACKET_MAX];
  autopilot_put(ap, pkt, gl_mavlink_pack_fix(&ap->stream, f, pkt));
}

void gl_cli_autopilot_close(struct gl_cli_autopilot *ap) {
  if (ap->out && ap->dropped)
    fprintf(stderr, "%s: mavlink: %llu packet(s) sent, %llu dropped\n", ap->prog,
            (unsigned long long)ap->sent, (unsigned long long)ap->dropped);
  gl_mavlink_out_free(ap->out);
  ap->out = NULL;
}
