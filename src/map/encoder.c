/* The map builder's encoder backed by the neural engine (CPU backend).
 *
 * Kept in its own file so that programs that only open and search packs
 * (the daemon's map loader, the unit tests) do not pull the engine in. */
#include <stdlib.h>
#include <string.h>


#include "core/err.h"
#include "map/map.h"
#include "map/map_internal.h"
#include "nn/nn.h"

struct gl__map_nn {
  struct gl_nn_model *model;
  struct gl_nn_engine *engine;
  struct gl_nn_cells *cells; /* the dense layer's tiled pass, or NULL */
};

static int gl__nn_features_tiled(void *ctx, const struct gl_image *image, float *out) {
  struct gl__map_nn *nn = ctx;
  return gl_nn_cells_tiled(nn->cells, image, out);
}

static int gl__nn_encode(void *ctx, const struct gl_image *images, uint32_t n, float *out) {
  struct gl__map_nn *nn = ctx;
  return gl_nn_engine_encode(nn->engine, images, n, out);
}

int gl_map_encoder_init_model(struct gl_map_encoder *enc, const char *model_path, uint32_t threads,
                              uint32_t max_batch, char *err, size_t errlen) {
  int rc;
  memset(enc, 0, sizeof *enc);
  struct gl__map_nn *nn = calloc(1, sizeof *nn);
  if (!nn)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  if ((rc = gl_nn_model_load(model_path, &nn->model, err, errlen)))
    goto fail;
  enc->dim = gl_nn_model_descriptor_dim(nn->model);
  if (enc->dim == 0) {
    rc = gl_fail(err, errlen, GL_EINVAL, "%s: the model has no descriptor head", model_path);
    goto fail;
  }
  gl_nn_model_input_dims(nn->model, &enc->width, &enc->height);
  enc->rotations = gl_nn_model_ref_rotations(nn->model);
  enc->max_batch = max_batch ? max_batch : 16;
  enc->max_batch = (enc->max_batch + enc->rotations - 1) / enc->rotations * enc->rotations;
  struct gl_nn_engine_opts eo = {
      .backend = GL_NN_BACKEND_CPU,
      .max_batch = enc->max_batch,
      .threads = threads,
      .max_input_pixels = (uint64_t)enc->width * enc->height,
  };
  if ((rc = gl_nn_engine_create(nn->model, &eo, &nn->engine, err, errlen)))
    goto fail;
  snprintf(enc->model_sha256, sizeof enc->model_sha256, "%s", gl_nn_model_sha256(nn->model));
  enc->encode = gl__nn_encode;
  enc->ctx = nn;
  return 0;
fail:
  gl_nn_engine_destroy(nn->engine);
  gl_nn_model_destroy(nn->model);
  free(nn);
  memset(enc, 0, sizeof *enc);
  return rc;
}

int gl_map_encoder_enable_dense(struct gl_map_encoder *enc, uint32_t layer, char *err,
                                size_t errlen) {
  struct gl__map_nn *nn = enc->encode == gl__nn_encode ? enc->ctx : NULL;
  uint32_t size, side, stride, ch;
  if (!nn)
    return gl_fail(err, errlen, GL_EINVAL, "the encoder has no model");
  if (layer == GL_MAP_DENSE_MODEL_LAYER)
    layer = gl_nn_model_dense_layer(nn->model);
  int rc = gl_nn_cells_create(nn->model, layer, 0, 0, &nn->cells, err, errlen);
  if (rc)
    return rc;
  gl_nn_cells_shape(nn->cells, &size, &side, &ch, &stride);
  enc->dense_layer = layer;
  enc->dense_stride = stride;
  enc->dense_channels = ch;
  enc->dense_block = GL_NN_CELLS_BLOCK;
  enc->dense_margin = gl_nn_cells_margin(nn->cells);
  enc->dense_size = size;
  enc->features_tiled = gl__nn_features_tiled;
  return 0;
}

void gl_map_encoder_fini(struct gl_map_encoder *enc) {
  struct gl__map_nn *nn = enc->encode == gl__nn_encode ? enc->ctx : NULL;
  if (nn) {
    gl_nn_cells_destroy(nn->cells);
    gl_nn_engine_destroy(nn->engine);
    gl_nn_model_destroy(nn->model);
    free(nn);
  }
  memset(enc, 0, sizeof *enc);
}
