/* Client tokens: the salted hashes geolocd keeps in its configuration
 * ([token NAME] hash) and the check of a Hello's token against them.
 *
 * A token is a random secret of high entropy (geoloc token hash --new makes
 * 32 bytes), not a password: one SHA-256 over salt and token is enough, and
 * a slow KDF would stall the event loop at every Hello. The text form is
 * "sha256:SALT:HASH", 16 bytes of salt and the 32-byte SHA-256(salt || token)
 * in lowercase or uppercase hex. */
#ifndef GL_CORE_AUTH_H
#define GL_CORE_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define GL_AUTH_SALT_BYTES 16
#define GL_AUTH_HASH_BYTES 32
/* "sha256:" + 32 + ":" + 64 hex digits, and the NUL. */
#define GL_AUTH_TEXT_LEN (7 + 2 * GL_AUTH_SALT_BYTES + 1 + 2 * GL_AUTH_HASH_BYTES + 1)
/* The longest token accepted, from a Hello or from geoloc token hash. */
#define GL_AUTH_MAX_TOKEN 1024

struct gl_auth_hash {
  uint8_t salt[GL_AUTH_SALT_BYTES];
  uint8_t hash[GL_AUTH_HASH_BYTES];
};

/* Parses the text form into *h. Returns GL_OK or GL_EINVAL. */
int gl_auth_parse(const char *text, struct gl_auth_hash *h);

/* Writes the text form of h into buf (GL_AUTH_TEXT_LEN bytes). */
void gl_auth_format(const struct gl_auth_hash *h, char *buf);

/* Hashes token (len bytes) with a fresh random salt into *h. Returns GL_OK,
 * GL_EIO (no randomness) or GL_ENOTSUP (built without OpenSSL). */
int gl_auth_make(const void *token, size_t len, struct gl_auth_hash *h);

/* Which of hashes[0..n) token matches: its index, or -1 (also for a NULL,
 * empty or over-long token, and without OpenSSL). Every entry is hashed and
 * compared in constant time, whatever matched, so the time taken says
 * nothing about how close a guess came or which entry it hit. */
int gl_auth_find(const struct gl_auth_hash *hashes, size_t stride, size_t n, const char *token);

/* Fills buf with len random bytes (getrandom). Returns GL_OK or GL_EIO. */
int gl_auth_random(void *buf, size_t len);

#endif
