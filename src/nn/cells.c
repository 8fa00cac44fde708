/* The fine stage's cells of a model (nn.h, gl_nn_cells): the dense head's
 * block alone, or joined with a second block's raw cells at twice (k times)
 * the detail. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "nn/model.h"
#include "nn/nn.h"

struct gl_nn_cells {
  struct gl_nn_engine *a, *b; /* the head's block; the fused block (NULL: none) */
  uint32_t size, side, stride, ca, cb, k, max_batch;
  uint32_t ma, mb; /* the tiled pass's margins, each at its engine's scale */
  float wa, wb;    /* sqrt(1 - w), sqrt(w) */
  /* Queries: the k x k means of a batch, and the two blocks' cells. */
  uint8_t *small;
  struct gl_image *imgs;
  float *fa, *fb;
  void *scratch_a, *scratch_b; /* tiled passes */
};

/* dst (w/k x h/k) = the mean of each k x k block of src, rounded half up. */
static void gl__box(const struct gl_image *src, uint32_t k, uint8_t *dst) {
  const uint32_t w = src->width / k, h = src->height / k, kk = k * k;
  for (uint32_t i = 0; i < h; i++)
    for (uint32_t j = 0; j < w; j++)
      for (uint32_t ch = 0; ch < 3; ch++) {
        uint32_t sum = 0;
        for (uint32_t a = 0; a < k; a++)
          for (uint32_t b = 0; b < k; b++)
            sum += src->rgb[((size_t)(i * k + a) * src->width + j * k + b) * 3 + ch];
        dst[((size_t)i * w + j) * 3 + ch] = (uint8_t)((sum + kk / 2) / kk);
      }
}

/* out[c] = [wa fa[c], wb fb[c]] for n cells. */
static void gl__join(const struct gl_nn_cells *c, size_t n, const float *fa, const float *fb,
                     float *out) {
  const uint32_t C = c->ca + c->cb;
  for (size_t i = 0; i < n; i++) {
    for (uint32_t j = 0; j < c->ca; j++)
      out[i * C + j] = c->wa * fa[i * c->ca + j];
    for (uint32_t j = 0; j < c->cb; j++)
      out[i * C + c->ca + j] = c->wb * fb[i * c->cb + j];
  }
}

static int gl__engine(const struct gl_nn_model *m, uint32_t layer, uint32_t side,
                      uint32_t max_batch, uint32_t threads, struct gl_nn_engine **out, char *err,
                      size_t errlen) {
  struct gl_nn_engine_opts eo = {.backend = GL_NN_BACKEND_CPU,
                                 .max_batch = max_batch,
                                 .threads = threads,
                                 .feature_layer = layer,
                                 .input_w = side,
                                 .input_h = side};
  return gl_nn_engine_create(m, &eo, out, err, errlen);
}

int gl_nn_cells_create(const struct gl_nn_model *m, uint32_t layer, uint32_t max_batch,
                       uint32_t threads, struct gl_nn_cells **out, char *err, size_t errlen) {
  *out = NULL;
  uint32_t sa, sb = 0, ca, cb = 0;
  if (gl_nn_model_feature_shape(m, layer, &sa, &ca) != 0)
    return gl_fail(err, errlen, GL_EINVAL, "block %u is not a backbone block (1..17)", layer);
  const uint32_t fuse = layer == m->cfg.dh_layer ? m->cfg.dh_fuse_layer : 0;
  if (fuse)
    (void)gl_nn_model_feature_shape(m, fuse, &sb, &cb); /* a block: the config checked it */
  const uint32_t size = gl_nn_model_fine_size(m, layer), k = fuse ? sb / sa : 1;
  if (size % (sa * k))
    return gl_fail(err, errlen, GL_EINVAL,
                   "block %u: its cells' stride %u does not divide the fine stage's input %u",
                   layer, sa * k, size);
  struct gl_nn_cells *c = calloc(1, sizeof *c);
  if (!c)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  *c = (struct gl_nn_cells){.size = size,
                            .side = size / (sa * k),
                            .stride = sa * k,
                            .ca = ca,
                            .cb = cb,
                            .k = k,
                            .max_batch = max_batch,
                            .ma = gl_nn_model_feature_margin(m, layer),
                            .mb = fuse ? gl_nn_model_feature_margin(m, fuse) : 0,
                            .wa = fuse ? (float)sqrt(1 - m->cfg.dh_fuse_weight) : 1.0f,
                            .wb = fuse ? (float)sqrt(m->cfg.dh_fuse_weight) : 0.0f};
  int rc;
  const uint32_t sq = size / k; /* the head block's input side */
  if (max_batch) {
    if ((rc = gl__engine(m, layer, sq, max_batch, threads, &c->a, err, errlen)) ||
        (fuse && (rc = gl__engine(m, fuse, size, max_batch, threads, &c->b, err, errlen))))
      goto fail;
    const size_t cells = (size_t)max_batch * c->side * c->side;
    if (fuse && (!(c->small = malloc((size_t)max_batch * sq * sq * 3)) ||
                 !(c->imgs = calloc(max_batch, sizeof *c->imgs)) ||
                 !(c->fa = malloc(cells * ca * sizeof(float))) ||
                 !(c->fb = malloc(cells * cb * sizeof(float)))))
      goto nomem;
    for (uint32_t i = 0; fuse && i < max_batch; i++)
      c->imgs[i] = (struct gl_image){c->small + (size_t)i * sq * sq * 3, sq, sq};
  } else {
    if ((rc =
             gl__engine(m, layer, GL_NN_CELLS_BLOCK + 2 * c->ma, 1, threads, &c->a, err, errlen)) ||
        (fuse &&
         (rc = gl__engine(m, fuse, GL_NN_CELLS_BLOCK + 2 * c->mb, 1, threads, &c->b, err, errlen))))
      goto fail;
    if (!(c->scratch_a = malloc(gl_nn_tiled_scratch_bytes(c->a))) ||
        (fuse && !(c->scratch_b = malloc(gl_nn_tiled_scratch_bytes(c->b)))))
      goto nomem;
  }
  *out = c;
  return 0;
nomem:
  rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
fail:
  gl_nn_cells_destroy(c);
  return rc;
}

