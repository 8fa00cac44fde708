/* Dense features of large images by blocks (nn.h). A whole reference
 * raster in one pass would need activations of hundreds of megabytes and
 * an engine planned for that one size; blocks keep both fixed. */
#include <string.h>

#include "core/err.h"
#include "nn/nn.h"

/* Reflects i into [0, n - 1], the edge not repeated (numpy's "reflect"). */
static uint32_t gl__reflect(int64_t i, uint32_t n) {
  if (n == 1)
    return 0;
  int64_t p = 2 * ((int64_t)n - 1);
  i %= p;
  if (i < 0)
    i += p;
  return (uint32_t)(i > (int64_t)n - 1 ? p - i : i);
}

size_t gl_nn_tiled_scratch_bytes(const struct gl_nn_engine *e) {
  uint32_t r, c, ch, s;
  gl_nn_engine_feature_shape(e, &r, &c, &ch, &s);
  return (size_t)r * c * ch * sizeof(float) + (size_t)r * s * c * s * 3;
}

int gl_nn_engine_features_tiled(struct gl_nn_engine *e, uint32_t margin,
                                const struct gl_image *image, void *scratch, float *out) {
  uint32_t fr, fc, ch, s;
  gl_nn_engine_feature_shape(e, &fr, &fc, &ch, &s);
  if (!fr || fr != fc || !image || !image->rgb || !image->width || !image->height)
    return GL_EINVAL;
  const uint32_t N = fr * s, W = image->width, H = image->height;
  if (W % s || H % s || margin % s || 2 * margin >= N)
    return GL_EINVAL;
  const uint32_t block = N - 2 * margin, mc = margin / s, bc = block / s;
  const uint32_t cols = W / s, rows = H / s;
  float *feat = scratch;
  uint8_t *pix = (uint8_t *)scratch + (size_t)fr * fc * ch * sizeof(float);
  struct gl_image in = {pix, N, N};
  for (uint32_t by = 0; by < H; by += block) {
    for (uint32_t bx = 0; bx < W; bx += block) {
      for (uint32_t i = 0; i < N; i++) {
        const uint8_t *srow = image->rgb + (size_t)gl__reflect((int64_t)by + i - margin, H) * W * 3;
        uint8_t *drow = pix + (size_t)i * N * 3;
        for (uint32_t j = 0; j < N; j++)
          memcpy(drow + (size_t)j * 3, srow + (size_t)gl__reflect((int64_t)bx + j - margin, W) * 3,
                 3);
      }
      int rc = gl_nn_engine_features(e, &in, 1, feat);
      if (rc)
        return rc;
      for (uint32_t r = 0; r < bc && by / s + r < rows; r++) {
        uint32_t n = bc;
        if (bx / s + n > cols)
          n = cols - bx / s;
        memcpy(out + ((size_t)(by / s + r) * cols + bx / s) * ch,
               feat + ((size_t)(mc + r) * fc + mc) * ch, (size_t)n * ch * sizeof(float));
      }
    }
  }
  return 0;
}
