/* The protocol (docs/ARCHITECTURE.md section 12): framing, the pre-scan of
 * a message's fields, Hello/Welcome, Frame (validation, backpressure, the
 * job handed to the pipeline), Ping/Pong, Error, and each job's one answer.
 * Bytes arrive as plaintext from conn.c and answers leave through
 * gl__conn_send. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "gl_build_config.h"
#include "metrics.h"
#include "runtime.h"
#include "server_internal.h"

/* The most fields a ClientMessage may hold, those of the messages inside
 * it included. protobuf-c's unpack, on the loop thread, allocates for every
 * field it meets (a record of each, a copy of each unknown one): 16 MiB of
 * 2-byte fields cost ~700 MiB and seconds. A real message has about 20 (a
 * Frame's 14 and its Prior's 3); a newer client's unknown fields count too
 * and are otherwise welcome. */
#define GL_MAX_MESSAGE_FIELDS 64
/* Room for a client's string (a map or client name) quoted in a log line
 * or an Error, escaped by gl_log_escape: the longest map name (64 bytes)
 * fits with room to spare, and anything longer ends in "...". */
#define GL__CLIENT_STR 96

/* Sends an Error; a fatal one ends the connection after it is flushed. */
void gl__conn_error(struct gl_conn *c, gl_err_code code, const uint64_t *frame_id, bool fatal,
                    const char *fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (fatal && c->inflight > 0) {
    /* Frames in flight are answered first; the stream ends after them. */
    if (!c->draining) {
      c->draining = true;
      c->bye_code = code;
      snprintf(c->bye_text, sizeof c->bye_text, "%.*s", (int)sizeof c->bye_text - 1, text);
      uv_read_stop(&c->io.stream);
    }
    return;
  }
  const ProtobufCEnumValue *ev =
      protobuf_c_enum_descriptor_get_value(&geoloc__v1__error__code__descriptor, (int)code);
  /* The callers escape the client's strings they quote (the Error carries
   * that form too); escaping is idempotent, so this only catches any other
   * text (a decoder's message) that could break the log line. */
  char safe[4 * sizeof text];
  gl_log_escape(safe, sizeof safe, text);
  gl_log(fatal ? GL_LOG_NOTICE : GL_LOG_DEBUG, "session %llu (%s): %s error %s: %s",
         (unsigned long long)c->session_id, c->peer, fatal ? "fatal" : "frame", ev ? ev->name : "?",
         safe);

  Geoloc__V1__Error e = GEOLOC__V1__ERROR__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  e.has_code = 1;
  e.code = code;
  e.message = text;
  e.has_fatal = 1;
  e.fatal = fatal;
  if (frame_id) {
    e.has_frame_id = 1;
    e.frame_id = *frame_id;
  }
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR;
  m.error = &e;
  gl__conn_send(c, &m);
  if (fatal)
    gl__conn_finish(c);
}

/* StreamOptions.track: the stream's filter, when its map can be tracked on
 * (a dense layer and the fine stage); otherwise the stream goes on
 * untracked and Welcome.tracking says so. Returns 0, or an error after
 * answering it (fatal). */
