/* Wire framing and codec: round trips of every message kind, the
 * incremental decoder under every split of a stream, the size limit, partial
 * and malformed input. */
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/err.h"
#include "proto/wire.h"
#include "test.h"

#define MIB (1024u * 1024u)

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void) {
  /* xorshift64: deterministic, so a failure reproduces. */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static bool str_eq(const char *a, const char *b) {
  if (!a || !b)
    return a == b;
  return strcmp(a, b) == 0;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    abort();
  return p;
}

/* Encodes msg with gl_wire_encode and checks the framing against an
 * independent protobuf_c_message_pack(). Returns a malloc'ed buffer. */
static uint8_t *encode(const ProtobufCMessage *msg, size_t *len) {
  size_t body = protobuf_c_message_get_packed_size(msg);
  size_t n = gl_wire_encoded_size(msg);
  uint8_t *buf = xmalloc(n + 16);

  memset(buf, 0xee, n + 16);
  size_t written = gl_wire_encode(msg, buf);
  CHECK_EQ_U64(n, body + GL_WIRE_HEADER_BYTES);
  CHECK_EQ_U64(written, n);
  CHECK(buf[n] == 0xee); /* nothing written past the end */
  CHECK_EQ_U64(be32(buf), body);

  uint8_t *ref = xmalloc(body);
  CHECK_EQ_U64(protobuf_c_message_pack(msg, ref), body);
  CHECK_EQ_MEM(buf + GL_WIRE_HEADER_BYTES, ref, body);
  free(ref);

  /* gl_wire_encode_alloc gives the same bytes. */
  uint8_t *alloc = NULL;
  size_t alloc_len = 0;
  if (CHECK_EQ_INT(gl_wire_encode_alloc(msg, 256 * MIB, &alloc, &alloc_len), 0)) {
    CHECK_EQ_U64(alloc_len, n);
    if (alloc_len == n)
      CHECK_EQ_MEM(alloc, buf, n);
  }
  free(alloc);

  *len = n;
  return buf;
}

#define MAX_BODIES 16

struct bodies {
  size_t n;
  uint8_t *data[MAX_BODIES];
  size_t len[MAX_BODIES];
};

static void bodies_free(struct bodies *b) {
  for (size_t i = 0; i < b->n; i++)
    free(b->data[i]);
  b->n = 0;
}

/* Feeds p[0..len) through d, copying each complete body into out. Returns 0
 * once everything was taken, a negative GL_E* from the decoder, or 1 when the
 * decoder broke its contract (already reported). */
static int feed_all(struct gl_wire_decoder *d, const uint8_t *p, size_t len, struct bodies *out) {
  while (len > 0) {
    size_t consumed = SIZE_MAX;
    const uint8_t *msg = NULL;
    size_t msg_len = SIZE_MAX;
    int rc = gl_wire_decoder_feed(d, p, len, &consumed, &msg, &msg_len);

    if (rc < 0)
      return rc;
    if (!CHECK(rc == 0 || rc == 1) || !CHECK(consumed <= len))
      return 1;
    if (rc == 0) {
      /* "Returns 0 when all bytes were taken and more are needed." */
      if (!CHECK_EQ_U64(consumed, len))
        return 1;
    } else {
      if (!CHECK(consumed > 0) || !CHECK(out->n < MAX_BODIES) || !CHECK(msg_len < 64 * MIB) ||
          !CHECK(msg != NULL || msg_len == 0))
        return 1;
      out->data[out->n] = xmalloc(msg_len);
      if (msg_len)
        memcpy(out->data[out->n], msg, msg_len);
      out->len[out->n] = msg_len;
      out->n++;
    }
    p += consumed;
    len -= consumed;
  }
  return 0;
}

/* ---- message builders ------------------------------------------------------- */

static uint8_t image_bytes[300 * 1024];

static void fill_image(void) {
  for (size_t i = 0; i < sizeof image_bytes; i++)
    image_bytes[i] = (uint8_t)(rng() >> 29);
}

struct client_fix {
  gl_client_msg msg;
  Geoloc__V1__Hello hello;
  Geoloc__V1__StreamOptions options;
  Geoloc__V1__Frame frame;
  Geoloc__V1__Prior prior;
  Geoloc__V1__Ping ping;
};

static void make_hello(struct client_fix *f) {
  *f = (struct client_fix){.msg = GEOLOC__V1__CLIENT_MESSAGE__INIT};
  f->hello = (Geoloc__V1__Hello)GEOLOC__V1__HELLO__INIT;
  f->options = (Geoloc__V1__StreamOptions)GEOLOC__V1__STREAM_OPTIONS__INIT;
  f->options.has_max_frames_in_flight = 1;
  f->options.max_frames_in_flight = 4;
  f->options.has_default_top_k = 1;
  f->options.default_top_k = 5;
  f->hello.has_protocol_version = 1;
  f->hello.protocol_version = 1;
  f->hello.client_name = "unit-test";
  f->hello.token = "s3cret";
  f->hello.map = "berlin";
  f->hello.options = &f->options;
  f->msg.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_HELLO;
  f->msg.hello = &f->hello;
}

static void make_frame(struct client_fix *f, size_t image_len) {
  *f = (struct client_fix){.msg = GEOLOC__V1__CLIENT_MESSAGE__INIT};
  f->frame = (Geoloc__V1__Frame)GEOLOC__V1__FRAME__INIT;
  f->prior = (Geoloc__V1__Prior)GEOLOC__V1__PRIOR__INIT;
  f->prior.has_lat = 1;
  f->prior.lat = 52.520008;
  f->prior.has_lon = 1;
  f->prior.lon = -13.404954;
  f->prior.has_radius_m = 1;
  f->prior.radius_m = 150.5;
  f->frame.has_frame_id = 1;
  f->frame.frame_id = 0x1122334455667788ull;
  f->frame.has_capture_time_us = 1;
  f->frame.capture_time_us = 1700000000123456ull;
  f->frame.has_image = 1;
  f->frame.image.len = image_len;
  f->frame.image.data = image_bytes;
  f->frame.has_format = 1;
  f->frame.format = GEOLOC__V1__IMAGE_FORMAT__RGB8;
  f->frame.has_width = 1;
  f->frame.width = 640;
  f->frame.has_height = 1;
  f->frame.height = 480;
  f->frame.prior = &f->prior;
  f->frame.has_heading_deg = 1;
  f->frame.heading_deg = 271.25;
  f->frame.has_top_k = 1;
  f->frame.top_k = 3;
  f->msg.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME;
  f->msg.frame = &f->frame;
}

static void make_ping(struct client_fix *f) {
  *f = (struct client_fix){.msg = GEOLOC__V1__CLIENT_MESSAGE__INIT};
  f->ping = (Geoloc__V1__Ping)GEOLOC__V1__PING__INIT;
  f->ping.has_nonce = 1;
  f->ping.nonce = 0xdeadbeefcafef00dull;
  f->ping.has_send_time_us = 1;
  f->ping.send_time_us = 123456789;
  f->msg.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_PING;
  f->msg.ping = &f->ping;
}

static void check_client_eq(const gl_client_msg *a, const gl_client_msg *b) {
  if (!CHECK_EQ_INT(a->msg_case, b->msg_case))
    return;
  switch (a->msg_case) {
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_HELLO: {
    const Geoloc__V1__Hello *x = a->hello, *y = b->hello;
    if (!CHECK(x && y))
      return;
    CHECK_EQ_INT(x->has_protocol_version, y->has_protocol_version);
    CHECK_EQ_U64(x->protocol_version, y->protocol_version);
    CHECK(str_eq(x->client_name, y->client_name));
    CHECK(str_eq(x->token, y->token));
    CHECK(str_eq(x->map, y->map));
    if (CHECK((x->options == NULL) == (y->options == NULL)) && x->options) {
      CHECK_EQ_INT(x->options->has_max_frames_in_flight, y->options->has_max_frames_in_flight);
      CHECK_EQ_U64(x->options->max_frames_in_flight, y->options->max_frames_in_flight);
      CHECK_EQ_INT(x->options->has_default_top_k, y->options->has_default_top_k);
      CHECK_EQ_U64(x->options->default_top_k, y->options->default_top_k);
    }
    break;
  }
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME: {
    const Geoloc__V1__Frame *x = a->frame, *y = b->frame;
    if (!CHECK(x && y))
      return;
    CHECK_EQ_INT(x->has_frame_id, y->has_frame_id);
    CHECK_EQ_U64(x->frame_id, y->frame_id);
    CHECK_EQ_INT(x->has_capture_time_us, y->has_capture_time_us);
    CHECK_EQ_U64(x->capture_time_us, y->capture_time_us);
    CHECK_EQ_INT(x->has_image, y->has_image);
    if (CHECK_EQ_U64(x->image.len, y->image.len))
      CHECK_EQ_MEM(x->image.data, y->image.data, x->image.len);
    CHECK_EQ_INT(x->has_format, y->has_format);
    CHECK_EQ_INT(x->format, y->format);
    CHECK_EQ_INT(x->has_width, y->has_width);
    CHECK_EQ_U64(x->width, y->width);
    CHECK_EQ_INT(x->has_height, y->has_height);
    CHECK_EQ_U64(x->height, y->height);
    if (CHECK((x->prior == NULL) == (y->prior == NULL)) && x->prior) {
      CHECK(x->prior->has_lat == y->prior->has_lat && x->prior->lat == y->prior->lat);
      CHECK(x->prior->has_lon == y->prior->has_lon && x->prior->lon == y->prior->lon);
      CHECK(x->prior->has_radius_m == y->prior->has_radius_m &&
            x->prior->radius_m == y->prior->radius_m);
    }
    CHECK(x->has_heading_deg == y->has_heading_deg && x->heading_deg == y->heading_deg);
    CHECK_EQ_INT(x->has_top_k, y->has_top_k);
    CHECK_EQ_U64(x->top_k, y->top_k);
    break;
  }
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_PING:
    if (!CHECK(a->ping && b->ping))
      return;
    CHECK_EQ_INT(a->ping->has_nonce, b->ping->has_nonce);
    CHECK_EQ_U64(a->ping->nonce, b->ping->nonce);
    CHECK_EQ_INT(a->ping->has_send_time_us, b->ping->has_send_time_us);
    CHECK_EQ_U64(a->ping->send_time_us, b->ping->send_time_us);
    break;
  default:
    CHECK(!"unexpected msg_case");
  }
}

struct server_fix {
  gl_server_msg msg;
  Geoloc__V1__Welcome welcome;
  char *maps[3];
  Geoloc__V1__Error error;
  Geoloc__V1__Pong pong;
  Geoloc__V1__Estimate estimate;
  Geoloc__V1__Candidate cand[2];
  Geoloc__V1__Candidate *cand_ptrs[2];
  Geoloc__V1__Timing timing;
};

static void make_welcome(struct server_fix *f) {
  *f = (struct server_fix){.msg = GEOLOC__V1__SERVER_MESSAGE__INIT};
  f->welcome = (Geoloc__V1__Welcome)GEOLOC__V1__WELCOME__INIT;
  f->welcome.has_protocol_version = 1;
  f->welcome.protocol_version = 1;
  f->welcome.server = "geolocd 0.1.0";
  f->welcome.map = "";
  f->maps[0] = "berlin";
  f->maps[1] = "";
  f->maps[2] = "paris";
  f->welcome.n_maps = 3;
  f->welcome.maps = f->maps;
  f->welcome.has_max_message_bytes = 1;
  f->welcome.max_message_bytes = 16777216;
  f->welcome.has_max_frames_in_flight = 1;
  f->welcome.max_frames_in_flight = 8;
  f->welcome.has_session_id = 1;
  f->welcome.session_id = UINT64_MAX - 1;
  f->msg.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME;
  f->msg.welcome = &f->welcome;
}

static void make_error(struct server_fix *f) {
  *f = (struct server_fix){.msg = GEOLOC__V1__SERVER_MESSAGE__INIT};
  f->error = (Geoloc__V1__Error)GEOLOC__V1__ERROR__INIT;
  f->error.has_code = 1;
  f->error.code = GEOLOC__V1__ERROR__CODE__UNAVAILABLE;
  f->error.message = "no map is loaded";
  f->error.has_frame_id = 1;
  f->error.frame_id = 77;
  f->error.has_fatal = 1;
  f->error.fatal = 0;
  f->msg.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR;
  f->msg.error = &f->error;
}

static void make_pong(struct server_fix *f) {
  *f = (struct server_fix){.msg = GEOLOC__V1__SERVER_MESSAGE__INIT};
  f->pong = (Geoloc__V1__Pong)GEOLOC__V1__PONG__INIT;
  f->pong.has_nonce = 1;
  f->pong.nonce = 42;
  f->pong.has_send_time_us = 1;
  f->pong.send_time_us = 1000;
  f->pong.has_server_time_us = 1;
  f->pong.server_time_us = 2000;
  f->msg.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_PONG;
  f->msg.pong = &f->pong;
}

static void make_estimate(struct server_fix *f) {
  *f = (struct server_fix){.msg = GEOLOC__V1__SERVER_MESSAGE__INIT};
  f->estimate = (Geoloc__V1__Estimate)GEOLOC__V1__ESTIMATE__INIT;
  f->timing = (Geoloc__V1__Timing)GEOLOC__V1__TIMING__INIT;
  for (int i = 0; i < 2; i++) {
    Geoloc__V1__Candidate *c = &f->cand[i];
    *c = (Geoloc__V1__Candidate)GEOLOC__V1__CANDIDATE__INIT;
    c->has_lat = 1;
    c->lat = 48.8566 + i;
    c->has_lon = 1;
    c->lon = 2.3522 - i;
    c->has_score = 1;
    c->score = 0.75f - 0.5f * (float)i;
    c->has_radius_m = 1;
    c->radius_m = 12.5f;
    c->has_tile_id = 1;
    c->tile_id = 1000000007ull * (uint64_t)(i + 1);
    c->has_heading_deg = i == 0; /* only the first has a heading */
    c->heading_deg = i == 0 ? 90.5f : 0.0f;
    c->has_confidence = 1;
    c->confidence = 0.9f;
    f->cand_ptrs[i] = c;
  }
  f->timing.has_decode_us = 1;
  f->timing.decode_us = 1;
  f->timing.has_queue_us = 1;
  f->timing.queue_us = 22;
  f->timing.has_infer_us = 1;
  f->timing.infer_us = 333;
  f->timing.has_search_us = 1;
  f->timing.search_us = 4444;
  f->timing.has_total_us = 1;
  f->timing.total_us = 4800;
  f->estimate.has_frame_id = 1;
  f->estimate.frame_id = 9;
  f->estimate.has_status = 1;
  f->estimate.status = GEOLOC__V1__ESTIMATE__STATUS__OK;
  f->estimate.n_candidates = 2;
  f->estimate.candidates = f->cand_ptrs;
  f->estimate.timing = &f->timing;
  f->estimate.map = "paris";
  f->msg.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE;
  f->msg.estimate = &f->estimate;
}

static void check_server_eq(const gl_server_msg *a, const gl_server_msg *b) {
  if (!CHECK_EQ_INT(a->msg_case, b->msg_case))
    return;
  switch (a->msg_case) {
  case GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME: {
    const Geoloc__V1__Welcome *x = a->welcome, *y = b->welcome;
    if (!CHECK(x && y))
      return;
    CHECK(x->has_protocol_version == y->has_protocol_version &&
          x->protocol_version == y->protocol_version);
    CHECK(str_eq(x->server, y->server));
    CHECK(str_eq(x->map, y->map));
    if (CHECK_EQ_U64(x->n_maps, y->n_maps))
      for (size_t i = 0; i < x->n_maps; i++)
        CHECK(str_eq(x->maps[i], y->maps[i]));
    CHECK(x->has_max_message_bytes == y->has_max_message_bytes &&
          x->max_message_bytes == y->max_message_bytes);
    CHECK(x->has_max_frames_in_flight == y->has_max_frames_in_flight &&
          x->max_frames_in_flight == y->max_frames_in_flight);
    CHECK(x->has_session_id == y->has_session_id);
    CHECK_EQ_U64(x->session_id, y->session_id);
    break;
  }
  case GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR: {
    const Geoloc__V1__Error *x = a->error, *y = b->error;
    if (!CHECK(x && y))
      return;
    CHECK(x->has_code == y->has_code && x->code == y->code);
    CHECK(str_eq(x->message, y->message));
    CHECK(x->has_frame_id == y->has_frame_id);
    if (x->has_frame_id)
      CHECK_EQ_U64(x->frame_id, y->frame_id);
    CHECK(x->has_fatal == y->has_fatal && x->fatal == y->fatal);
    break;
  }
  case GEOLOC__V1__SERVER_MESSAGE__MSG_PONG: {
    const Geoloc__V1__Pong *x = a->pong, *y = b->pong;
    if (!CHECK(x && y))
      return;
    CHECK(x->has_nonce == y->has_nonce && x->nonce == y->nonce);
    CHECK(x->has_send_time_us == y->has_send_time_us && x->send_time_us == y->send_time_us);
    CHECK(x->has_server_time_us == y->has_server_time_us &&
          x->server_time_us == y->server_time_us);
    break;
  }
  case GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE: {
    const Geoloc__V1__Estimate *x = a->estimate, *y = b->estimate;
    if (!CHECK(x && y))
      return;
    CHECK(x->has_frame_id == y->has_frame_id && x->frame_id == y->frame_id);
    CHECK(x->has_status == y->has_status && x->status == y->status);
    CHECK(str_eq(x->map, y->map));
    if (CHECK_EQ_U64(x->n_candidates, y->n_candidates)) {
      for (size_t i = 0; i < x->n_candidates; i++) {
        const Geoloc__V1__Candidate *p = x->candidates[i], *q = y->candidates[i];
        CHECK(p->has_lat == q->has_lat && p->lat == q->lat);
        CHECK(p->has_lon == q->has_lon && p->lon == q->lon);
        CHECK(p->has_score == q->has_score && p->score == q->score);
        CHECK(p->has_radius_m == q->has_radius_m && p->radius_m == q->radius_m);
        CHECK(p->has_tile_id == q->has_tile_id && p->tile_id == q->tile_id);
        CHECK(p->has_heading_deg == q->has_heading_deg && p->heading_deg == q->heading_deg);
        CHECK(p->has_confidence == q->has_confidence && p->confidence == q->confidence);
      }
    }
    if (CHECK((x->timing == NULL) == (y->timing == NULL)) && x->timing) {
      const Geoloc__V1__Timing *p = x->timing, *q = y->timing;
      CHECK(p->has_decode_us == q->has_decode_us && p->decode_us == q->decode_us);
      CHECK(p->has_queue_us == q->has_queue_us && p->queue_us == q->queue_us);
      CHECK(p->has_infer_us == q->has_infer_us && p->infer_us == q->infer_us);
      CHECK(p->has_search_us == q->has_search_us && p->search_us == q->search_us);
      CHECK(p->has_total_us == q->has_total_us && p->total_us == q->total_us);
    }
    break;
  }
  default:
    CHECK(!"unexpected msg_case");
  }
}

/* ---- round trips ---------------------------------------------------------------- */

/* Encodes msg, decodes it with a fresh decoder fed all at once, unpacks and
 * compares. */
static void client_roundtrip(const gl_client_msg *msg) {
  size_t len;
  uint8_t *buf = encode(&msg->base, &len);
  struct gl_wire_decoder d;
  struct bodies b = {0};

  gl_wire_decoder_init(&d, 16 * MIB);
  CHECK(!gl_wire_decoder_partial(&d));
  CHECK_EQ_INT(feed_all(&d, buf, len, &b), 0);
  CHECK(!gl_wire_decoder_partial(&d));
  if (CHECK_EQ_U64(b.n, 1) && CHECK_EQ_U64(b.len[0], len - GL_WIRE_HEADER_BYTES)) {
    CHECK_EQ_MEM(b.data[0], buf + GL_WIRE_HEADER_BYTES, b.len[0]);
    gl_client_msg *out = NULL;
    if (CHECK_EQ_INT(gl_wire_unpack_client(b.data[0], b.len[0], &out), 0) && CHECK(out != NULL))
      check_client_eq(msg, out);
    gl_wire_free(out);
  }
  bodies_free(&b);
  gl_wire_decoder_fini(&d);
  free(buf);
}

static void server_roundtrip(const gl_server_msg *msg) {
  size_t len;
  uint8_t *buf = encode(&msg->base, &len);
  struct gl_wire_decoder d;
  struct bodies b = {0};

  gl_wire_decoder_init(&d, 16 * MIB);
  CHECK_EQ_INT(feed_all(&d, buf, len, &b), 0);
  CHECK(!gl_wire_decoder_partial(&d));
  if (CHECK_EQ_U64(b.n, 1) && CHECK_EQ_U64(b.len[0], len - GL_WIRE_HEADER_BYTES)) {
    CHECK_EQ_MEM(b.data[0], buf + GL_WIRE_HEADER_BYTES, b.len[0]);
    gl_server_msg *out = NULL;
    if (CHECK_EQ_INT(gl_wire_unpack_server(b.data[0], b.len[0], &out), 0) && CHECK(out != NULL))
      check_server_eq(msg, out);
    gl_wire_free(out);
  }
  bodies_free(&b);
  gl_wire_decoder_fini(&d);
  free(buf);
}

static void test_client_roundtrip(void) {
  struct client_fix f;

  make_hello(&f);
  client_roundtrip(&f.msg);
  make_frame(&f, 1000);
  client_roundtrip(&f.msg);
  make_frame(&f, sizeof image_bytes); /* body well above 64 KiB */
  client_roundtrip(&f.msg);
  make_frame(&f, 0); /* an empty image is still an image */
  client_roundtrip(&f.msg);
  make_ping(&f);
  client_roundtrip(&f.msg);

  /* A Ping without fields: the oneof is set, so it is a valid message. */
  make_ping(&f);
  f.ping = (Geoloc__V1__Ping)GEOLOC__V1__PING__INIT;
  client_roundtrip(&f.msg);

  /* A Hello without options or strings. */
  make_hello(&f);
  f.hello.options = NULL;
  f.hello.client_name = NULL;
  f.hello.token = NULL;
  f.hello.map = NULL;
  client_roundtrip(&f.msg);
}

static void test_server_roundtrip(void) {
  struct server_fix f;

  make_welcome(&f);
  server_roundtrip(&f.msg);
  make_error(&f);
  server_roundtrip(&f.msg);
  make_error(&f);
  f.error.code = GEOLOC__V1__ERROR__CODE__PROTOCOL;
  f.error.fatal = 1;
  f.error.has_frame_id = 0;
  server_roundtrip(&f.msg);
  make_pong(&f);
  server_roundtrip(&f.msg);
  make_estimate(&f);
  server_roundtrip(&f.msg);
  make_estimate(&f);
  f.estimate.n_candidates = 0;
  f.estimate.status = GEOLOC__V1__ESTIMATE__STATUS__NO_MATCH;
  f.estimate.timing = NULL;
  server_roundtrip(&f.msg);
}

/* ---- the decoder under every split ----------------------------------------------- */

struct stream {
  uint8_t *data;
  size_t len;
  size_t n;
  size_t ends[MAX_BODIES]; /* offset just past each message */
  uint8_t *bodies[MAX_BODIES];
  size_t body_len[MAX_BODIES];
};

static void stream_add(struct stream *s, const ProtobufCMessage *msg) {
  size_t len;
  uint8_t *buf = encode(msg, &len);

  s->data = realloc(s->data, s->len + len);
  if (!s->data)
    abort();
  memcpy(s->data + s->len, buf, len);
  s->body_len[s->n] = len - GL_WIRE_HEADER_BYTES;
  s->bodies[s->n] = xmalloc(len);
  memcpy(s->bodies[s->n], buf + GL_WIRE_HEADER_BYTES, len - GL_WIRE_HEADER_BYTES);
  s->len += len;
  s->ends[s->n] = s->len;
  s->n++;
  free(buf);
}

static void stream_free(struct stream *s) {
  for (size_t i = 0; i < s->n; i++)
    free(s->bodies[i]);
  free(s->data);
}

static bool at_boundary(const struct stream *s, size_t off) {
  if (off == 0)
    return true;
  for (size_t i = 0; i < s->n; i++)
    if (s->ends[i] == off)
      return true;
  return false;
}

static bool bodies_match(const struct stream *s, const struct bodies *b) {
  if (!CHECK_EQ_U64(b->n, s->n))
    return false;
  for (size_t i = 0; i < s->n; i++) {
    if (!CHECK_EQ_U64(b->len[i], s->body_len[i]) ||
        !CHECK_EQ_MEM(b->data[i], s->bodies[i], s->body_len[i]))
      return false;
  }
  return true;
}

static void make_three(struct stream *s, size_t image_len) {
  struct client_fix f;

  memset(s, 0, sizeof *s);
  make_hello(&f);
  stream_add(s, &f.msg.base);
  make_frame(&f, image_len);
  stream_add(s, &f.msg.base);
  make_ping(&f);
  stream_add(s, &f.msg.base);
}

static void test_every_split(void) {
  struct stream s;
  make_three(&s, 700);

  for (size_t split = 0; split <= s.len; split++) {
    struct gl_wire_decoder d;
    struct bodies b = {0};
    int before = gl_test_failures;

    gl_wire_decoder_init(&d, MIB);
    CHECK_EQ_INT(feed_all(&d, s.data, split, &b), 0);
    /* Between the pieces the decoder holds part of a message exactly when
     * the split is not on a message boundary. */
    CHECK_EQ_INT(gl_wire_decoder_partial(&d) != 0, !at_boundary(&s, split));
    CHECK_EQ_INT(feed_all(&d, s.data + split, s.len - split, &b), 0);
    CHECK(!gl_wire_decoder_partial(&d));
    bodies_match(&s, &b);
    bodies_free(&b);
    gl_wire_decoder_fini(&d);
    if (gl_test_failures != before) {
      fprintf(stderr, "  split at %zu of %zu\n", split, s.len);
      break; /* one report is enough */
    }
  }
  stream_free(&s);
}

static void test_byte_by_byte(void) {
  struct stream s;
  struct gl_wire_decoder d;
  struct bodies b = {0};

  make_three(&s, 700);
  gl_wire_decoder_init(&d, MIB);
  for (size_t i = 0; i < s.len; i++) {
    size_t had = b.n;
    if (feed_all(&d, s.data + i, 1, &b) != 0) {
      CHECK(!"feed failed");
      break;
    }
    /* A message completes exactly with its last byte. */
    CHECK_EQ_INT(b.n != had, at_boundary(&s, i + 1));
    CHECK_EQ_INT(gl_wire_decoder_partial(&d) != 0, !at_boundary(&s, i + 1));
  }
  if (bodies_match(&s, &b)) {
    gl_client_msg *m[3] = {NULL, NULL, NULL};
    CHECK_EQ_INT(gl_wire_unpack_client(b.data[0], b.len[0], &m[0]), 0);
    CHECK_EQ_INT(gl_wire_unpack_client(b.data[1], b.len[1], &m[1]), 0);
    CHECK_EQ_INT(gl_wire_unpack_client(b.data[2], b.len[2], &m[2]), 0);
    if (m[0] && m[1] && m[2]) {
      struct client_fix f;
      make_hello(&f);
      check_client_eq(&f.msg, m[0]);
      make_frame(&f, 700);
      check_client_eq(&f.msg, m[1]);
      make_ping(&f);
      check_client_eq(&f.msg, m[2]);
    }
    for (int i = 0; i < 3; i++)
      gl_wire_free(m[i]);
  }
  bodies_free(&b);
  gl_wire_decoder_fini(&d);
  stream_free(&s);
}

/* Random chunkings of a stream with a large message between small ones, on
 * one decoder, so the body buffer grows and is reused. */
static void test_random_chunks(void) {
  struct stream s;
  struct client_fix f;
  struct server_fix g;

  memset(&s, 0, sizeof s);
  make_ping(&f);
  stream_add(&s, &f.msg.base);
  make_frame(&f, sizeof image_bytes);
  stream_add(&s, &f.msg.base);
  make_hello(&f);
  stream_add(&s, &f.msg.base);
  make_frame(&f, 10);
  stream_add(&s, &f.msg.base);
  make_estimate(&g); /* the decoder does not care which direction */
  stream_add(&s, &g.msg.base);

  struct gl_wire_decoder d;
  gl_wire_decoder_init(&d, MIB);
  for (int round = 0; round < 50; round++) {
    struct bodies b = {0};
    size_t off = 0;
    while (off < s.len) {
      size_t max_chunk = round % 2 ? 64 : 70000;
      size_t n = 1 + (size_t)(rng() % max_chunk);
      if (n > s.len - off)
        n = s.len - off;
      if (feed_all(&d, s.data + off, n, &b) != 0) {
        CHECK(!"feed failed");
        break;
      }
      off += n;
    }
    CHECK(!gl_wire_decoder_partial(&d));
    bool ok = bodies_match(&s, &b);
    bodies_free(&b);
    if (!ok)
      break;
  }
  gl_wire_decoder_fini(&d);
  stream_free(&s);
}

/* One call never goes past the end of the first complete message. */
static void test_feed_stops_at_message_end(void) {
  struct stream s;
  struct gl_wire_decoder d;
  size_t consumed;
  const uint8_t *msg;
  size_t msg_len;
  size_t off = 0;

  make_three(&s, 50);
  gl_wire_decoder_init(&d, MIB);
  for (size_t i = 0; i < s.n; i++) {
    int rc = gl_wire_decoder_feed(&d, s.data + off, s.len - off, &consumed, &msg, &msg_len);
    CHECK_EQ_INT(rc, 1);
    CHECK_EQ_U64(consumed, s.ends[i] - off);
    if (rc == 1 && CHECK_EQ_U64(msg_len, s.body_len[i]))
      CHECK_EQ_MEM(msg, s.bodies[i], msg_len);
    off += consumed;
  }
  CHECK_EQ_U64(off, s.len);
  /* Nothing left: feeding no bytes asks for more. */
  consumed = 99;
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, s.data, 0, &consumed, &msg, &msg_len), 0);
  CHECK_EQ_U64(consumed, 0);
  CHECK(!gl_wire_decoder_partial(&d));
  gl_wire_decoder_fini(&d);
  stream_free(&s);
}

