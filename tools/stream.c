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

#define STREAM_MAX_CANDIDATES 128 /* more than the server ever sends (100) */

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
  struct gl_report_candidate cand[STREAM_MAX_CANDIDATES];
  size_t n = 0;
  if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE) {
    const Geoloc__V1__Estimate *e = m->estimate;
    id = e->frame_id;
    status = gl_cli_status_name(e->status);
    for (size_t i = 0; i < e->n_candidates && n < STREAM_MAX_CANDIDATES; i++, n++) {
      const Geoloc__V1__Candidate *c = e->candidates[i];
      cand[n] = (struct gl_report_candidate){c->lat,        c->lon,      c->score,
                                             c->confidence, c->radius_m, c->tile_id,
                                             c->has_heading_deg ? c->heading_deg : NAN};
    }
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
  struct gl_cli_answer a = {
      .index = id - 1,
      .status = status,
      .ok = m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE &&
            m->estimate->status == GEOLOC__V1__ESTIMATE__STATUS__OK,
      .cand = cand,
      .n = n,
      .capture_us = f->capture_us,
      .latency_ms = (double)(gl_cli_clock_us(CLOCK_MONOTONIC) - f->sent_us) / 1000.0,
  };
  s->o->answer_cb(s->o->ctx, &a);
  gl_wire_free(m);
  return GL_OK;
}

/* Sends file i; a file that cannot be sent is answered locally. Returns 0,
 * or a send error that ends the stream. */
static int send_one(struct stream *s, char *const *paths, size_t i, size_t max_bytes) {
  const struct gl_cli_stream_opts *o = s->o;
  uint8_t *data;
  size_t len;
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
  /* 64 bytes cover the frame's other fields. */
  if (max_bytes && len + 64 > max_bytes) {
    free(data);
    local_failure(s, paths, i, "TOO_LARGE", "larger than the server's message limit");
    return GL_OK;
  }
  fr.has_format = fr.has_frame_id = fr.has_capture_time_us = fr.has_image = 1;
  fr.frame_id = i + 1;
  fr.capture_time_us = s->files[i].capture_us = gl_cli_clock_us(CLOCK_REALTIME);
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
  rc = gl_client_hello(s.client, o->client_name, o->map, 0, 30000, &w);
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