static int gl__conn_track(struct gl_conn *c, const Geoloc__V1__StreamOptions *o) {
  const struct gl_config *cfg = &c->srv->cfg;
  const struct gl_runtime *rt = c->srv->rt;
  int i = rt ? gl_runtime_find_map(rt, c->map) : -1;
  uint32_t rows, cols;
  double cell;
  char err[256];
  if (!cfg->track || i < 0 || !rt->maps[i].fine || !rt->fine[0] ||
      gl_track_grid(rt->maps[i].map, rt->fine[0], &rows, &cols, &cell)) {
    GL_LOG_D("session %llu (%s): tracking asked for, but %s", (unsigned long long)c->session_id,
             c->peer,
             !cfg->track ? "[track] enabled is off"
                         : "the map has no dense layer or the fine stage is off");
    return GL_OK;
  }
  struct gl_stream_track *t = calloc(1, sizeof *t);
  if (!t) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__INTERNAL, NULL, true, "out of memory");
    return GL_ENOMEM;
  }
  gl_track_params_init(&t->params);
  t->params.max_speed_mps = cfg->track_max_speed_mps;
  t->params.window_cells = cfg->track_window_cells;
  if (o->has_max_speed_mps && o->max_speed_mps > 0)
    t->params.max_speed_mps = o->max_speed_mps < 0.1f ? 0.1 : o->max_speed_mps;
  if (o->has_fixed_lag_frames)
    t->params.fixed_lag = o->fixed_lag_frames;
  int rc = gl_track_create(&t->params, rows, cols, cell, &t->filter, err, sizeof err);
  if (rc) {
    free(t);
    gl__conn_error(c, rc == GL_ENOMEM ? GEOLOC__V1__ERROR__CODE__RESOURCE_EXHAUSTED
                                      : GEOLOC__V1__ERROR__CODE__BAD_REQUEST,
                   NULL, true, "tracking: %s", err);
    return rc;
  }
  c->trk = t;
  return GL_OK;
}

static void gl__conn_hello(struct gl_conn *c, const Geoloc__V1__Hello *h) {
  const struct gl_config *cfg = &c->srv->cfg;
  uint32_t version = h->has_protocol_version ? h->protocol_version : 0;
  if (version != GL_PROTOCOL_VERSION) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__VERSION, NULL, true,
                   "protocol version %u is not supported; this server speaks version %d", version,
                   GL_PROTOCOL_VERSION);
    return;
  }
  /* Before anything else is said: an unknown client learns no map names. */
  const struct gl_config_token *tok = NULL;
  if (cfg->n_tokens > 0) {
    int t = gl_auth_find(&cfg->tokens[0].hash, sizeof cfg->tokens[0], cfg->n_tokens, h->token);
    if (t < 0) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAUTHENTICATED, NULL, true, "%s",
                     h->token && h->token[0] ? "token not accepted" : "this server needs a token");
      return;
    }
    tok = &cfg->tokens[t];
  }
  const struct gl_runtime *rt = c->srv->rt;
  const char *names[GL_CONFIG_MAX_MAPS];
  uint32_t n_maps = rt ? rt->n_maps : 0, n_names = 0;
  char list[256] = "";
  for (uint32_t i = 0; i < n_maps; i++) {
    if (tok && !gl_config_token_allows(tok, rt->maps[i].name))
      continue; /* a restricted client is told only of its own maps */
    names[n_names] = rt->maps[i].name;
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", n_names ? ", " : "",
             names[n_names]);
    n_names++;
  }
  /* The client's map name, escaped for the Error and the log it goes to. */
  char map_name[GL__CLIENT_STR];
  gl_log_escape(map_name, sizeof map_name, h->map);
  if (n_maps == 0 && h->map && h->map[0]) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAVAILABLE, NULL, true,
                   "map '%s' is not loaded (this server has no maps)", map_name);
    return;
  }
  if (n_maps > 0) {
    int i = gl_runtime_find_map(rt, h->map);
    if (i < 0 && h->map && h->map[0]) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAVAILABLE, NULL, true,
                     "no map named '%s' (maps: %s)", map_name, list);
      return;
    }
    if (i < 0) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, NULL, true,
                     "this server has several maps: name one of %s in Hello", list);
      return;
    }
    snprintf(c->map, sizeof c->map, "%s", rt->maps[i].name);
  }
  /* The proto has no PERMISSION_DENIED: a token that may not use this map
   * is as good as none for it. */
  if (tok && !gl_config_token_allows(tok, c->map)) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAUTHENTICATED, NULL, true,
                   "token '%s' may not use map '%s'", tok->name, c->map);
    return;
  }
  const Geoloc__V1__StreamOptions *o = h->options;
  if (o && o->has_max_speed_mps && !(o->max_speed_mps >= 0 && o->max_speed_mps <= 1000)) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, NULL, true,
                   "max_speed_mps %g is not a speed in m/s (0 for the server's default, up to "
                   "1000)",
                   (double)o->max_speed_mps);
    return;
  }
  if (o && o->has_fixed_lag_frames && o->fixed_lag_frames > GL_TRACK_MAX_LAG) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, NULL, true,
                   "fixed_lag_frames %u is above the limit of %d", o->fixed_lag_frames,
                   GL_TRACK_MAX_LAG);
    return;
  }
  if (o && o->has_track && o->track && gl__conn_track(c, o) != GL_OK)
    return;
  /* The stream's own limits (0: the server's), within the server's; Welcome
   * tells the client what it got. */
  c->max_inflight = cfg->max_frames_in_flight;
  if (o && o->has_max_frames_in_flight && o->max_frames_in_flight > 0 &&
      o->max_frames_in_flight < c->max_inflight)
    c->max_inflight = o->max_frames_in_flight;
  c->top_k = cfg->default_top_k;
  if (o && o->has_default_top_k && o->default_top_k > 0)
    c->top_k = o->default_top_k < GL_JOB_MAX_CANDIDATES ? o->default_top_k : GL_JOB_MAX_CANDIDATES;
  Geoloc__V1__Welcome w = GEOLOC__V1__WELCOME__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  w.has_protocol_version = 1;
  w.protocol_version = GL_PROTOCOL_VERSION;
  w.server = (char *)"geolocd " GL_VERSION;
  w.map = c->map;
  w.n_maps = n_names;
  w.maps = (char **)names;
  w.has_max_frames_in_flight = 1;
  w.max_frames_in_flight = c->max_inflight;
  w.has_default_top_k = 1;
  w.default_top_k = c->top_k;
  w.has_max_message_bytes = 1;
  w.max_message_bytes = cfg->max_message_bytes;
  w.has_session_id = 1;
  w.session_id = c->session_id;
  w.has_tracking = 1;
  w.tracking = c->trk != NULL;
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME;
  m.welcome = &w;
  c->state = GL_CONN_READY;
  gl_wire_decoder_set_max(&c->dec, cfg->max_message_bytes);
  char client_name[GL__CLIENT_STR];
  gl_log_escape(client_name, sizeof client_name, h->client_name);
  GL_LOG_D("session %llu (%s): hello from '%s'%s%s", (unsigned long long)c->session_id, c->peer,
           client_name, tok ? " with token " : "", tok ? tok->name : "");
  gl__conn_send(c, &m);
}