/* ---- limits, truncation, garbage ------------------------------------------------ */

static void test_oversized(void) {
  struct gl_wire_decoder d;
  uint8_t hdr[4 + 16];
  size_t consumed;
  const uint8_t *msg;
  size_t msg_len;

  /* max + 1 is refused as soon as the header is complete. */
  gl_wire_decoder_init(&d, 1000);
  put_be32(hdr, 1001);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, hdr, 4, &consumed, &msg, &msg_len), GL_ETOOBIG);
  gl_wire_decoder_fini(&d);

  /* The same, header bytes one at a time. */
  gl_wire_decoder_init(&d, 1000);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(gl_wire_decoder_feed(&d, hdr + i, 1, &consumed, &msg, &msg_len), 0);
    CHECK(gl_wire_decoder_partial(&d));
  }
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, hdr + 3, 1, &consumed, &msg, &msg_len), GL_ETOOBIG);
  gl_wire_decoder_fini(&d);

  /* With body bytes behind the header in the same call. */
  gl_wire_decoder_init(&d, 1000);
  memset(hdr + 4, 0x08, 16);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, hdr, sizeof hdr, &consumed, &msg, &msg_len), GL_ETOOBIG);
  gl_wire_decoder_fini(&d);

  /* The largest prefix there is, with a 1 MiB limit: refused, not allocated. */
  gl_wire_decoder_init(&d, MIB);
  put_be32(hdr, UINT32_MAX);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, hdr, 4, &consumed, &msg, &msg_len), GL_ETOOBIG);
  gl_wire_decoder_fini(&d);
  gl_wire_decoder_init(&d, MIB);
  put_be32(hdr, MIB + 1);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, hdr, 4, &consumed, &msg, &msg_len), GL_ETOOBIG);
  gl_wire_decoder_fini(&d);

  /* Exactly max is accepted. */
  uint8_t *big = xmalloc(4 + 1000);
  put_be32(big, 1000);
  for (size_t i = 0; i < 1000; i++)
    big[4 + i] = (uint8_t)(i * 7);
  gl_wire_decoder_init(&d, 1000);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, big, 4, &consumed, &msg, &msg_len), 0);
  CHECK_EQ_U64(consumed, 4);
  CHECK(gl_wire_decoder_partial(&d));
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, big + 4, 999, &consumed, &msg, &msg_len), 0);
  CHECK_EQ_U64(consumed, 999);
  CHECK(gl_wire_decoder_partial(&d));
  if (CHECK_EQ_INT(gl_wire_decoder_feed(&d, big + 1003, 1, &consumed, &msg, &msg_len), 1)) {
    CHECK_EQ_U64(consumed, 1);
    if (CHECK_EQ_U64(msg_len, 1000))
      CHECK_EQ_MEM(msg, big + 4, 1000);
  }
  CHECK(!gl_wire_decoder_partial(&d));
  gl_wire_decoder_fini(&d);

  /* A good message, then a bad prefix in the same buffer: the message is
   * delivered first, the error comes with the next call. */
  struct stream s;
  make_three(&s, 10);
  uint8_t *mixed = xmalloc(s.ends[0] + 4);
  memcpy(mixed, s.data, s.ends[0]);
  put_be32(mixed + s.ends[0], MIB + 1);
  gl_wire_decoder_init(&d, MIB);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, mixed, s.ends[0] + 4, &consumed, &msg, &msg_len), 1);
  CHECK_EQ_U64(consumed, s.ends[0]);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, mixed + consumed, 4, &consumed, &msg, &msg_len),
               GL_ETOOBIG);
  gl_wire_decoder_fini(&d);
  free(mixed);
  stream_free(&s);
  free(big);
}

