/* Pipelined streaming of image files to geolocd (see stream.h). */
#include "stream.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "core/err.h"
#include "img/img.h"

struct stream_file {
  uint64_t sent_us; /* monotonic */
  uint64_t capture_us;
  bool answered;
  bool in_flight; /* sent on this connection (or being sent), not answered */
  bool resend;    /* in flight on a connection that was lost */
};

struct stream {
  const struct gl_cli_stream_opts *o;
  struct gl_client *client;
  Geoloc__V1__StreamOptions so;
  struct gl_client_hello_args hello;
  struct stream_file *files;
  size_t n_files, in_flight;
  size_t window, max_bytes;      /* from the Welcome */
  size_t n_resend, resend_lo;    /* frames to send again, the first at or after resend_lo */
  unsigned reconnects;
  int64_t lost_ms; /* since when no answer came (gl_client_reopen; 0: answers come) */
};

void gl_cli_answer_of_estimate(const Geoloc__V1__Estimate *e, struct gl_report_candidate *cand,
                               struct gl_cli_answer *a) {
  size_t n = 0;
  for (size_t i = 0; i < e->n_candidates && n < GL_CLI_MAX_CANDIDATES; i++, n++) {
    const Geoloc__V1__Candidate *c = e->candidates[i];
    cand[n] = (struct gl_report_candidate){c->lat,        c->lon,      c->score,
                                           c->confidence, c->radius_m, c->tile_id,
                                           c->has_heading_deg ? c->heading_deg : NAN};
  }
  const Geoloc__V1__Track *tr = e->track, *sm = e->smoothed;
  *a = (struct gl_cli_answer){
      .status = gl_cli_status_name(e->status),
      .track_status = tr && tr->has_status ? (int)tr->status : 0,
      .track_lat = tr ? tr->lat : NAN,
      .track_lon = tr ? tr->lon : NAN,
      .track_radius_m = tr ? tr->radius_m : NAN,
      .track_heading_deg = tr && tr->has_heading_deg ? tr->heading_deg : NAN,
      .track_confidence = tr ? tr->confidence : NAN,
      .smoothed_status =
          sm && sm->has_status && sm->has_frame_id && sm->frame_id >= 1 ? (int)sm->status : 0,
      .smoothed_index = sm && sm->frame_id >= 1 ? (size_t)(sm->frame_id - 1) : 0,
      .smoothed_lat = sm ? sm->lat : NAN,
      .smoothed_lon = sm ? sm->lon : NAN,
      .ok = e->status == GEOLOC__V1__ESTIMATE__STATUS__OK,
      .cand = cand,
      .n = n,
  };
}

/* Reports a frame that never reached the server. */
static void local_failure(struct stream *s, char *const *paths, size_t i, const char *status,
                          const char *why) {
  fprintf(stderr, "%s: %s: %s\n", s->o->prog, paths[i], why);
  s->files[i].answered = true;
  struct gl_cli_answer a = {
      .index = i, .status = status, .capture_us = gl_cli_clock_us(CLOCK_REALTIME)};
  s->o->answer_cb(s->o->ctx, &a);
}

