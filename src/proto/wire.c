#include "proto/wire.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"

void gl_wire_decoder_init(struct gl_wire_decoder *d, uint32_t max_bytes) {
  memset(d, 0, sizeof *d);
  d->max_bytes = max_bytes;
}

void gl_wire_decoder_fini(struct gl_wire_decoder *d) {
  free(d->body);
  memset(d, 0, sizeof *d);
}

void gl_wire_decoder_set_max(struct gl_wire_decoder *d, uint32_t max_bytes) {
  d->max_bytes = max_bytes;
}

int gl_wire_decoder_partial(const struct gl_wire_decoder *d) { return d->header_len > 0; }

int gl_wire_decoder_feed(struct gl_wire_decoder *d, const uint8_t *data, size_t len,
                         size_t *consumed, const uint8_t **msg, size_t *msg_len) {
  size_t used = 0;
  *consumed = 0;
  if (d->error)
    return d->error;
  while (d->header_len < GL_WIRE_HEADER_BYTES) {
    if (used == len)
      goto more;
    d->header[d->header_len++] = data[used++];
    if (d->header_len < GL_WIRE_HEADER_BYTES)
      continue;
    d->body_len = (uint32_t)d->header[0] << 24 | (uint32_t)d->header[1] << 16 |
                  (uint32_t)d->header[2] << 8 | d->header[3];
    d->body_have = 0;
    /* The limit is checked before anything is allocated for the body. */
    if (d->body_len > d->max_bytes) {
      *consumed = used;
      return d->error = GL_ETOOBIG;
    }
    if (d->body_len > d->body_cap) {
      uint8_t *b = realloc(d->body, d->body_len);
      if (!b) {
        *consumed = used;
        return d->error = GL_ENOMEM;
      }
      d->body = b;
      d->body_cap = d->body_len;
    }
  }
  size_t take = d->body_len - d->body_have;
  if (take > len - used)
    take = len - used;
  if (take) /* d->body may be NULL for a zero-length message */
    memcpy(d->body + d->body_have, data + used, take);
  d->body_have += (uint32_t)take;
  used += take;
  if (d->body_have < d->body_len)
    goto more;
  /* The body stays in d->body, untouched until the next call. */
  d->header_len = 0;
  *consumed = used;
  *msg = d->body;
  *msg_len = d->body_len;
  return 1;
more:
  *consumed = used;
  return 0;
}

int gl_wire_unpack_client(const uint8_t *body, size_t len, gl_client_msg **out) {
  *out = geoloc__v1__client_message__unpack(NULL, len, body);
  if (!*out)
    return GL_EMALFORMED;
  if ((*out)->msg_case == GEOLOC__V1__CLIENT_MESSAGE__MSG__NOT_SET) {
    gl_wire_free(*out);
    *out = NULL;
    return GL_EMALFORMED;
  }
  return GL_OK;
}

int gl_wire_unpack_server(const uint8_t *body, size_t len, gl_server_msg **out) {
  *out = geoloc__v1__server_message__unpack(NULL, len, body);
  if (!*out)
    return GL_EMALFORMED;
  if ((*out)->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG__NOT_SET) {
    gl_wire_free(*out);
    *out = NULL;
    return GL_EMALFORMED;
  }
  return GL_OK;
}

void gl_wire_free(void *msg) {
  if (msg)
    protobuf_c_message_free_unpacked(msg, NULL);
}

size_t gl_wire_encoded_size(const ProtobufCMessage *msg) {
  return GL_WIRE_HEADER_BYTES + protobuf_c_message_get_packed_size(msg);
}

size_t gl_wire_encode(const ProtobufCMessage *msg, uint8_t *buf) {
  size_t n = protobuf_c_message_pack(msg, buf + GL_WIRE_HEADER_BYTES);
  buf[0] = (uint8_t)(n >> 24);
  buf[1] = (uint8_t)(n >> 16);
  buf[2] = (uint8_t)(n >> 8);
  buf[3] = (uint8_t)n;
  return GL_WIRE_HEADER_BYTES + n;
}

int gl_wire_encode_alloc(const ProtobufCMessage *msg, uint32_t max_bytes, uint8_t **out,
                         size_t *out_len) {
  size_t body = protobuf_c_message_get_packed_size(msg);
  *out = NULL;
  *out_len = 0;
  if (body > max_bytes)
    return GL_ETOOBIG;
  uint8_t *buf = malloc(GL_WIRE_HEADER_BYTES + body);
  if (!buf)
    return GL_ENOMEM;
  *out_len = gl_wire_encode(msg, buf);
  *out = buf;
  return GL_OK;
}