static void test_set_max(void) {
  struct gl_wire_decoder d;
  uint8_t buf[4 + 300];
  size_t consumed;
  const uint8_t *msg;
  size_t msg_len;

  memset(buf, 0x11, sizeof buf);

  /* Raised before the header: a larger message passes. */
  gl_wire_decoder_init(&d, 100);
  gl_wire_decoder_set_max(&d, 200);
  put_be32(buf, 150);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, buf, 4 + 150, &consumed, &msg, &msg_len), 1);
  CHECK_EQ_U64(msg_len, 150);
  /* Lowered: the next header is checked against the new limit. */
  gl_wire_decoder_set_max(&d, 50);
  put_be32(buf, 51);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, buf, 4, &consumed, &msg, &msg_len), GL_ETOOBIG);
  gl_wire_decoder_fini(&d);

  gl_wire_decoder_init(&d, 100);
  gl_wire_decoder_set_max(&d, 50);
  put_be32(buf, 50);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, buf, 4 + 50, &consumed, &msg, &msg_len), 1);
  CHECK_EQ_U64(msg_len, 50);
  gl_wire_decoder_fini(&d);

  /* A message whose header was already read under the old limit completes. */
  gl_wire_decoder_init(&d, 200);
  put_be32(buf, 150);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, buf, 10, &consumed, &msg, &msg_len), 0);
  gl_wire_decoder_set_max(&d, 100);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, buf + 10, 144, &consumed, &msg, &msg_len), 1);
  CHECK_EQ_U64(msg_len, 150);
  /* ... and the one after it is held to the new limit. */
  put_be32(buf, 101);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, buf, 4, &consumed, &msg, &msg_len), GL_ETOOBIG);
  gl_wire_decoder_fini(&d);
}

