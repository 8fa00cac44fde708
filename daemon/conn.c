/* One connection's life on the loop: bytes from the socket through its
 * transport (plaintext or TLS, core/transport.h) to the protocol (proto.c),
 * answers back the same way, output limits and backpressure, the
 * handshake/idle/linger timer, and closing. Connections are made by
 * listen.c. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "core/err.h"
#include "core/log.h"
#include "server_internal.h"

/* After a fatal error the server keeps reading (and discarding) for this
 * long, so that the peer sees the Error rather than a reset. */
#define GL_LINGER_MS 2000
/* A client that does not read its answers stops being read from once its
 * output buffers hold this much memory, and is resumed below the low mark;
 * one whose output still grows past GL_WRITE_MAX (the answers to the frames
 * it had in flight) is closed. Output is two growable buffers per
 * connection, not a write request per message, so what is counted is the
 * memory itself: 256 clients that never read hold ~256 MiB at most. */
#define GL_WRITE_HIGH (1u << 20)
#define GL_WRITE_LOW (256u << 10)
#define GL_WRITE_MAX (8u << 20)
/* An emptied output buffer larger than this is freed: idle connections
 * keep little. */
#define GL_OUT_KEEP (16u << 10)

static void gl__on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void gl__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void gl__on_shutdown(uv_shutdown_t *req, int status);

void gl__conn_read_start(struct gl_conn *c) {
  uv_read_start(&c->io.stream, gl__on_alloc, gl__on_read);
}

/* ---- output ------------------------------------------------------------ */

/* Memory held for the connection's output. */
static size_t gl__out_held(const struct gl_conn *c) {
  return c->wr.cap + c->out.cap;
}

static void gl__outbuf_empty(struct gl_outbuf *b) {
  b->len = 0;
  if (b->cap > GL_OUT_KEEP) {
    free(b->data);
    *b = (struct gl_outbuf){0};
  }
}

static void gl__on_write(uv_write_t *req, int status);

/* One write in flight at a time: when none is, what waits in out becomes
 * the write (libuv tries it at once), and answers made until it completes
 * gather in out and leave in one write, so a busy or slow client costs one
 * syscall and no allocation per batch instead of one per message. Once
 * everything is written, the shutdown that gl__conn_finish asked for. */
static void gl__conn_pump(struct gl_conn *c) {
  if (c->writing || c->closing)
    return;
  if (c->out.len > 0) {
    struct gl_outbuf t = c->wr;
    c->wr = c->out;
    c->out = t;
    uv_buf_t b = uv_buf_init((char *)c->wr.data, (unsigned)c->wr.len);
    c->write_req.data = c;
    int r = uv_write(&c->write_req, &c->io.stream, &b, 1, gl__on_write);
    if (r < 0) {
      GL_LOG_D("session %llu: write: %s", (unsigned long long)c->session_id, uv_strerror(r));
      gl__conn_close(c);
      return;
    }
    c->writing = true;
    return;
  }
  if (c->shutdown_due) {
    c->shutdown_due = false;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, &c->io.stream, gl__on_shutdown) < 0)
      gl__conn_close(c);
  }
}

static void gl__on_write(uv_write_t *req, int status) {
  struct gl_conn *c = req->data;
  c->writing = false;
  gl__outbuf_empty(&c->wr);
  if (status < 0) {
    if (status != UV_ECANCELED)
      GL_LOG_D("session %llu: write failed: %s", (unsigned long long)c->session_id,
               uv_strerror(status));
    gl__conn_close(c);
    return;
  }
  if (c->read_paused && !c->closing && !c->draining && gl__out_held(c) < GL_WRITE_LOW) {
    c->read_paused = false;
    if (!c->peer_eof) /* after EOF there is nothing more to read */
      gl__conn_read_start(c);
  }
  gl__conn_pump(c);
}

/* Appends what the transport has to send (an answer, TLS handshake
 * messages and alerts) to the output; nothing when it has nothing. */
static int gl__conn_flush(struct gl_conn *c) {
  size_t n = gl_transport_pending_output(&c->tp);
  if (n == 0)
    return GL_OK;
  if (c->wr.len + c->out.len + n > GL_WRITE_MAX) {
    GL_LOG_N("session %llu (%s): closed: it does not read its answers (%zu bytes of output "
             "queued)",
             (unsigned long long)c->session_id, c->peer, c->wr.len + c->out.len);
    return GL_EBUSY;
  }
  if (c->out.len + n > c->out.cap) {
    size_t cap = c->out.cap ? c->out.cap : 4096;
    while (cap < c->out.len + n)
      cap *= 2;
    uint8_t *p = realloc(c->out.data, cap);
    if (!p)
      return GL_ENOMEM;
    c->out.data = p;
    c->out.cap = cap;
  }
  c->out.len += gl_transport_take_output(&c->tp, c->out.data + c->out.len, n);
  gl__conn_pump(c);
  return GL_OK;
}