/* Receives one message. Returns 0, or an error that ends the stream. */
static int receive_one(struct stream *s, char *const *paths) {
  const char *prog = s->o->prog;
  gl_server_msg *m = NULL;
  int rc = gl_client_recv(s->client, 120000, &m);
  if (rc != GL_OK) {
    fprintf(stderr, "%s: %s with %zu frame(s) unanswered: %s\n", prog, gl_strerror(rc),
            s->in_flight, gl_client_last_error(s->client));
    return rc;
  }
  uint64_t id = 0;
  const char *status = NULL;
  struct gl_report_candidate cand[GL_CLI_MAX_CANDIDATES];
  /* An Error answering a frame has no position and no track. */
  struct gl_cli_answer a = {.track_lat = NAN, .track_lon = NAN, .track_radius_m = NAN,
                            .track_heading_deg = NAN, .track_confidence = NAN,
                            .smoothed_lat = NAN, .smoothed_lon = NAN, .cand = cand};
  if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE) {
    id = m->estimate->frame_id;
    gl_cli_answer_of_estimate(m->estimate, cand, &a);
    status = a.status;
  } else if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR && m->error->has_frame_id) {
    id = m->error->frame_id;
    status = gl_cli_error_name(m->error->code);
  } else if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR) {
    fprintf(stderr, "%s: server error %s: %s\n", prog, gl_cli_error_name(m->error->code),
            m->error->message ? m->error->message : "");
    rc = gl_client_error_rc(m->error->code);
    gl_wire_free(m);
    return rc;
  } else {
    gl_wire_free(m);
    return GL_OK; /* a Pong or a Welcome we did not ask for: not an answer */
  }
  if (id == 0 || id > s->n_files || s->files[id - 1].answered) {
    fprintf(stderr, "%s: answer for unknown or already answered frame %llu\n", prog,
            (unsigned long long)id);
    gl_wire_free(m);
    return GL_EPROTO;
  }
  struct stream_file *f = &s->files[id - 1];
  if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR)
    fprintf(stderr, "%s: %s: %s: %s\n", prog, paths[id - 1], status,
            m->error->message ? m->error->message : "");
  f->answered = true;
  f->in_flight = false;
  s->in_flight--;
  s->lost_ms = 0;
  a.index = id - 1;
  a.status = status;
  a.capture_us = f->capture_us;
  a.latency_ms = (double)(gl_cli_clock_us(CLOCK_MONOTONIC) - f->sent_us) / 1000.0;
  s->o->answer_cb(s->o->ctx, &a);
  gl_wire_free(m);
  return GL_OK;
}

/* Turns a file's bytes upright by its EXIF orientation: a JPEG losslessly,
 * anything else decoded and sent as RGB8. Replaces *data (and its format
 * and size) or returns an error with err. */
static int upright(unsigned orientation, uint8_t **data, size_t *len, Geoloc__V1__Frame *fr,
                   char *err, size_t errlen) {
  uint8_t *out;
  size_t out_len;
  int rc;
  if (fr->format == GEOLOC__V1__IMAGE_FORMAT__JPEG) {
    if ((rc = gl_img_jpeg_orient(*data, *len, orientation, &out, &out_len, err, errlen)))
      return rc;
  } else {
    struct gl_image img, up;
    if ((rc = gl_img_decode(*data, *len, GL_IMG_AUTO, 0, 0, 1u << 26, &img, err, errlen)))
      return rc;
    out_len = (size_t)img.width * img.height * 3;
    if (!(out = up.rgb = malloc(out_len))) {
      gl_img_free(&img);
      return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    }
    gl_img_orient(&img, orientation, &up);
    gl_img_free(&img);
    fr->format = GEOLOC__V1__IMAGE_FORMAT__RGB8;
    fr->has_width = fr->has_height = 1;
    fr->width = up.width;
    fr->height = up.height;
  }
  free(*data);
  *data = out;
  *len = out_len;
  return GL_OK;
}

/* Sends file i; a file that cannot be sent is answered locally. Returns 0,
 * or a send error that ends the stream. */
