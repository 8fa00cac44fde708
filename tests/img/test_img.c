/* Image decoding against files made here by the real encoders (libspng,
 * TurboJPEG) from known pixels, plus malformed, truncated, oversized and
 * randomly corrupted inputs.
 *
 * PNG must decode exactly. JPEG must equal TurboJPEG's own decode of the same
 * bytes with TJFLAG_ACCURATEDCT: the reference uses the flags the product
 * must use, so a decoder left on the fast IDCT fails here (the test checks
 * that the fast IDCT really gives other pixels for its image).
 *
 * `test_img --write-corpus DIR` writes the small seed files of the libFuzzer
 * target fuzz_img (tests/fuzz/corpus/img/) and exits. */
#include <errno.h>
#include <pthread.h>
#include <spng.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "core/err.h"
#include "img/img.h"
#include "../unit/test.h"

#define MAXPX (1u << 24)

static char errbuf[256];

/* ---- helpers ------------------------------------------------------------ */

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  return p;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rng(void) {
  uint64_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return rng_state = x;
}

/* Smooth gradients plus a checkerboard and some noise: enough structure for
 * JPEG's IDCT variants to differ, smooth enough for quality 100 to be close. */
static uint8_t *pattern(uint32_t w, uint32_t h, unsigned channels) {
  uint8_t *p = xmalloc((size_t)w * h * channels);
  for (uint32_t y = 0; y < h; y++)
    for (uint32_t x = 0; x < w; x++)
      for (unsigned c = 0; c < channels; c++) {
        unsigned v = (x * 255 / (w > 1 ? w - 1 : 1)) * (c % 3 == 0) +
                     (y * 255 / (h > 1 ? h - 1 : 1)) * (c % 3 == 1) +
                     ((x + y) * 4 % 256) * (c % 3 == 2) + (((x / 4 + y / 4) & 1) ? 24 : 0) +
                     (unsigned)(rng() % 8) + (c == 3 ? 60 : 0);
        p[((size_t)y * w + x) * channels + c] = (uint8_t)(v > 255 ? 255 : v);
      }
  return p;
}

struct buf {
  uint8_t *data;
  size_t len;
};

static struct buf png_encode(const void *px, size_t pxlen, uint32_t w, uint32_t h, int color_type,
                             int bit_depth, int interlace, const struct spng_plte *plte) {
  spng_ctx *c = spng_ctx_new(SPNG_CTX_ENCODER);
  struct buf b = {0};
  if (!c)
    exit(1);
  struct spng_ihdr ih = {.width = w,
                         .height = h,
                         .bit_depth = (uint8_t)bit_depth,
                         .color_type = (uint8_t)color_type,
                         .interlace_method = (uint8_t)interlace};
  int rc = spng_set_option(c, SPNG_ENCODE_TO_BUFFER, 1);
  if (!rc)
    rc = spng_set_ihdr(c, &ih);
  if (!rc && plte)
    rc = spng_set_plte(c, (struct spng_plte *)plte);
  if (!rc)
    /* SPNG_FMT_RAW: 16-bit samples big-endian, as in the file. */
    rc = spng_encode_image(c, px, pxlen, SPNG_FMT_RAW, SPNG_ENCODE_FINALIZE);
  if (rc) {
    fprintf(stderr, "spng encode: %s\n", spng_strerror(rc));
    exit(1);
  }
  b.data = spng_get_png_buffer(c, &b.len, &rc);
  if (!b.data) {
    fprintf(stderr, "spng_get_png_buffer: %s\n", spng_strerror(rc));
    exit(1);
  }
  spng_ctx_free(c);
  return b;
}

static struct buf jpeg_encode(const uint8_t *px, uint32_t w, uint32_t h, int pf, int subsamp,
                              int quality, int flags) {
  tjhandle tj = tjInitCompress();
  unsigned char *jb = NULL;
  unsigned long jl = 0;
  if (!tj || tjCompress2(tj, px, (int)w, 0, (int)h, pf, &jb, &jl, subsamp, quality, flags) != 0) {
    fprintf(stderr, "tjCompress2: %s\n", tj ? tjGetErrorStr2(tj) : "init");
    exit(1);
  }
  tjDestroy(tj);
  struct buf b = {xmalloc(jl), jl};
  memcpy(b.data, jb, jl);
  tjFree(jb);
  return b;
}

/* TurboJPEG's own decode of the same bytes, the reference for JPEG. */
static uint8_t *jpeg_reference(struct buf j, int pf, int flags, int *w, int *h) {
  tjhandle tj = tjInitDecompress();
  int ss, cs;
  if (!tj || tjDecompressHeader3(tj, j.data, j.len, w, h, &ss, &cs) != 0)
    exit(1);
  uint8_t *px = xmalloc((size_t)*w * *h * (size_t)tjPixelSize[pf]);
  if (tjDecompress2(tj, j.data, j.len, px, *w, 0, *h, pf, flags) != 0) {
    fprintf(stderr, "reference tjDecompress2: %s\n", tjGetErrorStr2(tj));
    exit(1);
  }
  tjDestroy(tj);
  return px;
}

/* Pillow's CMYK -> RGB on Adobe (inverted) CMYK, written independently of
 * the decoder's version from the same formula. */