void gl_nn_cells_destroy(struct gl_nn_cells *c) {
  if (!c)
    return;
  gl_nn_engine_destroy(c->a);
  gl_nn_engine_destroy(c->b);
  free(c->small);
  free(c->imgs);
  free(c->fa);
  free(c->fb);
  free(c->scratch_a);
  free(c->scratch_b);
  free(c);
}

void gl_nn_cells_shape(const struct gl_nn_cells *c, uint32_t *size, uint32_t *side,
                       uint32_t *channels, uint32_t *stride) {
  *size = c->size;
  *side = c->side;
  *channels = c->ca + c->cb;
  *stride = c->stride;
}

uint32_t gl_nn_cells_margin(const struct gl_nn_cells *c) {
  return c->ma * c->k > c->mb ? c->ma * c->k : c->mb;
}

int gl_nn_cells_compute(struct gl_nn_cells *c, const struct gl_image *images, uint32_t n,
                        float *out) {
  if (!c->max_batch || n > c->max_batch)
    return GL_EINVAL;
  if (!c->b)
    return gl_nn_engine_features(c->a, images, n, out);
  for (uint32_t i = 0; i < n; i++) {
    if (images[i].width != c->size || images[i].height != c->size)
      return GL_EINVAL;
    gl__box(&images[i], c->k, c->imgs[i].rgb);
  }
  int rc = gl_nn_engine_features(c->a, c->imgs, n, c->fa);
  if (!rc)
    rc = gl_nn_engine_features(c->b, images, n, c->fb);
  if (!rc)
    gl__join(c, (size_t)n * c->side * c->side, c->fa, c->fb, out);
  return rc;
}

int gl_nn_cells_tiled(struct gl_nn_cells *c, const struct gl_image *image, float *out) {
  if (c->max_batch || !image || !image->rgb || !image->width || !image->height ||
      image->width % c->stride || image->height % c->stride)
    return GL_EINVAL;
  if (!c->b)
    return gl_nn_engine_features_tiled(c->a, c->ma, image, c->scratch_a, out);
  /* The canvas's k x k means and both blocks' cells: a canvas's worth,
   * allocated per call (map building, not the serving path). */
  const size_t n = (size_t)(image->width / c->stride) * (image->height / c->stride);
  struct gl_image small = {malloc((size_t)image->width / c->k * (image->height / c->k) * 3),
                           image->width / c->k, image->height / c->k};
  float *fa = malloc(n * c->ca * sizeof(float)), *fb = malloc(n * c->cb * sizeof(float));
  int rc = GL_ENOMEM;
  if (small.rgb && fa && fb) {
    gl__box(image, c->k, small.rgb);
    rc = gl_nn_engine_features_tiled(c->a, c->ma, &small, c->scratch_a, fa);
    if (!rc)
      rc = gl_nn_engine_features_tiled(c->b, c->mb, image, c->scratch_b, fb);
    if (!rc)
      gl__join(c, n, fa, fb, out);
  }
  free(small.rgb);
  free(fa);
  free(fb);
  return rc;
}
