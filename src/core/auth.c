#include "core/auth.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/random.h>

#include "core/err.h"
#include "gl_build_config.h"

#if GL_HAVE_TLS
#include <openssl/crypto.h>
#include <openssl/evp.h>
#endif

static int gl__hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Exactly 2*n hex digits from s into out; returns the end, or NULL. */
static const char *gl__unhex(const char *s, uint8_t *out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int hi = gl__hexval(s[2 * i]);
    int lo = hi < 0 ? -1 : gl__hexval(s[2 * i + 1]);
    if (lo < 0)
      return NULL;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return s + 2 * n;
}

int gl_auth_parse(const char *text, struct gl_auth_hash *h) {
  if (strncmp(text, "sha256:", 7) != 0)
    return GL_EINVAL;
  const char *p = gl__unhex(text + 7, h->salt, GL_AUTH_SALT_BYTES);
  if (!p || *p != ':')
    return GL_EINVAL;
  p = gl__unhex(p + 1, h->hash, GL_AUTH_HASH_BYTES);
  return p && *p == '\0' ? GL_OK : GL_EINVAL;
}

static char *gl__hex(char *out, const uint8_t *b, size_t n) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    *out++ = digits[b[i] >> 4];
    *out++ = digits[b[i] & 15];
  }
  return out;
}

void gl_auth_format(const struct gl_auth_hash *h, char *buf) {
  memcpy(buf, "sha256:", 7);
  char *p = gl__hex(buf + 7, h->salt, GL_AUTH_SALT_BYTES);
  *p++ = ':';
  p = gl__hex(p, h->hash, GL_AUTH_HASH_BYTES);
  *p = '\0';
}

int gl_auth_random(void *buf, size_t len) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return GL_EIO;
    p += n;
    len -= (size_t)n;
  }
  return GL_OK;
}

#if GL_HAVE_TLS
static int gl__sha256(const uint8_t *salt, const void *token, size_t len, uint8_t *out) {
  unsigned int n = 0;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
            EVP_DigestUpdate(md, salt, GL_AUTH_SALT_BYTES) == 1 &&
            EVP_DigestUpdate(md, token, len) == 1 && EVP_DigestFinal_ex(md, out, &n) == 1 &&
            n == GL_AUTH_HASH_BYTES;
  EVP_MD_CTX_free(md);
  return ok ? GL_OK : GL_EINTERNAL;
}

int gl_auth_make(const void *token, size_t len, struct gl_auth_hash *h) {
  int rc = gl_auth_random(h->salt, sizeof h->salt);
  return rc ? rc : gl__sha256(h->salt, token, len, h->hash);
}

int gl_auth_find(const struct gl_auth_hash *hashes, size_t stride, size_t n, const char *token) {
  size_t len = token ? strnlen(token, GL_AUTH_MAX_TOKEN + 1) : 0;
  if (len == 0 || len > GL_AUTH_MAX_TOKEN)
    return -1;
  int found = -1;
  for (size_t i = 0; i < n; i++) {
    const struct gl_auth_hash *h = (const void *)((const char *)hashes + i * stride);
    uint8_t got[GL_AUTH_HASH_BYTES];
    if (gl__sha256(h->salt, token, len, got) != GL_OK)
      continue;
    /* No early exit: every entry costs the same, match or not. */
    int eq = CRYPTO_memcmp(got, h->hash, sizeof got) == 0;
    if (eq && found < 0)
      found = (int)i;
  }
  return found;
}
#else
int gl_auth_make(const void *token, size_t len, struct gl_auth_hash *h) {
  (void)token;
  (void)len;
  (void)h;
  return GL_ENOTSUP;
}

int gl_auth_find(const struct gl_auth_hash *hashes, size_t stride, size_t n, const char *token) {
  (void)hashes;
  (void)stride;
  (void)n;
  (void)token;
  return -1;
}
#endif