static void gl__conn_ping(struct gl_conn *c, const Geoloc__V1__Ping *p) {
  Geoloc__V1__Pong pong = GEOLOC__V1__PONG__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  pong.has_nonce = p->has_nonce;
  pong.nonce = p->nonce;
  pong.has_send_time_us = p->has_send_time_us;
  pong.send_time_us = p->send_time_us;
  pong.has_server_time_us = 1;
  pong.server_time_us = gl__realtime_us();
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_PONG;
  m.pong = &pong;
  gl__conn_send(c, &m);
}

/* Estimate{status} with no candidates, for frames answered before
 * inference (BUSY). */
static void gl__conn_status(struct gl_conn *c, uint64_t frame_id,
                            Geoloc__V1__Estimate__Status status) {
  Geoloc__V1__Estimate e = GEOLOC__V1__ESTIMATE__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  e.has_frame_id = e.has_status = 1;
  e.frame_id = frame_id;
  e.status = status;
  e.map = c->map;
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE;
  m.estimate = &e;
  gl__conn_send(c, &m);
}

/* Checks a Frame and queues it. Takes ownership of m when it returns true
 * (the job frees it); every path answers the frame or queues it, so it is
 * answered exactly once. */
static bool gl__conn_frame(struct gl_conn *c, gl_client_msg *m) {
  struct gl_server *srv = c->srv;
  const struct gl_config *cfg = &srv->cfg;
  const Geoloc__V1__Frame *f = m->frame;
  uint64_t id = f->frame_id;
  const gl_err_code BAD = GEOLOC__V1__ERROR__CODE__BAD_REQUEST;
  if (c->state != GL_CONN_READY) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__PROTOCOL, &id, true, "Frame before Hello");
    return false;
  }
  int map = srv->rt ? gl_runtime_find_map(srv->rt, c->map) : -1;
  if (map < 0)
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_UNAVAILABLE);
  if (map < 0 && (!srv->rt || srv->rt->n_maps == 0)) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAVAILABLE, &id, false,
                   "frame %llu: no model or map is loaded", (unsigned long long)id);
    return false;
  }
  if (map < 0) { /* a reload dropped the stream's map */
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAVAILABLE, &id, false,
                   "frame %llu: map '%s' is no longer loaded", (unsigned long long)id, c->map);
    return false;
  }
  if (!f->has_image || f->image.len == 0) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_BAD_IMAGE);
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_IMAGE, &id, false, "frame %llu has no image",
                   (unsigned long long)id);
    return false;
  }
  if (f->top_k > GL_JOB_MAX_CANDIDATES) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false, "top_k %u is above the limit of %d", f->top_k,
                   GL_JOB_MAX_CANDIDATES);
    return false;
  }
  const Geoloc__V1__Prior *pr = f->prior;
  if (pr && !(pr->lat >= -90 && pr->lat <= 90 && pr->lon >= -180 && pr->lon <= 180 &&
              pr->radius_m > 0 && pr->radius_m <= 20037509)) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "prior needs lat in [-90, 90], lon in [-180, 180] and radius_m in "
                   "(0, 20037509]");
    return false;
  }
  if (f->has_heading_deg && !(f->heading_deg >= -360 && f->heading_deg <= 720)) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "heading_deg %g is not a heading in degrees (-360 to 720, clockwise from "
                   "north)",
                   f->heading_deg);
    return false;
  }
  /* The camera's footprint: the fields are checked here, the footprint
   * (which needs the decoded frame's size) when the frame is decoded. */
  static const char *const camera_fields[3] = {"altitude_m", "hfov_deg", "tilt_deg"};
  const struct gl_img_camera camera = {f->altitude_m, f->hfov_deg, f->tilt_deg};
  const unsigned camera_given = (f->has_altitude_m ? GL_IMG_CAMERA_ALTITUDE : 0u) |
                                (f->has_hfov_deg ? GL_IMG_CAMERA_HFOV : 0u) |
                                (f->has_tilt_deg ? GL_IMG_CAMERA_TILT : 0u);
  char camera_err[256];
  if (gl_img_camera_check(camera_given, &camera, camera_fields, camera_err, sizeof camera_err) !=
      GL_OK) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false, "frame %llu: %s", (unsigned long long)id, camera_err);
    return false;
  }
  if (f->has_velocity_north_mps != f->has_velocity_east_mps ||
      (f->has_velocity_north_mps &&
       !(fabs(f->velocity_north_mps) <= 1000 && fabs(f->velocity_east_mps) <= 1000))) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "velocity_north_mps and velocity_east_mps go together, each within +-1000 m/s");
    return false;
  }
  if (c->trk && !f->has_capture_time_us) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "frame %llu has no capture_time_us, which a tracked stream needs",
                   (unsigned long long)id);
    return false;
  }
  if (c->trk && c->trk->has_time && f->capture_time_us < c->trk->last_time_us) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "frame %llu: capture_time_us %llu is before the previous frame's (%llu); a "
                   "tracked stream's frames must not go back in time",
                   (unsigned long long)id, (unsigned long long)f->capture_time_us,
                   (unsigned long long)c->trk->last_time_us);
    return false;
  }
  /* Backpressure: a bounded pipeline answers BUSY at once rather than
   * letting frames grow stale in a queue. */
  if (c->inflight >= c->max_inflight || srv->queued >= cfg->queue_depth) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_BUSY);
    gl__conn_status(c, id, GEOLOC__V1__ESTIMATE__STATUS__BUSY);
    return false;
  }
  struct gl_job *job = calloc(1, gl_job_size(srv->rt->dim));
  if (!job) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__INTERNAL, &id, false, "out of memory");
    return false;
  }
  job->owner = c;
  job->rt = gl_runtime_ref(srv->rt);
  job->map = (uint32_t)map;
  job->msg = m;
  job->frame_id = id;
  job->top_k = f->top_k ? f->top_k : c->top_k;
  job->max_pixels = cfg->max_decoded_pixels;
  job->t_received = gl_pipeline_now_us();
  job->heading_deg = f->has_heading_deg ? f->heading_deg : NAN;
  job->has_camera = camera_given == GL_IMG_CAMERA_ALL;
  job->camera = camera;
  job->vel[0] = f->has_velocity_north_mps ? f->velocity_north_mps : NAN;
  job->vel[1] = f->has_velocity_east_mps ? f->velocity_east_mps : NAN;
  job->time_us = f->capture_time_us;
  if (c->trk) {
    job->trk = c->trk;
    job->seq = c->trk->next_seq++;
    c->trk->last_time_us = f->capture_time_us;
    c->trk->has_time = true;
  }
  if (pr) {
    job->has_prior = true;
    job->prior = (struct gl_map_prior){pr->lat, pr->lon, pr->radius_m};
  }
  c->inflight++;
  srv->queued++;
  gl_metrics_add_in_flight(srv->metrics, 1);
  gl_pipeline_submit(srv->pipe, &c->dq, job);
  return true;
}

