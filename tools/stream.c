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
  int answered;
};

struct stream {
  const struct gl_cli_stream_opts *o;
  struct gl_client *client;
  struct stream_file *files;
  size_t n_files, in_flight;
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
  s->files[i].answered = 1;
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
    gl_wire_free(m);
    return GL_EPROTO;
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
  f->answered = 1;
  s->in_flight--;
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
static int send_one(struct stream *s, char *const *paths, size_t i, size_t max_bytes) {
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
  fr.capture_time_us = s->files[i].capture_us =
      o->times ? o->times[i] : gl_cli_clock_us(CLOCK_REALTIME);
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
  int rc = gl_client_send(s->client, &cm);
  free(data);
  if (rc != GL_OK) {
    fprintf(stderr, "%s: send: %s: %s\n", o->prog, gl_strerror(rc),
            gl_client_last_error(s->client));
    return rc;
  }
  s->in_flight++;
  return GL_OK;
}

int gl_cli_stream(const struct gl_cli_stream_opts *o, char *const *paths, size_t n) {
  struct stream s = {.o = o, .n_files = n};
  gl_server_msg *w = NULL;
  char err[256];
  int rc = GL_ENOMEM;
  s.files = calloc(n ? n : 1, sizeof *s.files);
  if (!s.files) {
    fprintf(stderr, "%s: out of memory\n", o->prog);
    goto done;
  }
  if ((rc = gl_client_connect(&o->co, &s.client, err, sizeof err)) != GL_OK) {
    fprintf(stderr, "%s: %s\n", o->prog, err);
    goto done;
  }
  Geoloc__V1__StreamOptions so = GEOLOC__V1__STREAM_OPTIONS__INIT;
  so.has_track = 1;
  so.track = o->track;
  if (o->max_speed_mps > 0) {
    so.has_max_speed_mps = 1;
    so.max_speed_mps = (float)o->max_speed_mps;
  }
  if (o->fixed_lag) {
    so.has_fixed_lag_frames = 1;
    so.fixed_lag_frames = o->fixed_lag;
  }
  rc = gl_client_hello_opts(s.client, o->client_name, o->map, o->track ? &so : NULL, 30000, &w);
  if (rc != GL_OK) {
    fprintf(stderr, "%s: %s: %s\n", o->prog, gl_strerror(rc), gl_client_last_error(s.client));
    goto done;
  }
  if (w->msg_case != GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME) {
    if (w->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR)
      fprintf(stderr, "%s: server refused: %s: %s\n", o->prog, gl_cli_error_name(w->error->code),
              w->error->message ? w->error->message : "");
    else
      fprintf(stderr, "%s: the server answered Hello with something other than Welcome\n", o->prog);
    rc = GL_EPROTO;
    goto done;
  }
  if (o->track && !w->welcome->tracking) {
    fprintf(stderr,
            "%s: the server does not track this stream (its map has no dense layer, the fine "
            "stage is off, or [track] enabled is off)\n",
            o->prog);
    rc = GL_EUNAVAIL;
    goto done;
  }
  size_t max_bytes = w->welcome->max_message_bytes;
  size_t window = o->window ? o->window : 16;
  if (w->welcome->max_frames_in_flight && window > w->welcome->max_frames_in_flight)
    window = w->welcome->max_frames_in_flight;
  if (o->ready_cb)
    o->ready_cb(o->ctx);
  size_t next = 0;
  while (next < n || s.in_flight > 0) {
    while (next < n && s.in_flight < window)
      if ((rc = send_one(&s, paths, next++, max_bytes)) != GL_OK)
        goto done;
    if (s.in_flight > 0 && (rc = receive_one(&s, paths)) != GL_OK)
      goto done;
  }
  rc = GL_OK;
done:
  gl_wire_free(w);
  gl_client_destroy(s.client);
  free(s.files);
  return rc;
}