static int send_one(struct stream *s, char *const *paths, size_t i) {
  size_t max_bytes = s->max_bytes;
  const struct gl_cli_stream_opts *o = s->o;
  uint8_t *data;
  size_t len;
  const struct gl_cli_photo *ph = o->photos ? &o->photos[i] : NULL;
  if (ph && ph->refused) {
    local_failure(s, paths, i, "BAD_REQUEST", "not sent: its camera is refused");
    return GL_OK;
  }
  if (gl_cli_read_file(paths[i], &data, &len) != GL_OK) {
    local_failure(s, paths, i, "UNREADABLE", strerror(errno));
    return GL_OK;
  }
  Geoloc__V1__Frame fr = GEOLOC__V1__FRAME__INIT;
  Geoloc__V1__Prior pr = GEOLOC__V1__PRIOR__INIT;
  gl_client_msg cm = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  fr.format = gl_cli_sniff_format(data, len);
  if (fr.format == GEOLOC__V1__IMAGE_FORMAT__IMAGE_FORMAT_UNSPECIFIED) {
    free(data);
    local_failure(s, paths, i, "BAD_IMAGE", "not a JPEG or PNG file");
    return GL_OK;
  }
  if (ph && ph->orientation > 1 && ph->orientation <= 8) {
    char err[256];
    if (upright(ph->orientation, &data, &len, &fr, err, sizeof err) != GL_OK) {
      free(data);
      local_failure(s, paths, i, "BAD_IMAGE", err);
      return GL_OK;
    }
  }
  /* 128 bytes cover the frame's other fields. */
  if (max_bytes && len + 128 > max_bytes) {
    free(data);
    local_failure(s, paths, i, "TOO_LARGE", "larger than the server's message limit");
    return GL_OK;
  }
  fr.has_format = fr.has_frame_id = fr.has_capture_time_us = fr.has_image = 1;
  fr.frame_id = i + 1;
  if (!s->files[i].resend) /* sent again: the same frame, the same time */
    s->files[i].capture_us = o->times ? o->times[i] : gl_cli_clock_us(CLOCK_REALTIME);
  fr.capture_time_us = s->files[i].capture_us;
  if (o->vels && !isnan(o->vels[i][0]) && !isnan(o->vels[i][1])) {
    fr.has_velocity_north_mps = fr.has_velocity_east_mps = 1;
    fr.velocity_north_mps = o->vels[i][0];
    fr.velocity_east_mps = o->vels[i][1];
  }
  fr.image.data = data;
  fr.image.len = len;
  if (o->top_k) {
    fr.has_top_k = 1;
    fr.top_k = o->top_k;
  }
  const struct gl_map_prior *p = o->priors ? &o->priors[o->priors_per_frame ? i : 0] : NULL;
  if (p && p->radius_m > 0) {
    pr.has_lat = pr.has_lon = pr.has_radius_m = 1;
    pr.lat = p->lat;
    pr.lon = p->lon;
    pr.radius_m = p->radius_m;
    fr.prior = &pr;
  }
  if (o->headings && !isnan(o->headings[i])) {
    fr.has_heading_deg = 1;
    fr.heading_deg = o->headings[i];
  }
  if (ph && ph->has_camera) {
    fr.has_altitude_m = fr.has_hfov_deg = fr.has_tilt_deg = 1;
    fr.altitude_m = ph->camera.altitude_m;
    fr.hfov_deg = ph->camera.hfov_deg;
    fr.tilt_deg = ph->camera.tilt_deg;
  }
  cm.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME;
  cm.frame = &fr;
  s->files[i].sent_us = gl_cli_clock_us(CLOCK_MONOTONIC);
  s->files[i].in_flight = true; /* from now on: if the send fails, it is sent again */
  s->in_flight++;
  int rc = gl_client_send(s->client, &cm);
  free(data);
  if (rc != GL_OK)
    fprintf(stderr, "%s: send: %s: %s\n", o->prog, gl_strerror(rc),
            gl_client_last_error(s->client));
  return rc;
}

/* Takes the Welcome: the window and message limit of this connection, and
 * that it tracks when asked to. */
static int welcomed(struct stream *s, const gl_server_msg *w) {
  const struct gl_cli_stream_opts *o = s->o;
  if (o->track && !w->welcome->tracking) {
    fprintf(stderr,
            "%s: the server does not track this stream (its map has no dense layer, the fine "
            "stage is off, or [track] enabled is off)\n",
            o->prog);
    return GL_EUNAVAIL;
  }
  s->max_bytes = w->welcome->max_message_bytes;
  s->window = o->window ? o->window : 16;
  if (w->welcome->max_frames_in_flight && s->window > w->welcome->max_frames_in_flight)
    s->window = w->welcome->max_frames_in_flight;
  return GL_OK;
}

/* The connection is lost (err): connects again, within --reconnect, and
 * marks the frames it had in flight to be sent again. A new connection is
 * a new stream to the server: a tracked one starts a new track. */
