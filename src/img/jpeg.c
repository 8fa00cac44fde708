/* JPEG through the TurboJPEG API of libjpeg-turbo.
 *
 * The IDCT is the accurate integer one (TJFLAG_ACCURATEDCT), chroma is
 * upsampled with libjpeg's default "fancy" filter: the same choices as
 * Pillow and torchvision, so that descriptors match the Python reference.
 * Any libjpeg warning (truncated data, corrupt entropy segments) stops the
 * decode and refuses the image, rather than handing the model a frame whose
 * bottom is grey. Progressive files are limited to 500 scans (a known
 * denial of service otherwise). */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "core/err.h"
#include "img/img.h"
#include "img/img_internal.h"

#define JPEG_FLAGS (TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS)

/* TurboJPEG prefixes its own messages with the function name
 * ("tjDecompress2(): ..."); libjpeg's messages come without. */
static const char *tj_message(tjhandle tj) {
  const char *m = tjGetErrorStr2(tj);
  if (!m || !*m)
    return "unknown error";
  const char *p = strstr(m, "(): ");
  if (p && strncmp(m, "tj", 2) == 0 && strcspn(m, " ") > (size_t)(p - m))
    return p + 4;
  return m;
}

/* Adobe CMYK (how Photoshop and libjpeg writers store it, and how Pillow
 * reads every CMYK JPEG) is inverted: 0 means full ink. This is Pillow's
 * conversion, bit for bit: R = (255-K') - round(C' * (255-K') / 255) with
 * C' = 255 - c and K' = 255 - k the uninverted inks. In place: pixel i is
 * read at 4i and written at 3i <= 4i. */
static void cmyk_to_rgb(uint8_t *px, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const uint8_t *s = px + 4 * i;
    int nk = s[3];
    uint8_t rgb[3];
    for (int c = 0; c < 3; c++) {
      int t = (255 - s[c]) * nk + 128;
      int v = nk - (((t >> 8) + t) >> 8);
      rgb[c] = (uint8_t)(v < 0 ? 0 : v);
    }
    memcpy(px + 3 * i, rgb, 3);
  }
}

int gl__img_decode_jpeg(const uint8_t *data, size_t len, uint64_t max_pixels, struct gl_image *out,
                        char *err, size_t errlen) {
  if (len < 4)
    return gl__img_err(GL_EFORMAT, err, errlen, "JPEG: truncated (%zu bytes)", len);
  if (len > ULONG_MAX)
    return gl__img_err(GL_ETOOBIG, err, errlen, "JPEG: %zu bytes is too long", len);
  tjhandle tj = tjInitDecompress();
  if (!tj)
    return gl__img_err(GL_ENOMEM, err, errlen, "JPEG: cannot create a decompressor");
  int rc;
  uint8_t *buf = NULL;
  /* tjDecompressHeader3 succeeds without touching its outputs on a
   * tables-only stream, which is also what a file cut right after its first
   * markers looks like to libjpeg: hence the initial values. */
  int w = 0, h = 0, subsamp = -1, cs = -1;
  if (tjDecompressHeader3(tj, data, (unsigned long)len, &w, &h, &subsamp, &cs) != 0) {
    rc = gl__img_err(GL_EFORMAT, err, errlen, "JPEG: bad header: %s", tj_message(tj));
    goto destroy;
  }
  if (w <= 0 || h <= 0) {
    rc = gl__img_err(GL_EFORMAT, err, errlen, "JPEG: no image (truncated, or only tables)");
    goto destroy;
  }
  uint64_t pixels = (uint64_t)w * (uint64_t)h;
  if (pixels > max_pixels) {
    rc = gl__img_err(GL_ETOOBIG, err, errlen,
                     "JPEG: %dx%d is %llu pixels, more than the limit of %llu", w, h,
                     (unsigned long long)pixels, (unsigned long long)max_pixels);
    goto destroy;
  }
  int pf, bpp;
  switch (cs) {
  case TJCS_RGB:
  case TJCS_YCbCr:
  case TJCS_GRAY:
    pf = TJPF_RGB;
    bpp = 3;
    break;
  case TJCS_CMYK:
  case TJCS_YCCK:
    pf = TJPF_CMYK;
    bpp = 4;
    break;
  default:
    rc = gl__img_err(GL_EFORMAT, err, errlen, "JPEG: unsupported colour space %d", cs);
    goto destroy;
  }
  /* pixels < 65536^2 (libjpeg's limit on a side), so this cannot overflow a
   * 64-bit size_t; the test keeps 32-bit builds honest. */
  if (pixels > SIZE_MAX / 4) {
    rc = gl__img_err(GL_ETOOBIG, err, errlen, "JPEG: %dx%d is too large", w, h);
    goto destroy;
  }
  size_t size = (size_t)pixels * (size_t)bpp;
  buf = malloc(size);
  if (!buf) {
    rc = gl__img_err(GL_ENOMEM, err, errlen, "JPEG: out of memory for %dx%d pixels", w, h);
    goto destroy;
  }
  if (tjDecompress2(tj, data, (unsigned long)len, buf, w, 0, h, pf, JPEG_FLAGS) != 0) {
    rc = gl__img_err(GL_EFORMAT, err, errlen, "JPEG: %s", tj_message(tj));
    goto free_buf;
  }
  if (pf == TJPF_CMYK) {
    cmyk_to_rgb(buf, (size_t)pixels);
    uint8_t *shrunk = realloc(buf, (size_t)pixels * 3);
    if (shrunk)
      buf = shrunk;
  }
  out->rgb = buf;
  out->width = (uint32_t)w;
  out->height = (uint32_t)h;
  tjDestroy(tj);
  return GL_OK;

free_buf:
  free(buf);
destroy:
  tjDestroy(tj);
  return rc;
}