static void test_truncated(void) {
  struct client_fix f;
  size_t len;
  struct gl_wire_decoder d;
  struct bodies b = {0};

  make_hello(&f);
  uint8_t *buf = encode(&f.msg.base, &len);

  gl_wire_decoder_init(&d, MIB);
  CHECK(!gl_wire_decoder_partial(&d));
  /* Part of the header. */
  CHECK_EQ_INT(feed_all(&d, buf, 2, &b), 0);
  CHECK(gl_wire_decoder_partial(&d));
  CHECK_EQ_U64(b.n, 0);
  /* All but the last byte. */
  CHECK_EQ_INT(feed_all(&d, buf + 2, len - 3, &b), 0);
  CHECK(gl_wire_decoder_partial(&d));
  CHECK_EQ_U64(b.n, 0);
  /* The last byte completes it. */
  CHECK_EQ_INT(feed_all(&d, buf + len - 1, 1, &b), 0);
  CHECK(!gl_wire_decoder_partial(&d));
  CHECK_EQ_U64(b.n, 1);
  bodies_free(&b);
  gl_wire_decoder_fini(&d);

  /* A header alone (a non-empty body announced). */
  gl_wire_decoder_init(&d, MIB);
  CHECK_EQ_INT(feed_all(&d, buf, 4, &b), 0);
  CHECK(gl_wire_decoder_partial(&d));
  CHECK_EQ_U64(b.n, 0);
  gl_wire_decoder_fini(&d);

  /* A truncated body handed to unpack is malformed. */
  gl_client_msg *out = NULL;
  CHECK_EQ_INT(gl_wire_unpack_client(buf + 4, len - 5, &out), GL_EMALFORMED);
  gl_wire_free(out);
  free(buf);
}

