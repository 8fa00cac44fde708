/* Image decoding: format dispatch, raw RGB8 and file loading.
 *
 * Everything here is reentrant (no global state, no static buffers), since
 * the daemon decodes frames on several worker threads at once. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "img/img.h"
#include "img/img_internal.h"

int gl__img_err(int code, char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static int decode_rgb8(const uint8_t *data, size_t len, uint32_t width, uint32_t height,
                       uint64_t max_pixels, struct gl_image *out, char *err, size_t errlen) {
  if (width == 0 || height == 0)
    return gl__img_err(GL_EFORMAT, err, errlen, "RGB8: empty image (%ux%u)", (unsigned)width,
                       (unsigned)height);
  /* Two 32-bit factors cannot overflow 64 bits; times 3 they can, hence the
   * SIZE_MAX / 3 test before the byte count is formed. */
  uint64_t pixels = (uint64_t)width * height;
  if (pixels > max_pixels || pixels > SIZE_MAX / 3)
    return gl__img_err(GL_ETOOBIG, err, errlen,
                       "RGB8: %ux%u is %llu pixels, more than the limit of %llu", (unsigned)width,
                       (unsigned)height, (unsigned long long)pixels,
                       (unsigned long long)max_pixels);
  size_t need = (size_t)pixels * 3;
  if (len != need)
    return gl__img_err(GL_EFORMAT, err, errlen, "RGB8: %zu bytes for a %ux%u image, expected %zu",
                       len, (unsigned)width, (unsigned)height, need);
  uint8_t *rgb = malloc(need);
  if (!rgb)
    return gl__img_err(GL_ENOMEM, err, errlen, "RGB8: out of memory for %zu bytes", need);
  memcpy(rgb, data, need);
  out->rgb = rgb;
  out->width = width;
  out->height = height;
  return GL_OK;
}

int gl_img_decode(const uint8_t *data, size_t len, enum gl_img_format fmt, uint32_t width,
                  uint32_t height, uint64_t max_pixels, struct gl_image *out, char *err,
                  size_t errlen) {
  if (err && errlen > 0)
    err[0] = '\0';
  if (!out)
    return gl__img_err(GL_EINVAL, err, errlen, "no output image");
  *out = (struct gl_image){0};
  if (!data && len > 0)
    return gl__img_err(GL_EINVAL, err, errlen, "no input bytes");
  if (fmt == GL_IMG_AUTO) {
    if (len >= sizeof png_magic && memcmp(data, png_magic, sizeof png_magic) == 0)
      fmt = GL_IMG_PNG;
    else if (len >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff)
      fmt = GL_IMG_JPEG;
    else if (len == 0)
      return gl__img_err(GL_EFORMAT, err, errlen, "empty input: not a JPEG or PNG image");
    else
      return gl__img_err(GL_EFORMAT, err, errlen,
                         "not a JPEG or PNG image (unknown leading bytes)");
  }
  switch (fmt) {
  case GL_IMG_PNG:
    return gl__img_decode_png(data, len, max_pixels, out, err, errlen);
  case GL_IMG_JPEG:
    return gl__img_decode_jpeg(data, len, max_pixels, out, err, errlen);
  case GL_IMG_RGB8:
    return decode_rgb8(data, len, width, height, max_pixels, out, err, errlen);
  case GL_IMG_AUTO:
  default:
    return gl__img_err(GL_EINVAL, err, errlen, "unknown image format %d", (int)fmt);
  }
}

/* The largest file accepted for an image of at most max_pixels pixels: a
 * PNG needs at most 8 bytes a pixel (16-bit RGBA) plus deflate's overhead,
 * a JPEG far less; the constant leaves room for metadata. Saturates. */
static uint64_t file_limit(uint64_t max_pixels) {
  const uint64_t slack = 64u << 20;
  if (max_pixels > (UINT64_MAX - slack) / 16)
    return UINT64_MAX;
  return max_pixels * 16 + slack;
}

int gl_img_load(const char *path, uint64_t max_pixels, struct gl_image *out, char *err,
                size_t errlen) {
  if (err && errlen > 0)
    err[0] = '\0';
  if (!out)
    return gl__img_err(GL_EINVAL, err, errlen, "no output image");
  *out = (struct gl_image){0};
  if (!path)
    return gl__img_err(GL_EINVAL, err, errlen, "no path");
  char ebuf[128];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return gl__img_err(e == ENOENT ? GL_ENOENT : GL_EIO, err, errlen, "cannot open: %s",
                       strerror_r(e, ebuf, sizeof ebuf));
  }
  int rc;
  uint8_t *buf = NULL;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = gl__img_err(GL_EIO, err, errlen, "cannot stat: %s", strerror_r(errno, ebuf, sizeof ebuf));
    goto close_fd;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = gl__img_err(GL_EIO, err, errlen, "not a regular file");
    goto close_fd;
  }
  uint64_t limit = file_limit(max_pixels);
  if ((uint64_t)st.st_size > limit || (uint64_t)st.st_size > SIZE_MAX - 1) {
    rc = gl__img_err(GL_ETOOBIG, err, errlen,
                     "file is %lld bytes, too large for an image of at most %llu pixels",
                     (long long)st.st_size, (unsigned long long)max_pixels);
    goto close_fd;
  }
  size_t size = (size_t)st.st_size;
  buf = malloc(size ? size : 1);
  if (!buf) {
    rc = gl__img_err(GL_ENOMEM, err, errlen, "out of memory for %zu bytes", size);
    goto close_fd;
  }
  /* A file that shrinks while it is read is decoded as far as it got (and
   * then is most likely refused as truncated); one that grows is cut at
   * the size it had. */
  size_t got = 0;
  while (got < size) {
    ssize_t n = read(fd, buf + got, size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = gl__img_err(GL_EIO, err, errlen, "read error: %s", strerror_r(errno, ebuf, sizeof ebuf));
      goto free_buf;
    }
    if (n == 0)
      break;
    got += (size_t)n;
  }
  rc = gl_img_decode(buf, got, GL_IMG_AUTO, 0, 0, max_pixels, out, err, errlen);
free_buf:
  free(buf);
close_fd:
  close(fd);
  return rc;
}

void gl_img_free(struct gl_image *img) {
  if (!img)
    return;
  free(img->rgb);
  *img = (struct gl_image){0};
}