/* Reads a protobuf varint; a value beyond 64 bits reads as UINT64_MAX. */
static bool gl__pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t x = 0;
  bool over = false;
  for (unsigned shift = 0; shift < 70 && *p < end; shift += 7) {
    uint64_t b = *(*p)++;
    if (shift < 64)
      x |= (b & 0x7f) << shift;
    over |= (shift == 63 && (b & 0x7e)) || (shift > 63 && (b & 0x7f));
    if (!(b & 0x80)) {
      *v = over ? UINT64_MAX : x;
      return true;
    }
  }
  return false;
}

/* Skips a field's value of wire type wt. */
static bool gl__pb_skip(const uint8_t **p, const uint8_t *end, unsigned wt) {
  uint64_t n;
  switch (wt) {
  case 0:
    return gl__pb_varint(p, end, &n);
  case 1:
  case 5:
    n = wt == 1 ? 8 : 4;
    break;
  case 2:
    if (!gl__pb_varint(p, end, &n))
      return false;
    break;
  default:
    return false;
  }
  if (n > (uint64_t)(end - *p))
    return false;
  *p += n;
  return true;
}

/* Hello.protocol_version is a uint32, and protobuf-c (like protobuf itself)
 * narrows a wider varint to its low 32 bits: 2^32 + 1 would read as 1, and
 * a client speaking some future version could be taken for version 1. So
 * the wire value is checked here, in the raw ClientMessage body, before the
 * narrowed one is looked at: every Hello (field 1; protobuf merges repeated
 * ones) and in it every protocol_version (field 1, varint). Returns true and
 * the widest such value when one does not fit in 32 bits.
 *
 * Declaring the field uint64 would not do: the wire encoding is the same
 * (varints), but geoloc.proto is the clients' contract too, and every
 * client's generated type would change with it; and a varint of more than
 * 64 bits would still be narrowed there. */