int gl_img_jpeg_orient(const uint8_t *data, size_t len, unsigned orientation, uint8_t **out,
                       size_t *out_len, char *err, size_t errlen) {
  /* EXIF orientation -> the transform that shows the stored image upright. */
  static const int op[9] = {
      [2] = TJXOP_HFLIP, [3] = TJXOP_ROT180,     [4] = TJXOP_VFLIP,  [5] = TJXOP_TRANSPOSE,
      [6] = TJXOP_ROT90, [7] = TJXOP_TRANSVERSE, [8] = TJXOP_ROT270,
  };
  *out = NULL;
  *out_len = 0;
  if (orientation < 2 || orientation > 8)
    return gl__img_err(GL_EINVAL, err, errlen, "JPEG: orientation %u is not 2-8", orientation);
  if (len < 4)
    return gl__img_err(GL_EFORMAT, err, errlen, "JPEG: truncated (%zu bytes)", len);
  if (len > ULONG_MAX)
    return gl__img_err(GL_ETOOBIG, err, errlen, "JPEG: %zu bytes is too long", len);
  tjhandle tj = tjInitTransform();
  if (!tj)
    return gl__img_err(GL_ENOMEM, err, errlen, "JPEG: cannot create a transformer");
  tjtransform xf;
  memset(&xf, 0, sizeof xf);
  xf.op = op[orientation];
  xf.options = TJXOPT_TRIM | TJXOPT_COPYNONE;
  unsigned char *buf = NULL;
  unsigned long size = 0;
  int rc = GL_OK;
  if (tjTransform(tj, data, (unsigned long)len, 1, &buf, &size, &xf, 0) != 0) {
    rc = gl__img_err(GL_EFORMAT, err, errlen, "JPEG: %s", tj_message(tj));
  } else if (!(*out = malloc(size ? size : 1))) {
    rc = gl__img_err(GL_ENOMEM, err, errlen, "JPEG: out of memory for %lu bytes", size);
  } else {
    memcpy(*out, buf, size);
    *out_len = size;
  }
  tjFree(buf);
  tjDestroy(tj);
  return rc;
}
