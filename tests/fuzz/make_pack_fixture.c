/* Writes the small map pack that fuzz_pack opens with each fuzzed manifest:
 *
 *   make_pack_fixture OUT ORTHO...
 *
 * builds OUT (a pack of 1200 m tiles of the given rasters, one year each,
 * with a stand-in encoder of 4-float descriptors and a dense layer of 4
 * channels) with gl_map_build. The fixture (tests/fuzz/pack/) keeps its
 * tiles.sqlite, index.faiss and dense-N.i8; its manifest.json is the seed
 * tests/fuzz/corpus/pack/valid. Regenerate both whenever the pack format
 * changes (fuzz_pack refuses to start when the seed no longer opens):
 *
 *   build-fuzz/tests/fuzz/make_pack_fixture /tmp/p data/naip/m_4709963_se_14_1_2019*.tif \
 *       data/naip/m_4709963_se_14_1_2020*.tif
 *   cp /tmp/p/tiles.sqlite /tmp/p/index.faiss /tmp/p/dense-*.i8 tests/fuzz/pack/
 *   cp /tmp/p/manifest.json tests/fuzz/corpus/pack/valid */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "map/map.h"

#define TILE_PX 32
#define DIM 4
#define STRIDE 8
#define CHANNELS 4

/* The mean colour of the tile and a constant, made a unit vector. */
static int encode(void *ctx, const struct gl_image *images, uint32_t n, float *out) {
  (void)ctx;
  for (uint32_t i = 0; i < n; i++) {
    double s[DIM] = {0, 0, 0, 64};
    size_t px = (size_t)images[i].width * images[i].height;
    for (size_t p = 0; p < px; p++)
      for (int c = 0; c < 3; c++)
        s[c] += images[i].rgb[p * 3 + (size_t)c] / (double)px;
    double ss = 0;
    for (int k = 0; k < DIM; k++)
      ss += s[k] * s[k];
    for (int k = 0; k < DIM; k++)
      out[(size_t)i * DIM + (size_t)k] = (float)(s[k] / sqrt(ss));
  }
  return 0;
}

/* One unit cell per STRIDE x STRIDE block: its mean colour and a constant. */
static int features(void *ctx, const struct gl_image *im, float *out) {
  (void)ctx;
  uint32_t rows = im->height / STRIDE, cols = im->width / STRIDE;
  for (uint32_t r = 0; r < rows; r++)
    for (uint32_t c = 0; c < cols; c++) {
      double s[CHANNELS] = {0, 0, 0, 64};
      for (uint32_t y = 0; y < STRIDE; y++)
        for (uint32_t x = 0; x < STRIDE; x++)
          for (int k = 0; k < 3; k++)
            s[k] +=
                im->rgb[((size_t)(r * STRIDE + y) * im->width + c * STRIDE + x) * 3 + (size_t)k] /
                (double)(STRIDE * STRIDE);
      double ss = 0;
      for (int k = 0; k < CHANNELS; k++)
        ss += s[k] * s[k];
      for (int k = 0; k < CHANNELS; k++)
        out[((size_t)r * cols + c) * CHANNELS + (size_t)k] = (float)(s[k] / sqrt(ss));
    }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s OUT ORTHO...\n", argv[0]);
    return 2;
  }
  struct gl_map_encoder e = {
      .width = TILE_PX,
      .height = TILE_PX,
      .dim = DIM,
      .max_batch = 16,
      .rotations = 1,
      .encode = encode,
      .dense_layer = 6,
      .dense_stride = STRIDE,
      .dense_channels = CHANNELS,
      .dense_block = 2 * TILE_PX,
      .dense_margin = STRIDE,
      .features_tiled = features,
  };
  snprintf(e.model_sha256, sizeof e.model_sha256, "%064d", 0);
  memset(e.model_sha256, 'f', 8);
  struct gl_map_build_opts o = {
      .orthos = (const char *const *)argv + 2,
      .n_orthos = (uint32_t)(argc - 2),
      .tile_m = 1200,
      .stride_m = 1200,
      .index_type = "Flat",
      .out = argv[1],
  };
  struct gl_map_build_stats st = {0};
  char err[512];
  int rc = gl_map_build(&o, &e, &st, err, sizeof err);
  if (rc) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  printf("%s: %llu tiles, %llu skipped\n", argv[1], (unsigned long long)st.tiles,
         (unsigned long long)st.skipped);
  return 0;
}
