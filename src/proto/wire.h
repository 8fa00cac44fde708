/* Framing and codec of the geoloc wire protocol.
 *
 * A stream is a sequence of messages, each a 4-byte big-endian length then
 * that many bytes of protobuf (ClientMessage one way, ServerMessage the
 * other). The decoder is incremental: bytes may arrive split anywhere. It
 * checks the length prefix against its limit before allocating anything. */
#ifndef GL_PROTO_WIRE_H
#define GL_PROTO_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "geoloc.pb-c.h"

#define GL_WIRE_HEADER_BYTES 4u

typedef Geoloc__V1__ClientMessage gl_client_msg;
typedef Geoloc__V1__ServerMessage gl_server_msg;

struct gl_wire_decoder {
  uint32_t max_bytes; /* largest message body accepted */
  uint8_t header[GL_WIRE_HEADER_BYTES];
  uint32_t header_len; /* header bytes seen so far */
  uint32_t body_len;   /* length from the header, once complete */
  uint32_t body_have;  /* body bytes seen so far */
  uint8_t *body;       /* grows to the largest message seen, reused */
  size_t body_cap;
  int error;           /* sticky: once set, every feed returns it */
};

void gl_wire_decoder_init(struct gl_wire_decoder *d, uint32_t max_bytes);
void gl_wire_decoder_fini(struct gl_wire_decoder *d);

/* Changes the limit for messages whose header has not been read yet. */
void gl_wire_decoder_set_max(struct gl_wire_decoder *d, uint32_t max_bytes);

/* Consumes bytes from data[0..len) up to the end of the first complete
 * message. *consumed is set to the bytes taken. Returns 1 when a message is
 * complete: *msg and *msg_len then point at its body, valid until the next
 * call. Returns 0 when all bytes were taken and more are needed; GL_ETOOBIG
 * when a length prefix exceeds the limit; GL_ENOMEM. After an error the
 * stream cannot be resynchronised: every later call returns the same error. */
int gl_wire_decoder_feed(struct gl_wire_decoder *d, const uint8_t *data, size_t len,
                         size_t *consumed, const uint8_t **msg, size_t *msg_len);

/* True when the decoder holds part of a message. */
int gl_wire_decoder_partial(const struct gl_wire_decoder *d);

/* Unpacks a message body. A body that is not valid protobuf, or whose oneof
 * is not set, is GL_EMALFORMED (and *out is NULL). Free the result with
 * gl_wire_free(). */
int gl_wire_unpack_client(const uint8_t *body, size_t len, gl_client_msg **out);
int gl_wire_unpack_server(const uint8_t *body, size_t len, gl_server_msg **out);
void gl_wire_free(void *msg); /* any unpacked message; NULL is fine */

/* Packs msg with its length prefix into buf, which must hold
 * gl_wire_encoded_size(msg) bytes. Returns the bytes written. */
size_t gl_wire_encoded_size(const ProtobufCMessage *msg);
size_t gl_wire_encode(const ProtobufCMessage *msg, uint8_t *buf);

/* Packs msg with its length prefix into a new malloc'ed buffer. Returns 0,
 * GL_ETOOBIG when the body exceeds max_bytes, or GL_ENOMEM. */
int gl_wire_encode_alloc(const ProtobufCMessage *msg, uint32_t max_bytes, uint8_t **out,
                         size_t *out_len);

#endif