static uint8_t cmyk_channel(uint8_t c, uint8_t k) {
  int ink = 255 - c, white = k;
  int t = ink * white + 128;
  return (uint8_t)(white - ((t + (t >> 8)) >> 8));
}

static int max_abs_diff(const uint8_t *a, const uint8_t *b, size_t n) {
  int m = 0;
  for (size_t i = 0; i < n; i++) {
    int d = abs((int)a[i] - (int)b[i]);
    if (d > m)
      m = d;
  }
  return m;
}

static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[n] = c;
  }
}
static uint32_t crc32_png(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++)
    c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}
static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* A PNG that is only a signature, an IHDR (valid CRC) and IEND. */
static size_t png_header_only(uint8_t out[57], uint32_t w, uint32_t h) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  memcpy(out, sig, 8);
  put_be32(out + 8, 13);
  memcpy(out + 12, "IHDR", 4);
  put_be32(out + 16, w);
  put_be32(out + 20, h);
  out[24] = 8; /* bit depth */
  out[25] = 2; /* RGB */
  out[26] = out[27] = out[28] = 0;
  put_be32(out + 29, crc32_png(out + 12, 17));
  put_be32(out + 33, 0);
  memcpy(out + 37, "IEND", 4);
  put_be32(out + 41, crc32_png(out + 37, 4));
  return 45;
}

/* Decodes and checks the result is exactly want (w x h RGB). */
static bool decodes_to(struct buf b, enum gl_img_format fmt, const uint8_t *want, uint32_t w,
                       uint32_t h) {
  struct gl_image img;
  int rc = gl_img_decode(b.data, b.len, fmt, 0, 0, MAXPX, &img, errbuf, sizeof errbuf);
  bool ok = CHECK_EQ_INT(rc, GL_OK);
  if (!ok) {
    fprintf(stderr, "  error: %s\n", errbuf);
    return false;
  }
  ok = CHECK_EQ_U64(img.width, w) && CHECK_EQ_U64(img.height, h) &&
       CHECK_EQ_MEM(img.rgb, want, (size_t)w * h * 3);
  gl_img_free(&img);
  return ok;
}

static struct buf sample_png(void) {
  uint8_t *px = pattern(37, 23, 3);
  struct buf b = png_encode(px, 37 * 23 * 3, 37, 23, SPNG_COLOR_TYPE_TRUECOLOR, 8, 0, NULL);
  free(px);
  return b;
}

static struct buf sample_jpeg(int subsamp, int flags) {
  uint8_t *px = pattern(41, 29, 3);
  struct buf b = jpeg_encode(px, 41, 29, TJPF_RGB, subsamp, 85, flags);
  free(px);
  return b;
}

/* ---- PNG ---------------------------------------------------------------- */

static void test_png_rgb8(void) {
  uint32_t w = 37, h = 23;
  uint8_t *px = pattern(w, h, 3);
  struct buf b = png_encode(px, (size_t)w * h * 3, w, h, SPNG_COLOR_TYPE_TRUECOLOR, 8, 0, NULL);
  decodes_to(b, GL_IMG_AUTO, px, w, h);
  decodes_to(b, GL_IMG_PNG, px, w, h);
  free(b.data);
  /* Adam7 interlacing. */
  b = png_encode(px, (size_t)w * h * 3, w, h, SPNG_COLOR_TYPE_TRUECOLOR, 8, 1, NULL);
  decodes_to(b, GL_IMG_AUTO, px, w, h);
  free(b.data);
  free(px);
}

static void test_png_rgba8(void) {
  uint32_t w = 19, h = 11;
  uint8_t *px = pattern(w, h, 4), *want = xmalloc((size_t)w * h * 3);
  for (size_t i = 0; i < (size_t)w * h; i++)
    memcpy(want + 3 * i, px + 4 * i, 3); /* alpha dropped, not composited */
  struct buf b =
      png_encode(px, (size_t)w * h * 4, w, h, SPNG_COLOR_TYPE_TRUECOLOR_ALPHA, 8, 0, NULL);
  decodes_to(b, GL_IMG_AUTO, want, w, h);
  free(b.data);
  free(px);
  free(want);
}