static void test_empty_body(void) {
  static const uint8_t zero_len[4] = {0, 0, 0, 0};
  struct gl_wire_decoder d;
  size_t consumed;
  const uint8_t *msg;
  size_t msg_len = 99;

  /* A zero-length body is a complete message as soon as its header is. */
  gl_wire_decoder_init(&d, MIB);
  CHECK_EQ_INT(gl_wire_decoder_feed(&d, zero_len, 4, &consumed, &msg, &msg_len), 1);
  CHECK_EQ_U64(consumed, 4);
  CHECK_EQ_U64(msg_len, 0);
  CHECK(!gl_wire_decoder_partial(&d));
  gl_wire_decoder_fini(&d);

  /* Valid protobuf with no oneof set: malformed for both directions. */
  static const uint8_t empty[1] = {0};
  gl_client_msg *c = NULL;
  gl_server_msg *s = NULL;
  CHECK_EQ_INT(gl_wire_unpack_client(empty, 0, &c), GL_EMALFORMED);
  gl_wire_free(c);
  CHECK_EQ_INT(gl_wire_unpack_server(empty, 0, &s), GL_EMALFORMED);
  gl_wire_free(s);

  /* Only an unknown field (15, varint 1): still no oneof. */
  static const uint8_t unknown[2] = {0x78, 0x01};
  c = NULL;
  s = NULL;
  CHECK_EQ_INT(gl_wire_unpack_client(unknown, sizeof unknown, &c), GL_EMALFORMED);
  gl_wire_free(c);
  CHECK_EQ_INT(gl_wire_unpack_server(unknown, sizeof unknown, &s), GL_EMALFORMED);
  gl_wire_free(s);

  gl_wire_free(NULL);
}