void gl__conn_send(struct gl_conn *c, const gl_server_msg *m) {
  if (c->closing)
    return;
  size_t n = gl_wire_encoded_size(&m->base);
  /* Encoded into the server's buffer (answers are a few KiB), from which
   * the transport makes the bytes that are queued; a larger message gets
   * a buffer of its own. */
  uint8_t *buf = n <= sizeof c->srv->send_buf ? c->srv->send_buf : malloc(n);
  int rc = GL_ENOMEM;
  if (!buf)
    goto fail;
  gl_wire_encode(&m->base, buf);
  rc = gl_transport_write(&c->tp, buf, n);
  if (rc == GL_OK)
    rc = gl__conn_flush(c); /* before buf is reused: the pass-through refers to it */
  if (buf != c->srv->send_buf)
    free(buf);
  if (rc == GL_OK)
    return;
fail:
  GL_LOG_W("session %llu: cannot send: %s", (unsigned long long)c->session_id, gl_strerror(rc));
  gl__conn_close(c);
}

/* ---- lifecycle --------------------------------------------------------- */

/* A connection is freed once its handles are closed and none of its frames
 * is still in the pipeline (a job points at it until it is answered). */
void gl__conn_release(struct gl_conn *c) {
  if (c->open_handles > 0 || c->inflight > 0)
    return;
  struct gl_server *srv = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  gl__conn_unadmit(c);
  srv->n_conns--;
  GL_LOG_D("session %llu (%s): closed", (unsigned long long)c->session_id, c->peer);
  if (c->dropped)
    GL_LOG_N("session %llu (%s): %u frame(s) not answered: the connection closed first",
             (unsigned long long)c->session_id, c->peer, c->dropped);
  gl_transport_destroy(&c->tp);
  free(c->wr.data);
  free(c->out.data);
  gl_wire_decoder_fini(&c->dec);
  if (c->trk)
    gl_track_destroy(c->trk->filter);
  free(c->trk);
  free(c);
  gl__srv_maybe_done(srv);
}

static void gl__on_conn_closed(uv_handle_t *h) {
  struct gl_conn *c = h->data;
  c->open_handles--;
  gl__conn_release(c);
}

void gl__conn_close(struct gl_conn *c) {
  if (c->closing)
    return;
  c->closing = true;
  c->state = GL_CONN_CLOSING;
  if (c->srv->pipe)
    gl_pipeline_abandon(c->srv->pipe, &c->dq); /* nobody to answer: not decoded */
  uv_close(&c->io.handle, gl__on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, gl__on_conn_closed);
}

static void gl__on_shutdown(uv_shutdown_t *req, int status) {
  struct gl_conn *c = req->data;
  c->shutdown_done = true;
  if (c->refused && status == 0 && !c->peer_eof) {
    /* A refused connection is not lingered on: its Error is out. What the
     * peer sent is read first (a close with unread bytes would reset the
     * connection, and the reset could overtake the Error). */
    uv_os_fd_t fd;
    int reads = 0;
    if (uv_fileno(&c->io.handle, &fd) == 0)
      while (reads++ < 16 &&
             recv(fd, c->srv->read_buf, sizeof c->srv->read_buf, MSG_DONTWAIT) > 0) {
      }
    gl__conn_close(c);
    return;
  }
  if (status < 0 || c->peer_eof)
    gl__conn_close(c);
  /* Otherwise the linger timer or the peer's EOF closes it. */
}

static void gl__on_timer(uv_timer_t *t);

/* Ends the conversation: flushes what is queued, tells TLS and TCP we are
 * done, and closes once the peer has closed too (or the linger expires). */
void gl__conn_finish(struct gl_conn *c) {
  if (c->state == GL_CONN_CLOSING)
    return;
  c->state = GL_CONN_CLOSING;
  gl__conn_unadmit(c);
  gl_transport_shutdown(&c->tp); /* TLS: close_notify; plaintext: nothing to say */
  if (gl__conn_flush(c) != GL_OK) {
    gl__conn_close(c);
    return;
  }
  uv_timer_start(&c->timer, gl__on_timer, GL_LINGER_MS, 0);
  c->shutdown_due = true; /* after the output queued so far */
  gl__conn_pump(c);
}

void gl__conn_arm_timer(struct gl_conn *c) {
  const struct gl_config *cfg = &c->srv->cfg;
  if (c->state == GL_CONN_HANDSHAKE)
    uv_timer_start(&c->timer, gl__on_timer, cfg->handshake_timeout_ms, 0);
  else if (c->state == GL_CONN_READY && cfg->idle_timeout_ms)
    uv_timer_start(&c->timer, gl__on_timer, cfg->idle_timeout_ms, 0);
  else if (c->state == GL_CONN_READY)
    uv_timer_stop(&c->timer);
}

