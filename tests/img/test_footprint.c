/* The camera footprint (src/img/footprint.h): the camera's validation, the
 * footprint's arithmetic and refusals, the crop on frames whose answer is
 * known, and the EXIF orientation of decoded pixels and of JPEG files.
 *
 * Also the C side of tests/python/test_footprint_c.py, which holds the crop
 * to the Python reference (python/geoloc_train/footprint.py):
 *   test_footprint --crop IN.png ALT HFOV TILT TILE_M MIN_SIDE MAX_SIDE OUT.rgb
 *     prints "side aa_x aa_y gsd_x gsd_y crop_w crop_h" and writes the crop's
 *     raw RGB8, or prints "refused: <why>" and exits 3;
 *   test_footprint --orient IN.png|IN.jpg ORIENTATION OUT.rgb
 *     prints "width height" and writes the decoded image turned upright;
 *   test_footprint --jpeg-orient IN.jpg ORIENTATION OUT.jpg
 *     writes the losslessly turned JPEG. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "core/err.h"
#include "img/footprint.h"
#include "img/img.h"
#include "../unit/test.h"

static char errbuf[512];

static struct gl_img_camera cam(double a, double h, double t) {
  return (struct gl_img_camera){a, h, t};
}

static int write_file(const char *path, const uint8_t *d, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(d, 1, n, f) != n) {
    fprintf(stderr, "cannot write %s\n", path);
    if (f)
      fclose(f);
    return 1;
  }
  return fclose(f) != 0;
}

static int tool_crop(char **argv) {
  struct gl_image img;
  if (gl_img_load(argv[0], 1u << 28, &img, errbuf, sizeof errbuf) != GL_OK) {
    fprintf(stderr, "%s: %s\n", argv[0], errbuf);
    return 1;
  }
  struct gl_img_camera c = cam(atof(argv[1]), atof(argv[2]), atof(argv[3]));
  struct gl_img_footprint fp;
  int rc = gl_img_footprint(img.width, img.height, &c, atof(argv[4]), (uint32_t)atoi(argv[5]),
                            (uint32_t)atoi(argv[6]), &fp, errbuf, sizeof errbuf);
  if (rc != GL_OK) {
    printf("refused: %s\n", errbuf);
    gl_img_free(&img);
    return 3;
  }
  uint8_t *out = malloc((size_t)fp.side * fp.side * 3);
  gl_img_footprint_crop(&img, &fp, out);
  printf("%u %u %u %.17g %.17g %.17g %.17g\n", fp.side, fp.aa_x, fp.aa_y, fp.gsd_x, fp.gsd_y,
         fp.crop_w, fp.crop_h);
  rc = write_file(argv[7], out, (size_t)fp.side * fp.side * 3);
  free(out);
  gl_img_free(&img);
  return rc;
}

static int tool_orient(char **argv) {
  struct gl_image img, up;
  if (gl_img_load(argv[0], 1u << 28, &img, errbuf, sizeof errbuf) != GL_OK) {
    fprintf(stderr, "%s: %s\n", argv[0], errbuf);
    return 1;
  }
  up.rgb = malloc((size_t)img.width * img.height * 3);
  gl_img_orient(&img, (unsigned)atoi(argv[1]), &up);
  printf("%u %u\n", up.width, up.height);
  int rc = write_file(argv[2], up.rgb, (size_t)up.width * up.height * 3);
  free(up.rgb);
  gl_img_free(&img);
  return rc;
}

static int tool_jpeg_orient(char **argv) {
  FILE *f = fopen(argv[0], "rb");
  if (!f)
    return 1;
  static uint8_t buf[1 << 24];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  uint8_t *out;
  size_t len;
  if (gl_img_jpeg_orient(buf, n, (unsigned)atoi(argv[1]), &out, &len, errbuf, sizeof errbuf)) {
    fprintf(stderr, "%s\n", errbuf);
    return 1;
  }
  int rc = write_file(argv[2], out, len);
  free(out);
  return rc;
}

/* ---- validation ------------------------------------------------------------ */