static void test_garbage(void) {
  /* Hand-made bad protobuf. */
  static const struct {
    uint8_t bytes[4];
    size_t len;
  } bad[] = {
      {{0xff}, 1},                   /* tag with no end */
      {{0x0a}, 1},                   /* field 1 without its length */
      {{0x0a, 0x05, 0x08}, 3},       /* length past the end */
      {{0x00, 0x01}, 2},             /* field number 0 */
      {{0x0a, 0x80}, 2},             /* unterminated length varint */
      {{0x1a, 0x02, 0x08}, 3},       /* nested ping past the end */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    gl_client_msg *c = NULL;
    gl_server_msg *s = NULL;
    if (!CHECK_EQ_INT(gl_wire_unpack_client(bad[i].bytes, bad[i].len, &c), GL_EMALFORMED))
      fprintf(stderr, "  case %zu\n", i);
    gl_wire_free(c);
    CHECK_EQ_INT(gl_wire_unpack_server(bad[i].bytes, bad[i].len, &s), GL_EMALFORMED);
    gl_wire_free(s);
  }

  /* Random bytes: either malformed or a message with its oneof set. */
  uint8_t body[256];
  int valid = 0;
  for (int iter = 0; iter < 20000; iter++) {
    size_t len = (size_t)(rng() % sizeof body);
    for (size_t i = 0; i < len; i++)
      body[i] = (uint8_t)rng();
    /* Bias some inputs toward a plausible start so nested paths are hit. */
    if (len > 2 && iter % 3 == 0) {
      body[0] = (uint8_t)(0x0a + 8 * (rng() % 4));
      body[1] = (uint8_t)(len - 2);
    }

    gl_client_msg *c = NULL;
    int rc = gl_wire_unpack_client(body, len, &c);
    if (rc == 0) {
      valid++;
      if (CHECK(c != NULL))
        CHECK(c->msg_case != GEOLOC__V1__CLIENT_MESSAGE__MSG__NOT_SET);
    } else {
      CHECK_EQ_INT(rc, GL_EMALFORMED);
    }
    gl_wire_free(rc == 0 ? c : NULL);

    gl_server_msg *s = NULL;
    rc = gl_wire_unpack_server(body, len, &s);
    if (rc == 0) {
      if (CHECK(s != NULL))
        CHECK(s->msg_case != GEOLOC__V1__SERVER_MESSAGE__MSG__NOT_SET);
    } else {
      CHECK_EQ_INT(rc, GL_EMALFORMED);
    }
    gl_wire_free(rc == 0 ? s : NULL);
  }
  /* The biased inputs make some valid messages; if none unpacked, unpack
   * refuses everything, which is a bug too. */
  CHECK(valid > 0);
}