static bool gl__hello_version_wide(const uint8_t *body, size_t len, uint64_t *version) {
  const uint8_t *p = body, *end = body + len;
  bool wide = false;
  *version = 0;
  while (p < end) {
    uint64_t key, n;
    if (!gl__pb_varint(&p, end, &key))
      break;
    if (key != (1u << 3 | 2)) { /* not ClientMessage.hello */
      if (!gl__pb_skip(&p, end, (unsigned)(key & 7)))
        break;
      continue;
    }
    if (!gl__pb_varint(&p, end, &n) || n > (uint64_t)(end - p))
      break;
    const uint8_t *q = p, *hend = p + n;
    p = hend;
    while (q < hend && gl__pb_varint(&q, hend, &key)) {
      uint64_t v;
      if (key != (1u << 3 | 0)) { /* not Hello.protocol_version */
        if (!gl__pb_skip(&q, hend, (unsigned)(key & 7)))
          break;
      } else if (!gl__pb_varint(&q, hend, &v)) {
        break;
      } else if (v > UINT32_MAX) {
        wide = true;
        *version = v > *version ? v : *version;
      }
    }
  }
  return wide;
}

/* Counts the fields of a message of type desc in [p, end) into *n, with
 * those of the known message fields inside it, before protobuf-c unpacks
 * it: GL_ETOOBIG as soon as there are more than GL_MAX_MESSAGE_FIELDS, so
 * that a message costs O(1) work here and O(1) allocations there, whatever
 * its size. GL_EMALFORMED for bytes that are not protobuf, which the unpack
 * would refuse too (after reading every field around them). */