static void test_camera_check(void) {
  struct gl_img_camera c = cam(100, 70, 0);
  CHECK_EQ_INT(gl_img_camera_check(0, &c, NULL, errbuf, sizeof errbuf), GL_OK);
  CHECK_EQ_INT(gl_img_camera_check(GL_IMG_CAMERA_ALL, &c, NULL, errbuf, sizeof errbuf), GL_OK);
  /* Some but not all: the message names what is missing. */
  CHECK_EQ_INT(gl_img_camera_check(GL_IMG_CAMERA_ALTITUDE, &c, NULL, errbuf, sizeof errbuf),
               GL_EINVAL);
  CHECK_CONTAINS(errbuf, "all three or none");
  CHECK_CONTAINS(errbuf, "hfov and tilt are missing");
  static const char *const wire[3] = {"altitude_m", "hfov_deg", "tilt_deg"};
  CHECK_EQ_INT(gl_img_camera_check(GL_IMG_CAMERA_ALTITUDE | GL_IMG_CAMERA_HFOV, &c, wire, errbuf,
                                   sizeof errbuf),
               GL_EINVAL);
  CHECK_CONTAINS(errbuf, "tilt_deg is missing");
  /* Ranges, edges included or not as documented; NaN is never in range. */
  const struct {
    double a, h, t;
    int ok;
    const char *needle;
  } cases[] = {
      {0, 70, 0, 0, "altitude 0"},
      {-5, 70, 0, 0, "altitude -5"},
      {1e-3, 70, 0, 1, NULL},
      {10000, 70, 0, 1, NULL},
      {10000.5, 70, 0, 0, "(0, 10000]"},
      {NAN, 70, 0, 0, "altitude nan"},
      {100, 0.99, 0, 0, "hfov 0.99"},
      {100, 1, 0, 1, NULL},
      {100, 170, 0, 1, NULL},
      {100, 170.1, 0, 0, "[1, 170]"},
      {100, NAN, 0, 0, "hfov nan"},
      {100, 70, -0.01, 0, "tilt -0.01"},
      {100, 70, 60, 1, NULL},
      {100, 70, 60.01, 0, "[0, 60]"},
      {100, 70, INFINITY, 0, "tilt inf"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    c = cam(cases[i].a, cases[i].h, cases[i].t);
    errbuf[0] = 0;
    int rc = gl_img_camera_check(GL_IMG_CAMERA_ALL, &c, NULL, errbuf, sizeof errbuf);
    if (!CHECK_EQ_INT(rc, cases[i].ok ? GL_OK : GL_EINVAL) ||
        (cases[i].needle && !CHECK_CONTAINS(errbuf, cases[i].needle)))
      fprintf(stderr, "  case %zu: %s\n", i, errbuf);
  }
}

/* ---- the footprint ---------------------------------------------------------- */

static void test_arithmetic(void) {
  struct gl_img_footprint fp;
  /* hfov 90: f = W/2; 1000 px from 100 m up see 200 m, 0.2 m a pixel. */
  struct gl_img_camera c = cam(100, 90, 0);
  CHECK_EQ_INT(gl_img_footprint(1000, 750, &c, 100, 32, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK(fabs(fp.gsd_x - 0.2) < 1e-12 && fabs(fp.gsd_y - 0.2) < 1e-12);
  CHECK(fabs(fp.ground_w - 200) < 1e-9 && fabs(fp.ground_h - 150) < 1e-9);
  CHECK(fabs(fp.crop_w - 500) < 1e-9 && fabs(fp.crop_h - 500) < 1e-9);
  CHECK_EQ_INT(fp.side, 128);
  CHECK_EQ_INT(fp.aa_x, 4); /* 500 / 128 = 3.9 */
  CHECK_EQ_INT(fp.aa_y, 4);
  /* Tilted 60 degrees: cos = 1/2, 2x coarser across and 4x along. */
  c = cam(50, 90, 60);
  CHECK_EQ_INT(gl_img_footprint(1000, 1000, &c, 100, 32, 1000, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK(fabs(fp.gsd_x - 0.2) < 1e-12 && fabs(fp.gsd_y - 0.4) < 1e-12);
  CHECK(fabs(fp.crop_w - 500) < 1e-9 && fabs(fp.crop_h - 250) < 1e-9);
  CHECK_EQ_INT(fp.side, 500); /* round(w) under max_side */
  CHECK_EQ_INT(fp.aa_x, 1);
  CHECK_EQ_INT(fp.aa_y, 1); /* 250 / 500: enlarging along */
  /* A crop larger than the output by a lot: at most 16 samples an axis. */
  c = cam(10, 90, 0);
  CHECK_EQ_INT(gl_img_footprint(8000, 8000, &c, 19, 32, 64, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK_EQ_INT(fp.side, 64);
  CHECK_EQ_INT(fp.aa_x, GL_IMG_FOOTPRINT_MAX_AA);
}

static void test_refusals(void) {
  struct gl_img_footprint fp;
  struct gl_img_camera c = cam(100, 90, 0); /* 1000 x 750 px: 200 x 150 m */
  /* 150 m seen of a 180 m tile is more than 0.8: reflected borders. */
  CHECK_EQ_INT(gl_img_footprint(1000, 750, &c, 180, 32, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK_EQ_INT(gl_img_footprint(1000, 750, &c, 187.4, 32, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  /* 150 m of a 200 m tile is not: both sizes in metres, and what fits. */
  CHECK_EQ_INT(gl_img_footprint(1000, 750, &c, 200, 32, 128, &fp, errbuf, sizeof errbuf),
               GL_EINVAL);
  CHECK_CONTAINS(errbuf, "200 x 150 m of ground");
  CHECK_CONTAINS(errbuf, "200 m tiles");
  CHECK_CONTAINS(errbuf, "tiles of at most 187 m");
  CHECK_CONTAINS(errbuf, "fly higher");
  /* Tilt makes the along-track extent the larger one: 1000 x 1000 px at
   * tilt 60 from 50 m see 200 x 400 m. */
  c = cam(50, 90, 60);
  CHECK_EQ_INT(gl_img_footprint(1000, 1000, &c, 249, 32, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK_EQ_INT(gl_img_footprint(1000, 1000, &c, 252, 32, 128, &fp, errbuf, sizeof errbuf),
               GL_EINVAL);
  CHECK_CONTAINS(errbuf, "200 x 400 m");
  /* A small frame: 64 x 48 px of 200 x 150 m, 3.125 m a pixel. A 100 m
   * tile is 32 pixels (2x to a 64-pixel input): served; 90 m is not. */
  c = cam(100, 90, 0);
  CHECK_EQ_INT(gl_img_footprint(64, 48, &c, 100, 32, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK_EQ_INT(fp.side, 32);
  CHECK_EQ_INT(gl_img_footprint(64, 48, &c, 90, 32, 128, &fp, errbuf, sizeof errbuf), GL_EINVAL);
  CHECK_CONTAINS(errbuf, "90 m tiles span only 29 x 29 pixels");
  CHECK_CONTAINS(errbuf, "fewer than 32");
  CHECK_CONTAINS(errbuf, "tiles of at least 100 m");
  /* Along a tilt the crop is shorter: that is the side checked. */
  c = cam(50, 90, 60); /* 0.2 x 0.4 m a pixel over 1000 x 1000 px */
  CHECK_EQ_INT(gl_img_footprint(1000, 1000, &c, 12.8, 32, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK_EQ_INT(gl_img_footprint(1000, 1000, &c, 12.7, 32, 128, &fp, errbuf, sizeof errbuf),
               GL_EINVAL);
  /* A bad camera or frame is refused before any arithmetic. */
  c = cam(100, 200, 0);
  CHECK_EQ_INT(gl_img_footprint(64, 48, &c, 100, 32, 128, &fp, errbuf, sizeof errbuf), GL_EINVAL);
  CHECK_CONTAINS(errbuf, "hfov 200");
  c = cam(100, 90, 0);
  CHECK_EQ_INT(gl_img_footprint(0, 48, &c, 100, 32, 128, &fp, errbuf, sizeof errbuf), GL_EINVAL);
  CHECK_EQ_INT(gl_img_footprint(64, 48, &c, 0, 32, 128, &fp, errbuf, sizeof errbuf), GL_EINVAL);
}

static uint8_t *random_image(uint32_t w, uint32_t h, uint32_t seed) {
  uint8_t *p = malloc((size_t)w * h * 3);
  for (size_t i = 0; i < (size_t)w * h * 3; i++) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (uint8_t)(seed >> 16);
  }
  return p;
}

static void test_crop(void) {
  struct gl_img_footprint fp;
  /* A frame that is exactly one tile, no larger than the output: the crop
   * is the frame, pixel for pixel. */
  struct gl_image img = {random_image(100, 100, 7), 100, 100};
  struct gl_img_camera c = cam(50, 90, 0); /* 100 px see 100 m */
  CHECK_EQ_INT(gl_img_footprint(100, 100, &c, 100, 32, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK_EQ_INT(fp.side, 100);
  uint8_t *out = malloc(128 * 128 * 3);
  gl_img_footprint_crop(&img, &fp, out);
  CHECK(memcmp(out, img.rgb, 100 * 100 * 3) == 0);
  /* The centre 50 x 50 pixels of a 100 x 100 frame (a 50 m tile), not
   * resampled either: an odd offset of 25 pixels each way. */
  CHECK_EQ_INT(gl_img_footprint(100, 100, &c, 50, 32, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  CHECK_EQ_INT(fp.side, 50);
  gl_img_footprint_crop(&img, &fp, out);
  int same = 1;
  for (uint32_t y = 0; y < 50; y++)
    same &=
        memcmp(out + (size_t)y * 50 * 3, img.rgb + ((size_t)(y + 25) * 100 + 25) * 3, 50 * 3) == 0;
  CHECK(same);
  /* A uniform frame stays uniform, whatever the scale and reflection. */
  memset(img.rgb, 77, 100 * 100 * 3);
  c = cam(40, 90, 20);
  CHECK_EQ_INT(gl_img_footprint(100, 100, &c, 80, 10, 128, &fp, errbuf, sizeof errbuf), GL_OK);
  gl_img_footprint_crop(&img, &fp, out);
  int uniform = 1;
  for (size_t i = 0; i < (size_t)fp.side * fp.side * 3; i++)
    uniform &= out[i] == 77;
  CHECK(uniform);
  free(out);
  free(img.rgb);
}

/* ---- orientation --------------------------------------------------------------- */

static void test_orient(void) {
  /* 3 x 2 pixels, red channel = 10 * row + column:  0  1  2
   *                                                  10 11 12 */
  uint8_t px[18], buf[18];
  for (int i = 0; i < 6; i++)
    px[3 * i] = (uint8_t)(10 * (i / 3) + i % 3), px[3 * i + 1] = px[3 * i + 2] = 0;
  struct gl_image src = {px, 3, 2}, dst = {buf, 0, 0};
  /* What each orientation shows, read row by row. */
  static const struct {
    unsigned o, w, h;
    uint8_t v[6];
  } want[] = {
      {1, 3, 2, {0, 1, 2, 10, 11, 12}}, {2, 3, 2, {2, 1, 0, 12, 11, 10}},
      {3, 3, 2, {12, 11, 10, 2, 1, 0}}, {4, 3, 2, {10, 11, 12, 0, 1, 2}},
      {5, 2, 3, {0, 10, 1, 11, 2, 12}}, {6, 2, 3, {10, 0, 11, 1, 12, 2}},
      {7, 2, 3, {12, 2, 11, 1, 10, 0}}, {8, 2, 3, {2, 12, 1, 11, 0, 10}},
      {0, 3, 2, {0, 1, 2, 10, 11, 12}}, {9, 3, 2, {0, 1, 2, 10, 11, 12}},
  };
  for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
    gl_img_orient(&src, want[k].o, &dst);
    int ok = dst.width == want[k].w && dst.height == want[k].h;
    for (int i = 0; ok && i < 6; i++)
      ok = buf[3 * i] == want[k].v[i];
    if (!CHECK(ok))
      fprintf(stderr, "  orientation %u\n", want[k].o);
  }
}

/* A JPEG turned losslessly shows what gl_img_orient shows of the decoded
 * original (sides that are multiples of the MCU: nothing is trimmed). */
static void test_jpeg_orient(void) {
  const int W = 48, H = 32;
  uint8_t *rgb = random_image(W, H, 3);
  for (int i = 0; i < W * H * 3; i++)
    rgb[i] = (uint8_t)(rgb[i] / 4 + 3 * (i % (W * 3)) / 4 / 3); /* some smooth structure */
  tjhandle tj = tjInitCompress();
  unsigned char *jpg = NULL;
  unsigned long len = 0;
  CHECK_EQ_INT(tjCompress2(tj, rgb, W, 0, H, TJPF_RGB, &jpg, &len, TJSAMP_444, 95, 0), 0);
  tjDestroy(tj);
  struct gl_image orig;
  CHECK_EQ_INT(gl_img_decode(jpg, len, GL_IMG_JPEG, 0, 0, 1u << 20, &orig, errbuf, sizeof errbuf),
               GL_OK);
  uint8_t *want = malloc((size_t)W * H * 3);
  for (unsigned o = 2; o <= 8; o++) {
    uint8_t *t;
    size_t tl;
    struct gl_image up = {want, 0, 0}, got;
    CHECK_EQ_INT(gl_img_jpeg_orient(jpg, len, o, &t, &tl, errbuf, sizeof errbuf), GL_OK);
    gl_img_orient(&orig, o, &up);
    CHECK_EQ_INT(gl_img_decode(t, tl, GL_IMG_JPEG, 0, 0, 1u << 20, &got, errbuf, sizeof errbuf),
                 GL_OK);
    int maxd = 0;
    double sum = 0;
    if (CHECK(got.width == up.width && got.height == up.height))
      for (size_t i = 0; i < (size_t)W * H * 3; i++) {
        int d = abs(got.rgb[i] - up.rgb[i]);
        maxd = d > maxd ? d : maxd;
        sum += d;
      }
    /* Lossless in the DCT domain; the integer IDCT of a transposed block
     * (rows and columns swap passes) rounds a few levels differently. */
    if (!CHECK(maxd <= 4 && sum / (W * H * 3) < 0.5))
      fprintf(stderr, "  orientation %u: max difference %d, mean %.3f\n", o, maxd,
              sum / (W * H * 3));
    gl_img_free(&got);
    free(t);
  }
  uint8_t *t;
  size_t tl;
  CHECK_EQ_INT(gl_img_jpeg_orient(jpg, len, 1, &t, &tl, errbuf, sizeof errbuf), GL_EINVAL);
  CHECK_EQ_INT(gl_img_jpeg_orient((const uint8_t *)"\xff\xd8\xff\xe0garbage", 11, 6, &t, &tl,
                                  errbuf, sizeof errbuf),
               GL_EFORMAT);
  free(want);
  gl_img_free(&orig);
  tjFree(jpg);
  free(rgb);
}

int main(int argc, char **argv) {
  if (argc == 10 && strcmp(argv[1], "--crop") == 0)
    return tool_crop(argv + 2);
  if (argc == 5 && strcmp(argv[1], "--orient") == 0)
    return tool_orient(argv + 2);
  if (argc == 5 && strcmp(argv[1], "--jpeg-orient") == 0)
    return tool_jpeg_orient(argv + 2);
  if (argc != 1) {
    fprintf(stderr, "usage: test_footprint [--crop ...|--orient ...|--jpeg-orient ...]\n");
    return 2;
  }
  RUN(test_camera_check);
  RUN(test_arithmetic);
  RUN(test_refusals);
  RUN(test_crop);
  RUN(test_orient);
  RUN(test_jpeg_orient);
  return TEST_END();
}