static void test_encode_alloc_limit(void) {
  struct client_fix f;
  make_frame(&f, 5000);
  size_t body = protobuf_c_message_get_packed_size(&f.msg.base);
  uint8_t *out = NULL;
  size_t out_len = 0;

  CHECK(body > 5000);
  CHECK_EQ_INT(gl_wire_encode_alloc(&f.msg.base, 1000, &out, &out_len), GL_ETOOBIG);
  CHECK_EQ_INT(gl_wire_encode_alloc(&f.msg.base, (uint32_t)body - 1, &out, &out_len), GL_ETOOBIG);
  out = NULL;
  if (CHECK_EQ_INT(gl_wire_encode_alloc(&f.msg.base, (uint32_t)body, &out, &out_len), 0)) {
    CHECK_EQ_U64(out_len, body + GL_WIRE_HEADER_BYTES);
    CHECK_EQ_U64(be32(out), body);
    gl_client_msg *back = NULL;
    if (CHECK_EQ_INT(gl_wire_unpack_client(out + 4, out_len - 4, &back), 0))
      check_client_eq(&f.msg, back);
    gl_wire_free(back);
  }
  free(out);
}

/* After GL_ETOOBIG the stream is dead, but a caller that feeds more bytes
 * anyway (gl_client_recv called again after an error, say) must get an error
 * again, never a message and never a write past the body buffer. Run in a
 * child so that a crash is reported as a failure of this test only. */
