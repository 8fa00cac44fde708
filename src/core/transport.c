/* The pass-through transport: plain TCP and unix sockets. It hands the bytes
 * on as they are, without copying them on the way in (read points into what
 * was fed) and with one copy on the way out (into the caller's send buffer,
 * which the TLS transport needs anyway). */
#include "core/transport.h"

#include <stdio.h>
#include <string.h>

#include "core/err.h"

static int gl__plain_feed(void *t, const uint8_t *data, size_t len) {
  struct gl_transport_plain *p = t;
  if (p->in_len) {
    /* Nothing is copied, so unread bytes would be lost: a caller's bug. */
    snprintf(p->err, sizeof p->err, "input fed before the last was read");
    return GL_EINVAL;
  }
  p->in = data;
  p->in_len = len;
  return GL_OK;
}

static void gl__plain_end_of_input(void *t) {
  struct gl_transport_plain *p = t;
  p->eof = true;
}

static bool gl__plain_ready(const void *t) {
  (void)t;
  return true;
}

static int gl__plain_handshake(void *t) {
  (void)t;
  return 1;
}

static int gl__plain_read(void *t, uint8_t *buf, size_t cap, const uint8_t **out) {
  struct gl_transport_plain *p = t;
  (void)buf;
  if (p->in_len == 0) {
    if (!p->eof)
      return 0;
    snprintf(p->err, sizeof p->err, "peer closed the connection");
    return GL_ECLOSED;
  }
  size_t n = p->in_len < cap ? p->in_len : cap;
  if (n > INT32_MAX)
    n = INT32_MAX;
  *out = p->in;
  p->in += n;
  p->in_len -= n;
  return (int)n;
}

static int gl__plain_write(void *t, const uint8_t *data, size_t len) {
  struct gl_transport_plain *p = t;
  if (p->out_len) {
    snprintf(p->err, sizeof p->err, "output written before the last was taken");
    return GL_EINVAL;
  }
  p->out = data;
  p->out_len = len;
  return GL_OK;
}

static size_t gl__plain_pending_output(void *t) {
  return ((struct gl_transport_plain *)t)->out_len;
}

static size_t gl__plain_take_output(void *t, uint8_t *buf, size_t cap) {
  struct gl_transport_plain *p = t;
  size_t n = p->out_len < cap ? p->out_len : cap;
  memcpy(buf, p->out, n);
  p->out += n;
  p->out_len -= n;
  return n;
}

static void gl__plain_shutdown(void *t) { (void)t; }

static const char *gl__plain_error(const void *t) {
  return ((const struct gl_transport_plain *)t)->err;
}

static void gl__plain_peer(const void *t, char *buf, size_t len) {
  (void)t;
  if (len)
    buf[0] = '\0';
}

static void gl__plain_destroy(void *t) { (void)t; /* the user owns the state */ }

static const struct gl_transport_i gl__plain_i = {
    .name = "plain",
    .feed = gl__plain_feed,
    .end_of_input = gl__plain_end_of_input,
    .ready = gl__plain_ready,
    .handshake = gl__plain_handshake,
    .read = gl__plain_read,
    .write = gl__plain_write,
    .pending_output = gl__plain_pending_output,
    .take_output = gl__plain_take_output,
    .shutdown = gl__plain_shutdown,
    .error = gl__plain_error,
    .peer = gl__plain_peer,
    .destroy = gl__plain_destroy,
};

void gl_transport_plain_init(struct gl_transport_plain *p, struct gl_transport *out) {
  memset(p, 0, sizeof *p);
  out->i = &gl__plain_i;
  out->ctx = p;
}
