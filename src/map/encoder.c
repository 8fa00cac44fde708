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
  struct gl_nn_engine *features; /* the dense layer's, or NULL */
  void *scratch;
  uint32_t margin; /* the tiled pass's context, pixels */
};

/* The dense layer's tiled pass: blocks of 512 pixels with the layer's
 * margin of context each side (gl_nn_model_feature_margin: 64 pixels for
 * block 6), so blocks join exactly. */
#define GL__DENSE_BLOCK 512u

static int gl__nn_features_tiled(void *ctx, const struct gl_image *image, float *out) {
  struct gl__map_nn *nn = ctx;
  return gl_nn_engine_features_tiled(nn->features, nn->margin, image, nn->scratch, out);
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
  uint32_t stride, ch;
  if (!nn)
    return gl_fail(err, errlen, GL_EINVAL, "the encoder has no model");
  if (layer == GL_MAP_DENSE_MODEL_LAYER)
    layer = gl_nn_model_dense_layer(nn->model);
  if (gl_nn_model_feature_shape(nn->model, layer, &stride, &ch) != 0)
    return gl_fail(err, errlen, GL_EINVAL, "dense layer %u: not a backbone block (1..17)", layer);
  const uint32_t size = gl_nn_model_fine_size(nn->model, layer);
  nn->margin = gl_nn_model_feature_margin(nn->model, layer);
  if (size % stride)
    return gl_fail(err, errlen, GL_EINVAL,
                   "dense layer %u: its stride %u does not divide the fine stage's input %u", layer,
                   stride, size);
  struct gl_nn_engine_opts eo = {
      .backend = GL_NN_BACKEND_CPU,
      .max_batch = 1,
      .feature_layer = layer,
      .input_w = GL__DENSE_BLOCK + 2 * nn->margin,
      .input_h = GL__DENSE_BLOCK + 2 * nn->margin,
  };
  int rc = gl_nn_engine_create(nn->model, &eo, &nn->features, err, errlen);
  if (rc)
    return rc;
  if (!(nn->scratch = malloc(gl_nn_tiled_scratch_bytes(nn->features)))) {
    gl_nn_engine_destroy(nn->features);
    nn->features = NULL;
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  }
  enc->dense_layer = layer;
  enc->dense_stride = stride;
  enc->dense_channels = ch;
  enc->dense_block = GL__DENSE_BLOCK;
  enc->dense_margin = nn->margin;
  enc->dense_size = size;
  enc->features_tiled = gl__nn_features_tiled;
  return 0;
}

void gl_map_encoder_fini(struct gl_map_encoder *enc) {
  struct gl__map_nn *nn = enc->encode == gl__nn_encode ? enc->ctx : NULL;
  if (nn) {
    gl_nn_engine_destroy(nn->features);
    free(nn->scratch);
    gl_nn_engine_destroy(nn->engine);
    gl_nn_model_destroy(nn->model);
    free(nn);
  }
  memset(enc, 0, sizeof *enc);
}