static int after_toobig_child(uint32_t max, uint32_t prefix, size_t extra, bool warm) {
  struct gl_wire_decoder d;
  size_t consumed;
  const uint8_t *msg;
  size_t msg_len;
  uint8_t *buf = xmalloc(4 + extra);
  int bad = 0;

  gl_wire_decoder_init(&d, max);
  memset(buf, 0x41, 4 + extra);
  if (warm) {
    /* A small message first, so the body buffer exists but is too small. */
    put_be32(buf, 8);
    if (gl_wire_decoder_feed(&d, buf, 12, &consumed, &msg, &msg_len) != 1)
      bad = 1;
  }
  put_be32(buf, prefix);
  if (gl_wire_decoder_feed(&d, buf, 4, &consumed, &msg, &msg_len) != GL_ETOOBIG)
    bad = 1;
  for (int i = 0; i < 3; i++) {
    int rc = gl_wire_decoder_feed(&d, buf + 4, extra, &consumed, &msg, &msg_len);
    if (rc >= 0) {
      fprintf(stderr, "  feed after GL_ETOOBIG returned %d (consumed %zu)\n", rc, consumed);
      bad = 1;
      break;
    }
  }
  gl_wire_decoder_fini(&d);
  free(buf);
  return bad;
}

static void test_after_toobig(void) {
  static const struct {
    uint32_t max, prefix;
    size_t extra;
    bool warm;
  } cases[] = {{1000, 1001, 2000, false}, {1000, 5000, 6000, true}, {MIB, UINT32_MAX, 4096, true}};

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fflush(stderr);
    pid_t pid = fork();
    if (!CHECK(pid >= 0))
      return;
    if (pid == 0)
      _exit(after_toobig_child(cases[i].max, cases[i].prefix, cases[i].extra, cases[i].warm));
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0))
      fprintf(stderr, "  case %zu: child %s %d\n", i, WIFSIGNALED(status) ? "killed by signal" : "exited",
              WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
  }
}

/* A body above 16 MiB, so that every byte of the length prefix matters. */
static void test_huge(void) {
  const size_t image_len = 17u * MIB + 3;
  uint8_t *image = xmalloc(image_len);
  struct client_fix f;
  size_t len;

  for (size_t i = 0; i < image_len; i++)
    image[i] = (uint8_t)(i ^ (i >> 8) ^ (i >> 16));
  make_frame(&f, 0);
  f.frame.image.data = image;
  f.frame.image.len = image_len;
  uint8_t *buf = encode(&f.msg.base, &len); /* checks the prefix */
  CHECK(buf[0] == 0x01);

  struct gl_wire_decoder d;
  struct bodies b = {0};
  gl_wire_decoder_init(&d, 32 * MIB);
  /* In a few large pieces, as a socket would deliver them. */
  size_t off = 0;
  while (off < len) {
    size_t n = len - off < 65536 * 3 + 1 ? len - off : 65536 * 3 + 1;
    if (feed_all(&d, buf + off, n, &b) != 0) {
      CHECK(!"feed failed");
      break;
    }
    off += n;
  }
  if (CHECK_EQ_U64(b.n, 1) && CHECK_EQ_U64(b.len[0], len - GL_WIRE_HEADER_BYTES)) {
    gl_client_msg *out = NULL;
    if (CHECK_EQ_INT(gl_wire_unpack_client(b.data[0], b.len[0], &out), 0))
      check_client_eq(&f.msg, out);
    gl_wire_free(out);
  }
  bodies_free(&b);
  gl_wire_decoder_fini(&d);

  /* The same prefix is refused one byte under the limit. */
  gl_wire_decoder_init(&d, (uint32_t)(len - GL_WIRE_HEADER_BYTES - 1));
  CHECK_EQ_INT(feed_all(&d, buf, 4, &b), GL_ETOOBIG);
  gl_wire_decoder_fini(&d);
  free(buf);
  free(image);
}

int main(void) {
  fill_image();
  RUN(test_client_roundtrip);
  RUN(test_server_roundtrip);
  RUN(test_every_split);
  RUN(test_byte_by_byte);
  RUN(test_random_chunks);
  RUN(test_feed_stops_at_message_end);
  RUN(test_oversized);
  RUN(test_set_max);
  RUN(test_truncated);
  RUN(test_empty_body);
  RUN(test_garbage);
  RUN(test_encode_alloc_limit);
  RUN(test_huge);
  RUN(test_after_toobig);
  return TEST_END();
}
