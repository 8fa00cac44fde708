/* libFuzzer target for the wire decoder and codec.
 *
 * The input is treated as a byte stream from a peer. It is decoded twice:
 * once handed over whole, once in chunks whose sizes come from the input
 * bytes themselves. Framing must not depend on how bytes arrive, so both
 * passes must yield the same bodies and end the same way. Every body is
 * unpacked as a ClientMessage and as a ServerMessage; what unpacks is
 * re-encoded, framed, decoded and unpacked again, and must re-encode to the
 * same bytes. Any mismatch aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "proto/wire.h"

#define MAX_BODY (1024u * 1024u)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                          \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                               \
      abort();                                                                                 \
    }                                                                                          \
  } while (0)

/* What one decoding pass saw: a running hash of every body plus the count,
 * and how the stream ended. Hashing keeps memory flat for large inputs. */
struct trace {
  uint64_t hash;
  size_t bodies;
  int end_rc;
  int partial;
};

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/* True when msg or a message inside it kept an unknown field numbered 0.
 * protobuf-c accepts field number 0 when its tag is written in more than one
 * byte (80 00), keeps it as an unknown field, packs it back as the single
 * byte 00, and then refuses that on unpack. That is the library's quirk, not
 * ours, so such messages are exempt from the "unpacks again" check. */
static int has_field0(const ProtobufCMessage *m) {
  if (!m)
    return 0;
  for (unsigned i = 0; i < m->n_unknown_fields; i++)
    if (m->unknown_fields[i].tag == 0)
      return 1;
  const ProtobufCMessageDescriptor *desc = m->descriptor;
  for (unsigned i = 0; i < desc->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &desc->fields[i];
    const char *base = (const char *)m;
    if (f->type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + f->quantifier_offset);
      ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)(base + f->offset);
      for (size_t j = 0; j < n; j++)
        if (has_field0(arr[j]))
          return 1;
      continue;
    }
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)(base + f->quantifier_offset) != f->id)
      continue; /* another member of the oneof shares this storage */
    if (has_field0(*(ProtobufCMessage *const *)(base + f->offset)))
      return 1;
  }
  return 0;
}

/* Re-encodes msg, decodes the framed bytes and unpacks them again; the second
 * encoding must equal the first. */
static void recheck(const ProtobufCMessage *msg, int client) {
  uint8_t *enc = NULL;
  size_t enc_len = 0;
  int rc = gl_wire_encode_alloc(msg, UINT32_MAX, &enc, &enc_len);
  REQUIRE(rc == 0);
  REQUIRE(enc_len == gl_wire_encoded_size(msg));
  REQUIRE(enc_len >= GL_WIRE_HEADER_BYTES);

  struct gl_wire_decoder d;
  size_t consumed = 0;
  const uint8_t *body = NULL;
  size_t body_len = 0;
  gl_wire_decoder_init(&d, UINT32_MAX);
  rc = gl_wire_decoder_feed(&d, enc, enc_len, &consumed, &body, &body_len);
  REQUIRE(rc == 1);
  REQUIRE(consumed == enc_len);
  REQUIRE(body_len == enc_len - GL_WIRE_HEADER_BYTES);
  REQUIRE(body_len == 0 || memcmp(body, enc + GL_WIRE_HEADER_BYTES, body_len) == 0);
  REQUIRE(!gl_wire_decoder_partial(&d));

  void *again = NULL;
  if (client)
    rc = gl_wire_unpack_client(body, body_len, (gl_client_msg **)&again);
  else
    rc = gl_wire_unpack_server(body, body_len, (gl_server_msg **)&again);
  if (rc != 0 && has_field0(msg)) {
    gl_wire_decoder_fini(&d);
    free(enc);
    return;
  }
  REQUIRE(rc == 0);
  REQUIRE(again != NULL);
  if (client)
    REQUIRE(((gl_client_msg *)again)->msg_case == ((const gl_client_msg *)msg)->msg_case);
  else
    REQUIRE(((gl_server_msg *)again)->msg_case == ((const gl_server_msg *)msg)->msg_case);

  uint8_t *enc2 = NULL;
  size_t enc2_len = 0;
  REQUIRE(gl_wire_encode_alloc(again, UINT32_MAX, &enc2, &enc2_len) == 0);
  REQUIRE(enc2_len == enc_len);
  REQUIRE(memcmp(enc2, enc, enc_len) == 0);

  free(enc2);
  gl_wire_free(again);
  gl_wire_decoder_fini(&d);
  free(enc);
}

