/* File helpers of the map module: errors, checksums, durable writes and
 * recursive removal. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/err.h"
#include "map/map_internal.h"

int gl__map_sha256_fd(int fd, char out[65], uint64_t *bytes) {
  static const char hex[] = "0123456789abcdef";
  int rc = GL_EIO;
  uint64_t total = 0;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  enum { CHUNK = 1 << 16 };
  unsigned char *buf = malloc(CHUNK);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!buf || !ctx) {
    rc = GL_ENOMEM;
    goto cleanup;
  }
  if (!EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
    goto cleanup;
  for (;;) {
    ssize_t n = read(fd, buf, CHUNK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      goto cleanup;
    if (n == 0)
      break;
    if (!EVP_DigestUpdate(ctx, buf, (size_t)n))
      goto cleanup;
    total += (uint64_t)n;
  }
  if (!EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != 32)
    goto cleanup;
  for (unsigned i = 0; i < 32; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[64] = 0;
  if (bytes)
    *bytes = total;
  rc = 0;
cleanup:
  EVP_MD_CTX_free(ctx);
  free(buf);
  return rc;
}

int gl__map_sha256_file(const char *path, char out[65], uint64_t *bytes) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? GL_ENOENT : GL_EIO;
  int rc = gl__map_sha256_fd(fd, out, bytes);
  close(fd);
  return rc;
}

int gl__map_fsync_path(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return GL_EIO;
  int rc = fsync(fd) == 0 ? 0 : GL_EIO;
  close(fd);
  return rc;
}

static int gl__rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)ftw;
  int r = flag == FTW_DP ? rmdir(path) : unlink(path);
  return r == 0 || errno == ENOENT ? 0 : -1;
}

int gl__map_rmtree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0)
    return errno == ENOENT ? 0 : GL_EIO;
  /* FTW_PHYS: a symlink inside a pack is removed, never followed, so a
   * planted link can never make us delete files outside the pack. */
  return nftw(path, gl__rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : GL_EIO;
}

int gl__map_write_file(const char *path, const void *data, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return GL_EIO;
  const char *p = data;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : ENOSPC; /* a write of 0 bytes: no room */
      close(fd);
      errno = e;
      return GL_EIO;
    }
    p += n;
    len -= (size_t)n;
  }
  int rc = fsync(fd) == 0 ? 0 : GL_EIO, e = errno;
  if (close(fd) != 0)
    rc = GL_EIO;
  else if (rc)
    errno = e; /* fsync's reason, not close's */
  return rc;
}

int gl__map_read_file(const char *path, size_t max, char **out, size_t *len) {
  int rc = GL_EIO;
  char *buf = NULL;
  struct stat st;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? GL_ENOENT : GL_EIO;
  if (fstat(fd, &st) != 0)
    goto cleanup;
  if (!S_ISREG(st.st_mode))
    goto cleanup;
  if ((uint64_t)st.st_size > max) {
    rc = GL_ETOOBIG;
    goto cleanup;
  }
  size_t size = (size_t)st.st_size, got = 0;
  buf = malloc(size + 1);
  if (!buf) {
    rc = GL_ENOMEM;
    goto cleanup;
  }
  while (got < size) {
    ssize_t n = read(fd, buf + got, size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      goto cleanup;
    got += (size_t)n;
  }
  buf[size] = 0;
  *out = buf;
  *len = size;
  buf = NULL;
  rc = 0;
cleanup:
  free(buf);
  close(fd);
  return rc;
}
