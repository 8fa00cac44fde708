/* PNG through libspng: every colour type and bit depth becomes RGB8.
 *
 * 16-bit samples keep their high byte, 1/2/4-bit grey is scaled to 0..255,
 * palettes are expanded, alpha (and tRNS) is dropped rather than composited,
 * and gAMA is not applied: what Pillow's convert("RGB") does too (the
 * reference decoder of the parity tests), except for 16-bit grey, which
 * Pillow clips instead of scaling.
 *
 * A file cut after its last image byte (only the final IDAT CRC or IEND
 * missing) is accepted: the deflate stream's Adler-32 already vouches for
 * every pixel. */
#include <spng.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/err.h"
#include "img/img.h"
#include "img/img_internal.h"

/* Ancillary chunks (text, ICC profiles, EXIF) are never needed for pixels;
 * these bounds keep a file made of them, or of compressed text that inflates
 * without end, from costing more than a few MiB. IDAT is not subject to them:
 * its output is bounded by the image size, which max_pixels bounds. */
#define PNG_CHUNK_LIMIT (4u << 20)
#define PNG_CACHE_LIMIT (16u << 20)

static int spng_code(int rc) {
  switch (rc) {
  case SPNG_EMEM:
    return GL_ENOMEM;
  case SPNG_EUSER_WIDTH:
  case SPNG_EUSER_HEIGHT:
    return GL_ETOOBIG;
  default:
    return GL_EFORMAT;
  }
}

int gl__img_decode_png(const uint8_t *data, size_t len, uint64_t max_pixels, struct gl_image *out,
                       char *err, size_t errlen) {
  int rc;
  uint8_t *rgb = NULL;
  if (len < 8)
    return gl__img_err(GL_EFORMAT, err, errlen, "PNG: truncated signature (%zu bytes)", len);
  spng_ctx *ctx = spng_ctx_new(0);
  if (!ctx)
    return gl__img_err(GL_ENOMEM, err, errlen, "PNG: out of memory for a decoder");

  /* Per-side limits are a first filter (the product is checked below); spng
   * itself refuses sides above 2^31-1 as the PNG standard does. */
  uint32_t side = max_pixels > INT32_MAX ? INT32_MAX : max_pixels < 1 ? 1 : (uint32_t)max_pixels;
  int src = spng_set_image_limits(ctx, side, side);
  if (src == 0)
    src = spng_set_chunk_limits(ctx, PNG_CHUNK_LIMIT, PNG_CACHE_LIMIT);
  if (src == 0)
    src = spng_set_png_buffer(ctx, data, len);
  if (src != 0) {
    rc = gl__img_err(spng_code(src), err, errlen, "PNG: cannot set up the decoder: %s",
                     spng_strerror(src));
    goto free_ctx;
  }

  struct spng_ihdr ihdr;
  src = spng_get_ihdr(ctx, &ihdr);
  if (src == SPNG_EUSER_WIDTH || src == SPNG_EUSER_HEIGHT) {
    rc = gl__img_err(GL_ETOOBIG, err, errlen, "PNG: image %s is above the limit of %llu pixels",
                     src == SPNG_EUSER_WIDTH ? "width" : "height", (unsigned long long)max_pixels);
    goto free_ctx;
  }
  if (src != 0) {
    rc = gl__img_err(spng_code(src), err, errlen, "PNG: bad header: %s", spng_strerror(src));
    goto free_ctx;
  }
  uint64_t pixels = (uint64_t)ihdr.width * ihdr.height;
  if (pixels > max_pixels) {
    rc = gl__img_err(GL_ETOOBIG, err, errlen,
                     "PNG: %ux%u is %llu pixels, more than the limit of %llu", (unsigned)ihdr.width,
                     (unsigned)ihdr.height, (unsigned long long)pixels,
                     (unsigned long long)max_pixels);
    goto free_ctx;
  }
  size_t size;
  src = spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &size);
  if (src != 0) {
    rc = gl__img_err(spng_code(src), err, errlen, "PNG: %s", spng_strerror(src));
    goto free_ctx;
  }
  if (pixels > SIZE_MAX / 3 || size != (size_t)pixels * 3) {
    rc = gl__img_err(GL_EINTERNAL, err, errlen, "PNG: unexpected decoded size %zu for %ux%u", size,
                     (unsigned)ihdr.width, (unsigned)ihdr.height);
    goto free_ctx;
  }
  rgb = malloc(size);
  if (!rgb) {
    rc = gl__img_err(GL_ENOMEM, err, errlen, "PNG: out of memory for %ux%u pixels",
                     (unsigned)ihdr.width, (unsigned)ihdr.height);
    goto free_ctx;
  }
  /* Flags 0: no tRNS (alpha is dropped anyway) and no gamma correction. */
  src = spng_decode_image(ctx, rgb, size, SPNG_FMT_RGB8, 0);
  if (src != 0) {
    rc = gl__img_err(spng_code(src), err, errlen, "PNG: %s", spng_strerror(src));
    goto free_rgb;
  }
  out->rgb = rgb;
  out->width = ihdr.width;
  out->height = ihdr.height;
  spng_ctx_free(ctx);
  return GL_OK;

free_rgb:
  free(rgb);
free_ctx:
  spng_ctx_free(ctx);
  return rc;
}