static void check_body(const uint8_t *body, size_t len) {
  gl_client_msg *c = NULL;
  int rc = gl_wire_unpack_client(body, len, &c);
  if (rc == 0) {
    REQUIRE(c != NULL);
    REQUIRE(c->msg_case != GEOLOC__V1__CLIENT_MESSAGE__MSG__NOT_SET);
    recheck(&c->base, 1);
    gl_wire_free(c);
  } else {
    REQUIRE(rc == GL_EMALFORMED || rc == GL_ENOMEM);
  }

  gl_server_msg *s = NULL;
  rc = gl_wire_unpack_server(body, len, &s);
  if (rc == 0) {
    REQUIRE(s != NULL);
    REQUIRE(s->msg_case != GEOLOC__V1__SERVER_MESSAGE__MSG__NOT_SET);
    recheck(&s->base, 0);
    gl_wire_free(s);
  } else {
    REQUIRE(rc == GL_EMALFORMED || rc == GL_ENOMEM);
  }
}

/* Decodes data; chunked != 0 feeds it in input-derived chunk sizes. Bodies
 * are unpacked only when unpack != 0 (the first pass), since the second
 * must see the same bodies anyway. */
static void decode(const uint8_t *data, size_t size, int chunked, int unpack, struct trace *t) {
  struct gl_wire_decoder d;
  size_t off = 0;

  memset(t, 0, sizeof *t);
  t->hash = 0xcbf29ce484222325ull;
  gl_wire_decoder_init(&d, MAX_BODY);

  while (off < size) {
    size_t chunk = size - off;
    if (chunked) {
      /* The byte at the current offset picks the chunk size, 1..64. */
      chunk = 1 + (data[off] & 63u);
      if (chunk > size - off)
        chunk = size - off;
    }
    const uint8_t *p = data + off;
    size_t left = chunk;
    while (left > 0) {
      size_t consumed = 0;
      const uint8_t *body = NULL;
      size_t body_len = 0;
      int rc = gl_wire_decoder_feed(&d, p, left, &consumed, &body, &body_len);
      if (rc < 0) {
        REQUIRE(rc == GL_ETOOBIG || rc == GL_ENOMEM);
        t->end_rc = rc;
        goto done;
      }
      REQUIRE(rc == 0 || rc == 1);
      REQUIRE(consumed <= left);
      if (rc == 0) {
        REQUIRE(consumed == left);
      } else {
        REQUIRE(consumed > 0);
        REQUIRE(body_len <= MAX_BODY);
        REQUIRE(body != NULL || body_len == 0);
        uint8_t n[4] = {(uint8_t)(body_len >> 24), (uint8_t)(body_len >> 16),
                        (uint8_t)(body_len >> 8), (uint8_t)body_len};
        t->hash = fnv(t->hash, n, sizeof n);
        t->hash = fnv(t->hash, body, body_len);
        t->bodies++;
        if (unpack)
          check_body(body, body_len);
      }
      p += consumed;
      left -= consumed;
    }
    off += chunk;
  }
done:
  t->partial = gl_wire_decoder_partial(&d) != 0;
  gl_wire_decoder_fini(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct trace whole, chunked;

  decode(data, size, 0, 1, &whole);
  decode(data, size, 1, 0, &chunked);
  REQUIRE(whole.bodies == chunked.bodies);
  REQUIRE(whole.hash == chunked.hash);
  REQUIRE(whole.end_rc == chunked.end_rc);
  if (whole.end_rc == 0)
    REQUIRE(whole.partial == chunked.partial);
  return 0;
}