static int gl__pb_count_fields(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                               const uint8_t *end, uint32_t *n) {
  while (p < end) {
    uint64_t key, len;
    if (++*n > GL_MAX_MESSAGE_FIELDS)
      return GL_ETOOBIG;
    if (!gl__pb_varint(&p, end, &key))
      return GL_EMALFORMED;
    const ProtobufCFieldDescriptor *f =
        key >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(desc, (unsigned)(key >> 3))
                               : NULL;
    if ((key & 7) != 2 || !f || f->type != PROTOBUF_C_TYPE_MESSAGE) {
      if (!gl__pb_skip(&p, end, (unsigned)(key & 7)))
        return GL_EMALFORMED;
      continue;
    }
    if (!gl__pb_varint(&p, end, &len) || len > (uint64_t)(end - p))
      return GL_EMALFORMED;
    int rc = gl__pb_count_fields(f->descriptor, p, p + len, n);
    if (rc != GL_OK)
      return rc;
    p += len;
  }
  return GL_OK;
}

static void gl__conn_message(struct gl_conn *c, const uint8_t *body, size_t len) {
  gl_client_msg *m;
  uint64_t wide;
  uint32_t n_fields = 0;
  int rc =
      gl__pb_count_fields(&geoloc__v1__client_message__descriptor, body, body + len, &n_fields);
  if (rc == GL_ETOOBIG) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, NULL, true,
                   "message of %zu bytes has more than %d fields", len, GL_MAX_MESSAGE_FIELDS);
    return;
  }
  if (rc != GL_OK || gl_wire_unpack_client(body, len, &m) != GL_OK) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__MALFORMED, NULL, true,
                   "%zu bytes that are not a geoloc.v1.ClientMessage", len);
    return;
  }
  const bool ready = c->state == GL_CONN_READY;
  switch (m->msg_case) {
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_HELLO:
    if (ready)
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__PROTOCOL, NULL, true, "second Hello");
    else if (gl__hello_version_wide(body, len, &wide))
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__VERSION, NULL, true,
                     "protocol version %llu is not supported; this server speaks version %d",
                     (unsigned long long)wide, GL_PROTOCOL_VERSION);
    else
      gl__conn_hello(c, m->hello);
    break;
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_PING:
    if (ready)
      gl__conn_ping(c, m->ping);
    else
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__PROTOCOL, NULL, true, "Ping before Hello");
    break;
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME:
    if (gl__conn_frame(c, m))
      m = NULL; /* the job owns it */
    break;
  default: /* gl_wire_unpack_client refuses a message without a oneof */
    break;
  }
  gl_wire_free(m);
  gl__conn_arm_timer(c);
}