static int reconnect(struct stream *s, int err) {
  const struct gl_cli_stream_opts *o = s->o;
  gl_client_destroy(s->client);
  s->client = NULL;
  if (!o->reconnect_ms || !gl_client_retryable(err))
    return err;
  for (size_t i = 0; i < s->n_files; i++)
    if (s->files[i].in_flight) {
      s->files[i].in_flight = false;
      s->files[i].resend = true;
      s->n_resend++;
      if (i < s->resend_lo)
        s->resend_lo = i;
    }
  s->in_flight = 0;
  fprintf(stderr, "%s: connection lost (%s); connecting again, %zu frame(s) to send again\n",
          o->prog, gl_strerror(err), s->n_resend);
  gl_server_msg *w = NULL;
  char msg[256];
  unsigned attempts = 0;
  int rc = gl_client_reopen(&o->co, &s->hello, o->reconnect_ms, &s->lost_ms, &s->client, &w,
                            &attempts, msg, sizeof msg);
  if (rc == GL_OK)
    rc = welcomed(s, w);
  gl_wire_free(w);
  if (rc != GL_OK) {
    fprintf(stderr, "%s: gave up after %u attempt(s) in %.1f s: %s\n", o->prog, attempts,
            o->reconnect_ms / 1000.0, msg);
    return rc;
  }
  s->reconnects++;
  fprintf(stderr, "%s: connected again (attempt %u)\n", o->prog, attempts);
  return GL_OK;
}

/* Sends what the window allows: frames to send again first, in order. */
static int send_some(struct stream *s, char *const *paths, size_t *next) {
  int rc = GL_OK;
  while (rc == GL_OK && s->n_resend > 0 && s->in_flight < s->window) {
    while (!s->files[s->resend_lo].resend)
      s->resend_lo++;
    size_t i = s->resend_lo;
    s->n_resend--;
    rc = send_one(s, paths, i);
    s->files[i].resend = false;
  }
  while (rc == GL_OK && s->n_resend == 0 && *next < s->n_files && s->in_flight < s->window)
    rc = send_one(s, paths, (*next)++);
  return rc;
}

int gl_cli_stream(const struct gl_cli_stream_opts *o, char *const *paths, size_t n) {
  struct stream s = {.o = o, .n_files = n, .resend_lo = n};
  gl_server_msg *w = NULL;
  char err[256];
  int rc = GL_ENOMEM;
  s.files = calloc(n ? n : 1, sizeof *s.files);
  if (!s.files) {
    fprintf(stderr, "%s: out of memory\n", o->prog);
    goto done;
  }
  s.so = (Geoloc__V1__StreamOptions)GEOLOC__V1__STREAM_OPTIONS__INIT;
  s.so.has_track = 1;
  s.so.track = o->track;
  if (o->max_speed_mps > 0) {
    s.so.has_max_speed_mps = 1;
    s.so.max_speed_mps = (float)o->max_speed_mps;
  }
  if (o->fixed_lag) {
    s.so.has_fixed_lag_frames = 1;
    s.so.fixed_lag_frames = o->fixed_lag;
  }
  s.hello = (struct gl_client_hello_args){o->client_name, o->map, o->track ? &s.so : NULL};
  /* The first connection is not retried: a wrong address or a refusal is
   * reported at once. */
  if ((rc = gl_client_open(&o->co, &s.hello, &s.client, &w, err, sizeof err)) != GL_OK) {
    fprintf(stderr, "%s: %s\n", o->prog, err);
    goto done;
  }
  if ((rc = welcomed(&s, w)) != GL_OK)
    goto done;
  if (o->ready_cb)
    o->ready_cb(o->ctx);
  size_t next = 0;
  while (next < n || s.in_flight > 0 || s.n_resend > 0) {
    rc = send_some(&s, paths, &next);
    if (rc == GL_OK && s.in_flight > 0)
      rc = receive_one(&s, paths);
    if (rc != GL_OK && (rc = reconnect(&s, rc)) != GL_OK)
      goto done;
  }
  rc = GL_OK;
done:
  if (s.reconnects)
    fprintf(stderr, "%s: %u reconnection(s)\n", o->prog, s.reconnects);
  gl_wire_free(w);
  gl_client_destroy(s.client);
  free(s.files);
  return rc;
}