static void test_png_gray(void) {
  uint32_t w = 16, h = 5;
  uint8_t *g = pattern(w, h, 1), *want = xmalloc((size_t)w * h * 3);
  for (size_t i = 0; i < (size_t)w * h; i++)
    want[3 * i] = want[3 * i + 1] = want[3 * i + 2] = g[i];
  struct buf b = png_encode(g, (size_t)w * h, w, h, SPNG_COLOR_TYPE_GRAYSCALE, 8, 0, NULL);
  decodes_to(b, GL_IMG_AUTO, want, w, h);
  free(b.data);

  /* Grey + alpha, 8-bit. */
  uint8_t *ga = xmalloc((size_t)w * h * 2);
  for (size_t i = 0; i < (size_t)w * h; i++) {
    ga[2 * i] = g[i];
    ga[2 * i + 1] = (uint8_t)(i * 7);
  }
  b = png_encode(ga, (size_t)w * h * 2, w, h, SPNG_COLOR_TYPE_GRAYSCALE_ALPHA, 8, 0, NULL);
  decodes_to(b, GL_IMG_AUTO, want, w, h);
  free(b.data);
  free(ga);

  /* 16-bit grey: the high byte of each big-endian sample. */
  uint8_t *g16 = xmalloc((size_t)w * h * 2);
  for (size_t i = 0; i < (size_t)w * h; i++) {
    g16[2 * i] = g[i];
    g16[2 * i + 1] = (uint8_t)(255 - g[i]);
  }
  b = png_encode(g16, (size_t)w * h * 2, w, h, SPNG_COLOR_TYPE_GRAYSCALE, 16, 0, NULL);
  decodes_to(b, GL_IMG_AUTO, want, w, h);
  free(b.data);
  free(g16);

  /* 1, 2 and 4-bit grey are scaled to the full range (v * 255 / (2^d - 1)). */
  static const int depths[] = {1, 2, 4};
  for (int d = 0; d < 3; d++) {
    int bd = depths[d];
    unsigned maxv = (1u << bd) - 1;
    size_t rowbytes = (w * (unsigned)bd + 7) / 8;
    uint8_t *packed = calloc(rowbytes * h, 1);
    for (uint32_t y = 0; y < h; y++)
      for (uint32_t x = 0; x < w; x++) {
        unsigned v = (x + 3 * y) & maxv;
        size_t bit = (size_t)x * (unsigned)bd;
        packed[y * rowbytes + bit / 8] |= (uint8_t)(v << (8 - bd - bit % 8));
        uint8_t e = (uint8_t)(v * 255 / maxv);
        size_t i = ((size_t)y * w + x) * 3;
        want[i] = want[i + 1] = want[i + 2] = e;
      }
    b = png_encode(packed, rowbytes * h, w, h, SPNG_COLOR_TYPE_GRAYSCALE, bd, 0, NULL);
    if (!decodes_to(b, GL_IMG_AUTO, want, w, h))
      fprintf(stderr, "  (%d-bit grey)\n", bd);
    free(b.data);
    free(packed);
  }
  free(g);
  free(want);
}

static void test_png_rgb16(void) {
  uint32_t w = 13, h = 9;
  uint8_t *px = pattern(w, h, 3), *p16 = xmalloc((size_t)w * h * 6);
  for (size_t i = 0; i < (size_t)w * h * 3; i++) {
    p16[2 * i] = px[i];
    p16[2 * i + 1] = (uint8_t)(i * 31);
  }
  struct buf b = png_encode(p16, (size_t)w * h * 6, w, h, SPNG_COLOR_TYPE_TRUECOLOR, 16, 0, NULL);
  decodes_to(b, GL_IMG_AUTO, px, w, h);
  free(b.data);
  /* 16-bit RGBA too. */
  uint8_t *p16a = xmalloc((size_t)w * h * 8);
  for (size_t i = 0; i < (size_t)w * h; i++) {
    memcpy(p16a + 8 * i, p16 + 6 * i, 6);
    p16a[8 * i + 6] = 0x12;
    p16a[8 * i + 7] = 0x34;
  }
  b = png_encode(p16a, (size_t)w * h * 8, w, h, SPNG_COLOR_TYPE_TRUECOLOR_ALPHA, 16, 0, NULL);
  decodes_to(b, GL_IMG_AUTO, px, w, h);
  free(b.data);
  free(p16a);
  free(p16);
  free(px);
}

static void test_png_palette(void) {
  uint32_t w = 21, h = 7;
  struct spng_plte plte = {.n_entries = 16};
  for (unsigned i = 0; i < 16; i++) {
    plte.entries[i].red = (uint8_t)(i * 16);
    plte.entries[i].green = (uint8_t)(255 - i * 9);
    plte.entries[i].blue = (uint8_t)(i * i);
  }
  uint8_t *idx = xmalloc((size_t)w * h), *want = xmalloc((size_t)w * h * 3);
  for (size_t i = 0; i < (size_t)w * h; i++) {
    idx[i] = (uint8_t)((i * 5 + i / w) % 16);
    want[3 * i] = plte.entries[idx[i]].red;
    want[3 * i + 1] = plte.entries[idx[i]].green;
    want[3 * i + 2] = plte.entries[idx[i]].blue;
  }
  struct buf b = png_encode(idx, (size_t)w * h, w, h, SPNG_COLOR_TYPE_INDEXED, 8, 0, &plte);
  decodes_to(b, GL_IMG_AUTO, want, w, h);
  free(b.data);
  /* 4-bit indices. */
  size_t rowbytes = (w * 4 + 7) / 8;
  uint8_t *packed = calloc(rowbytes * h, 1);
  for (uint32_t y = 0; y < h; y++)
    for (uint32_t x = 0; x < w; x++)
      packed[y * rowbytes + x / 2] |= (uint8_t)(idx[y * w + x] << (x % 2 ? 0 : 4));
  b = png_encode(packed, rowbytes * h, w, h, SPNG_COLOR_TYPE_INDEXED, 4, 0, &plte);
  decodes_to(b, GL_IMG_AUTO, want, w, h);
  free(b.data);
  free(packed);
  free(idx);
  free(want);
}