static void gl__job_metrics(struct gl_metrics *mx, const struct gl_job *job) {
  static const enum gl_metrics_status status[] = {
      [GL_JOB_OK] = GL_METRICS_FRAME_OK,
      [GL_JOB_BAD_IMAGE] = GL_METRICS_FRAME_BAD_IMAGE,
      [GL_JOB_BAD_REQUEST] = GL_METRICS_FRAME_ERROR,
      [GL_JOB_STALE] = GL_METRICS_FRAME_DROPPED_STALE,
      [GL_JOB_FAILED] = GL_METRICS_FRAME_ERROR,
      [GL_JOB_ABANDONED] = GL_METRICS_FRAME_ABANDONED,
  };
  gl_metrics_add_in_flight(mx, -1);
  gl_metrics_frame(mx, job->result == GL_JOB_OK && job->n_cand == 0 ? GL_METRICS_FRAME_NO_MATCH
                                                                    : status[job->result]);
  gl_metrics_observe(mx, GL_METRICS_DECODE, job->decode_us);
  if (job->result == GL_JOB_BAD_IMAGE || job->result == GL_JOB_BAD_REQUEST ||
      job->result == GL_JOB_ABANDONED)
    return; /* never queued for inference */
  gl_metrics_observe(mx, GL_METRICS_QUEUE, job->t_batched - job->t_decoded);
  if (job->result != GL_JOB_OK)
    return;
  gl_metrics_observe(mx, GL_METRICS_INFER, job->infer_us);
  gl_metrics_observe(mx, GL_METRICS_SEARCH, job->search_us);
  if (job->batch_first)
    gl_metrics_batch(mx, job->batch_size);
}