static void gl__on_timer(uv_timer_t *t) {
  struct gl_conn *c = t->data;
  switch (c->state) {
  case GL_CONN_HANDSHAKE:
    if (!gl_transport_ready(&c->tp)) {
      GL_LOG_N("session %llu (%s): %s handshake not done within %u ms",
               (unsigned long long)c->session_id, c->peer, c->tp.i->name,
               c->srv->cfg.handshake_timeout_ms);
      gl__conn_close(c);
      return;
    }
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__TIMEOUT, NULL, true, "no Hello within %u ms",
                   c->srv->cfg.handshake_timeout_ms);
    return;
  case GL_CONN_READY:
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__TIMEOUT, NULL, true, "no message for %u ms",
                   c->srv->cfg.idle_timeout_ms);
    return;
  case GL_CONN_CLOSING:
    gl__conn_close(c); /* the peer never closed its side */
    return;
  }
}

/* The client will send nothing more: EOF, or TLS close_notify. What it sent
 * is still answered, every accepted frame exactly once: the stream ends when
 * the last answer is out (gl__on_job_done), at once when none is due. */
static void gl__conn_peer_done(struct gl_conn *c) {
  if (c->state == GL_CONN_CLOSING || c->peer_done)
    return;
  if (gl_wire_decoder_partial(&c->dec))
    GL_LOG_D("session %llu (%s): the stream ended inside a message, which is dropped",
             (unsigned long long)c->session_id, c->peer);
  if (c->inflight == 0) {
    gl__conn_finish(c);
    return;
  }
  c->peer_done = true;
  uv_timer_stop(&c->timer); /* nothing more can come: no idle timeout */
  GL_LOG_D("session %llu (%s): the client closed its side; answering %u frame(s) first",
           (unsigned long long)c->session_id, c->peer, c->inflight);
}

/* ---- input ------------------------------------------------------------- */

/* Bytes from the socket: through the transport (TLS decrypts them and
 * answers its handshake; plaintext passes them on as they are) to the
 * protocol. */
static void gl__conn_recv(struct gl_conn *c, const uint8_t *data, size_t len) {
  if (gl_transport_feed(&c->tp, data, len) != GL_OK)
    goto failed;
  if (!gl_transport_ready(&c->tp)) {
    int r = gl_transport_handshake(&c->tp);
    if (gl__conn_flush(c) != GL_OK) {
      gl__conn_close(c);
      return;
    }
    if (r < 0)
      goto failed;
    if (r == 0)
      return;
    char subject[256], safe[256];
    gl_transport_peer(&c->tp, subject, sizeof subject);
    gl_log_escape(safe, sizeof safe, subject); /* the client's certificate says it */
    GL_LOG_D("session %llu (%s): %s up, client '%s'", (unsigned long long)c->session_id, c->peer,
             c->tp.i->name, safe);
    if (c->reject) {
      gl__conn_refuse_new(c);
      return;
    }
  }
  while (c->state != GL_CONN_CLOSING) {
    const uint8_t *plain;
    int n = gl_transport_read(&c->tp, c->srv->plain_buf, sizeof c->srv->plain_buf, &plain);
    if (n > 0) {
      gl__proto_input(c, plain, (size_t)n);
      continue;
    }
    if (n == GL_ECLOSED) { /* close_notify: the client is done */
      gl__conn_peer_done(c);
      return;
    }
    if (n < 0)
      goto failed;
    break;
  }
  if (gl__conn_flush(c) != GL_OK)
    gl__conn_close(c);
  return;
failed:
  GL_LOG_N("session %llu (%s): %s", (unsigned long long)c->session_id, c->peer,
           gl_transport_error(&c->tp));
  /* No answer can reach the client through a failed session: its frames
   * still waiting for a decoder are not decoded for nobody. */
  if (c->srv->pipe)
    gl_pipeline_abandon(c->srv->pipe, &c->dq);
  /* The alert is queued; send it, then close. */
  gl__conn_flush(c);
  gl__conn_finish(c);
}

static void gl__on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  struct gl_conn *c = h->data;
  (void)suggested;
  *buf = uv_buf_init((char *)c->srv->read_buf, sizeof c->srv->read_buf);
}

static void gl__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct gl_conn *c = s->data;
  if (nread == 0 || c->closing)
    return;
  if (nread < 0) {
    c->peer_eof = true;
    if (nread != UV_EOF)
      GL_LOG_D("session %llu (%s): read: %s", (unsigned long long)c->session_id, c->peer,
               uv_strerror((int)nread));
    if (nread != UV_EOF || c->shutdown_done)
      gl__conn_close(c);
    else
      gl__conn_peer_done(c); /* answer what it sent, then close */
    return;
  }
  if (c->state == GL_CONN_CLOSING || c->draining || c->peer_done)
    return; /* lingering, draining or half-closed: what the peer still sends is discarded */
  gl__conn_recv(c, (const uint8_t *)buf->base, (size_t)nread);
  if (!c->closing && c->state != GL_CONN_CLOSING && gl__out_held(c) > GL_WRITE_HIGH) {
    c->read_paused = true;
    uv_read_stop(&c->io.stream);
  }
}