static void test_png_errors(void) {
  struct gl_image img;
  struct buf b = sample_png();
  uint8_t *copy = xmalloc(b.len);

  /* Bad CRC in IHDR. */
  memcpy(copy, b.data, b.len);
  copy[30] ^= 0x40;
  CHECK_EQ_INT(gl_img_decode(copy, b.len, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_CONTAINS(errbuf, "PNG: ");
  CHECK_CONTAINS(errbuf, "checksum");
  CHECK(img.rgb == NULL && img.width == 0);

  /* Every truncation that cuts into the signature, the header or the image
   * data is refused. A cut after the last IDAT's data (its CRC or IEND
   * missing) leaves a complete image, vouched for by the Adler-32 of the
   * deflate stream, and may decode. */
  size_t data_end = 0;
  for (size_t off = 8; off + 12 <= b.len;) {
    size_t cl = (size_t)b.data[off] << 24 | (size_t)b.data[off + 1] << 16 |
                (size_t)b.data[off + 2] << 8 | b.data[off + 3];
    if (memcmp(b.data + off + 4, "IDAT", 4) == 0)
      data_end = off + 8 + cl;
    off += 12 + cl;
  }
  CHECK(data_end > 50 && data_end < b.len);
  int bad = 0;
  for (size_t n = 0; n < data_end; n++) {
    int rc = gl_img_decode(b.data, n, GL_IMG_PNG, 0, 0, MAXPX, &img, errbuf, sizeof errbuf);
    if (rc != GL_EFORMAT || img.rgb) {
      if (bad++ < 5)
        fprintf(stderr, "  PNG cut at %zu of %zu: rc %d\n", n, b.len, rc);
    }
    gl_img_free(&img);
  }
  CHECK_EQ_INT(bad, 0);

  /* Wrong magic for an explicit format. */
  CHECK_EQ_INT(gl_img_decode((const uint8_t *)"GIF89a......", 12, GL_IMG_PNG, 0, 0, MAXPX, &img,
                             errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_CONTAINS(errbuf, "PNG: ");

  /* A PNG stream where a JPEG was announced. */
  CHECK_EQ_INT(gl_img_decode(b.data, b.len, GL_IMG_JPEG, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_CONTAINS(errbuf, "JPEG: ");

  /* Corrupt image data (deflate stream) with a fixed-up CRC would be nicer;
   * a flipped byte inside IDAT at least must not pass silently. */
  memcpy(copy, b.data, b.len);
  copy[b.len - 20] ^= 0xff;
  CHECK_EQ_INT(gl_img_decode(copy, b.len, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  free(copy);
  free(b.data);
}

/* ---- JPEG --------------------------------------------------------------- */

static void test_jpeg_color(void) {
  static const int subsamps[] = {TJSAMP_444, TJSAMP_422, TJSAMP_420};
  for (int s = 0; s < 3; s++) {
    for (int progressive = 0; progressive < 2; progressive++) {
      struct buf j = sample_jpeg(subsamps[s], progressive ? TJFLAG_PROGRESSIVE : 0);
      int w, h;
      uint8_t *ref = jpeg_reference(j, TJPF_RGB, TJFLAG_ACCURATEDCT, &w, &h);
      if (!decodes_to(j, GL_IMG_AUTO, ref, (uint32_t)w, (uint32_t)h))
        fprintf(stderr, "  (subsampling %d, progressive %d)\n", subsamps[s], progressive);
      free(ref);
      free(j.data);
    }
  }
}

/* The reference must really depend on the IDCT choice for the test above
 * to mean anything. */
static void test_jpeg_flags_matter(void) {
  struct buf j = sample_jpeg(TJSAMP_420, 0);
  int w, h;
  uint8_t *acc = jpeg_reference(j, TJPF_RGB, TJFLAG_ACCURATEDCT, &w, &h);
  uint8_t *fast = jpeg_reference(j, TJPF_RGB, TJFLAG_FASTDCT, &w, &h);
  CHECK(memcmp(acc, fast, (size_t)w * h * 3) != 0);
  struct gl_image img;
  if (CHECK_EQ_INT(
          gl_img_decode(j.data, j.len, GL_IMG_JPEG, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
          GL_OK)) {
    CHECK_EQ_MEM(img.rgb, acc, (size_t)w * h * 3);
    CHECK(memcmp(img.rgb, fast, (size_t)w * h * 3) != 0);
  }
  gl_img_free(&img);
  free(acc);
  free(fast);
  free(j.data);
}

static void test_jpeg_quality100(void) {
  uint32_t w = 48, h = 32;
  uint8_t *px = pattern(w, h, 3);
  struct buf j = jpeg_encode(px, w, h, TJPF_RGB, TJSAMP_444, 100, TJFLAG_ACCURATEDCT);
  struct gl_image img;
  if (CHECK_EQ_INT(
          gl_img_decode(j.data, j.len, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
          GL_OK) &&
      CHECK_EQ_U64(img.width, w) && CHECK_EQ_U64(img.height, h)) {
    int d = max_abs_diff(img.rgb, px, (size_t)w * h * 3);
    if (!CHECK(d <= 4))
      fprintf(stderr, "  max difference %d\n", d);
  }
  gl_img_free(&img);
  free(j.data);
  free(px);
}

static void test_jpeg_gray(void) {
  uint32_t w = 33, h = 17;
  uint8_t *g = pattern(w, h, 1);
  struct buf j = jpeg_encode(g, w, h, TJPF_GRAY, TJSAMP_GRAY, 90, 0);
  int rw, rh;
  uint8_t *ref = jpeg_reference(j, TJPF_RGB, TJFLAG_ACCURATEDCT, &rw, &rh);
  decodes_to(j, GL_IMG_AUTO, ref, (uint32_t)rw, (uint32_t)rh);
  bool grey = true;
  for (size_t i = 0; i < (size_t)rw * rh; i++)
    grey = grey && ref[3 * i] == ref[3 * i + 1] && ref[3 * i] == ref[3 * i + 2];
  CHECK(grey);
  free(ref);
  free(j.data);
  free(g);
}

static void test_jpeg_cmyk(void) {
  uint32_t w = 24, h = 16;
  uint8_t *cmyk = pattern(w, h, 4);
  /* TurboJPEG writes CMYK as YCCK with an Adobe marker, values as given. */
  struct buf j = jpeg_encode(cmyk, w, h, TJPF_CMYK, TJSAMP_444, 100, TJFLAG_ACCURATEDCT);
  int rw, rh;
  uint8_t *ref = jpeg_reference(j, TJPF_CMYK, TJFLAG_ACCURATEDCT, &rw, &rh);
  uint8_t *want = xmalloc((size_t)rw * rh * 3), *src = xmalloc((size_t)w * h * 3);
  for (size_t i = 0; i < (size_t)rw * rh; i++)
    for (int c = 0; c < 3; c++) {
      want[3 * i + c] = cmyk_channel(ref[4 * i + c], ref[4 * i + 3]);
      src[3 * i + c] = cmyk_channel(cmyk[4 * i + c], cmyk[4 * i + 3]);
    }
  decodes_to(j, GL_IMG_AUTO, want, (uint32_t)rw, (uint32_t)rh);
  int d = max_abs_diff(want, src, (size_t)w * h * 3);
  if (!CHECK(d <= 6))
    fprintf(stderr, "  CMYK quality 100: max difference %d\n", d);
  /* Spot values of the conversion: no ink is white, full black is black. */
  CHECK_EQ_INT(cmyk_channel(255, 255), 255);
  CHECK_EQ_INT(cmyk_channel(255, 0), 0);
  CHECK_EQ_INT(cmyk_channel(0, 255), 0);
  free(want);
  free(src);
  free(ref);
  free(j.data);
  free(cmyk);
}

static void test_jpeg_errors(void) {
  struct gl_image img;
  struct buf j = sample_jpeg(TJSAMP_420, 0);
  int bad = 0;
  for (size_t n = 0; n < j.len; n++) {
    int rc = gl_img_decode(j.data, n, GL_IMG_JPEG, 0, 0, MAXPX, &img, errbuf, sizeof errbuf);
    if (rc != GL_EFORMAT || img.rgb) {
      if (bad++ < 5)
        fprintf(stderr, "  JPEG cut at %zu of %zu: rc %d (%s)\n", n, j.len, rc, errbuf);
    }
    gl_img_free(&img);
  }
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(
      gl_img_decode(j.data, j.len / 2, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
      GL_EFORMAT);
  CHECK_CONTAINS(errbuf, "JPEG: ");

  /* SOI then garbage. */
  uint8_t junk[64] = {0xff, 0xd8, 0xff, 0xe0};
  for (size_t i = 4; i < sizeof junk; i++)
    junk[i] = (uint8_t)(i * 37);
  CHECK_EQ_INT(
      gl_img_decode(junk, sizeof junk, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
      GL_EFORMAT);
  CHECK_CONTAINS(errbuf, "JPEG: ");
  free(j.data);
}

/* ---- limits ------------------------------------------------------------- */

static void test_too_big(void) {
  struct gl_image img;
  uint8_t hdr[64];
  crc_init();

  /* 100000 x 100000: each side within the per-side filter, the product not. */
  size_t n = png_header_only(hdr, 100000, 100000);
  CHECK_EQ_INT(gl_img_decode(hdr, n, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_ETOOBIG);
  CHECK_CONTAINS(errbuf, "100000x100000");
  CHECK(img.rgb == NULL);
  /* Even with a limit far above what spng would allocate quickly. */
  CHECK_EQ_INT(gl_img_decode(hdr, n, GL_IMG_AUTO, 0, 0, 1000000000, &img, errbuf, sizeof errbuf),
               GL_ETOOBIG);
  /* One side alone above the limit (spng's own per-side check). */
  n = png_header_only(hdr, 50000000, 1);
  CHECK_EQ_INT(gl_img_decode(hdr, n, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_ETOOBIG);
  CHECK_CONTAINS(errbuf, "PNG: ");
  /* Beyond PNG's own 2^31-1 maximum: a format error, not a crash. */
  n = png_header_only(hdr, 0x80000000u, 0x80000000u);
  int rc = gl_img_decode(hdr, n, GL_IMG_AUTO, 0, 0, UINT64_MAX, &img, errbuf, sizeof errbuf);
  CHECK(rc == GL_EFORMAT || rc == GL_ETOOBIG);

  /* JPEG: a real file whose SOF claims 65500 x 65500 (libjpeg's maximum). */
  struct buf j = sample_jpeg(TJSAMP_420, 0);
  bool patched = false;
  for (size_t i = 2; i + 9 < j.len; i++)
    if (j.data[i] == 0xff && j.data[i + 1] == 0xc0) {
      j.data[i + 5] = j.data[i + 7] = 0xff;
      j.data[i + 6] = j.data[i + 8] = 0xdc;
      patched = true;
      break;
    }
  CHECK(patched);
  CHECK_EQ_INT(gl_img_decode(j.data, j.len, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_ETOOBIG);
  CHECK_CONTAINS(errbuf, "65500x65500");
  CHECK(img.rgb == NULL);
  free(j.data);

  /* The limit is inclusive, for every format. */
  struct buf p = sample_png(); /* 37 x 23 = 851 */
  CHECK_EQ_INT(gl_img_decode(p.data, p.len, GL_IMG_AUTO, 0, 0, 851, &img, errbuf, sizeof errbuf),
               GL_OK);
  gl_img_free(&img);
  CHECK_EQ_INT(gl_img_decode(p.data, p.len, GL_IMG_AUTO, 0, 0, 850, &img, errbuf, sizeof errbuf),
               GL_ETOOBIG);
  CHECK_EQ_INT(gl_img_decode(p.data, p.len, GL_IMG_AUTO, 0, 0, 0, &img, errbuf, sizeof errbuf),
               GL_ETOOBIG);
  free(p.data);
  j = sample_jpeg(TJSAMP_444, 0); /* 41 x 29 = 1189 */
  CHECK_EQ_INT(gl_img_decode(j.data, j.len, GL_IMG_AUTO, 0, 0, 1189, &img, errbuf, sizeof errbuf),
               GL_OK);
  gl_img_free(&img);
  CHECK_EQ_INT(gl_img_decode(j.data, j.len, GL_IMG_AUTO, 0, 0, 1188, &img, errbuf, sizeof errbuf),
               GL_ETOOBIG);
  free(j.data);
}

static void test_rgb8(void) {
  struct gl_image img;
  uint8_t *px = pattern(10, 4, 3);
  CHECK_EQ_INT(gl_img_decode(px, 120, GL_IMG_RGB8, 10, 4, MAXPX, &img, errbuf, sizeof errbuf),
               GL_OK);
  CHECK(img.width == 10 && img.height == 4);
  CHECK_EQ_MEM(img.rgb, px, 120);
  CHECK(img.rgb != px);
  gl_img_free(&img);
  CHECK(img.rgb == NULL);

  CHECK_EQ_INT(gl_img_decode(px, 119, GL_IMG_RGB8, 10, 4, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_CONTAINS(errbuf, "119 bytes");
  CHECK_EQ_INT(gl_img_decode(px, 120, GL_IMG_RGB8, 4, 10, MAXPX, &img, errbuf, sizeof errbuf),
               GL_OK);
  gl_img_free(&img);
  CHECK_EQ_INT(gl_img_decode(px, 120, GL_IMG_RGB8, 10, 5, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_EQ_INT(gl_img_decode(px, 0, GL_IMG_RGB8, 0, 4, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_EQ_INT(gl_img_decode(px, 120, GL_IMG_RGB8, 10, 4, 39, &img, errbuf, sizeof errbuf),
               GL_ETOOBIG);
  /* Sizes whose byte count overflows 64 bits must not wrap to 120. */
  CHECK_EQ_INT(gl_img_decode(px, 120, GL_IMG_RGB8, 0xffffffffu, 0xffffffffu, UINT64_MAX, &img,
                             errbuf, sizeof errbuf),
               GL_ETOOBIG);
  CHECK_EQ_INT(gl_img_decode(px, 120, GL_IMG_RGB8, 0xaaaaaaabu, 0x80000000u, UINT64_MAX, &img,
                             errbuf, sizeof errbuf),
               GL_ETOOBIG);
  CHECK(img.rgb == NULL);
  free(px);
}

static void test_garbage(void) {
  struct gl_image img;
  CHECK_EQ_INT(gl_img_decode(NULL, 0, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_CONTAINS(errbuf, "empty");
  CHECK_EQ_INT(gl_img_decode(NULL, 0, GL_IMG_PNG, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_EQ_INT(gl_img_decode(NULL, 0, GL_IMG_JPEG, 0, 0, MAXPX, &img, errbuf, sizeof errbuf),
               GL_EFORMAT);
  const char *text = "this is not an image at all";
  CHECK_EQ_INT(gl_img_decode((const uint8_t *)text, strlen(text), GL_IMG_AUTO, 0, 0, MAXPX, &img,
                             errbuf, sizeof errbuf),
               GL_EFORMAT);
  CHECK_CONTAINS(errbuf, "not a JPEG or PNG");
  CHECK_EQ_INT(gl_img_decode((const uint8_t *)text, 5, (enum gl_img_format)42, 0, 0, MAXPX, &img,
                             errbuf, sizeof errbuf),
               GL_EINVAL);
  /* err may be NULL. */
  CHECK_EQ_INT(gl_img_decode((const uint8_t *)text, 5, GL_IMG_AUTO, 0, 0, MAXPX, &img, NULL, 0),
               GL_EFORMAT);
  /* A tiny err buffer is truncated, not overrun. */
  char tiny[4];
  CHECK_EQ_INT(
      gl_img_decode((const uint8_t *)text, 5, GL_IMG_AUTO, 0, 0, MAXPX, &img, tiny, sizeof tiny),
      GL_EFORMAT);
  CHECK_EQ_INT(strlen(tiny), 3);

  uint8_t rnd[4096];
  for (int round = 0; round < 200; round++) {
    size_t n = (size_t)(rng() % sizeof rnd);
    for (size_t i = 0; i < n; i++)
      rnd[i] = (uint8_t)rng();
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (round % 3 == 1 && n >= 8)
      memcpy(rnd, png_sig, 8);
    if (round % 3 == 2 && n >= 3)
      memcpy(rnd, "\xff\xd8\xff", 3);
    int rc = gl_img_decode(rnd, n, GL_IMG_AUTO, 0, 0, MAXPX, &img, errbuf, sizeof errbuf);
    CHECK(rc == GL_EFORMAT || rc == GL_ETOOBIG);
    gl_img_free(&img);
  }
}

/* ---- corruption fuzz loop ---------------------------------------------- */

static int fuzz_one(const struct buf *b, int iterations) {
  uint8_t *m = xmalloc(b->len);
  int decoded = 0;
  for (int it = 0; it < iterations; it++) {
    memcpy(m, b->data, b->len);
    size_t n = b->len;
    int flips = 1 + (int)(rng() % 6);
    for (int f = 0; f < flips; f++) {
      size_t at = (size_t)(rng() % n);
      switch (rng() % 4) {
      case 0:
        m[at] ^= (uint8_t)(1u << (rng() % 8));
        break;
      case 1:
        m[at] = (uint8_t)rng();
        break;
      case 2:
        m[at] = 0xff;
        break;
      default:
        m[at] = 0;
        break;
      }
    }
    if (rng() % 8 == 0)
      n = 1 + (size_t)(rng() % n);
    struct gl_image img;
    int rc = gl_img_decode(m, n, GL_IMG_AUTO, 0, 0, 1u << 20, &img, errbuf, sizeof errbuf);
    if (rc == GL_OK) {
      decoded++;
      /* Touch every byte so ASan sees a short buffer. */
      unsigned sum = 0;
      size_t bytes = (size_t)img.width * img.height * 3;
      for (size_t i = 0; i < bytes; i++)
        sum += img.rgb[i];
      (void)sum;
      CHECK(img.width > 0 && img.height > 0 && (uint64_t)img.width * img.height <= (1u << 20));
    } else if (!CHECK(rc == GL_EFORMAT || rc == GL_ETOOBIG)) {
      fprintf(stderr, "  rc %s: %s\n", gl_err_name(rc), errbuf);
    } else {
      CHECK(img.rgb == NULL);
      CHECK(errbuf[0] != '\0');
    }
    gl_img_free(&img);
  }
  free(m);
  return decoded;
}

static struct buf *seed_files(size_t *count) {
  static struct buf seeds[8];
  uint32_t w = 16, h = 12;
  uint8_t *px = pattern(w, h, 3), *g = pattern(w, h, 1), *cmyk = pattern(w, h, 4);
  struct spng_plte plte = {.n_entries = 4};
  for (unsigned i = 0; i < 4; i++)
    plte.entries[i] = (struct spng_plte_entry){(uint8_t)(i * 80), (uint8_t)(200 - i * 50), 7, 255};
  uint8_t *idx = xmalloc((size_t)w * h);
  for (size_t i = 0; i < (size_t)w * h; i++)
    idx[i] = (uint8_t)(i % 4);
  size_t n = 0;
  seeds[n++] = png_encode(px, (size_t)w * h * 3, w, h, SPNG_COLOR_TYPE_TRUECOLOR, 8, 0, NULL);
  seeds[n++] = png_encode(px, (size_t)w * h * 3, w, h, SPNG_COLOR_TYPE_TRUECOLOR, 8, 1, NULL);
  seeds[n++] = png_encode(g, (size_t)w * h, w, h, SPNG_COLOR_TYPE_GRAYSCALE, 8, 0, NULL);
  seeds[n++] = png_encode(idx, (size_t)w * h, w, h, SPNG_COLOR_TYPE_INDEXED, 8, 0, &plte);
  seeds[n++] = jpeg_encode(px, w, h, TJPF_RGB, TJSAMP_420, 80, 0);
  seeds[n++] = jpeg_encode(px, w, h, TJPF_RGB, TJSAMP_444, 80, TJFLAG_PROGRESSIVE);
  seeds[n++] = jpeg_encode(g, w, h, TJPF_GRAY, TJSAMP_GRAY, 80, 0);
  seeds[n++] = jpeg_encode(cmyk, w, h, TJPF_CMYK, TJSAMP_444, 80, 0);
  free(px);
  free(g);
  free(cmyk);
  free(idx);
  *count = n;
  return seeds;
}

static const char *const seed_names[8] = {"rgb.png", "adam7.png",       "gray.png", "palette.png",
                                          "420.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg"};

static void test_fuzz_loop(void) {
  size_t n;
  struct buf *seeds = seed_files(&n);
  /* GL_TEST_IMG_FUZZ_ITERS=N runs longer (per seed file). */
  const char *env = getenv("GL_TEST_IMG_FUZZ_ITERS");
  int iters = env && atoi(env) > 0 ? atoi(env) : 400;
  int decoded = 0;
  for (size_t i = 0; i < n; i++) {
    decoded += fuzz_one(&seeds[i], iters);
    free(seeds[i].data);
  }
  fprintf(stderr, "  fuzz loop: %d of %zu corrupted files still decoded\n", decoded,
          n * (size_t)iters);
}

/* ---- files and threads -------------------------------------------------- */

static void test_load(void) {
  char dir[256];
  const char *t = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/gl-test-img-XXXXXX", t && *t ? t : "/tmp");
  if (!CHECK(mkdtemp(dir) != NULL))
    return;
  char path[512];
  struct gl_image img;
  struct buf b = sample_png();
  snprintf(path, sizeof path, "%s/a.png", dir);
  FILE *f = fopen(path, "wb");
  CHECK(f && fwrite(b.data, 1, b.len, f) == b.len && fclose(f) == 0);
  if (CHECK_EQ_INT(gl_img_load(path, MAXPX, &img, errbuf, sizeof errbuf), GL_OK)) {
    struct gl_image direct;
    CHECK_EQ_INT(gl_img_decode(b.data, b.len, GL_IMG_AUTO, 0, 0, MAXPX, &direct, NULL, 0), GL_OK);
    CHECK(img.width == 37 && img.height == 23);
    CHECK_EQ_MEM(img.rgb, direct.rgb, 37 * 23 * 3);
    gl_img_free(&direct);
  }
  gl_img_free(&img);
  CHECK_EQ_INT(gl_img_load(path, 100, &img, errbuf, sizeof errbuf), GL_ETOOBIG);
  unlink(path);

  struct buf j = sample_jpeg(TJSAMP_420, 0);
  snprintf(path, sizeof path, "%s/b.jpg", dir);
  f = fopen(path, "wb");
  CHECK(f && fwrite(j.data, 1, j.len, f) == j.len && fclose(f) == 0);
  CHECK_EQ_INT(gl_img_load(path, MAXPX, &img, errbuf, sizeof errbuf), GL_OK);
  CHECK(img.width == 41 && img.height == 29);
  gl_img_free(&img);
  unlink(path);

  snprintf(path, sizeof path, "%s/empty", dir);
  f = fopen(path, "wb");
  CHECK(f && fclose(f) == 0);
  CHECK_EQ_INT(gl_img_load(path, MAXPX, &img, errbuf, sizeof errbuf), GL_EFORMAT);
  unlink(path);

  snprintf(path, sizeof path, "%s/missing.png", dir);
  CHECK_EQ_INT(gl_img_load(path, MAXPX, &img, errbuf, sizeof errbuf), GL_ENOENT);
  CHECK_CONTAINS(errbuf, "No such file");
  CHECK_EQ_INT(gl_img_load(dir, MAXPX, &img, errbuf, sizeof errbuf), GL_EIO);
  CHECK_CONTAINS(errbuf, "not a regular file");
  CHECK(img.rgb == NULL);
  rmdir(dir);
  free(b.data);
  free(j.data);
}

struct thread_arg {
  struct buf png, jpg;
  const uint8_t *png_px, *jpg_px;
  int failures;
};

static void *thread_main(void *p) {
  struct thread_arg *a = p;
  char e[128];
  for (int i = 0; i < 60; i++) {
    struct gl_image img;
    const struct buf *b = i % 2 ? &a->jpg : &a->png;
    const uint8_t *want = i % 2 ? a->jpg_px : a->png_px;
    if (gl_img_decode(b->data, b->len, GL_IMG_AUTO, 0, 0, MAXPX, &img, e, sizeof e) != GL_OK ||
        memcmp(img.rgb, want, (size_t)img.width * img.height * 3) != 0)
      a->failures++;
    gl_img_free(&img);
  }
  return NULL;
}

static void test_threads(void) {
  struct thread_arg a = {.png = sample_png(), .jpg = sample_jpeg(TJSAMP_420, 0)};
  struct gl_image p, j;
  CHECK_EQ_INT(gl_img_decode(a.png.data, a.png.len, GL_IMG_AUTO, 0, 0, MAXPX, &p, NULL, 0), GL_OK);
  CHECK_EQ_INT(gl_img_decode(a.jpg.data, a.jpg.len, GL_IMG_AUTO, 0, 0, MAXPX, &j, NULL, 0), GL_OK);
  a.png_px = p.rgb;
  a.jpg_px = j.rgb;
  struct thread_arg args[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    args[i] = a;
    CHECK(pthread_create(&th[i], NULL, thread_main, &args[i]) == 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(args[i].failures, 0);
  }
  gl_img_free(&p);
  gl_img_free(&j);
  free(a.png.data);
  free(a.jpg.data);
}

static int write_corpus(const char *dir) {
  size_t n;
  struct buf *seeds = seed_files(&n);
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    perror(dir);
    return 1;
  }
  for (size_t i = 0; i < n; i++) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, seed_names[i]);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(seeds[i].data, 1, seeds[i].len, f) != seeds[i].len || fclose(f) != 0) {
      perror(path);
      return 1;
    }
    printf("%s: %zu bytes\n", path, seeds[i].len);
    free(seeds[i].data);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
    return write_corpus(argv[2]);
  crc_init();
  RUN(test_png_rgb8);
  RUN(test_png_rgba8);
  RUN(test_png_gray);
  RUN(test_png_rgb16);
  RUN(test_png_palette);
  RUN(test_png_errors);
  RUN(test_jpeg_color);
  RUN(test_jpeg_flags_matter);
  RUN(test_jpeg_quality100);
  RUN(test_jpeg_gray);
  RUN(test_jpeg_cmyk);
  RUN(test_jpeg_errors);
  RUN(test_too_big);
  RUN(test_rgb8);
  RUN(test_garbage);
  RUN(test_fuzz_loop);
  RUN(test_load);
  RUN(test_threads);
  return TEST_END();
}