/* A finished job, on the loop thread: the frame's one answer. */
void gl__on_job_done(void *ud, struct gl_job *job) {
  struct gl_server *srv = ud;
  struct gl_conn *c = job->owner;
  uint64_t id = job->frame_id;
  srv->queued--;
  c->inflight--;
  gl__job_metrics(srv->metrics, job);
  if (c->state != GL_CONN_CLOSING) {
    switch (job->result) {
    case GL_JOB_BAD_IMAGE:
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_IMAGE, &id, false, "frame %llu: %s",
                     (unsigned long long)id, job->error);
      break;
    case GL_JOB_BAD_REQUEST:
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, &id, false, "frame %llu: %s",
                     (unsigned long long)id, job->error);
      break;
    case GL_JOB_ABANDONED: /* not while the connection is open */
    case GL_JOB_FAILED:
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__INTERNAL, &id, false, "frame %llu: %s",
                     (unsigned long long)id, job->error);
      break;
    case GL_JOB_STALE:
      gl__conn_status(c, id, GEOLOC__V1__ESTIMATE__STATUS__DROPPED_STALE);
      break;
    case GL_JOB_OK: {
      Geoloc__V1__Candidate cand[GL_JOB_MAX_CANDIDATES], *cp[GL_JOB_MAX_CANDIDATES];
      Geoloc__V1__Timing t = GEOLOC__V1__TIMING__INIT;
      Geoloc__V1__Estimate e = GEOLOC__V1__ESTIMATE__INIT;
      gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
      for (uint32_t i = 0; i < job->n_cand; i++) {
        const struct gl_job_candidate *jc = &job->cand[i];
        geoloc__v1__candidate__init(&cand[i]);
        cand[i].has_lat = cand[i].has_lon = cand[i].has_score = cand[i].has_radius_m = 1;
        cand[i].has_tile_id = cand[i].has_confidence = 1;
        cand[i].lat = jc->lat;
        cand[i].lon = jc->lon;
        cand[i].score = jc->score;
        cand[i].radius_m = jc->radius_m;
        cand[i].tile_id = (uint64_t)jc->tile_id;
        cand[i].confidence = jc->confidence;
        if (!isnan(jc->heading_deg)) {
          cand[i].has_heading_deg = 1;
          cand[i].heading_deg = jc->heading_deg;
        }
        cp[i] = &cand[i];
      }
      t.has_decode_us = t.has_queue_us = t.has_infer_us = t.has_search_us = t.has_total_us = 1;
      t.decode_us = job->decode_us;
      t.queue_us = (uint32_t)(job->t_batched - job->t_decoded);
      t.infer_us = job->infer_us;
      t.search_us = job->search_us;
      t.total_us = (uint32_t)(job->t_done - job->t_received);
      e.has_frame_id = e.has_status = 1;
      e.frame_id = id;
      e.status = job->n_cand ? GEOLOC__V1__ESTIMATE__STATUS__OK
                             : GEOLOC__V1__ESTIMATE__STATUS__NO_MATCH;
      e.n_candidates = job->n_cand;
      e.candidates = cp;
      e.timing = &t;
      e.map = job->rt->maps[job->map].name;
      Geoloc__V1__Track tr = GEOLOC__V1__TRACK__INIT;
      if (job->has_fix) {
        const struct gl_track_fix *x = &job->fix;
        tr.has_status = tr.has_lat = tr.has_lon = tr.has_radius_m = tr.has_confidence = 1;
        tr.status = (Geoloc__V1__Track__Status)x->s.status;
        tr.lat = x->lat;
        tr.lon = x->lon;
        tr.radius_m = (float)x->s.radius_m;
        tr.confidence = (float)x->s.confidence;
        if (!isnan(x->s.heading_deg)) {
          tr.has_heading_deg = 1;
          tr.heading_deg = (float)x->s.heading_deg;
        }
        e.track = &tr;
      }
      Geoloc__V1__Track sm = GEOLOC__V1__TRACK__INIT;
      if (job->has_fix && job->fix.has_smoothed) {
        const struct gl_track_fix *x = &job->fix;
        sm.has_status = sm.has_lat = sm.has_lon = sm.has_radius_m = sm.has_confidence = 1;
        sm.has_frame_id = 1;
        sm.status = (Geoloc__V1__Track__Status)x->ss.status;
        sm.lat = x->slat;
        sm.lon = x->slon;
        sm.radius_m = (float)x->ss.radius_m;
        sm.confidence = (float)x->ss.confidence;
        sm.frame_id = job->smoothed_id;
        e.smoothed = &sm;
      }
      m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE;
      m.estimate = &e;
      gl__conn_send(c, &m);
      break;
    }
    }
    if (c->draining && c->inflight == 0 && c->state != GL_CONN_CLOSING)
      gl__conn_error(c, c->bye_code, NULL, true, "%s", c->bye_text);
    else if (c->peer_done && c->inflight == 0) /* a half-closed client has its answers */
      gl__conn_finish(c);
  } else {
    c->dropped++; /* the connection is gone (reset, write error): logged on release */
  }
  gl_runtime_unref(job->rt);
  gl_job_free(job);
  gl__conn_release(c);
}

/* Plaintext protocol bytes in. */
void gl__proto_input(struct gl_conn *c, const uint8_t *data, size_t len) {
  while (len > 0 && c->state != GL_CONN_CLOSING && !c->draining) {
    size_t used;
    const uint8_t *body;
    size_t body_len;
    int r = gl_wire_decoder_feed(&c->dec, data, len, &used, &body, &body_len);
    data += used;
    len -= used;
    if (r == GL_ETOOBIG) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__TOO_LARGE, NULL, true,
                     "message of %u bytes exceeds the limit of %u bytes%s", c->dec.body_len,
                     c->dec.max_bytes, c->state == GL_CONN_READY ? "" : " before Hello");
      return;
    }
    if (r < 0) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__INTERNAL, NULL, true, "%s", gl_strerror(r));
      return;
    }
    if (r == 1)
      gl__conn_message(c, body, body_len);
  }
}
